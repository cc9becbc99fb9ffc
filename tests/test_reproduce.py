"""python -m runner.reproduce and python -m runner.compare, end to end in a fresh directory."""
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import mlflow_runs, run_cli

SMALL = ["size_mb=8", "block_kb=64"]


def one_run(cwd: Path, *args: str):
    """Make one point run; returns it as MLflow has it."""
    before = {r.info.run_id for r in mlflow_runs(cwd)[1]}
    p = run_cli(cwd, *args)
    assert p.returncode == 0, p.stderr
    [run] = [r for r in mlflow_runs(cwd)[1] if r.info.run_id not in before]
    return run


def one_sweep(cwd: Path, *args: str):
    """Make one sweep; returns its parent run and its children."""
    before = {r.info.run_id for r in mlflow_runs(cwd)[1]}
    p = run_cli(cwd, "-m", *args)
    assert p.returncode == 0, p.stderr
    runs = [r for r in mlflow_runs(cwd)[1] if r.info.run_id not in before]
    [parent] = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def row(stdout: str, first_cell: str) -> list[str]:
    """The cells of the table line that starts with first_cell."""
    [line] = [l for l in stdout.splitlines() if l.startswith(first_cell + "  ")]
    return line[len(first_cell):].split()


def assert_delta_row(stdout: str, first_cell: str, a: float, b: float):
    cells = row(stdout, first_cell)
    assert float(cells[0]) == pytest.approx(a, rel=1e-5) and float(cells[1]) == pytest.approx(b, rel=1e-5)
    assert cells[2] == f"{(b - a) / a * 100:+.1f}%"


def assert_one_line_error(p, *words: str):
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith("iosweep: error:") and p.stderr.strip().count("\n") == 0, p.stderr
    assert "Traceback" not in p.stderr
    for word in words:
        assert word in p.stderr, (word, p.stderr)


def reproductions_of(cwd: Path, run_id: str) -> list:
    return [r for r in mlflow_runs(cwd)[1] if r.data.tags.get("iosweep.reproduced_from") == run_id]


def test_reproduce_a_point_by_run_id_and_by_run_dir(tmp_path):
    old = one_run(tmp_path, *SMALL)
    old_id = old.info.run_id

    p = run_cli(tmp_path, old_id, module="runner.reproduce")
    assert p.returncode == 0, p.stderr
    assert f"{old_id}: config unchanged" in p.stdout
    [new] = reproductions_of(tmp_path, old_id)
    assert new.info.status == "FINISHED" and new.info.run_id != old_id
    assert new.data.params == old.data.params
    assert f"new run {new.info.run_id} reproduces {old_id}" in p.stdout
    for metric in ("throughput_mib_s", "iops", "lat_p99_us", "elapsed_s"):
        assert_delta_row(p.stdout, metric, old.data.metrics[metric], new.data.metrics[metric])

    # From the Hydra run dir: the new run is still tagged with the id of the run made there.
    p = run_cli(tmp_path, old.data.tags["iosweep.run_dir"], module="runner.reproduce")
    assert p.returncode == 0, p.stderr
    again = [r for r in reproductions_of(tmp_path, old_id) if r.info.run_id != new.info.run_id]
    assert len(again) == 1 and again[0].data.params == old.data.params
    assert_delta_row(p.stdout, "throughput_mib_s", old.data.metrics["throughput_mib_s"],
                     again[0].data.metrics["throughput_mib_s"])


def test_dry_run_shows_config_drift_and_broken_overrides_are_one_line(tmp_path):
    old = one_run(tmp_path, *SMALL)
    client, _ = mlflow_runs(tmp_path)
    run_dir = tmp_path / "old_run"
    shutil.copytree(old.data.tags["iosweep.run_dir"], run_dir)

    # The same config.yaml, but overrides that now mean something else: every changed key is shown.
    (run_dir / ".hydra" / "overrides.yaml").write_text("- size_mb=8\n- writers=2\n")
    p = run_cli(tmp_path, str(run_dir), "--dry-run", module="runner.reproduce")
    assert p.returncode == 0, p.stderr
    assert "block_kb: 64 -> 1024" in p.stdout and "writers: 1 -> 2" in p.stdout
    assert "2 config keys differ" in p.stdout

    (run_dir / ".hydra" / "overrides.yaml").write_text("- size_mb=8\n- pattern=zigzag\n")
    p = run_cli(tmp_path, str(run_dir), module="runner.reproduce")
    assert_one_line_error(p, "'pattern=zigzag'", "seq_read")

    # The stored artifact of the run itself, as if the key had been renamed since.
    artifacts = Path(urlparse(client.get_run(old.info.run_id).info.artifact_uri).path)
    (artifacts / ".hydra" / "overrides.yaml").write_text("- size_mb=8\n- block_sz=4\n")
    p = run_cli(tmp_path, old.info.run_id, module="runner.reproduce")
    assert_one_line_error(p, "'block_sz=4'")

    assert len(mlflow_runs(tmp_path)[1]) == 1  # nothing ran


