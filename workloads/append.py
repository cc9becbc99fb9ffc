"""pattern=append: records appended to a log file under a durability policy (seed 004's study).

Each worker appends `record_bytes` records to its own file, which iosweep created empty in its
scratch dir (or, with append.shared_file=true, all workers append to one file with O_APPEND: a log
with several producers). size_mb is the record bytes appended per pass, split across the writers;
with duration_s a worker whose file reached its share truncates it to 0 and starts again (only
files iosweep created, which it removes afterwards; append.file_restarts counts it), so the disk
holds at most size_mb. Records are the worker's dgen-py stream (or zeros), cut in record_bytes.

How records reach the file (append.mode):
  unbuffered  one write(2) per record (O_APPEND)
  buffered    copied into a page-aligned buffer of append.buffer_kb, flushed with one write(2) when full
              (direct=true: O_DIRECT, buffer_kb a multiple of 4; a partial tail that must reach the
              file, at a sync or at the end, is written padded with zeros to 4 KiB, its page kept and
              rewritten whole by the next flush; at the end the file is ftruncated to the records' length)
  mmap        the file is mapped (MAP_SHARED), grown with ftruncate 1 MiB ahead of the stores, each
              record memcpy'd into the mapping; a sync is msync(MS_SYNC) of what was stored since the last;
              at the end the file is ftruncated to the records' length
Durability (append.fsync): none | end (one fsync when the worker is done: end_fsync) | every
(append.fsync_every records) | interval (append.fsync_interval_ms) | dsync (O_DSYNC: every write is
synchronous, no fsync); append.fsync_call=fdatasync uses fdatasync(2). In buffered mode a sync first
flushes the buffer. fsync=every/interval do not add a final fsync: the records after the last sync
stay in the page cache, as with fio's fsync=N.

Latency is per write(2) call (a record, or a buffer flush; mmap: a record's store, page faults and
growth included); every fsync is timed into a histogram of its own. The loop is C
(_hotloop_append.c): `append_loop()` has worker_loop's contract, so processes.py runs it unchanged.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from .errors import ConfigError
from .metrics import LatencyHistogram
from .spec import APPEND, PAGE, Spec

MODES = ("unbuffered", "buffered", "mmap")
FSYNC_POLICIES = ("none", "end", "every", "interval", "dsync")
FSYNC_CALLS = ("fsync", "fdatasync")
DEFAULTS = {"append_mode": "unbuffered", "append_buffer_kb": 64, "append_fsync_call": "fsync",
            "append_shared_file": False, "append_fallocate": False}
KEYS = {"record_bytes": "record_bytes", "append_mode": "append.mode", "append_buffer_kb": "append.buffer_kb",
        "append_fsync": "append.fsync", "append_fsync_every": "append.fsync_every",
        "append_fsync_interval_ms": "append.fsync_interval_ms", "append_fsync_call": "append.fsync_call",
        "append_shared_file": "append.shared_file", "append_fallocate": "append.fallocate"}
GROUP_RECORDS = 4096  # records per call of the C loop at most: progress is published in between (fsync=every 1
#                        at ~160 us a sync: under a second, well inside processes.STALL_S)
ST_POS, ST_BUFPOS, ST_SINCE, ST_LAST_SYNC, ST_RECORDS, ST_FSYNCS, ST_WRITES, ST_FILE_OFF, ST_SYNCED = range(9)
N_STATE = 9


def knob(spec: Spec, name: str):
    """An append knob's value, its default where the spec leaves it None."""
    value = getattr(spec, name)
    return DEFAULTS.get(name) if value is None else value


def policy(spec: Spec) -> str:
    """The durability policy: append.fsync, or end_fsync's (end / none) when it is not set."""
    return spec.append_fsync or ("end" if spec.end_fsync else "none")


def records_per_writer(spec: Spec) -> int:
    """Records one writer appends per pass: its share of size_mb in whole records."""
    return spec.file_size // spec.record_bytes


def expected_fsyncs(spec: Spec, records: int) -> int:
    """The fsyncs one writer issues for `records` records, by the policy's arithmetic (not interval)."""
    p = policy(spec)
    if p == "every":
        return records // spec.append_fsync_every
    return 1 if p == "end" else 0


