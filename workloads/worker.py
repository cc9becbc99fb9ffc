"""One worker's measured loop: open its file, wait for the start, issue its ops through the engine's
Issuer group by group, return plain counters and histograms.

`worker_loop()` takes a spec, a file and a start signal and returns a plain dict, so an MPI rank
or a batch task can run it without the process management of processes.py. It knows neither the
engine (engines/: how each op is issued) nor the pattern (patterns.py: which ops in which order).
"""
from __future__ import annotations

import errno
import os
import resource
import time

import numpy as np

from . import engines, hints
from .data import write_source
from .metrics import N_BUCKETS, LatencyHistogram
from .merge import coalesce
from .patterns import extent_chunks
from .prepare import evict, lay_out
from .replay import Pacer
from .spec import Spec

GROUP_BYTES = 16 << 20  # publish progress / check the clock about every 16 MiB...
GROUP_MAX_OPS = 256  # ...or every 256 ops, whichever comes first
NEVER = 1 << 62


class Aborted(Exception):
    """Another worker failed before the start, or the run was stopped."""


class Recorder:
    """What an issuer fills per direction: histogram counts, and sum / min / max of the latencies and
    the bytes the ops moved (stats[3]: the real bytes, whatever each op's length), in place."""

    def __init__(self):
        self.counts = np.zeros(N_BUCKETS, dtype=np.int64)
        self.stats = np.array([0, np.iinfo(np.int64).max, 0, 0], dtype=np.int64)

    @property
    def bytes(self) -> int:
        return int(self.stats[3])

    def histogram(self) -> LatencyHistogram:
        total = int(self.counts.sum())
        return LatencyHistogram(counts=self.counts, total=total, sum_ns=int(self.stats[0]),
                                min_ns=int(self.stats[1]) if total else 0, max_ns=int(self.stats[2]))


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # all threads, the dgen producer included
    return ru.ru_utime + ru.ru_stime


def open_window(spec: Spec, wait_start, stop) -> tuple[int, int, int]:
    """Wait for the start (Aborted if the run was stopped meanwhile); returns the window's (start, end of
    ramp_s, deadline: NEVER without duration_s) on the CLOCK_MONOTONIC ns clock."""
    wait_start()
    if stop is not None and stop.value:
        raise Aborted()
    t_start = time.perf_counter_ns()
    ramp_end = t_start + int(spec.ramp_s * 1e9)
    return t_start, ramp_end, ramp_end + int(spec.duration_s * 1e9) if spec.duration_s else NEVER


def open_flags(spec: Spec, direct: bool) -> int:
    """Read-only where nothing is written (a file iosweep must not change), else read-write."""
    writable = spec.writes or (spec.needs_layout and not spec.read_only_target)
    return (os.O_RDWR if writable else os.O_RDONLY) | (os.O_DIRECT if direct else 0)


