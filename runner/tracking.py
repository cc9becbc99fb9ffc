"""MLflow: the experiment, parent and child runs, params, batched metrics, artifacts, status.

Runs are written through MlflowClient with explicit run ids (no global active run), so a point
is logged in one batch after it was measured, with its real start and end times, and a sweep's
parent can be closed from a Hydra callback or at exit whatever happened to its points.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import launchers, secrets

EXPERIMENT = "iosweep"
PARENT_ENV = "IOSWEEP_PARENT_RUN_ID"
INTERRUPTED: list[int] = []  # signals that stopped this process: a sweep's parent ends KILLED
REPRODUCED_ENV = "IOSWEEP_REPRODUCED_FROM"  # set by runner.reproduce: tags the new run(s)
OUTPUTS = Path("outputs")
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 100  # MLflow's log_batch limits per call
STATUSES = ("FINISHED", "FAILED", "KILLED")  # the end states a result.json may record
PUBLISHING = "iosweep.publishing"  # on a run from create_run until it is complete; see publish()
PROBE_TIMEOUT_S = 3.0
# MLflow retries an HTTP call 7 times with back-off, 120 s each: minutes per call to a dead server.
# Ours are set unless the user set them; the probe below catches a dead server before any call.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
               # with tqdm installed MLflow draws a progress bar per artifact download on stderr, which
               # would bury reproduce's one-line errors (a user's own setting wins: setdefault)
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_PROBED: dict[str, str | None] = {}  # tracking URI -> why it is unreachable (None: it answered)
_REAPED: set[str] = set()  # tracking URIs this process already searched for dead processes' runs


class StoreUnavailable(Exception):
    """The tracking store did not answer the probe: nothing was sent to it."""


class BadRecord(ValueError):
    """A result.json publish() will not log: a field of the wrong type or an unknown choice."""


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else the sqlite store under ./outputs (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(OUTPUTS / 'mlflow.db').absolute()}"


def probe(uri: str) -> None:
    """Raise StoreUnavailable when an HTTP tracking server gives no answer within PROBE_TIMEOUT_S.

    Asked once per process and URI (a sweep's points reuse the verdict): a server that is down costs
    at most one short wait instead of MLflow's retries on every call of every point.
    """
    if uri not in _PROBED:
        _PROBED[uri] = None
        if uri.startswith(("http://", "https://")):
            try:
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
            except urllib.error.HTTPError:
                pass  # it answered (a proxy without /health is still a server)
            except urllib.error.URLError as e:
                if not isinstance(e.reason, ssl.SSLError):  # TLS settings are MLflow's to judge
                    _PROBED[uri] = f"no answer from {uri}: {e.reason}"
            except (OSError, ValueError) as e:  # timed out, connection reset, malformed URI
                _PROBED[uri] = f"no answer from {uri} within {PROBE_TIMEOUT_S:g} s: {e or type(e).__name__}"
    if _PROBED[uri]:
        raise StoreUnavailable(_PROBED[uri])


def client():
    uri = tracking_uri()
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    probe(uri)
    from mlflow.tracking import MlflowClient  # ~1 s import: only when something is logged

    # MLflow logs a store's errors with whole tracebacks before raising them; iosweep catches the
    # error and says it in one line (exit 3), so its loggers only speak when they are critical.
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.CRITICAL)

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow creates and migrates a sqlite store's tables when a client opens it, unlocked: two
    # runs started at once on a new outputs/ break the store for good (_alembic_tmp_* tables left).
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return MlflowClient(tracking_uri=uri)  # opens the store: tables created/migrated here


# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) view; these are runs
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(c) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # made by an older iosweep; a kind the user chose stays
                c.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    artifacts = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # our own store: keep artifacts beside it
        artifacts = (OUTPUTS / "mlartifacts").absolute().as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
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
            step_metrics: list = (), artifacts: list[tuple[Path, str]] = (),
            status: str = "FINISHED", start_ms: int | None = None, end_ms: int | None = None,
            parent_id: str | None = None) -> str:
    """Create one complete run in one go; returns its id. The run is always terminated.
    artifacts: (file, its path in the run's artifacts). Credential-like values are masked here,
    on the way out.

    The run carries iosweep.result_id (in tags) and PUBLISHING from the moment it exists; PUBLISHING
    goes once everything is logged, so a run cut short is recognisably incomplete (see publish()).
    A file that cannot be read or staged (a full disk) costs the run that file, not its status:
    it is named in the tag iosweep.artifacts_error.
    """
    from mlflow.entities import Metric, Param, RunTag

    secrets.remember_params(params, str(tags.get("iosweep.overrides", "")).split())  # e.g. runner.sync
    tags = {k: secrets.mask_text(str(v)) for k, v in tags.items()}
    params = secrets.mask_mapping(params)
    name = secrets.mask_text(name)
    first = {"mlflow.runName": name, PUBLISHING: "true", **process_tags(),
             **{k: tags.pop(k) for k in ("iosweep.result_id",) if k in tags}}
    if parent_id:
        first["mlflow.parentRunId"] = parent_id
    run = c.create_run(experiment_id(c), start_time=start_ms, tags=first, run_name=name)
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
            staged, errors = _stage(artifacts, Path(tmp))
            try:
                if staged:
                    c.log_artifacts(run_id, tmp)
            except OSError as e:  # the artifact store's disk is full: the run keeps its numbers
                errors.append(f"artifacts not stored: {e}")
        if errors:
            c.set_tag(run_id, "iosweep.artifacts_error", "; ".join(errors)[:5000])
            warn(f"run {run_id}: " + "; ".join(errors))
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    # terminated first: a run killed between the two calls is re-logged, never left RUNNING as complete
    c.set_terminated(run_id, status, end_time=end_ms)
    c.delete_tag(run_id, PUBLISHING)
    return run_id


TEXT_ARTIFACTS = {".yaml", ".yml", ".json", ".md", ".csv", ".fio", ".txt", ".log"}


def warn(message: str) -> None:
    print(f"iosweep: warning: {message}", file=sys.stderr, flush=True)


def _stage(artifacts, tmp: Path) -> tuple[int, list[str]]:
    """Copy the artifacts into tmp (text masked); a destination that resolves outside tmp is
    skipped. Returns how many files were staged and what could not be."""
    staged, errors = 0, []
    root = tmp.resolve()
    for src, rel in artifacts:
        dst = tmp / rel
        if not dst.resolve().is_relative_to(root) or dst.resolve() == root:
            warn(f"artifact path {rel}: outside the run's artifacts; not uploaded")
            continue
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix in TEXT_ARTIFACTS:
                dst.write_text(secrets.mask_file_text(src.name, src.read_text()))
            else:
                shutil.copyfile(src, dst)
            staged += 1
        except (OSError, UnicodeDecodeError) as e:  # vanished, unreadable, not text, or no space in /tmp
            errors.append(f"{rel}: {getattr(e, 'strerror', None) or e}")
    return staged, errors


def _files(path: Path):
    """(file, path relative to the artifact dir) for a file or every file under a directory."""
    if path.is_dir():
        return [(f, f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file()]
    return [(path, Path(path.name))] if path.exists() else []


def artifact_files(run_dir: Path, artifacts: list) -> tuple[list[tuple[Path, Path]], list[str]]:
    """A record's [path in run dir, artifact dir] pairs -> (file, path in the run's artifacts) for
    files that resolve inside run_dir, and the named paths that do not exist (e.g. a full disk
    refused them). A path outside the run dir (absolute, `..`, a symlink out) is never read."""
    root = run_dir.resolve()
    files, missing = [], []
    for rel, artifact_dir in artifacts:
        src = run_dir / rel
        if not src.resolve().is_relative_to(root):
            warn(f"{src}: outside the run dir {run_dir}; not uploaded")
            continue
        if not src.exists():
            missing.append(rel)
            continue
        for f, sub in _files(src):
            if f.resolve().is_relative_to(root):
                files.append((f, Path(artifact_dir or "") / sub))
            else:
                warn(f"{f}: resolves outside the run dir {run_dir}; not uploaded")
    return files, missing


def process_tags() -> dict[str, str]:
    """Which process made a run: the next iosweep process on this host closes the run as KILLED
    if that process is gone (see close_dead_runs). The start time tells a reused pid apart."""
    me = psutil.Process()
    return {"iosweep.host": socket.gethostname(), "iosweep.pid": str(me.pid),
            "iosweep.pid_start": f"{me.create_time():.2f}"}


def _alive(pid: str | None, start: str | None) -> bool:
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(start)) < 0.5
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False
    except psutil.Error:  # cannot tell (e.g. access denied): leave the run alone
        return True


def close_dead_runs(c) -> int:
    """Close as KILLED the runs this host's iosweep processes left RUNNING when they died (kill -9,
    power cut): they are not in progress, and their points are re-imported by sync (publish()
    deletes an incomplete attempt). Once per process and store; never fatal."""
    uri = tracking_uri()
    if uri in _REAPED:
        return 0
    _REAPED.add(uri)
    host = socket.gethostname()
    try:
        found = c.search_runs([experiment_id(c)], max_results=1000,
                              filter_string=f"attributes.status = 'RUNNING' and tags.`iosweep.host` = '{host}'")
        closed = 0
        for run in found:
            tags = run.data.tags
            if _alive(tags.get("iosweep.pid"), tags.get("iosweep.pid_start")):
                continue
            c.set_tag(run.info.run_id, "iosweep.killed_reason",
                      f"process {tags.get('iosweep.pid')} on {host} ended without closing this run; "
                      f"closed by process {os.getpid()}")
            c.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    except Exception as e:  # a read-only or failing store: the caller's own calls will say so
        logging.getLogger(__name__).debug("close_dead_runs: %s", e)
        return 0
    if closed:
        print(f"iosweep: closed {closed} run{'s' if closed > 1 else ''} left RUNNING by a process that died "
              f"(status KILLED, tag iosweep.killed_reason)", flush=True)
    return closed


def find_published(c, result_id: str) -> tuple[str | None, list[str]]:
    """(the complete run logged from this result, ids of incomplete attempts: runs cut short mid-log)."""
    runs = c.search_runs([experiment_id(c)], filter_string=f"tags.`iosweep.result_id` = '{result_id}'",
                         max_results=100)
    done = [r.info.run_id for r in runs if PUBLISHING not in r.data.tags]
    return (done[0] if done else None), [r.info.run_id for r in runs if PUBLISHING in r.data.tags]


STORE_ROOM = 1 << 20  # free bytes a local store needs to log a run (rows, sqlite's journal, artifacts)


def check_room() -> None:
    """Raise StoreUnavailable when a local sqlite store's disk is (nearly) full. Checked before
    create_run: a run created on a full disk cannot be finished, nor even marked FAILED (that is
    a write too), and would stay RUNNING."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        where = db.parent
        while not where.exists() and where != where.parent:  # a new store: its dir is made by client()
            where = where.parent
        free = shutil.disk_usage(where).free
        if free < STORE_ROOM:
            raise StoreUnavailable(f"no space left for it on {db.parent}: {free >> 10} KiB free, "
                                   f"{STORE_ROOM >> 10} KiB needed to log a run")


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """An exclusive flock on the run dir itself, held by publish() from find to log.

    The run and `runner.sync` both publish a run dir through publish() on the host that holds the
    dir, so this lock orders them: the second finds what the first logged. (flock on the dir, not
    on result.json: it stays valid whatever happens to the files inside.)
    """
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


