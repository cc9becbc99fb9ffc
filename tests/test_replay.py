"""Issue 11, trace replay: pattern=replay runs the ops of an fio iolog (v2, v3) or a CSV, with their
offsets, lengths and order; ops and bytes of the run equal the trace's; bad traces are one line."""
import hashlib
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import mlflow_runs, run_cli
from workloads import ConfigError, Spec, run
from workloads.replay import load

ENGINES = ["sync", "uring", "mmap"]


def csv_trace(path, ops, times=None):
    """ops: [(offset, length, op)]; times: µs per op, or None."""
    lines = ["offset,length,op" + (",time_us" if times else "")]
    for i, (off, length, op) in enumerate(ops):
        lines.append(f"{off},{length},{op}" + (f",{times[i]}" if times else ""))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def replay_spec(tmp_path, trace, **kw):
    base = dict(pattern="replay", trace=None if trace is None else str(trace), target_dir=str(tmp_path / "scratch"))
    base.update(kw)
    return Spec(**base)


MIXED = [(0, 4096, "read"), (65536, 16384, "write"), (8192, 12288, "read"), (200000, 1000, "read"),
         (4096, 8192, "write"), (131072, 65536, "read")]


def test_the_three_formats_parse_to_the_same_ops(tmp_path):
    v3 = tmp_path / "v3.log"
    v3.write_text("fio version 3 iolog\n0 /d/F add\n5 /d/F open\n"
                  + "".join(f"{10 + 7 * i} /d/F {op} {off} {ln}\n" for i, (off, ln, op) in enumerate(MIXED))
                  + "90 /d/F sync 0 0\n99 /d/F close\n")
    v2 = tmp_path / "v2.log"
    v2.write_text("fio version 2 iolog\n/d/F add\n/d/F open\n"
                  + "".join(f"/d/F {op} {off} {ln}\n" for off, ln, op in MIXED) + "/d/F close\n")
    csv = csv_trace(tmp_path / "t.csv", MIXED)
    traces = [load(str(p)) for p in (v3, v2, csv)]
    for t in traces:
        assert t.offsets.tolist() == [o for o, _, _ in MIXED]
        assert t.lengths.tolist() == [n for _, n, _ in MIXED]
        assert t.is_read.tolist() == [op == "read" for _, _, op in MIXED]
        assert t.end == 200000 + 1000 and t.max_length == 65536
    assert traces[0].times_ns.tolist() == [7000 * i for i in range(len(MIXED))]  # µs since the first op
    assert traces[0].skipped == 1 and traces[1].times_ns is None and traces[2].times_ns is None


@pytest.mark.parametrize("engine", ENGINES)
def test_a_replay_moves_the_traces_ops_and_bytes_on_iosweeps_own_files(tmp_path, engine):
    """Writes and reads of six different lengths: the bytes are the trace's, not ops x block_size."""
    trace = load(csv_trace(tmp_path / "t.csv", MIXED))
    r = run(replay_spec(tmp_path, tmp_path / "t.csv", engine=engine))
    assert (r.ops_read, r.ops_written) == (trace.reads, trace.writes) == (4, 2)
    assert r.bytes_read == int(trace.lengths[trace.is_read].sum()) == 4096 + 12288 + 1000 + 65536
    assert r.bytes_written == int(trace.lengths[~trace.is_read].sum()) == 16384 + 8192
    assert r.lat_read.total == 4 and r.lat_write.total == 2  # every op timed once


@pytest.mark.parametrize("engine", ENGINES)
def test_a_replay_reads_a_users_file_in_place(tmp_path, engine):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20))
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    ops = [(o, n, "read") for o, n in ((0, 4096), (500000, 70000), (1048576 - 8192, 8192), (12345, 1))]
    r = run(replay_spec(tmp_path, csv_trace(tmp_path / "t.csv", ops), target="file", target_path=str(data),
                        engine=engine, size_bytes=None))
    assert r.ops_read == 4 and r.bytes_read == sum(n for _, n, _ in ops)
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before


def test_original_timing_keeps_the_traces_gaps_and_reports_lateness(tmp_path):
    ops = [(i * 4096, 4096, "read") for i in range(4)]
    trace = csv_trace(tmp_path / "t.csv", ops, times=[1000, 31000, 61000, 91000])  # 30 ms apart
    fast = run(replay_spec(tmp_path, trace, cache="warm"))
    slow = run(replay_spec(tmp_path, trace, timing="original", cache="warm"))
    assert slow.ops_read == fast.ops_read == 4
    assert slow.elapsed_s >= 0.085  # the last op is due 90 ms after the first
    assert fast.elapsed_s < 0.085  # asap: back to back, milliseconds at most
    m = slow.metrics()
    assert {"replay_late_mean_us", "replay_late_max_us", "replay_ops_late_1ms"} <= m.keys()
    assert 0 <= m["replay_late_mean_us"] <= m["replay_late_max_us"]
    assert "replay_late_mean_us" not in fast.metrics()


