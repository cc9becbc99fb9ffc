"""Run a point's workers as processes: spawn `writers` of them, release them together, gather.

Workers are processes started with spawn (threads collapse on cached small I/O under the GIL;
fork after dgen-py has run can hang). Each opens its file, gets its engine's issuer, buffers and
op plan, says so, and waits for the start (the parent closes a pipe they all watch), so start-up
is never timed. Between "all prepared" and the start the parent reads the device counters. The
window runs from the start (plus ramp_s) to the end of the last worker.

Every wait on a worker is bounded (see START_STALL_S...): a stopped or stuck worker is named and
killed, never waited for forever. Workers die with their parent (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time

import psutil

from . import metadata
from .clients import boot_id
from .errors import Interrupted, WorkloadError
from .metrics import LatencyHistogram, Result
from .prepare import describe_error, device_counters, prepare_files
from .sampler import Sampler
from .formats import format_loop
from .metadata import metadata_loop
from .spec import APPEND, FORMAT_READ, Spec
from .worker import Aborted, worker_loop

POLL_S = 0.05
CLIENT_COLUMNS = ("rank", "host", "pid", "mib_s", "iops", "p99_us", "bytes", "elapsed_s", "fs", "mountpoint", "dir")
#                 (with repeats: and "repeat", metrics.combine)
STRAGGLER_PCT = 25.0  # clients: the slowest this far below the fastest is named in a warning

# Every wait on a worker is bounded, so a worker that is stopped (SIGSTOP, a debugger) or stuck in
# uninterruptible I/O can never hang the run:
START_STALL_S = 120.0  # no further worker got ready for this long: spawning one and importing
#                        numpy takes seconds even on a loaded machine, so two minutes means stuck
RUN_GRACE_S = 30.0  # after a timed run's deadline: the final fsync (fio's end_fsync) of what the
#                     page cache holds, and sending the result, fit in this on any working disk
STALL_S = 30.0  # a worker whose op counter has not moved for this long while others already
#                 finished is stuck: it publishes progress every <= 256 ops or 16 MiB
REAP_GRACE_S = 2.0  # asked to stop, a worker returns after its current group of ops
KILL_WAIT_S = 2.0  # then SIGKILL (workers ignore SIGTERM, see _worker_main); one in uninterruptible I/O dies
#                   when that I/O ends: not waited for
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def _worker_main(spec, worker, extents, direct, shared, go, out, parent):
    """Process entry point: the parent handles Ctrl-C / SIGHUP and tells workers through `stop`."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the parent stops us
    # a SIGTERM to the whole process group (mpirun ends a rank with kill(-pgid), so do `timeout` and service
    # managers) reaches us too: the parent stops us and keeps what we measured; _reap ends us with SIGKILL
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    result = {"worker": worker, "error": None}

    def wait_start():
        shared.prepared[worker] = 1
        go.poll(None)  # the parent closes its end of the pipe: every worker wakes at once
        shared.starts[worker] = time.perf_counter_ns()

    try:
        if spec.metadata:  # mdtest's phases in the worker's own directory (extents: [(dir, 0, 0)])
            result = metadata_loop(spec, worker, extents[0][0], wait_start, shared.ops_done, shared.stop,
                                   shared.phase_done)
        elif spec.target == "s3":  # requests on the worker's objects (extents: [(its key prefix, 0, 0)])
            from .objects import object_loop

            result = object_loop(spec, worker, extents[0][0], wait_start, shared.ops_done, shared.stop,
                                 shared.bytes_done)
        elif spec.pattern == APPEND:  # records appended to the worker's log (or the shared one)
            from .append import append_loop

            result = append_loop(spec, worker, extents[0][0], direct, wait_start, shared.ops_done, shared.stop,
                                 shared.bytes_done)
        elif spec.pattern == FORMAT_READ:  # numpy/pyarrow loads of the worker's table file
            result = format_loop(spec, worker, None, direct, wait_start, shared.ops_done, shared.stop, prepared=True,
                                 extents=extents)
        else:
            result = worker_loop(spec, worker, None, direct, wait_start, shared.ops_done, shared.stop, prepared=True,
                                 extents=extents, bytes_done=shared.bytes_done)
        result["error"] = None
    except Aborted:
        result["aborted"] = True
    except OSError as e:
        result["error"] = {"errno": e.errno, "message": e.strerror or str(e),
                           "bytes_done": _bytes_done(spec, shared, worker)}
    except BaseException as e:  # a bug: report it with its type, the parent raises it
        result["error"] = {"errno": None, "message": f"{type(e).__name__}: {e}",
                           "bytes_done": _bytes_done(spec, shared, worker)}
    finally:
        out.send(result)
        out.close()


