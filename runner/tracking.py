"""MLflow: the experiment, parent and child runs, params, batched metrics, artifacts, status.

Runs are written through MlflowClient with explicit run ids (no global active run), so a point
is logged in one batch after it was measured, with its real start and end times, and a sweep's
parent can be closed from a Hydra callback or at exit whatever happened to its points.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import secrets

EXPERIMENT = "iosweep"
PARENT_ENV = "IOSWEEP_PARENT_RUN_ID"
UNPUBLISHED: list[Path] = []  # sweep points kept only in their run dir: the sweep exits 3
INTERRUPTED: list[int] = []  # signals that stopped this process: a sweep's parent ends KILLED
KILLED_POINTS: list[dict] = []  # the point a signal stopped (Hydra reports no job end for it)
REPRODUCED_ENV = "IOSWEEP_REPRODUCED_FROM"  # set by runner.reproduce: tags the new run(s)
OUTPUTS = Path("outputs")
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 100  # MLflow's log_batch limits per call


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else the sqlite store under ./outputs (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(OUTPUTS / 'mlflow.db').absolute()}"


def client():
    from mlflow.tracking import MlflowClient  # ~1 s import: only when something is logged

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not the store's table-creation chatter

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow creates and migrates a sqlite store's tables when a client opens it, unlocked: two
    # runs started at once on a new outputs/ break the store for good (_alembic_tmp_* tables left).
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return MlflowClient(tracking_uri=uri)  # opens the store: tables created/migrated here


def experiment_id(c) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # our own store: keep artifacts beside it
        artifacts = (OUTPUTS / "mlartifacts").absolute().as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another iosweep process created it a moment ago
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = "null" if v is None else str(v)
    return out


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def log_run(c, *, name: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str],
            step_metrics: list = (), artifacts: list[tuple[Path, str | None]] = (),
            status: str = "FINISHED", start_ms: int | None = None, end_ms: int | None = None,
            parent_id: str | None = None) -> str:
    """Create one complete run in one go; returns its id. The run is always terminated.
    Credential-like values are masked here, on the way out."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {k: secrets.mask_text(str(v)) for k, v in tags.items()}
    # publish() finds a run by this id: it goes on last, so a run cut short is imported again
    result_id = tags.pop("iosweep.result_id", None)
    params = secrets.mask_mapping(params)
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = c.create_run(experiment_id(c), start_time=start_ms, tags={"mlflow.runName": name}, run_name=name)
    run_id = run.info.run_id
    try:
        now = end_ms or int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
        ms += [Metric(k, float(v), ts, step) for k, v, ts, step in step_metrics if math.isfinite(v)]
        ps = [Param(k, str(v)[:6000]) for k, v in params.items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for batch in _chunks(ps, MAX_PARAMS):
            c.log_batch(run_id, params=batch)
        for batch in _chunks(ts, MAX_TAGS):
            c.log_batch(run_id, tags=batch)
        for batch in _chunks(ms, MAX_METRICS):
            c.log_batch(run_id, metrics=batch)
        with tempfile.TemporaryDirectory(prefix="iosweep-artifacts-") as tmp:
            for path, artifact_dir in artifacts:
                for src, rel in _files(Path(path)):
                    dst = Path(tmp) / (artifact_dir or "") / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if src.suffix in TEXT_ARTIFACTS:
                        dst.write_text(secrets.mask_file_text(src.name, src.read_text()))
                    else:
                        shutil.copyfile(src, dst)
            c.log_artifacts(run_id, tmp)
        if result_id:
            c.set_tag(run_id, "iosweep.result_id", result_id)
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, status, end_time=end_ms)
    return run_id


TEXT_ARTIFACTS = {".yaml", ".yml", ".json", ".md", ".csv", ".fio", ".txt", ".log"}


def _files(path: Path):
    """(file, path relative to the artifact dir) for a file or every file under a directory."""
    if path.is_dir():
        return [(f, f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file()]
    return [(path, Path(path.name))] if path.exists() else []


def find_published(c, result_id: str) -> str | None:
    runs = c.search_runs([experiment_id(c)], filter_string=f"tags.`iosweep.result_id` = '{result_id}'",
                         max_results=1)
    return runs[0].info.run_id if runs else None


def publish(run_dir: Path) -> tuple[str, bool]:
    """Log a run dir (its result.json and the files it names) to MLflow as one run.

    Idempotent: a run dir whose result_id is already in the store is not logged twice.
    Returns the run id and whether it was logged now (False: it was already there).
    """
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "result.json").read_text())
    c = client()
    existing = find_published(c, record["result_id"])
    if existing:
        return existing, False
    parent = record.get("parent_run_id")
    if parent:
        try:
            c.get_run(parent)
        except Exception:  # the sweep's parent never reached this store: import the point alone
            parent = None
    run_id = log_run(c, name=record["name"], params=record["params"], metrics=record.get("metrics", {}),
                     tags={**record.get("tags", {}), "iosweep.result_id": record["result_id"]},
                     step_metrics=record.get("step_metrics", []),
                     artifacts=[(run_dir / rel, d) for rel, d in record.get("artifacts", [])],
                     status=record["status"], start_ms=record.get("start_ms"), end_ms=record.get("end_ms"),
                     parent_id=parent)
    return run_id, True


