import numpy as np
import pytest

from workloads.metrics import LatencyHistogram, bucket_bounds, bucket_index, N_BUCKETS, Result


def test_buckets_tile_the_range_without_gaps():
    idx = np.arange(N_BUCKETS)
    low, high = bucket_bounds(idx)
    assert (low[1:] == high[:-1]).all()
    # every value maps into the bucket whose bounds contain it
    values = np.unique(np.concatenate([np.arange(0, 5000), np.geomspace(1, 2**41, 20000).astype(np.int64)]))
    b = bucket_index(values)
    lo, hi = bucket_bounds(b)
    assert ((lo <= values) & (values < hi)).all()
    assert ((hi - lo) / np.maximum(lo, 1) <= 1 / 128 + 1e-12)[values >= 128].all()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_within_one_percent_of_exact(seed):
    rng = np.random.default_rng(seed)
    values = (rng.lognormal(mean=10, sigma=1.5, size=200_000)).astype(np.int64) + 1
    h = LatencyHistogram()
    h.add(values)
    for q in (50, 90, 99, 99.9):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(h.percentile(q) - exact) / exact <= 0.01, q
    assert h.max_ns == values.max() and h.min_ns == values.min()
    assert h.mean_ns == pytest.approx(values.mean())


def test_merge_is_exact_and_roundtrips():
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 10**7, 5000), rng.integers(1, 10**9, 7000)
    ha, hb, hall = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    ha.add(a)
    hb.add(b)
    hall.add(np.concatenate([a, b]))
    merged = LatencyHistogram().merge(ha).merge(hb)
    assert (merged.counts == hall.counts).all()
    assert (merged.total, merged.sum_ns, merged.min_ns, merged.max_ns) == (hall.total, hall.sum_ns, hall.min_ns, hall.max_ns)
    back = LatencyHistogram.from_dict(merged.to_dict())
    assert (back.counts == merged.counts).all() and back.percentile(99) == merged.percentile(99)


def test_result_metrics_units():
    h = LatencyHistogram()
    h.add(np.full(100, 2000))  # 100 ops of 2 us
    r = Result(elapsed_s=2.0, bytes_read=0, bytes_written=100 * (1 << 20), ops_read=0, ops_written=100,
               lat_read=LatencyHistogram(), lat_write=h, io_mode="direct", cpu_s=1.0)
    m = r.metrics()
    assert m["throughput_mib_s"] == 50.0 and m["iops"] == 50.0
    assert m["lat_p50_us"] == pytest.approx(2.0, rel=0.01) and m["lat_max_us"] == 2.0
    assert m["cpu_util_pct"] == 50.0 and "read_throughput_mib_s" not in m


def test_c_loop_buckets_match_the_python_histogram():
    """run_ops adds each latency to its bucket in C: the formula must be metrics.bucket_index."""
    from workloads._hotloop import run_ops
    from workloads.worker import Recorder as _Recorder

    offsets = np.arange(5000, dtype=np.int64) * 4096
    rec_r, rec_w = _Recorder(), _Recorder()
    rbuf = bytearray(4096)
    done, wi, nr, nw, err, ret = run_ops(-1, 1, offsets, 0, len(offsets), None, None, 0, rbuf, 4096,
                                         rec_r.counts, rec_r.stats, rec_w.counts, rec_w.stats, True, None, 0)
    h = rec_r.histogram()
    assert (done, nr, nw, err) == (5000, 5000, 0, 0) and h.total == 5000 and rec_w.histogram().total == 0
    assert 0 <= h.min_ns <= h.mean_ns <= h.max_ns and h.max_ns > 0  # a no-op takes 0-100 ns
    for value in (h.min_ns, h.max_ns):  # the extremes C saw must sit in buckets C counted
        assert h.counts[bucket_index(np.array([value]))[0]] > 0