def _bytes_done(spec: Spec, shared, worker: int) -> int:
    """A worker's bytes so far: published when ops vary in length, else its ops x block_size."""
    return shared.bytes_done[worker] if spec.variable_lengths else shared.ops_done[worker] * spec.block_size


class _Shared:
    """What the parent and its workers share: start protocol, progress counters, stop flag.

    Plain shared memory and pipes, no multiprocessing Event or Queue: those are named POSIX
    semaphores (/dev/shm/sem.mp-*) that outlive a killed parent whose resource tracker died too,
    and a worker stopped while holding one of their locks blocks the parent."""

    def __init__(self, ctx, n: int):
        self.prepared, self.ops_done, self.starts = ctx.RawArray("b", n), ctx.RawArray("q", n), ctx.RawArray("q", n)
        self.bytes_done = ctx.RawArray("q", n)  # ops vary in length (replay, merging): bytes are counted, not derived
        self.stop = ctx.RawValue("b", 0)
        self.phase_done = ctx.RawArray("q", n)  # pattern=metadata: phases each worker finished (the barrier)
        self.go_wait, self.go = ctx.Pipe(duplex=False)  # closing `go` starts every worker at once
        self.results = [ctx.Pipe(duplex=False) for _ in range(n)]  # one (reader, writer) per worker

    def __getstate__(self):  # what a worker gets: never the pipes, or a write end would outlive its owner
        return {k: v for k, v in self.__dict__.items() if k not in ("go_wait", "go", "results")}

    def release(self) -> None:
        self.go.close()

    @property
    def released(self) -> bool:
        return self.go.closed


