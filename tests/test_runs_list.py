"""Issue 9: `python -m runner.runs` lists recent runs and sweeps with their ids."""
import pytest

from conftest import mlflow_runs, run_cli


@pytest.mark.slow
def test_runs_lists_runs_and_sweeps_newest_first_and_a_sweeps_points(tmp_path):
    assert run_cli(tmp_path, "engine=null", "size_mb=8").returncode == 0
    sweep = run_cli(tmp_path, "-m", "engine=null", "block_kb=64,128", "size_mb=8")
    assert sweep.returncode == 0, sweep.stderr
    _, runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("iosweep.sweep") == "true")
    single = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags and r is not parent)
    points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]

    p = run_cli(tmp_path, module="runner.runs")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[1].split()[:6] == ["run", "id", "started", "status", "valid", "MiB/s"]
    assert lines[2].startswith(parent.info.run_id) and "(2 points;" in lines[2] and " 0/2 " in lines[2]
    assert "sweep engine=" in lines[2] and "block_kb=64,128 size_mb=8" in lines[2]
    assert lines[3].startswith(single.info.run_id) and "FINISHED  false" in lines[3] and "size_mb=8]" in lines[3]
    assert len(lines) == 4  # the sweep's points are not listed at the top level

    p = run_cli(tmp_path, "--limit", "1", module="runner.runs")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3 and parent.info.run_id in p.stdout

    p = run_cli(tmp_path, "--sweep", parent.info.run_id, module="runner.runs")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].startswith(f"sweep {parent.info.run_id}")
    assert {line.split()[0] for line in p.stdout.splitlines()[2:]} == {r.info.run_id for r in points}

    p = run_cli(tmp_path, "--sweep", single.info.run_id, module="runner.runs")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not a sweep" in p.stderr


def test_runs_without_a_store_is_one_line(tmp_path):
    p = run_cli(tmp_path, module="runner.runs")
    assert p.returncode == 2 and p.stderr.startswith("iosweep: error: no MLflow store at ")
    assert p.stderr.count("\n") == 1 and not (tmp_path / "outputs").exists()
