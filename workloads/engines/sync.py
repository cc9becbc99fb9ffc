"""Synchronous positional I/O: one os.preadv / os.pwrite per op, like fio's psync."""
from __future__ import annotations

import os

from .base import Engine, register


@register
class SyncEngine(Engine):
    name = "sync"

    def ops(self, block_size: int):
        return os.preadv, os.pwrite
