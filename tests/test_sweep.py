"""Issue 4: sweeps that explain themselves, provenance on every run, presets from the seeds."""
import csv
from pathlib import Path

import pytest

from conftest import mlflow_runs, run_cli
from runner import summary

CONF = Path(__file__).resolve().parents[1] / "conf"


def point(status="FINISHED", valid=True, error=None, **kv):
    metrics = {k: kv.pop(k) for k in list(kv) if k in summary.KEY_METRICS}
    return {"status": status, "valid": valid, "error": error, "run_id": "r",
            "overrides": [f"{k}={v}" for k, v in kv.items()], "metrics": metrics}


def grid(throughput):
    """Points over block_kb x writers with throughput(block_kb, writers)."""
    return [point(block_kb=b, writers=w, throughput_mib_s=throughput(b, w), iops=1.0, lat_p50_us=1.0,
                  lat_p99_us=2.0, cpu_util_pct=1.0, elapsed_s=1.0)
            for b in (4, 64, 1024, 4096) for w in (1, 2, 4)]


def test_findings_are_computed_from_the_data():
    # throughput saturates at 1024 KiB, writers scale at 75% efficiency
    pts = grid(lambda b, w: min(b, 1024) * (1 + 0.75 * (w - 1)))
    axes, table = summary.rows(pts)
    assert axes == ["block_kb", "writers"]
    notes = summary.findings(axes, table, summary.engine_ratios(pts))
    assert any(n.startswith("Best throughput: 3328.0 MiB/s at block_kb=1024 writers=4") for n in notes), notes
    assert any("Scaling 1 -> 4 writers (block_kb=64): 3.25x throughput, efficiency 81%" in n for n in notes), notes
    assert any("Beyond 1024 KiB blocks throughput gains < 10% per step (writers=1)" in n for n in notes), notes


def test_findings_change_when_the_data_does():
    pts = grid(lambda b, w: b * w)  # never saturates, perfect scaling
    notes = summary.findings(*summary.rows(pts), summary.engine_ratios(pts))
    assert any("still gains >= 10% at every block size step up to 4096 KiB" in n for n in notes)
    assert any("efficiency 100%" in n for n in notes)
    assert not any(n.startswith("Beyond") for n in notes)


def test_sequential_vs_random_and_failures_are_reported():
    pts = [point(pattern="seq_read", block_kb=4, throughput_mib_s=800.0),
           point(pattern="rand_read", block_kb=4, throughput_mib_s=100.0),
           point(pattern="seq_read", block_kb=64, throughput_mib_s=900.0),
           point(pattern="rand_read", block_kb=64, status="FAILED", error="target.dir='/x': cannot be created")]
    notes = summary.findings(*summary.rows(pts), summary.engine_ratios(pts))
    assert "seq_read is 8.0x rand_read (median over 1 matched points)" in notes
    assert any(n.startswith("FAILED: pattern=rand_read block_kb=64: target.dir") for n in notes)


