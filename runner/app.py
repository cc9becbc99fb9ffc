"""cfg -> workloads.Spec -> workloads.run() -> result.json -> MLflow; user errors -> one line.

A single run with bad input exits 2 before any I/O and before any MLflow run exists. In a sweep
the bad point becomes a FAILED child run carrying the one-line error and the sweep goes on.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import workloads
from workloads import ConfigError, DataSpec, Interrupted, Result, Spec, WorkloadError

from . import console, host, tracking
from .schema import GROUPS
_UID = f"{os.getpid()}"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed


def stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted once; later ones are ignored so that cleanup
    and the record of the KILLED run complete (every wait in that cleanup is bounded)."""
    def handler(signum, frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def register_resolvers() -> None:
    # Run dirs are named by second; the pid keeps two runs started in the same second apart.
    OmegaConf.register_new_resolver("iosweep_uid", lambda: _UID, replace=True)


def quote_null_choices(args: list[str]) -> list[str]:
    """`engine=null` must pick conf/engine/null.yaml, but Hydra reads a bare null as None."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in GROUPS and "null" in value.split(","):
            value = ",".join("'null'" if v == "null" else v for v in value.split(","))
        out.append(f"{key}{sep}{value}")
    return out


def _whole(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"must be a whole number >= {minimum}")
    return value


def _number(cfg: DictConfig, key: str, minimum: float = 0.0, optional: bool = False, strict: bool = True):
    value = OmegaConf.select(cfg, key)
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (value <= minimum if strict else value < minimum):
        rule = f"must be a number {'>' if strict else '>='} {minimum:g}" + (" or null" if optional else "")
        raise ConfigError(key, value, rule)
    return float(value)


def _switch(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def to_spec(cfg: DictConfig) -> Spec:
    """Type-check the knobs (the schema leaves them loose, see schema.py), then range-check."""
    return Spec(
        pattern=cfg.pattern.name, read_pct=_whole(cfg, "pattern.read_pct", 0),
        block_size=_whole(cfg, "block_kb") * 1024, writers=_whole(cfg, "writers"),
        size_bytes=_whole(cfg, "size_mb") << 20, duration_s=_number(cfg, "duration_s", optional=True),
        ramp_s=_number(cfg, "ramp_s", strict=False), direct=_switch(cfg, "direct"),
        direct_fallback=_switch(cfg, "direct_fallback"), end_fsync=_switch(cfg, "end_fsync"),
        engine=cfg.engine.name, ioengine=cfg.engine.ioengine, target=cfg.target.name, target_dir=cfg.target.dir,
        target_path=cfg.target.path, allow_overwrite=_switch(cfg, "target.allow_overwrite"),
        data=DataSpec(cfg.data.name, _whole(cfg, "data.compress_ratio"), _whole(cfg, "data.dedup_ratio")),
        seed=_whole(cfg, "seed", 0), keep_files=_switch(cfg, "keep_files"),
        log_interval_s=_number(cfg, "log_interval_s"), cache=cfg.cache, repeats=_whole(cfg, "repeats"),
        latency=_switch(cfg, "latency"),
    ).check()


def run_name(cfg: DictConfig) -> str:
    return f"{cfg.pattern.name} {cfg.block_kb}k x{cfg.writers} {cfg.engine.name}"


def params_of(cfg: DictConfig, hc) -> dict[str, str]:
    params = tracking.flatten(OmegaConf.to_container(cfg, resolve=True))
    for group in GROUPS:
        choice = hc.runtime.choices.get(group)
        if choice is not None:
            params[group] = str(choice)
    return params


def run_point(cfg: DictConfig) -> dict:
    """Measure one point, write its run dir (result.json first), then publish it to MLflow."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    start_ms = int(time.time() * 1000)
    progress = console.Progress()
    base = {"result_id": uuid.uuid4().hex, "name": run_name(cfg), "overrides": list(hc.overrides.task),
            "params": params_of(cfg, hc), "start_ms": start_ms,
            "parent_run_id": tracking.parent_run_id() if multirun else None}
    try:
        spec = to_spec(cfg)
        print(f"iosweep: {console.describe(spec)}", flush=True)
        result = workloads.run(spec, progress=progress)
    except Interrupted as stopped:  # record what was measured as KILLED, then stop (a sweep too)
        progress.done()
        reason = f"interrupted by {signal.Signals(stopped.signum).name}"
        if stopped.partial is not None:
            print(console.result_table(stopped.partial), flush=True)
            # no PNG: importing matplotlib would hold the exit up by seconds (the JSON histogram stays)
            record = dict(base, **_measured(cfg, hc, stopped.partial, run_dir, start_ms, plot=multirun))
            record["tags"]["iosweep.error"] = reason
            record.update(status="KILLED", error=reason)
        else:
            record = _unmeasured(base, "KILLED", reason, why=reason + " before the measured window")
        if multirun:  # the sweep's parent closes in this process: MLflow is loaded already
            run_id = _write_and_publish(run_dir, record)
        else:  # exit now: importing MLflow to publish takes seconds
            run_id = _write_and_publish_later(run_dir, record)
        # Hydra calls no on_job_end for a job that raised: hand the point to the sweep summary
        tracking.KILLED_POINTS.append({"status": "KILLED", "run_id": run_id, "metrics": record["metrics"],
                                       "error": reason, "valid": False, "overrides": base["overrides"]})
        raise
    except (ConfigError, WorkloadError) as e:
        progress.done()
        if not multirun and isinstance(e, ConfigError):
            console.fail(str(e))  # bad input, single run: one line, no MLflow run
        record = _unmeasured(base, "FAILED", str(e))
        if getattr(e, "partial", None) is not None:  # a worker got stuck: keep what the others measured
            record = dict(base, **_measured(cfg, hc, e.partial, run_dir, start_ms))
            record["tags"]["iosweep.error"] = str(e)
            record.update(status="FAILED", error=str(e))
        run_id = _write_and_publish(run_dir, record)
        if not multirun:
            console.fail(str(e))
        print(f"iosweep: point failed: {e}", flush=True)
        return {"status": "FAILED", "run_id": run_id, "metrics": {}, "error": str(e), "valid": False}
    progress.done()
    print(console.result_table(result), flush=True)
    record = dict(base, **_measured(cfg, hc, result, run_dir, start_ms))
    run_id = _write_and_publish(run_dir, record)
    return {"status": "FINISHED", "run_id": run_id, "metrics": record["metrics"], "error": None, "valid": result.valid}


def _unmeasured(base: dict, status: str, error: str, why: str | None = None) -> dict:
    """The record of a point that measured nothing: its status, why, and its overrides."""
    return dict(base, status=status, error=error, metrics={}, end_ms=int(time.time() * 1000),
                artifacts=[[".hydra", ".hydra"]],
                tags={"iosweep.error": why or error, "iosweep.overrides": " ".join(base["overrides"]),
                      **host.host_tags()})


def _write_and_publish(run_dir: Path, record: dict) -> str | None:
    """result.json first (the measurement is never lost), then MLflow; a store that is down is
    one line and exit 3, with the way to import the run later."""
    (run_dir / "result.json").write_text(json.dumps(record, indent=1))
    try:
        run_id, _ = tracking.publish(run_dir)
    except Exception as e:  # any failure of the store: the result is safe on disk
        message = (f"tracking store {tracking.tracking_uri()} unavailable ({tracking.store_reason(e)}); the result "
                   f"is kept in {run_dir / 'result.json'}: import it later with python -m runner.sync {run_dir}")
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            console.fail(message, code=3)
        # a sweep goes on: its other points are worth measuring; it exits 3 at the end (SweepCallback)
        print(f"iosweep: error: {message}", file=sys.stderr, flush=True)
        tracking.UNPUBLISHED.append(run_dir)
        return None
    print(f"  mlflow run {run_id}  ({tracking.tracking_uri()})", flush=True)
    return run_id


def _write_and_publish_later(run_dir: Path, record: dict) -> None:
    """result.json, then a detached `python -m runner.sync RUN_DIR` publishes it (output in
    sync.log): a stopped run exits at once. Its own session: the terminal's signals spare it."""
    (run_dir / "result.json").write_text(json.dumps(record, indent=1))
    with open(run_dir / "sync.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "runner.sync", str(run_dir.absolute())], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"  publishing to {tracking.tracking_uri()} in the background (log: {run_dir / 'sync.log'}); "
          f"if it fails: python -m runner.sync {run_dir}", flush=True)
    return None


def _measured(cfg: DictConfig, hc, result: Result, run_dir: Path, start_ms: int, plot: bool = True) -> dict:
    """Everything a measured point leaves: the record for result.json and the files beside it."""
    (run_dir / "config.yaml").write_text(tracking.resolved_yaml(cfg))
    artifacts = [["config.yaml", None], ["result.json", None], [".hydra", ".hydra"]]
    artifacts += _latency_artifacts(result, run_dir, plot)
    for name, text in result.attachments.items():  # e.g. fio's job file and JSON output
        (run_dir / name).write_text(text)
        artifacts.append([name, "engine"])
    tags = {
        "iosweep.io_mode": result.io_mode,
        "iosweep.valid": str(result.valid).lower(),
        "iosweep.warnings": "\n".join(result.warnings),
        "iosweep.overrides": " ".join(hc.overrides.task),
        "iosweep.run_dir": str(run_dir.absolute()),
        **host.host_tags(), **host.target_tags(result.info),
    }
    if os.environ.get(tracking.REPRODUCED_ENV):
        tags["iosweep.reproduced_from"] = os.environ[tracking.REPRODUCED_ENV]
    return {
        "status": "KILLED" if result.info.get("stopped") else "FINISHED", "end_ms": int(time.time() * 1000),
        "metrics": result.metrics(), "tags": tags, "valid": result.valid, "warnings": result.warnings,
        "info": result.info, "timeseries": result.timeseries, "step_metrics": _step_metrics(result, start_ms),
        "latency_read": result.lat_read.to_dict(), "latency_write": result.lat_write.to_dict(),
        "artifacts": artifacts,
    }


# time-series row field -> MLflow step metric; system/* are the names MLflow's System Metrics tab shows
STEP_METRICS = {"mib_s": "interval_throughput_mib_s", "iops": "interval_iops",
                "device_read_mib_s": "interval_device_read_mib_s", "device_write_mib_s": "interval_device_write_mib_s",
                "cpu_pct": "system/cpu_utilization_percentage", "mem_used_mib": "system/system_memory_usage_megabytes"}


def _step_metrics(result: Result, start_ms: int) -> list[list]:
    out = []
    for step, row in enumerate(result.timeseries, start=1):
        ts = start_ms + int(row["t_s"] * 1000)
        out += [[name, row[field], ts, step] for field, name in STEP_METRICS.items() if field in row]
    return out


def _latency_artifacts(result: Result, run_dir: Path, plot: bool = True) -> list[list]:
    """The merged latency histograms as JSON, and a PNG of them."""
    if not result.latency.total:
        return []
    (run_dir / "latency_histogram.json").write_text(
        json.dumps({"read": result.lat_read.to_dict(), "write": result.lat_write.to_dict()}))
    if not plot:
        return [["latency_histogram.json", "latency"]]
    from . import plots  # matplotlib: ~1-2 s to import

    plots.latency_png(result.lat_read, result.lat_write, run_dir / "latency.png")
    return [["latency_histogram.json", "latency"], ["latency.png", "latency"]]
