"""io_uring with a queue depth: up to `iodepth` ops in flight per worker (fio's io_uring engine).

Each worker sets up its own ring through raw syscalls in the C extension (`uring_*` in
workloads/_hotloop_uring.c; no liburing, so a fresh machine needs nothing beyond the kernel's UAPI
header). Each slot of the ring reads into its own block of the read buffer (iodepth x block,
page-aligned for O_DIRECT); writes reference blocks of the worker's write chunk. Ops stay in
flight across the worker's groups; a write chunk is only handed back once its writes completed.

Latency per op runs from the return of the io_uring_enter that submitted it to the reap of its
completion: fio's clat for its io_uring engine (fio stamps issue_time right after that syscall).
"""
from __future__ import annotations

import errno
import os

import psutil

from ..data import stream_chunk_bytes
from ..errors import ConfigError
from .base import Engine, Issuer, register

DISABLED_SYSCTL = "/proc/sys/kernel/io_uring_disabled"
MEMORY_SHARE = 0.5  # read buffers may take at most this share of the memory available now
WAY_OUT = "use engine=sync (one op at a time)"


def _setup_errno(depth: int, sqpoll: bool) -> int:
    """0 if an io_uring ring of `depth` entries can be set up in this process, else the errno."""
    from .._hotloop import uring_probe

    return uring_probe(depth, sqpoll)


def _memlock_limit() -> int | None:
    """Bytes this process may lock (registered io_uring buffers count against it), or None: no limit,
    or CAP_IPC_LOCK (root), which the kernel lets lock without one."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        with open("/proc/self/status") as f:
            cap_eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        cap_eff = 0
    if soft == resource.RLIM_INFINITY or cap_eff & (1 << 14):  # CAP_IPC_LOCK
        return None
    return soft


def probe(spec) -> str | None:
    """Why io_uring cannot run this spec here (one phrase), or None."""
    try:
        with open(DISABLED_SYSCTL) as f:
            disabled = int(f.read().strip() or 0)
    except (OSError, ValueError):  # kernels before 6.6 have no switch
        disabled = 0
    if disabled == 2:
        return f"io_uring is disabled on this machine (kernel.io_uring_disabled=2 in {DISABLED_SYSCTL})"
    err = _setup_errno(spec.iodepth, spec.sqpoll)
    if err == 0:
        return None
    name = errno.errorcode.get(err, str(err))
    if err == errno.ENOSYS:
        return "io_uring is not available (io_uring_setup: ENOSYS: a kernel without it, or a seccomp filter)"
    if err == errno.EPERM:
        why = f"kernel.io_uring_disabled={disabled}, and this process is not privileged" if disabled == 1 \
            else "a seccomp filter or a container policy forbids it"
        return f"io_uring is not permitted here (io_uring_setup: EPERM: {why})"
    if err == errno.ENOMEM:
        return f"the kernel could not allocate a ring of {spec.iodepth} entries (ENOMEM: RLIMIT_MEMLOCK?)"
    return f"io_uring_setup failed here ({name}: {os.strerror(err)})"


class UringIssuer(Issuer):
    def __init__(self, spec, fd: int, base: int, length: int | None = None):
        from .._hotloop import uring_open
        from ..data import aligned_buffer

        self.spec, self.fd, self.base = spec, fd, base
        self.length = spec.file_size if length is None else length
        self.ring = None
        slot = spec.max_op_bytes  # each slot reads into its own buffer, as large as the largest op
        self.rbuf = aligned_buffer(spec.iodepth * slot) if spec.reads else None
        self.ring = uring_open(fd, spec.iodepth, spec.block_size, self.rbuf, spec.fixed_files, spec.fixed_bufs,
                               spec.sqpoll, spec.batch_submit, spec.batch_complete, slot)
        self.enters0 = 0

    def run(self, offsets, first, count, flags, wchunk, wi, rec_r, rec_w, timed, stop, deadline, lengths=None):
        from .._hotloop import uring_ops

        return uring_ops(self.ring, offsets, first, count, flags, wchunk, wi, rec_r.counts, rec_r.stats,
                         rec_w.counts, rec_w.stats, timed, stop, deadline, lengths)

    def drain(self, rec_r, rec_w, timed) -> tuple[int, int]:
        from .._hotloop import uring_drain

        n_r, n_w, err, ret = uring_drain(self.ring, rec_r.counts, rec_r.stats, rec_w.counts, rec_w.stats, timed)
        if err:  # as the worker reports a failed op of run()
            raise OSError(err, os.strerror(err)) if err > 0 else \
                OSError(errno.ENOSPC if self.spec.writes else errno.EIO,
                        f"short I/O: {ret} of {self._asked()} bytes")
        return n_r, n_w

    def _asked(self) -> str:
        """The bytes an op asked for, as far as drain() knows: ops vary in length with replay or merging."""
        largest = self.spec.max_op_bytes
        return str(largest) if largest == self.spec.block_size else f"up to {largest}"

    def start_window(self) -> None:
        from .._hotloop import uring_enters

        self.enters0 = uring_enters(self.ring)

    def counters(self) -> dict[str, float]:
        """io_uring_enter calls over the window: with ops/s, the syscalls each op cost."""
        from .._hotloop import uring_enters

        return {"uring_enter_calls": float(uring_enters(self.ring) - self.enters0)}

    def close(self) -> None:
        from .._hotloop import uring_close

        if self.ring is not None:
            uring_close(self.ring)  # waits for what is still in flight: the kernel may still use the buffers
            self.ring = None


@register
class UringEngine(Engine):
    name = "uring"
    queue_depth = True

    def issuer(self, spec, fd, base, length=None):
        return UringIssuer(spec, fd, base, length)

    def check(self, spec) -> None:
        super().check(spec)
        for key in ("batch_submit", "batch_complete"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"engine.{key}", value, "must be a whole number >= 1")
            if value > spec.iodepth:
                raise ConfigError(f"engine.{key}", value, f"must be at most iodepth={spec.iodepth} "
                                                          "(ops in flight per worker): lower it or raise iodepth")
        for key in ("fixed_files", "fixed_bufs", "sqpoll"):
            if not isinstance(getattr(spec, key), bool):
                raise ConfigError(f"engine.{key}", getattr(spec, key), "must be true or false")
        # each slot reads into its own block, and writes in flight need chunks of several queues' worth
        per_worker = (spec.iodepth * spec.max_op_bytes if spec.reads else 0) + \
            (spec.data.pool_buffers * stream_chunk_bytes(spec) if spec.writes else 0)
        need, avail = per_worker * spec.writers, psutil.virtual_memory().available
        if need > MEMORY_SHARE * avail:
            raise ConfigError("iodepth", spec.iodepth,
                              f"needs {need >> 20} MiB of I/O buffers (iodepth x block_kb x writers, and write "
                              f"chunks) and {avail >> 20} MiB of memory is available: lower iodepth, block_kb or "
                              "writers")
        memlock = _memlock_limit()
        if spec.fixed_bufs and memlock is not None and per_worker * spec.writers > memlock:
            raise ConfigError("engine.fixed_bufs", True,
                              f"registers {per_worker * spec.writers >> 10} KiB of buffers and this user may lock "
                              f"{memlock >> 10} KiB (RLIMIT_MEMLOCK): raise `ulimit -l` or set engine.fixed_bufs=false")
        why = probe(spec)
        if why:
            raise ConfigError("engine", "uring", f"{why}; {WAY_OUT}")