def _whole(key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"must be a whole number >= {minimum}")


def check(spec: Spec) -> None:
    """Raise ConfigError for an append point that cannot run, or append knobs on another pattern."""
    if spec.pattern != APPEND:
        for name, key in KEYS.items():
            if getattr(spec, name) is not None:
                raise ConfigError(key, getattr(spec, name), f"applies to pattern=append only (this is "
                                                            f"pattern={spec.pattern}): remove it or set pattern=append")
        return
    rb = spec.record_bytes
    if rb is None:
        raise ConfigError("record_bytes", rb, "pattern=append needs the size of a record: set record_bytes=BYTES")
    _whole("record_bytes", rb)
    mode, fsync = knob(spec, "append_mode"), policy(spec)
    if mode not in MODES:
        raise ConfigError("append.mode", mode, "choose one of " + ", ".join(MODES))
    if fsync not in FSYNC_POLICIES:
        raise ConfigError("append.fsync", fsync, "choose one of " + ", ".join(FSYNC_POLICIES))
    if knob(spec, "append_fsync_call") not in FSYNC_CALLS:
        raise ConfigError("append.fsync_call", spec.append_fsync_call, "choose one of " + ", ".join(FSYNC_CALLS))
    if spec.append_fsync_every is not None:
        _whole("append.fsync_every", spec.append_fsync_every)
    iv = spec.append_fsync_interval_ms
    if iv is not None and (isinstance(iv, bool) or not isinstance(iv, (int, float)) or not iv > 0
                           or iv > 3600e3):
        raise ConfigError("append.fsync_interval_ms", iv, "must be a number of milliseconds > 0 (at most an hour)")
    if fsync == "every" and spec.append_fsync_every is None:
        raise ConfigError("append.fsync_every", None, "append.fsync=every needs the records between two fsyncs: "
                                                      "set append.fsync_every=N")
    if fsync == "interval" and iv is None:
        raise ConfigError("append.fsync_interval_ms", None, "append.fsync=interval needs the time between two "
                                                            "fsyncs: set append.fsync_interval_ms=MS")
    if fsync == "end" and not spec.end_fsync:
        raise ConfigError("append.fsync", "end", "contradicts end_fsync=false: set end_fsync=true, or choose "
                                                 "another append.fsync")
    _whole("append.buffer_kb", knob(spec, "append_buffer_kb"))
    share = spec.size_bytes // spec.writers if spec.size_bytes else 0
    if rb > share:
        raise ConfigError("record_bytes", rb, f"is larger than each writer's share of size_mb ({share} bytes = "
                                              f"size_mb / writers={spec.writers}): lower record_bytes or raise size_mb")
    shared = knob(spec, "append_shared_file")
    refusals = [
        ("append.buffer_kb", spec.append_buffer_kb, "direct=true writes whole 4 KiB pages from the buffer: set "
                                                    "append.buffer_kb to a multiple of 4")
        if spec.direct and mode == "buffered" and knob(spec, "append_buffer_kb") % 4 else None,
        ("direct", True, "O_DIRECT needs aligned writes, which only append.mode=buffered makes (a buffer of 4 KiB "
                         "multiples): set append.mode=buffered or direct=false") if spec.direct and mode != "buffered"
        else None,
        ("append.shared_file", True, "O_APPEND with O_DIRECT: another writer's padded tail would misalign the next "
                                     "write: set direct=false") if shared and spec.direct else None,
        ("append.shared_file", True, "a mapping cannot append to a file others append to: choose append.mode="
                                     "unbuffered or buffered") if shared and mode == "mmap" else None,
        ("append.fsync", "dsync", "O_DSYNC does not apply to stores into a mapping: choose fsync=every, interval "
                                  "or end (msync) with append.mode=mmap") if fsync == "dsync" and mode == "mmap"
        else None,
        ("engine", spec.engine, "pattern=append runs in iosweep's own loop (engine=sync, append.mode chooses "
                                "write/buffer/mmap) or in fio (engine=fio)") if spec.engine not in ("sync", "fio")
        else None,
        ("target", spec.target, "pattern=append creates its own log files: use target=local or target=tmpfs")
        if spec.target not in ("local", "tmpfs") else None,
        ("files_per_writer", spec.files_per_writer, "each writer appends to one log file: set files_per_writer=1 "
                                                    "and file_kb=null")
        if spec.files_per_writer != 1 or spec.file_bytes is not None else None,
        ("ramp_s", spec.ramp_s, "pattern=append measures from the first record: set ramp_s=0") if spec.ramp_s
        else None,
        ("iodepth", spec.iodepth, "appends are issued one at a time: set iodepth=1") if spec.iodepth != 1 else None,
        ("merge_kb", spec.merge_kb, "pattern=append only writes: set merge_kb=null") if spec.merge_kb is not None
        else None,
    ]
    for problem in filter(None, refusals):
        raise ConfigError(*problem)


