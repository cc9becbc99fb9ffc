"""Run a Spec: prepare the target, spawn `writers` worker processes, release them together, gather.

Workers are processes started with spawn (threads collapse on cached small I/O under the GIL;
fork after dgen-py has run can hang). Each prepares its file, buffers and op plan, then waits
on a barrier, so start-up is never timed. The window runs from the barrier (plus ramp_s) to
the end of the last worker. The hot loop does one engine call, two clock reads and one array
store per op; counters for progress are published once per group of ops.

`worker_loop()` takes a spec, a file and a start signal and returns a plain dict, so an MPI rank
or a batch task can run it without this module's process management.
"""
from __future__ import annotations

import errno
import multiprocessing as mp
import os
import queue
import resource
import signal
import threading
import time
from array import array

import numpy as np

from . import engines, targets
from .data import read_source, write_source
from .errors import WorkloadError
from .metrics import MIB, LatencyHistogram, Result
from .patterns import op_chunks
from .spec import Spec

LAT_CAP = 1 << 16  # latencies buffered per worker before folding into the histogram
POLL_S = 0.05
GROUP_BYTES = 16 << 20  # publish progress / check the clock about every 16 MiB...
GROUP_MAX_OPS = 256  # ...or every 256 ops, whichever comes first
NEVER = 1 << 62


def run(spec: Spec, progress=None) -> Result:
    """Run one measured point. `progress(elapsed_s, bytes_done, mib_s)` is called about once a second."""
    spec.check()
    engine = engines.get(spec.engine)
    engine.check(spec)
    target = targets.get(spec.target)(spec, engine.does_io)
    placement = target.prepare()
    try:
        if engine.does_io:
            target.create_files(placement)
        if engine.external:
            result = engine.run_job(spec, target, placement, progress)
        else:
            result = _run_workers(spec, placement, progress)
        result.warnings[:0] = placement.warnings
        result.info.update(placement.info())
        if spec.keep_files:
            result.info["files"] = [str(p) for p in placement.files]
    finally:
        if not spec.keep_files:
            target.cleanup(placement)
    return result


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # all threads, the dgen producer included
    return ru.ru_utime + ru.ru_stime


def _layout(fd: int, spec: Spec, source) -> None:
    """Write the whole file sequentially with the configured data, then fsync: outside the window."""
    pos, size = 0, spec.file_size
    while pos < size:
        chunk = memoryview(source.current_chunk())
        n = min(len(chunk), size - pos)
        done = os.pwrite(fd, chunk[:n], pos)
        chunk.release()
        if done != n:
            raise OSError(errno.ENOSPC, "short write while laying out the file")
        pos += n
        source.advance()
    os.fsync(fd)
    source.wait_ns = 0


