"""The tracking store failing: a store that is down, two runs at once, credentials on the way out.

A measurement must never be lost to MLflow: it is kept in the run dir's result.json and
`python -m runner.sync` imports it once the store is back, once however often it is run.
"""
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mlflow_runs, run_cli

SMALL = ["size_mb=8", "block_kb=64"]


def store_down() -> dict[str, str]:
    """A tracking server nobody runs: a port that was free a moment ago, and no retries, so the
    connection is refused at once instead of after MLflow's minutes of back-off."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


def sync(cwd: Path, *paths: str, env: dict | None = None):
    return run_cli(cwd, *(paths or ("outputs/",)), module="runner.sync", env=env)


def assert_store_error(p, store: str):
    """Exit 3 and one `iosweep: error: tracking store <store> ...` line: no traceback, no noise."""
    assert p.returncode == 3, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"iosweep: error: tracking store {store}"), p.stderr


def records(cwd: Path) -> dict[Path, dict]:
    """Run dir -> its result.json, for every run made in cwd."""
    found = [*(cwd / "outputs" / "runs").glob("*/*/result.json"), *(cwd / "outputs" / "sweeps").glob("*/*/*/result.json")]
    return {f.parent: json.loads(f.read_text()) for f in found}


def assert_run_is_the_record(client, run, record: dict):
    """The imported run carries what result.json measured, and the files it names."""
    assert run.info.status == "FINISHED" == record["status"]
    assert run.data.tags["iosweep.result_id"] == record["result_id"]
    measured = {k: v for k, v in record["metrics"].items() if v is not None and math.isfinite(v)}
    assert measured and {k: run.data.metrics[k] for k in measured} == measured
    assert {"config.yaml", "result.json", ".hydra"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_server_down_keeps_the_result_and_sync_imports_it_once(tmp_path):
    down = store_down()
    p = run_cli(tmp_path, *SMALL, env=down)
    assert_store_error(p, down["MLFLOW_TRACKING_URI"])
    assert "throughput" in p.stdout  # the measurement itself was shown
    [(run_dir, record)] = records(tmp_path).items()
    assert record["metrics"]["bytes_total"] == 8 << 20
    assert str(run_dir / "result.json") in p.stderr and f"python -m runner.sync {run_dir}" in p.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # nothing went to a store nobody asked for

    p = sync(tmp_path, env=down)  # still down: says so, touches nothing
    assert_store_error(p, down["MLFLOW_TRACKING_URI"])
    assert "imported" not in p.stdout and json.loads((run_dir / "result.json").read_text()) == record

    p = sync(tmp_path)  # the store is back (here: the default sqlite store)
    assert p.returncode == 0, p.stderr
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    rel = run_dir.relative_to(tmp_path)
    assert p.stdout.splitlines()[0] == f"imported {rel} -> {runs[0].info.run_id}"
    assert_run_is_the_record(client, runs[0], record)
    assert "iosweep: 1 imported, 0 already in the store" in p.stdout

    p = sync(tmp_path)  # again: nothing new
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"already in the store {rel} ({runs[0].info.run_id})"
    assert "imported outputs" not in p.stdout and "iosweep: 0 imported, 1 already in the store" in p.stdout
    assert [r.info.run_id for r in mlflow_runs(tmp_path)[1]] == [runs[0].info.run_id]
    assert (run_dir / "result.json").exists()  # sync leaves the run dir as it was


@pytest.mark.slow
def test_corrupt_sqlite_store_is_left_alone_and_sync_imports_once_it_is_replaced(tmp_path):
    db = tmp_path / "outputs" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"not an sqlite database, a disk error's garbage\x00\xff" * 200)
    before = sha(db)
    p = run_cli(tmp_path, *SMALL)
    assert_store_error(p, f"sqlite:///{db}")
    [(run_dir, record)] = records(tmp_path).items()
    assert record["metrics"]["bytes_total"] == 8 << 20
    assert sha(db) == before  # not "repaired", not recreated, not deleted

    p = sync(tmp_path, str(run_dir))  # a run dir named directly, as the error line says
    assert_store_error(p, f"sqlite:///{db}")
    assert sha(db) == before and (run_dir / "result.json").exists()

    db.rename(db.with_name("mlflow.db.corrupt"))  # the user puts the broken store aside
    p = sync(tmp_path)
    assert p.returncode == 0, p.stderr
    assert "imported outputs/runs/" in p.stdout
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    assert_run_is_the_record(client, runs[0], record)
    assert sha(db.with_name("mlflow.db.corrupt")) == before
    p = sync(tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("already in the store outputs/runs/"), p.stdout
    assert len(mlflow_runs(tmp_path)[1]) == 1


@pytest.mark.slow
def test_sync_names_what_it_cannot_import_and_a_missing_path(tmp_path):
    cut = tmp_path / "outputs" / "runs" / "2026-01-01" / "10-00-00-1"
    cut.mkdir(parents=True)
    (cut / "result.json").write_text('{"result_id": "abc", "name": "seq_wr')  # the disk filled up
    p = sync(tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout.splitlines()[0].startswith(f"skipped {cut.relative_to(tmp_path)}: result.json is not a complete "
                                               f"iosweep record (")
    assert "0 imported, 0 already in the store, 1 skipped (1 run dir under outputs;" in p.stdout
    assert (cut / "result.json").exists()

    p = sync(tmp_path, "outputs/nope")
    assert p.returncode == 2 and p.stderr == "iosweep: error: no such file or directory outputs/nope\n"


@pytest.mark.slow
def test_store_down_during_a_sweep_keeps_every_point(tmp_path):
    down = store_down()
    p = run_cli(tmp_path, "-m", "size_mb=8", "block_kb=64,128", env=down)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    # every point is measured and kept, not just the first; what went wrong is said in iosweep's words
    kept = records(tmp_path)
    assert sorted(r["params"]["block_kb"] for r in kept.values()) == ["128", "64"], p.stdout + p.stderr
    assert all(r["metrics"]["bytes_total"] == 8 << 20 for r in kept.values())
    assert all(l.startswith("iosweep: ") for l in p.stderr.strip().splitlines()), p.stderr
    assert "tracking store " + down["MLFLOW_TRACKING_URI"] in p.stderr and "python -m runner.sync" in p.stderr

    p = sync(tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("imported outputs/sweeps/") == 2
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2  # the parent never reached a store: the points come in standalone
    assert all("mlflow.parentRunId" not in r.data.tags for r in runs)
    by_id = {r["result_id"]: r for r in kept.values()}
    for run in runs:
        assert_run_is_the_record(client, run, by_id[run.data.tags["iosweep.result_id"]])
    p = sync(tmp_path)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) == 3 and len(mlflow_runs(tmp_path)[1]) == 2
    assert all(l.startswith("already in the store outputs/sweeps/") for l in lines[:2]), p.stdout


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_new_outputs_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}
    cmd = [sys.executable, "-m", "runner", "size_mb=16", "block_kb=64"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics["bytes_total"] == 16 << 20 for r in runs)
    run_dirs = {r.data.tags["iosweep.run_dir"] for r in runs}
    assert len(run_dirs) == 2
    scratch = {json.loads((Path(d) / "result.json").read_text())["info"]["scratch_dir"] for d in run_dirs}
    assert len(scratch) == 2 and all(s.startswith(str(tmp_path / "outputs" / "scratch")) for s in scratch), scratch
    assert list((tmp_path / "outputs" / "scratch").iterdir()) == []


SECRETS = (b"hunter2", b"tok123", b"pw999")


@pytest.mark.slow
def test_credentials_never_reach_mlflow_or_the_terminal(tmp_path):
    """A `+key` the schema lacks is refused in one line that does not repeat its value; a
    credential that reaches a logged knob (trial) through the environment is MASKED in the
    terminal, the params, the run names, the artifacts and the store's own file."""
    refused = run_cli(tmp_path, *SMALL, "+target.secret_key=hunter2", "+target.api_token=tok123")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # refused before any run
    env = {"API_TOKEN": "tok123", "DB_PASSWORD": "pw999", "SECRET_KEY": "hunter2"}
    single = run_cli(tmp_path, *SMALL, "trial=${oc.env:SECRET_KEY}", env=env)
    assert single.returncode == 0, single.stderr
    sweep = run_cli(tmp_path, "-m", *SMALL[:1], "block_kb=64,128", "trial=${oc.env:DB_PASSWORD}", env=env)
    assert sweep.returncode == 0, sweep.stderr
    for p in (refused, single, sweep):
        for secret in SECRETS:
            assert secret.decode() not in p.stdout + p.stderr

    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    assert len(runs) == 4 and len(parents) == 1
    for run in runs:
        text = json.dumps([run.info.run_name, run.data.params, run.data.tags])
        assert not any(s.decode() in text for s in SECRETS), text
    assert all(r.data.params["trial"] == "MASKED" for r in runs if r not in parents)
    assert "${oc.env:DB_PASSWORD}" in parents[0].data.tags["iosweep.overrides"]  # as typed, not resolved

    artifacts = [f for f in (tmp_path / "outputs" / "mlartifacts").rglob("*") if f.is_file()]
    names = {f.name for f in artifacts}
    assert {"config.yaml", "overrides.yaml", "hydra.yaml", "result.json", "summary.md"} <= names, names
    leaks = [f for f in artifacts if any(s in f.read_bytes() for s in SECRETS)]
    assert leaks == []
    # and the store itself, whatever table a value might have gone to
    assert not any(s in (tmp_path / "outputs" / "mlflow.db").read_bytes() for s in SECRETS)
