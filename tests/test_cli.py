"""End to end: the CLI in a fresh directory, as a user runs it, and what landed in MLflow."""
import json

import pytest
from pathlib import Path

from conftest import mlflow_runs, run_cli

SMALL = ["size_mb=16", "target.dir=outputs/scratch"]


def test_single_run_lands_one_finished_run_with_everything(tmp_path):
    p = run_cli(tmp_path, *SMALL, "block_kb=256")
    assert p.returncode == 0, p.stderr
    assert "throughput" in p.stdout and "Traceback" not in p.stderr
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert (tmp_path / "outputs" / "mlflow.db").exists()
    for key in ("block_kb", "writers", "pattern", "target", "engine", "direct", "size_mb", "data.compress_ratio"):
        assert key in run.data.params, key
    assert run.data.params["block_kb"] == "256" and run.data.params["pattern"] == "seq_write"
    m = run.data.metrics
    for key in ("throughput_mib_s", "iops", "lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_p999_us",
                "lat_max_us", "bytes_total", "ops_total", "elapsed_s"):
        assert m[key] > 0, key
    assert m["bytes_total"] == 16 << 20
    assert run.data.tags["iosweep.io_mode"] == "buffered"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", ".hydra", "result.json"} <= arts
    assert "overrides.yaml" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id, ".hydra")}
    # artifacts live under outputs/mlartifacts, not ./mlruns
    assert (tmp_path / "outputs" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    # scratch files were removed; the run dir has the result written before MLflow
    assert list((tmp_path / "outputs" / "scratch").iterdir()) == []
    results = list((tmp_path / "outputs" / "runs").rglob("result.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["metrics"]["bytes_total"] == 16 << 20


def test_multirun_is_one_parent_with_a_child_per_point(tmp_path):
    p = run_cli(tmp_path, "-m", "block_kb=64,256", "writers=1,2", "pattern=rand_read", "size_mb=8")
    assert p.returncode == 0, p.stderr
    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["points_total"] == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" and c.data.metrics["throughput_mib_s"] > 0 for c in children)
    points = sorted((c.data.params["block_kb"], c.data.params["writers"]) for c in children)
    assert points == [("256", "1"), ("256", "2"), ("64", "1"), ("64", "2")]


def test_bad_input_is_one_line_exit_2_and_no_run(tmp_path):
    p = run_cli(tmp_path, "block_kb=0")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "block_kb" in p.stderr and "Traceback" not in p.stderr
    _, runs = mlflow_runs(tmp_path)
    assert runs == []


def test_engine_null_and_progress_lines_when_not_a_tty(tmp_path):
    p = run_cli(tmp_path, "engine=null", "duration_s=3.5", "block_kb=4", "size_mb=4")
    assert p.returncode == 0, p.stderr
    progress = [l for l in p.stdout.splitlines() if l.strip().endswith("MiB/s") and " s " in l]
    assert len(progress) >= 1 and "\r" not in p.stdout
    _, runs = mlflow_runs(tmp_path)
    assert runs[0].data.tags["iosweep.io_mode"] == "none" and runs[0].data.params["engine"] == "null"
    assert {"interval_throughput_mib_s", "interval_iops"} <= set(runs[0].data.metrics)


def test_run_holds_time_series_verdict_and_latency_artifacts(tmp_path):
    p = run_cli(tmp_path, "pattern=rand_read", "block_kb=64", "size_mb=32", "duration_s=2.5", "log_interval_s=0.5")
    assert p.returncode == 0, p.stderr
    client, runs = mlflow_runs(tmp_path)
    run = runs[0]
    assert run.data.tags["iosweep.valid"] in ("true", "false") and "iosweep.warnings" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "interval_throughput_mib_s")
    assert len(history) >= 4 and [h.step for h in history] == list(range(1, len(history) + 1))
    assert all(h.value > 0 for h in history)
    assert len(client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")) == len(history)
    assert "device_read_bytes" in run.data.metrics and "cache_served_pct" in run.data.metrics
    latency = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "latency")}
    assert latency == {"latency.png", "latency_histogram.json"}


def test_warm_run_says_so_on_the_terminal(tmp_path):
    p = run_cli(tmp_path, "point=rand_read_4k_warm", "size_mb=16")
    assert p.returncode == 0, p.stderr
    assert "cache=warm" in p.stdout and "NOT STORAGE TRUTH" in p.stdout
    _, runs = mlflow_runs(tmp_path)
    assert runs[0].data.tags["iosweep.valid"] == "false"


def test_engine_sweep_against_fio_logs_ratios_on_the_parent(tmp_path):
    p = run_cli(tmp_path, "-m", "point=rand_read_4k_direct", "engine=sync,fio", "duration_s=1", "size_mb=16")
    assert p.returncode == 0, p.stderr
    assert "relative to fio" in p.stdout
    client, runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("iosweep.sweep") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_engine = {c.data.params["engine"]: c.data.metrics["throughput_mib_s"] for c in children}
    assert set(by_engine) == {"sync", "fio"}
    ratio = parent.data.metrics["ratio_vs_fio_min"]
    assert ratio == pytest.approx(by_engine["sync"] / by_engine["fio"])
    assert "summary.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    md = (Path(parent.data.tags["iosweep.sweep_dir"]) / "summary.md").read_text()
    assert "Throughput relative to fio" in md and f"{ratio:.3f}" in md
    fio_child = next(c for c in children if c.data.params["engine"] == "fio")
    assert {"fio_job.fio", "fio_output.json"} <= {Path(a.path).name for a in client.list_artifacts(fio_child.info.run_id, "engine")}
