"""Synchronous positional I/O: one pread / pwrite per op, like fio's psync."""
from __future__ import annotations

from .base import Engine, Issuer, register


@register
class SyncEngine(Engine):
    name = "sync"

    def issuer(self, spec, fd, base, length=None):
        return Issuer(spec, fd, base, length)
