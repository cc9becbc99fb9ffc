"""Memory-mapped I/O, like fio's mmap ioengine: each worker maps its region of the file MAP_SHARED
and every op is a memory access, timed with its page faults (workloads/_hotloop_mmap.c: mmap_ops).

- A read memcpy's the block out of the mapping (`engine.access=copy`, what fio's mmap engine
  does) or reads one byte of each 4 KiB page of it (`touch`: the cost of faulting the pages in,
  without the copy).
- A write memcpy's the block into the mapping: it dirties page-cache pages and nothing more, so
  flush() is msync(MS_SYNC) of the mapping, then fsync: what was written reaches the device
  inside the window (end_fsync), as for buffered writes.
- counters(): `minor_faults` and `major_faults` over the measured window: the worker thread's
  page faults while it accessed the mapping (getrusage RUSAGE_THREAD around each batch of ops in
  mmap_ops, so neither the interpreter between batches nor the dgen-py producer thread count).

The region is mapped PROT_READ when the pattern only reads. Like fio, the mapping is advised
MADV_RANDOM for random patterns and MADV_SEQUENTIAL for sequential ones.

A file that shrinks under the mapping makes an access raise SIGBUS; mmap_ops catches it and the
worker fails with one line instead of dying. The size is checked before mapping: iosweep's own
seq_write file (created empty, never laid out) is extended to the region's end first, outside
the window; any other file shorter than the region is refused.
"""
from __future__ import annotations

import errno
import mmap
import os

import numpy as np

from .base import Engine, Issuer, register


class MmapIssuer(Issuer):
    def __init__(self, spec, fd: int, base: int, length: int | None = None):
        super().__init__(spec, fd, base, length)
        end = base + self.length
        size = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for a block device; the end is its capacity
        if size < end:
            if spec.needs_layout or spec.target == "device" or spec.read_only_target:  # laid out, or not ours
                raise OSError(errno.EINVAL, f"the file holds {size} bytes, less than the {end} engine=mmap maps")
            os.ftruncate(fd, end)  # the empty file of a seq_write: pages must exist before they are stored to
        self.map_off = base - base % mmap.ALLOCATIONGRANULARITY  # mmap's offset must be page-aligned
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if spec.writes else 0)
        self.map = mmap.mmap(fd, end - self.map_off, flags=mmap.MAP_SHARED, prot=prot, offset=self.map_off)
        if hasattr(self.map, "madvise"):
            self.map.madvise(mmap.MADV_RANDOM if spec.random else mmap.MADV_SEQUENTIAL)
        self.touch = spec.access == "touch"
        self.faults = np.zeros(2, dtype=np.int64)  # minor, major: mmap_ops adds to them in place

    def run(self, offsets, first, count, flags, wchunk, wi, rec_r, rec_w, timed, stop, deadline, lengths=None):
        from .._hotloop import mmap_ops

        out = mmap_ops(self.map, self.map_off, self.touch, offsets, first, count, flags, wchunk, wi, self.rbuf,
                       self.spec.block_size, rec_r.counts, rec_r.stats, rec_w.counts, rec_w.stats, self.faults,
                       timed, stop, deadline, lengths)
        if out[4] == errno.EFAULT:
            size = os.lseek(self.fd, 0, os.SEEK_END)
            raise OSError(errno.EIO, f"SIGBUS on the mapping (the file now holds {size} bytes of "
                                     f"{self.base + self.length}: truncated by another program, or the "
                                     "device failed a page-in)")
        return out

    def flush(self) -> None:
        self.map.flush()  # msync(MS_SYNC): the dirty pages of the mapping are written back...
        os.fsync(self.fd)  # ...and the file's metadata (a seq_write extended it) with them

    def start_window(self) -> None:
        self.faults[:] = 0  # the warm-up's faults are not the window's

    def counters(self) -> dict[str, float]:
        return {"minor_faults": float(self.faults[0]), "major_faults": float(self.faults[1])}

    def close(self) -> None:
        self.map.close()


@register
class MmapEngine(Engine):
    name = "mmap"
    direct_io = False  # a mapping goes through the page cache: O_DIRECT has no meaning for it
    io_mode = "mmap"

    def issuer(self, spec, fd, base, length=None):
        return MmapIssuer(spec, fd, base, length)
