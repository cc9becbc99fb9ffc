"""Issue 12, the streaming writer (seeds 001/002): the producer-consumer pipeline made explicit
(data.producers, data.pool_buffers, data.buffer_mb, data.refill), where its time goes (wait
shares, the generator's own rate, iosweep.bottleneck), writers=auto and data.producers=auto."""
import dataclasses
import re
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import mlflow_runs, run_cli
from runner import app, schema
from workloads import ConfigError, DataSpec, Spec, run
from workloads import data as data_mod
from workloads.data import DgenSource, auto_tune, measure_ratios, stream_chunk_bytes, write_source
from workloads.judge import bottleneck
from workloads.metrics import LatencyHistogram, Result
from workloads.processes import pipeline_shares

schema.register()
app.register_resolvers()
CONF = Path(__file__).resolve().parents[1] / "conf"
MIB = 1 << 20


def spec(tmp_path, **kv):
    kv.setdefault("data", DataSpec("dgen", 1, 1))
    return Spec(**{"target_dir": str(tmp_path / "scratch"), "size_bytes": 8 * MIB, **kv}).check()


def stream_bytes(src, n_bytes: int) -> bytes:
    out = b""
    while len(out) < n_bytes:
        out += bytes(src.current_chunk())
        src.advance()
    src.close()
    return out[:n_bytes]


# ---- 1. the pipeline: several producers, the same bytes -------------------------------------

@pytest.mark.parametrize("ratios", [(1, 1), (3, 2)])
def test_several_producers_write_the_same_bytes_as_one(tmp_path, ratios):
    """Every byte is a function of (seed, worker, pass, offset): producers=3 with 2 buffers of 3 MiB fill
    chunks in any order, the writer gets the same stream as producers=1 with 4 buffers of 1 MiB."""
    one = spec(tmp_path, size_bytes=6 * MIB, data=DataSpec("dgen", *ratios, producers=1, pool_buffers=4))
    three = spec(tmp_path, size_bytes=6 * MIB, data=DataSpec("dgen", *ratios, producers=3, pool_buffers=2,
                                                             buffer_bytes=3 * MIB))
    # two passes over the 6 MiB file and into a third
    a = stream_bytes(DgenSource(one, 0, one.file_size), 15 * MIB)
    b = stream_bytes(DgenSource(three, 0, three.file_size), 15 * MIB)
    assert a == b and len(a) == 15 * MIB
    units = [a[i:i + MIB] for i in range(0, len(a), MIB)]
    assert len(set(units[:6])) == (6 if ratios == (1, 1) else 3)  # dedup 2: each unit twice per pass
    assert not set(units[:6]) & set(units[6:12])  # the next pass is fresh data
    other = spec(tmp_path, size_bytes=6 * MIB, seed=1, data=DataSpec("dgen", *ratios))
    assert stream_bytes(DgenSource(other, 0, other.file_size), MIB) != a[:MIB]  # the seed chooses the data


