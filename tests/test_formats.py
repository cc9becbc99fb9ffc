"""Issue 11, file formats: pattern=format_read reads and decodes the table it wrote, in four formats;
the Result counts exactly what was read; bad input is one line; the finding compares with binary."""
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import children_but_servers, mlflow_runs, run_cli
from runner import app, schema, summary
from workloads import ConfigError, DataSpec, Interrupted, Spec, WorkloadError, formats, job, run

schema.register()
app.register_resolvers()
CONF = Path(__file__).resolve().parents[1] / "conf"
FORMATS = ("binary", "npy", "csv", "parquet")


def table_spec(tmp_path, fmt="binary", rows=3000, **kw) -> Spec:
    return Spec(pattern="format_read", data=DataSpec(format=fmt, rows=rows), target_dir=str(tmp_path), **kw)


# ---- the table and its formats ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_exactly_the_rows_generated(tmp_path, fmt):
    table = formats.make_table(seed=7, worker=1, rows=5000)
    path = tmp_path / "t.dat"
    formats.write_table(fmt, table, str(path))
    decoded = formats.load(fmt, str(path))
    assert formats.rows_of(decoded) == 5000
    got = formats.as_records(decoded)
    assert got.dtype == formats.TABLE_DTYPE
    for name in formats.TABLE_DTYPE.names:  # every column bit for bit: CSV floats round-trip exactly
        np.testing.assert_array_equal(got[name], table[name], err_msg=f"{fmt}: column {name}")
    if fmt == "binary":
        assert path.stat().st_size == 5000 * formats.TABLE_DTYPE.itemsize  # raw records, no header
    assert path.stat().st_size <= formats.estimated_bytes(fmt, 5000)  # the free-space check's bound holds


def test_the_table_comes_from_the_seed_and_the_worker():
    a = formats.make_table(3, 0, 1000)
    assert a.tobytes() == formats.make_table(3, 0, 1000).tobytes()
    assert a.tobytes() != formats.make_table(4, 0, 1000).tobytes()
    b = formats.make_table(3, 1, 1000)
    assert a[["x0", "score", "label"]].tobytes() != b[["x0", "score", "label"]].tobytes()
    assert set(a["id"]).isdisjoint(b["id"])  # ids unique across workers
    assert len(formats.TABLE_DTYPE.names) == 8 and len(set(a["label"])) > 100  # a string column with variety


# ---- what a run counts -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_one_load_counts_the_file_bytes_and_the_table_rows(tmp_path, fmt):
    r = run(table_spec(tmp_path / "scratch", fmt, rows=4000, keep_files=True))
    (path,) = r.info["files"]
    size = Path(path).stat().st_size
    assert formats.as_records(formats.load(fmt, path)).tobytes() == formats.make_table(0, 0, 4000).tobytes()
    m = r.metrics()
    assert r.ops_read == 1 and r.lat_read.total == 1 and r.ops_written == r.bytes_written == 0
    assert r.bytes_read == size and m["file_mib"] == pytest.approx(size / 2**20)
    assert r.counters["rows_read"] == 4000 and m["rows_per_s"] == pytest.approx(4000 / r.elapsed_s)
    assert m["throughput_mib_s"] == pytest.approx(size / 2**20 / r.elapsed_s)
    assert m["decode_cpu_s"] >= 0 and m["read_sys_cpu_s"] >= 0
    assert r.io_mode == "buffered"


def test_a_timed_run_loads_again_and_counts_every_load(tmp_path):
    r = run(table_spec(tmp_path, "binary", rows=2000, writers=2, duration_s=0.6))
    per_file = 2000 * formats.TABLE_DTYPE.itemsize  # binary: both workers' files have exactly this size
    assert r.info["file_bytes"] == 2 * per_file
    assert r.ops_read >= 2 and r.lat_read.total == r.ops_read
    assert r.counters["rows_read"] == 2000 * r.ops_read
    assert r.bytes_read == per_file * r.ops_read
    assert not list(Path(tmp_path).glob("iosweep-*"))  # its files are removed


def test_cold_loads_reach_the_device_and_warm_ones_are_flagged(tmp_path):
    cold = run(table_spec(tmp_path, "binary", rows=200_000, duration_s=0.5))
    if cold.device_read_bytes is not None:  # a block device behind the scratch dir: it read every load
        assert cold.metrics()["cache_served_pct"] < 10 and cold.valid, cold.warnings
    warm = run(table_spec(tmp_path, "binary", rows=2000, cache="warm"))
    assert not warm.valid and any("cache=warm" in w for w in warm.warnings)


def test_a_stopped_run_keeps_what_its_loads_measured_and_cleans_up(tmp_path):
    """The process machinery holds for format_read: Ctrl-C (here from the progress callback) stops
    the workers after their current load, the partial result counts whole loads, files go."""
    def stop(*_):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        job.run(table_spec(tmp_path / "t", "npy", rows=5000, writers=2, duration_s=30.0), progress=stop)
    partial = e.value.partial
    assert partial is not None and partial.info["stopped"] and not partial.valid
    assert partial.ops_read >= 1 and partial.counters["rows_read"] == 5000 * partial.ops_read
    assert partial.bytes_read == partial.ops_read * partial.info["file_bytes"] // 2  # both .npy files: same size
    assert list((tmp_path / "t").iterdir()) == []


