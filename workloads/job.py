"""Run a Spec: prepare the target, spawn `writers` worker processes, release them together, gather.

Workers are processes started with spawn (threads collapse on cached small I/O under the GIL;
fork after dgen-py has run can hang). Each prepares its file (layout, cache eviction), buffers
and op plan, says so, and waits for the start (the parent closes a pipe they all watch), so
start-up is never timed. Every wait on a worker is bounded (see START_STALL_S...): a stopped or
stuck worker is named and killed, never waited for forever. Between "all prepared" and the start the parent drops caches if asked and reads the device counters. The
window runs from the start (plus ramp_s) to the end of the last worker. The hot loop does one engine call, two clock reads and one array
store per op (in C, see _hotloop.c); counters for progress are published once per group of ops.

`worker_loop()` takes a spec, a file and a start signal and returns a plain dict, so an MPI rank
or a batch task can run it without this module's process management.
"""
from __future__ import annotations

import ctypes
import errno
import multiprocessing as mp
import multiprocessing.connection
import os
import resource
import signal
import time

import numpy as np
import psutil

from . import engines, targets
from ._hotloop import run_ops
from .data import aligned_buffer, measure_ratios, write_source
from .errors import Interrupted, WorkloadError
from .judge import judge
from .metrics import MIB, N_BUCKETS, LatencyHistogram, Result, combine
from .patterns import op_chunks
from .spec import Spec

POLL_S = 0.05
GROUP_BYTES = 16 << 20  # publish progress / check the clock about every 16 MiB...
GROUP_MAX_OPS = 256  # ...or every 256 ops, whichever comes first
NEVER = 1 << 62

# Every wait on a worker is bounded, so a worker that is stopped (SIGSTOP, a debugger) or stuck in
# uninterruptible I/O can never hang the run:
START_STALL_S = 120.0  # no further worker got ready for this long: spawning one and importing
#                        numpy takes seconds even on a loaded machine, so two minutes means stuck
RUN_GRACE_S = 30.0  # after a timed run's deadline: the final fsync (fio's end_fsync) of what the
#                     page cache holds, and sending the result, fit in this on any working disk
STALL_S = 30.0  # a worker whose op counter has not moved for this long while others already
#                 finished is stuck: it publishes progress every <= 256 ops or 16 MiB
REAP_GRACE_S = 2.0  # asked to stop, a worker returns after its current group of ops
TERM_GRACE_S = 1.0  # then SIGTERM; a stopped process only dies of...
KILL_WAIT_S = 2.0  # ...SIGKILL; one in uninterruptible I/O dies when that I/O ends: not waited for
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run(spec: Spec, progress=None) -> Result:
    """Run one measured point (`repeats` times). `progress(elapsed_s, bytes_done, mib_s)` is called
    about once a second. Raises ConfigError for bad input (before any I/O), WorkloadError for I/O."""
    spec.check()
    engine = engines.get(spec.engine)
    engine.check(spec)
    results: list[Result] = []
    try:
        for _ in range(spec.repeats):
            results.append(_run_once(spec, engine, progress))
    except Interrupted as stopped:  # keep what the finished repeats and the stopped one measured
        done = results + ([stopped.partial] if stopped.partial else [])
        stopped.partial = _verdict(spec, done[0] if len(done) == 1 else combine(done)) if done else None
        raise
    except WorkloadError as failed:  # a stuck worker: what the others measured, marked invalid
        if getattr(failed, "partial", None) is not None:
            failed.partial = _verdict(spec, failed.partial)
        raise
    result = results[0] if len(results) == 1 else combine(results)
    result.data_measured = measure_ratios(spec)
    return _verdict(spec, result)


def _verdict(spec: Spec, result: Result) -> Result:
    valid, verdicts = judge(spec, result)
    result.valid = valid and not result.info.get("stopped")
    result.warnings = verdicts + [w for w in result.warnings if w not in verdicts]
    if result.info.get("stopped"):
        result.warnings.insert(0, "the run was interrupted: these are the figures up to the stop")
    return result


