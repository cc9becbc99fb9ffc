"""Issue 10 section 3: engine=mmap, every pattern through a MAP_SHARED mapping, page faults as
metrics, writes that reach the device (msync + fsync), io_mode mmap judged like buffered."""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from conftest import mlflow_runs, run_cli
from runner import app, schema
from workloads import ConfigError, DataSpec, Spec, engines, run
from workloads.targets import block_device, mount_of
from workloads.worker import Recorder

MIB = 1 << 20
KIB = 1 << 10


def spec(tmp_path, **kw):
    base = dict(engine="mmap", block_size=64 * KIB, writers=2, size_bytes=4 * MIB, target_dir=str(tmp_path / "t"))
    base.update(kw)
    return Spec(**base)


# ---- every pattern through workloads.run -----------------------------------------------------

@pytest.mark.parametrize("pattern, access", [
    ("seq_read", "copy"), ("seq_read", "touch"), ("rand_read", "copy"), ("rand_read", "touch"),
    ("seq_write", None), ("rand_write", None), ("mixed", "copy"), ("mixed", "touch"),
])
def test_each_pattern_moves_the_planned_ops_through_the_mapping(tmp_path, pattern, access):
    s = spec(tmp_path, pattern=pattern, access=access, read_pct=50)
    r = run(s)
    m = r.metrics()
    assert r.io_mode == "mmap" and m["bytes_total"] == s.file_size * s.writers
    assert m["ops_total"] == s.file_size * s.writers // s.block_size
    assert r.lat_read.total == r.ops_read and r.lat_write.total == r.ops_written  # every op timed once
    assert (r.ops_read > 0) == s.reads and (r.ops_written > 0) == s.writes
    assert "minor_faults" in m and "major_faults" in m
    assert m["minor_faults"] + m["major_faults"] > 0  # cold file, fresh mapping: every page faults in once