HEX32 = re.compile(r"[0-9a-f]{32}")


def check_record(record) -> dict:
    """The fields of a result.json that publish() and the sweep summary use, type- and choice-
    checked: sync reads files anyone may have edited, and ids go into store queries."""
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise BadRecord(f"{key}: {rule}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    need(isinstance(record, dict), "result.json", "must be a JSON object")
    need(isinstance(record.get("result_id"), str) and HEX32.fullmatch(record["result_id"]) is not None,
         "result_id", "must be 32 hex digits")
    need(isinstance(record.get("name"), str) and 0 < len(record["name"]) <= 250, "name", "must be a short string")
    need(record.get("status") in STATUSES, "status", f"must be one of {', '.join(STATUSES)}")
    params, tags, metrics = record.get("params"), record.get("tags", {}), record.get("metrics", {})
    need(isinstance(params, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (str, int, float)))
                                          for k, v in params.items()), "params", "must map names to values")
    need(isinstance(tags, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (str, int, float)))
                                        for k, v in tags.items()), "tags", "must map names to values")
    need(isinstance(metrics, dict) and all(isinstance(k, str) and (v is None or number(v)) for k, v in metrics.items()),
         "metrics", "must map names to numbers")
    parent = record.get("parent_run_id")
    need(parent is None or isinstance(parent, str) and HEX32.fullmatch(parent) is not None,
         "parent_run_id", "must be an MLflow run id or null")
    for key in ("start_ms", "end_ms"):
        need(record.get(key) is None or isinstance(record[key], int) and not isinstance(record[key], bool),
             key, "must be milliseconds or null")
    artifacts = record.get("artifacts", [])
    need(isinstance(artifacts, list) and all(isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
                                             and (a[1] is None or isinstance(a[1], str)) for a in artifacts),
         "artifacts", "must be a list of [path, artifact dir]")
    overrides = record.get("overrides", [])
    need(isinstance(overrides, list) and all(isinstance(o, str) for o in overrides), "overrides",
         "must be a list of strings")
    need(record.get("series") is None or isinstance(record["series"], str), "series", "must be a file name")
    need(record.get("error") is None or isinstance(record["error"], str), "error", "must be a string or null")
    return record


