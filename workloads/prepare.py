"""Before the window: lay out the files a pattern reads, evict them from the page cache, drop
caches if asked, let the device settle. The same for every engine, so iosweep's loop and fio start
from the same state. Also the device counters every window is measured with."""
from __future__ import annotations

import errno
import os
import time
from typing import NamedTuple

import psutil

from .data import write_source
from .errors import WorkloadError
from .metrics import MIB
from .spec import FORMAT_READ, Spec


def lay_out(fd: int, spec: Spec, source, base: int = 0, size: int | None = None, at: int = 0,
            sync: bool = True) -> int:
    """Write `size` bytes (the worker's file_size) at `base` sequentially with the configured data,
    then fsync: outside the window. `at`: where in the source's current chunk to continue (a worker's
    small files take one stream, file after file). Returns where the next file continues."""
    pos, size = 0, spec.file_size if size is None else size
    while pos < size:
        chunk = memoryview(source.current_chunk())
        n = min(len(chunk) - at, size - pos)
        done = os.pwrite(fd, chunk[at:at + n], base + pos)
        chunk.release()
        if done != n:
            raise OSError(errno.ENOSPC, "short write while laying out the file")
        pos, at = pos + n, at + n
        if at == len(source.current_chunk()):
            source.advance()
            at = 0
    if sync:  # many small files: the caller syncs them all at once (an fsync each costs ms)
        os.fsync(fd)
    source.wait_ns = 0
    return at


def evict(fd: int, sync: bool = True) -> None:
    """Drop a file's pages from the page cache. sync: write back our dirty pages first (a file we
    did not write is only advised: DONTNEED leaves anyone's dirty pages alone)."""
    if sync:
        os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def prepare_files(spec: Spec, placement) -> list[str]:
    """Lay out and evict every file, drop caches if asked, let the device settle. Returns warnings."""
    if spec.pattern == "append":  # empty logs: nothing to lay out or evict (no fsync but the policy's)
        settle(placement.device)
        return []
    direct = placement.io_mode in ("direct", "direct-ignored")
    laid_out = 0  # bytes of the finished files, for the message of a full disk
    layout = spec.needs_layout and not spec.read_only_target
    if layout:  # each worker's files (extents) in order, from the worker's one data stream
        work = [(w, [(str(p), b, n) for p, b, n in placement.worker_extents(w, spec.file_size)])
                for w in range(spec.writers)]
    else:  # nothing to write: evict every file once (target=file: the files read)
        work = [(w, [(str(p), 0, 0)]) for w, p in enumerate(placement.worker_paths(spec.writers))]
    many = layout and any(len(extents) > 1 for _, extents in work)  # small files: one sync, then evict each
    for worker, extents in work:
        source = write_source(spec, worker) if layout else None
        at = 0
        try:
            for path, base, size in extents:
                fd = os.open(path, (os.O_RDWR if layout else os.O_RDONLY) | (os.O_DIRECT if direct else 0))
                try:
                    if layout:
                        at = lay_out(fd, spec, source, base, size, at, sync=not many)
                    elif spec.pattern == FORMAT_READ:  # the worker's table in its format; evict() fsyncs it
                        from .formats import write_worker_file

                        write_worker_file(spec, worker, path)
                    if spec.cache != "warm" and not many:
                        evict(fd, sync=not spec.read_only_target)
                except OSError as e:  # a full disk (or an I/O error) while laying out: one line, as in the window
                    partial = os.fstat(fd).st_size if placement.shared_path is None else 0
                    raise WorkloadError(describe_error({"errno": e.errno, "message": e.strerror or str(e),
                                                        "bytes_done": laid_out + partial}, placement)) from None
                finally:
                    os.close(fd)
                laid_out += size
        finally:
            if source is not None:
                source.close()
    if many:
        os.sync()  # every laid-out file reaches the device, then each is evicted
        for _, extents in work:
            for path, _, _ in extents:
                fd = os.open(path, os.O_RDONLY)
                try:
                    if spec.cache != "warm":
                        evict(fd, sync=False)
                finally:
                    os.close(fd)
    warnings = []
    if spec.cache == "drop":
        why = drop_caches()
        if why:
            warnings.append(why)
    if layout or spec.pattern == FORMAT_READ:
        settle(placement.device)
    return warnings


def settle(device: str | None, limit_s: float = 5.0) -> None:
    """Wait until the device has written nothing for 0.3 s (at most limit_s): layout writeback
    must not spill into the measured window."""
    os.sync()
    last, deadline = device_counters(device), time.monotonic() + limit_s
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.3)
        now = device_counters(device)
        if now[1] == last[1]:
            return
        last = now


class DeviceCounters(NamedTuple):
    """A block device's cumulative counters (/proc/diskstats through psutil). Bytes come first, so
    the (read, write) pair of older callers still reads as [0], [1]."""
    read_bytes: int
    write_bytes: int
    read_ios: int = 0  # requests completed
    write_ios: int = 0
    read_merges: int = 0  # requests the kernel merged into a neighbour before issuing
    write_merges: int = 0
    read_time_ms: int = 0  # summed time of the completed requests (await = time / ios)
    write_time_ms: int = 0


def device_counters(device: str | None) -> DeviceCounters | None:
    if device is None:
        return None
    c = psutil.disk_io_counters(perdisk=True).get(device)
    return DeviceCounters(c.read_bytes, c.write_bytes, c.read_count, c.write_count,
                          getattr(c, "read_merged_count", 0), getattr(c, "write_merged_count", 0),
                          c.read_time, c.write_time) if c else None


def drop_caches() -> str | None:
    """Write back and drop the whole page cache. None if done, else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"cache=drop: cannot write /proc/sys/vm/drop_caches ({e.strerror}); evicted the run's files only"


def describe_error(err: dict, placement) -> str:
    """One line for an I/O error a worker (or the layout) met: where, after how much, which errno."""
    where = placement.scratch or placement.mount.mountpoint
    done = err["bytes_done"] / MIB
    if err["errno"] == errno.ENOSPC:
        return f"no space left on {where} after {done:.0f} MiB written"
    name = errno.errorcode.get(err["errno"], "") if err["errno"] else ""
    return f"I/O error on {where} after {done:.0f} MiB: {err['message']}" + (f" ({name})" if name else "")