def test_file_written_by_three_producers_is_what_measure_ratios_regenerates(tmp_path):
    s = spec(tmp_path, size_bytes=12 * MIB, block_size=512 << 10, keep_files=True,
             data=DataSpec("dgen", 2, 2, producers=3, pool_buffers=3, buffer_bytes=3 * MIB // 2))
    r = run(s)
    on_disk = Path(r.info["files"][0]).read_bytes()
    assert on_disk == stream_bytes(DgenSource(dataclasses.replace(s, data=DataSpec("dgen", 2, 2)), 0, s.file_size),
                                   s.file_size)  # one producer, 1 MiB chunks: the same bytes
    m = r.metrics()
    assert m["data_compress_ratio_measured"] == pytest.approx(2, rel=0.1)
    assert m["data_dedup_ratio_measured_1mib"] == pytest.approx(2, rel=0.1)
    # measure_ratios' 1 MiB units span the 1.5 MiB chunks: the same figures as hashing the file itself
    import hashlib

    units = [hashlib.blake2b(on_disk[i:i + MIB]).digest() for i in range(0, len(on_disk), MIB)]
    assert measure_ratios(s)["data_dedup_ratio_measured_1mib"] == pytest.approx(len(units) / len(set(units)))


def test_refill_false_rewrites_one_chunk_and_zeros_are_zeros(tmp_path):
    s = spec(tmp_path, size_bytes=4 * MIB, keep_files=True, data=DataSpec("dgen", 1, 1, refill=False))
    src = write_source(s, 0)
    assert src.producers == 0 and src.advance() is src.current_chunk()
    on_disk = Path(run(s).info["files"][0]).read_bytes()
    assert [on_disk[i:i + MIB] for i in range(0, 4 * MIB, MIB)] == [on_disk[:MIB]] * 4 and any(on_disk[:MIB])
    assert measure_ratios(s)["data_dedup_ratio_measured_1mib"] == pytest.approx(4)  # what was written: 4 copies


def test_buffer_mb_sets_the_chunk_and_pool_buffers_the_ring(tmp_path):
    s = spec(tmp_path, block_size=512 << 10, data=DataSpec("dgen", 1, 1, pool_buffers=7, buffer_bytes=3 * MIB))
    src = write_source(s, 0)
    try:
        assert stream_chunk_bytes(s) == 3 * MIB and len(src.buffers) == 7 and all(len(b) == 3 * MIB for b in src.buffers)
        assert src.producers == 1
    finally:
        src.close()
    assert stream_chunk_bytes(spec(tmp_path, block_size=768 << 10)) == 2 * (768 << 10)  # null: >= 1 MiB of blocks


# ---- 2. where the time goes -------------------------------------------------------------------

def test_a_slow_generator_shows_as_the_writer_waiting(tmp_path, monkeypatch):
    real = data_mod.stream_fill

    def slow(*a):
        time.sleep(0.03)  # ~33 chunks/s: far slower than a writer that takes a chunk at once
        real(*a)

    monkeypatch.setattr(data_mod, "stream_fill", slow)
    s = spec(tmp_path, data=DataSpec("dgen", 1, 1, producers=1, pool_buffers=2))
    src = DgenSource(s, 0, s.file_size)
    t0, p0 = time.perf_counter_ns(), src.producer_wait_ns()
    for _ in range(10):
        src.advance()
    window = time.perf_counter_ns() - t0
    assert src.wait_ns / window > 0.8
    assert (src.producer_wait_ns() - p0) / window < 0.2
    src.close()


def test_a_failing_producer_is_raised_to_the_writer_not_waited_for(tmp_path, monkeypatch):
    real = data_mod.stream_fill

    def fails_after_the_first(*a):
        if a[4] > 0:  # chunk 0 is filled before the producers start; every later one fails
            raise MemoryError("no room for a chunk")
        real(*a)

    monkeypatch.setattr(data_mod, "stream_fill", fails_after_the_first)
    s = spec(tmp_path, data=DataSpec("dgen", 1, 1, producers=2, pool_buffers=2))
    src = DgenSource(s, 0, s.file_size)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="dgen-py producer failed: no room for a chunk"):
        src.advance()
    assert time.perf_counter() - t0 < 5  # without the error hand-over the writer waited forever
    src.close()


def test_a_slow_writer_shows_as_the_producers_waiting(tmp_path):
    s = spec(tmp_path, data=DataSpec("dgen", 1, 1, producers=2, pool_buffers=3))
    src = DgenSource(s, 0, s.file_size)
    time.sleep(0.1)  # the ring fills up
    t0, p0, w0 = time.perf_counter_ns(), src.producer_wait_ns(), src.wait_ns
    for _ in range(5):
        time.sleep(0.05)  # "writing" a chunk takes 50 ms: generation (~1 ms) waits for buffers
        src.advance()
    window = time.perf_counter_ns() - t0
    assert (src.producer_wait_ns() - p0) / (window * 2) > 0.8  # both producers, blocked on a free buffer
    assert (src.wait_ns - w0) / window < 0.1
    src.close()


def test_pipeline_shares_are_per_worker_and_merge_as_mean_and_max():
    outs = [{"t_measure": 0, "t_end": 1_000, "datagen_wait_ns": 100, "producer_wait_ns": 1_200, "producers": 2},
            {"t_measure": 500, "t_end": 1_000, "datagen_wait_ns": 250, "producer_wait_ns": 0, "producers": 2}]
    shares = pipeline_shares(outs)
    assert shares == {"data_wait_pct": [10.0, 50.0], "producer_wait_pct": [60.0, 0.0]}
    assert pipeline_shares([dict(outs[0], producers=0)]) == {}  # zeros / refill=false: nothing to share
    r = Result(1.0, 0, MIB, 0, 1, LatencyHistogram(), LatencyHistogram(), "direct", pipeline=shares)
    m = r.metrics()
    assert (m["data_wait_pct_mean"], m["data_wait_pct_max"]) == (30.0, 50.0)
    assert (m["producer_wait_pct_mean"], m["producer_wait_pct_max"]) == (30.0, 60.0)


@pytest.mark.parametrize("data_wait, busy, verdict", [
    (30.0, 50.0, "data_generation"),  # the writer waited 30% for data, CPUs to spare
    (30.0, 97.0, "cpu"),  # it waited, but its producers could not get a CPU
    (1.0, 95.0, "cpu"),  # nobody waiting, the CPUs busy (the kernel's copies count)
    (1.0, 50.0, "storage"),
    (1.0, None, "storage"),  # no system-wide figure: the workers' CPU (50% of one of 2 CPUs)
])
def test_bottleneck_is_decided_from_the_numbers(monkeypatch, data_wait, busy, verdict):
    monkeypatch.setattr(data_mod, "usable_cpus", lambda: 2)
    s = Spec(data=DataSpec("dgen", 1, 1, producers=2))
    r = Result(1.0, 0, 500 * MIB, 0, 500, LatencyHistogram(), LatencyHistogram(), "direct", cpu_s=0.5,
               pipeline={"data_wait_pct": [data_wait, 2.0], "producer_wait_pct": [70.0, 60.0]}, datagen_mib_s=4000.0,
               info={} if busy is None else {"system_cpu_pct": busy})
    got, line = bottleneck(s, r)
    assert got == verdict
    assert line.startswith(f"bottleneck: {verdict} (writers waited {(data_wait + 2) / 2:.1f}% (max ")
    assert "producers waited 65.0% (max 70.0%)" in line and "generator alone 4000 MiB/s" in line
    assert f"CPUs {25 if busy is None else busy:.0f}% busy (2 usable; the workers used 50% of one)" in line


def test_a_run_measures_its_generator_and_names_its_bottleneck(tmp_path):
    r = run(spec(tmp_path, size_bytes=32 * MIB, data=DataSpec("dgen", 1, 1, producers=2)))
    m = r.metrics()
    assert m["datagen_mib_s"] > 100  # the generator alone, before the window
    assert {"data_wait_pct_mean", "data_wait_pct_max", "producer_wait_pct_mean", "producer_wait_pct_max"} <= set(m)
    assert r.info["bottleneck"] in ("storage", "data_generation", "cpu") and 0 < r.info["system_cpu_pct"] <= 100
    assert any(w.startswith(f"bottleneck: {r.info['bottleneck']} (") for w in r.warnings)
    zeros = run(spec(tmp_path, size_bytes=8 * MIB, data=DataSpec("zeros")))
    assert "datagen_mib_s" not in zeros.metrics() and "data_wait_pct_max" not in zeros.metrics()
    assert zeros.info["bottleneck"] in ("storage", "cpu")


# ---- 3. auto ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, writers_auto, writers, gen, copy, want", [
    (2, True, None, 3000.0, 6000.0, (1, 1)),  # this machine: one writer, one producer (one core each)
    (8, True, None, 2000.0, 5000.0, (4, 1)),  # seed 002: 8 CPUs -> 4 writers; 2 CPUs each
    (16, False, 2, 2000.0, 5000.0, (2, 3)),  # ceil(5000 / 2000) producers fit in 16 / 2 - 1 CPUs
    (16, False, 2, 9000.0, 5000.0, (2, 1)),  # one producer outruns a writer's copies
    (256, True, None, 2000.0, 5000.0, (32, 3)),  # writers capped at seed 002's 32
])
def test_auto_resolves_from_cpus_and_the_calibration(cpus, writers_auto, writers, gen, copy, want):
    s = Spec(writers=writers or 1)
    got = auto_tune(s, writers_auto, True, cpus=cpus, gen_mib_s=gen, copy_rate=copy)
    assert got[:2] == want and got[2]["datagen_1_mib_s"] == gen