def read_record(run_dir: Path) -> dict:
    try:
        return check_record(json.loads((Path(run_dir) / "result.json").read_text()))
    except ValueError as e:  # BadRecord, or not JSON (cut short by a full disk)
        raise BadRecord(str(e).splitlines()[0][:200]) from None


def _step_metrics(run_dir: Path, record: dict) -> list:
    """The time series' step metrics: from the series file the record names (or, in records made
    before it existed, from the record itself)."""
    rows = record.get("step_metrics")
    if rows is None and record.get("series"):
        path = run_dir / record["series"]
        if path.resolve().is_relative_to(run_dir.resolve()) and path.is_file():
            try:
                rows = json.loads(path.read_text()).get("step_metrics")
            except (OSError, ValueError, AttributeError):
                rows = None  # half-written by a full disk: the run keeps its summary metrics
    ok = lambda r: (isinstance(r, list) and len(r) == 4 and isinstance(r[0], str)  # noqa: E731
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r[1:]))
    return [r for r in rows if ok(r)] if isinstance(rows, list) else []


def publish(run_dir: Path, record: dict | None = None) -> tuple[str, bool]:
    """Log a run dir (its result.json, or record when result.json could not be written, and the
    files it names) to MLflow as one run.

    Idempotent: a result_id already in the store is not logged twice, also when the run and sync
    publish at once (run_dir_lock). An earlier attempt cut short mid-log (it still carries
    PUBLISHING) is deleted before the run is logged again: a partial copy is not a result, and
    keeping it would show one measurement twice. Returns the run id and whether it was logged now.
    Raises BadRecord for a result.json it will not log, and the store's errors.
    """
    run_dir = Path(run_dir)
    with run_dir_lock(run_dir):
        record = read_record(run_dir) if record is None else check_record(record)
        check_room()  # before the first write to the store (closing dead runs, the experiment's tags)
        c = client()
        close_dead_runs(c)
        existing, incomplete = find_published(c, record["result_id"])
        if existing:
            return existing, False
        for run_id in incomplete:
            c.delete_run(run_id)
        parent = record.get("parent_run_id")
        if parent:
            try:
                c.get_run(parent)
            except Exception:  # the sweep's parent never reached this store: import the point alone
                parent = None
        files, missing = artifact_files(run_dir, record.get("artifacts", []))
        tags = {**record.get("tags", {}), "iosweep.result_id": record["result_id"]}
        if missing:  # e.g. a full disk refused them after result.json: the run says so
            tags["iosweep.artifacts_missing"] = ", ".join(missing)
        run_id = log_run(c, name=record["name"], params=record["params"], metrics=record.get("metrics", {}),
                         tags=tags, step_metrics=_step_metrics(run_dir, record), artifacts=files,
                         status=record["status"], start_ms=record.get("start_ms"), end_ms=record.get("end_ms"),
                         parent_id=parent)
    return run_id, True


