"""No I/O at all: the worker loop, timing and reduction run, the storage is never touched.

Measures the harness itself (fio's null ioengine): its IOPS are the ceiling of the loop.
"""
from __future__ import annotations

from .base import Engine, register


@register
class NullEngine(Engine):
    name = "null"
    does_io = False
    hot_mode = 1  # run_ops: no syscall, every op returns the block size