@pytest.mark.slow
def test_a_log_fio_wrote_replays_with_fios_ops_and_bytes(tmp_path):
    """fio --write_iolog writes v3 (fio >= 3.31); its v2 form is the same lines without the timestamp."""
    f, log = tmp_path / "F", tmp_path / "fio.log"
    out = subprocess.run(["fio", "--name=t", f"--filename={f}", "--size=4M", "--bs=4k", "--rw=randread",
                          f"--write_iolog={log}", "--output-format=json"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]["read"]
    fio_ops, fio_bytes = job["total_ios"], job["io_bytes"]
    assert fio_ops == 1024 and fio_bytes == 4 << 20
    lines = log.read_text().splitlines()
    assert lines[0] == "fio version 3 iolog"
    v2 = tmp_path / "fio_v2.log"
    v2.write_text("fio version 2 iolog\n" + "".join(line.split(" ", 1)[1] + "\n" for line in lines[1:]))
    for trace, engine in ((log, "sync"), (v2, "uring"), (log, "mmap"), (log, "fio"), (v2, "fio")):
        r = run(replay_spec(tmp_path / engine, trace, engine=engine))
        assert (r.ops_read, r.bytes_read, r.ops_written) == (fio_ops, fio_bytes, 0), trace
    # and the file fio read, read in place
    for engine in ("sync", "fio"):
        r = run(replay_spec(tmp_path, log, target="file", target_path=str(f), size_bytes=None, engine=engine))
        assert (r.ops_read, r.bytes_read) == (fio_ops, fio_bytes), engine


def test_fio_gets_the_trace_as_an_iolog_with_its_waits():
    """engine=fio replays through read_iolog: iosweep writes the parsed trace as a v2 iolog on the replayed
    file, with `wait` lines (µs) only when timing=original."""
    from workloads.engines.fio import iolog_v2
    from workloads.replay import Trace

    trace = Trace(offsets=np.array([0, 8192]), lengths=np.array([4096, 1000]), is_read=np.array([True, False]),
                  times_ns=np.array([0, 2_500_000]), lines=np.array([1, 2]))
    assert iolog_v2(trace, "/s/job0.dat", timed=True).splitlines() == [
        "fio version 2 iolog", "/s/job0.dat add", "/s/job0.dat open", "/s/job0.dat read 0 4096",
        "/s/job0.dat wait 2500 0", "/s/job0.dat write 8192 1000", "/s/job0.dat close"]
    assert "wait" not in iolog_v2(trace, "/s/job0.dat", timed=False)


@pytest.mark.slow
@pytest.mark.parametrize("timing", ["asap", "original"])
def test_fio_replays_the_same_ops_and_keeps_the_traces_times(tmp_path, timing):
    """The same mixed trace through fio and through iosweep's sync engine: the same ops and bytes each way;
    with timing=original fio holds the ops to the trace's 300 ms span, with asap it does not."""
    ops = [(o, n, op, i * 60_000) for i, (o, n, op) in enumerate(MIXED)]  # 0..300 ms
    trace = tmp_path / "t.csv"
    trace.write_text("".join(f"{o},{n},{op},{t}\n" for o, n, op, t in ops))
    fio_run = run(replay_spec(tmp_path / "f", trace, engine="fio", timing=timing))
    mine = run(replay_spec(tmp_path / "s", trace, engine="sync", timing=timing))
    for r in (fio_run, mine):
        assert (r.ops_read, r.ops_written) == (4, 2)
        assert (r.bytes_read, r.bytes_written) == (4096 + 12288 + 1000 + 65536, 16384 + 8192)
    if timing == "original":
        assert fio_run.elapsed_s >= 0.29 and mine.elapsed_s >= 0.29
    else:
        assert fio_run.elapsed_s < 0.25


BAD_TRACES = [  # (text or None = missing, what the one line must name)
    (None, "cannot be read"),
    ("", "is empty"),
    ("offset,length,op\n", "holds no read or write ops"),
    ("0,4096,read\n4096,4096\n", "t.trace:2"),
    ("0,4096,read\n4096,-5,read\n", "t.trace:2"),
    ("0,4096,read\n0,4096,read\nx,4096,read\n", "t.trace:3"),
    ("0,4096,peek\n", "t.trace:1"),
    ("0,0,read\n", "length 0"),
    ("0,4096,read,10\n4096,4096,read\n", "t.trace:2"),
    ("0,4096,read,10\n4096,4096,read,5\n", "back in time"),
    ("fio version 3 iolog\n0 F add\n1 F read 0\n", "t.trace:3"),
    ("fio version 3 iolog\n0 F read 0 4096\n1 G read 0 4096\n", "2 files"),
    ("fio version 2 iolog\nF read 0 4096\nF frobnicate 0 4096\n", "t.trace:3"),
    ("fio version 1 iolog\n", "t.trace:1"),
    ("\x00\xff\xfe binary", "not a text file"),
]


@pytest.mark.parametrize("text, says", BAD_TRACES)
def test_a_bad_trace_is_one_error_naming_it(tmp_path, text, says):
    trace = tmp_path / "t.trace"
    if text is not None:
        trace.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        replay_spec(tmp_path, trace).check()
    assert e.value.key == "pattern.trace" and says in str(e.value), str(e.value)
    assert not (tmp_path / "scratch").exists()  # no I/O


def test_what_a_replay_cannot_do_is_refused_before_any_io(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"\0" * 8192)
    reads = csv_trace(tmp_path / "r.csv", [(0, 4096, "read"), (4096, 8192, "read")])
    writes = csv_trace(tmp_path / "w.csv", [(0, 4096, "write")])
    unaligned = csv_trace(tmp_path / "u.csv", [(0, 4096, "read"), (100, 4096, "read")])
    cases = [
        (dict(trace=reads, target="file", target_path=str(data), size_bytes=None), "pattern.trace", "beyond the end"),
        (dict(trace=writes, target="file", target_path=str(data), size_bytes=None), "pattern.trace", "write"),
        (dict(trace=reads, writers=2), "writers", "writers=1"),
        (dict(trace=reads, duration_s=1.0), "duration_s", "once"),
        (dict(trace=reads, timing="original"), "pattern.timing", "no times"),
        (dict(trace=reads, timing="soon"), "pattern.timing", "asap"),
        (dict(trace=unaligned, direct=True), "pattern.trace", "u.csv:3"),
        (dict(trace=reads, engine="fio", merge_kb=0), "merge_kb", "does not merge"),
        (dict(trace=None), "pattern.trace", "needs a trace"),
    ]
    for kw, key, says in cases:
        with pytest.raises(ConfigError) as e:
            run(replay_spec(tmp_path, kw.pop("trace"), **kw))
        assert e.value.key == key and says in str(e.value), (kw, str(e.value))
    assert not (tmp_path / "scratch").exists() or not list((tmp_path / "scratch").iterdir())
    assert data.read_bytes() == b"\0" * 8192


@pytest.mark.slow
def test_replay_from_the_command_line(tmp_path):
    trace = csv_trace(tmp_path / "t.csv", MIXED)
    p = run_cli(tmp_path, "pattern=replay", f"pattern.trace={trace}", "engine=uring")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    m = runs[0].data.metrics
    assert m["ops_total"] == len(MIXED) and m["bytes_total"] == sum(n for _, n, _ in MIXED)
    assert runs[0].data.params["pattern.trace"] == trace and "block_kb" not in runs[0].data.params
    bad = tmp_path / "bad.csv"
    bad.write_text("0,4096,read\nzero,4096,read\n")
    (tmp_path / "b").mkdir()
    p = run_cli(tmp_path / "b", "pattern=replay", f"pattern.trace={bad}")
    err = p.stderr.strip()
    assert p.returncode == 2 and err.count("\n") == 0 and "bad.csv:2" in err and "Traceback" not in err, err
    assert mlflow_runs(tmp_path / "b")[1] == []


def test_fio_replay_refuses_a_file_whose_path_has_a_blank(tmp_path):
    """The job file takes a path with spaces; fio's iolog lines do not (they split at blanks)."""
    spaced = tmp_path / "my data"
    spaced.mkdir()
    (spaced / "f.bin").write_bytes(b"\0" * 8192)
    trace = csv_trace(tmp_path / "r.csv", [(0, 4096, "read")])
    with pytest.raises(ConfigError) as e:
        run(replay_spec(tmp_path, trace, engine="fio", target="file", target_path=str(spaced / "f.bin"),
                        size_bytes=None))
    assert e.value.key == "target.path" and "splits its lines at blanks" in str(e.value)
    assert (spaced / "f.bin").read_bytes() == b"\0" * 8192