class SweepCallback(Callback):
    """One parent MLflow run per multirun; every point becomes its child (mlflow.parentRunId).

    The summary is rebuilt at the end from the points' run dirs (sweep_points), not from job
    return values or on_job_end: a launcher may run jobs in other processes, where callbacks and
    module state are not this process's. Hydra does not call on_multirun_end when a job raised, so
    the summary is also made, and the parent closed, at exit.
    """

    def __init__(self) -> None:
        self.parent_id: str | None = None
        self.sweep_dir: Path | None = None
        self.finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from workloads.clients import mpi_rank, mpi_size

        if (mpi_size() or 1) > 1 and not str(config.hydra.sweeper._target_).endswith(".BasicSweeper"):
            if mpi_rank():  # rank 0 says it
                sys.exit(2)
            from .console import fail

            fail(f"hydra/sweeper={config.hydra.runtime.choices.get('hydra/sweeper')} under mpirun: every rank would "
                 "search on its own and run other points; sweep a grid (-m key=a,b) with clients=N, or search with "
                 "clients=1")
        if mpi_rank():  # a rank > 0 of clients=N points: rank 0 makes the parent run and the summary
            return
        task = OmegaConf.to_container(config.hydra.overrides.task)  # as typed: `trial=${oc.env:DB_TOKEN}`, not the token
        overrides = " ".join(task) or "(defaults)"
        secrets.remember_config(config)  # and values interpolated into harmless keys (trial=${password})
        overrides = secrets.mask_text(overrides)
        # Hydra's launcher prints every job's overrides: mask credentials there too
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").addFilter(secrets.MaskFilter())
        objective = OmegaConf.select(config, "objective")
        if objective not in OBJECTIVES:  # before any point: every one of them would fail on it
            from .console import fail

            fail(f"objective={objective!r}: not a metric; choose one of {', '.join(OBJECTIVES)}")
        concurrent = launchers.check_sweep(config)  # refused: one line, exit 2, before the parent run exists
        direction = optuna_defaults(config, objective)
        tags = {"mlflow.runName": f"sweep {overrides}", "iosweep.sweep": "true",
                "iosweep.overrides": secrets.mask_text(" ".join(task)),
                "iosweep.sweep_dir": str(Path(config.hydra.sweep.dir).absolute()), **process_tags(), **concurrent}
        if os.environ.get(REPRODUCED_ENV):
            tags["iosweep.reproduced_from"] = os.environ[REPRODUCED_ENV]
        from .host import host_tags

        tags.update(host_tags())
        if direction:
            tags["iosweep.optuna_direction"] = direction
        self.objective = objective
        self.sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job raised
        try:
            c = client()
            close_dead_runs(c)
            run = c.create_run(experiment_id(c), tags=tags, run_name=f"sweep {overrides}")
        except Exception as e:  # Hydra would only warn, with MLflow's whole message: say it in one line
            print(f"iosweep: error: tracking store {tracking_uri()} unavailable ({store_reason(e)}); the sweep "
                  f"goes on, every point is kept in its run dir", file=sys.stderr, flush=True)
            print(f"iosweep: sweep dir {self.sweep_dir.absolute()} (no MLflow parent run)", flush=True)
            return
        self.parent_id = run.info.run_id
        os.environ[PARENT_ENV] = self.parent_id
        print(f"iosweep: sweep dir {self.sweep_dir.absolute()}, MLflow parent run {self.parent_id} "
              f"({tracking_uri()})", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        points, unpublished = self._finish()
        failed = [p for p in points if p["status"] != "FINISHED"]
        if unpublished:
            from .console import fail

            fail(f"{len(unpublished)} of {len(points)} points are not in the tracking store "
                 f"{tracking_uri()}: import them with python -m runner.sync {self.sweep_dir}", code=3)
        if failed:
            first = failed[0]
            print(secrets.mask_text(f"iosweep: {len(failed)} of {len(points)} points failed; first: "
                                    f"{' '.join(first['overrides'])}: {first['error']}"), file=sys.stderr)
            sys.exit(1)

    def _finish(self) -> tuple[list[dict], list[dict]]:
        """Summarise the sweep from its run dirs: on the terminal, in the sweep dir, and on its parent
        run, which is then closed. Returns the points and those not in the store."""
        if self.finished or self.sweep_dir is None:
            return [], []
        self.finished = True
        from . import summary

        parent, self.parent_id = self.parent_id, None
        os.environ.pop(PARENT_ENV, None)
        points = sweep_points(self.sweep_dir)
        c = None
        try:
            c = client()
            _attach_run_ids(c, parent, points)
        except Exception:  # the store is down: the summary still goes to the sweep dir
            pass
        unpublished = [p for p in points if p["result_id"] and not p["run_id"]]
        failed = [p for p in points if p["status"] != "FINISHED"]
        axes, table = summary.rows(points)
        notes, ratios, pngs, sections = [], [], [], []
        for study, group in summary.by_study(points):  # hydra/sweeper=studies: each grid on its own
            s_axes, s_table = (axes, table) if study is None else summary.rows(group)
            s_ratios = summary.engine_ratios(group)
            s_notes = summary.findings(s_axes, s_table, s_ratios)
            try:
                out_dir = self.sweep_dir if study is None else self.sweep_dir / f"study_{study}"
                out_dir.mkdir(exist_ok=True)
                pngs += summary.plots(s_axes, s_table, out_dir)
            except Exception as e:  # a plot must never cost the sweep its summary
                s_notes.append(f"plots failed: {e}")
            md = summary.markdown_table(s_axes, s_table)
            ratio_md = summary.ratio_table(s_ratios) if s_ratios else ""
            ratio_md = f"\n\nThroughput relative to fio (goal >= 0.95):\n\n{ratio_md}" if s_ratios else ""
            sections.append((study, md, s_notes, ratio_md))
            notes += [n if study is None else f"study {study}: {n}" for n in s_notes]
            ratios += s_ratios
        text = f"# Sweep {parent or self.sweep_dir}\n"
        for study, md, s_notes, ratio_md in sections:
            head = "" if study is None else f"\n## Study {study}\n"
            text += (f"{head}\n{md}\n\n{'###' if study else '##'} Findings\n\n" + "\n".join(f"- {n}" for n in s_notes)
                     + "\n" + ratio_md)
        try:
            (self.sweep_dir / "summary.md").write_text(secrets.mask_file_text("summary.md", text))
            summary.write_csv(self.sweep_dir / "summary.csv", axes, table)
            csv_path = self.sweep_dir / "summary.csv"
            csv_path.write_text(secrets.mask_file_text(csv_path.name, csv_path.read_text()))
        except OSError as e:  # e.g. a full disk: the terminal and the parent run still get the summary
            print(f"iosweep: error: {self.sweep_dir}: summary files not written ({e.strerror or e})",
                  file=sys.stderr, flush=True)
        for study, md, s_notes, ratio_md in sections:
            print(secrets.mask_text(("" if study is None else f"\niosweep: study {study}") + "\n" + md + "\n\n"
                                    + "\n".join(f"  * {n}" for n in s_notes) + ratio_md), flush=True)
        print(f"iosweep: sweep dir {self.sweep_dir.absolute()}"
              + (f", MLflow parent run {parent} ({tracking_uri()})" if parent else " (no MLflow parent run)"),
              flush=True)
        if parent and c is not None:
            status = "KILLED" if INTERRUPTED else "FAILED" if failed else "FINISHED"
            try:
                self._log_parent(c, parent, points, failed, axes, table, ratios, notes, pngs, status)
            except Exception as e:
                print(f"iosweep: error: tracking store {tracking_uri()}: the sweep's parent run {parent} could not "
                      f"be completed ({store_reason(e)}); its summary is in {self.sweep_dir}", file=sys.stderr)
                with contextlib.suppress(Exception):
                    c.set_terminated(parent, "FAILED")
        return points, unpublished

    def _log_parent(self, c, parent, points, failed, axes, table, ratios, notes, pngs, status) -> None:
        from mlflow.entities import Metric, RunTag

        from . import summary

        describe_sweep(c, parent, notes)
        now = int(time.time() * 1000)
        metrics = {"points_total": len(points), "points_failed": len(failed)}
        best = summary.best_point(table)
        tags = []
        if best:
            metrics["best_throughput_mib_s"] = best["throughput_mib_s"]
            metrics["best_iops"] = summary.best_point(table, "iops")["iops"]  # the best IOPS, maybe elsewhere
            tags.append(RunTag("iosweep.best_point", secrets.mask_text(" ".join(f"{a}={best[a]}" for a in axes))))
            if best["run_id"]:
                tags.append(RunTag("iosweep.best_run_id", best["run_id"]))
        metrics |= {summary.metric_key(f"ratio_vs_fio/{r['engine']}/{r['point']}"): r["ratio"] for r in ratios}
        if ratios:
            metrics["ratio_vs_fio_min"] = min(r["ratio"] for r in ratios)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for batch in _chunks(items, MAX_METRICS):
            c.log_batch(parent, metrics=batch, tags=tags)
            tags = []
        optuna = self.sweep_dir / "optimization_results.yaml"  # hydra/sweeper=optuna: best_params, best_value
        if optuna.exists():
            import yaml

            found = yaml.safe_load(optuna.read_text()) or {}
            if isinstance(found.get("best_params"), dict):
                best = " ".join(f"{k}={v}" for k, v in found["best_params"].items())
                c.set_tag(parent, "iosweep.optuna_best_params", secrets.mask_text(best))
                c.log_metric(parent, f"optuna_best_{getattr(self, 'objective', 'value')}", float(found["best_value"]))
        for path in [self.sweep_dir / "summary.md", self.sweep_dir / "summary.csv", *pngs, optuna]:
            if path.exists():  # a study's plots under study_<name>/, as in the sweep dir
                folder = path.parent.relative_to(self.sweep_dir).as_posix()
                c.log_artifact(parent, str(path), artifact_path=None if folder == "." else folder)
        c.set_terminated(parent, status)


MINIMIZED = ("elapsed_s", "cpu_util_pct", "cache_served_pct", "write_amplification", "device_read_bytes",
             "device_write_bytes", "fsyncs")  # objectives where less is better, besides every latency (*_us)


def optuna_defaults(config: DictConfig, objective: str) -> str | None:
    """hydra/sweeper=optuna minimises by default; iosweep's objective says which way is better
    (throughput: maximize; a latency: minimize). And it stops the search at the first failed trial
    (max_failure_rate=0): an invalid point is a failed trial (app.TrialFailed), not the end of the
    search. Both set unless the user typed them. Returns the direction, None for other sweepers."""
    from omegaconf import read_write

    if "optuna" not in str(OmegaConf.select(config, "hydra.sweeper._target_") or "").lower():
        return None
    typed = [o.lstrip("+~").split("=", 1)[0] for o in OmegaConf.to_container(config.hydra.overrides.hydra)]
    want = "minimize" if objective.endswith("_us") or objective in MINIMIZED else "maximize"
    with read_write(config.hydra.sweeper):
        if "hydra.sweeper.direction" not in typed:
            config.hydra.sweeper.direction = want
        if "hydra.sweeper.max_failure_rate" not in typed:
            config.hydra.sweeper.max_failure_rate = 1.0
    _one_line_when_no_trial_completes()
    direction = str(config.hydra.sweeper.direction).split(".")[-1]
    print(f"iosweep: hydra/sweeper=optuna: direction={direction} for objective={objective}"
          + ("" if direction == want else f" (typed; {want} would find the best {objective})"), flush=True)
    return direction


def _one_line_when_no_trial_completes() -> None:
    """hydra-optuna-sweeper ends a search none of whose trials completed with a traceback (its
    study.best_trial raises); iosweep fails invalid trials on purpose (app.TrialFailed): say it in
    one line, exit 2, the parent run closed at exit as for any sweep."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    original = OptunaSweeperImpl.sweep
    if getattr(original, "iosweep", False):
        return

    def sweep(self, arguments):
        try:
            return original(self, arguments)
        except ValueError as e:
            if "No trials are completed" not in str(e):
                raise
            from .console import fail

            fail("hydra/sweeper=optuna: no trial gave a valid result, so there is no best point (each run's "
                 "iosweep.warnings says why, e.g. engine=null measures no storage): fix the point or widen the search")

    sweep.iosweep = True
    OptunaSweeperImpl.sweep = sweep


def _job_order(path: Path) -> tuple:
    """Job dirs in job order: 0, 1, 2, …, 10 (numeric parts as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def sweep_points(sweep_dir: Path) -> list[dict]:
    """One point per job dir under sweep_dir, read from disk: Hydra writes a job's
    .hydra/overrides.yaml when it starts it, the job writes result.json when it has a result.
    A job dir without a valid result.json (its job raised, or its process died) is a FAILED point."""
    points = []
    jobs = sorted((f.parent.parent for f in sweep_dir.rglob("overrides.yaml") if f.parent.name == ".hydra"),
                  key=lambda d: _job_order(d.relative_to(sweep_dir)))
    for job in jobs:
        try:
            r = read_record(job)
            points.append({"status": r["status"], "metrics": r.get("metrics", {}), "valid": r.get("valid", False),
                           "error": r.get("error"), "overrides": r.get("overrides", []),
                           "params": r.get("params", {}),  # what a named point set (summary.load_ratios)
                           "result_id": r["result_id"], "run_id": None, "run_dir": job})
        except (OSError, BadRecord) as e:
            try:
                overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
            except Exception:
                overrides = []
            why = "no result.json" if isinstance(e, OSError) else f"result.json unusable ({e})"
            points.append({"status": "FAILED", "metrics": {}, "valid": False, "overrides": overrides,
                           "error": f"the job ended without a result ({why}; see {job})",
                           "result_id": None, "run_id": None, "run_dir": job})
    return points


def _attach_run_ids(c, parent: str | None, points: list[dict]) -> None:
    """Each point's MLflow run id: the parent's children in one query, then any point logged alone."""
    found = {}
    if parent:
        for run in c.search_runs([experiment_id(c)], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                 max_results=50_000):
            if PUBLISHING not in run.data.tags:
                found[run.data.tags.get("iosweep.result_id")] = run.info.run_id
    for p in points:
        if p["result_id"]:
            p["run_id"] = found.get(p["result_id"]) or find_published(c, p["result_id"])[0]


# the metrics a point's `objective` may name (workloads.Result.metrics); some exist only for some
# patterns (read_* / write_* for mixed): a point without its objective returns NaN
OBJECTIVES = ("throughput_mib_s", "iops", "elapsed_s", "bytes_total", "ops_total", "lat_mean_us", "lat_max_us",
              "lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us", "read_throughput_mib_s",
              "write_throughput_mib_s", "read_iops", "write_iops", "read_lat_p99_us", "write_lat_p99_us",
              "cpu_util_pct", "cache_served_pct", "device_read_bytes", "device_write_bytes",
              "rows_per_s",  # pattern=format_read
              "records_per_s", "fsyncs", "fsync_p50_us", "fsync_p99_us", "write_amplification",  # pattern=append
              "ttfb_p50_us", "ttfb_p99_us", "objects_total",  # target=s3
              *(f"{op}_{m}" for op in ("create", "stat", "open", "unlink", "put", "head", "list", "get", "delete")
                for m in ("per_s", "p50_us", "p99_us")))


def describe_sweep(c, parent_id: str, notes: list[str]) -> None:
    """The sweep's parent run: the params all its points share, and its findings as the description
    the MLflow UI shows (tag mlflow.note.content)."""
    from mlflow.entities import Param, RunTag

    common, token = None, None
    while True:  # every child run in the store, page by page
        page = c.search_runs([experiment_id(c)], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                             max_results=1000, page_token=token)
        for child in page:
            common = dict(child.data.params) if common is None else \
                {k: v for k, v in common.items() if child.data.params.get(k) == v}
        token = page.token
        if not token:
            break
    note = ("## Findings\n\n" + "\n".join(f"- {n}" for n in notes)
            + "\n\nEvery point: summary.md and summary.csv (artifacts); the settings they share: the params.")
    params = [Param(k, v) for k, v in secrets.mask_mapping(common or {}).items()]
    for batch in _chunks(params, MAX_PARAMS):
        c.log_batch(parent_id, params=batch)
    c.log_batch(parent_id, tags=[RunTag("mlflow.note.content", secrets.mask_text(note)[:5000])])


def store_reason(e: Exception) -> str:
    """The first line of a store error: MLflow's messages run to pages."""
    # SQLAlchemy may open with a note on how the error surfaced ("(raised as a result of Query-invoked
    # autoflush; …)"): the error itself is the next line
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith("(raised as")]
    return lines[0][:200] if lines else type(e).__name__


def close_sweep_parent(status: str) -> None:
    """Close the running sweep's parent run now, in one call (the summary comes later, if the process lives)."""
    parent = os.environ.get(PARENT_ENV)
    if parent:
        try:
            client().set_terminated(parent, status)
        except Exception as e:  # the store is down: the next run closes it (close_dead_runs)
            print(f"iosweep: error: could not close the sweep's parent run {parent} ({store_reason(e)})",
                  file=sys.stderr)


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_ENV)


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