@pytest.mark.slow
def test_sweep_leaves_table_findings_plots_and_best_point_on_the_parent(tmp_path):
    p = run_cli(tmp_path, "-m", "block_kb=64,256", "writers=1,2", "pattern=rand_read", "size_mb=16")
    assert p.returncode == 0, p.stderr
    assert "| block_kb | writers | status |" in p.stdout and "Best throughput" in p.stdout
    client, runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("iosweep.sweep") == "true")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.md", "throughput_vs_block_kb.png", "iops_vs_block_kb.png",
            "p99_vs_block_kb.png", "scaling_efficiency_vs_writers.png", "heatmap_block_kb_writers.png"} <= arts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    valid = [r for r in children if r.data.tags["iosweep.valid"] == "true"]  # "best" is never an invalid point
    best = max(valid, key=lambda r: r.data.metrics["throughput_mib_s"])
    assert parent.data.metrics["best_throughput_mib_s"] == pytest.approx(best.data.metrics["throughput_mib_s"])
    assert parent.data.metrics["best_iops"] == pytest.approx(max(r.data.metrics["iops"] for r in valid))
    assert parent.data.tags["iosweep.best_run_id"] == best.info.run_id
    sweep_dir = Path(parent.data.tags["iosweep.sweep_dir"])
    # where to look, at the start and again at the end of the sweep's output
    assert p.stdout.count(f"iosweep: sweep dir {sweep_dir}, MLflow parent run {parent.info.run_id}") == 2, p.stdout
    with open(sweep_dir / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {r["status"] for r in table} == {"FINISHED"}
    assert "## Findings" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
def test_a_failing_point_fails_alone(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("someone's file")
    p = run_cli(tmp_path, "-m", f"target.dir=outputs/scratch,{blocker}", "size_mb=8")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert "1 of 2 points failed" in p.stderr and "target.dir" in p.stderr
    assert blocker.read_text() == "someone's file"
    client, runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("iosweep.sweep") == "true")
    assert parent.info.status == "FAILED" and parent.data.metrics["points_failed"] == 1
    children = {r.data.params["target.dir"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert children["outputs/scratch"].info.status == "FINISHED"
    bad = children[str(blocker)]
    assert bad.info.status == "FAILED" and "is not a directory" in bad.data.tags["iosweep.error"]
    md = (Path(parent.data.tags["iosweep.sweep_dir"]) / "summary.md").read_text()
    assert "FAILED" in md and "is not a directory" in md
    assert all(r.info.status != "RUNNING" for r in runs)


@pytest.mark.slow
def test_every_run_carries_provenance(tmp_path):
    p = run_cli(tmp_path, "size_mb=8")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    tags = runs[0].data.tags
    for key in ("host.name", "host.kernel", "host.cpu", "host.cores", "host.ram_gb", "host.numa_nodes",
                "target.fs_type", "target.mount_opts", "target.device", "iosweep.version",
                "version.dgen_py", "version.hydra_core", "version.mlflow"):
        assert tags.get(key), key
    assert int(tags["host.cores"]) >= 1 and float(tags["host.ram_gb"]) > 0
    assert "rotational" in tags["target.device"]
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(tags["iosweep.git_sha"]) == 40 and tags["iosweep.git_dirty"] in ("true", "false")


@pytest.mark.slow
@pytest.mark.parametrize("preset, smoke", [
    ("write_scaling", ["hydra.sweeper.params.block_kb='4096'", "hydra.sweeper.params.writers='1,2'",
                       "size_mb=16"]),
    ("fio_parity", ["hydra.sweeper.params.point='rand_read_4k_direct,seq_write_1m_direct'",
                    "hydra.sweeper.params.writers='1'", "hydra.sweeper.params.trial='1'", "duration_s=0.5",
                    "size_mb=16"]),
    ("qd_parity", ["hydra.sweeper.params.point='rand_read_4k_direct'", "hydra.sweeper.params.iodepth='1,8'",
                   "hydra.sweeper.params.writers='1'", "hydra.sweeper.params.trial='1'", "duration_s=0.5",
                   "ramp_s=0.2", "size_mb=16"]),
    ("mmap_parity", ["hydra.sweeper.params.writers='1'", "hydra.sweeper.params.trial='1'", "duration_s=0.5",
                     "ramp_s=0.2", "size_mb=16"]),
    ("readahead_ab", ["hydra.sweeper.params.pattern='seq_read'", "hydra.sweeper.params.hint='none,random'",
                      "size_mb=4"]),
    ("small_files", ["hydra.sweeper.params.files_per_writer='1,16'", "hydra.sweeper.params.trial='1'",
                     "size_mb=1"]),
    ("append_log", ["record_bytes=1024", "append.mode=buffered", "append.fsync=end,every", "size_mb=1"]),
    ("streaming_write", ["hydra.sweeper.params.writers='1'", "hydra.sweeper.params.trial='1'", "size_mb=16"]),
    ("tune_write", ["hydra.sweeper.n_trials=2", "target=tmpfs", "direct=false", "data=zeros", "size_mb=16"]),
])
def test_presets_run_in_a_smoke_size(tmp_path, preset, smoke):
    p = run_cli(tmp_path, "-m", f"experiment={preset}", *smoke)
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert children and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.params["experiment"] == preset for c in children)


def test_every_preset_is_covered_by_the_smoke_test():
    presets = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert presets == {"io_microbench", "write_scaling", "fio_parity", "qd_parity", "mmap_parity", "readahead_ab",
                       "io_microbench_formats", "small_files", "model_load_ab", "append_log",
                       "streaming_write", "tune_write"}
    # io_microbench's smoke run (every study): tests/test_studies.py; the format preset's: tests/test_formats.py;
    # model_load_ab's (it needs a model file): tests/test_model_load.py
