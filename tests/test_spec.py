import pytest

from workloads import ConfigError, DataSpec, Spec


@pytest.mark.parametrize("kwargs, key", [
    ({"block_size": 0}, "block_kb"),
    ({"block_size": -4096}, "block_kb"),
    ({"block_size": 1536}, "block_kb"),
    ({"writers": 0}, "writers"),
    ({"writers": 100000}, "writers"),
    ({"size_bytes": 0}, "size_mb"),
    ({"size_bytes": 1 << 20, "block_size": 4 << 20}, "size_mb"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": -1.0}, "duration_s"),
    ({"ramp_s": -1.0}, "ramp_s"),
    ({"read_pct": 101, "pattern": "mixed"}, "pattern.read_pct"),
    ({"read_pct": -1, "pattern": "mixed"}, "pattern.read_pct"),
    ({"direct": True, "block_size": 6 << 10}, "block_kb"),
    ({"pattern": "zigzag"}, "pattern"),
    ({"data": DataSpec("dgen", 0, 1)}, "data.compress_ratio"),
    ({"data": DataSpec("dgen", 1, 0)}, "data.dedup_ratio"),
    ({"data": DataSpec("dgen", 1.5, 1)}, "data.compress_ratio"),
    ({"data": DataSpec("random", 1, 1)}, "data"),
])
def test_bad_values_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as e:
        Spec(**kwargs).check()
    assert e.value.key == key
    assert str(e.value).startswith(f"{key}=")


def test_good_spec_passes_and_splits_the_working_set():
    spec = Spec(block_size=64 << 10, writers=3, size_bytes=100 << 20).check()
    assert spec.file_size % spec.block_size == 0
    assert spec.file_size * 3 <= 100 << 20 < (spec.file_size + spec.block_size) * 3