def test_usable_cpus_respects_the_affinity(monkeypatch):
    monkeypatch.setattr(data_mod.os, "sched_getaffinity", lambda pid: {3})
    assert data_mod.usable_cpus() == 1
    assert auto_tune(Spec(), True, False)[:2] == (1, 1)


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_resolve_auto_puts_the_numbers_in_the_config(tmp_path, capsys):
    cfg = _cfg("writers=auto", "data.producers=auto", f"target.dir={tmp_path}", "size_mb=8")
    tag = app.resolve_auto(cfg)
    assert isinstance(cfg.writers, int) and isinstance(cfg.data.producers, int)
    assert app.to_spec(cfg).writers == cfg.writers
    said = capsys.readouterr().out
    assert f"writers=auto->{cfg.writers} data.producers=auto->{cfg.data.producers}" in said
    assert tag["iosweep.auto"].startswith(f"writers=auto->{cfg.writers} ")
    assert app.resolve_auto(_cfg("writers=2")) == {}  # nothing auto: no calibration, no tag


# ---- 6. bad input -----------------------------------------------------------------------------

BAD = [("data.pool_buffers=0", "data.pool_buffers"), ("data.producers=0", "data.producers"),
       ("data.buffer_mb=2 block_kb=4096", "data.buffer_mb=2: is smaller than block_kb=4096"),
       ("data.buffer_mb=3 block_kb=2048", "data.buffer_mb=3: is not a multiple of block_kb=2048"),
       ("writers=autox", "writers='autox'"), ("data.producers=autox", "data.producers='autox'"),
       ("data.refill=maybe", "data.refill"), ("data.buffer_mb=-1", "data.buffer_mb")]


