"""fio as a reference engine: the same point, run by fio, reduced to the same Result.

iosweep creates, lays out and evicts the files exactly as for its own engines (fio is told not to
lay out or invalidate), writes a fio job from the Spec, runs `fio --output-format=json+`, and
folds fio's completion-latency bins into the same log-linear histogram, so percentiles are
computed the same way for both engines.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ConfigError, WorkloadError
from ..hints import FIO_FADVISE
from ..metrics import MIB, LatencyHistogram, Result
from ..spec import FIO_IOENGINES, TRACED, Spec
from .base import Engine, register

RW = {"seq_write": "write", "seq_read": "read", "rand_read": "randread", "rand_write": "randwrite",
      "mixed": "randrw"}
LOG_PREFIX = "fiolog"
ASYNC_IOENGINES = ("io_uring", "libaio", "posixaio")  # the FIO_IOENGINES that keep iodepth ops in flight


# What a path written into fio's job file may hold: fio splits `directory`/`filename` at ':', expands
# '$' (env vars, $jobnum), strips ';'/'#' comments and blanks at the ends, and reads '[' as a new job
SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@-]+( +[A-Za-z0-9_./+@-]+)*")


def fio_path(key: str, path) -> str:
    """`path` as it may go into a job file, or ConfigError naming the key it came from."""
    text = str(path)
    if not SAFE_PATH.fullmatch(text):
        raise ConfigError(key, text, "engine=fio writes this path into its job file, which would misparse it: "
                                     "use a path of letters, digits, spaces and _ . / + @ -")
    return text


def _render(options: list[tuple[str, object]]) -> list[str]:
    """`key=value` lines; a value is an int (not bool) or a str already checked: anything else is a bug."""
    lines = []
    for key, value in options:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"fio option {key}: {value!r} is neither a number nor a checked word")
        text = str(value)
        if any(c in text for c in "\n\r[]"):  # defence in depth: never a new line or a new section
            raise ValueError(f"fio option {key}={text!r} would inject into the job file")
        lines.append(f"{key}={text}")
    return lines


def job_file(spec: Spec, placement, logs: Path) -> str:
    """fio's job for this Spec. Every value is a number, a word from a fixed set, or a path iosweep
    created (or the target=device path), checked by fio_path: nothing else reaches fio."""
    ms = lambda s: f"{int(round(s * 1000))}ms"  # noqa: E731
    ioengine = spec.ioengine or "psync"
    if ioengine not in FIO_IOENGINES:  # Spec.check says so first; this guards a Spec never checked
        raise ConfigError("engine.ioengine", ioengine, "choose one of " + ", ".join(FIO_IOENGINES))
    if placement.shared_path is not None:  # target=device (or file): one path, a region per job
        where = [("filename", fio_path("target.path", placement.shared_path)), ("offset_increment", spec.file_size)]
    elif spec.files_per_writer > 1:  # a job's small files, visited in order, each opened when reached and
        #                                 closed when done, as iosweep's worker does (Placement.worker_path)
        where = [("directory", fio_path("target.dir", placement.scratch)),
                 ("filename_format", "job$jobnum.$filenum.dat"), ("nrfiles", spec.files_per_writer),
                 ("filesize", spec.per_file), ("file_service_type", "sequential"), ("openfiles", 1)]
    else:  # the files iosweep created
        where = [("directory", fio_path("target.dir", placement.scratch)), ("filename_format", "job$jobnum.dat")]
        if spec.file_bytes is not None:
            where.append(("filesize", spec.per_file))
    log = fio_path("TMPDIR", logs / LOG_PREFIX)
    if spec.pattern in TRACED:  # the trace's ops, as an iolog fio replays on the same file (one job)
        path = placement.shared_path or placement.worker_path(0)
        if any(c.isspace() for c in str(path)):  # an iolog line is blank-separated fields
            raise ConfigError("target.path" if placement.shared_path else "target.dir", str(path),
                              "fio's iolog splits its lines at blanks: use a path without spaces, or engine=sync")
        iolog = logs / "replay.iolog"
        iolog.write_text(iolog_v2(spec._trace(), fio_path("target.path", path), spec.timing == "original"))
        what = [("filename", fio_path("target.path", path)), ("read_iolog", fio_path("TMPDIR", iolog)),
                ("replay_no_stall", int(spec.timing != "original"))]
    elif spec.pattern == "append":  # a record per write at the end of the job's file (fio_append: its sync options)
        what = [("rw", "write"), ("bs", spec.record_bytes), ("size", spec.file_size), ("numjobs", spec.writers),
                *where, ("file_append", 1), *fio_append(spec)]
    else:
        what = [("rw", RW[spec.pattern]), ("bs", spec.block_size), ("size", spec.file_size),
                ("numjobs", spec.writers), *where]
    options = [("ioengine", ioengine), ("iodepth", spec.iodepth), *what,
               ("direct", int(spec.direct)), ("invalidate", 0),  # iosweep evicts (cache=...) itself
               # iosweep's own engines do not preallocate either (pattern=append: append.fallocate says)
               ("fallocate", "keep" if spec.pattern == "append" and spec.append_fallocate else "none"),
               ("group_reporting", 1), ("percentile_list", "50:90:99:99.9"), ("randseed", spec.seed + 1),
               ("log_avg_msec", max(1, int(spec.log_interval_s * 1000))),
               ("write_bw_log", log), ("write_iops_log", log)]
    if spec.pattern == "mixed":
        options.append(("rwmixread", spec.read_pct))
    if spec.hint != "none":  # hints.check refused what fadvise_hint cannot say; none keeps fio's default (1)
        options.append(("fadvise_hint", FIO_FADVISE[spec.hint]))
    if spec.duration_s:
        options += [("time_based", 1), ("runtime", ms(spec.duration_s))]
    if spec.ramp_s:
        options.append(("ramp_time", ms(spec.ramp_s)))
    if spec.writes and spec.end_fsync and spec.pattern != "append":  # append: its policy (fio_append)
        options.append(("end_fsync", 1))
    if spec.data.kind == "zeros":
        options.append(("zero_buffers", 1))
    elif spec.data.compress_ratio > 1 or spec.data.dedup_ratio > 1:
        options += [("refill_buffers", 1),
                    ("buffer_compress_percentage", round(100 * (1 - 1 / spec.data.compress_ratio))),
                    ("dedupe_percentage", round(100 * (1 - 1 / spec.data.dedup_ratio)))]
    if not spec.latency:
        options += [("disable_lat", 1), ("disable_clat", 1), ("disable_slat", 1)]
    return "\n".join(["[global]", *_render(options), "", "[iosweep]", ""])


def fio_append(spec: Spec) -> list[tuple[str, object]]:
    """pattern=append's durability policy in fio's words (FioEngine.check refused what fio cannot say).
    fio's fsync=N syncs before the write that follows N writes: a pass of R records issues (R-1)//N,
    where iosweep's loop syncs after every N-th record, R//N."""
    from ..append import knob, policy

    p, call = policy(spec), knob(spec, "append_fsync_call")
    # fresh data in every record, as iosweep's dgen-py stream: fio rewrites one buffer by default, and this
    # VM's host-cached disk took those repeated O_DSYNC records faster (3 paired fio runs: 1.2-2.3x)
    fresh = [("refill_buffers", 1)] if spec.data.kind == "dgen" and spec.data.compress_ratio == 1 \
        and spec.data.dedup_ratio == 1 else []
    if p == "every":
        return [(call, spec.append_fsync_every), *fresh]  # fsync=N or fdatasync=N
    if p == "end":
        return [("end_fsync", 1), *fresh]
    if p == "dsync":
        return [("sync", "dsync"), *fresh]
    return fresh