def test_reproduce_a_sweep_matches_its_points(tmp_path):
    old_parent, old_children = one_sweep(tmp_path, "size_mb=8", "block_kb=64,128")
    old_id = old_parent.info.run_id

    p = run_cli(tmp_path, old_id, module="runner.reproduce")
    assert p.returncode == 0, p.stderr
    tagged = reproductions_of(tmp_path, old_id)
    [new_parent] = [r for r in tagged if r.data.tags.get("iosweep.sweep") == "true"]
    new_children = [r for r in tagged if r.data.tags.get("mlflow.parentRunId") == new_parent.info.run_id]
    assert len(tagged) == 3 and len(new_children) == 2
    assert all(r.info.status == "FINISHED" for r in tagged)
    overrides = lambda runs: sorted(r.data.tags["iosweep.overrides"] for r in runs)  # noqa: E731
    assert overrides(new_children) == overrides(old_children) == ["size_mb=8 block_kb=128", "size_mb=8 block_kb=64"]
    assert "points matched: 2, unmatched: 0" in p.stdout
    new_by_point = {r.data.tags["iosweep.overrides"]: r for r in new_children}
    for old in old_children:
        point = old.data.tags["iosweep.overrides"]
        assert f"point {point}: config unchanged" in p.stdout
        assert_delta_row(p.stdout, point, old.data.metrics["throughput_mib_s"],
                         new_by_point[point].data.metrics["throughput_mib_s"])


def test_compare_two_points_shows_differing_params_and_metric_deltas(tmp_path):
    a = one_run(tmp_path, "size_mb=8", "block_kb=64")
    b = one_run(tmp_path, "size_mb=8", "block_kb=128")
    p = run_cli(tmp_path, a.info.run_id, b.info.run_id, module="runner.compare")
    assert p.returncode == 0, p.stderr
    assert "block_kb: 64 -> 128" in p.stdout and "params that differ (A -> B): 1" in p.stdout
    for metric in ("throughput_mib_s", "iops", "lat_p50_us"):
        assert_delta_row(p.stdout, metric, a.data.metrics[metric], b.data.metrics[metric])


def test_compare_two_sweeps_matches_points_and_lists_the_rest(tmp_path):
    a, a_children = one_sweep(tmp_path, "size_mb=8", "block_kb=64,128")
    b, b_children = one_sweep(tmp_path, "size_mb=8", "block_kb=64,256")
    p = run_cli(tmp_path, a.info.run_id, b.info.run_id, module="runner.compare")
    assert p.returncode == 0, p.stderr
    mib_s = lambda runs: {r.data.tags["iosweep.overrides"]: r.data.metrics["throughput_mib_s"] for r in runs}  # noqa: E731
    point = "size_mb=8 block_kb=64"
    assert_delta_row(p.stdout, point, mib_s(a_children)[point], mib_s(b_children)[point])
    assert "only in A: size_mb=8 block_kb=128" in p.stdout and "only in B: size_mb=8 block_kb=256" in p.stdout
    assert "points matched: 1, unmatched: 2" in p.stdout

    p = run_cli(tmp_path, a.info.run_id, a_children[0].info.run_id, module="runner.compare")
    assert_one_line_error(p, "sweep", a.info.run_id)


@pytest.mark.parametrize("module, args", [("runner.reproduce", ["0" * 32]),
                                          ("runner.compare", ["0" * 32, "f" * 32])])
def test_unknown_run_id_is_one_line_and_exit_2(tmp_path, module, args):
    p = run_cli(tmp_path, *args, module=module)
    assert_one_line_error(p, "no MLflow store")  # nothing was ever run here
    (tmp_path / "outputs").mkdir()
    mlflow_runs(tmp_path)  # creates an empty store
    p = run_cli(tmp_path, *args, module=module)
    assert_one_line_error(p, f"no run '{args[0]}'")


def test_missing_run_dir_is_one_line_and_exit_2(tmp_path):
    p = run_cli(tmp_path, str(tmp_path / "outputs" / "runs" / "nope"), module="runner.reproduce")
    assert_one_line_error(p, "no run dir", "nope")
    p = run_cli(tmp_path, str(tmp_path), module="runner.reproduce")
    assert_one_line_error(p, "no .hydra/overrides.yaml")
