"""Issue 11, small files: files_per_writer and file_kb make "many small files vs one large file" one axis."""
import os
from pathlib import Path

import pytest

import workloads
from conftest import mlflow_runs, run_cli
from workloads import ConfigError, DataSpec, Spec
from workloads.engines import fio
from workloads.patterns import extent_chunks
from workloads.targets import local
from workloads.targets.base import Placement, mount_of

KIB = 1024


def small(tmp_path, **kw) -> Spec:
    return Spec(**{"pattern": "seq_read", "block_size": 16 * KIB, "writers": 2, "files_per_writer": 8,
                   "file_bytes": 64 * KIB, "target_dir": str(tmp_path / "scratch"), **kw})


@pytest.mark.parametrize("kw, key, says", [
    ({"file_bytes": 0}, "file_kb", "KiB >= 1"),
    ({"file_bytes": 512}, "file_kb", "KiB >= 1"),  # below 1 KiB
    ({"files_per_writer": 0}, "files_per_writer", ">= 1"),
    ({"files_per_writer": -3}, "files_per_writer", ">= 1"),
    ({"file_bytes": 24 * KIB}, "file_kb", "multiple of block_kb=16"),  # not whole blocks
    ({"file_bytes": None, "files_per_writer": 1024, "size_bytes": 8 << 20}, "files_per_writer",
     "smaller than block_kb"),  # 8 MiB / 2 / 1024 = 4 KiB files < 16 KiB blocks
    ({"target": "device", "target_path": "/dev/null"}, "files_per_writer", "target=local or target=tmpfs"),
    ({"target": "file", "target_path": "/etc/hostname", "size_bytes": None}, "files_per_writer", "target=local"),
])
def test_bad_small_file_knobs_name_their_key(tmp_path, kw, key, says):
    with pytest.raises(ConfigError) as e:
        small(tmp_path, **kw).check()
    assert e.value.key == key and says in e.value.allowed
    assert not (tmp_path / "scratch").exists()


def test_sizes_per_file_and_per_writer():
    s = Spec(block_size=4 * KIB, writers=2, size_bytes=16 << 20, files_per_writer=256).check()
    assert (s.per_file, s.file_size) == (32 * KIB, 8 << 20)  # file_kb null: size_mb stays the total
    s = Spec(block_size=4 * KIB, writers=2, files_per_writer=10, file_bytes=1 * KIB * 4).check()
    assert (s.per_file, s.file_size) == (4 * KIB, 40 * KIB)  # file_kb set: files x file_kb, size_mb aside
    one = Spec(block_size=4 * KIB, writers=3, size_bytes=10 << 20).check()
    assert one.file_size == (10 << 20) // 3 // (4 * KIB) * 4 * KIB  # files_per_writer=1: as before


def test_too_many_files_for_free_inodes_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    root = tmp_path / "target"
    root.mkdir()
    real = os.statvfs

    class FewInodes:  # the real filesystem's figures, but 100 free inodes
        def __init__(self, st):
            self.st = st
        f_files, f_favail = 1000, 100

        def __getattr__(self, name):
            return getattr(self.st, name)

    def few_inodes(path):
        return FewInodes(real(path)) if Path(path) == root else real(path)

    monkeypatch.setattr(local.os, "statvfs", few_inodes)
    spec = small(tmp_path, target_dir=str(root), files_per_writer=60)  # 120 files > 100 free inodes
    with pytest.raises(ConfigError) as e:
        workloads.run(spec)
    assert e.value.key == "files_per_writer" and "100 free inodes" in e.value.allowed
    assert list(root.iterdir()) == []
    workloads.run(small(tmp_path, target_dir=str(root), files_per_writer=40, engine="null"))  # null: no files


@pytest.mark.parametrize("pattern", ["seq_read", "rand_read", "seq_write", "rand_write"])
def test_a_run_creates_files_per_writer_x_writers_and_removes_them_all(tmp_path, monkeypatch, pattern):
    created = []
    create = local.LocalTarget.create_files

    def spy(self, placement):
        create(self, placement)
        created.extend(placement.files)

    monkeypatch.setattr(local.LocalTarget, "create_files", spy)
    spec = small(tmp_path, pattern=pattern)
    result = workloads.run(spec)
    assert sorted(p.name for p in created) == sorted(f"job{w}.{i}.dat" for w in range(2) for i in range(8))
    assert not any(p.exists() for p in created)
    assert list((tmp_path / "scratch").iterdir()) == []
    files, blocks = 2 * 8, 64 // 16
    assert result.ops_read + result.ops_written == files * blocks  # one pass: every block of every file once
    assert result.bytes_read + result.bytes_written == files * 64 * KIB
    if spec.writes:  # end_fsync reaches every file a worker wrote, not only its last (fio reopens each)
        assert result.valid, result.warnings