def iolog_v2(trace, path: str, timed: bool) -> str:
    """The trace as an fio iolog v2 on `path` (a path fio_path accepted: no blanks or newlines in it);
    timed: `wait` lines (microseconds) between ops hold the trace's times, as fio's own v2 logs do."""
    lines = ["fio version 2 iolog", f"{path} add", f"{path} open"]
    last_us = 0
    for i, (off, length, read) in enumerate(zip(trace.offsets.tolist(), trace.lengths.tolist(),
                                                trace.is_read.tolist())):
        if timed and trace.times_ns is not None:
            at_us = int(trace.times_ns[i]) // 1000
            if at_us > last_us:
                lines.append(f"{path} wait {at_us - last_us} 0")
                last_us = at_us
        lines.append(f"{path} {'read' if read else 'write'} {off} {length}")
    lines.append(f"{path} close")
    return "\n".join(lines) + "\n"


def command(spec: Spec, job_path: Path) -> list[str]:
    """fio's command line; with target=file, --readonly: fio itself refuses a write or trim job."""
    return ["fio", "--output-format=json+", *(["--readonly"] if spec.read_only_target else []), str(job_path)]


def histogram(clat_ns: dict) -> LatencyHistogram:
    h = LatencyHistogram()
    bins = clat_ns.get("bins") or {}
    if bins:
        import numpy as np

        values = np.array([int(v) for v in bins], dtype=np.int64)
        counts = np.array(list(bins.values()), dtype=np.int64)
        h.add_counts(values, counts)
        h.min_ns, h.max_ns = int(clat_ns["min"]), int(clat_ns["max"])
        h.sum_ns = int(round(clat_ns["mean"] * clat_ns["N"]))
    return h


def timeseries(logs: Path, spec: Spec) -> list[dict]:
    """Sum fio's per-job bandwidth/IOPS logs (time ms, value, dir, ...) per interval."""
    rows: dict[int, dict] = {}
    step = max(1, int(spec.log_interval_s * 1000))
    for kind, field in (("bw", "mib_s"), ("iops", "iops")):
        for log in sorted(logs.glob(f"{LOG_PREFIX}_{kind}.*.log")):
            for line in log.read_text().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) < 2:
                    continue
                t = int(round(int(parts[0]) / step))
                value = float(parts[1]) * (1024 / MIB if kind == "bw" else 1)  # bw logs are KiB/s
                row = rows.setdefault(t, {"t_s": t * step / 1000, "mib_s": 0.0, "iops": 0.0})
                row[field] += value
    return [dict(rows[k], ramp=rows[k]["t_s"] <= spec.ramp_s) for k in sorted(rows)]


