"""The Engine contract and its registry, after fio's ioengine_ops.

An engine says *how each op is issued*; what is accessed (targets/) and which ops in which order
(patterns.py) vary independently of it. Two kinds:

- in-process (sync, uring, mmap, null): `issuer()` gives each worker an Issuer, which issues the
  worker's ops one group at a time through the engine's C issue function (workloads/_hotloop*.c)
  and times each op into the worker's histograms. The worker loop (worker.py) never knows which.
- external (fio): `run_job()` runs the whole point itself and returns a Result.

Capabilities are declared as class flags (fio's FIO_* ioengine flags); `check()` refuses a spec
that needs one the engine lacks, in one line, before any I/O.
"""
from __future__ import annotations

import os

from ..errors import ConfigError
from ..spec import TRACED

REGISTRY: dict[str, "Engine"] = {}


class Engine:
    name = ""
    does_io = True  # False: no files are created (the null engine measures the harness)
    external = False  # True: run_job() replaces the worker loop
    # capabilities
    queue_depth = False  # keeps more than one op in flight (iodepth > 1)
    direct_io = True  # can issue O_DIRECT
    writes = True  # can write
    replays = False  # external: can issue a trace's ops of different lengths (fio: read_iolog)
    io_mode: str | None = None  # what Result.io_mode says instead of the target's "buffered" (mmap)

    def issuer(self, spec, fd: int, base: int, length: int | None = None) -> "Issuer":
        """The object that issues one worker's ops on `fd`, in the region of `length` bytes (the
        worker's file_size unless given) starting at byte `base`."""
        raise NotImplementedError

    def run_job(self, spec, target, placement, progress):
        raise NotImplementedError

    def check(self, spec) -> None:
        """Raise ConfigError for a spec this engine cannot run (before any I/O)."""
        if spec.iodepth > 1 and not self.queue_depth and spec.target != "s3":  # s3: iodepth requests per worker
            raise ConfigError("iodepth", spec.iodepth, f"needs an async engine: engine=uring (engine={self.name} "
                                                       "issues one op at a time)")
        if spec.direct and not self.direct_io:
            raise ConfigError("direct", True, f"engine={self.name} cannot issue O_DIRECT: set direct=false")
        if spec.writes and not self.writes:
            raise ConfigError("pattern", spec.pattern, f"engine={self.name} cannot write: choose a read pattern")
        if self.external and spec.pattern in TRACED and not self.replays:
            raise ConfigError("engine", self.name, f"pattern={spec.pattern} runs in iosweep's engines: choose engine=sync, "
                                                   "uring or mmap")
        if self.external and spec.merge_kb is not None:
            raise ConfigError("merge_kb", spec.merge_kb, f"engine={self.name} does not merge requests: choose "
                                                         "engine=sync, uring or mmap, or set merge_kb=null")


class Issuer:
    """Issues one worker's ops; the base issues them with the C loop run_ops in `hot_mode`.

    run(offsets, first, count, flags, wchunk, wi, rec_r, rec_w, timed, stop, deadline, lengths=None)
    issues ops first .. first+count-1 (absolute byte offsets; flags: None or 1 = read per op;
    lengths: None = every op is block_size bytes, else int64 bytes per op, at most
    spec.max_op_bytes), writes taking block `wi` onward of `wchunk`, and returns
    (done, wi, n_read, n_written, err, ret) as run_ops does. An engine with ops in flight completes them before it returns with the write chunk used
    up, and in drain(), so the caller may refill the chunk.
    """

    hot_mode = 0  # run_ops: 0 = pread/pwrite, 1 = no I/O

    def __init__(self, spec, fd: int, base: int, length: int | None = None):
        from ..data import aligned_buffer

        self.spec, self.fd, self.base = spec, fd, base
        self.length = spec.file_size if length is None else length
        self.rbuf = aligned_buffer(spec.max_op_bytes) if spec.reads else None  # holds the largest read

    def run(self, offsets, first, count, flags, wchunk, wi, rec_r, rec_w, timed, stop, deadline, lengths=None):
        from .._hotloop import run_ops

        return run_ops(self.fd, self.hot_mode, offsets, first, count, flags, wchunk, wi, self.rbuf,
                       self.spec.block_size, rec_r.counts, rec_r.stats, rec_w.counts, rec_w.stats, timed, stop,
                       deadline, lengths)

    def drain(self, rec_r, rec_w, timed) -> tuple[int, int]:
        """Complete the ops still in flight; returns (reads, writes) completed. None here."""
        return 0, 0

    def flush(self) -> None:
        """What was written reaches the device (fio end_fsync)."""
        if self.fd >= 0:
            os.fsync(self.fd)

    def counters(self) -> dict[str, float]:
        """Engine-specific counters over the measured window (summed across workers), e.g. page faults."""
        return {}

    def start_window(self) -> None:
        """The measured window starts now (after ramp_s): counters() counts from here."""

    @property
    def retargetable(self) -> bool:
        """Can retarget() move this issuer to the worker's next file? Only the plain pread/pwrite issuer
        (sync, null): an engine with per-file state (a mapping, a ring) or counters needs a new issuer."""
        return type(self).run is Issuer.run and type(self).counters is Issuer.counters

    def retarget(self, fd: int, base: int, length: int) -> None:
        """Issue the next ops on another file (small files), keeping the buffers: a fresh mmap'd buffer
        per file costs ~100 us on this VM (map, first-touch fault, unmap), more than a cached 4 KiB read."""
        self.fd, self.base, self.length = fd, base, length

    def close(self) -> None:
        pass


def register(engine_cls):
    REGISTRY[engine_cls.name] = engine_cls()
    return engine_cls


def get(name: str) -> Engine:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError("engine", name, "choose one of " + ", ".join(sorted(REGISTRY))) from None