def test_a_worker_killed_mid_load_fails_the_run_and_cleans_up(tmp_path):
    killed = []

    def kill_one(*_):
        if not killed:
            worker = next(c for c in children_but_servers() if "resource_tracker" not in " ".join(c.cmdline()))
            worker.kill()
            killed.append(True)

    with pytest.raises(WorkloadError, match=r"worker \d died without a result \(exit code -9\)"):
        job.run(table_spec(tmp_path / "t", "csv", rows=5000, writers=2, duration_s=30.0), progress=kill_one)
    assert list((tmp_path / "t").iterdir()) == []


# ---- bad input -----------------------------------------------------------------------------------

def compose_with(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=app.quote_null_choices(overrides))


def test_the_pattern_brings_its_format_and_rows():
    spec = app.to_spec(compose_with(["pattern=format_read"]))
    assert (spec.pattern, spec.data.format, spec.data.rows) == ("format_read", "binary", 1_000_000)
    assert app.to_spec(compose_with(["pattern=seq_read"])).data.format is None


@pytest.mark.parametrize("overrides, key", [
    (["pattern=format_read", "data.format=xml"], "data.format"),
    (["pattern=format_read", "data.rows=0"], "data.rows"),
    (["pattern=format_read", "data.rows=-3"], "data.rows"),
    (["pattern=format_read", "data.rows=1.5"], "data.rows"),
    (["pattern=seq_read", "data.format=csv"], "data.format"),
    (["pattern=rand_read", "data.rows=10"], "data.rows"),
    (["pattern=format_read", "engine=uring"], "engine"),
    (["pattern=format_read", "direct=true"], "direct"),
    (["pattern=format_read", "target=file", "target.path=/etc/hostname"], "target"),
])
def test_bad_format_input_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        app.to_spec(compose_with(overrides))
    assert e.value.key == key


@pytest.mark.slow
def test_bad_format_is_one_line_exit_2_and_no_run(tmp_path):
    p = run_cli(tmp_path, "pattern=seq_read", "data.format=parquet")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["iosweep: error: data.format='parquet': applies to pattern=format_read "
                                             "only (this is pattern=seq_read): remove data.format or set "
                                             "pattern=format_read"]
    assert mlflow_runs(tmp_path)[1] == [] and not list((tmp_path / "outputs").glob("scratch/iosweep-*"))


# ---- the finding -----------------------------------------------------------------------------

def point(fmt, rows_per_s, mib_s=100.0, file_mib=10.0, valid=True, status="FINISHED", **kv):
    ov = [f"data.format={fmt}"] + [f"{k}={v}" for k, v in kv.items()]
    metrics = {"throughput_mib_s": mib_s, "iops": 5.0, "lat_p50_us": 1e5, "lat_p99_us": 2e5, "cpu_util_pct": 50.0,
               "elapsed_s": 3.0, "rows_per_s": rows_per_s, "file_mib": file_mib}
    return {"status": status, "valid": valid, "error": None if status == "FINISHED" else "boom",
            "run_id": f"run-{fmt}", "overrides": ov, "metrics": metrics if status == "FINISHED" else {},
            "params": {"pattern": "format_read"}}


def notes_of(pts):
    return summary.findings(*summary.rows(pts), summary.engine_ratios(pts))


def test_the_finding_gives_each_format_against_binary():
    pts = [point("binary", 5e6, 300.0, 57.2), point("npy", 4e6, 240.0, 57.2), point("csv", 2e5, 25.0, 121.2),
           point("parquet", 7e5, 33.0, 47.7)]
    notes = notes_of(pts)
    assert "csv 0.04x of binary rows/s (200,000 vs 5,000,000 rows/s; 25.0 vs 300.0 MiB/s of a file 2.12x the size)" \
        in notes, notes
    assert any(n.startswith("npy 0.80x of binary rows/s") for n in notes), notes
    assert any(n.startswith("parquet 0.14x of binary rows/s") for n in notes), notes
    assert not any(n.startswith("binary ") for n in notes)


def test_the_finding_is_per_other_axis_and_from_valid_runs_only():
    pts = [point("binary", 4e6, writers=1), point("csv", 4e5, writers=1),
           point("binary", 6e6, writers=2), point("csv", 3e5, writers=2),
           point("binary", 9e9, valid=False, writers=4), point("csv", 3e5, writers=4)]
    notes = notes_of(pts)
    assert any(n.startswith("csv 0.10x of binary rows/s") and n.endswith("(writers=1)") for n in notes), notes
    assert any(n.startswith("csv 0.05x of binary rows/s") and n.endswith("(writers=2)") for n in notes), notes
    assert "Formats (writers=4): no valid data.format=binary run to compare csv with" in notes, notes
    assert not any("9,000,000,000" in n for n in notes)


# ---- the preset --------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_format_preset_runs_in_a_smoke_size_and_compares_with_binary(tmp_path):
    p = run_cli(tmp_path, "-m", "experiment=io_microbench_formats", "hydra.sweeper.params.writers='1'",
                "data.rows=3000", "duration_s=0.3", "repeats=1")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.params["data.format"] for c in children) == sorted(FORMATS)
    assert all(c.info.status == "FINISHED" and c.data.metrics["rows_per_s"] > 0 for c in children)
    assert all(c.data.metrics["rows_read"] == 3000 * c.data.metrics["ops_total"] for c in children)
    assert all("block_kb" not in c.data.params and "size_mb" not in c.data.params for c in children)
    for fmt in ("npy", "csv", "parquet"):  # valid runs on a device; on tmpfs the finding still has them
        assert f"* {fmt} " in p.stdout and "x of binary rows/s" in p.stdout, p.stdout