@register
class FioEngine(Engine):
    name = "fio"
    external = True
    replays = True  # a trace's ops (replay, model_load) through read_iolog
    queue_depth = True  # passed through as fio's iodepth, for an async engine.ioengine

    def check(self, spec: Spec) -> None:
        super().check(spec)
        ioengine = spec.ioengine or "psync"
        if spec.iodepth > 1 and ioengine not in ASYNC_IOENGINES:
            raise ConfigError("iodepth", spec.iodepth,
                              f"engine.ioengine={ioengine} is synchronous (fio would run at depth 1): "
                              f"set engine.ioengine to one of {', '.join(ASYNC_IOENGINES)}")
        if spec.pattern == "append":
            self._check_append(spec)
        if shutil.which("fio") is None:
            raise ConfigError("engine", "fio", "fio is not installed: apt-get install -y fio, or choose engine=sync")
        # the paths the job file will name, refused before any file is created
        if spec.target == "device":
            if spec.target_path:  # none at all: the target says so
                fio_path("target.path", Path(spec.target_path).expanduser().absolute())
        elif spec.target != "file":  # target=file: the one file it reads is checked in run_job
            fio_path("target.dir", Path(spec.target_dir).expanduser().absolute())

    @staticmethod
    def _check_append(spec: Spec) -> None:
        """What of pattern=append fio cannot express, in one line each."""
        from ..append import knob, policy

        mode, p = knob(spec, "append_mode"), policy(spec)
        for key, value, bad, why in (
                ("append.mode", mode, mode != "unbuffered", "fio issues one write per record (bs=record_bytes); it "
                                                            "has no user-space buffer or store-into-a-mapping append"),
                ("append.fsync", p, p == "interval", "fio syncs every N writes (fsync=N), not every N ms"),
                ("append.fsync_call", "fdatasync", p == "end" and knob(spec, "append_fsync_call") == "fdatasync",
                 "fio's end_fsync calls fsync"),
                ("append.shared_file", True, knob(spec, "append_shared_file"),
                 "fio's jobs on one file write the same offsets, they do not append to each other")):
            if bad:
                raise ConfigError(key, value, f"engine=fio cannot run this: {why}; use engine=sync")

    def run_job(self, spec: Spec, target, placement, progress) -> Result:
        from ..prepare import device_counters, prepare_files

        if spec.read_only_target and placement.shared_path is None and placement.worker_paths(spec.writers):
            raise ConfigError("target.path", spec.target_path, "engine=fio reads one file with target=file, this "
                                                               "names several: point target.path at one file, or "
                                                               "use engine=sync")
        warnings = prepare_files(spec, placement)
        # fio's job file and logs go to a directory of our own, never into the target
        with tempfile.TemporaryDirectory(prefix="iosweep-fio-") as tmp:
            logs = Path(tmp)
            job = job_file(spec, placement, logs)
            job_path = logs / "iosweep.fio"
            job_path.write_text(job)
            dev0 = device_counters(placement.device)
            proc = subprocess.run(command(spec, job_path), capture_output=True, text=True)
            dev1 = device_counters(placement.device)
            series = timeseries(logs, spec)
        try:
            out = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            out = None
        if proc.returncode != 0 or out is None or out["jobs"][0].get("error"):
            err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise WorkloadError(f"fio failed on {placement.scratch or placement.shared_path}: {err}")
        job_out = out["jobs"][0]
        rd, wr = job_out["read"], job_out["write"]
        cpu_s = (job_out["usr_cpu"] + job_out["sys_cpu"]) / 100 * job_out["job_runtime"] / 1000
        result = Result(
            elapsed_s=max(rd["runtime"], wr["runtime"]) / 1000, bytes_read=rd["io_bytes"],
            bytes_written=wr["io_bytes"], ops_read=rd["total_ios"], ops_written=wr["total_ios"],
            lat_read=histogram(rd["clat_ns"]), lat_write=histogram(wr["clat_ns"]),
            io_mode="mmap" if spec.ioengine == "mmap" and placement.io_mode == "buffered" else placement.io_mode,
            cpu_s=cpu_s, warnings=warnings, timeseries=series,
            info={"fio_version": out.get("fio version", ""), "ramp_done": True},
            attachments={"fio_job.fio": job, "fio_output.json": proc.stdout},
        )
        if spec.pattern == "append":  # records are fio's writes; its fsyncs are the `sync` section
            sync = job_out.get("sync") or {}
            result.lat_fsync = histogram(sync.get("lat_ns") or {})
            result.counters = {"records_total": float(wr["total_ios"]), "fsyncs": float(max(sync.get("total_ios", 0),  # fdatasync=N: fio 3.33
                                                                  (sync.get("lat_ns") or {}).get("N", 0))),  # counts them in N only
                               "append_write_calls": float(wr["total_ios"]), "file_restarts": 0.0}
        result.set_device_traffic(dev0, dev1)
        return result
