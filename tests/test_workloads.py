"""The workload library on its own: real files, real processes, real O_DIRECT."""
import hashlib
import os
from pathlib import Path

import pytest
import zstandard

from workloads import ConfigError, DataSpec, Spec, run
from workloads.targets import mount_of
from workloads.targets import local as local_target

MIB = 1 << 20


def spec(tmp_path, **kw):
    base = dict(block_size=64 << 10, writers=2, size_bytes=16 * MIB, target_dir=str(tmp_path / "t"))
    base.update(kw)
    return Spec(**base)


def leftovers(tmp_path):
    d = tmp_path / "t"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("engine", ["sync", "null"])  # uring and mmap: tests/test_uring.py, test_mmap.py
@pytest.mark.parametrize("pattern", ["seq_write", "seq_read", "rand_read", "rand_write", "mixed"])
def test_each_pattern_moves_the_whole_working_set_once(tmp_path, pattern, engine):
    s = spec(tmp_path, pattern=pattern, read_pct=50, engine=engine)
    r = run(s)
    m = r.metrics()
    assert m["bytes_total"] == s.file_size * s.writers
    assert m["ops_total"] == m["bytes_total"] / s.block_size
    assert m["throughput_mib_s"] > 0 and m["iops"] > 0 and m["elapsed_s"] > 0
    assert 0 < m["lat_p50_us"] <= m["lat_p99_us"] <= m["lat_max_us"]
    if pattern == "mixed":
        assert r.bytes_read > 0 and r.bytes_written > 0
        assert m["read_throughput_mib_s"] + m["write_throughput_mib_s"] == pytest.approx(m["throughput_mib_s"])
    else:
        assert (r.bytes_read > 0) == pattern.endswith("read")
    assert leftovers(tmp_path) == []  # scratch removed


def test_direct_io_takes_effect_and_is_reported(tmp_path):
    r = run(spec(tmp_path, direct=True, pattern="rand_read", block_size=4096))
    fs = mount_of(tmp_path).fs_type
    assert r.io_mode == ("direct-ignored" if fs in ("tmpfs", "ramfs") else "direct")
    assert r.info["fs_type"] == fs


def test_tmpfs_accepts_direct_but_it_is_not_effective(tmp_path):
    d = Path("/dev/shm") / f"iosweep-test-{os.getpid()}"
    try:
        r = run(Spec(target="tmpfs", target_dir=str(d), direct=True, size_bytes=8 * MIB))
        assert r.io_mode == "direct-ignored" and r.info["fs_type"] == "tmpfs"
    finally:
        if d.exists():
            d.rmdir()


def test_tmpfs_target_refuses_a_disk_directory():
    on_disk = Path(__file__).resolve().parent / "iosweep-never-created"
    assert mount_of(on_disk).fs_type not in ("tmpfs", "ramfs")
    with pytest.raises(ConfigError) as e:
        run(Spec(target="tmpfs", target_dir=str(on_disk)))
    assert e.value.key == "target.dir" and "use target=local" in str(e.value)
    assert not on_disk.exists()  # refused before anything was created


def test_refused_direct_stops_unless_fallback_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(local_target, "probe_direct", lambda d: "Invalid argument")
    with pytest.raises(ConfigError) as e:
        run(spec(tmp_path, direct=True))
    assert e.value.key == "direct" and "direct_fallback=true" in str(e.value)
    assert leftovers(tmp_path) == []
    r = run(spec(tmp_path, direct=True, direct_fallback=True))
    assert r.io_mode == "buffered" and any("O_DIRECT refused" in w for w in r.warnings)


def test_target_dir_that_is_a_file_is_refused_and_untouched(tmp_path):
    f = tmp_path / "t"
    f.write_bytes(b"precious")
    with pytest.raises(ConfigError) as e:
        run(spec(tmp_path))
    assert e.value.key == "target.dir" and f.read_bytes() == b"precious"


def test_null_engine_touches_nothing(tmp_path):
    r = run(spec(tmp_path, engine="null", pattern="rand_write", block_size=4096))
    assert r.io_mode == "none" and r.metrics()["iops"] > 10_000
    assert leftovers(tmp_path) == []


def test_time_based_run_with_ramp(tmp_path):
    r = run(spec(tmp_path, pattern="rand_read", block_size=4096, size_bytes=8 * MIB, writers=1,
                 duration_s=1.5, ramp_s=0.5, log_interval_s=0.5))
    m = r.metrics()
    assert 1.4 <= m["elapsed_s"] <= 1.9  # the ramp is not in the window
    assert m["bytes_total"] > 8 * MIB  # looped over the working set
    assert len(r.timeseries) >= 3 and r.timeseries[0]["ramp"] and not r.timeseries[-1]["ramp"]


def _blocks(data: bytes, size: int):
    return [hashlib.blake2b(data[i:i + size], digest_size=16).digest() for i in range(0, len(data), size)]


def test_written_bytes_hold_the_configured_ratios(tmp_path):
    s = spec(tmp_path, writers=1, size_bytes=64 * MIB, keep_files=True, data=DataSpec("dgen", 3, 2))
    r = run(s)
    (path,) = r.info["files"]
    data = Path(path).read_bytes()
    assert len(data) == 64 * MIB
    compress = len(data) / len(zstandard.ZstdCompressor(level=1).compress(data))
    units = _blocks(data, MIB)  # dgen-py dedups in 1 MiB units
    assert compress == pytest.approx(3, rel=0.1)
    assert len(units) / len(set(units)) == pytest.approx(2, rel=0.1)


def test_random_writes_keep_dedup_at_block_level(tmp_path):
    s = spec(tmp_path, writers=1, pattern="rand_write", block_size=4096, size_bytes=16 * MIB,
             keep_files=True, data=DataSpec("dgen", 1, 2))
    data = Path(run(s).info["files"][0]).read_bytes()
    blocks = _blocks(data, 4096)
    assert len(blocks) / len(set(blocks)) == pytest.approx(2, rel=0.1)


def test_zeros_and_kept_files(tmp_path):
    r = run(spec(tmp_path, keep_files=True, data=DataSpec("zeros")))
    files = [Path(p) for p in r.info["files"]]
    assert len(files) == 2 and all(f.read_bytes() == bytes(f.stat().st_size) for f in files)
    assert all(f.name.startswith("job") and f.parent.name.startswith("iosweep-") for f in files)
