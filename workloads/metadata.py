"""pattern=metadata: mdtest's file phases, per worker, in its own directory.

Each worker owns `files_per_writer` files named f0, f1, ... in its directory (Placement.worker_dir,
made outside the window; mdtest's per-rank directory, `mdtest -u`). Four phases, each over all of
them, in mdtest's order, every worker starting a phase together (mdtest's barrier between phases):

  create  open(O_CREAT|O_EXCL|O_WRONLY), write file_kb (if > 0: mdtest -w), close
  stat    stat
  open    open(O_RDONLY), read file_kb (if > 0: mdtest -e), close   (mdtest's "File read")
  unlink  unlink                                                     (mdtest's "File removal")

A phase's rate is the files all workers handled in it over its window, from the earliest worker's
start to the latest worker's end: mdtest's "File creation/stat/read/removal" lines. Every op is
timed into the phase's LatencyHistogram (same edges everywhere), so workers and repeats merge
exactly. The loop is plain Python: each op costs one to three syscalls of 2-50 us, the loop's own
cost (two clock reads and a list store) is well under a microsecond.

`metadata_loop()` has worker_loop's contract (a spec, a start signal, shared counters -> a plain
dict), so processes.py runs it with the same spawn, start barrier, stall watch and kill paths.
"""
from __future__ import annotations

import errno
import os
import time

import numpy as np

from .data import aligned_buffer
from .metrics import LatencyHistogram, Result
from .worker import Aborted, cpu_s

PHASES = ("create", "stat", "open", "unlink")
GROUP_OPS = 256  # publish progress and check the stop flag every this many ops
BARRIER_POLL_S = 0.0002  # a phase barrier spins this finely: its wait is outside every op's timing


def file_paths(directory: str, n: int) -> list[str]:
    return [os.path.join(directory, f"f{i}") for i in range(n)]


def _ops(spec, buf):
    """One function per phase: does the op on one path (raises OSError on failure)."""
    nbytes = spec.per_file
    flags_create = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def create(path):
        fd = os.open(path, flags_create, 0o644)
        try:
            if nbytes and os.write(fd, buf) != nbytes:
                raise OSError(errno.ENOSPC, f"short write creating {path}")
        finally:
            os.close(fd)

    def read(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            if nbytes and os.preadv(fd, [buf], 0) != nbytes:
                raise OSError(errno.EIO, f"short read of {path}")
        finally:
            os.close(fd)

    return {"create": create, "stat": os.stat, "open": read, "unlink": os.unlink}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def phase_names(spec) -> tuple[str, ...]:
    if spec.target == "s3":
        from .objects import PHASES as OBJECT_PHASES

        return OBJECT_PHASES
    return PHASES


def metadata_loop(spec, worker: int, directory: str, wait_start, ops_done=None, stop=None, phase_done=None) -> dict:
    """Run the phases over this worker's files (target=s3: its objects, `directory` being its key
    prefix); return per-phase op counts, windows and histograms.

    `phase_done` (shared, one slot per worker) is the barrier between phases: a worker marks the
    phases it finished and starts the next when every worker has finished this one. None: alone.
    The first phase creates the files, the last removes them."""
    if spec.target == "s3":  # the same phases as S3 requests: PUT, HEAD, LIST, GET, DELETE (objects.py)
        from .objects import metadata_ops

        paths, ops, remove = metadata_ops(spec, worker, directory)
    else:
        paths = file_paths(directory, spec.files_per_writer)
        buf = aligned_buffer(spec.per_file) if spec.per_file else None
        ops, remove = _ops(spec, buf), _unlink
    names = phase_names(spec)
    lat = np.zeros(len(paths), dtype=np.int64)
    clock = time.perf_counter_ns
    parent = os.getppid()
    phases, total = {}, 0
    alive = (0, 0)  # paths[lo:hi]: files this worker created and has not removed (removed if a phase fails)
    wait_start()
    if stop is not None and stop.value:
        raise Aborted()
    cpu0 = cpu_s()
    t_first = clock()
    try:
        for k, name in enumerate(names):
            if k and not _barrier(phase_done, worker, k, stop, parent):
                break
            op, done = ops[name], 0
            t0 = clock()
            for i, path in enumerate(paths):
                a = clock()
                op(path)
                lat[i] = clock() - a
                done = i + 1
                if k == 0:  # create
                    alive = (0, done)
                elif k == len(names) - 1:  # unlink
                    alive = (done, len(paths))
                if done % GROUP_OPS == 0:
                    if ops_done is not None:
                        ops_done[worker] = total + done
                    if (stop is not None and stop.value) or os.getppid() != parent:
                        break
            t1 = clock()
            hist = LatencyHistogram()
            hist.add(lat[:done])
            phases[name] = {"ops": done, "t0": t0, "t1": t1, "hist": hist}
            total += done
            if ops_done is not None:
                ops_done[worker] = total
            if done < len(paths):  # stopped inside the phase
                break
        if phase_done is not None:
            phase_done[worker] = len(names)  # no one waits for this worker any more
    finally:
        for path in paths[alive[0]:alive[1]]:  # stopped or failed: what this worker created, never another's
            try:
                remove(path)
            except OSError:  # the storage is failing: the target's cleanup says what stays
                break
    t_end = clock()
    return {"worker": worker, "t_start": t_first, "t_measure": t_first, "t_end": t_end, "hist_r": LatencyHistogram(),
            "hist_w": LatencyHistogram(), "ops_r": 0, "ops_w": 0, "cpu_s": cpu_s() - cpu0, "ops_total": total,
            "counters": {}, "datagen_wait_ns": 0, "ramp_done": True, "phases": phases,
            "stopped": bool(stop is not None and stop.value)}


def _barrier(phase_done, worker: int, k: int, stop, parent: int) -> bool:
    """Mark phase k-1 done and wait until every worker has: False if the run was stopped meanwhile."""
    if phase_done is None:
        return True
    phase_done[worker] = k
    while min(phase_done) < k:
        if (stop is not None and stop.value) or os.getppid() != parent:
            return False
        time.sleep(BARRIER_POLL_S)
    return True


def merge(spec, outs: list[dict], io_mode: str, timeseries: list[dict]) -> Result:
    """All workers' phases as one Result: per phase, ops add, histograms merge, the window runs
    from the first worker's start to the last one's end (mdtest's phase time between barriers)."""
    phases = {}
    for name in phase_names(spec):
        mine = [o["phases"][name] for o in outs if name in o.get("phases", {})]
        if not mine:
            continue
        hist = LatencyHistogram()
        for p in mine:
            hist.merge(p["hist"])
        phases[name] = {"ops": sum(p["ops"] for p in mine),
                        "seconds": (max(p["t1"] for p in mine) - min(p["t0"] for p in mine)) / 1e9, "hist": hist}
    nbytes = spec.per_file
    creates, reads = phases.get("create", {}).get("ops", 0), phases.get("open", {}).get("ops", 0)
    return Result(
        elapsed_s=sum(p["seconds"] for p in phases.values()),
        bytes_read=reads * nbytes, bytes_written=creates * nbytes,
        ops_read=reads if nbytes else 0, ops_written=creates if nbytes else 0,
        lat_read=LatencyHistogram(), lat_write=LatencyHistogram(), io_mode=io_mode,
        cpu_s=sum(o["cpu_s"] for o in outs),
        timeseries=[{k: v for k, v in row.items() if k != "mib_s"} for row in timeseries],  # iops = metadata ops/s
        info={"stopped": any(o.get("stopped") for o in outs), "ramp_done": True}, metadata=phases)
