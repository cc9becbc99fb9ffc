"""Issue 14, part 2: sweep points as Slurm jobs (hydra/launcher=submitit_slurm) on a real single-node Slurm,
every point logging to one MLflow tracking server under the sweep's parent run."""
import time

import psutil
import pytest

from conftest import run_cli
from slurm_cluster import SlurmCluster
from test_ui import listening, start_mlflow_server, stop, wait_until_up

pytestmark = pytest.mark.slow

# exclusive: a node per point, so the single node runs them one after another (runner/launchers.py refuses jobs
# that may share a node); timeout_min: Slurm kills a stuck point after 5 minutes instead of 60
SLURM = ["hydra/launcher=submitit_slurm", "+hydra.launcher.additional_parameters.exclusive=true",
         "hydra.launcher.timeout_min=5"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server as a cluster would have one: points reach it over HTTP (MLFLOW_TRACKING_URI)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    server, port, base, log = start_mlflow_server(root, root / "mlflow.db", "--artifacts-destination",
                                                  str(root / "artifacts"))
    try:
        wait_until_up(server, base, log)
        yield base
    finally:
        stop(server)
    assert not listening(port)


def sweep_runs(base: str, sweep_dir_part: str):
    """(parent, children) of the one sweep whose sweep dir is under sweep_dir_part."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(base)
    exp = client.get_experiment_by_name("iosweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"
               and r.data.tags["iosweep.sweep_dir"].startswith(sweep_dir_part)]
    assert len(parents) == 1, [r.data.tags.get("iosweep.sweep_dir") for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_the_cluster_starts_runs_a_job_and_leaves_nothing_behind(tmp_path):
    cluster = SlurmCluster(tmp_path).start()
    try:
        assert cluster.start_seconds < 30
        out = cluster.run("srun", "--chdir", str(tmp_path), "sh", "-c", "echo $SLURM_JOB_ID $(pwd)", timeout=30)
        assert out.returncode == 0, out.stderr
        job_id, cwd = out.stdout.split()
        assert int(job_id) >= 1 and cwd == str(tmp_path)
        # a job still running when the cluster stops: its processes must go with it
        sub = cluster.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", f"sleep 300 # {tmp_path}")
        assert sub.returncode == 0, sub.stderr
        deadline = time.monotonic() + 30
        while cluster.run("squeue", "-h", "-t", "R", "-o", "%i").stdout.strip() != sub.stdout.strip():
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.2)
    finally:
        cluster.stop()
    assert cluster.leftovers() == []
    assert not [p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] in ("slurmctld", "slurmd", "slurmscriptd")
                and str(cluster.conf) in " ".join(p.info["cmdline"] or [])]
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def test_sweep_points_run_as_slurm_jobs_under_one_parent(tmp_path, slurm, mlflow_server):
    env = {**slurm.env(), "MLFLOW_TRACKING_URI": mlflow_server}
    t0 = time.monotonic()
    p = run_cli(tmp_path, "-m", *SLURM, "engine=null", "size_mb=8", "block_kb=64,256", env=env, timeout=240)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    parent, children = sweep_runs(mlflow_server, str(tmp_path))
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["iosweep.overrides"].split()[-1] for c in children) == ["block_kb=256", "block_kb=64"]
    # each point ran as a task of one job array, in a process other than the one that submitted it
    tasks = sorted(c.data.tags["iosweep.slurm_array_task"] for c in children)
    array = tasks[0].split("_")[0]
    assert tasks == [f"{array}_0", f"{array}_1"]
    assert len({c.data.tags["iosweep.slurm_job_id"] for c in children}) == 2
    assert "iosweep.slurm_job_id" not in parent.data.tags  # the sweep itself ran outside Slurm
    assert all(c.data.tags["iosweep.pid"] != parent.data.tags["iosweep.pid"] for c in children)
    # the parent closed after the last point: on_multirun_end ran once submitit had every job's result
    assert parent.info.end_time >= max(c.info.end_time for c in children)
    assert parent.data.metrics["points_total"] == 2 and parent.data.metrics["points_failed"] == 0
    # a job starts in the submitting dir with the submitter's environment (sbatch --export=ALL): the run dirs and
    # the scratch files are where a run without Slurm puts them
    sweep_dir = tmp_path / "outputs" / "sweeps"
    assert all(c.data.tags["iosweep.run_dir"].startswith(str(sweep_dir)) for c in children)
    # a point's terminal output goes to Slurm's log in the sweep dir, not to the submitting terminal
    logs = {log.name: log.read_text() for log in sweep_dir.rglob(".submitit/*/*_log.out")}
    assert sorted(logs) == [f"{array}_0_0_log.out", f"{array}_1_0_log.out"], sorted(logs)
    for c in children:
        assert f"mlflow run {c.info.run_id}" in logs[f"{c.data.tags['iosweep.slurm_array_task']}_0_log.out"]
    assert "iosweep: seq_write" not in p.stdout
    print(f"2-point sweep on Slurm: {took:.1f} s (cluster started in {slurm.start_seconds:.1f} s)")


def test_a_point_failing_in_its_slurm_job_is_failed_with_its_reason_and_the_sweep_closes(
        tmp_path, slurm, mlflow_server):
    env = {**slurm.env(), "MLFLOW_TRACKING_URI": mlflow_server}
    p = run_cli(tmp_path, "-m", *SLURM, "engine=null", "size_mb=8", "block_kb=64,0", env=env, timeout=240)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "iosweep: 1 of 2 points failed; first: " in p.stderr and "block_kb" in p.stderr
    assert "Traceback" not in p.stderr
    parent, children = sweep_runs(mlflow_server, str(tmp_path))
    status = {c.data.tags["iosweep.overrides"].split()[-1]: c for c in children}
    assert set(status) == {"block_kb=64", "block_kb=0"}
    assert status["block_kb=64"].info.status == "FINISHED"
    failed = status["block_kb=0"]
    assert failed.info.status == "FAILED" and "slurm_job_id" in " ".join(failed.data.tags)
    assert failed.data.tags["iosweep.error"].startswith("block_kb=0: ") and "\n" not in failed.data.tags["iosweep.error"]
    assert parent.info.status == "FAILED"  # closed, not left RUNNING
    assert parent.info.end_time >= max(c.info.end_time for c in children)
    assert parent.data.metrics["points_failed"] == 1


def test_jobs_that_may_share_the_node_run_with_consent_and_are_tagged(tmp_path, slurm, mlflow_server):
    """array_parallelism=2 without exclusive: both points on the one node at once, by consent only."""
    env = {**slurm.env(), "MLFLOW_TRACKING_URI": mlflow_server}
    args = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5", "hydra.launcher.array_parallelism=2",
            "engine=null", "size_mb=8", "block_kb=64,256"]
    p = run_cli(tmp_path, *args, env=env, timeout=240)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "iosweep: error: hydra/launcher=submitit_slurm runs points at the same time on one host (array_parallelism=2 "
        "jobs may share a node): they measure each other; set +hydra.launcher.additional_parameters.exclusive=true "
        "(a node per point) or hydra.launcher.array_parallelism=1, or allow_concurrent_points=true to accept it"]
    assert not (tmp_path / "outputs" / "sweeps").exists()
    p = run_cli(tmp_path, *args, "allow_concurrent_points=true", env=env, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    parent, children = sweep_runs(mlflow_server, str(tmp_path))
    assert parent.data.tags["iosweep.concurrent_points"] == "true" and len(children) == 2
    for c in children:
        assert c.data.tags["iosweep.concurrent_points"] == "true"
        assert "hydra/launcher=submitit_slurm ran points at the same time on one host" in c.data.tags["iosweep.warnings"]