def describe(spec: Spec) -> str:
    """How records reached the file, for the io_mode line and the run's info."""
    mode, p = knob(spec, "append_mode"), policy(spec)
    how = {"unbuffered": "one write(2) per record",
           "buffered": f"buffer {knob(spec, 'append_buffer_kb')} KiB, one write(2) per full buffer",
           "mmap": "stores into a mapping grown by ftruncate (msync for a sync)"}[mode]
    if spec.direct:
        how += ", O_DIRECT (partial tail padded to 4 KiB, file truncated back to the records' length)"
    sync = {"none": "no fsync", "end": "one fsync at the end", "dsync": "O_DSYNC writes",
            "every": f"fsync every {spec.append_fsync_every} records",
            "interval": f"fsync every {spec.append_fsync_interval_ms} ms"}[p]
    if p in ("end", "every", "interval") and knob(spec, "append_fsync_call") == "fdatasync":
        sync = sync.replace("fsync", "fdatasync")
    where = "one shared file (O_APPEND)" if knob(spec, "append_shared_file") else "a file per writer"
    return f"append {spec.record_bytes} B records: {how}; {sync}; {where}" + \
        ("; fallocate" if knob(spec, "append_fallocate") else "")


class _Rec:
    """Histogram counts and sum/min/max of one kind of call, filled in place by the C loop."""

    def __init__(self):
        from .metrics import N_BUCKETS

        self.counts = np.zeros(N_BUCKETS, dtype=np.int64)
        self.stats = np.array([0, np.iinfo(np.int64).max, 0], dtype=np.int64)

    def histogram(self) -> LatencyHistogram:
        total = int(self.counts.sum())
        return LatencyHistogram(counts=self.counts, total=total, sum_ns=int(self.stats[0]),
                                min_ns=int(self.stats[1]) if total else 0, max_ns=int(self.stats[2]))


def _open_flags(spec: Spec, direct: bool) -> int:
    mode, p = knob(spec, "append_mode"), policy(spec)
    flags = os.O_RDWR if mode == "mmap" else os.O_WRONLY
    if not direct and mode != "mmap":  # the kernel places each write at the end (O_DIRECT: pwrite at our offset)
        flags |= os.O_APPEND
    if direct:
        flags |= os.O_DIRECT
    if p == "dsync":
        flags |= os.O_DSYNC
    return flags