@pytest.mark.parametrize("args, says", BAD)
def test_bad_pipeline_knobs_are_refused_by_name(tmp_path, args, says):
    cfg = _cfg(*args.split(), f"target.dir={tmp_path}")
    with pytest.raises(ConfigError) as refused:
        app.resolve_auto(cfg)
        app.to_spec(cfg)
    assert says in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [BAD[0], BAD[2], BAD[4]])
def test_bad_pipeline_knobs_get_one_line_and_exit_2(tmp_path, args, says):
    p = run_cli(tmp_path, *args.split(), "size_mb=8", timeout=120)
    err = p.stderr.strip()
    assert p.returncode == 2 and err.count("\n") == 0 and err.startswith("iosweep: error:") and says in err, err
    assert mlflow_runs(tmp_path)[1] == []
    scratch = tmp_path / "outputs" / "scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


# ---- CLI: auto in a sweep, the tag and metrics in MLflow -------------------------------------

@pytest.mark.slow
def test_writers_auto_sweeps_with_numbers_and_logs_resolved_values(tmp_path):
    p = run_cli(tmp_path, "-m", "writers=auto,1,2", "data.producers=auto", "size_mb=16", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "writers=auto->" in p.stdout and "data.producers=auto->" in p.stdout
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert r.data.params["writers"].isdigit() and r.data.params["data.producers"].isdigit()
        assert r.data.tags["iosweep.bottleneck"] in ("storage", "data_generation", "cpu")
        assert "bottleneck: " in r.data.tags["iosweep.warnings"]
        assert {"datagen_mib_s", "data_wait_pct_max", "producer_wait_pct_mean"} <= set(r.data.metrics)
        assert r.data.tags["iosweep.auto"].startswith(("writers=auto->", "data.producers=auto->"))
    autos = [r for r in children if r.data.tags["iosweep.auto"].startswith("writers=auto->")]
    assert len(autos) == 1
    assert autos[0].data.params["writers"] == re.match(r"writers=auto->(\d+) ", autos[0].data.tags["iosweep.auto"])[1]


# ---- 4. the preset's finding ------------------------------------------------------------------

def test_streaming_write_finding_states_fresh_over_rewritten_and_sync_over_fio():
    from runner import summary

    def pt(engine, refill, trial, mib_s, cpu):
        return {"status": "FINISHED", "valid": True, "error": None, "run_id": "r",
                "overrides": ["writers=1", f"trial={trial}", f"data.refill={refill}", f"engine={engine}"],
                "metrics": {"throughput_mib_s": mib_s, "cpu_util_pct": cpu}, "params": {"engine": engine}}

    pts = []
    for trial, (fresh, same, fio) in enumerate([(400.0, 500.0, 420.0), (450.0, 500.0, 450.0), (300.0, 250.0, 310.0)], 1):
        pts += [pt("sync", "true", trial, fresh, 60.0), pt("sync", "false", trial, same, 20.0),
                pt("fio", "true", trial, fio, 15.0), pt("fio", "false", trial, fio, 15.0)]
    columns, table = summary.rows(pts)
    notes = summary.findings(columns, table, summary.engine_ratios(pts))
    # per-trial fresh/rewritten: 0.8, 0.9, 1.2 -> median 0.9
    assert ("Fresh dgen-py data (data.refill=true) 0.90x the throughput of one buffer rewritten (data.refill=false) "
            "at engine=sync: 400.0 vs 500.0 MiB/s, CPU 60% vs 20% (median of 3 trials, ratio range "
            "0.80–1.20)") in notes, notes
    # sync / fio with fresh data: 400/420, 450/450, 300/310 -> median 0.968
    assert any(n.startswith("sync / fio at data.refill=true: 0.968 (median of 3)") for n in notes), notes
