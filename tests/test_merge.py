"""Issue 11, request merging (seed 003's readBatch): merge_kb coalesces each batch's reads that lie
<= merge_kb apart into one larger read; ops_requested, ops_issued and bytes_over_read say what it did."""
import numpy as np
import pytest

from conftest import mlflow_runs, run_cli
from workloads import ConfigError, Spec, run
from workloads.merge import coalesce, max_request

KIB = 1024
ENGINES = ["sync", "uring", "mmap"]


def test_a_batch_is_sorted_and_requests_within_the_gap_become_one_read():
    offsets = np.array([8, 0, 4, 100, 12, 40, 44], dtype=np.int64) * KIB
    # gap 0: only touching requests merge (0-4-8 KiB: one 12 KiB read), batches of 4 stay apart
    off, length, covers, over = coalesce(offsets, None, 4 * KIB, 0, 4)
    assert off.tolist() == [0, 100 * KIB, 12 * KIB, 40 * KIB]
    assert length.tolist() == [12 * KIB, 4 * KIB, 4 * KIB, 8 * KIB]
    assert covers.tolist() == [3, 1, 1, 2] and over.tolist() == [0, 0, 0, 0]
    # gap 128 KiB: each batch is one read from its first to its last byte, the gaps read too
    off, length, covers, over = coalesce(offsets, None, 4 * KIB, 128 * KIB, 4)
    assert off.tolist() == [0, 12 * KIB] and length.tolist() == [104 * KIB, 36 * KIB]
    assert covers.tolist() == [4, 3] and over.tolist() == [(104 - 16) * KIB, (36 - 12) * KIB]


def test_merging_keeps_every_requested_byte_and_lengths_may_vary():
    rng = np.random.default_rng(1)
    offsets = rng.permutation(4096).astype(np.int64) * 4 * KIB
    lengths = rng.integers(1, 3, size=4096).astype(np.int64) * 2 * KIB  # 2 or 4 KiB inside each 4 KiB slot
    for gap_kb, batch in ((0, 32), (16, 32), (128, 7), (0, 1)):
        off, length, covers, over = coalesce(offsets, lengths, 4 * KIB, gap_kb * KIB, batch)
        assert covers.sum() == len(offsets) and length.sum() == lengths.sum() + over.sum()
        assert length.max() <= batch * 4 * KIB + (batch - 1) * gap_kb * KIB
        ends = off + length
        for o, n in zip(offsets[:64], lengths[:64]):  # every requested range lies inside a read
            assert ((off <= o) & (o + n <= ends)).any()
    assert len(coalesce(offsets, lengths, 4 * KIB, 0, 1)[0]) == len(offsets)  # batch 1: nothing merges


@pytest.mark.parametrize("engine", ENGINES)
def test_a_merged_run_counts_requests_issues_and_over_read(tmp_path, engine):
    spec = Spec(pattern="rand_read", block_size=4 * KIB, size_bytes=2 << 20, engine=engine, merge_kb=64,
                target_dir=str(tmp_path))
    r = run(spec)
    requested = spec.file_size // spec.block_size
    c = r.counters
    assert c["ops_requested"] == requested == 512
    assert c["ops_issued"] == r.ops_read < requested  # on a 2 MiB file 32 random reads have neighbours
    assert r.bytes_read == requested * 4 * KIB + c["bytes_over_read"]  # the real bytes, gaps included
    assert c["bytes_over_read"] > 0
    assert r.lat_read.total == r.ops_read
    assert r.metrics()["requested_iops"] == pytest.approx(512 / r.elapsed_s)  # requests served, not reads issued
    plain = run(Spec(pattern="rand_read", block_size=4 * KIB, size_bytes=2 << 20, engine=engine,
                     target_dir=str(tmp_path)))
    assert plain.ops_read == 512 and "ops_requested" not in plain.counters


def test_merge_kb_0_merges_a_sequential_read_into_batch_sized_reads(tmp_path):
    r = run(Spec(pattern="seq_read", block_size=4 * KIB, size_bytes=1 << 20, merge_kb=0, merge_batch=16,
                 target_dir=str(tmp_path)))
    assert r.counters["ops_requested"] == 256 and r.ops_read == 16  # 16 reads of 64 KiB
    assert r.bytes_read == 1 << 20 and r.counters["bytes_over_read"] == 0


def test_merge_sizes_the_read_buffer_for_the_largest_merge():
    spec = Spec(pattern="rand_read", block_size=4 * KIB, merge_kb=128)
    assert spec.max_op_bytes == max_request(spec) == 32 * 4 * KIB + 31 * 128 * KIB
    assert Spec(pattern="rand_read", block_size=4 * KIB).max_op_bytes == 4 * KIB  # off: the fast path's buffer


@pytest.mark.parametrize("kw, key", [
    (dict(merge_kb=-5), "merge_kb"), (dict(merge_kb=1.5), "merge_kb"),
    (dict(merge_kb=8, merge_batch=0), "merge.batch"), (dict(merge_kb=8, pattern="rand_write"), "merge_kb"),
    (dict(merge_kb=8, pattern="mixed"), "merge_kb"), (dict(merge_kb=8, engine="fio"), "merge_kb"),
])
def test_what_merging_cannot_do_is_refused(tmp_path, kw, key):
    base = dict(pattern="rand_read", block_size=4 * KIB, size_bytes=1 << 20, target_dir=str(tmp_path / "s"))
    with pytest.raises(ConfigError) as e:
        run(Spec(**{**base, **kw}))
    assert e.value.key == key
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_merge_from_the_command_line(tmp_path):
    p = run_cli(tmp_path, "pattern=rand_read", "block_kb=4", "size_mb=2", "merge_kb=128", "merge.batch=8")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    m, params = runs[0].data.metrics, runs[0].data.params
    assert m["ops_requested"] == 512 and m["ops_issued"] < 512 and m["bytes_over_read"] > 0
    assert m["bytes_total"] == 512 * 4096 + m["bytes_over_read"]
    assert params["merge_kb"] == "128" and params["merge.batch"] == "8"
    for bad, says in (("merge_kb=-2", "merge_kb"), ("merge_kb=8 pattern=seq_write", "merges reads only")):
        d = tmp_path / bad.replace(" ", "_")
        d.mkdir()
        p = run_cli(d, *bad.split())
        err = p.stderr.strip()
        assert p.returncode == 2 and err.count("\n") == 0 and says in err, err
        assert mlflow_runs(d)[1] == []


@pytest.mark.parametrize("engine", ["sync", "uring"])
def test_a_read_trace_merges_too(tmp_path, engine):
    """Merged requests of a trace's ops (of their own lengths): the read buffer holds the largest merge."""
    trace = tmp_path / "t.csv"
    trace.write_text("".join(f"{o},{n},read\n" for o, n in ((0, 65536), (65536, 8192), (1 << 20, 4096), (73728, 4096))))
    r = run(Spec(pattern="replay", trace=str(trace), engine=engine, merge_kb=0, merge_batch=4,
                 target_dir=str(tmp_path / "s")))
    assert r.counters["ops_requested"] == 4 and r.ops_read == 2  # 0..80 KiB in one read, and 1 MiB alone
    assert r.bytes_read == 65536 + 8192 + 4096 + 4096 and r.counters["bytes_over_read"] == 0