def append_loop(spec: Spec, worker: int, path: str, direct: bool, wait_start, ops_done=None, stop=None,
                bytes_done=None) -> dict:
    """One worker's appends: open its log (created empty by the target), wait for the start, append
    one pass of its share (or loop until duration_s), finish by the policy; return worker_loop's dict
    plus `hist_fsync` and the counters records_total, fsyncs, append_write_calls, file_restarts."""
    from . import _hotloop
    from .data import aligned_buffer, write_source
    from .worker import NEVER, Aborted, cpu_s

    rb, mode, p = spec.record_bytes, knob(spec, "append_mode"), policy(spec)
    mode_no = MODES.index(mode)
    policy_no = FSYNC_POLICIES.index(p)
    datasync = knob(spec, "append_fsync_call") == "fdatasync"
    shared = knob(spec, "append_shared_file")
    share = spec.file_size  # this writer's record bytes per pass (its counter, also in a shared file)
    every = spec.append_fsync_every or 0
    interval_ns = int((spec.append_fsync_interval_ms or 0) * 1e6)
    # the data stream in chunks of >= 1 MiB holding whole records (a record larger than that: one per chunk)
    src = write_source(dataclasses.replace(spec, block_size=max(rb, PAGE)), worker)
    fd, addr = os.open(path, _open_flags(spec, direct)), 0
    buf = aligned_buffer(knob(spec, "append_buffer_kb") * 1024) if mode == "buffered" else None
    state = np.zeros(N_STATE, dtype=np.int64)
    rec_w, rec_s = _Rec(), _Rec()
    timed = spec.latency
    restarts = 0
    try:
        if mode == "mmap":
            addr = _hotloop.append_map(fd, share)
        fallocate_at = worker * share if shared else 0

        def preallocate():
            if knob(spec, "append_fallocate"):
                _hotloop.append_fallocate(fd, fallocate_at, share)

        preallocate()
        chunk, ci = src.current_chunk(), 0
        parent = os.getppid()

        def sync_call(sync: bool):
            err, ret = _hotloop.append_sync(fd, mode_no, buf, addr, state, datasync, direct, rec_w.counts,
                                            rec_w.stats, rec_s.counts, rec_s.stats, timed, sync)
            if err:
                raise OSError(err, os.strerror(err)) if err > 0 else OSError(28, f"short write: {ret} bytes")

        def finish_file():
            """Write what the buffer holds; O_DIRECT and mmap: cut the file back to the records' length."""
            sync_call(False)
            if direct or mode == "mmap":
                state[ST_BUFPOS] = 0  # direct: the padded tail page is written, nothing further comes
                os.ftruncate(fd, int(state[ST_POS]))

        wait_start()
        if stop is not None and stop.value:
            raise Aborted()
        t_start = time.perf_counter_ns()
        cpu0, wait0 = cpu_s(), src.wait_ns
        deadline = t_start + int(spec.duration_s * 1e9) if spec.duration_s else NEVER
        while True:
            done, ci, why, err, ret = _hotloop.append_ops(
                fd, mode_no, chunk, ci, rb, GROUP_RECORDS, buf, addr, state, policy_no, every, interval_ns,
                datasync, direct, share, rec_w.counts, rec_w.stats, rec_s.counts, rec_s.stats, timed, stop,
                0 if deadline == NEVER else deadline)
            records = int(state[ST_RECORDS])
            if ops_done is not None:
                ops_done[worker] = records
            if bytes_done is not None:
                bytes_done[worker] = records * rb
            if err:
                raise OSError(err, os.strerror(err)) if err > 0 else OSError(28, f"short write: {ret} of {rb} bytes")
            if why == 1:  # the chunk is used up: the producer's next one
                chunk, ci = src.advance(), 0
            elif why == 2:  # the file holds its share: one pass done, or (duration_s) truncate and go on
                if deadline == NEVER:
                    break
                finish_file()
                os.ftruncate(fd, 0)
                state[ST_POS] = state[ST_FILE_OFF] = state[ST_SYNCED] = 0
                restarts += 1
                preallocate()
            elif why == 3:
                break
            if (stop is not None and stop.value) or os.getppid() != parent or \
                    time.perf_counter_ns() >= deadline:
                break
        finish_file()
        if p == "end":
            sync_call(True)
        t_end = time.perf_counter_ns()
        records = int(state[ST_RECORDS])
        return {"worker": worker, "t_start": t_start, "t_measure": t_start, "t_end": t_end,
                "hist_r": LatencyHistogram(), "hist_w": rec_w.histogram(), "hist_fsync": rec_s.histogram(),
                "ops_r": 0, "ops_w": int(state[ST_WRITES]), "bytes_r": 0, "bytes_w": records * rb,
                "cpu_s": cpu_s() - cpu0, "ops_total": records,
                "counters": {"records_total": float(records), "fsyncs": float(state[ST_FSYNCS]),
                             "append_write_calls": float(state[ST_WRITES]), "file_restarts": float(restarts)},
                "datagen_wait_ns": src.wait_ns - wait0, "ramp_done": True,
                "stopped": bool(stop is not None and stop.value)}
    finally:
        if addr:
            _hotloop.append_unmap(addr, share)
        src.close()
        os.close(fd)
