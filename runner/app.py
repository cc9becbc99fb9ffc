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

from . import console, tracking

GROUPS = ("target", "pattern", "engine", "data", "experiment")
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
        engine=cfg.engine.name, target=cfg.target.name, target_dir=cfg.target.dir,
        data=DataSpec(cfg.data.name, cfg.data.compress_ratio, cfg.data.dedup_ratio),
        seed=cfg.seed, keep_files=cfg.keep_files, log_interval_s=cfg.log_interval_s,
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
    run_id = tracking.log_run(
        name=run_name(cfg), params=params_of(cfg, hc), metrics=record["metrics"], tags=record["tags"],
        step_metrics=_step_metrics(result, start_ms), start_ms=start_ms,
        artifacts=[(run_dir / "config.yaml", None), (run_dir / "result.json", None), (run_dir / ".hydra", ".hydra")],
        parent_id=tracking.parent_run_id() if multirun else None,
    )
    print(console.result_table(result))
    print(f"  mlflow run {run_id}  ({tracking.tracking_uri()})", flush=True)
    return {"status": "FINISHED", "run_id": run_id, "metrics": record["metrics"], "error": None}


def _record(cfg: DictConfig, hc, result: Result, overrides: list[str]) -> dict:
    tags = {
        "iosweep.io_mode": result.io_mode,
        "iosweep.warnings": "\n".join(result.warnings),
        "iosweep.overrides": " ".join(overrides),
        "iosweep.run_dir": str(Path(hc.runtime.output_dir).absolute()),
        "target.fs_type": result.info.get("fs_type", ""),
        "target.device": result.info.get("device", ""),
    }
    return {
        "status": "FINISHED", "overrides": overrides, "metrics": result.metrics(), "tags": tags,
        "warnings": result.warnings, "info": result.info, "timeseries": result.timeseries,
        "latency_read": result.lat_read.to_dict(), "latency_write": result.lat_write.to_dict(),
    }


def _step_metrics(result: Result, start_ms: int) -> list[tuple[str, float, int, int]]:
    out = []
    for step, row in enumerate(result.timeseries, start=1):
        ts = start_ms + int(row["t_s"] * 1000)
        out.append(("interval_throughput_mib_s", row["mib_s"], ts, step))
        out.append(("interval_iops", row["iops"], ts, step))
    return out


def _failed(cfg: DictConfig, hc, message: str, start_ms: int, multirun: bool, run_dir: Path, measured: bool) -> dict:
    """Single run: one line, exit 2 (a run that did I/O is still recorded FAILED). Sweep: FAILED child."""
    run_id = None
    if multirun or measured:
        run_id = tracking.log_run(
            name=run_name(cfg), params=params_of(cfg, hc), metrics={},
            tags={"iosweep.error": message, "iosweep.overrides": " ".join(hc.overrides.task)},
            status="FAILED", start_ms=start_ms,
            artifacts=[(run_dir / ".hydra", ".hydra")],
            parent_id=tracking.parent_run_id() if multirun else None,
        )
    if not multirun:
        console.fail(message)
    print(f"iosweep: point failed: {message}", flush=True)
    return {"status": "FAILED", "run_id": run_id, "metrics": {}, "error": message}