def test_written_files_hold_file_kb_each(tmp_path):
    result = workloads.run(small(tmp_path, pattern="seq_write", keep_files=True, writers=1, files_per_writer=5))
    sizes = [os.path.getsize(p) for p in result.info["files"]]
    assert sizes == [64 * KIB] * 5


def test_seq_visits_files_in_order_rand_permutes_within_each():
    spec = Spec(pattern="seq_read", block_size=4 * KIB, files_per_writer=3, file_bytes=16 * KIB)
    seq = [(i, list(o)) for i, o, _, _ in extent_chunks(spec, 0, [4, 4, 4])]
    assert seq == [(i, [0, 4096, 8192, 12288]) for i in range(3)]
    rnd = [(i, sorted(o)) for i, o, _, _ in extent_chunks(Spec(pattern="rand_read", block_size=4 * KIB), 0, [4, 4, 4])]
    assert rnd == seq  # each file in turn, each of its blocks once


def test_placement_extents_are_the_workers_files(tmp_path):
    p = Placement(tmp_path, mount_of(tmp_path), None, "buffered", files_per_writer=3)
    assert p.worker_extents(1, 3 * 8192) == [(tmp_path / f"job1.{i}.dat", 0, 8192) for i in range(3)]
    assert Placement(tmp_path, mount_of(tmp_path), None, "buffered").worker_extents(1, 8192) == \
        [(tmp_path / "job1.dat", 0, 8192)]


def test_fio_job_names_the_same_files(tmp_path):
    spec = small(tmp_path).check()
    p = Placement(tmp_path, mount_of(tmp_path), None, "buffered", files_per_writer=8)
    job = fio.job_file(spec, p, tmp_path)
    for line in ("nrfiles=8", f"filesize={64 * KIB}", "file_service_type=sequential", "openfiles=1",
                 "filename_format=job$jobnum.$filenum.dat", f"size={8 * 64 * KIB}", "numjobs=2"):
        assert line in job.splitlines()
    assert "nrfiles" not in fio.job_file(Spec(block_size=16 * KIB, size_bytes=1 << 20).check(), Placement(
        tmp_path, mount_of(tmp_path), None, "buffered"), tmp_path)  # one file: the job as before


def test_fio_reads_the_same_files_op_for_op(tmp_path):
    mine = workloads.run(small(tmp_path))
    theirs = workloads.run(small(tmp_path, engine="fio"))
    assert (theirs.ops_read, theirs.bytes_read) == (mine.ops_read, mine.bytes_read) == (16 * 4, 16 * 64 * KIB)
    assert list((tmp_path / "scratch").iterdir()) == []  # fio created no file of its own


def test_stale_scratch_with_small_files_and_metadata_dirs_is_removed(tmp_path):
    d = tmp_path / "iosweep-dead"
    (d / "md0").mkdir(parents=True)
    (d / "md0" / "f7").write_bytes(b"x")
    (d / "job0.3.dat").write_bytes(b"x")
    (d / local.OWNER_FILE).write_text('{"host": "%s", "pid": 999999999, "start": 1}' % local.socket.gethostname())
    assert local.remove_stale_scratch(tmp_path) == [d]
    assert not d.exists()


