"""Read-ahead hints and application prefetch (seed 003, the SSD-tier prefetch report).

- `hint`: one access-pattern advice over the worker's whole region, given once per file:
  posix_fadvise(2) on the file for the syscall engines (sync, uring), madvise(2) on the mapping
  for engine=mmap, fio's `fadvise_hint` for engine=fio. `none` gives no advice of iosweep's own,
  so each engine keeps its default: sync and uring give none (the kernel's normal read-ahead),
  engine=mmap and fio advise by the pattern (MADV_SEQUENTIAL / MADV_RANDOM, fio's fadvise_hint=1).
  `normal` is the one hint that means the same on every engine: the kernel's default read-ahead.
  Applied right after the file is opened (the parent has evicted it), before the window: the
  advice changes how the window's reads are served. `willneed` is applied at the start of the
  window instead: its effect is the reading it starts, and that reading belongs to the run.
- `prefetch.blocks` / `prefetch.after`: the seed's prefetcher. Once `after` sequential reads were
  seen, keep the next `blocks` blocks past the last read requested from the kernel (WILLNEED:
  posix_fadvise for a file, madvise for a mapping; the kernel reads them in the background),
  never advising the same block twice (the seed's "prefetch cache"). The worker's ops are issued
  in groups of blocks/2, each preceded by this check, so the window stays ahead of the reads.
  Counters: `prefetch_issued` (blocks advised) and `prefetch_used` (advised blocks whose pages
  had all arrived in the page cache when the workload read them: mincore(2) just before the read,
  which counts only pages read in, not those still in flight -- the prefetch was in time).

Hints steer the page cache, so they apply to reads only and never with direct=true: both are
refused in one line (Spec.check calls check()), as is what an engine cannot express.
"""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

from .errors import ConfigError

HINTS = ("none", "normal", "sequential", "random", "willneed", "dontneed", "noreuse")
FADVISE = {"normal": os.POSIX_FADV_NORMAL, "sequential": os.POSIX_FADV_SEQUENTIAL,
           "random": os.POSIX_FADV_RANDOM, "willneed": os.POSIX_FADV_WILLNEED,
           "dontneed": os.POSIX_FADV_DONTNEED, "noreuse": os.POSIX_FADV_NOREUSE}
# madvise has no NOREUSE: engine=mmap refuses it
MADVISE = {"normal": mmap.MADV_NORMAL, "sequential": mmap.MADV_SEQUENTIAL, "random": mmap.MADV_RANDOM,
           "willneed": mmap.MADV_WILLNEED, "dontneed": mmap.MADV_DONTNEED}
# fio's fadvise_hint takes 0 | 1 | sequential | random; 0 (no advice) leaves a fresh open normal
FIO_FADVISE = {"normal": 0, "sequential": "sequential", "random": "random"}
MAX_PREFETCH_BLOCKS = 1 << 16
PAGE = mmap.PAGESIZE


