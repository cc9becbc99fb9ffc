"""hydra/sweeper=optuna: a search instead of a grid, each trial a real point (tmpfs, small), no mocks."""
import pytest
import yaml

from conftest import mlflow_runs, run_cli

pytestmark = pytest.mark.slow


def parent_and_children(tmp_path):
    _, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r is not parents[0]]


def test_tune_write_finds_the_best_trial_and_the_parent_says_it(tmp_path):
    r = run_cli(tmp_path, "-m", "experiment=tune_write", "hydra.sweeper.n_trials=4", "target=tmpfs", "direct=false",
                "size_mb=64", "block_kb=choice(64,1024)", "writers=range(1,2)")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "direction=maximize for objective=throughput_mib_s" in r.stdout
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 4
    found = yaml.safe_load(next(tmp_path.glob("outputs/sweeps/*/*/optimization_results.yaml")).read_text())
    valid = [c for c in children if c.data.tags["iosweep.valid"] == "true"]
    best = max(valid, key=lambda c: c.data.metrics["throughput_mib_s"])
    assert found["best_value"] == pytest.approx(best.data.metrics["throughput_mib_s"])
    assert parent.data.metrics["optuna_best_throughput_mib_s"] == pytest.approx(found["best_value"])
    assert parent.data.tags["iosweep.optuna_best_params"] == " ".join(f"{k}={v}" for k, v in found["best_params"].items())
    assert parent.data.tags["iosweep.optuna_direction"] == "maximize"


def test_an_invalid_trial_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    """cache=warm reads are not storage truth: Optuna must not pick them, however fast."""
    r = run_cli(tmp_path, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.seed=0",
                "pattern=seq_read", "target=tmpfs", "size_mb=32", "cache=choice(cold,warm)")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    parent, children = parent_and_children(tmp_path)
    caches = {c.data.params["cache"] for c in children}
    assert caches == {"cold", "warm"} and len(children) == 6  # both drawn: the warm ones failed, the search went on
    assert "Failed experiment: throughput_mib_s of this point is no answer: cache=warm" in r.stdout + r.stderr
    found = yaml.safe_load(next(tmp_path.glob("outputs/sweeps/*/*/optimization_results.yaml")).read_text())
    assert found["best_params"]["cache"] == "cold"


def test_no_valid_trial_is_one_line_and_the_parent_is_closed(tmp_path):
    r = run_cli(tmp_path, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "block_kb=choice(64,1024)",
                "engine=null", "size_mb=16")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "iosweep: error: hydra/sweeper=optuna: no trial gave a valid result" in r.stderr
    parent, children = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 2  # closed, not RUNNING


def test_a_latency_objective_is_minimised_unless_the_user_says_otherwise(tmp_path):
    r = run_cli(tmp_path, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "objective=lat_p99_us",
                "target=tmpfs", "size_mb=16", "block_kb=choice(64,1024)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "direction=minimize for objective=lat_p99_us" in r.stdout
    r = run_cli(tmp_path / "typed", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1",
                "hydra.sweeper.direction=maximize", "objective=lat_p99_us", "target=tmpfs", "size_mb=16",
                "block_kb=choice(64,1024)") if (tmp_path / "typed").mkdir() is None else None
    assert r.returncode == 0 and "direction=maximize for objective=lat_p99_us (typed; minimize would" in r.stdout
