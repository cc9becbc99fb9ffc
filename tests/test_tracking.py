"""Issue 9: the tracking layer under faults: a full outputs/, a store that is down or read-only,
sync racing a run, runs left RUNNING by a dead process, launchers, and result.json from anywhere."""
import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import mlflow_runs, run_cli
from runner import sync, tracking

MIB = 1 << 20
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def record(**kw) -> dict:
    """A minimal result.json as a run writes it."""
    return {"result_id": uuid.uuid4().hex, "name": "seq_write 64k x1 null", "params": {"block_kb": "64"},
            "status": "FINISHED", "metrics": {"throughput_mib_s": 123.0}, "tags": {}, "overrides": ["block_kb=64"],
            "artifacts": [["result.json", None]], **kw}


def run_dir_with(tmp_path: Path, rec: dict) -> Path:
    d = tmp_path / "outputs" / "runs" / "2026-01-01" / f"10-00-00-{rec['result_id'][:6]}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(rec))
    return d


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The default sqlite store under tmp_path/outputs, used in-process."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def runs_of(tmp_path: Path, result_id: str):
    _, runs = mlflow_runs(tmp_path)
    return [r for r in runs if r.data.tags.get("iosweep.result_id") == result_id]


# ---- 1. outputs/ full: result.json first and small ------------------------------------------

@pytest.fixture
def outputs_tmpfs(tmp_path):
    mnt = tmp_path / "outputs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mount, leave: int) -> None:
    """Fill the file system at mount until `leave` bytes are free. The runner writes there at the same time
    (.hydra, its log), so the free space read a moment ago may be gone: read it again and retry."""
    with open(mount / "filler", "wb") as f:
        for _ in range(50):
            st = os.statvfs(mount)
            want = st.f_bavail * st.f_frsize - leave
            if want <= 0:
                return
            try:
                os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, want)
                return
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        raise AssertionError(f"could not fill {mount} to {leave} bytes free")


