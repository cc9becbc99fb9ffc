"""clients=N: one point on N MPI ranks (mpirun -np 2 on this machine, Open MPI from openmpi-bin), no mocks.

Rank 0 merges every rank's workers and alone records the point; a rank that fails, dies or stops ends the
point FAILED on rank 0 naming it, and no rank waits forever."""
import csv
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from conftest import mlflow_runs, run_cli
from workloads import ConfigError, LatencyHistogram, Spec, checked
from workloads.metrics import combine
from workloads.processes import STRAGGLER_PCT, _merge_clients

MIB = 1 << 20
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_", "OMPI_", "PMIX_"))}


def mpirun(cwd, n: int, *args: str, timeout: float = 240):
    return subprocess.run([*MPIRUN, "-np", str(n), sys.executable, "-m", "runner", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=_env())


def mpirun_bg(cwd, n: int, *args: str):
    return subprocess.Popen([*MPIRUN, "-np", str(n), sys.executable, "-m", "runner", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)


def rank_process(mpirun_proc, rank: int, timeout: float = 60) -> psutil.Process:
    """The `python -m runner` process of `rank` under this mpirun (not its spawned workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.Process(mpirun_proc.pid).children(recursive=True):
            try:
                if "runner" in p.cmdline() and p.environ().get("OMPI_COMM_WORLD_RANK") == str(rank):
                    return p
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} did not start within {timeout} s")


def only_run(tmp_path):
    """The one MLflow run of tmp_path."""
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1, [r.info.status for r in runs]
    return runs[0]


# ---- fast: the merge, and what is refused before any MPI ------------------------------------------------------------

def _outs(t0: int, t1: int, latencies_ns: list[int], nbytes: int) -> dict:
    h = LatencyHistogram()
    h.add(np.array(latencies_ns, dtype=np.int64))
    return {"worker": 0, "hist_r": LatencyHistogram(), "hist_w": h, "ops_r": 0, "ops_w": len(latencies_ns),
            "t_measure": t0, "t_end": t1, "bytes_r": 0, "bytes_w": nbytes, "cpu_s": 0.1, "datagen_wait_ns": 0,
            "ramp_done": True, "counters": {}}


def _info(rank, host, boot, offset_ns, mib_s, dev=(0, 64 * MIB), device="vda", fs="ext4", mountpoint="/"):
    return {"rank": rank, "host": host, "pid": 100 + rank, "boot": boot, "offset_ns": offset_ns, "device": device,
            "fs": fs, "mountpoint": mountpoint, "dir": f"/data/iosweep-{rank}",
            "device_bytes": dev, "mib_s": mib_s, "iops": 1.0, "p99_us": 1.0, "bytes": 64 * MIB, "elapsed_s": 1.0,
            "warnings": []}


def test_the_window_runs_from_the_first_start_to_the_last_end_on_the_wall_clock():
    """Each rank's perf_counter has its own origin: rank 1's clock reads 5e9 ns less for the same instant."""
    spec = Spec(writers=1, clients=2)
    rank0 = [_outs(10_000_000_000, 11_000_000_000, [1000] * 100, 64 * MIB)]  # wall 10.0 .. 11.0 s (offset 0)
    rank1 = [_outs(5_500_000_000, 7_000_000_000, [3000] * 50, 64 * MIB)]  # wall 10.5 .. 12.0 s (offset 5e9)
    mine = SimpleNamespace(warnings=["rank 0's own"], info={"fs_type": "ext4"})
    ranks = [(0, rank0, _info(0, "a", "boot-a", 0, 64.0)), (1, rank1, _info(1, "a", "boot-a", 5_000_000_000, 42.7))]
    r = _merge_clients(spec, ranks, SimpleNamespace(io_mode="buffered"), mine)
    assert r.elapsed_s == pytest.approx(2.0)  # 10.0 -> 12.0: neither rank's own window
    assert r.bytes_written == 128 * MIB and r.lat_write.total == 150  # histograms add, nothing averaged
    assert r.lat_write.percentile(99) == pytest.approx(3000, rel=0.01)
    assert r.device_write_bytes == 64 * MIB  # one host, one device: its counters once, not per rank
    assert r.info["client_spread_pct"] == pytest.approx(100 * (64 - 42.7) / 64)
    assert [row["rank"] for row in r.info["clients"]] == [0, 1] and r.info["fs_type"] == "ext4"
    assert r.metrics()["clients"] == 2 and r.metrics()["client_spread_pct"] == r.info["client_spread_pct"]
    assert any(w.startswith("straggler: rank 1 on a ran at 43 MiB/s") for w in r.warnings)


def test_hosts_add_their_devices_and_close_clients_are_no_stragglers():
    spec = Spec(writers=1, clients=3)
    ranks = [(r, [_outs(0, 10**9, [1000], 64 * MIB)], _info(r, h, h, 0, mib, dev=(0, 64 * MIB)))
             for r, h, mib in ((0, "a", 100.0), (1, "b", 95.0), (2, "b", 90.0))]
    r = _merge_clients(spec, ranks, SimpleNamespace(io_mode="buffered"), SimpleNamespace(warnings=[], info={}))
    assert r.device_write_bytes == 128 * MIB  # host a's device + host b's device (ranks 1 and 2 share it)
    assert r.info["client_hosts"] == ["a", "b"]
    assert r.info["client_spread_pct"] == pytest.approx(10.0) and 10.0 < STRAGGLER_PCT
    assert not any("straggler" in w for w in r.warnings)
    assert not any("different storage" in w for w in r.warnings)


def test_repeats_keep_every_repeats_table_of_ranks():
    spec = Spec(writers=1, clients=2)
    merged = []
    for spread_mib in (90.0, 60.0):
        ranks = [(0, [_outs(0, 10**9, [1000], 64 * MIB)], _info(0, "a", "a", 0, 100.0)),
                 (1, [_outs(0, 10**9, [1000], 64 * MIB)], _info(1, "a", "a", 0, spread_mib))]
        merged.append(_merge_clients(spec, ranks, SimpleNamespace(io_mode="buffered"),
                                     SimpleNamespace(warnings=[], info={})))
    r = combine(merged)
    assert [(row["rank"], row["repeat"]) for row in r.info["clients"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    m = r.metrics()
    assert m["clients"] == 2 and m["client_spread_pct"] == pytest.approx(40.0) and m["repeats"] == 2


def test_ranks_on_different_storage_are_named():
    spec = Spec(writers=1, clients=2)
    ranks = [(0, [_outs(0, 10**9, [1000], 64 * MIB)], _info(0, "a", "a", 0, 100.0)),
             (1, [_outs(0, 10**9, [1000], 64 * MIB)], _info(1, "a", "a", 0, 98.0, fs="tmpfs", mountpoint="/dev/shm"))]
    r = _merge_clients(spec, ranks, SimpleNamespace(io_mode="buffered"), SimpleNamespace(warnings=[], info={}))
    assert "the ranks measured different storage: rank 0 ext4 at /, rank 1 tmpfs at /dev/shm" in " ".join(r.warnings)


@pytest.mark.parametrize("kwargs, says", [
    ({"clients": 0}, "clients"),
    ({"clients": True}, "clients"),
    ({"clients": 2, "pattern": "metadata", "files_per_writer": 4, "file_bytes": 4096, "size_bytes": None},
     "pattern=metadata"),
])
def test_clients_values_are_checked(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        Spec(**kwargs).check()


def test_an_engine_with_its_own_processes_is_refused_with_clients():
    with pytest.raises(ConfigError, match="engine=fio runs its own processes"):
        checked(Spec(engine="fio", clients=2, target="tmpfs", target_dir="/dev/shm/iosweep"))


def test_clients_without_mpirun_is_one_line_and_no_run(tmp_path):
    r = run_cli(tmp_path, "clients=2", "target=tmpfs", "size_mb=8")
    assert r.returncode == 2
    assert r.stderr.strip() == ("iosweep: error: clients=2: runs one point on 2 MPI ranks: start it with "
                                "mpirun -np 2 python -m runner ... clients=2")
    assert mlflow_runs(tmp_path)[1] == []


# ---- end to end: mpirun -np 2 on this machine -----------------------------------------------------------------------

@pytest.mark.slow
def test_two_clients_are_one_run_with_every_rank_in_it(tmp_path):
    r = mpirun(tmp_path, 2, "clients=2", "target=tmpfs", "size_mb=64", "block_kb=64")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("mlflow run ") == 1 and r.stdout.count("iosweep: seq_write") == 1  # rank 1 is silent
    run = only_run(tmp_path)
    m, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and run.data.params["clients"] == "2"
    assert m["bytes_total"] == 2 * 64 * MIB and m["ops_total"] == 2 * 64 * 16 and m["clients"] == 2
    assert m["throughput_mib_s"] == pytest.approx(m["bytes_total"] / MIB / m["elapsed_s"])
    client, run_id = mlflow_runs(tmp_path)[0], run.info.run_id
    with open(client.download_artifacts(run_id, "clients/clients.csv", str(tmp_path))) as f:
        per_rank = list(csv.DictReader(f))
    assert list(per_rank[0]) == ["rank", "host", "pid", "mib_s", "iops", "p99_us", "bytes", "elapsed_s", "fs",
                                 "mountpoint", "dir"] and len(per_rank) == 2
    assert {x["fs"] for x in per_rank} == {"tmpfs"} and per_rank[0]["dir"] != per_rank[1]["dir"]
    assert [int(x["bytes"]) for x in per_rank] == [64 * MIB, 64 * MIB]
    assert m["elapsed_s"] >= max(float(x["elapsed_s"]) for x in per_rank) - 1e-6  # first start to last end
    pids = {x["pid"] for x in per_rank}
    assert len(pids) == 2 and tags["iosweep.client_hosts"] == per_rank[0]["host"]
    assert {tags["iosweep.client.0"], tags["iosweep.client.1"]} == {f"{x['host']} pid {x['pid']}" for x in per_rank}
    hist = __import__("json").load(open(client.download_artifacts(run_id, "latency/latency_histogram.json",
                                                                  str(tmp_path))))
    assert hist["write"]["total"] == m["ops_total"]  # both ranks' ops, merged by bucket
    assert len(list(tmp_path.glob("outputs/runs/*/*"))) == 1  # rank 0's run dir; rank 1 writes none
    leftovers = [p for p in os.listdir("/tmp") if p.startswith("iosweep-rank-") and
                 any(pid in p for pid in pids)]
    assert leftovers == []


@pytest.mark.slow
def test_a_rank_that_fails_fails_the_point_on_rank0_naming_it(tmp_path):
    """A check that fails on one host only: rank 1's target.dir is a file."""
    (tmp_path / "d0").mkdir()
    (tmp_path / "d1").write_text("not a directory")
    r = mpirun(tmp_path, 2, "clients=2", f"target.dir={tmp_path}/d${{oc.env:OMPI_COMM_WORLD_RANK}}", "size_mb=16")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("iosweep")]
    assert len(errors) == 1 and errors[0].startswith("iosweep: error: rank 1 (pid ") and \
        f"failed: target.dir='{tmp_path}/d1'" in errors[0], r.stderr
    run = only_run(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["iosweep.error"].startswith("rank 1 (pid ")
    assert (tmp_path / "d1").read_text() == "not a directory" and os.listdir(tmp_path / "d0") == []


def signal_rank1(tmp_path, args, sig, wait_until, rank: int = 1) -> tuple[int, psutil.Process, str, float]:
    """Run mpirun -np 2 with args, send `rank` (1 unless said) sig once wait_until(that rank) returns; (exit
    code, the rank's process, stderr, seconds until mpirun ended)."""
    t0 = time.monotonic()
    proc = mpirun_bg(tmp_path, 2, *args, "clients=2")
    try:
        target = rank_process(proc, rank)
        wait_until(target)
        target.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, target, err, time.monotonic() - t0


def into_the_window(rank1) -> None:
    time.sleep(6)


def its_first_worker_spawning(rank1) -> None:
    """Past MPI_Init, long before "ready" (a rank stopped inside MPI_Init holds every rank's MPI_Init, which has
    no timeout: that is mpirun's to end)."""
    deadline = time.monotonic() + 60
    while not rank1.children():
        assert time.monotonic() < deadline, "rank 1 started no worker within 60 s"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_rank_fails_the_point_on_rank0_naming_it(tmp_path):
    code, rank1, err, _ = signal_rank1(tmp_path, ["target=tmpfs", "size_mb=32", "block_kb=64", "duration_s=60"],
                                       signal.SIGKILL, into_the_window)
    assert code != 0
    assert f"iosweep: error: rank 1 (pid {rank1.pid} on " in err and "died (killed or crashed)" in err, err
    published(tmp_path)  # by a detached `runner.sync`: mpirun ends rank 0 within a second
    run = only_run(tmp_path)
    assert run.info.status == "FAILED" and f"rank 1 (pid {rank1.pid} on" in run.data.tags["iosweep.error"]


@pytest.mark.slow
def test_a_stopped_rank_hangs_no_one(tmp_path):
    """SIGSTOP: rank 1 neither dies nor answers. Rank 0 gives up after client_timeout_s and the job ends."""
    code, rank1, err, took = signal_rank1(tmp_path, ["target=tmpfs", "size_mb=32", "block_kb=64", "duration_s=60",
                                                     "client_timeout_s=5"], signal.SIGSTOP, into_the_window)
    assert code == 2 and took < 60, err
    assert f"iosweep: error: rank 1 (pid {rank1.pid} on " in err and "sent nothing for 5 s" in err, err
    run = only_run(tmp_path)
    assert run.info.status == "FAILED" and "stopped or stuck" in run.data.tags["iosweep.error"]
    assert not psutil.pid_exists(rank1.pid) or psutil.Process(rank1.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_a_rank_stopped_before_the_start_hangs_no_one(tmp_path):
    code, rank1, err, took = signal_rank1(tmp_path, ["target=tmpfs", "size_mb=16", "client_timeout_s=5"],
                                         signal.SIGSTOP, its_first_worker_spawning)
    assert code == 2 and took < 60, err
    assert f"iosweep: error: rank 1 (pid {rank1.pid} on " in err, err
    assert "did not get its workers ready within 5 s (client_timeout_s)" in err, err
    assert only_run(tmp_path).info.status == "FAILED"


@pytest.mark.slow
def test_a_sweep_of_two_client_points_is_one_parent(tmp_path):
    r = mpirun(tmp_path, 2, "-m", "clients=2", "target=tmpfs", "size_mb=16", "block_kb=64,256")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path)
    parents = [x for x in runs if x.data.tags.get("iosweep.sweep") == "true"]
    children = [x for x in runs if x not in parents]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # rank 1 made no parent of its own
    assert sorted(c.data.params["block_kb"] for c in children) == ["256", "64"]
    for c in children:
        assert c.info.status == "FINISHED" and c.data.metrics["bytes_total"] == 2 * 16 * MIB
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (("clients=1",), "iosweep: error: clients=1: but mpirun started 2 ranks: set clients=2 or mpirun -np 1"),
    (("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "clients=2"),
     "iosweep: error: hydra/sweeper=optuna under mpirun: every rank would search on its own"),
])
def test_what_mpirun_cannot_run_is_one_line_from_rank0(tmp_path, args, says):
    r = mpirun(tmp_path, 2, *args, "target=tmpfs", "size_mb=8")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("iosweep")]
    assert len(errors) == 1 and errors[0].startswith(says), r.stderr
    assert [x.info.status for x in mlflow_runs(tmp_path)[1]] == []


