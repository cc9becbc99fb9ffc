"""Issue 11, the foundation of replay and merging: ops of different lengths (`lengths` beside
`offsets`) through every in-process engine's C loop, with the bytes counted per op, not ops x block."""
import os

import numpy as np
import pytest

from workloads import Spec, engines
from workloads.metrics import N_BUCKETS
from workloads.worker import Recorder

KIB = 1024
FILE = 256 * KIB
# (engine, direct): direct reads need lengths and offsets in whole 4 KiB pages
CASES = [("sync", False), ("sync", True), ("uring", False), ("uring", True), ("mmap", False)]


def data_file(path):
    data = np.random.default_rng(7).integers(0, 256, FILE, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("engine, direct", CASES)
def test_each_op_reads_its_own_length(tmp_path, engine, direct):
    data = data_file(tmp_path / "f")
    # a spec whose largest op is 64 KiB (merging at 4 KiB x 16 with gap 0): the read buffer holds it
    spec = Spec(pattern="rand_read", engine=engine, block_size=4 * KIB, size_bytes=FILE, merge_kb=0, merge_batch=16,
                direct=direct)
    assert spec.max_op_bytes == 64 * KIB
    unit = 4096 if direct else 1
    offsets = np.array([0, 8 * KIB, 100 * KIB + 3 * unit, 192 * KIB], dtype=np.int64)
    lengths = np.array([4 * KIB, 12 * KIB, 1000 * unit if not direct else 4 * KIB, 64 * KIB], dtype=np.int64)
    fd = os.open(tmp_path / "f", os.O_RDONLY | (os.O_DIRECT if direct else 0))
    issuer = engines.get(engine).issuer(spec, fd, 0, FILE)
    rec_r, rec_w = Recorder(), Recorder()
    try:
        for i in range(len(offsets)):  # one op per call: the read buffer (slot 0) holds that op's bytes
            done, _, n_r, _, err, _ = issuer.run(offsets, i, 1, None, None, 0, rec_r, rec_w, True, None, 0, lengths)
            n_r += issuer.drain(rec_r, rec_w, True)[0]
            assert (done, n_r, err) == (1, 1, 0)
            got = bytes(memoryview(issuer.rbuf)[:lengths[i]])
            assert got == data[offsets[i]:offsets[i] + lengths[i]], (engine, i)
    finally:
        issuer.close()
        os.close(fd)
    assert rec_r.bytes == int(lengths.sum())  # the real bytes, not 4 ops x block_size
    assert rec_r.histogram().total == 4


@pytest.mark.parametrize("engine", ["sync", "uring", "mmap", "null"])
def test_an_op_longer_than_the_read_buffer_is_refused_not_overrun(tmp_path, engine):
    data_file(tmp_path / "f")
    spec = Spec(pattern="rand_read", engine=engine, block_size=4 * KIB, size_bytes=FILE)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    issuer = engines.get(engine).issuer(spec, fd, 0, FILE)
    try:
        with pytest.raises(ValueError, match="length"):
            issuer.run(np.zeros(2, np.int64), 0, 2, None, None, 0, Recorder(), Recorder(), True, None, 0,
                       np.array([4096, 8192], np.int64))
        with pytest.raises(ValueError, match="length"):
            issuer.run(np.zeros(1, np.int64), 0, 1, None, None, 0, Recorder(), Recorder(), True, None, 0,
                       np.zeros(1, np.int64))
    finally:
        issuer.close()
        os.close(fd)


def test_without_lengths_the_loop_is_the_old_one_and_counts_bytes_when_asked():
    """None = every op is block bytes (the fast path); a 3-element stats array (old callers) still works."""
    from workloads._hotloop import run_ops

    offsets = np.arange(100, dtype=np.int64) * 4096
    hr, hw = np.zeros(N_BUCKETS, np.int64), np.zeros(N_BUCKETS, np.int64)
    old = np.array([0, 2**63 - 1, 0], np.int64)
    assert run_ops(-1, 1, offsets, 0, 100, None, None, 0, bytearray(4096), 4096, hr, old, hw, old.copy(), True,
                   None, 0)[:5] == (100, 0, 100, 0, 0)
    rec = Recorder()
    run_ops(-1, 1, offsets, 0, 100, None, None, 0, bytearray(4096), 4096, rec.counts, rec.stats, hw, old, True,
            None, 0)
    assert rec.bytes == 100 * 4096
    rec = Recorder()
    lengths = np.full(100, 1000, np.int64)
    run_ops(-1, 1, offsets, 0, 100, None, None, 0, bytearray(4096), 4096, rec.counts, rec.stats, hw, old, True,
            None, 0, lengths)
    assert rec.bytes == 100 * 1000


@pytest.mark.parametrize("engine", ["sync", "uring", "mmap"])
def test_writes_of_different_lengths_write_exactly_their_bytes(tmp_path, engine):
    path = tmp_path / "f"
    path.write_bytes(b"\0" * FILE)
    spec = Spec(pattern="rand_write", engine=engine, block_size=16 * KIB, size_bytes=FILE)
    wchunk = bytearray(b"\xab" * (4 * 16 * KIB))  # 4 blocks of the write chunk
    offsets = np.array([0, 64 * KIB, 128 * KIB], np.int64)
    lengths = np.array([100, 16 * KIB, 5000], np.int64)
    fd = os.open(path, os.O_RDWR)
    issuer = engines.get(engine).issuer(spec, fd, 0, FILE)
    rec_r, rec_w = Recorder(), Recorder()
    try:
        done, wi, _, n_w, err, _ = issuer.run(offsets, 0, 3, None, wchunk, 0, rec_r, rec_w, True, None, 0, lengths)
        n_w += issuer.drain(rec_r, rec_w, True)[1]
        issuer.flush()
        assert (done, wi, n_w, err) == (3, 3, 3, 0)  # one block of the chunk per write
    finally:
        issuer.close()
        os.close(fd)
    assert rec_w.bytes == 100 + 16 * KIB + 5000
    out = path.read_bytes()
    for off, n in zip(offsets, lengths):
        assert out[off:off + n] == b"\xab" * n and out[off + n:off + n + 1] == b"\0"


def test_progress_and_the_time_series_use_the_bytes_workers_published():
    """Ops of different lengths: bytes so far are what the workers published, not ops x block_size."""
    import time

    from workloads.sampler import Sampler

    calls = []
    started = time.perf_counter_ns() - 2_000_000_000  # the window started 2 s ago: one row, one progress call
    sampler = Sampler(Spec(pattern="rand_read", block_size=4096), [10], [started],
                      lambda t, done, rate: calls.append(done), None, bytes_done=[12345])
    sampler.poll()
    assert calls == [12345]
    assert sampler.rows[0]["mib_s"] * sampler.rows[0]["t_s"] * 2**20 == pytest.approx(12345, rel=0.01)
    fast = Sampler(Spec(pattern="rand_read", block_size=4096), [10], [started], lambda t, d, r: calls.append(d), None)
    fast.poll()
    assert calls[-1] == 10 * 4096  # every op one block: derived, as before