@pytest.mark.slow
@pytest.mark.parametrize("store_at, room_kib", [("elsewhere", 16), ("elsewhere", 0), ("outputs", 16)])
def test_full_outputs_keeps_the_measurement(tmp_path, outputs_tmpfs, store_at, room_kib):
    """outputs/ fills up while the point runs: with 16 KiB left result.json (and the small files)
    fit but the latency PNG (~30 KiB) does not; with 0 nothing fits and MLflow holds the only copy.
    Either way: one line, the run FINISHED with the lost files named, no partial file left.
    With the store itself on the full disk: exit 3, result.json kept, no run left RUNNING."""
    elsewhere = tmp_path / "elsewhere"  # a store that is not on the full disk
    env = dict(ENV)
    if store_at == "elsewhere":
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{elsewhere / 'outputs' / 'mlflow.db'}"
    else:
        mlflow_runs(tmp_path)[0].create_experiment("iosweep")  # the store exists: its tables fit
    p = subprocess.Popen([sys.executable, "-m", "runner", "engine=null", "duration_s=2", "size_mb=4"],
                         cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(outputs_tmpfs.glob("runs/*/*/.hydra/overrides.yaml")) and time.monotonic() < deadline:
        time.sleep(0.01)
    fill(outputs_tmpfs, leave=room_kib * 1024)
    out, err = p.communicate(timeout=120)
    assert "throughput" in out  # measured and shown
    line = one_line(err)
    assert "No space left on device" in line and "latency.png" in line, err
    [run_dir] = [d.parent for d in outputs_tmpfs.glob("runs/*/*/.hydra")]
    assert not (run_dir / "latency.png").exists()  # no half-written file
    if store_at == "outputs":
        assert p.returncode == 3 and "no space left for it" in line, err
        assert json.loads((run_dir / "result.json").read_text())["status"] == "FINISHED"
        assert mlflow_runs(tmp_path)[1] == []  # not a run that could never be finished
        return
    assert p.returncode == 2, err
    client, runs = mlflow_runs(elsewhere)
    [run] = runs
    assert run.info.status == "FINISHED" and run.data.metrics["bytes_total"] > 0
    assert "latency.png" in run.data.tags["iosweep.artifacts_missing"]
    assert tracking.PUBLISHING not in run.data.tags
    if room_kib:
        kept = json.loads((run_dir / "result.json").read_text())
        assert kept["status"] == "FINISHED" and kept["metrics"]["bytes_total"] == run.data.metrics["bytes_total"]
        assert "result.json not written" not in line and "result.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    else:
        assert not (run_dir / "result.json").exists()
        assert "result.json" in run.data.tags["iosweep.artifacts_missing"] and "MLflow run" in line and "only" in line


# ---- 2. a tracking server that is down or never answers; a read-only store ------------------

@pytest.fixture
def blackhole():
    """A port that accepts connections (the kernel completes them) but never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_probe_asks_a_dead_server_once_per_process(blackhole):
    start = time.monotonic()
    with pytest.raises(tracking.StoreUnavailable):
        tracking.probe(blackhole)
    first = time.monotonic() - start
    start = time.monotonic()
    with pytest.raises(tracking.StoreUnavailable, match="no answer"):
        tracking.probe(blackhole)
    assert first < tracking.PROBE_TIMEOUT_S + 2 and time.monotonic() - start < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["refused", "blackhole"])
def test_single_run_with_the_server_down_ends_quickly(tmp_path, blackhole, kind):
    uri = closed_port() if kind == "refused" else blackhole
    start = time.monotonic()
    p = run_cli(tmp_path, "engine=null", "size_mb=4", env={"MLFLOW_TRACKING_URI": uri})
    took = time.monotonic() - start
    assert p.returncode == 3 and one_line(p.stderr).startswith(f"iosweep: error: tracking store {uri} unavailable")
    assert took < 15, took
    [result] = (tmp_path / "outputs" / "runs").glob("*/*/result.json")
    assert json.loads(result.read_text())["status"] == "FINISHED"


@pytest.mark.slow
def test_sweep_with_a_server_that_never_answers_still_writes_its_summary(tmp_path, blackhole):
    start = time.monotonic()
    p = run_cli(tmp_path, "-m", "engine=null", "size_mb=4", "block_kb=64,128", env={"MLFLOW_TRACKING_URI": blackhole})
    took = time.monotonic() - start
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    assert took < 30, took
    [sweep_dir] = (tmp_path / "outputs" / "sweeps").glob("*/*")
    assert f"sweep dir {sweep_dir.absolute()}" in p.stdout
    assert "2 of 2 points are not in the tracking store" in p.stderr
    md = (sweep_dir / "summary.md").read_text()
    assert md.count("| FINISHED |") == 2
    assert len((sweep_dir / "summary.csv").read_text().strip().splitlines()) == 3


@pytest.mark.slow
def test_read_only_store_is_one_line_exit_3(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{db}").create_experiment("iosweep")  # an existing store, tables made
    (db.parent / "mlflow.db.lock").touch()
    subprocess.run(["mount", "--bind", str(db), str(db)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(db)], check=True)
        p = run_cli(tmp_path, "engine=null", "size_mb=4", env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    finally:
        subprocess.run(["umount", str(db)], check=True)
    line = one_line(p.stderr)
    assert p.returncode == 3 and line.startswith(f"iosweep: error: tracking store sqlite:///{db} unavailable"), p.stderr
    assert "readonly database" in line and "ERROR" not in p.stderr, line
    assert list((tmp_path / "outputs" / "runs").glob("*/*/result.json"))


# ---- 3. publish and sync at once: one run per result ----------------------------------------

def test_publish_and_sync_at_once_log_one_run(store):
    rec = record()
    run_dir = run_dir_with(store, rec)
    tracking.client()  # the store exists before the race (its creation has its own lock)
    logged = []
    threads = [threading.Thread(target=lambda: logged.append(tracking.publish(run_dir)[1])) for _ in range(4)]
    threads += [threading.Thread(target=sync.main, args=([str(run_dir)],)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [run] = runs_of(store, rec["result_id"])
    assert run.info.status == "FINISHED" and len(logged) == 4 and logged.count(True) <= 1


@pytest.mark.slow
def test_concurrent_sync_processes_import_once(store):
    rec = record()
    run_dir = run_dir_with(store, rec)
    procs = [subprocess.Popen([sys.executable, "-m", "runner.sync", str(run_dir)], cwd=store, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert sum(line.startswith("imported ") for o, _ in outs for line in o.splitlines()) == 1, outs
    assert len(runs_of(store, rec["result_id"])) == 1


def dead_process() -> tuple[str, str]:
    p = subprocess.Popen(["true"])
    p.wait()
    return str(p.pid), "1.00"


def test_a_run_cut_short_mid_log_is_replaced_and_live_runs_are_left_alone(store):
    rec = record()
    run_dir = run_dir_with(store, rec)
    c = tracking.client()
    exp = tracking.experiment_id(c)
    pid, start = dead_process()
    # what a process killed after create_run leaves: RUNNING, with the result id, not complete
    cut = c.create_run(exp, tags={"iosweep.result_id": rec["result_id"], tracking.PUBLISHING: "true",
                                  "iosweep.host": socket.gethostname(), "iosweep.pid": pid,
                                  "iosweep.pid_start": start}).info.run_id
    live = c.create_run(exp, tags=tracking.process_tags()).info.run_id  # this process: alive
    assert sync.main([str(run_dir)]) == 0
    [run] = runs_of(store, rec["result_id"])
    assert run.info.run_id != cut and run.info.status == "FINISHED" and tracking.PUBLISHING not in run.data.tags
    gone = c.get_run(cut)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert "ended without closing this run" in gone.data.tags["iosweep.killed_reason"]
    assert c.get_run(live).info.status == "RUNNING"
    c.set_terminated(live)


# ---- 4. runs left RUNNING by a process killed with SIGKILL ----------------------------------

@pytest.mark.slow
def test_a_sweep_killed_by_sigkill_is_closed_by_the_next_sync(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "runner", "-m", "engine=null", "size_mb=4", "duration_s=0.3,60"],
                         cwd=tmp_path, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the second point's progress line: the first is published
        line = p.stdout.readline()
        if "MiB/s" in line and " s " in line:
            break
        assert p.poll() is None, p.stderr.read()
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs if r.data.tags.get("iosweep.sweep")] == ["RUNNING"]

    s = run_cli(tmp_path, module="runner.sync")
    assert s.returncode == 0, s.stdout + s.stderr
    assert "closed 1 run left RUNNING by a process that died" in s.stdout
    _, runs = mlflow_runs(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get("iosweep.sweep")]
    assert parent.info.status == "KILLED" and str(p.pid) in parent.data.tags["iosweep.killed_reason"]
    assert len(runs) == 2 and all(r.info.status != "RUNNING" for r in runs)  # the first point, not twice


# ---- 5. the task returns the objective; the summary comes from the run dirs -----------------

def compose_point(tmp_path: Path, *overrides: str, multirun: bool = False):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from runner import app, schema

    schema.register()
    app.register_resolvers()
    with initialize_config_dir(config_dir=str(schema.CONF), version_base="1.3"):
        cfg = compose("config", overrides=app.quote_null_choices(list(overrides)), return_hydra_config=True)
    run_dir = tmp_path / "outputs" / "runs" / uuid.uuid4().hex[:8]
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.runtime.output_dir = str(run_dir)  # what Hydra's run_job sets
    cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir


def test_the_task_returns_the_objective_as_a_float(store):
    from runner import app

    cfg, run_dir = compose_point(store, "target=tmpfs", "data=zeros", "size_mb=8", "objective=iops")
    value = app.run_point(cfg)
    kept = json.loads((run_dir / "result.json").read_text())
    assert kept["valid"] and isinstance(value, float) and value == kept["metrics"]["iops"] > 0

    cfg, run_dir = compose_point(store, "engine=null", "size_mb=4", "objective=iops")
    value = app.run_point(cfg)  # measured, but not storage truth: no answer for an optimiser
    kept = json.loads((run_dir / "result.json").read_text())
    assert not kept["valid"] and kept["metrics"]["iops"] > 0 and math.isnan(value)

    cfg, run_dir = compose_point(store, "engine=null", "size_mb=4", "block_kb=0", multirun=True)
    value = app.run_point(cfg)  # a failed point in a sweep: NaN, and its record says why
    assert isinstance(value, float) and math.isnan(value)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "FAILED"


def test_an_objective_that_is_not_a_metric_is_one_line(store, capsys):
    from runner import app

    cfg, run_dir = compose_point(store, "engine=null", "objective=speed")
    with pytest.raises(SystemExit) as e:
        app.run_point(cfg)
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err).startswith("iosweep: error: objective='speed': not a metric; choose one of")
    assert not (run_dir / "result.json").exists()


def test_the_summary_is_rebuilt_from_the_run_dirs(store):
    sweep_dir = store / "outputs" / "sweeps" / "2026-01-01" / "10-00-00-1"
    for num, rec in ((0, record()), (1, None), (10, record(status="FAILED", error="target.dir: nope", metrics={}))):
        job = sweep_dir / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- block_kb={num + 4}\n")
        if rec:
            (job / "result.json").write_text(json.dumps(rec | {"overrides": [f"block_kb={num + 4}"]}))
    # job 1 raised before it wrote anything: no result.json, no return value, no on_job_end needed
    cb = tracking.SweepCallback()
    cb.sweep_dir = sweep_dir
    points, unpublished = cb._finish()
    assert [p["status"] for p in points] == ["FINISHED", "FAILED", "FAILED"]
    assert [p["overrides"] for p in points] == [["block_kb=4"], ["block_kb=5"], ["block_kb=14"]]
    assert "without a result" in points[1]["error"] and len(unpublished) == 2
    rows = (sweep_dir / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[1].startswith("4,FINISHED") and rows[2].startswith("5,FAILED")
    assert "without a result" in (sweep_dir / "summary.md").read_text()


# ---- 6. sync reads and writes only inside the run dir; the record's fields are checked -------

def test_sync_never_reads_or_writes_outside_the_run_dir(store, capsys):
    secret = store / "x"
    secret.write_text("not iosweep's")
    rec = record(artifacts=[["/etc/passwd", None], ["../../x", None], ["link.yaml", None], [".hydra", "../../.."],
                            ["result.json", "/tmp"], ["result.json", None]])
    run_dir = run_dir_with(store, rec)
    (run_dir / "link.yaml").symlink_to(secret)
    marker = f"marker-{uuid.uuid4().hex}.yaml"
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / marker).write_text("a: 1\n")
    assert sync.main([str(run_dir)]) == 0
    err = capsys.readouterr().err
    for named in ("/etc/passwd", "x", "link.yaml", "../../..", "/tmp"):
        assert named in err
    [run] = runs_of(store, rec["result_id"])
    client, _ = mlflow_runs(store)
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert uploaded == {"result.json"}
    for top in (Path("/"), Path("/tmp"), store, store.parent):
        assert not (top / marker).exists()
    everything = [f.read_bytes() for f in (store / "outputs" / "mlartifacts").rglob("*") if f.is_file()]
    assert not any(b"not iosweep's" in b or b"root:" in b for b in everything)


@pytest.mark.parametrize("field, value", [
    ("status", "RUNNING"), ("name", ["a"]), ("parent_run_id", "x' OR 1=1 --"), ("result_id", "a' OR '1'='1"),
    ("params", {"a": {"b": 1}}), ("artifacts", "/etc"), ("metrics", {"x": "1"}),
])
def test_sync_refuses_a_record_with_a_bad_field(store, capsys, field, value):
    rec = record(**{field: value})
    run_dir = run_dir_with(store, rec)
    assert sync.main([str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert f"skipped {run_dir}: result.json is not a complete iosweep record ({field}:" in out
    assert mlflow_runs(store)[1] == []