def worker_loop(spec: Spec, worker: int, path: str | None, direct: bool, wait_start, ops_done=None,
                stop=None) -> dict:
    """Prepare, wait for `wait_start()`, run the measured loop, return counters and histograms."""
    bs = spec.block_size
    read_op, write_op = engines.get(spec.engine).ops(bs)
    fd = -1
    if path is not None:
        fd = os.open(path, os.O_RDWR | (os.O_DIRECT if direct else 0))
    wsrc = write_source(spec, worker) if (spec.writes or (spec.needs_layout and fd >= 0)) else None
    rsrc = read_source(spec) if spec.reads else None
    try:
        if spec.needs_layout and fd >= 0:
            _layout(fd, spec, wsrc)
        hist_r, hist_w = LatencyHistogram(), LatencyHistogram()
        lat_r, lat_w = array("q", bytes(8 * LAT_CAP)), array("q", bytes(8 * LAT_CAP))
        n_r = n_w = 0
        group = max(1, min(GROUP_MAX_OPS, GROUP_BYTES // bs))
        clock = time.perf_counter_ns  # CLOCK_MONOTONIC: comparable across processes
        wbufs = wsrc.current() if wsrc else None
        wper, wi = (len(wbufs), 0) if wbufs else (0, 0)
        rbuf = rsrc.current()[0] if rsrc else None
        mixed = spec.pattern == "mixed"
        uniform_op = read_op if spec.reads else write_op

        wait_start()
        t_start = clock()
        ramp_end = t_start + int(spec.ramp_s * 1e9)
        deadline = ramp_end + int(spec.duration_s * 1e9) if spec.duration_s else NEVER
        measuring = spec.ramp_s <= 0
        t_measure, cpu0, wait0 = t_start, _cpu_s(), (wsrc.wait_ns if wsrc else 0)
        total_ops = 0
        t1 = t_start
        for offsets, flags in op_chunks(spec, worker):
            offs = offsets.tolist()
            flag_list = flags.tolist() if mixed else None
            for g in range(0, len(offs), group):
                if mixed:
                    for off, is_read in zip(offs[g:g + group], flag_list[g:g + group]):
                        if is_read:
                            t0 = clock()
                            r = read_op(fd, rbuf, off)
                            t1 = clock()
                            lat_r[n_r] = t1 - t0
                            n_r += 1
                            if n_r == LAT_CAP:
                                hist_r.add(np.frombuffer(lat_r, dtype=np.int64))
                                n_r = 0
                        else:
                            if wi == wper:
                                wbufs, wi = wsrc.advance(), 0
                            t0 = clock()
                            r = write_op(fd, wbufs[wi], off)
                            t1 = clock()
                            wi += 1
                            lat_w[n_w] = t1 - t0
                            n_w += 1
                            if n_w == LAT_CAP:
                                hist_w.add(np.frombuffer(lat_w, dtype=np.int64))
                                n_w = 0
                        if r != bs:
                            raise OSError(errno.EIO, f"short I/O: {r} of {bs} bytes at offset {off}")
                elif spec.reads:
                    for off in offs[g:g + group]:
                        t0 = clock()
                        r = uniform_op(fd, rbuf, off)
                        t1 = clock()
                        if r != bs:
                            raise OSError(errno.EIO, f"short read: {r} of {bs} bytes at offset {off}")
                        lat_r[n_r] = t1 - t0
                        n_r += 1
                        if n_r == LAT_CAP:
                            hist_r.add(np.frombuffer(lat_r, dtype=np.int64))
                            n_r = 0
                else:
                    for off in offs[g:g + group]:
                        if wi == wper:
                            wbufs, wi = wsrc.advance(), 0
                        t0 = clock()
                        r = uniform_op(fd, wbufs[wi], off)
                        t1 = clock()
                        wi += 1
                        if r != bs:
                            raise OSError(errno.ENOSPC, f"short write: {r} of {bs} bytes at offset {off}")
                        lat_w[n_w] = t1 - t0
                        n_w += 1
                        if n_w == LAT_CAP:
                            hist_w.add(np.frombuffer(lat_w, dtype=np.int64))
                            n_w = 0
                total_ops += min(group, len(offs) - g)
                if ops_done is not None:
                    ops_done[worker] = total_ops
                if not measuring and t1 >= ramp_end:  # warm-up over: forget what it measured
                    hist_r, hist_w, n_r, n_w = LatencyHistogram(), LatencyHistogram(), 0, 0
                    measuring, t_measure, cpu0 = True, t1, _cpu_s()
                    wait0 = wsrc.wait_ns if wsrc else 0
                if t1 >= deadline or (stop is not None and stop.value):
                    break
            else:
                continue
            break
        hist_r.add(np.frombuffer(lat_r, dtype=np.int64, count=n_r))
        hist_w.add(np.frombuffer(lat_w, dtype=np.int64, count=n_w))
        if spec.writes and fd >= 0 and spec.end_fsync:
            os.fsync(fd)  # buffered writes reach the device inside the window (fio end_fsync)
        t_end = clock()
        if not measuring:  # the run ended inside the warm-up: nothing was measured
            hist_r, hist_w, t_measure = LatencyHistogram(), LatencyHistogram(), t_end
        return {"worker": worker, "t_start": t_start, "t_measure": t_measure, "t_end": t_end,
                "hist_r": hist_r, "hist_w": hist_w, "cpu_s": _cpu_s() - cpu0, "ops_total": total_ops,
                "datagen_wait_ns": (wsrc.wait_ns if wsrc else 0) - wait0, "ramp_done": measuring,
                "stopped": bool(stop is not None and stop.value)}
    finally:
        for src in (wsrc, rsrc):
            if src is not None:
                src.close()
        if fd >= 0:
            os.close(fd)


def _worker_main(spec, worker, path, direct, barrier, ops_done, starts, stop, results):
    """Process entry point: the parent handles Ctrl-C and tells workers through `stop`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = {"worker": worker, "error": None}

    def wait_start():
        barrier.wait()
        starts[worker] = time.perf_counter_ns()

    try:
        out = worker_loop(spec, worker, path, direct, wait_start, ops_done, stop)
        out["error"] = None
    except threading.BrokenBarrierError:
        out["aborted"] = True
    except OSError as e:
        barrier.abort()
        out["error"] = {"errno": e.errno, "message": e.strerror or str(e),
                        "bytes_done": ops_done[worker] * spec.block_size}
    except BaseException as e:  # a bug: report it with its type, the parent raises it
        barrier.abort()
        out["error"] = {"errno": None, "message": f"{type(e).__name__}: {e}",
                        "bytes_done": ops_done[worker] * spec.block_size}
    finally:
        results.put(out)


class _Sampler:
    """Per-interval throughput from the workers' published op counters, and the progress calls."""

    def __init__(self, spec: Spec, ops_done, starts, progress):
        self.spec, self.ops_done, self.starts, self.progress = spec, ops_done, starts, progress
        self.t0 = None
        self.rows: list[dict] = []
        self.last_t = self.last_ops = 0
        self.next_log = self.next_progress = 0

    def poll(self) -> None:
        now = time.perf_counter_ns()
        if self.t0 is None:
            if not all(self.starts):
                return
            self.t0 = min(self.starts)
            self.next_log = self.t0 + int(self.spec.log_interval_s * 1e9)
            self.next_progress = self.t0 + 1_000_000_000
            self.last_t = self.t0
        if now < self.next_log and now < self.next_progress:
            return
        ops = sum(self.ops_done)
        if now >= self.next_log:
            dt = (now - self.last_t) / 1e9
            d_ops = ops - self.last_ops
            t_s = (now - self.t0) / 1e9
            self.rows.append({"t_s": t_s, "mib_s": d_ops * self.spec.block_size / MIB / dt, "iops": d_ops / dt,
                              "ramp": t_s - dt / 2 < self.spec.ramp_s})  # mostly inside the warm-up
            self.last_t, self.last_ops = now, ops
            self.next_log += int(self.spec.log_interval_s * 1e9)
        if now >= self.next_progress and self.progress is not None:
            rate = self.rows[-1]["mib_s"] if self.rows else 0.0
            self.progress((now - self.t0) / 1e9, ops * self.spec.block_size, rate)
            self.next_progress += 1_000_000_000


def _run_workers(spec: Spec, placement, progress) -> Result:
    ctx = mp.get_context("spawn")
    n = spec.writers
    barrier = ctx.Barrier(n)
    ops_done, starts = ctx.RawArray("q", n), ctx.RawArray("q", n)
    stop = ctx.RawValue("b", 0)
    results = ctx.Queue()
    direct = placement.io_mode in ("direct", "direct-ignored")
    paths = [str(p) for p in placement.files] or [None] * n
    procs = [ctx.Process(target=_worker_main, name=f"iosweep-worker-{w}", daemon=True,
                         args=(spec, w, paths[w], direct, barrier, ops_done, starts, stop, results))
             for w in range(n)]
    for p in procs:
        p.start()
    sampler = _Sampler(spec, ops_done, starts, progress)
    got: dict[int, dict] = {}
    try:
        while len(got) < n:
            try:
                out = results.get(timeout=POLL_S)
                got[out["worker"]] = out
                if out.get("error"):
                    stop.value = 1
            except queue.Empty:
                dead = [w for w, p in enumerate(procs) if p.exitcode is not None and w not in got]
                if dead:
                    try:  # a worker that exited normally flushed its result first
                        out = results.get(timeout=1.0)
                        got[out["worker"]] = out
                        continue
                    except queue.Empty:
                        raise WorkloadError(f"worker {dead[0]} died without a result "
                                            f"(exit code {procs[dead[0]].exitcode})") from None
            sampler.poll()
    finally:
        stop.value = 1
        for p in procs:
            p.join(timeout=2)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    errors = [o for o in got.values() if o.get("error")]
    if errors:
        raise WorkloadError(_describe(errors[0]["error"], placement))
    return _merge(spec, list(got.values()), placement, sampler.rows)


def _describe(err: dict, placement) -> str:
    where = placement.scratch or placement.mount.mountpoint
    done = err["bytes_done"] / MIB
    if err["errno"] == errno.ENOSPC:
        return f"no space left on {where} after {done:.0f} MiB written"
    name = errno.errorcode.get(err["errno"], "") if err["errno"] else ""
    return f"I/O error on {where} after {done:.0f} MiB: {err['message']}" + (f" ({name})" if name else "")


def _merge(spec: Spec, outs: list[dict], placement, timeseries: list[dict]) -> Result:
    hist_r, hist_w = LatencyHistogram(), LatencyHistogram()
    for o in outs:
        hist_r.merge(o["hist_r"])
        hist_w.merge(o["hist_w"])
    t_measure = min(o["t_measure"] for o in outs)
    t_end = max(o["t_end"] for o in outs)
    warnings = []
    if not all(o["ramp_done"] for o in outs):
        warnings.append(f"the run ended inside ramp_s={spec.ramp_s}: nothing after the warm-up was measured")
    return Result(
        elapsed_s=(t_end - t_measure) / 1e9,
        bytes_read=hist_r.total * spec.block_size, bytes_written=hist_w.total * spec.block_size,
        ops_read=hist_r.total, ops_written=hist_w.total, lat_read=hist_r, lat_write=hist_w,
        io_mode=placement.io_mode, cpu_s=sum(o["cpu_s"] for o in outs),
        datagen_wait_s=sum(o["datagen_wait_ns"] for o in outs) / 1e9,
        warnings=warnings, timeseries=timeseries,
        info={"stopped": any(o.get("stopped") for o in outs)},
    )