def _run_once(spec: Spec, engine, progress) -> Result:
    target = targets.get(spec.target)(spec, engine.does_io)
    placement = target.prepare()
    result = None
    try:
        if engine.does_io:
            target.create_files(placement)
        if engine.external:
            result = engine.run_job(spec, target, placement, progress)
        else:
            result = _run_workers(spec, placement, progress)
    except (Interrupted, WorkloadError) as stopped:
        result = getattr(stopped, "partial", None)
        raise
    finally:
        if result is not None:  # also what an interrupted run measured: say where it ran
            result.warnings[:0] = placement.warnings
            result.info.update(placement.info())
            if spec.keep_files:
                result.info["files"] = [str(p) for p in placement.files]
        if not spec.keep_files:
            target.cleanup(placement)
    return result


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # all threads, the dgen producer included
    return ru.ru_utime + ru.ru_stime


def _layout(fd: int, spec: Spec, source, base: int = 0) -> None:
    """Write the worker's region sequentially with the configured data, then fsync: outside the window."""
    pos, size = 0, spec.file_size
    while pos < size:
        chunk = memoryview(source.current_chunk())
        n = min(len(chunk), size - pos)
        done = os.pwrite(fd, chunk[:n], base + pos)
        chunk.release()
        if done != n:
            raise OSError(errno.ENOSPC, "short write while laying out the file")
        pos += n
        source.advance()
    os.fsync(fd)
    source.wait_ns = 0


def _evict(fd: int) -> None:
    """Drop a file's pages from the page cache (dirty pages were fsynced by the layout)."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def prepare_files(spec: Spec, placement) -> list[str]:
    """Lay out and evict every file, drop caches if asked, let the device settle: the same for
    every engine, so iosweep's loop and fio start from the same state. Returns warnings."""
    direct = placement.io_mode in ("direct", "direct-ignored")
    laid_out = 0  # bytes of the finished files, for the message of a full disk
    for worker, path in enumerate(placement.worker_paths(spec.writers)):
        fd = os.open(path, os.O_RDWR | (os.O_DIRECT if direct else 0))
        try:
            if spec.needs_layout:
                source = write_source(spec, worker)
                try:
                    _layout(fd, spec, source, placement.offset(worker, spec.file_size))
                finally:
                    source.close()
            if spec.cache != "warm":
                _evict(fd)
        except OSError as e:  # a full disk (or an I/O error) while laying out: one line, as in the window
            partial = os.fstat(fd).st_size if placement.shared_path is None else 0
            raise WorkloadError(_describe({"errno": e.errno, "message": e.strerror or str(e),
                                           "bytes_done": laid_out + partial}, placement)) from None
        finally:
            os.close(fd)
        laid_out += spec.file_size
    warnings = []
    if spec.cache == "drop":
        why = drop_caches()
        if why:
            warnings.append(why)
    if spec.needs_layout:
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


class Aborted(Exception):
    """Another worker failed before the start, or the run was stopped."""


