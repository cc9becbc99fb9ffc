"""Issue 11, seed 003: read-ahead hints, application prefetch, and the device side that shows their effect."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, mlflow_runs, run_cli
from workloads import ConfigError, DataSpec, Spec, worker_loop
from workloads import hints
from workloads.engines import get as engine
from workloads.engines.fio import job_file
from workloads.metrics import LatencyHistogram, Result, combine
from workloads.prepare import DeviceCounters, evict

MIB = 1 << 20
KIB64 = 64 << 10


def read_spec(tmp_path, **kw) -> Spec:
    base = dict(pattern="seq_read", block_size=KIB64, size_bytes=4 * MIB, target_dir=str(tmp_path))
    return Spec(**{**base, **kw})


# ---- the knobs' rules ------------------------------------------------------------------------

@pytest.mark.parametrize("kw, key, says", [
    ({"hint": "sideways"}, "hint", "choose one of none, normal, sequential, random, willneed, dontneed, noreuse"),
    ({"hint": 3}, "hint", "choose one of"),
    ({"hint": "sequential", "pattern": "seq_write"}, "hint", "applies to reads only"),
    ({"prefetch_blocks": 8, "pattern": "rand_write"}, "prefetch.blocks", "applies to reads only"),
    ({"hint": "random", "direct": True}, "hint", "direct=true bypasses the page cache"),
    ({"prefetch_blocks": 8, "direct": True}, "prefetch.blocks", "direct=true bypasses the page cache"),
    ({"hint": "willneed", "engine": "fio"}, "hint", "engine=fio cannot express it"),
    ({"hint": "noreuse", "engine": "fio"}, "hint", "engine=fio cannot express it"),
    ({"prefetch_blocks": 8, "engine": "fio"}, "prefetch.blocks", "engine=fio has no application prefetch"),
    ({"hint": "noreuse", "engine": "mmap"}, "hint", "engine=mmap cannot apply it"),
    ({"hint": "random", "engine": "null"}, "hint", "engine=null does no I/O"),
    ({"prefetch_blocks": -1}, "prefetch.blocks", "whole number from 0"),
    ({"prefetch_blocks": 1.5}, "prefetch.blocks", "whole number from 0"),
    ({"prefetch_after": True}, "prefetch.after", "whole number from 0"),
])
def test_bad_hints_and_prefetch_are_refused_by_key(tmp_path, kw, key, says):
    with pytest.raises(ConfigError) as e:
        read_spec(tmp_path, **kw).check()
    assert e.value.key == key and says in str(e.value), str(e.value)


@pytest.mark.parametrize("hint", hints.HINTS)
def test_every_hint_is_accepted_where_it_applies(tmp_path, hint):
    read_spec(tmp_path, hint=hint).check()
    read_spec(tmp_path, hint=hint, pattern="mixed").check()  # mixed reads too
    if hint in ("none", "normal", "sequential", "random"):
        read_spec(tmp_path, hint=hint, engine="fio").check()
    if hint != "noreuse":
        read_spec(tmp_path, hint=hint, engine="mmap", prefetch_blocks=8).check()


@pytest.mark.parametrize("hint, option", [("none", None), ("normal", "fadvise_hint=0"),
                                          ("sequential", "fadvise_hint=sequential"),
                                          ("random", "fadvise_hint=random")])
def test_engine_fio_gets_the_hint_as_fadvise_hint(tmp_path, hint, option):
    class Placement:
        shared_path, scratch = None, tmp_path
    job = job_file(read_spec(tmp_path, hint=hint, engine="fio"), Placement, tmp_path)
    lines = [line for line in job.splitlines() if line.startswith("fadvise_hint")]
    assert lines == ([option] if option else [])  # none: fio's own default (1, by pattern)


def test_describe_says_which_call_applied_it(tmp_path):
    assert hints.describe(read_spec(tmp_path)) is None
    assert hints.describe(read_spec(tmp_path, hint="sequential")) == "hint sequential (posix_fadvise)"
    assert hints.describe(read_spec(tmp_path, hint="random", engine="mmap")) == "hint random (madvise)"
    assert hints.describe(read_spec(tmp_path, hint="random", engine="fio")) == "hint random (fio fadvise_hint=random)"
    assert "prefetch 8 blocks after 3 sequential reads" in hints.describe(read_spec(tmp_path, prefetch_blocks=8))


# ---- the hints reach the kernel, and change what it does ---------------------------------------

def cold_file(path, size=4 * MIB):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    evict(fd, sync=False)
    return fd


@pytest.mark.parametrize("hint, more_than_asked", [("random", False), ("normal", True), ("sequential", True)])
def test_a_fadvise_hint_changes_the_kernels_read_ahead(tmp_path, hint, more_than_asked):
    """POSIX_FADV_RANDOM turns read-ahead off: one 64 KiB read brings exactly its 16 pages in;
    without it the kernel reads ahead of the first read. Seen with the prefetcher's own mincore."""
    fd = cold_file(tmp_path / "f.dat")
    try:
        spec = read_spec(tmp_path, hint=hint)
        issuer = engine("sync").issuer(spec, fd, 0, 4 * MIB)
        hints.advise(issuer, hint)
        assert os.pread(fd, KIB64, 0) and os.pread(fd, KIB64, MIB)
        resident = hints.Residency(fd, 0, 4 * MIB)
        try:
            blocks = resident.resident_blocks(np.arange(0, 4 * MIB, KIB64), KIB64)
        finally:
            resident.close()
        assert (blocks > 2) == more_than_asked, blocks
    finally:
        os.close(fd)


