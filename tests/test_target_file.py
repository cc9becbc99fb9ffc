"""Issue 10 section 4: target=file reads existing files in place and never changes them."""
import errno
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

import workloads
from conftest import mlflow_runs, run_cli
from workloads import ConfigError, Spec
from workloads.engines import fio
from workloads.targets import file as file_target

BS = 64 << 10
# the in-process engines that read target=file: adding one here runs every case below with it
ENGINES = ["sync", "uring", "mmap"]
# (engine, direct) pairs: a mapping goes through the page cache, so engine=mmap reads buffered only
ENGINE_MODES = [(e, d) for e in ENGINES for d in (False, True) if not (e == "mmap" and d)]
# one file, a directory of 3 and a glob of the same 3: sizes with tails shorter than a block
SIZES = [1 << 20, (1 << 20) + 12345, (2 << 20) - 1]


def make_files(tmp_path: Path, layout: str) -> tuple[str, list[Path]]:
    """(target.path, the files it names) for layout one | dir | glob."""
    d = tmp_path / "data"
    d.mkdir()
    sizes = SIZES[:1] if layout == "one" else SIZES
    files = []
    for i, size in enumerate(sizes):
        p = d / f"part{i}.bin"
        with open(p, "wb") as f:
            f.write(os.urandom(size))
            os.fsync(f.fileno())  # files at rest, as a user's are: DONTNEED cannot drop dirty pages
        files.append(p)
    if layout != "one":
        (d / "notes.txt.skip").mkdir()  # a subdirectory: not read, not recursed into
    return {"one": str(files[0]), "dir": str(d), "glob": str(d / "part*.bin")}[layout], files


def fingerprint(paths) -> dict:
    """What must not change: bytes, size, mtime and ctime of each file, and what the directory holds."""
    out = {}
    for p in paths:
        st = p.stat()
        out[p] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    out["listing"] = sorted(os.listdir(paths[0].parent))
    return out


