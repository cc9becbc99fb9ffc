"""No I/O at all: the worker loop, timing and reduction run, the storage is never touched.

Measures the harness itself (fio's null ioengine): its IOPS are the ceiling of the loop.
"""
from __future__ import annotations

from .base import Engine, register


@register
class NullEngine(Engine):
    name = "null"
    does_io = False

    def ops(self, block_size: int):
        def read(fd, iovec, offset):
            return block_size

        def write(fd, buffer, offset):
            return block_size

        return read, write