def run_workers(spec: Spec, placement, progress, clients=None) -> Result:
    """Run the workers of one measured run. With `clients` (an MPI job, clients.py) every rank runs its own
    and they start together; rank 0 returns the merge of every rank's, the others their own."""
    paths = [str(p) for p in placement.worker_paths(spec.writers)]  # none for pattern=metadata
    warnings = prepare_files(spec, placement) if paths else []
    if mp.get_start_method(allow_none=True) not in (None, *mp.get_all_start_methods()):
        # a launcher's worker (joblib's loky) set a start method of its own: spawned children are told to use it
        # and fail ("cannot find context for 'loky'"); ours are plain multiprocessing processes
        mp.set_start_method("spawn", force=True)
    ctx = mp.get_context("spawn")
    n = spec.writers
    shared = _Shared(ctx, n)
    direct = placement.io_mode in ("direct", "direct-ignored")
    # what each worker reads or writes: [(path, base, bytes)], one extent but with target=file
    extents = [[(str(p), b, size) for p, b, size in placement.worker_extents(w, spec.file_size)] if paths else None
               for w in range(n)]
    if spec.pattern == APPEND and spec.append_shared_file:  # one log, every worker appends to it
        extents = [[(str(placement.worker_path(0)), 0, spec.file_size)] for _ in range(n)]
    if spec.metadata and placement.dirs:
        extents = [[(str(placement.worker_dir(w)), 0, 0)] for w in range(n)]
    if placement.object_prefix is not None:  # target=s3: every worker names its keys under the run's prefix
        extents = [[(placement.object_prefix, 0, 0)] for _ in range(n)]
    procs = [ctx.Process(target=_worker_main, name=f"iosweep-worker-{w}", daemon=True,
                         args=(spec, w, extents[w], direct, shared, shared.go_wait, shared.results[w][1],
                               os.getpid()))
             for w in range(n)]
    conns = [reader for reader, _ in shared.results]
    got: dict[int, dict] = {}
    sampler = Sampler(spec, shared.ops_done, shared.starts, progress, placement.device,
                      shared.bytes_done if spec.variable_lengths else None)
    watch = _Watch(spec, procs, shared, clients)
    if clients is not None:
        clients.begin_round()
    dev0 = dev1 = cpu0 = cpu1 = None
    try:
        for p, (_, writer) in zip(procs, shared.results):
            p.start()
            writer.close()  # the worker holds the only write end: its death reads as EOF here
        shared.go_wait.close()
        _collect(got, procs, conns, shared, until=lambda: all(shared.prepared) or len(got) == n, watch=watch)
        if not any(o.get("error") for o in got.values()):
            if clients is not None:  # every rank's workers are ready too: release them at the common instant
                _sleep_until(clients.start_together())
            dev0 = device_counters(placement.device)
            cpu0 = system_cpu_times()
            watch.started()
            shared.release()
            _collect(got, procs, conns, shared, until=lambda: len(got) == n, sampler=sampler, watch=watch)
            sampler.poll(final=True)
            dev1 = device_counters(placement.device)
            cpu1 = system_cpu_times()
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
            if clients is not None:  # stopped before the ranks' figures were gathered
                partial.warnings.insert(0, f"rank {clients.rank}'s workers only: the other ranks' figures were not "
                                           "gathered before the stop")
        if isinstance(e, Stuck):
            failed = WorkloadError(str(e))
            failed.partial = partial  # the run fails, what the other workers measured is kept
            raise failed from None
        raise Interrupted(e.signum if isinstance(e, Interrupted) else signal.SIGINT, partial) from None
    finally:
        _stop(shared, procs, conns, got)
    errors = [o for o in got.values() if o.get("error")]
    if errors:
        raise WorkloadError(describe_error(errors[0]["error"], placement))
    result = _merge(spec, list(got.values()), placement, sampler.rows)
    result.warnings[:0] = warnings
    result.set_device_traffic(_window_start(spec, dev0, sampler), dev1)
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:  # busy share of the usable CPUs, the kernel's work for us included
        result.info["system_cpu_pct"] = 100.0 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1])
    if clients is not None:
        ranks = clients.gather(list(got.values()), _client_info(clients, result, placement))
        if ranks is not None:  # rank 0: every rank's workers in one result
            result = _merge_clients(spec, ranks, placement, result)
    return result


def _sleep_until(wall_ns: int) -> None:
    """Until the wall clock reads wall_ns (the ranks' common start)."""
    while (left := wall_ns - time.time_ns()) > 0:
        time.sleep(min(left / 1e9, 0.5))


def _client_info(clients, result: Result, placement) -> dict:
    """What rank 0 needs of this rank besides its workers' results: who, its clock, its own figures."""
    m = result.metrics()
    where = placement.info()
    return {"rank": clients.rank, "host": clients.host, "pid": clients.pid, "boot": boot_id(),
            "fs": where["fs_type"], "mountpoint": where["mountpoint"], "dir": where["scratch_dir"] or where["target_path"],
            "offset_ns": time.time_ns() - time.perf_counter_ns(),  # perf_counter -> wall clock on this host
            "device": placement.device, "device_bytes": (result.device_read_bytes, result.device_write_bytes),
            "mib_s": m["throughput_mib_s"], "iops": m["iops"], "p99_us": m["lat_p99_us"],
            "bytes": result.bytes_read + result.bytes_written, "elapsed_s": result.elapsed_s,
            "warnings": result.warnings}