@pytest.mark.slow
def test_ctrl_c_records_what_rank0_measured_and_says_whose(tmp_path):
    """Ctrl-C on mpirun: it ends every rank with SIGTERM to its process group (the workers' too): rank 0 keeps what
    its workers measured, says it is its own only, and every rank removes its files."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = mpirun_bg(tmp_path, 2, "clients=2", f"target.dir={scratch}", "size_mb=32", "block_kb=64",
                     "duration_s=60")
    try:
        rank_process(proc, 1)
        time.sleep(7)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and took < 20, err
    assert err.count("iosweep: stopped by SIGTERM") == 1, err  # rank 0 only
    published(tmp_path)
    run = only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.metrics["bytes_total"] > 0
    assert "rank 0's workers only" in run.data.tags["iosweep.warnings"]
    assert os.listdir(scratch) == []


def published(tmp_path, timeout: float = 60) -> None:
    """Wait until the detached runner.sync has imported the run (reading the store earlier races it)."""
    deadline = time.monotonic() + timeout
    while not any("1 imported" in p.read_text() for p in tmp_path.glob("outputs/runs/*/*/sync.log")):
        assert time.monotonic() < deadline, f"the run was not published within {timeout} s"
        time.sleep(0.5)


WINDOW = ["target=tmpfs", "size_mb=32", "block_kb=64", "duration_s=60"]


@pytest.mark.slow
def test_sigterm_to_rank1_alone_fails_the_point_naming_it_at_once(tmp_path):
    code, rank1, err, took = signal_rank1(tmp_path, WINDOW, signal.SIGTERM, into_the_window)
    assert code == 2 and took < 30, err
    assert f"iosweep: error: rank 1 (pid {rank1.pid} on " in err and "was stopped by SIGTERM" in err, err
    assert "stopped by SIGTERM: what it wrote removed" not in err  # rank 1 records nothing and says nothing
    run = only_run(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["iosweep.error"].endswith("was stopped by SIGTERM")


@pytest.mark.slow
def test_sigterm_to_rank0_alone_ends_every_rank(tmp_path):
    code, rank0, err, took = signal_rank1(tmp_path, WINDOW, signal.SIGTERM, into_the_window, rank=0)
    assert code == 128 + signal.SIGTERM and took < 30, err
    published(tmp_path)
    run = only_run(tmp_path)
    assert run.info.status == "KILLED" and "rank 0's workers only" in run.data.tags["iosweep.warnings"]


@pytest.mark.slow
def test_sigstop_to_rank0_is_named_by_rank1_and_ends_the_job(tmp_path):
    code, rank0, err, took = signal_rank1(tmp_path, ["target=tmpfs", "size_mb=32", "block_kb=64", "duration_s=8",
                                                     "client_timeout_s=5"], signal.SIGSTOP, into_the_window, rank=0)
    assert code != 0 and took < 90, err
    assert "iosweep: error: rank 1 (pid " in err and "rank 0 did not take this rank's result within 5 s" in err, err
    assert not psutil.pid_exists(rank0.pid) or psutil.Process(rank0.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_a_killed_rank_in_a_sweep_closes_the_parent(tmp_path):
    code, rank1, err, _ = signal_rank1(tmp_path, ["-m", "target=tmpfs", "size_mb=32", "duration_s=6",
                                                   "block_kb=64,128,256"],
                                       signal.SIGKILL, into_the_window)
    assert code != 0 and "Traceback" not in err and "Exception ignored" not in err, err
    _, runs = mlflow_runs(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    assert parent.info.status == "FAILED" and all(r.info.status != "RUNNING" for r in runs)
    assert any(f"rank 1 (pid {rank1.pid} on" in r.data.tags.get("iosweep.error", "") for r in runs)


def test_stale_rank_dirs_are_removed_only_when_empty_and_their_pid_is_gone(tmp_path):
    from runner.__main__ import _remove_stale_rank_dirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f"iosweep-rank-{dead.pid}-abc"
    (gone / "multirun" / "0").mkdir(parents=True)  # what Hydra makes for a rank > 0: directories only
    with_file = tmp_path / f"iosweep-rank-{dead.pid}-def"
    with_file.mkdir()
    (with_file / "notes.txt").write_text("not ours")
    alive = tmp_path / f"iosweep-rank-{os.getpid()}-ghi"
    alive.mkdir()
    other = tmp_path / "iosweep-rank-x"
    other.mkdir()
    _remove_stale_rank_dirs(str(tmp_path))
    assert not gone.exists() and with_file.exists() and alive.exists() and other.exists()