def test_a_cold_read_counts_major_faults_and_reaches_the_device(tmp_path):
    assert block_device(mount_of(tmp_path).dev) is not None, "needs a block device behind tmp_path"
    r = run(spec(tmp_path, pattern="rand_read", writers=1, size_bytes=8 * MIB))
    m = r.metrics()
    # MADV_RANDOM: no read-ahead, each 4 KiB page of the evicted file is read on its own fault
    assert m["major_faults"] > 0.5 * (8 * MIB // 4096), m
    assert m["device_read_bytes"] >= 0.9 * r.bytes_read and not any("page cache" in w for w in r.warnings), r.warnings


def test_a_warm_time_based_read_is_flagged_and_counts_only_the_window(tmp_path):
    r = run(spec(tmp_path, pattern="rand_read", cache="warm", duration_s=0.6, ramp_s=0.4, repeats=2))
    m = r.metrics()
    assert not r.valid and any("cache=warm" in w for w in r.warnings)
    assert r.lat_read.total == r.ops_read > 0 and m["repeats"] == 2
    # the ramp faulted the 4 MiB in; the window re-reads mapped pages (faults counted from start_window)
    assert m["minor_faults"] + m["major_faults"] < r.ops_read / 10, m


def test_io_mode_mmap_reads_served_by_the_page_cache_are_flagged(tmp_path):
    """A cold time-based mmap read re-reads what the first pass brought in: the judge says so."""
    r = run(spec(tmp_path, pattern="rand_read", writers=1, duration_s=1.0))
    assert r.io_mode == "mmap" and not r.valid
    assert any("came from the page cache" in w for w in r.warnings), r.warnings


# ---- written bytes land on disk, where pwrite would put them ---------------------------------

def contents(r, target_file: Path | None) -> bytes:
    if target_file is not None:
        return target_file.read_bytes()
    return b"".join(Path(f).read_bytes() for f in sorted(r.info["files"]))


@pytest.mark.parametrize("target", ["local", "device"])
@pytest.mark.parametrize("pattern", ["seq_write", "rand_write", "mixed"])
def test_mmap_writes_the_same_bytes_as_pwrite(tmp_path, pattern, target):
    # 13 KiB regions: the 2nd and 3rd writers' regions on the device file start off a page boundary
    size = 3 * 13 * KIB
    got = {}
    for engine in ("sync", "mmap"):
        kw = dict(pattern=pattern, engine=engine, block_size=KIB, writers=3, size_bytes=size, read_pct=50,
                  keep_files=True, target_dir=str(tmp_path / engine))
        device_file = None
        if target == "device":
            device_file = tmp_path / f"{engine}.img"
            device_file.write_bytes(b"\xab" * (size + 4 * KIB))  # 4 KiB past the regions must stay as they are
            kw.update(target="device", target_path=str(device_file), allow_overwrite=True)
        r = run(Spec(**kw))
        assert r.bytes_read + r.bytes_written == size, r.metrics()
        got[engine] = contents(r, device_file)
    assert got["mmap"] == got["sync"]
    assert len(got["mmap"]) == size + (4 * KIB if target == "device" else 0)
    if target == "device":
        assert got["mmap"][size:] == b"\xab" * (4 * KIB)


@pytest.mark.parametrize("data", ["zeros", "dgen"])
def test_seq_write_extends_its_empty_file_and_the_data_reaches_the_device(tmp_path, data):
    s = spec(tmp_path, pattern="seq_write", writers=2, size_bytes=16 * MIB, block_size=256 * KIB,
             keep_files=True, data=DataSpec(data))
    r = run(s)
    m = r.metrics()
    assert m["device_write_bytes"] >= 0.9 * r.bytes_written, r.warnings  # msync + fsync in the window
    assert not any("reached the device" in w for w in r.warnings), r.warnings
    for f in r.info["files"]:
        raw = np.fromfile(f, dtype=np.uint8)
        assert raw.size == s.file_size
        assert (not raw.any()) if data == "zeros" else np.count_nonzero(raw) > raw.size // 2


@pytest.mark.parametrize("end_fsync, duration_s, says", [
    (False, None, "set end_fsync=true"),
    (True, 5.0, "the page cache absorbs the rewrites: drop duration_s"),
    (True, None, "end_fsync=true is set, yet the device saw fewer bytes"),
])
def test_mmap_writes_left_in_the_page_cache_are_flagged_without_suggesting_direct(tmp_path, end_fsync, duration_s,
                                                                                  says):
    from workloads.judge import judge
    from workloads.metrics import LatencyHistogram, Result

    written = 64 * MIB  # the device saw 5 MiB of it (synthetic: the machine's other traffic cannot blur it)
    result = Result(elapsed_s=2.0, bytes_read=0, bytes_written=written, ops_read=0, ops_written=64,
                    lat_read=LatencyHistogram(), lat_write=LatencyHistogram(), io_mode="mmap", device_read_bytes=0,
                    device_write_bytes=5 * MIB, info={"fs_type": "ext4"})
    valid, warnings = judge(spec(tmp_path, pattern="seq_write", end_fsync=end_fsync, duration_s=duration_s), result)
    line = next(w for w in warnings if "reached the device" in w)
    assert not valid and says in line and "direct=true" not in line, line


# ---- the issuer itself: copy vs touch, unaligned regions, SIGBUS -----------------------------

def issue(s, path, base, offsets):
    """Run `offsets` through an mmap issuer on `path` in this process; returns (issuer, result)."""
    fd = os.open(path, os.O_RDWR if s.writes else os.O_RDONLY)
    issuer = engines.get("mmap").issuer(s, fd, base)
    try:
        out = issuer.run(np.asarray(offsets, dtype=np.int64), 0, len(offsets), None, None, 0, Recorder(), Recorder(),
                         True, None, 0)
        return issuer, out
    finally:
        issuer.close()
        os.close(fd)


@pytest.mark.parametrize("access", ["copy", "touch"])
def test_copy_fills_the_read_buffer_and_touch_leaves_it(tmp_path, access):
    path = tmp_path / "f"
    data = np.random.default_rng(1).integers(1, 256, size=64 * KIB, dtype=np.uint8)
    data.tofile(path)
    s = Spec(pattern="seq_read", engine="mmap", access=access, block_size=KIB, writers=3, size_bytes=3 * 13 * KIB)
    base = 13 * KIB  # writer 1's region: not page-aligned, mapped from the page below it
    issuer, out = issue(s, path, base, [base + 5 * KIB])
    assert out[:5] == (1, 0, 1, 0, 0)
    read = bytes(issuer.rbuf[:KIB])
    assert read == (data[18 * KIB:19 * KIB].tobytes() if access == "copy" else bytes(KIB))
    assert issuer.counters()["minor_faults"] + issuer.counters()["major_faults"] >= 1


def test_an_op_outside_the_region_is_refused_not_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(16 * KIB))
    s = Spec(pattern="rand_read", engine="mmap", block_size=4 * KIB, writers=1, size_bytes=8 * KIB)
    _, out = issue(s, path, 0, [8 * KIB])
    assert out[0] == 0 and out[4] == errno.EINVAL


def test_a_file_truncated_under_the_mapping_fails_the_op_with_one_line(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * (64 * KIB))
    s = Spec(pattern="rand_read", engine="mmap", block_size=4 * KIB, writers=1, size_bytes=64 * KIB)
    fd = os.open(path, os.O_RDONLY)
    issuer = engines.get("mmap").issuer(s, fd, 0)
    try:
        os.truncate(path, 8 * KIB)  # another program shrinks the file: page 2 onward no longer exists
        offsets = np.array([0, 4 * KIB, 32 * KIB, 40 * KIB], dtype=np.int64)
        with pytest.raises(OSError) as e:
            issuer.run(offsets, 0, 4, None, None, 0, Recorder(), Recorder(), True, None, 0)
        assert e.value.errno == errno.EIO and "SIGBUS" in str(e.value) and "8192 bytes" in str(e.value)
        # the process lives on, and the pages that still exist still read
        assert issuer.run(offsets, 0, 2, None, None, 0, Recorder(), Recorder(), True, None, 0)[:5] == (2, 0, 2, 0, 0)
    finally:
        issuer.close()
        os.close(fd)


