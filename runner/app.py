"""cfg -> workloads.Spec -> workloads.run() -> result.json -> MLflow; user errors -> one line.

A single run with bad input exits 2 before any I/O and before any MLflow run exists. In a sweep
the bad point becomes a FAILED child run carrying the one-line error and the sweep goes on.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import workloads
from workloads import ConfigError, DataSpec, Result, Spec, WorkloadError

from . import console, host, tracking

GROUPS = ("target", "pattern", "engine", "data", "point", "experiment")
_UID = f"{os.getpid()}"


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


def to_spec(cfg: DictConfig) -> Spec:
    return Spec(
        pattern=cfg.pattern.name, read_pct=cfg.pattern.read_pct,
        block_size=cfg.block_kb * 1024, writers=cfg.writers, size_bytes=cfg.size_mb << 20,
        duration_s=cfg.duration_s, ramp_s=cfg.ramp_s, direct=cfg.direct,
        direct_fallback=cfg.direct_fallback, end_fsync=cfg.end_fsync,
        engine=cfg.engine.name, ioengine=cfg.engine.ioengine, target=cfg.target.name, target_dir=cfg.target.dir,
        data=DataSpec(cfg.data.name, cfg.data.compress_ratio, cfg.data.dedup_ratio),
        seed=cfg.seed, keep_files=cfg.keep_files, log_interval_s=cfg.log_interval_s,
        cache=cfg.cache, repeats=cfg.repeats, latency=cfg.latency,
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
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    start_ms = int(time.time() * 1000)
    progress = console.Progress()
    try:
        spec = to_spec(cfg)
        print(f"iosweep: {console.describe(spec)}", flush=True)
        result = workloads.run(spec, progress=progress)
    except (ConfigError, WorkloadError) as e:
        progress.done()
        return _failed(cfg, hc, str(e), start_ms, multirun, run_dir, measured=isinstance(e, WorkloadError))
    progress.done()
    (run_dir / "config.yaml").write_text(tracking.resolved_yaml(cfg))
    record = _record(cfg, hc, result, overrides)
    (run_dir / "result.json").write_text(json.dumps(record, indent=1))  # before MLflow: never lost
    artifacts = [(run_dir / "config.yaml", None), (run_dir / "result.json", None), (run_dir / ".hydra", ".hydra")]
    artifacts += _latency_artifacts(result, run_dir)
    for name, text in result.attachments.items():  # e.g. fio's job file and JSON output
        (run_dir / name).write_text(text)
        artifacts.append((run_dir / name, "engine"))
    print(console.result_table(result), flush=True)
    run_id = tracking.log_run(
        name=run_name(cfg), params=params_of(cfg, hc), metrics=record["metrics"], tags=record["tags"],
        step_metrics=_step_metrics(result, start_ms), start_ms=start_ms, artifacts=artifacts,
        parent_id=tracking.parent_run_id() if multirun else None,
    )
    print(f"  mlflow run {run_id}  ({tracking.tracking_uri()})", flush=True)
    return {"status": "FINISHED", "run_id": run_id, "metrics": record["metrics"], "error": None, "valid": result.valid}


def _record(cfg: DictConfig, hc, result: Result, overrides: list[str]) -> dict:
    tags = {
        "iosweep.io_mode": result.io_mode,
        "iosweep.valid": str(result.valid).lower(),
        "iosweep.warnings": "\n".join(result.warnings),
        "iosweep.overrides": " ".join(overrides),
        "iosweep.run_dir": str(Path(hc.runtime.output_dir).absolute()),
        **host.host_tags(), **host.target_tags(result.info),
    }
    if os.environ.get(tracking.REPRODUCED_ENV):
        tags["iosweep.reproduced_from"] = os.environ[tracking.REPRODUCED_ENV]
    return {
        "status": "FINISHED", "overrides": overrides, "metrics": result.metrics(), "tags": tags, "valid": result.valid,
        "warnings": result.warnings, "info": result.info, "timeseries": result.timeseries,
        "latency_read": result.lat_read.to_dict(), "latency_write": result.lat_write.to_dict(),
    }


# time-series row field -> MLflow step metric; system/* are the names MLflow's System Metrics tab shows
STEP_METRICS = {"mib_s": "interval_throughput_mib_s", "iops": "interval_iops",
                "device_read_mib_s": "interval_device_read_mib_s", "device_write_mib_s": "interval_device_write_mib_s",
                "cpu_pct": "system/cpu_utilization_percentage", "mem_used_mib": "system/system_memory_usage_megabytes"}


def _step_metrics(result: Result, start_ms: int) -> list[tuple[str, float, int, int]]:
    out = []
    for step, row in enumerate(result.timeseries, start=1):
        ts = start_ms + int(row["t_s"] * 1000)
        out += [(name, row[field], ts, step) for field, name in STEP_METRICS.items() if field in row]
    return out


def _latency_artifacts(result: Result, run_dir: Path) -> list[tuple[Path, str]]:
    """The merged latency histograms as JSON, and a PNG of them."""
    from . import plots

    if not result.latency.total:
        return []
    hist_json = run_dir / "latency_histogram.json"
    hist_json.write_text(json.dumps({"read": result.lat_read.to_dict(), "write": result.lat_write.to_dict()}))
    png = run_dir / "latency.png"
    plots.latency_png(result.lat_read, result.lat_write, png)
    return [(hist_json, "latency"), (png, "latency")]


def _failed(cfg: DictConfig, hc, message: str, start_ms: int, multirun: bool, run_dir: Path, measured: bool) -> dict:
    """Single run: one line, exit 2 (a run that did I/O is still recorded FAILED). Sweep: FAILED child."""
    run_id = None
    if multirun or measured:
        run_id = tracking.log_run(
            name=run_name(cfg), params=params_of(cfg, hc), metrics={},
            tags={"iosweep.error": message, "iosweep.overrides": " ".join(hc.overrides.task), **host.host_tags()},
            status="FAILED", start_ms=start_ms,
            artifacts=[(run_dir / ".hydra", ".hydra")],
            parent_id=tracking.parent_run_id() if multirun else None,
        )
    if not multirun:
        console.fail(message)
    print(f"iosweep: point failed: {message}", flush=True)
    return {"status": "FAILED", "run_id": run_id, "metrics": {}, "error": message, "valid": False}
