import math

import pytest

from workloads import ConfigError, DataSpec, Spec
from workloads.spec import MAX_SECONDS, path_problem


@pytest.mark.parametrize("kwargs, key", [
    ({"block_size": 0}, "block_kb"),
    ({"block_size": -4096}, "block_kb"),
    ({"block_size": 1536}, "block_kb"),
    ({"writers": 0}, "writers"),
    ({"writers": 100000}, "writers"),
    ({"iodepth": 0}, "iodepth"),
    ({"iodepth": -1}, "iodepth"),
    ({"iodepth": 100000}, "iodepth"),  # beyond the io_uring ring limit
    ({"iodepth": "abc"}, "iodepth"),
    ({"iodepth": 2.5}, "iodepth"),
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
    # inf, nan and huge times passed the old `> 0` checks and overflowed the ns clocks in the workers
    ({"duration_s": math.inf}, "duration_s"),
    ({"duration_s": math.nan}, "duration_s"),
    ({"duration_s": 1e10}, "duration_s"),
    ({"duration_s": MAX_SECONDS + 1}, "duration_s"),
    ({"ramp_s": math.inf}, "ramp_s"),
    ({"ramp_s": math.nan}, "ramp_s"),
    ({"log_interval_s": math.inf}, "log_interval_s"),
    ({"log_interval_s": math.nan}, "log_interval_s"),
    ({"log_interval_s": 0}, "log_interval_s"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"target_dir": "/tmp/" + "a" * 300}, "target.dir"),
    ({"target_dir": "/tmp/" + "a/" * 2100}, "target.dir"),
    ({"target": "device", "target_path": "/tmp/" + "d" * 256}, "target.path"),
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


def test_the_limits_themselves_pass():
    Spec(duration_s=MAX_SECONDS, ramp_s=0.0, log_interval_s=MAX_SECONDS, seed=2**63 - 2,
         target_dir="/tmp/" + "a" * 255).check()


def test_path_problem_names_the_file_in_the_way(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("not a dir")
    assert path_problem(str(blocker / "runs" / "x")) == f"{blocker} is not a directory: move that file away or " \
                                                         "choose another path"
    assert "is not a directory" in path_problem(str(blocker))
    assert path_problem(str(blocker), is_dir=False) is None  # a file where a file may be (target.path)
    assert path_problem(str(tmp_path / "new" / "deeper")) is None
    assert "255 bytes per name" in path_problem("x" * 256)
    assert "at most 4095 bytes" in path_problem("/".join(["y" * 200] * 21))
    with pytest.raises(ConfigError) as e:
        Spec(target_dir=str(blocker / "scratch")).check()
    assert e.value.key == "target.dir" and str(blocker) in str(e.value)


@pytest.mark.parametrize("engine, kwargs, says", [
    ("sync", {"iodepth": 32}, "iodepth=32: needs an async engine: engine=uring (engine=sync issues one op at a time)"),
    ("fio", {"iodepth": 8}, "engine.ioengine=psync is synchronous"),
    ("fio", {"iodepth": 8, "ioengine": "sync"}, "engine.ioengine=sync is synchronous"),
])
def test_an_engine_without_the_capability_is_refused_before_any_io(engine, kwargs, says):
    from workloads import engines

    with pytest.raises(ConfigError) as e:
        engines.get(engine).check(Spec(engine=engine, **kwargs).check())
    assert e.value.key == "iodepth" and says in str(e.value)


def test_fio_takes_iodepth_with_an_async_ioengine_and_writes_it_to_the_job(tmp_path):
    from workloads import engines
    from workloads.engines.fio import job_file
    from workloads.targets.base import Mount, Placement

    spec = Spec(engine="fio", ioengine="io_uring", iodepth=16, target_dir=str(tmp_path)).check()
    engines.get("fio").check(spec)
    placement = Placement(scratch=tmp_path, mount=Mount("/", "ext4", "", "", "0:0"), device=None, io_mode="buffered")
    assert "iodepth=16" in job_file(spec, placement, tmp_path).splitlines()
