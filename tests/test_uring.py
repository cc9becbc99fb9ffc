"""Issue 10 section 2: engine=uring, io_uring with a queue depth."""
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import mlflow_runs, run_cli
from workloads import ConfigError, Spec, WorkloadError, run, worker_loop
from workloads.engines import uring
from workloads.spec import PATTERNS
from workloads.worker import Recorder

BLOCK = 4096
MIB = 1 << 20


def uring_spec(tmp_path, **kw) -> Spec:
    base = dict(engine="uring", block_size=BLOCK, size_bytes=2 * MIB, writers=2, target_dir=str(tmp_path),
                read_pct=50)
    base.update(kw)
    return Spec(**base)


@pytest.mark.parametrize("iodepth", [1, 8])
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_counts_the_planned_ops(tmp_path, pattern, direct, iodepth):
    spec = uring_spec(tmp_path, pattern=pattern, direct=direct, iodepth=iodepth)
    r = run(spec)
    per_worker = spec.file_size // BLOCK
    assert r.ops_read + r.ops_written == per_worker * spec.writers
    assert r.bytes_read + r.bytes_written == per_worker * spec.writers * BLOCK
    assert r.lat_read.total == r.ops_read and r.lat_write.total == r.ops_written  # every op timed once
    assert (r.ops_read > 0) == spec.reads and (r.ops_written > 0) == spec.writes
    assert r.io_mode == ("direct" if direct else "buffered")
    assert r.counters["uring_enter_calls"] > 0  # the ring issued them, not pread/pwrite
    assert r.lat_read.max_ns >= r.lat_read.min_ns >= 0


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("pattern", ["seq_write", "rand_write"])
def test_written_bytes_are_the_same_as_the_sync_engine_writes(tmp_path, pattern, direct):
    """The data stream reaches the file intact at depth 8 (a larger write chunk, many writes in flight)."""
    files = {}
    for engine, depth in (("sync", 1), ("uring", 8)):
        r = run(uring_spec(tmp_path / engine, pattern=pattern, direct=direct, engine=engine, iodepth=depth,
                           writers=1, size_bytes=4 * MIB, keep_files=True))
        (path,) = r.info["files"]
        files[engine] = Path(path).read_bytes()
    assert len(files["uring"]) == 4 * MIB and files["uring"] == files["sync"]
    assert files["uring"].count(0) < len(files["uring"]) // 2  # dgen data, not an unwritten file


