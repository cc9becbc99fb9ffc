"""Synchronous positional I/O: one pread / pwrite per op, like fio's psync."""
from __future__ import annotations

from .base import Engine, register


@register
class SyncEngine(Engine):
    name = "sync"
    hot_mode = 0  # run_ops: pread/pwrite