def test_the_worker_applies_the_hint_over_its_region_right_after_opening(tmp_path, monkeypatch):
    os.close(cold_file(tmp_path / "w.dat"))
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(hints.os, "posix_fadvise", lambda *a: (calls.append(a[1:]), real(*a))[1])
    spec = read_spec(tmp_path, hint="sequential")
    started = []
    worker_loop(spec, 0, str(tmp_path / "w.dat"), False, lambda: started.append(len(calls)), prepared=True)
    assert calls[0] == (0, spec.file_size, os.POSIX_FADV_SEQUENTIAL) and started == [1]  # before the start


def test_willneed_is_given_inside_the_window(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hints, "advise", lambda issuer, hint, *a: calls.append(hint))
    started = []
    os.close(cold_file(tmp_path / "w.dat"))
    worker_loop(read_spec(tmp_path, hint="willneed"), 0, str(tmp_path / "w.dat"), False,
                lambda: started.append(len(calls)), prepared=True)
    assert started == [0] and calls == ["willneed"]  # not before the start: its reading is the run's


def test_each_engine_makes_its_own_call(tmp_path):
    """Under strace: sync and uring posix_fadvise (fadvise64) the worker's region, mmap madvises its
    mapping, each with the hint asked for."""
    path = tmp_path / "s.dat"
    os.close(cold_file(path, 2 * MIB))
    script = (
        "import os; from workloads import Spec, worker_loop\n"
        "for engine, hint in (('sync', 'random'), ('uring', 'sequential'), ('mmap', 'random')):\n"
        f"    spec = Spec(pattern='seq_read', block_size=65536, size_bytes={2 * MIB}, engine=engine, hint=hint)\n"
        f"    os.write(1, f'ENGINE {{engine}}\\n'.encode())\n"
        f"    worker_loop(spec.check(), 0, {str(path)!r}, False, lambda: None, prepared=True)\n")
    p = subprocess.run(["strace", "-f", "-e", "trace=fadvise64,madvise,write", sys.executable, "-c", script],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    trace = p.stderr
    parts = re.split(r"write\(1, \"ENGINE (\w+)\\n\"", trace)
    seen = dict(zip(parts[1::2], parts[2::2]))
    assert re.search(rf"fadvise64\(\d+, 0, {2 * MIB}, POSIX_FADV_RANDOM\) = 0", seen["sync"]), seen["sync"][-800:]
    assert re.search(rf"fadvise64\(\d+, 0, {2 * MIB}, POSIX_FADV_SEQUENTIAL\) = 0", seen["uring"])
    # the engine's own default (MADV_SEQUENTIAL for a sequential pattern), then the hint over it
    assert re.search(rf"madvise\(0x[0-9a-f]+, {2 * MIB}, MADV_SEQUENTIAL\) = 0\n(.*\n)*.*"
                     rf"madvise\(0x[0-9a-f]+, {2 * MIB}, MADV_RANDOM\) = 0", seen["mmap"]), seen["mmap"][-800:]


# ---- prefetch -----------------------------------------------------------------------------------

@pytest.mark.parametrize("engine_name", ["sync", "mmap"])
def test_prefetch_runs_ahead_of_sequential_reads_and_is_used(tmp_path, engine_name):
    path = tmp_path / "p.dat"
    os.close(cold_file(path, 8 * MIB))
    spec = read_spec(tmp_path, size_bytes=8 * MIB, prefetch_blocks=8, engine=engine_name)
    out = worker_loop(spec, 0, str(path), False, lambda: None, prepared=True)
    c, blocks = out["counters"], 8 * MIB // KIB64
    assert out["ops_r"] == blocks
    # advised once each, from the 4th read on, never beyond the region
    assert blocks - 8 <= c["prefetch_issued"] <= blocks - 3, c
    assert 0 < c["prefetch_used"] <= c["prefetch_issued"], c


def test_prefetch_stays_off_for_random_reads_and_when_not_asked(tmp_path):
    path = tmp_path / "p.dat"
    os.close(cold_file(path, 8 * MIB))
    out = worker_loop(read_spec(tmp_path, size_bytes=8 * MIB, pattern="rand_read", prefetch_blocks=8), 0,
                      str(path), False, lambda: None, prepared=True)
    assert out["ops_r"] == 128 and out["counters"]["prefetch_issued"] <= 8  # only a chance run of 3 in a row
    out = worker_loop(read_spec(tmp_path, size_bytes=8 * MIB), 0, str(path), False, lambda: None, prepared=True)
    assert "prefetch_issued" not in out["counters"]


def test_prefetch_waits_for_after_sequential_reads(tmp_path):
    path = tmp_path / "p.dat"
    os.close(cold_file(path, 8 * MIB))
    spec = read_spec(tmp_path, size_bytes=8 * MIB, prefetch_blocks=4, prefetch_after=200)
    out = worker_loop(spec, 0, str(path), False, lambda: None, prepared=True)
    assert out["counters"]["prefetch_issued"] == 0  # 128 reads: never 200 in a row


# ---- the device side -----------------------------------------------------------------------------

def test_device_request_metrics_come_from_the_counters_over_the_window():
    r = Result(elapsed_s=1.0, bytes_read=64 * MIB, bytes_written=0, ops_read=1024, ops_written=0,
               lat_read=LatencyHistogram(), lat_write=LatencyHistogram(), io_mode="buffered")
    r.set_device_traffic(DeviceCounters(100, 0, 10, 5, 1, 0, 20, 7),
                         DeviceCounters(100 + 64 * MIB, 4096, 10 + 128, 6, 1 + 30, 0, 20 + 256, 8))
    m = r.metrics()
    assert m["device_read_ios"] == 128 and m["device_read_merges"] == 30
    assert m["device_read_req_kb"] == 512 and m["device_read_await_ms"] == 2.0
    assert m["device_write_ios"] == 1 and m["device_write_req_kb"] == 4 and m["device_write_await_ms"] == 1.0
    both = combine([r, r]).metrics()  # repeats: counts add, the means stay
    assert both["device_read_ios"] == 256 and both["device_read_req_kb"] == 512
    r.set_device_traffic((0, 0), (64 * MIB, 0))  # a plain (read, write) pair: bytes only, as before
    assert "device_read_bytes" in r.metrics()


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_hint_sideways_is_one_line_and_exit_2(tmp_path):
    p = run_cli(tmp_path, "pattern=seq_read", "hint=sideways")
    err = p.stderr.strip()
    assert p.returncode == 2 and err.count("\n") == 0 and err.startswith("iosweep: error: hint='sideways'"), err
    assert "Traceback" not in p.stdout + p.stderr and mlflow_runs(tmp_path)[1] == []


@pytest.mark.slow
def test_a_cold_read_logs_sane_device_figures_and_the_hint(tmp_path):
    p = run_cli(tmp_path, "pattern=seq_read", "block_kb=64", "size_mb=16", "hint=random", "prefetch.blocks=8")
    assert p.returncode == 0, p.stderr
    assert "hint random (posix_fadvise), prefetch 8 blocks" in p.stdout
    assert re.search(r"reads: \d+ requests of \d+ KiB on average, \d+ merged, await [\d.]+ ms", p.stdout), p.stdout
    _, runs = mlflow_runs(tmp_path)
    m, params = runs[0].data.metrics, runs[0].data.params
    assert params["hint"] == "random" and params["prefetch.blocks"] == "8" and params["prefetch.after"] == "3"
    assert m["device_read_ios"] > 0 and m["device_read_merges"] >= 0 and m["device_read_await_ms"] >= 0
    # the device read the 16 MiB in requests no smaller than a page and no larger than the disk allows
    assert 4 <= m["device_read_req_kb"] <= 64 * 1024, m
    assert m["device_read_req_kb"] == pytest.approx(m["device_read_bytes"] / m["device_read_ios"] / 1024)
    assert m["prefetch_issued"] > 0 and "prefetch_used" in m


def test_the_sweep_summary_csv_carries_the_device_columns(tmp_path):
    from runner import summary

    def point(hint, req_kb):
        return {"status": "FINISHED", "valid": True, "error": None, "run_id": "r",
                "overrides": ["pattern=seq_read", f"hint={hint}"],
                "metrics": {"throughput_mib_s": 1.0, "device_read_req_kb": req_kb, "device_read_merges": 0.0}}
    columns, table = summary.rows([point("none", 3855.0), point("random", 64.0)])
    summary.write_csv(tmp_path / "s.csv", columns, table)
    import csv
    with open(tmp_path / "s.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["hint"], r["device_read_req_kb"], r["device_read_merges"]) for r in got] == \
        [("none", "3855.0", "0.0"), ("random", "64.0", "0.0")]
    assert "prefetch_used" not in got[0]  # only the columns the points have


@pytest.mark.parametrize("pattern, extra", [("metadata", {}),
                                            ("format_read", {"data": DataSpec(format="csv", rows=10)})])
@pytest.mark.parametrize("key, kw", [("hint", {"hint": "random"}), ("prefetch.blocks", {"prefetch_blocks": 8})])
def test_patterns_without_block_reads_refuse_advice_saying_so(pattern, extra, key, kw):
    """metadata and format_read issue no block reads to advise: the line says that (not "only writes")."""
    with pytest.raises(ConfigError) as e:
        Spec(pattern=pattern, **extra, **kw).check()
    assert e.value.key == key and f"pattern={pattern} issues none" in str(e.value), str(e.value)