def stamped_file(path: Path, blocks: int) -> Path:
    """Block i holds i as 8-byte integers: each block tells where it was read from."""
    data = np.repeat(np.arange(blocks, dtype=np.int64), BLOCK // 8)
    path.write_bytes(data.tobytes())
    return path


def issuer_for(spec, path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    return fd, uring.UringEngine().issuer(spec, fd, 0)


@pytest.mark.parametrize("direct", [False, True])
def test_reads_return_what_is_on_disk_and_stay_in_flight_across_calls(tmp_path, direct):
    from workloads._hotloop import uring_inflight

    path = stamped_file(tmp_path / "f", 64)
    spec = Spec(pattern="rand_read", engine="uring", block_size=BLOCK, iodepth=8, size_bytes=64 * BLOCK)
    fd, issuer = issuer_for(spec, path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    rec_r, rec_w = Recorder(), Recorder()
    offsets = np.array([5, 17, 2, 63, 40, 9, 31, 0], dtype=np.int64) * BLOCK
    try:
        done, wi, n_r, n_w, err, ret = issuer.run(offsets, 0, 4, None, None, 0, rec_r, rec_w, True, None, 0)
        assert (done, err, n_r) == (4, 0, 0)  # the group is submitted and left in flight...
        assert uring_inflight(issuer.ring) == (4, 0)
        done, wi, n_r2, n_w, err, ret = issuer.run(offsets, 4, 4, None, None, 0, rec_r, rec_w, True, None, 0)
        assert (done, err) == (4, 0) and uring_inflight(issuer.ring)[0] == 8 - n_r2  # ...with the next one
        n_r3, n_w3 = issuer.drain(rec_r, rec_w, True)
        assert n_r2 + n_r3 == 8 and uring_inflight(issuer.ring) == (0, 0)
        assert int(rec_r.counts.sum()) == 8
        slots = np.frombuffer(issuer.rbuf, dtype=np.int64).reshape(8, BLOCK // 8)
        assert all((row == row[0]).all() for row in slots)  # whole blocks, each from one place
        assert sorted(slots[:, 0]) == sorted(offsets // BLOCK)  # each slot got its own op's block
    finally:
        issuer.close()
        os.close(fd)


def test_a_read_past_the_end_is_a_short_read(tmp_path):
    path = stamped_file(tmp_path / "f", 2)
    spec = Spec(pattern="rand_read", engine="uring", block_size=BLOCK, iodepth=4, size_bytes=8 * BLOCK)
    fd, issuer = issuer_for(spec, path)
    rec_r, rec_w = Recorder(), Recorder()
    try:
        offsets = np.array([0, 1, 5, 6], dtype=np.int64) * BLOCK
        done, wi, n_r, n_w, err, ret = issuer.run(offsets, 0, 4, None, None, 0, rec_r, rec_w, True, None, 0)
        if err == 0:  # the group was left in flight: the failure shows when it completes
            with pytest.raises(OSError, match="short I/O: 0 of 4096 bytes"):
                issuer.drain(rec_r, rec_w, True)
        else:
            assert (err, ret) == (-1, 0)  # as run_ops says it
    finally:
        issuer.close()
        os.close(fd)


def test_a_failed_op_reports_its_errno(tmp_path):
    path = stamped_file(tmp_path / "f", 4)
    spec = Spec(pattern="rand_write", engine="uring", block_size=BLOCK, iodepth=2, size_bytes=4 * BLOCK)
    fd, issuer = issuer_for(spec, path, os.O_RDONLY)  # a write to a read-only fd: EBADF in the CQE
    rec_r, rec_w = Recorder(), Recorder()
    chunk = bytearray(4 * BLOCK)
    try:
        offsets = np.arange(4, dtype=np.int64) * BLOCK
        done, wi, n_r, n_w, err, ret = issuer.run(offsets, 0, 4, None, chunk, 0, rec_r, rec_w, True, None, 0)
        assert err == errno.EBADF and n_w == 0
    finally:
        issuer.close()
        os.close(fd)


def test_the_worker_fails_on_a_short_read_in_one_line(tmp_path):
    """A file shorter than the plan (someone truncated it): OSError with run_ops' message."""
    path = stamped_file(tmp_path / "f", 4)
    spec = Spec(pattern="seq_read", engine="uring", block_size=BLOCK, iodepth=8, size_bytes=64 * BLOCK,
                writers=1)
    with pytest.raises(OSError, match=r"^\[Errno 5\] short I/O: 0 of 4096 bytes$"):
        worker_loop(spec, 0, str(path), False, lambda: None, prepared=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_mid_run_is_one_line(small_tmpfs):
    """The space check passes, then the disk fills while 8 writes are in flight: one WorkloadError line."""
    def fill():
        deadline = time.monotonic() + 60
        while not list(small_tmpfs.glob("iosweep-*")) and time.monotonic() < deadline:
            time.sleep(0.002)
        st = os.statvfs(small_tmpfs)
        with open(small_tmpfs / "someone-elses.dat", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - 4 * MIB)

    filler = threading.Thread(target=fill)
    filler.start()
    with pytest.raises(WorkloadError) as e:
        run(Spec(pattern="seq_write", engine="uring", iodepth=8, block_size=64 << 10, size_bytes=32 * MIB,
                 target_dir=str(small_tmpfs)))
    filler.join()
    assert "no space left on" in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in small_tmpfs.iterdir()] == ["someone-elses.dat"]


@pytest.mark.parametrize("key, value, says", [
    ("batch_submit", 9, "engine.batch_submit=9: must be at most iodepth=8"),
    ("batch_complete", 9, "engine.batch_complete=9: must be at most iodepth=8"),
    ("batch_submit", 0, "engine.batch_submit=0: must be a whole number >= 1"),
    ("batch_complete", -1, "engine.batch_complete=-1: must be a whole number >= 1"),
    ("batch_submit", "4", "engine.batch_submit='4': must be a whole number >= 1"),
    ("sqpoll", "yes", "engine.sqpoll='yes': must be true or false"),
])
def test_bad_batches_and_switches_are_refused_naming_the_key(tmp_path, key, value, says):
    with pytest.raises(ConfigError) as e:
        run(uring_spec(tmp_path, pattern="rand_read", iodepth=8, **{key: value}))
    assert says in str(e.value)
    assert list(tmp_path.iterdir()) == []  # before any file was created


def test_an_iodepth_beyond_memory_is_one_line_not_a_memory_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        run(uring_spec(tmp_path, pattern="rand_read", iodepth=32768, block_size=4 * MIB, size_bytes=8 * MIB))
    assert e.value.key == "iodepth" and "MiB of I/O buffers" in str(e.value) and "lower iodepth" in str(e.value)
    with pytest.raises(ConfigError, match="MiB of I/O buffers"):  # writes: the chunks of several queues' worth
        run(uring_spec(tmp_path, pattern="seq_write", iodepth=32768, block_size=4 * MIB, size_bytes=8 * MIB))


@pytest.mark.parametrize("err, says", [
    (errno.ENOSYS, "io_uring is not available (io_uring_setup: ENOSYS"),
    (errno.EPERM, "io_uring is not permitted here (io_uring_setup: EPERM"),
])
def test_io_uring_unavailable_is_one_line_pointing_at_engine_sync(tmp_path, monkeypatch, err, says):
    monkeypatch.setattr(uring, "_setup_errno", lambda depth, sqpoll: err)
    with pytest.raises(ConfigError) as e:
        run(uring_spec(tmp_path, pattern="rand_read"))
    assert e.value.key == "engine" and says in str(e.value) and "use engine=sync" in str(e.value)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_io_uring_disabled_by_sysctl_is_named(tmp_path, monkeypatch):
    switch = tmp_path / "io_uring_disabled"
    switch.write_text("2\n")
    monkeypatch.setattr(uring, "DISABLED_SYSCTL", str(switch))
    with pytest.raises(ConfigError, match=r"kernel.io_uring_disabled=2 .*; use engine=sync"):
        run(uring_spec(tmp_path / "scratch", pattern="rand_read"))
    switch.write_text("1\n")  # only privileged processes may: the kernel's EPERM is explained by it
    monkeypatch.setattr(uring, "_setup_errno", lambda depth, sqpoll: errno.EPERM)
    with pytest.raises(ConfigError, match=r"EPERM: kernel.io_uring_disabled=1, and this process is not privileged"):
        run(uring_spec(tmp_path / "scratch", pattern="rand_read"))


@pytest.mark.slow
def test_fixed_bufs_beyond_the_memlock_limit_is_one_line_naming_ulimit(tmp_path):
    """Registered buffers count against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK: without the
    capability and with a 64 KiB limit, the kernel refuses to register 32 x 4 KiB (measured: ENOMEM from
    io_uring_register(BUFFERS) mid-run, before this check)."""
    cmd = ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "prlimit", "--memlock=65536",
           sys.executable, "-m", "runner", "engine=uring", "engine.fixed_bufs=true", "pattern=rand_read",
           "iodepth=32", "block_kb=4", "size_mb=4", f"target.dir={tmp_path / 'scratch'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "engine.fixed_bufs" in lines[0] and "RLIMIT_MEMLOCK" in lines[0] \
        and "ulimit -l" in lines[0], proc.stderr
    assert not (tmp_path / "scratch").exists()
    ok = subprocess.run(["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "prlimit",
                         "--memlock=65536", sys.executable, "-c",
                         "from workloads.engines import uring; print(uring._memlock_limit())"],
                        capture_output=True, text=True, timeout=60)
    assert ok.stdout.strip() == "65536", ok.stderr
    assert uring._memlock_limit() is None  # root: CAP_IPC_LOCK, no limit applies


# A seccomp filter that makes io_uring_setup fail with ENOSYS, as a container runtime's default profile does,
# installed before the runner starts (it is inherited by everything the runner spawns).
SECCOMP_WRAPPER = r"""
import ctypes, errno, runpy, sys
class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
prog = (Filter * 4)(Filter(0x20, 0, 0, 0),  # load the syscall number
                    Filter(0x15, 0, 1, 425),  # io_uring_setup?
                    Filter(0x06, 0, 0, 0x00050000 | errno.ENOSYS),  # then fail it with ENOSYS
                    Filter(0x06, 0, 0, 0x7fff0000))  # else allow
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Prog(4, prog))) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_cli_io_uring_blocked_by_seccomp_exits_2_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}
    p = subprocess.run([sys.executable, "-c", SECCOMP_WRAPPER, "engine=uring", "pattern=rand_read", "size_mb=4"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iosweep: error: engine='uring': io_uring is not available"), \
        p.stderr
    assert "use engine=sync" in lines[0] and "Traceback" not in p.stderr
    assert not list((tmp_path / "outputs" / "scratch").glob("iosweep-*"))


@pytest.mark.slow
def test_cli_rand_read_at_depth_8_is_logged(tmp_path):
    p = run_cli(tmp_path, "engine=uring", "iodepth=8", "pattern=rand_read", "block_kb=4", "size_mb=8",
                "direct=true", "engine.batch_submit=4", "engine.fixed_files=true", "engine.fixed_bufs=true")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    (r,) = runs
    assert r.info.status == "FINISHED"
    params = r.data.params
    assert params["engine"] == "uring" and params["iodepth"] == "8" and params["engine.batch_submit"] == "4"
    assert params["engine.fixed_bufs"] == "True" and params["engine.sqpoll"] == "False"
    assert r.data.metrics["ops_total"] == 8 * MIB // BLOCK


@pytest.mark.slow
def test_cli_bad_batch_is_one_line(tmp_path):
    p = run_cli(tmp_path, "engine=uring", "engine.batch_submit=abc")
    assert p.returncode == 2 and p.stderr.strip() == \
        "iosweep: error: engine.batch_submit='abc': must be a whole number >= 1", p.stderr


@pytest.mark.parametrize("knobs", [
    dict(batch_submit=4, batch_complete=4),
    dict(batch_submit=8, batch_complete=2, fixed_files=True),
    dict(fixed_bufs=True),
    dict(fixed_files=True, fixed_bufs=True, sqpoll=True),
])
def test_batches_registered_files_buffers_and_sqpoll_issue_every_op(tmp_path, knobs):
    spec = uring_spec(tmp_path, pattern="mixed", direct=True, iodepth=8, **knobs)
    r = run(spec)
    assert r.ops_read + r.ops_written == spec.file_size // BLOCK * spec.writers
    assert r.ops_read > 0 and r.ops_written > 0 and r.lat_read.total + r.lat_write.total == r.ops_read + r.ops_written


@pytest.mark.parametrize("pattern, direct", [("rand_read", False), ("mixed", True)])
def test_time_based_with_ramp_and_repeats_times_every_counted_op(tmp_path, pattern, direct):
    """Ops in flight at the end of the ramp complete into the measured recorders; at the deadline,
    submission stops and what is in flight completes inside the window: timed ops == counted ops."""
    r = run(uring_spec(tmp_path, pattern=pattern, direct=direct, iodepth=8, duration_s=0.6, ramp_s=0.3, repeats=2))
    assert r.ops_read + r.ops_written > 0
    assert r.lat_read.total == r.ops_read and r.lat_write.total == r.ops_written
    assert r.bytes_read + r.bytes_written == (r.ops_read + r.ops_written) * BLOCK
    assert 1.0 <= r.elapsed_s < 10  # two windows of 0.6 s