def _merge_clients(spec: Spec, ranks: list, placement, mine: Result) -> Result:
    """Rank 0: one result of every rank's workers. Worker times move to the wall clock, so the window
    runs from the first start to the last end across hosts; the histograms add. The device traffic is
    each host's (ranks on one host see the same device: counted once per host and device)."""
    outs = []
    for _rank, rank_outs, info in ranks:
        for o in rank_outs:
            outs.append(dict(o, t_measure=o["t_measure"] + info["offset_ns"], t_end=o["t_end"] + info["offset_ns"]))
    result = _merge(spec, outs, placement, [])  # rank 0's time series covers its own workers only: left out
    result.warnings = list(mine.warnings)
    result.info.update({k: v for k, v in mine.info.items() if k not in result.info})
    seen, dev_r, dev_w = set(), 0, 0
    for _rank, _outs, info in ranks:
        key = (info["boot"], info["device"])
        if key in seen:
            continue
        seen.add(key)
        if info["device_bytes"][0] is None:
            dev_r = dev_w = None
            break
        dev_r, dev_w = dev_r + info["device_bytes"][0], dev_w + info["device_bytes"][1]
    result.device_read_bytes, result.device_write_bytes = dev_r, dev_w
    result.device_requests = {}  # request counts and times per device are not added across hosts
    table = [{k: info[k] for k in CLIENT_COLUMNS} for _rank, _outs, info in ranks]
    kinds = {(row["fs"], row["mountpoint"]) for row in table}
    if len(kinds) > 1:  # e.g. target.dir differs per host, or is a link to another file system on one of them
        result.warnings.append("the ranks measured different storage: " + ", ".join(
            f"rank {row['rank']} {row['fs']} at {row['mountpoint']}" for row in table)
            + ": the aggregate mixes them (clients.csv has each rank's own figures)")
    rates = [row["mib_s"] for row in table]
    spread = 100.0 * (max(rates) - min(rates)) / max(rates) if max(rates) > 0 else 0.0
    result.info.update(clients=table, client_spread_pct=spread, client_hosts=sorted({r["host"] for r in table}))
    if spread > STRAGGLER_PCT:
        slow, fast = min(table, key=lambda r: r["mib_s"]), max(table, key=lambda r: r["mib_s"])
        result.warnings.append(
            f"straggler: rank {slow['rank']} on {slow['host']} ran at {slow['mib_s']:.0f} MiB/s, {spread:.0f}% below "
            f"rank {fast['rank']} on {fast['host']} ({fast['mib_s']:.0f} MiB/s): the aggregate waits for the slowest")
    for _rank, _outs, info in ranks[1:]:
        result.warnings += [f"rank {info['rank']}: {w}" for w in info["warnings"] if w not in result.warnings]
    return result


def _missing(n: int, measured: list[dict]) -> list[str]:
    """A warning naming the workers whose figures are not in a partial result."""
    have = {o["worker"] for o in measured}
    lost = [str(w) for w in range(n) if w not in have]
    return [f"worker {', '.join(lost)} returned nothing (stuck or killed): its ops are not in these figures"] \
        if lost else []


def _window_start(spec: Spec, dev_at_go, sampler: Sampler):
    """Device counters where the metrics' window starts: at the start, or when ramp_s ended."""
    return sampler.dev_after_ramp if spec.ramp_s else dev_at_go


class Stuck(WorkloadError):
    """A worker stopped making progress; the message names it."""