def working_set(files: list[Path], writers: int, bs: int = BS) -> int:
    blocks = sum(p.stat().st_size // bs for p in files)
    return blocks // writers * writers * bs


def spec(path, **kw) -> Spec:
    return Spec(**{"pattern": "seq_read", "target": "file", "target_path": str(path), "size_bytes": None,
                   "block_size": BS, **kw})


@pytest.mark.parametrize("engine, direct", ENGINE_MODES)
@pytest.mark.parametrize("layout", ["one", "dir", "glob"])
@pytest.mark.parametrize("writers", [1, 2])
@pytest.mark.parametrize("pattern", ["seq_read", "rand_read"])
def test_reads_the_files_in_place_and_changes_nothing(tmp_path, engine, layout, writers, direct, pattern):
    path, files = make_files(tmp_path, layout)
    before = fingerprint(files)
    r = workloads.run(spec(path, pattern=pattern, writers=writers, direct=direct, engine=engine))
    assert fingerprint(files) == before  # bytes, size, mtime, ctime, and no file added or removed
    want = working_set(files, writers)
    assert r.bytes_read == want and r.ops_read * BS == want and r.bytes_written == 0 and r.ops_written == 0
    assert r.io_mode == ("mmap" if engine == "mmap" else "direct" if direct else "buffered")
    unread = sum(p.stat().st_size for p in files) - want
    assert any(f"target=file: {unread} of" in w and "not read" in w for w in r.warnings) == (unread > 0)
    assert r.info["target_path"] == path
    assert not any("size_mb" in w for w in r.warnings)  # the files fix the size: no advice to raise it


def test_every_worker_reads_its_share_and_nothing_past_eof():
    files = [(Path(f"/f{i}"), size) for i, size in enumerate([10 * BS + 5, 3 * BS, BS - 1, 7 * BS])]
    share = 20 * BS // 3 // BS * BS  # 20 whole blocks over 3 writers: 6 blocks each, 2 left unread
    regions = file_target.regions(files, BS, share, 3)
    sizes = dict(files)
    assert [sum(n for _, _, n in ext) for ext in regions] == [share] * 3
    for ext in regions:
        for path, base, n in ext:
            assert base % BS == 0 and n % BS == 0 and n > 0 and base + n <= sizes[path]
    assert regions[0] == [(Path("/f0"), 0, 6 * BS)]
    assert regions[1] == [(Path("/f0"), 6 * BS, 4 * BS), (Path("/f1"), 0, 2 * BS)]
    assert regions[2] == [(Path("/f1"), 2 * BS, BS), (Path("/f3"), 0, 5 * BS)]  # f2 holds no whole block


def test_size_cap_reads_only_that_many_bytes(tmp_path):
    path, files = make_files(tmp_path, "dir")
    before = fingerprint(files)
    r = workloads.run(spec(path, pattern="rand_read", writers=2, size_bytes=1 << 20))
    assert r.bytes_read == 1 << 20 and fingerprint(files) == before


@pytest.mark.parametrize("engine", ENGINES)
def test_time_based_reads_over_several_files_per_worker(tmp_path, engine):
    path, files = make_files(tmp_path, "dir")
    before = fingerprint(files)
    r = workloads.run(spec(path, pattern="rand_read", writers=2, duration_s=0.5, engine=engine))
    assert r.ops_read > working_set(files, 2) // BS  # more than one pass: every worker went round its files
    assert fingerprint(files) == before


def test_cold_read_reaches_the_device_without_writing(tmp_path):
    path, files = make_files(tmp_path, "one")
    files[0].read_bytes()  # now in the page cache
    before = fingerprint(files)
    r = workloads.run(spec(path, cache="cold"))
    m = r.metrics()
    assert m["device_read_bytes"] >= 0.9 * r.bytes_read  # evicted (fadvise DONTNEED) though opened read-only
    assert fingerprint(files) == before
    r = workloads.run(spec(path, cache="warm"))
    assert fingerprint(files) == before and r.bytes_read == working_set(files, 1)


@pytest.mark.parametrize("pattern", ["seq_write", "rand_write", "mixed"])
def test_a_write_pattern_points_at_target_device(tmp_path, pattern):
    path, files = make_files(tmp_path, "one")
    before = fingerprint(files)
    with pytest.raises(ConfigError) as e:
        workloads.run(spec(path, pattern=pattern))
    assert e.value.key == "pattern" and "target=device" in str(e.value) and "allow_overwrite=true" in str(e.value)
    assert fingerprint(files) == before


def bad_inputs(tmp_path: Path) -> dict:
    """case -> (target.path, what the line says)"""
    (tmp_path / "empty").mkdir()
    (tmp_path / "subdirs_only" / "sub").mkdir(parents=True)
    (tmp_path / "small.bin").write_bytes(b"x" * (BS - 1))
    os.mknod(tmp_path / "blockdev", stat.S_IFBLK | 0o600, os.makedev(7, 0))  # a node only: never opened
    return {"missing": (str(tmp_path / "nope.bin"), "does not exist"),
            "empty_dir": (str(tmp_path / "empty"), "empty directory"),
            "glob_nothing": (str(tmp_path / "*.nope"), "matches nothing"),
            "no_regular_files": (str(tmp_path / "subdirs_only"), "no regular files"),
            "smaller_than_a_block": (str(tmp_path / "small.bin"), "0 whole block(s)"),
            "block_device": (str(tmp_path / "blockdev"), "target=device"),
            "unset": (None, "needs the path")}


@pytest.mark.parametrize("case", ["missing", "empty_dir", "glob_nothing", "no_regular_files", "smaller_than_a_block",
                                  "block_device", "unset"])
def test_bad_target_path_is_one_line_naming_it(tmp_path, case):
    path, says = bad_inputs(tmp_path)[case]
    with pytest.raises(ConfigError) as e:
        workloads.run(Spec(pattern="seq_read", target="file", target_path=path, size_bytes=None, block_size=BS))
    assert e.value.key == "target.path" and says in str(e.value) and "\n" not in str(e.value)


def test_an_unreadable_file_is_one_line_before_any_io(tmp_path, monkeypatch):
    path, files = make_files(tmp_path, "dir")
    real_open = os.open

    def refuse(p, flags, *a, **kw):  # the tests run as root, whom chmod 000 does not stop
        if Path(p) == files[1]:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(p, flags, *a, **kw)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError) as e:
        workloads.run(spec(path))
    assert e.value.key == "target.path" and str(files[1]) in str(e.value) and "Permission denied" in str(e.value)