def worker_loop(spec: Spec, worker: int, path: str | None, direct: bool, wait_start, ops_done=None,
                stop=None, prepared: bool = False, base: int = 0, extents=None, bytes_done=None) -> dict:
    """Prepare (unless `prepared`: the caller laid out and evicted the file), wait for
    `wait_start()`, run the measured loop over the region starting at `base`, return counters
    and histograms.

    `extents` [(path, base, bytes), ...] replaces path and base for a worker whose share spans
    several files (target=file): it reads them one after another, the first opened before the
    start, each next one when it gets there (inside the window: opening files is part of reading
    a set of them).

    `ops_done` / `bytes_done`: shared per-worker counters this worker publishes its progress in."""
    bs = spec.block_size
    engine = engines.get(spec.engine)
    extents = extents or [(path, base, spec.file_size)]
    path, base = extents[0][0], extents[0][1]
    fd = os.open(path, open_flags(spec, direct)) if path is not None else -1
    must_lay_out = spec.needs_layout and fd >= 0 and not prepared and not spec.read_only_target
    # the layout is the data stream's first pass; the measured writes continue after it
    wsrc = write_source(spec, worker, first_pass=int(spec.needs_layout and prepared)) \
        if (spec.writes or must_lay_out) else None
    issuer = None
    try:
        if must_lay_out:
            lay_out(fd, spec, wsrc, base)
        if fd >= 0 and spec.cache != "warm" and not prepared:
            evict(fd, sync=not spec.read_only_target)
            for other in {p for p, _, _ in extents[1:]} - {path}:  # only read-only targets have several
                other_fd = os.open(other, os.O_RDONLY)
                try:
                    evict(other_fd, sync=False)
                finally:
                    os.close(other_fd)
        issuer = engine.issuer(spec, fd, base, extents[0][2])
        if spec.hint != "willneed":  # willneed starts reading: at the start of the window (hints.py)
            hints.advise(issuer, spec.hint)
        issuer = hints.prefetching(spec, issuer)
        current, earlier = 0, {}  # the extent being read; counters of the issuers already closed
        written = {}  # files written and closed before the last one: end_fsync reaches them too
        rec_r, rec_w = Recorder(), Recorder()  # filled in place by the issuer
        ops_r = ops_w = wi = 0
        wchunk = wsrc.current_chunk() if spec.writes else None
        wper = len(wchunk) // bs if wchunk is not None else 0
        group = max(1, min(GROUP_MAX_OPS, GROUP_BYTES // bs))
        timed = spec.latency
        varlen, merging = spec.variable_lengths, spec.merge_kb is not None
        gap = (spec.merge_kb or 0) * 1024
        merged = {"ops_requested": 0, "ops_issued": 0, "bytes_over_read": 0}  # over the window
        pacer = Pacer(spec) if spec.pattern == "replay" and spec.timing == "original" else None
        trace_pos = 0  # replay: the trace index of the chunk's first op (the pacer's clock)
        clock = time.perf_counter_ns  # CLOCK_MONOTONIC, the clock the C loops read too
        parent = os.getppid()

        wait_start()
        if stop is not None and stop.value:
            raise Aborted()
        t_start = clock()
        if spec.hint == "willneed":
            hints.advise(issuer, spec.hint)
        ramp_end = t_start + int(spec.ramp_s * 1e9)
        deadline = ramp_end + int(spec.duration_s * 1e9) if spec.duration_s else NEVER
        measuring = spec.ramp_s <= 0
        t_measure, cpu0, wait0 = t_start, cpu_s(), (wsrc.wait_ns if wsrc else 0)
        pwait0 = wsrc.producer_wait_ns() if wsrc else 0
        if measuring:
            issuer.start_window()
        total_ops = total_bytes = 0
        finished = False
        for index, offsets, flags, lengths in extent_chunks(spec, worker, [n // bs for _, _, n in extents]):
            if index != current:  # the next file: finish this one's ops, then open it
                n_r, n_w = issuer.drain(rec_r, rec_w, timed)
                ops_r, ops_w = ops_r + n_r, ops_w + n_w
                earlier = _add(earlier, issuer.counters()) if measuring else {}
                # sync: the same issuer and buffers for the next file (not a prefetcher: its state is per file)
                keep = isinstance(issuer, engines.base.Issuer) and issuer.retargetable
                if not keep:
                    issuer.close()
                    issuer = None
                if spec.writes:
                    written[path] = None
                os.close(fd)
                fd = -1
                current, (path, base, length) = index, extents[index]
                fd = os.open(path, open_flags(spec, direct))
                if keep:
                    issuer.retarget(fd, base, length)
                else:
                    issuer = engine.issuer(spec, fd, base, length)
                hints.advise(issuer, spec.hint)  # inside the window: opening the next file is part of the run
                if not keep:
                    issuer = hints.prefetching(spec, issuer)
                if measuring:
                    issuer.start_window()
            if merging:  # reads only (merge.check): a merged request is one variable-length op
                offsets, lengths, covers, over = coalesce(offsets, lengths, bs, gap, spec.merge_batch)
            if base:
                offsets = offsets + base
            flags = flags.view(np.uint8) if flags is not None else None
            pos = 0
            while pos < len(offsets):
                count = min(group, len(offsets) - pos)
                if pacer is not None:  # timing=original: wait for the next op's time, issue what is due
                    count = pacer.due(trace_pos + pos, count)
                done, wi, n_r, n_w, err, ret = issuer.run(offsets, pos, count, flags, wchunk,
                                                          wi, rec_r, rec_w, timed, stop,
                                                          0 if deadline == NEVER else deadline, lengths)
                if varlen:  # else bytes = ops x block_size: the fast path publishes ops only
                    total_bytes += int(lengths[pos:pos + done].sum())
                    if bytes_done is not None:
                        bytes_done[worker] = total_bytes
                    if merging:
                        merged["ops_requested"] += int(covers[pos:pos + done].sum())
                        merged["ops_issued"] += done
                        merged["bytes_over_read"] += int(over[pos:pos + done].sum())
                pos += done
                total_ops += done
                ops_r += n_r
                ops_w += n_w
                if err:
                    asked = bs if lengths is None else int(lengths[min(pos, len(lengths) - 1)])
                    raise OSError(err, os.strerror(err)) if err > 0 else \
                        OSError(errno.ENOSPC if spec.writes else errno.EIO, f"short I/O: {ret} of {asked} bytes")
                if wi == wper and wchunk is not None:
                    wchunk, wi = wsrc.advance(), 0
                if ops_done is not None:
                    ops_done[worker] = total_ops
                t1 = clock()
                if not measuring and t1 >= ramp_end:  # warm-up over: forget what it measured
                    rec_r, rec_w, ops_r, ops_w, earlier = Recorder(), Recorder(), 0, 0, {}
                    merged = dict.fromkeys(merged, 0)
                    if pacer is not None:
                        pacer.reset()
                    measuring, t_measure, cpu0 = True, t1, cpu_s()
                    wait0 = wsrc.wait_ns if wsrc else 0
                    pwait0 = wsrc.producer_wait_ns() if wsrc else 0
                    issuer.start_window()
                if t1 >= deadline or (stop is not None and stop.value) or os.getppid() != parent:
                    finished = True  # time is up, the parent asked us to stop, or it died
                    break
            trace_pos += len(offsets)
            if finished:
                break
        n_r, n_w = issuer.drain(rec_r, rec_w, timed)  # ops still in flight complete inside the window
        ops_r += n_r
        ops_w += n_w
        hist_r, hist_w = rec_r.histogram(), rec_w.histogram()
        if spec.writes and fd >= 0 and spec.end_fsync:
            issuer.flush()  # written data reaches the device inside the window (fio end_fsync)
            for other in written:  # a worker's other files: fio's end_fsync reopens and fsyncs each too
                if other != path:
                    other_fd = os.open(other, os.O_RDONLY)
                    try:
                        os.fsync(other_fd)
                    finally:
                        os.close(other_fd)
        t_end = clock()
        counters = _add(earlier, issuer.counters())
        if merging:
            counters.update({k: float(v) for k, v in merged.items()})
        if pacer is not None:
            counters.update(pacer.counters())
        if not measuring:  # the run ended inside the warm-up: nothing was measured
            hist_r, hist_w, t_measure, ops_r, ops_w = LatencyHistogram(), LatencyHistogram(), t_end, 0, 0
            counters = {}
        return {"worker": worker, "t_start": t_start, "t_measure": t_measure, "t_end": t_end,
                "hist_r": hist_r, "hist_w": hist_w, "ops_r": ops_r, "ops_w": ops_w,
                "bytes_r": rec_r.bytes if measuring else 0, "bytes_w": rec_w.bytes if measuring else 0,
                "cpu_s": cpu_s() - cpu0, "ops_total": total_ops, "counters": counters,
                "datagen_wait_ns": (wsrc.wait_ns if wsrc else 0) - wait0, "ramp_done": measuring,
                # the producers' wait for a free buffer over the window, summed over `producers` threads
                "producer_wait_ns": (wsrc.producer_wait_ns() if wsrc else 0) - pwait0,
                "producers": wsrc.producers if wsrc else 0,
                "stopped": bool(stop is not None and stop.value)}
    finally:
        if issuer is not None:
            issuer.close()
        if wsrc is not None:
            wsrc.close()
        if fd >= 0:
            os.close(fd)


def _add(a: dict, b: dict) -> dict:
    """Engine counters of two issuers (files) of one worker, added up."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}
