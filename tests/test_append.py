"""Issue 12, seed 004: pattern=append (records, buffering, durability policy), fio's view, the append_log preset."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import workloads
from conftest import mlflow_runs, run_cli
from runner import summary
from workloads import ConfigError, Spec
from workloads.append import expected_fsyncs, records_per_writer
from workloads.data import DgenSource
from workloads.spec import PAGE

RB = 1000  # a record size that is no divisor of a page, a chunk or a buffer: every tail path is taken


def ap(tmp_path, **kw) -> Spec:
    base = dict(pattern="append", record_bytes=RB, size_bytes=1 << 20, writers=2, target_dir=str(tmp_path / "s"),
                keep_files=True)
    return Spec(**{**base, **kw})


def expected_bytes(spec: Spec, worker: int) -> bytes:
    """The records worker `worker` appends, cut from its data stream as the loop cuts them."""
    src = DgenSource(dataclasses.replace(spec, block_size=max(spec.record_bytes, PAGE)), worker, spec.file_size)
    want, out = records_per_writer(spec) * spec.record_bytes, b""
    try:
        chunk = src.current_chunk()
        while len(out) < want:
            whole = len(chunk) // spec.record_bytes * spec.record_bytes
            out += bytes(chunk[:whole])
            chunk = src.advance()
    finally:
        src.close()
    return out[:want]


# ---- the loop: counts by the policy's arithmetic, bytes exactly the records -------------------------------

@pytest.mark.parametrize("kw", [
    dict(),  # unbuffered, fsync=end (end_fsync=true)
    dict(end_fsync=False),  # none
    dict(append_fsync="every", append_fsync_every=7),
    dict(append_fsync="every", append_fsync_every=7, append_fsync_call="fdatasync", append_mode="buffered",
         append_buffer_kb=4),
    dict(append_fsync="every", append_fsync_every=7, append_mode="buffered", append_buffer_kb=8, direct=True),
    dict(append_mode="buffered", direct=True),  # a partial tail padded to 4 KiB, the file cut back
    dict(append_fsync="every", append_fsync_every=100, append_mode="mmap"),
    dict(append_fsync="dsync", append_mode="buffered", append_fallocate=True),
], ids=["unbuffered-end", "none", "every7", "buffered-fdatasync7", "direct-every7", "direct-end", "mmap-every100",
        "dsync-fallocate"])
def test_records_fsyncs_and_file_bytes_follow_the_policy(tmp_path, kw):
    spec = ap(tmp_path, **kw)
    result = workloads.run(spec)
    m = result.metrics()
    per = records_per_writer(spec)
    assert m["records_total"] == spec.writers * per
    assert result.bytes_written == spec.writers * per * RB
    assert m["fsyncs"] == spec.writers * expected_fsyncs(spec, per)  # the C loop's counter...
    assert result.lat_fsync.total == m["fsyncs"]  # ...and its histogram, merged over the workers exactly
    if kw.get("append_mode") == "buffered":  # a write call per full buffer (and per sync's flush): far fewer
        assert m["append_write_calls"] < m["records_total"] / 3
    else:
        assert m["append_write_calls"] == m["records_total"]
    assert result.lat_write.total == m["append_write_calls"]
    assert m["records_per_s"] == pytest.approx(m["records_total"] / result.elapsed_s)
    for w, path in enumerate(sorted(result.info["files"])):  # what is on disk: the records, nothing else
        assert Path(path).read_bytes() == expected_bytes(spec, w), path


def test_a_shared_log_holds_every_writers_records(tmp_path):
    spec = ap(tmp_path, append_shared_file=True, writers=3)
    result = workloads.run(spec)
    assert len(result.info["files"]) == 1  # one log: O_APPEND, the kernel places each record at its end
    assert Path(result.info["files"][0]).stat().st_size == 3 * records_per_writer(spec) * RB
    assert "one shared file (O_APPEND)" in result.info["append"]


def test_duration_truncates_only_its_own_log_and_keeps_going(tmp_path):
    spec = ap(tmp_path, writers=1, size_bytes=64 << 10, duration_s=0.5, append_mode="buffered", end_fsync=False,
              keep_files=False)
    result = workloads.run(spec)
    m = result.metrics()
    assert m["file_restarts"] >= 1 and m["records_total"] > records_per_writer(spec)
    assert not any((tmp_path / "s").rglob("*.dat"))  # removed afterwards


def test_interval_syncs_by_the_clock(tmp_path):
    spec = ap(tmp_path, writers=1, duration_s=0.6, append_fsync="interval", append_fsync_interval_ms=100,
              keep_files=False)
    m = workloads.run(spec).metrics()
    # at most one per 100 ms of the 600 ms window (+1 for the edges), at least one: a loaded disk slows each sync
    assert 1 <= m["fsyncs"] <= 7, m["fsyncs"]


# ---- bad input: one line naming the key, before any I/O ----------------------------------------------------

@pytest.mark.parametrize("kw, key", [
    (dict(record_bytes=0), "record_bytes"), (dict(record_bytes=-4), "record_bytes"),
    (dict(record_bytes=None), "record_bytes"),
    (dict(record_bytes=(1 << 20) // 2 + 1), "record_bytes"),  # larger than a writer's share (size / writers)
    (dict(append_fsync="every"), "append.fsync_every"), (dict(append_fsync="every", append_fsync_every=0),
                                                         "append.fsync_every"),
    (dict(append_fsync="interval", append_fsync_interval_ms=-5), "append.fsync_interval_ms"),
    (dict(append_fsync="interval"), "append.fsync_interval_ms"),
    (dict(direct=True, append_mode="buffered", append_buffer_kb=6), "append.buffer_kb"),
    (dict(direct=True), "direct"),  # unbuffered records are not 4 KiB writes
    (dict(append_fsync="end", end_fsync=False), "append.fsync"),
    (dict(append_mode="mmap", append_fsync="dsync"), "append.fsync"),
    (dict(append_mode="mmap", append_shared_file=True), "append.shared_file"),
    (dict(append_mode="fast"), "append.mode"), (dict(append_fsync_call="sync"), "append.fsync_call"),
    (dict(engine="uring"), "engine"), (dict(ramp_s=1.0), "ramp_s"), (dict(files_per_writer=2), "files_per_writer"),
    (dict(pattern="seq_write", record_bytes=128), "record_bytes"),  # append knobs elsewhere: refused, not ignored
    (dict(pattern="seq_write", record_bytes=None, append_mode="buffered"), "append.mode"),
    (dict(engine="fio", append_mode="buffered"), "append.mode"),
    (dict(engine="fio", append_fsync="interval", append_fsync_interval_ms=5), "append.fsync"),
    (dict(engine="fio", append_shared_file=True), "append.shared_file"),
])
def test_bad_input_names_the_key(tmp_path, kw, key):
    with pytest.raises(ConfigError) as e:
        workloads.checked(ap(tmp_path, **kw))
    assert str(e.value).startswith(key + "="), str(e.value)
    assert not (tmp_path / "s").exists()  # nothing created


@pytest.mark.slow
@pytest.mark.parametrize("args, key", [
    (["record_bytes=0"], "record_bytes"), (["append.fsync=every"], "append.fsync_every"),
    (["append.fsync=interval", "append.fsync_interval_ms=-5"], "append.fsync_interval_ms"),
    (["end_fsync=true", "append.fsync=every", "append.fsync_every=10"], "end_fsync"),
    (["direct=true", "append.mode=buffered", "append.buffer_kb=6"], "append.buffer_kb"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_run(tmp_path, args, key):
    p = run_cli(tmp_path, "pattern=append", "size_mb=1", f"target.dir={tmp_path / 's'}", *args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"iosweep: error: {key}="), p.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists() and not (tmp_path / "s").exists()


# ---- the fsync count against strace, on a real CLI run -----------------------------------------------------

CALL = re.compile(r"\b(fsync|fdatasync)\(\d+<[^>]*/job\d+\.dat>")  # a call on a log file (strace -y), not sqlite's


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("args, call", [
    (["writers=2", "append.fsync=every", "append.fsync_every=10", "append.fsync_call=fdatasync"], "fdatasync"),
    (["append.mode=buffered", "append.buffer_kb=4", "append.fsync=every", "append.fsync_every=3"], "fsync"),
    (["duration_s=0.4", "append.fsync=interval", "append.fsync_interval_ms=20", "size_mb=1"], "fsync"),
])
def test_fsyncs_reported_are_the_fsyncs_strace_saw(tmp_path, args, call):
    """The run's `fsyncs` equals the calls strace counts on the log files in every process, and (where the
    policy says how many) the policy's arithmetic: a loop that skipped or doubled a sync fails here."""
    trace = tmp_path / "strace.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}  # as run_cli
    p = subprocess.run(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace), sys.executable, "-m",
                        "runner", "pattern=append", "record_bytes=512", "size_mb=2", f"target.dir={tmp_path / 's'}",
                        *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    seen = [m.group(1) for m in CALL.finditer(trace.read_text())]
    result = json.loads(next((tmp_path / "outputs" / "runs").rglob("result.json")).read_text())
    fsyncs = result["metrics"]["fsyncs"]
    assert fsyncs > 0 and len(seen) == fsyncs, (len(seen), fsyncs)
    assert set(seen) == {call}
    if "append.fsync=every" in args:
        writers = 2 if "writers=2" in args else 1
        every = int(next(a for a in args if a.startswith("append.fsync_every=")).split("=")[1])
        assert fsyncs == writers * ((2 << 20) // writers // 512 // every)
    _, runs = mlflow_runs(tmp_path)
    assert runs[0].data.metrics["fsyncs"] == fsyncs and runs[0].data.metrics["records_per_s"] > 0
    assert runs[0].data.tags["mlflow.runName"].startswith("append 512 B ")  # records, not block_kb, name it
    assert "block_kb" not in runs[0].data.params and runs[0].data.params["record_bytes"] == "512"


# ---- fio: the same point ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_runs_the_same_point_with_its_own_fsync_arithmetic(tmp_path):
    spec = ap(tmp_path, engine="fio", append_fsync="every", append_fsync_every=10, keep_files=False)
    result = workloads.run(spec)
    m = result.metrics()
    per = records_per_writer(spec)
    assert m["records_total"] == spec.writers * per and result.bytes_written == spec.writers * per * RB
    assert m["fsyncs"] == spec.writers * ((per - 1) // 10)  # fio syncs before the write after every 10th
    job = result.attachments["fio_job.fio"]
    for line in (f"bs={RB}", "rw=write", "fsync=10", "file_append=1", "refill_buffers=1"):  # fresh records
        assert line in job.splitlines(), job
    dsync = workloads.run(ap(tmp_path, engine="fio", append_fsync="dsync", keep_files=False))
    assert "sync=dsync" in dsync.attachments["fio_job.fio"].splitlines() and dsync.metrics()["fsyncs"] == 0


# ---- the sweep's findings ---------------------------------------------------------------------------------

def _point(fsync, rps, rb=128, mode="unbuffered", valid=True):
    return {"status": "FINISHED", "valid": valid, "error": None, "run_id": f"r{fsync}{rb}{mode}",
            "overrides": [f"record_bytes={rb}", f"append.mode={mode}", f"append.fsync={fsync}"],
            "metrics": {"throughput_mib_s": rps * rb / 2**20, "iops": rps, "elapsed_s": 1.0, "records_per_s": rps,
                        "fsyncs": 0.0 if fsync in ("none", "dsync") else 10.0, "fsync_p99_us": 300.0},
            "params": {"pattern": "append", "append.fsync": fsync, "append.fsync_every": "100",
                       "record_bytes": str(rb), "append.mode": mode}}


def test_findings_state_records_per_cell_and_each_policys_cost_against_end():
    pts = [_point("end", 100000.0), _point("every", 12000.0), _point("dsync", 5000.0), _point("none", 150000.0),
           _point("end", 900000.0, mode="buffered"), _point("every", 90000.0, mode="buffered", valid=False),
           _point("end", 50000.0, rb=1024)]
    notes = summary.findings(*summary.rows(pts), [])
    assert any(n.startswith("Append record_bytes=128 append.mode=unbuffered append.fsync=every: 12,000 records/s")
               for n in notes), notes
    cost = next(n for n in notes if n.startswith("Durability cost (record_bytes=128 append.mode=unbuffered)"))
    assert "fsync=every/100: 0.12x of fsync=end records/s (12,000 vs 100,000)" in cost
    assert "fsync=dsync: 0.05x" in cost and "fsync=none: 1.50x" in cost
    # the invalid cell is left out: buffered has nothing but fsync=end to show
    assert not any("90,000" in n for n in notes), notes


def test_help_lists_the_append_knobs():
    from runner.helptext import knob_help

    text = knob_help()
    for knob in ("record_bytes=1024", "append.mode=unbuffered", "append.fsync=null", "append.fsync_every=null",
                 "append.fsync_interval_ms=null", "append.fsync_call=fsync", "append.shared_file=false",
                 "append.fallocate=false", "append.buffer_kb=64"):
        assert f"  {knob} " in text, knob
