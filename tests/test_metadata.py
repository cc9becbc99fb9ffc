"""Issue 11, pattern=metadata: mdtest's create / stat / open / unlink phases, rates and latencies per op."""
import os
import threading
from pathlib import Path

import pytest

import workloads
from conftest import mlflow_runs, run_cli
from runner import console
from workloads import ConfigError, LatencyHistogram, Spec
from workloads.metadata import PHASES, merge, metadata_loop
from workloads.metrics import combine

KIB = 1024


def md(tmp_path, **kw) -> Spec:
    return Spec(**{"pattern": "metadata", "writers": 2, "files_per_writer": 50, "file_bytes": 4 * KIB,
                   "target_dir": str(tmp_path / "scratch"), **kw})


@pytest.mark.parametrize("kw, key", [
    ({"engine": "fio"}, "engine"), ({"engine": "uring"}, "engine"), ({"engine": "mmap"}, "engine"),
    ({"engine": "null"}, "engine"), ({"duration_s": 5.0}, "duration_s"), ({"direct": True}, "direct"),
    ({"ramp_s": 1.0}, "ramp_s"), ({"files_per_writer": 0}, "files_per_writer"), ({"file_bytes": 100}, "file_kb"),
    ({"target": "device", "target_path": "/dev/null"}, "files_per_writer"),
])
def test_metadata_refuses_what_it_cannot_run(tmp_path, kw, key):
    with pytest.raises(ConfigError) as e:
        md(tmp_path, **kw).check()
    assert e.value.key == key


def test_empty_files_are_mdtests_default(tmp_path):
    assert md(tmp_path, file_bytes=0).check().per_file == 0  # file_kb=0 is fine here (mdtest -w 0)
    assert md(tmp_path, file_bytes=None).check().per_file == 0


def test_loop_counts_every_phase_and_leaves_nothing(tmp_path):
    d = tmp_path / "md0"
    d.mkdir()
    out = metadata_loop(md(tmp_path, file_bytes=8 * KIB), 0, str(d), lambda: None)
    assert list(out["phases"]) == list(PHASES)
    for name in PHASES:
        p = out["phases"][name]
        assert p["ops"] == 50 and p["hist"].total == 50 and p["t1"] > p["t0"]
    assert list(d.iterdir()) == []


def test_files_hold_file_kb_between_create_and_unlink(tmp_path, monkeypatch):
    d = tmp_path / "md0"
    d.mkdir()
    seen = {}
    real_unlink = os.unlink

    def look_then_unlink(path):
        seen[path] = os.path.getsize(path)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", look_then_unlink)
    metadata_loop(md(tmp_path, files_per_writer=5, file_bytes=12 * KIB), 0, str(d), lambda: None)
    assert sorted(seen.values()) == [12 * KIB] * 5 and sorted(os.path.basename(p) for p in seen) == \
        [f"f{i}" for i in range(5)]


def test_a_failing_create_removes_what_the_worker_created(tmp_path):
    d = tmp_path / "md0"
    d.mkdir()
    (d / "f3").write_bytes(b"not iosweep's")  # O_EXCL: create fails on it
    with pytest.raises(FileExistsError):
        metadata_loop(md(tmp_path, files_per_writer=10), 0, str(d), lambda: None)
    assert sorted(p.name for p in d.iterdir()) == ["f3"]  # f0..f2 removed, the foreign file kept


def test_workers_start_each_phase_together(tmp_path):
    """mdtest's barrier: no worker stats before every worker created all its files."""
    phase_done = [0, 0]
    outs = [None, None]
    spec = md(tmp_path, files_per_writer=30 + 0)

    def one(w, n):
        d = tmp_path / f"md{w}"
        d.mkdir()
        outs[w] = metadata_loop(Spec(**{**spec.__dict__, "files_per_writer": n}), w, str(d), lambda: None,
                                phase_done=phase_done)

    threads = [threading.Thread(target=one, args=(0, 10)), threading.Thread(target=one, args=(1, 300))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for earlier, later in zip(PHASES, PHASES[1:]):
        assert min(o["phases"][later]["t0"] for o in outs) >= max(o["phases"][earlier]["t1"] for o in outs)


def test_merge_adds_ops_merges_histograms_and_spans_the_phase_window():
    def out(t0, ops, lat_ns):
        h = LatencyHistogram()
        h.add(__import__("numpy").array([lat_ns] * ops))
        return {"cpu_s": 0.1, "phases": {n: {"ops": ops, "t0": t0 + 10 * k, "t1": t0 + 10 * k + 5, "hist": h}
                                         for k, n in enumerate(PHASES)}}

    r = merge(md(Path("/tmp"), file_bytes=4 * KIB), [out(0, 3, 1000), out(2, 5, 9000)], "buffered", [])
    for name in PHASES:
        p = r.metadata[name]
        assert p["ops"] == 8 and p["hist"].total == 8 and p["seconds"] == 7e-9  # first start 0, last end 7
    m = r.metrics()
    assert m["create_per_s"] == pytest.approx(8 / 7e-9)
    assert m["stat_p50_us"] == pytest.approx(9.0, rel=0.01) and m["stat_p99_us"] == pytest.approx(9.0, rel=0.01)
    assert r.bytes_written == 8 * 4 * KIB == r.bytes_read
    both = combine([r, r])  # repeats: ops and windows add, rates stay
    assert both.metadata["open"]["ops"] == 16 and both.metrics()["open_per_s"] == pytest.approx(m["open_per_s"])


def test_run_two_workers_rates_table_and_cleanup(tmp_path):
    result = workloads.run(md(tmp_path))
    m = result.metrics()
    for name in PHASES:
        assert m[f"{name}_ops"] == 100 and m[f"{name}_per_s"] > 0 and 0 < m[f"{name}_p50_us"] <= m[f"{name}_p99_us"]
    assert result.bytes_written == result.bytes_read == 100 * 4 * KIB
    assert result.valid
    assert list((tmp_path / "scratch").iterdir()) == []
    table = console.result_table(result)
    assert all(f"  {name:>12} " in table for name in PHASES) and "ops/s" in table


@pytest.mark.slow
def test_cli_metadata_logs_its_rates_to_mlflow(tmp_path):
    p = run_cli(tmp_path, "pattern=metadata", "files_per_writer=200", "writers=2")
    assert p.returncode == 0, p.stderr
    assert "create" in p.stdout and "unlink" in p.stdout
    _, runs = mlflow_runs(tmp_path)
    metrics = runs[0].data.metrics
    assert metrics["create_ops"] == metrics["unlink_ops"] == 400
    assert {f"{op}_{k}" for op in PHASES for k in ("per_s", "p50_us", "p99_us")} <= set(metrics)
    assert list((tmp_path / "outputs" / "scratch").iterdir()) == []
    bad = run_cli(tmp_path, "pattern=metadata", "engine=fio")
    assert bad.returncode == 2 and bad.stderr.startswith("iosweep: error: engine=") and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_ctrl_c_inside_a_phase_removes_every_file_and_records_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "pattern=metadata", "files_per_writer=1000000",
                             "writers=2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    scratch = tmp_path / "outputs" / "scratch"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(scratch.glob("iosweep-*/md1/f*")):  # inside the create phase
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "create" in out and "stopped inside a phase" in out
    assert list(scratch.iterdir()) == []  # every file of the interrupted phase, the dirs and the scratch dir