def test_more_writers_than_blocks_or_a_cap_below_one_block_each(tmp_path):
    path, files = make_files(tmp_path, "one")
    with pytest.raises(ConfigError) as e:
        workloads.run(spec(path, writers=17))  # 16 blocks
    assert e.value.key == "target.path" and "writers=17" in str(e.value)
    with pytest.raises(ConfigError) as e:
        workloads.run(spec(path, writers=2, size_bytes=BS))
    assert e.value.key == "target.size_mb"


def test_params_log_target_path_and_not_what_does_not_apply():
    from test_ecosystem import params

    p = params(["target=file", "target.path=/data/model.bin", "pattern=seq_read"])
    assert p["target"] == "file" and p["target.path"] == "/data/model.bin"
    assert not {"target.dir", "size_mb", "target.allow_overwrite", "data.compress_ratio"} & set(p)
    assert params(["target=file", "target.path=/d", "target.size_mb=64"])["target.size_mb"] == "64"


# ---- engine=fio: one file, with fio's own --readonly guard -------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["seq_read", "rand_read"])
def test_fio_reads_one_file_in_place(tmp_path, pattern):
    path, files = make_files(tmp_path, "one")
    before = fingerprint(files)
    r = workloads.run(spec(path, pattern=pattern, writers=2, direct=True, engine="fio"))
    assert fingerprint(files) == before and r.bytes_read == working_set(files, 2) and r.bytes_written == 0
    assert "readonly" not in r.attachments["fio_job.fio"]  # a command-line option: fio refuses it in a job


@pytest.mark.slow
def test_fio_itself_refuses_to_write_the_file(tmp_path):
    """The guard holds even if iosweep's own refusal were bypassed: fio --readonly drops a write job."""
    path, files = make_files(tmp_path, "one")
    before = fingerprint(files)
    s = spec(path)
    placement = file_target.FileTarget(file_target.resolve(s)).prepare()
    import dataclasses

    writing = dataclasses.replace(file_target.resolve(s), pattern="rand_write")  # never checked: on purpose
    job = tmp_path / "job.fio"
    job.write_text(fio.job_file(writing, placement, tmp_path))
    cmd = fio.command(writing, job)
    assert "--readonly" in cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "read-only mode" in p.stdout + p.stderr
    assert fingerprint(files) == before


def test_fio_refuses_several_files_in_one_line(tmp_path):
    path, files = make_files(tmp_path, "dir")
    with pytest.raises(ConfigError) as e:
        workloads.run(spec(path, engine="fio"))
    assert e.value.key == "target.path" and "one file" in str(e.value)


# ---- the CLI ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_reads_a_file_and_logs_target_path(tmp_path):
    path, files = make_files(tmp_path, "one")
    before = fingerprint(files)
    p = run_cli(tmp_path, "target=file", f"target.path={path}", "pattern=seq_read", "block_kb=64")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["target.path"] == path and "target.dir" not in run.data.params
    assert run.data.metrics["bytes_total"] == working_set(files, 1) and run.data.params["pattern"] == "seq_read"
    assert fingerprint(files) == before


@pytest.mark.slow
@pytest.mark.parametrize("args, key", [(["pattern=seq_write"], "pattern"), (["size_mb=4"], "size_mb")])
def test_cli_refuses_in_one_line(tmp_path, args, key):
    path, files = make_files(tmp_path, "one")
    before = fingerprint(files)
    p = run_cli(tmp_path, "target=file", f"target.path={path}", "pattern=seq_read", *args)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and f"error: {key}=" in p.stderr
    assert "Traceback" not in p.stderr and mlflow_runs(tmp_path)[1] == []
    assert fingerprint(files) == before