def test_a_region_beyond_a_foreign_file_is_refused_before_mapping(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(8 * KIB))
    s = Spec(pattern="seq_write", engine="mmap", block_size=4 * KIB, writers=1, size_bytes=16 * KIB,
             target="device", target_path=str(path), allow_overwrite=True)
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError, match="holds 8192 bytes, less than the 16384"):
            engines.get("mmap").issuer(s, fd, 0)
        assert path.stat().st_size == 8 * KIB  # never extended: not iosweep's file
    finally:
        os.close(fd)


# ---- bad input: one line, before any I/O ----------------------------------------------------

@pytest.mark.parametrize("kw, key, says", [
    (dict(direct=True), "direct", "engine=mmap cannot issue O_DIRECT: set direct=false"),
    (dict(access="foo"), "engine.access", "choose one of copy, touch"),
    (dict(iodepth=4), "iodepth", "needs an async engine"),
])
def test_bad_input_is_one_line_before_any_io(tmp_path, kw, key, says):
    with pytest.raises(ConfigError) as e:
        run(spec(tmp_path, pattern="rand_read", **kw))
    assert e.value.key == key and says in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "t").exists()  # nothing created


def test_engine_access_is_a_param_only_for_engine_mmap():
    schema.register()
    app.register_resolvers()

    def params(overrides):
        with initialize_config_dir(config_dir=str(schema.CONF), version_base="1.3"):
            full = compose("config", overrides=overrides, return_hydra_config=True)
        choices = OmegaConf.to_container(full.hydra.runtime.choices)
        with open_dict(full):
            del full["hydra"]
        hc = type("HC", (), {"runtime": type("R", (), {"choices": choices})()})()
        return app.params_of(full, hc), app.to_spec(full)

    p, s = params(["engine=mmap", "engine.access=touch"])
    assert p["engine"] == "mmap" and p["engine.access"] == "touch" and s.access == "touch"
    p, s = params(["engine=mmap"])
    assert p["engine.access"] == "copy"
    p, _ = params(["engine=sync"])
    assert "engine.access" not in p


# ---- the CLI, end to end --------------------------------------------------------------------

@pytest.mark.slow
def test_cli_mmap_rand_read_lands_faults_and_access_in_mlflow(tmp_path):
    p = run_cli(tmp_path, "engine=mmap", "pattern=rand_read", "block_kb=4", "size_mb=8", "engine.access=touch",
                "target.dir=outputs/scratch")
    assert p.returncode == 0, p.stderr
    client, runs = mlflow_runs(tmp_path)
    [r] = runs
    assert r.info.status == "FINISHED"
    assert r.data.params["engine"] == "mmap" and r.data.params["engine.access"] == "touch"
    assert r.data.tags["iosweep.io_mode"] == "mmap"
    m = r.data.metrics
    assert m["major_faults"] + m["minor_faults"] > 0 and m["ops_total"] == 2048
    p = run_cli(tmp_path, "engine=mmap", "direct=true", "size_mb=8")
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and errors == ["iosweep: error: direct=True: engine=mmap cannot issue O_DIRECT: "
                                            "set direct=false"], p.stderr
    assert len(mlflow_runs(tmp_path)[1]) == 1  # no run for the refused point


def test_the_printed_result_shows_the_engine_counters():
    from runner.console import result_table
    from workloads.metrics import LatencyHistogram, Result

    r = Result(elapsed_s=1.0, bytes_read=4096, bytes_written=0, ops_read=1, ops_written=0, lat_read=LatencyHistogram(),
               lat_write=LatencyHistogram(), io_mode="mmap", counters={"minor_faults": 3.0, "major_faults": 7.0})
    assert "engine       major_faults 7   minor_faults 3" in result_table(r)


@pytest.mark.slow
def test_fio_mmap_engine_says_io_mode_mmap_like_engine_mmap(tmp_path):
    """The same point through fio's mmap ioengine is page-cache I/O through a mapping too: its io_mode
    must say mmap, not buffered, so the two engines' runs are tagged alike."""
    r = run(spec(tmp_path, engine="fio", ioengine="mmap", pattern="rand_read", writers=1))
    assert r.io_mode == "mmap" and r.ops_read > 0
    r = run(spec(tmp_path, engine="fio", ioengine="psync", pattern="rand_read", writers=1))
    assert r.io_mode == "buffered"