def check(spec) -> None:
    """ConfigError for a hint or prefetch this spec cannot have (called by Spec.check)."""
    if not isinstance(spec.hint, str) or spec.hint not in HINTS:
        raise ConfigError("hint", spec.hint, "choose one of " + ", ".join(HINTS))
    for key, value, low, high in (("prefetch.blocks", spec.prefetch_blocks, 0, MAX_PREFETCH_BLOCKS),
                                  ("prefetch.after", spec.prefetch_after, 0, 1 << 20)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(key, value, f"must be a whole number from {low} to {high}")
    for key, value, used in (("hint", spec.hint, spec.hint != "none"),
                             ("prefetch.blocks", spec.prefetch_blocks, spec.prefetch_blocks > 0)):
        if not used:
            continue
        off = "hint=none" if key == "hint" else "prefetch.blocks=0"
        if spec.pattern in ("metadata", "format_read"):
            raise ConfigError(key, value, f"advises block reads, and pattern={spec.pattern} issues none: set {off}")
        if not spec.reads:
            raise ConfigError(key, value, f"read-ahead applies to reads only and pattern={spec.pattern} only "
                                          f"writes: choose a read pattern or set {off}")
        if spec.direct:
            raise ConfigError(key, value, f"direct=true bypasses the page cache that read-ahead fills: "
                                          f"set direct=false or {off}")
        if spec.engine == "null":
            raise ConfigError(key, value, f"engine=null does no I/O, there is nothing to advise: set {off}")
    if spec.engine == "fio" and spec.hint not in ("none", *FIO_FADVISE):
        raise ConfigError("hint", spec.hint, "engine=fio cannot express it (fio's fadvise_hint takes only "
                                             "0|1|sequential|random): choose hint=normal, sequential or random, "
                                             "or engine=sync")
    if spec.prefetch_blocks and (spec.pattern == "replay" or spec.merge_kb is not None):  # model_load: contiguous
        raise ConfigError("prefetch.blocks", spec.prefetch_blocks, "follows runs of block_kb reads, and "
                                                                   f"{'pattern=replay' if spec.pattern == 'replay' else 'merge_kb'}"
                                                                   " issues reads of other lengths: set prefetch.blocks=0")
    if spec.engine == "fio" and spec.prefetch_blocks:
        raise ConfigError("prefetch.blocks", spec.prefetch_blocks, "engine=fio has no application prefetch: "
                                                                   "set prefetch.blocks=0 or use engine=sync")
    if spec.engine == "mmap" and spec.hint == "noreuse":
        raise ConfigError("hint", "noreuse", "madvise has no NOREUSE, engine=mmap cannot apply it: choose another "
                                             "hint or engine=sync")


def describe(spec) -> str | None:
    """What the run advised, for the io_mode line and Result.info, e.g. "sequential (posix_fadvise)"."""
    parts = []
    if spec.hint != "none":
        how = "madvise" if spec.engine == "mmap" else f"fio fadvise_hint={FIO_FADVISE[spec.hint]}" \
            if spec.engine == "fio" else "posix_fadvise"
        parts.append(f"hint {spec.hint} ({how})")
    if spec.prefetch_blocks:
        how = "madvise" if spec.engine == "mmap" else "posix_fadvise"
        parts.append(f"prefetch {spec.prefetch_blocks} blocks after {spec.prefetch_after} sequential reads "
                     f"(WILLNEED, {how})")
    return ", ".join(parts) or None


def _mapping(issuer):
    """engine=mmap's mapping and the file offset it starts at, or (None, 0) for a plain file."""
    return getattr(issuer, "map", None), getattr(issuer, "map_off", 0)


def advise(issuer, hint: str, offset: int | None = None, length: int | None = None) -> None:
    """Give `hint` over [offset, offset+length) of the issuer's file (default: its whole region)."""
    if hint == "none":
        return
    offset = issuer.base if offset is None else offset
    length = issuer.length if length is None else length
    mapped, map_off = _mapping(issuer)
    if mapped is not None:
        start = offset - map_off
        aligned = start - start % PAGE  # madvise wants a page-aligned address
        mapped.madvise(MADVISE[hint], aligned, min(length + start - aligned, len(mapped) - aligned))
    else:
        os.posix_fadvise(issuer.fd, offset, length, FADVISE[hint])


_libc = None


def _mincore():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return _libc


class Residency:
    """Which pages of a file region are in the page cache, by mincore(2) on a PROT_READ mapping of
    it that is never accessed (mapping faults nothing in). Works for files this process owns or may
    write (Linux >= 5.0 hides other files' page cache from mincore) -- root may read any."""

    def __init__(self, fd: int, base: int, length: int):
        libc = _mincore()
        self.off = base - base % PAGE
        self.size = base + length - self.off
        addr = libc.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, fd, self.off)
        if addr in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap for mincore: {os.strerror(err)}")
        self.addr = addr
        self.vec = np.zeros(self.size // PAGE + 1, dtype=np.uint8)

    def resident_blocks(self, offsets: np.ndarray, block: int) -> int:
        """How many of the blocks at these file offsets are in the page cache in full (mincore counts a
        page once its read completed: a page still being read in is not resident yet)."""
        lo, hi = int(offsets.min()), min(int(offsets.max()) + block, self.off + self.size)  # a short last read
        first = (lo - self.off) // PAGE
        pages = (hi - self.off + PAGE - 1) // PAGE - first
        if _libc.mincore(ctypes.c_void_p(self.addr + first * PAGE), pages * PAGE, self.vec.ctypes.data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore: {os.strerror(err)}")
        resident = self.vec[:pages] & 1
        n = 0
        for off in offsets.tolist():
            a = (off - self.off) // PAGE - first
            b = (off + block - self.off + PAGE - 1) // PAGE - first
            n += bool(resident[a:b].all())
        return n

    def close(self) -> None:
        if self.addr is not None:
            _libc.munmap(ctypes.c_void_p(self.addr), self.size)
            self.addr = None


class Prefetching:
    """An Issuer that issues the wrapped issuer's ops in groups of blocks/2 and, before each group,
    keeps the `blocks` blocks past the last read advised WILLNEED once `after` sequential reads
    were seen (see the module's doc). Everything else is the wrapped issuer's."""

    def __init__(self, spec, inner):
        self.inner, self.spec = inner, spec
        self.bs, self.blocks, self.after = spec.block_size, spec.prefetch_blocks, spec.prefetch_after
        self.step = max(1, self.blocks // 2)
        self.lo, self.hi = inner.base, inner.base + inner.length  # the region: never advise beyond it
        self.last = None  # offset of the last read issued
        self.streak = 0  # sequential reads seen in a row, ending at `last`
        self.ahead = (0, 0)  # [from, to) advised so far, ahead of the reads
        self.issued = self.used = 0
        # Linux >= 5.0 shows mincore only the page cache of files one owns or may write: elsewhere
        # prefetch_used is not knowable, and is left out rather than reported as 0
        st = os.fstat(inner.fd)
        visible = os.geteuid() in (0, st.st_uid) or os.access(f"/proc/self/fd/{inner.fd}", os.W_OK)
        self.resident = Residency(inner.fd, inner.base, inner.length) if visible else None

    def __getattr__(self, name):  # fd, base, length, map, drain, flush, close...: the wrapped issuer's
        return getattr(self.inner, name)

    def run(self, offsets, first, count, flags, wchunk, wi, rec_r, rec_w, timed, stop, deadline, lengths=None):
        # lengths: None (every op block_size) or pattern=model_load's reads (a tensor's last one shorter);
        # prefetch is refused with replay and merging (hints.check)
        done_all = n_r_all = n_w_all = 0
        err = ret = 0
        pos, end = first, first + count
        while pos < end:
            n = min(self.step, end - pos)
            ops = offsets[pos:pos + n]
            reads = np.ones(n, dtype=bool) if flags is None else flags[pos:pos + n].astype(bool)
            if self.streak >= self.after and self.last is not None:
                self._prefetch(self.last + self.bs)
            a, b = self.ahead
            mine = ops[reads & (ops >= a) & (ops < b)]  # reads of blocks this prefetcher advised
            if len(mine) and self.resident is not None:
                self.used += self.resident.resident_blocks(mine, self.bs)
            done, wi, n_r, n_w, err, ret = self.inner.run(offsets, pos, n, flags, wchunk, wi, rec_r, rec_w,
                                                          timed, stop, deadline, lengths)
            self._saw(ops[:done], reads[:done], None if lengths is None else lengths[pos:pos + done])
            done_all, n_r_all, n_w_all, pos = done_all + done, n_r_all + n_r, n_w_all + n_w, pos + done
            if err or done < n:  # an error, the deadline, a stop, or a write chunk used up: the caller decides
                break
        return done_all, wi, n_r_all, n_w_all, err, ret

    def _saw(self, ops: np.ndarray, reads: np.ndarray, lengths: np.ndarray | None = None) -> None:
        """Follow the run of sequential reads over the ops just issued (a write breaks it). A read is
        sequential when it starts where the last one ended (`last` is kept as the offset a block_size
        read would have had, so a shorter read -- a tensor's tail -- continues the run too)."""
        sizes = [self.bs] * len(ops) if lengths is None else lengths.tolist()
        for off, read, size in zip(ops.tolist(), reads.tolist(), sizes):
            if read and self.last is not None and off == self.last + self.bs:
                self.streak += 1
            else:
                self.streak = 0
            self.last = off + size - self.bs if read else None

    def _prefetch(self, cursor: int) -> None:
        """Advise WILLNEED over [cursor, cursor + blocks) minus what was advised already."""
        a, b = self.ahead
        start = b if a <= cursor <= b else cursor  # a jump (a new pass, a seek) starts a new window
        stop = min(cursor + self.blocks * self.bs, self.hi)
        if start >= stop:
            return
        advise(self.inner, "willneed", start, stop - start)
        self.issued += (stop - start + self.bs - 1) // self.bs
        self.ahead = (a if a <= cursor <= b else cursor, stop)

    def start_window(self) -> None:
        self.issued = self.used = 0
        self.inner.start_window()

    def counters(self) -> dict[str, float]:
        used = {"prefetch_used": float(self.used)} if self.resident is not None else {}
        return {**self.inner.counters(), "prefetch_issued": float(self.issued), **used}

    def close(self) -> None:
        if self.resident is not None:
            self.resident.close()
        self.inner.close()


def prefetching(spec, issuer):
    """The issuer, wrapped in the prefetcher when prefetch.blocks > 0."""
    return Prefetching(spec, issuer) if spec.prefetch_blocks else issuer
