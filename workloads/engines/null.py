"""No I/O at all: the worker loop, timing and reduction run, the storage is never touched.

Measures the harness itself (fio's null ioengine): its IOPS are the ceiling of the loop.
"""
from __future__ import annotations

from .base import Engine, Issuer, register


class NullIssuer(Issuer):
    hot_mode = 1  # run_ops: no syscall, every op returns the block size

    def flush(self) -> None:
        pass


@register
class NullEngine(Engine):
    name = "null"
    does_io = False
    queue_depth = True  # nothing is in flight, any depth is the same loop: lets a sweep test the harness

    def issuer(self, spec, fd, base, length=None):
        return NullIssuer(spec, fd, base, length)
