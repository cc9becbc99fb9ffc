import numpy as np
import pytest

from workloads import Spec
from workloads.patterns import op_chunks


def collect(spec, worker=0, passes=None):
    offs, flags = [], []
    for i, (o, f) in enumerate(op_chunks(spec, worker)):
        offs.append(o)
        if f is not None:
            flags.append(f)
        if passes is not None and sum(map(len, offs)) >= passes * (spec.file_size // spec.block_size):
            break
    return np.concatenate(offs), (np.concatenate(flags) if flags else None)


def test_sequential_covers_file_in_order():
    spec = Spec(pattern="seq_read", block_size=4096, size_bytes=1 << 20)
    offs, flags = collect(spec)
    assert (offs == np.arange(256) * 4096).all() and flags is None


@pytest.mark.parametrize("pattern", ["rand_read", "rand_write", "mixed"])
def test_random_visits_every_block_once_per_pass(pattern):
    spec = Spec(pattern=pattern, block_size=4096, size_bytes=8 << 20)
    offs, _ = collect(spec)
    assert sorted(offs.tolist()) == list(range(0, 8 << 20, 4096))
    assert not (offs == np.sort(offs)).all()


def test_seeded_and_distinct_per_worker():
    spec = Spec(pattern="rand_read", block_size=4096, size_bytes=4 << 20, writers=2, seed=5)
    a0, _ = collect(spec, 0)
    assert (a0 == collect(spec, 0)[0]).all()
    assert not (a0 == collect(spec, 1)[0]).all()
    assert not (a0 == collect(Spec(pattern="rand_read", block_size=4096, size_bytes=4 << 20, writers=2, seed=6), 0)[0]).all()


def test_mixed_read_share():
    spec = Spec(pattern="mixed", block_size=4096, size_bytes=64 << 20, read_pct=30)
    _, flags = collect(spec)
    assert flags.mean() == pytest.approx(0.30, abs=0.01)


def test_time_based_keeps_going():
    spec = Spec(pattern="rand_write", block_size=4096, size_bytes=1 << 20, duration_s=1.0)
    offs, _ = collect(spec, passes=3)
    assert len(offs) >= 3 * 256