class SweepCallback(Callback):
    """One parent MLflow run per multirun; every point becomes its child (mlflow.parentRunId).

    Hydra does not call on_multirun_end when a job raised, so the parent is also closed at exit.
    """

    def __init__(self) -> None:
        self.parent_id: str | None = None
        self.points: list[dict] = []

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        overrides = " ".join(config.hydra.overrides.task) or "(defaults)"
        overrides = secrets.mask_text(overrides)
        # Hydra's launcher prints every job's overrides: mask credentials there too
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").addFilter(secrets.MaskFilter())
        tags = {"mlflow.runName": f"sweep {overrides}", "iosweep.sweep": "true",
                "iosweep.overrides": secrets.mask_text(" ".join(config.hydra.overrides.task)),
                "iosweep.sweep_dir": str(Path(config.hydra.sweep.dir).absolute())}
        if os.environ.get(REPRODUCED_ENV):
            tags["iosweep.reproduced_from"] = os.environ[REPRODUCED_ENV]
        from .host import host_tags

        tags.update(host_tags())
        self.sweep_dir = Path(config.hydra.sweep.dir)
        try:
            c = client()
            run = c.create_run(experiment_id(c), tags=tags, run_name=f"sweep {overrides}")
        except Exception as e:  # Hydra would only warn, with MLflow's whole message: say it in one line
            print(f"iosweep: error: tracking store {tracking_uri()} unavailable ({store_reason(e)}); the sweep "
                  f"goes on, every point is kept in its run dir", file=sys.stderr, flush=True)
            return
        self.parent_id = run.info.run_id
        os.environ[PARENT_ENV] = self.parent_id
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job raised

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        value = job_return.return_value if job_return.status.name == "COMPLETED" else None
        if not isinstance(value, dict):
            value = {"status": "FAILED", "error": f"job raised {job_return._return_value!r}"[:300],
                     "run_id": None, "metrics": {}}
        value["overrides"] = list(job_return.overrides or [])
        self.points.append(value)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = self._finish()
        if UNPUBLISHED:
            from .console import fail

            fail(f"{len(UNPUBLISHED)} of {len(self.points)} points are not in the tracking store "
                 f"{tracking_uri()}: import them with python -m runner.sync {self.sweep_dir}", code=3)
        if failed:
            first = failed[0]
            print(secrets.mask_text(f"iosweep: {len(failed)} of {len(self.points)} points failed; first: "
                                    f"{' '.join(first['overrides'])}: {first['error']}"), file=sys.stderr)
            sys.exit(1)

    def _finish(self) -> list[dict]:
        """Summarise the sweep on the terminal and on its parent run, then close the parent."""
        if self.parent_id is None:
            return []
        from mlflow.entities import Metric, RunTag

        from . import summary

        parent, self.parent_id = self.parent_id, None
        os.environ.pop(PARENT_ENV, None)
        self.points += KILLED_POINTS
        failed = [p for p in self.points if p["status"] != "FINISHED"]
        axes, table = summary.rows(self.points)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        ratios = summary.engine_ratios(self.points)
        notes = summary.findings(axes, table, ratios)
        try:
            pngs = summary.plots(axes, table, self.sweep_dir)
        except Exception as e:  # a plot must never cost the sweep its summary
            pngs = []
            notes.append(f"plots failed: {e}")
        md = summary.markdown_table(axes, table)
        ratio_md = summary.ratio_table(ratios) if ratios else ""
        text = (f"# Sweep {parent}\n\n{md}\n\n## Findings\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
                + (f"\n## Throughput relative to fio (goal >= 0.95)\n\n{ratio_md}" if ratios else ""))
        (self.sweep_dir / "summary.md").write_text(text)
        summary.write_csv(self.sweep_dir / "summary.csv", axes, table)
        print(secrets.mask_text("\n" + md + "\n\n" + "\n".join(f"  * {n}" for n in notes)), flush=True)
        if ratios:
            print("\niosweep: throughput relative to fio at the same point (goal >= 0.95)\n" + ratio_md, flush=True)
        c = client()
        now = int(time.time() * 1000)
        metrics = {"points_total": len(self.points), "points_failed": len(failed)}
        best = summary.best_point(table)
        tags = []
        if best:
            metrics["best_throughput_mib_s"] = best["throughput_mib_s"]
            metrics["best_iops"] = summary.best_point(table, "iops")["iops"]  # the best IOPS, maybe elsewhere
            tags.append(RunTag("iosweep.best_point", " ".join(f"{a}={best[a]}" for a in axes)))
            tags.append(RunTag("iosweep.best_run_id", best["run_id"]))
        metrics |= {summary.metric_key(f"ratio_vs_fio/{r['engine']}/{r['point']}"): r["ratio"] for r in ratios}
        if ratios:
            metrics["ratio_vs_fio_min"] = min(r["ratio"] for r in ratios)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for batch in _chunks(items, MAX_METRICS):
            c.log_batch(parent, metrics=batch, tags=tags)
            tags = []
        for path in [self.sweep_dir / "summary.md", self.sweep_dir / "summary.csv", *pngs]:
            if path.suffix in TEXT_ARTIFACTS:
                path.write_text(secrets.mask_file_text(path.name, path.read_text()))
            c.log_artifact(parent, str(path))
        c.set_terminated(parent, "KILLED" if INTERRUPTED else "FAILED" if failed else "FINISHED")
        return failed


def store_reason(e: Exception) -> str:
    """The first line of a store error: MLflow's messages run to pages."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_ENV)


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