class _Watch:
    """Bounds every wait on the workers (see START_STALL_S, RUN_GRACE_S, STALL_S): names a stuck one."""

    def __init__(self, spec: Spec, procs, shared, clients=None):
        self.spec, self.procs, self.shared, self.clients = spec, procs, shared, clients
        self.deadline = None
        self.last_ready, self.ready_since = (0, 0), time.monotonic()
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
        if not self.shared.released:  # the start barrier; bytes a worker lays out itself (s3) are progress too
            ready = (sum(self.shared.prepared), sum(self.shared.bytes_done))
            if ready != self.last_ready:
                self.last_ready, self.ready_since = ready, now
            elif now - self.ready_since > START_STALL_S:
                w = next(w for w in pending if not self.shared.prepared[w])
                self._stuck(w, f"did not get ready within {START_STALL_S:.0f} s")
            return
        if self.clients is not None:  # the other ranks: a heartbeat to rank 0, or rank 0 hears of a failed one
            self.clients.poll(sum(self.shared.ops_done))
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
    them with SIGKILL, every wait bounded. Once they are all reaped this returns at once."""
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
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    until = time.monotonic() + KILL_WAIT_S
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


def _merge(spec: Spec, outs: list[dict], placement, timeseries: list[dict]) -> Result:
    if spec.metadata:
        return metadata.merge(spec, outs, placement.io_mode, timeseries)
    hist_r, hist_w, hist_fsync, hist_ttfb = LatencyHistogram(), LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for o in outs:
        hist_r.merge(o["hist_r"])
        hist_w.merge(o["hist_w"])
        if "hist_fsync" in o:  # pattern=append: every fsync, timed on its own
            hist_fsync.merge(o["hist_fsync"])
        if "hist_ttfb" in o:  # target=s3: each GET's time to first byte
            hist_ttfb.merge(o["hist_ttfb"])
    ops_r, ops_w = sum(o["ops_r"] for o in outs), sum(o["ops_w"] for o in outs)
    t_measure = min(o["t_measure"] for o in outs)
    t_end = max(o["t_end"] for o in outs)
    return Result(
        elapsed_s=(t_end - t_measure) / 1e9,
        bytes_read=sum(o["bytes_r"] for o in outs), bytes_written=sum(o.get("bytes_w", 0) for o in outs),
        ops_read=ops_r, ops_written=ops_w, lat_read=hist_r, lat_write=hist_w,
        io_mode=placement.io_mode, cpu_s=sum(o["cpu_s"] for o in outs),
        datagen_wait_s=sum(o["datagen_wait_ns"] for o in outs) / 1e9,
        pipeline=pipeline_shares(outs),
        timeseries=timeseries,
        info={"stopped": any(o.get("stopped") for o in outs), "ramp_done": all(o["ramp_done"] for o in outs),
              **({"file_bytes": sum(o["file_bytes"] for o in outs)} if "file_bytes" in outs[0] else {})},
        counters=merge_counters([o.get("counters") or {} for o in outs]),
        lat_fsync=hist_fsync if any("hist_fsync" in o for o in outs) else None,
        lat_ttfb=hist_ttfb if hist_ttfb.total else None,
    )


def system_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the CPUs this process may use, since boot: every process and the
    kernel's threads (a loop device's copies, writeback), which the workers' own CPU time misses."""
    try:
        usable = sorted(os.sched_getaffinity(0))
        per_cpu = psutil.cpu_times(percpu=True)
    except (AttributeError, OSError):
        return None
    busy = total = 0.0
    for i in usable:
        if i < len(per_cpu):
            t = per_cpu[i]
            idle = t.idle + getattr(t, "iowait", 0.0)
            all_ = sum(t)
            busy, total = busy + all_ - idle, total + all_
    return busy, total


def pipeline_shares(outs: list[dict]) -> dict[str, list[float]]:
    """Per worker, over its own window: the % the writer waited for data, the % its producers waited
    for a free buffer (their summed wait over producers x window). Workers that write no generated
    data (reads, zeros, data.refill=false) have no producers and are left out of the second."""
    data, producers = [], []
    for o in outs:
        window = o["t_end"] - o["t_measure"]
        if window <= 0 or "producers" not in o:
            continue
        data.append(100.0 * o["datagen_wait_ns"] / window)
        if o["producers"]:
            producers.append(100.0 * o["producer_wait_ns"] / (window * o["producers"]))
    return {"data_wait_pct": data, "producer_wait_pct": producers} if producers else {}


def merge_counters(per_worker: list[dict]) -> dict[str, float]:
    """Engine counters (page faults, ...) add up across workers; a maximum (`*_max_us`) is the largest."""
    out: dict[str, float] = {}
    for c in per_worker:
        for k, v in c.items():
            out[k] = max(out.get(k, 0.0), float(v)) if k.endswith("_max_us") else out.get(k, 0.0) + float(v)
    return out