@pytest.mark.slow
def test_cli_sweeps_one_file_vs_many_at_the_same_size(tmp_path):
    p = run_cli(tmp_path, "-m", "pattern=seq_read", "block_kb=64", "size_mb=4", "files_per_writer=1,16")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    points = sorted(runs, key=lambda r: int(r.data.params.get("files_per_writer", 0)))
    children = [r for r in points if "files_per_writer" in r.data.params]
    assert [r.data.params["files_per_writer"] for r in children] == ["1", "16"]
    assert all(r.data.metrics["bytes_total"] == 4 << 20 and r.data.metrics["ops_total"] == 64 for r in children)
    assert list((tmp_path / "outputs" / "scratch").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("args, key", [("file_kb=0", "file_kb"), ("files_per_writer=0", "files_per_writer")])
def test_cli_bad_small_files_one_line_exit_2(tmp_path, args, key):
    p = run_cli(tmp_path, args)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith(f"iosweep: error: {key}=")
    assert not (tmp_path / "outputs" / "scratch").exists() or not any((tmp_path / "outputs" / "scratch").iterdir())


def test_summary_compares_each_file_count_against_one_file():
    from runner import summary

    def point(fpw, trial, mib_s):
        ov = [f"files_per_writer={fpw}", f"trial={trial}"]
        return {"status": "FINISHED", "valid": True, "error": None, "run_id": "-".join(ov), "overrides": ov,
                "params": {"files_per_writer": str(fpw), "trial": str(trial)},
                "metrics": {"throughput_mib_s": mib_s, "iops": mib_s * 256, "lat_p50_us": 1.0, "lat_p99_us": 2.0,
                            "cpu_util_pct": 5.0, "elapsed_s": 1.0}}

    pts = [point(f, t, v) for f, vs in ((1, (200, 220, 180)), (256, (100, 110, 90)), (4096, (20, 22, 18)))
           for t, v in zip((1, 2, 3), vs)]
    notes = summary.findings(*summary.rows(pts), [])
    assert ("Small files (all points): one file per writer 200.0 MiB/s; 256 files 100.0 MiB/s (0.50x), "
            "4096 files 20.0 MiB/s (0.10x)") in notes, notes


def test_the_sync_issuer_moves_to_the_next_file_engines_with_per_file_state_do_not(tmp_path):
    from workloads.engines import base, mmap as mmap_engine, null, uring

    spec = small(tmp_path).check()
    issuer = base.Issuer(spec, -1, 0, 64 * KIB)
    buf = issuer.rbuf
    assert issuer.retargetable and null.NullIssuer(spec, -1, 0).retargetable
    issuer.retarget(7, 0, 32 * KIB)
    assert (issuer.fd, issuer.length, issuer.rbuf) == (7, 32 * KIB, buf)  # no new buffer per file
    for cls in (mmap_engine.MmapIssuer, uring.UringIssuer):  # a mapping or a ring per file
        assert not object.__new__(cls).retargetable


def test_a_short_window_advises_the_knobs_that_size_it():
    from workloads.judge import judge
    from workloads.metrics import LatencyHistogram, Result

    r = Result(elapsed_s=0.01, bytes_read=1 << 20, bytes_written=0, ops_read=16, ops_written=0,
               lat_read=LatencyHistogram(), lat_write=LatencyHistogram(), io_mode="buffered")
    _, notes = judge(Spec(pattern="seq_read", block_size=64 * KIB, files_per_writer=4, file_bytes=256 * KIB), r)
    assert any("raise file_kb or files_per_writer" in n for n in notes), notes  # size_mb does not apply there


@pytest.mark.parametrize("kw", [{"hint": "sequential"}, {"prefetch_blocks": 4, "prefetch_after": 1}])
def test_hints_and_prefetch_apply_to_every_small_file(tmp_path, monkeypatch, kw):
    """A retargeted issuer is advised again per file; a prefetcher (per-file state) is made anew per file."""
    from workloads import hints

    advised = []
    real = hints.advise
    def spy(issuer, hint, *a, **k):
        advised.append(issuer.fd)
        real(issuer, hint, *a, **k)

    monkeypatch.setattr(hints, "advise", spy)
    from workloads.worker import worker_loop

    spec = small(tmp_path, writers=1, files_per_writer=5, **kw).check()
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(64 * KIB))
        paths.append((str(p), 0, 64 * KIB))
    out = worker_loop(spec, 0, None, False, lambda: None, prepared=True, extents=paths)
    assert out["ops_r"] == 5 * 4
    if "hint" in kw:
        assert len(advised) == 5  # once per file, the first before the window


@pytest.mark.parametrize("kw, says", [
    (dict(files_per_writer=1 << 26, file_bytes=4 * KIB, block_size=4 * KIB), "files_per_writer=67108864: needs"),
    (dict(file_bytes=1 << 50, block_size=4 * KIB), "file_kb=1099511627776: needs"),
    (dict(size_bytes=1 << 50), "size_mb=1073741824: needs"),
    (dict(pattern="format_read", data=DataSpec(format="parquet", rows=10 ** 11)), "data.rows=100000000000: needs"),
])
def test_too_large_for_the_disk_names_the_knob_that_sized_it(tmp_path, kw, says):
    """The space check names what the user set (file count, file size, table rows), not size_mb's default."""
    with pytest.raises(ConfigError) as e:
        workloads.run(Spec(**{"pattern": "seq_read", "target_dir": str(tmp_path / "t"), **kw}))
    assert str(e.value).startswith(says) and "MiB free: lower " + says.split("=")[0] in str(e.value), str(e.value)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").rglob("*.dat"))