def worker_loop(spec: Spec, worker: int, path: str | None, direct: bool, wait_start, ops_done=None,
                stop=None, prepared: bool = False, base: int = 0) -> dict:
    """Prepare (unless `prepared`: the caller laid out and evicted the file), wait for
    `wait_start()`, run the measured loop over the region starting at `base`, return counters
    and histograms."""
    bs = spec.block_size
    mode = engines.get(spec.engine).hot_mode
    fd = -1
    if path is not None:
        fd = os.open(path, os.O_RDWR | (os.O_DIRECT if direct else 0))
    lay_out = spec.needs_layout and fd >= 0 and not prepared
    # the layout is the data stream's first pass; the measured writes continue after it
    wsrc = write_source(spec, worker, first_pass=int(spec.needs_layout and prepared)) \
        if (spec.writes or lay_out) else None
    rbuf = aligned_buffer(bs) if spec.reads else None
    try:
        if lay_out:
            _layout(fd, spec, wsrc, base)
        if fd >= 0 and spec.cache != "warm" and not prepared:
            _evict(fd)
        rec_r, rec_w = _Recorder(), _Recorder()  # filled in place by run_ops
        ops_r = ops_w = wi = 0
        wchunk = wsrc.current_chunk() if spec.writes else None
        wper = len(wchunk) // bs if wchunk is not None else 0
        group = max(1, min(GROUP_MAX_OPS, GROUP_BYTES // bs))
        timed = spec.latency
        clock = time.perf_counter_ns  # CLOCK_MONOTONIC, the clock run_ops reads too
        parent = os.getppid()

        wait_start()
        if stop is not None and stop.value:
            raise Aborted()
        t_start = clock()
        ramp_end = t_start + int(spec.ramp_s * 1e9)
        deadline = ramp_end + int(spec.duration_s * 1e9) if spec.duration_s else NEVER
        measuring = spec.ramp_s <= 0
        t_measure, cpu0, wait0 = t_start, _cpu_s(), (wsrc.wait_ns if wsrc else 0)
        total_ops = 0
        finished = False
        for offsets, flags in op_chunks(spec, worker):
            if base:
                offsets = offsets + base
            flags = flags.view(np.uint8) if flags is not None else None
            pos = 0
            while pos < len(offsets):
                done, wi, n_r, n_w, err, ret = run_ops(fd, mode, offsets, pos, min(group, len(offsets) - pos), flags,
                                                       wchunk, wi, rbuf, bs, rec_r.counts, rec_r.stats, rec_w.counts,
                                                       rec_w.stats, timed, stop, 0 if deadline == NEVER else deadline)
                pos += done
                total_ops += done
                ops_r += n_r
                ops_w += n_w
                if err:
                    raise OSError(err, os.strerror(err)) if err > 0 else \
                        OSError(errno.ENOSPC if spec.writes else errno.EIO, f"short I/O: {ret} of {bs} bytes")
                if wi == wper and wchunk is not None:
                    wchunk, wi = wsrc.advance(), 0
                if ops_done is not None:
                    ops_done[worker] = total_ops
                t1 = clock()
                if not measuring and t1 >= ramp_end:  # warm-up over: forget what it measured
                    rec_r, rec_w, ops_r, ops_w = _Recorder(), _Recorder(), 0, 0
                    measuring, t_measure, cpu0 = True, t1, _cpu_s()
                    wait0 = wsrc.wait_ns if wsrc else 0
                if t1 >= deadline or (stop is not None and stop.value) or os.getppid() != parent:
                    finished = True  # time is up, the parent asked us to stop, or it died
                    break
            if finished:
                break
        hist_r, hist_w = rec_r.histogram(), rec_w.histogram()
        if spec.writes and fd >= 0 and spec.end_fsync:
            os.fsync(fd)  # buffered writes reach the device inside the window (fio end_fsync)
        t_end = clock()
        if not measuring:  # the run ended inside the warm-up: nothing was measured
            hist_r, hist_w, t_measure, ops_r, ops_w = LatencyHistogram(), LatencyHistogram(), t_end, 0, 0
        return {"worker": worker, "t_start": t_start, "t_measure": t_measure, "t_end": t_end,
                "hist_r": hist_r, "hist_w": hist_w, "ops_r": ops_r, "ops_w": ops_w,
                "cpu_s": _cpu_s() - cpu0, "ops_total": total_ops,
                "datagen_wait_ns": (wsrc.wait_ns if wsrc else 0) - wait0, "ramp_done": measuring,
                "stopped": bool(stop is not None and stop.value)}
    finally:
        if wsrc is not None:
            wsrc.close()
        if fd >= 0:
            os.close(fd)


class _Recorder:
    """What run_ops fills per direction: histogram counts and sum / min / max, in place."""

    def __init__(self):
        self.counts = np.zeros(N_BUCKETS, dtype=np.int64)
        self.stats = np.array([0, np.iinfo(np.int64).max, 0], dtype=np.int64)

    def histogram(self) -> LatencyHistogram:
        total = int(self.counts.sum())
        return LatencyHistogram(counts=self.counts, total=total, sum_ns=int(self.stats[0]),
                                min_ns=int(self.stats[1]) if total else 0, max_ns=int(self.stats[2]))


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (kill -9 included), so no worker
    is left blocking; then close the race of a parent that died before the request took effect."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the loop's ppid checks remain
        pass
    if os.getppid() != parent:
        os._exit(1)


def _worker_main(spec, worker, path, direct, base, shared, go, out, parent):
    """Process entry point: the parent handles Ctrl-C / SIGHUP and tells workers through `stop`."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the parent stops us
    result = {"worker": worker, "error": None}

    def wait_start():
        shared.prepared[worker] = 1
        go.poll(None)  # the parent closes its end of the pipe: every worker wakes at once
        shared.starts[worker] = time.perf_counter_ns()

    try:
        result = worker_loop(spec, worker, path, direct, wait_start, shared.ops_done, shared.stop, prepared=True,
                             base=base)
        result["error"] = None
    except Aborted:
        result["aborted"] = True
    except OSError as e:
        result["error"] = {"errno": e.errno, "message": e.strerror or str(e),
                           "bytes_done": shared.ops_done[worker] * spec.block_size}
    except BaseException as e:  # a bug: report it with its type, the parent raises it
        result["error"] = {"errno": None, "message": f"{type(e).__name__}: {e}",
                           "bytes_done": shared.ops_done[worker] * spec.block_size}
    finally:
        out.send(result)
        out.close()


def system_sample(net_at_start) -> dict:
    """The machine's state under the names of MLflow's System Metrics (mlflow/system_metrics/metrics):
    the runner logs them as system/<name>. Network traffic counts from the start of the window."""
    mem, disk, net = psutil.virtual_memory(), psutil.disk_usage(os.sep), psutil.net_io_counters()
    return {"cpu_utilization_percentage": psutil.cpu_percent(None),
            "system_memory_usage_megabytes": mem.used / 1e6, "system_memory_usage_percentage": mem.percent,
            "disk_usage_percentage": disk.percent, "disk_usage_megabytes": disk.used / 1e6,
            "disk_available_megabytes": disk.free / 1e6,
            "network_receive_megabytes": (net.bytes_recv - net_at_start.bytes_recv) / 1e6,
            "network_transmit_megabytes": (net.bytes_sent - net_at_start.bytes_sent) / 1e6}


class _Sampler:
    """Per-interval throughput from the workers' published op counters, the machine's CPU, memory
    and device traffic over the same interval, and the progress calls."""

    def __init__(self, spec: Spec, ops_done, starts, progress, device: str | None):
        self.spec, self.ops_done, self.starts, self.progress = spec, ops_done, starts, progress
        self.device = device
        self.t0 = None
        self.rows: list[dict] = []
        self.last_t = self.last_ops = 0
        self.last_dev = None
        self.dev_after_ramp = None  # device counters when ramp_s ended (to one poll, <= 50 ms)
        self.next_log = self.next_progress = 0

    def poll(self, final: bool = False) -> None:
        """final: the workers are done; a run shorter than one interval still gets one sample."""
        now = time.perf_counter_ns()
        if self.t0 is None:
            if not all(self.starts):
                return
            self.t0 = min(self.starts)
            self.next_log = self.t0 + int(self.spec.log_interval_s * 1e9)
            self.next_progress = self.t0 + 1_000_000_000
            self.last_t = self.t0
            self.last_dev = device_counters(self.device)
            psutil.cpu_percent(None)  # starts psutil's interval
            self.net_at_start = psutil.net_io_counters()
        if self.dev_after_ramp is None and self.spec.ramp_s and now - self.t0 >= self.spec.ramp_s * 1e9:
            self.dev_after_ramp = device_counters(self.device)
        if final and not self.rows:
            self.next_log = now
        if now < self.next_log and now < self.next_progress:
            return
        ops = sum(self.ops_done)
        if now >= self.next_log:
            dt = (now - self.last_t) / 1e9
            d_ops = ops - self.last_ops
            t_s = (now - self.t0) / 1e9
            row = {"t_s": t_s, "mib_s": d_ops * self.spec.block_size / MIB / dt, "iops": d_ops / dt,
                   "ramp": t_s - dt / 2 < self.spec.ramp_s,  # mostly inside the warm-up
                   **system_sample(self.net_at_start)}
            dev = device_counters(self.device)
            if dev and self.last_dev:
                row["device_read_mib_s"] = (dev[0] - self.last_dev[0]) / MIB / dt
                row["device_write_mib_s"] = (dev[1] - self.last_dev[1]) / MIB / dt
            self.rows.append(row)
            self.last_t, self.last_ops, self.last_dev = now, ops, dev
            self.next_log += int(self.spec.log_interval_s * 1e9)
        if now >= self.next_progress and self.progress is not None:
            rate = self.rows[-1]["mib_s"] if self.rows else 0.0
            self.progress((now - self.t0) / 1e9, ops * self.spec.block_size, rate)
            self.next_progress += 1_000_000_000


class _Shared:
    """What the parent and its workers share: start protocol, progress counters, stop flag.

    Plain shared memory and pipes, no multiprocessing Event or Queue: those are named POSIX
    semaphores (/dev/shm/sem.mp-*) that outlive a killed parent whose resource tracker died too,
    and a worker stopped while holding one of their locks blocks the parent."""

    def __init__(self, ctx, n: int):
        self.prepared, self.ops_done, self.starts = ctx.RawArray("b", n), ctx.RawArray("q", n), ctx.RawArray("q", n)
        self.stop = ctx.RawValue("b", 0)
        self.go_wait, self.go = ctx.Pipe(duplex=False)  # closing `go` starts every worker at once
        self.results = [ctx.Pipe(duplex=False) for _ in range(n)]  # one (reader, writer) per worker

    def __getstate__(self):  # what a worker gets: never the pipes, or a write end would outlive its owner
        return {k: v for k, v in self.__dict__.items() if k not in ("go_wait", "go", "results")}

    def release(self) -> None:
        self.go.close()

    @property
    def released(self) -> bool:
        return self.go.closed


def device_counters(device: str | None) -> tuple[int, int] | None:
    if device is None:
        return None
    counters = psutil.disk_io_counters(perdisk=True).get(device)
    return (counters.read_bytes, counters.write_bytes) if counters else None


def drop_caches() -> str | None:
    """Write back and drop the whole page cache. None if done, else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"cache=drop: cannot write /proc/sys/vm/drop_caches ({e.strerror}); evicted the run's files only"


def _run_workers(spec: Spec, placement, progress) -> Result:
    paths = [str(p) for p in placement.worker_paths(spec.writers)]
    warnings = prepare_files(spec, placement) if paths else []
    ctx = mp.get_context("spawn")
    n = spec.writers
    shared = _Shared(ctx, n)
    direct = placement.io_mode in ("direct", "direct-ignored")
    paths = paths or [None] * n
    procs = [ctx.Process(target=_worker_main, name=f"iosweep-worker-{w}", daemon=True,
                         args=(spec, w, paths[w], direct, placement.offset(w, spec.file_size), shared, shared.go_wait,
                               shared.results[w][1], os.getpid()))
             for w in range(n)]
    conns = [reader for reader, _ in shared.results]
    got: dict[int, dict] = {}
    sampler = _Sampler(spec, shared.ops_done, shared.starts, progress, placement.device)
    watch = _Watch(spec, procs, shared)
    dev0 = dev1 = None
    try:
        for p, (_, writer) in zip(procs, shared.results):
            p.start()
            writer.close()  # the worker holds the only write end: its death reads as EOF here
        shared.go_wait.close()
        _collect(got, procs, conns, shared, until=lambda: all(shared.prepared) or len(got) == n, watch=watch)
        if not any(o.get("error") for o in got.values()):
            dev0 = device_counters(placement.device)
            watch.started()
            shared.release()
            _collect(got, procs, conns, shared, until=lambda: len(got) == n, sampler=sampler, watch=watch)
            sampler.poll(final=True)
            dev1 = device_counters(placement.device)
    except (KeyboardInterrupt, Interrupted, Stuck) as e:
        started = shared.released
        _stop(shared, procs, conns, got)  # workers return after their current op
        measured = [o for o in got.values() if "hist_r" in o]
        partial = None
        if started and measured:
            partial = _merge(spec, measured, placement, sampler.rows)
            partial.info["stopped"] = True
            partial.warnings[:0] = warnings + _missing(n, measured)
            partial.set_device_traffic(_window_start(spec, dev0, sampler), device_counters(placement.device))
        if isinstance(e, Stuck):
            failed = WorkloadError(str(e))
            failed.partial = partial  # the run fails, what the other workers measured is kept
            raise failed from None
        raise Interrupted(e.signum if isinstance(e, Interrupted) else signal.SIGINT, partial) from None
    finally:
        _stop(shared, procs, conns, got)
    errors = [o for o in got.values() if o.get("error")]
    if errors:
        raise WorkloadError(_describe(errors[0]["error"], placement))
    result = _merge(spec, list(got.values()), placement, sampler.rows)
    result.warnings[:0] = warnings
    result.set_device_traffic(_window_start(spec, dev0, sampler), dev1)
    return result


def _missing(n: int, measured: list[dict]) -> list[str]:
    """A warning naming the workers whose figures are not in a partial result."""
    have = {o["worker"] for o in measured}
    lost = [str(w) for w in range(n) if w not in have]
    return [f"worker {', '.join(lost)} returned nothing (stuck or killed): its ops are not in these figures"] \
        if lost else []


def _window_start(spec: Spec, dev_at_go, sampler: _Sampler):
    """Device counters where the metrics' window starts: at the start, or when ramp_s ended."""
    return sampler.dev_after_ramp if spec.ramp_s else dev_at_go


class Stuck(WorkloadError):
    """A worker stopped making progress; the message names it."""


class _Watch:
    """Bounds every wait on the workers (see START_STALL_S, RUN_GRACE_S, STALL_S): names a stuck one."""

    def __init__(self, spec: Spec, procs, shared):
        self.spec, self.procs, self.shared = spec, procs, shared
        self.deadline = None
        self.last_ready, self.ready_since = 0, time.monotonic()
        self.ops = [0] * len(procs)
        self.moved = [time.monotonic()] * len(procs)

    def started(self) -> None:
        now = time.monotonic()
        self.moved = [now] * len(self.procs)
        if self.spec.duration_s:
            self.deadline = now + self.spec.ramp_s + self.spec.duration_s + RUN_GRACE_S

    def check(self, got: dict) -> None:
        """Raise WorkloadError naming the first worker that is stuck."""
        now = time.monotonic()
        pending = [w for w in range(len(self.procs)) if w not in got]
        if not self.shared.released:  # the start barrier
            ready = sum(self.shared.prepared)
            if ready != self.last_ready:
                self.last_ready, self.ready_since = ready, now
            elif now - self.ready_since > START_STALL_S:
                w = next(w for w in pending if not self.shared.prepared[w])
                self._stuck(w, f"did not get ready within {START_STALL_S:.0f} s")
            return
        for w in pending:
            if self.shared.ops_done[w] != self.ops[w]:
                self.ops[w], self.moved[w] = self.shared.ops_done[w], now
        for w in pending:
            if self.deadline is not None and now > self.deadline:
                self._stuck(w, f"was still running {RUN_GRACE_S:.0f} s after the run's end")
            if now - self.moved[w] > STALL_S and got:
                self._stuck(w, f"made no progress for {STALL_S:.0f} s while {len(got)} other(s) finished")
            if now - self.moved[w] > STALL_S and _stopped(self.procs[w]):  # e.g. the only worker of a sized run
                self._stuck(w, f"was stopped for {STALL_S:.0f} s")

    def _stuck(self, w: int, why: str):
        pid = self.procs[w].pid
        try:
            state = psutil.Process(pid).status()
        except psutil.Error:
            state = "gone"
        raise Stuck(f"worker {w} (pid {pid}, {state}) {why}: killed it; "
                            f"its {self.shared.ops_done[w]} ops are not in the figures")


def _receive(w: int, conns, procs, got: dict) -> dict | None:
    """Read worker w's result; None if it died without sending one."""
    try:
        out = conns[w].recv()
    except (EOFError, OSError):
        return None
    got[w] = out
    return out


def _collect(got: dict, procs, conns, shared, until, sampler=None, watch=None) -> None:
    """Gather worker results until `until()` or a worker fails; notice workers that died or hang."""
    while not until():
        waiting = [conns[w] for w in range(len(conns)) if w not in got]
        for conn in mp.connection.wait(waiting, timeout=POLL_S):
            w = conns.index(conn)
            out = _receive(w, conns, procs, got)
            if out is None:
                procs[w].join(1.0)
                raise WorkloadError(f"worker {w} died without a result (exit code {procs[w].exitcode})")
            if out.get("error"):
                shared.stop.value = 1
                return
        if sampler is not None:
            sampler.poll()
        if watch is not None:
            watch.check(got)


def _stop(shared, procs, conns, got: dict) -> None:
    """Tell every worker to stop (releasing any still waiting to start), then reap them."""
    shared.stop.value = 1
    shared.release()
    _reap(procs, conns, got)


def _reap(procs, conns, got: dict) -> None:
    """Let workers finish (reading what they still send, so none blocks on a full pipe), then end
    them: SIGTERM, then SIGKILL, every wait bounded. Once they are all reaped this returns at once."""
    if all(p.exitcode is not None for p in procs) and all(c.closed for c in conns):
        return
    deadline = time.monotonic() + REAP_GRACE_S
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        for p in procs:
            if _stopped(p):  # SIGSTOP or a debugger: it will not return, and only SIGKILL ends it
                p.kill()
        waiting = [c for w, c in enumerate(conns) if w not in got and not c.closed]
        if not waiting:
            time.sleep(0.05)
        for conn in mp.connection.wait(waiting, timeout=0.05) if waiting else []:
            if _receive(conns.index(conn), conns, procs, got) is None:
                conn.close()  # died without a result
    for sig_wait, end in ((TERM_GRACE_S, "terminate"), (KILL_WAIT_S, "kill")):
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            getattr(p, end)()
        until = time.monotonic() + sig_wait
        for p in alive:
            p.join(max(0.0, until - time.monotonic()))
    for p in procs:
        if p.is_alive():  # in uninterruptible I/O: it dies when that ends; multiprocessing would
            mp.process._children.discard(p)  # join it at exit without a timeout: forget it instead
    for w, conn in enumerate(conns):  # results flushed just before their worker exited
        if w not in got and not conn.closed and procs[w].exitcode is not None and conn.poll(0):
            _receive(w, conns, procs, got)
        conn.close()


def _stopped(p) -> bool:
    try:
        return p.is_alive() and psutil.Process(p.pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


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
    ops_r, ops_w = sum(o["ops_r"] for o in outs), sum(o["ops_w"] for o in outs)
    t_measure = min(o["t_measure"] for o in outs)
    t_end = max(o["t_end"] for o in outs)
    return Result(
        elapsed_s=(t_end - t_measure) / 1e9,
        bytes_read=ops_r * spec.block_size, bytes_written=ops_w * spec.block_size,
        ops_read=ops_r, ops_written=ops_w, lat_read=hist_r, lat_write=hist_w,
        io_mode=placement.io_mode, cpu_s=sum(o["cpu_s"] for o in outs),
        datagen_wait_s=sum(o["datagen_wait_ns"] for o in outs) / 1e9,
        timeseries=timeseries,
        info={"stopped": any(o.get("stopped") for o in outs), "ramp_done": all(o["ramp_done"] for o in outs)},
    )
