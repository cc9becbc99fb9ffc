"""Points that run at the same time on one host measure each other: such a launcher is refused in one line unless
allow_concurrent_points=true, and then the sweep and its points say so (runner/launchers.py)."""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from conftest import mlflow_runs, run_cli
from runner import launchers, preflight, schema

schema.register()  # the config composes on iosweep_schema

POINTS = ["engine=null", "size_mb=4", "block_kb=64,128"]


def refusal_line(p) -> str:
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def tagged(tmp_path):
    _, runs = mlflow_runs(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    return parent, children


@pytest.mark.slow
def test_joblib_is_refused_unless_it_runs_one_point_at_a_time(tmp_path):
    p = run_cli(tmp_path, "-m", "hydra/launcher=joblib", *POINTS, timeout=120)
    assert refusal_line(p) == (
        "iosweep: error: hydra/launcher=joblib runs points at the same time on one host (n_jobs=-1): they measure "
        "each other; set hydra.launcher.n_jobs=1, or allow_concurrent_points=true to accept it")
    assert not (tmp_path / "outputs").exists()  # no sweep dir, no store, no parent run

    one = tmp_path / "one"
    one.mkdir()
    p = run_cli(one, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", *POINTS, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    parent, children = tagged(one)
    assert parent.info.status == "FINISHED"
    assert all(launchers.TAG not in r.data.tags for r in [parent, *children])

    # by consent: both points run in joblib's loky workers, whose start method iosweep's spawned workers must not
    # inherit (processes.run_workers), and both say they ran at the same time
    both = tmp_path / "both"
    both.mkdir()
    p = run_cli(both, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "allow_concurrent_points=true",
                "target=tmpfs", "size_mb=8", "block_kb=64,128", timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    parent, children = tagged(both)
    assert all(c.info.status == "FINISHED" and c.data.metrics["bytes_total"] == 8 << 20 for c in children)
    assert all(c.data.tags[launchers.TAG] == "true" and "ran points at the same time" in c.data.tags["iosweep.warnings"]
               for c in children)


@pytest.mark.slow
def test_submitit_local_runs_every_point_at_once(tmp_path):
    """LocalExecutor starts each point's process at once (it has no array_parallelism): refused, and with consent
    the points' measured windows overlap."""
    args = ["-m", "hydra/launcher=submitit_local", "engine=null", "duration_s=3", "size_mb=4", "block_kb=64,128"]
    assert "hydra/launcher=submitit_local runs points at the same time on one host" in refusal_line(
        run_cli(tmp_path, *args, timeout=120))
    assert not (tmp_path / "outputs").exists()
    p = run_cli(tmp_path, *args, "allow_concurrent_points=true", timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    parent, children = tagged(tmp_path)
    assert parent.data.tags[launchers.TAG] == "true" and all(c.data.tags[launchers.TAG] == "true" for c in children)
    a, b = sorted(children, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time, "the points ran one after another"


def test_the_sweep_callback_refuses_before_the_parent_run_exists(tmp_path, monkeypatch, capsys):
    """The same check in SweepCallback.on_multirun_start (a sweep not started through preflight): exit 2, one line,
    no run in the store."""
    from runner.tracking import SweepCallback

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(preflight.CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_local"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    with pytest.raises(SystemExit) as stopped:
        SweepCallback().on_multirun_start(cfg)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iosweep: error: hydra/launcher=submitit_local runs points at the same")
    assert mlflow_runs(tmp_path)[1] == []


@pytest.mark.parametrize("overrides, concurrent", [
    ([], False),
    (["hydra/launcher=joblib"], True), (["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], False),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], True),
    (["hydra/launcher=submitit_local"], True),
    (["hydra/launcher=submitit_slurm"], True),
    (["hydra/launcher=submitit_slurm", "hydra.launcher.array_parallelism=1"], False),
    (["hydra/launcher=submitit_slurm", "+hydra.launcher.additional_parameters.exclusive=true"], False),
    (["hydra/launcher=submitit_slurm", "+hydra.launcher.additional_parameters.exclusive=user"], True),
    (["hydra.launcher._target_=somewhere.RayLauncher"], True),  # unknown: it may
])
def test_which_launchers_run_points_at_once(overrides, concurrent):
    with initialize_config_dir(config_dir=str(preflight.CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    assert (launchers.concurrency(cfg) is not None) == concurrent
    assert (launchers.refusal(cfg) is not None) == concurrent
    with open_dict(cfg):
        cfg.allow_concurrent_points = True
    assert launchers.refusal(cfg) is None
