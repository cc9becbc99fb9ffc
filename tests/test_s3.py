"""target=s3 against a real S3 server (conftest.S3Server: SeaweedFS `weed mini`), no mocks.

Fast tests check what Spec.check refuses before anything is contacted; the slow ones run the CLI
as a user does, against the server, and look at the bucket and the MLflow runs afterwards."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import mlflow_runs, run_cli
from workloads import ConfigError, Spec, run
from workloads.spec import S3Spec

MiB = 1 << 20


def s3spec(**kw) -> Spec:
    s3 = S3Spec(**{"endpoint_url": "http://127.0.0.1:9", "bucket": "bench", **kw.pop("s3", {})})
    return Spec(**{"target": "s3", "s3": s3, "object_bytes": MiB, "size_bytes": 8 * MiB, **kw})


@pytest.mark.parametrize("kw, key", [
    ({"pattern": "rand_write"}, "pattern"),
    ({"pattern": "append"}, "pattern"),
    ({"engine": "fio"}, "engine"),
    ({"direct": True}, "direct"),
    ({"hint": "sequential", "pattern": "seq_read"}, "hint"),
    ({"files_per_writer": 4}, "files_per_writer"),
    ({"s3": {"bucket": "A_B"}}, "target.bucket"),
    ({"s3": {"bucket": "ab"}}, "target.bucket"),
    ({"s3": {"bucket": "a..b"}}, "target.bucket"),
    ({"s3": {"bucket": "x;rm -rf /"}}, "target.bucket"),
    ({"s3": {"prefix": "../up"}}, "target.prefix"),
    ({"s3": {"prefix": "/abs"}}, "target.prefix"),
    ({"s3": {"prefix": "a\nb"}}, "target.prefix"),
    ({"s3": {"endpoint_url": "http://user:pw@host:9000"}}, "target.endpoint_url"),
    ({"s3": {"endpoint_url": "file:///etc/passwd"}}, "target.endpoint_url"),
    ({"s3": {"endpoint_url": "http://host:9000/path"}}, "target.endpoint_url"),
    ({"s3": {"endpoint_url": "http://127.0.0.1:99999"}}, "target.endpoint_url"),
    ({"s3": {"endpoint_url": "http://127.0.0.1:abc"}}, "target.endpoint_url"),
    ({"s3": {"endpoint_url": "http://127.0.0.1:9000 "}}, "target.endpoint_url"),
    ({"s3": {"prefix": "back\\slash/"}}, "target.prefix"),
    ({"s3": {"prefix": "tab\tprefix"}}, "target.prefix"),
    ({"s3": {"region": ""}}, "target.region"),
    ({"object_bytes": 1 << 40, "size_bytes": 1 << 41, "pattern": "seq_read"}, "object_mb"),  # 1 TiB buffers
    ({"s3": {"access_key_id": "AKIA"}}, "target.secret_access_key"),
    ({"s3": {"max_connections": 0}}, "target.max_connections"),
    ({"s3": {"connect_timeout_s": 0}}, "target.connect_timeout_s"),
    ({"size_bytes": MiB, "writers": 2}, "size_mb"),
    ({"pattern": "rand_read", "block_size": 2 * MiB}, "block_kb"),
    ({"object_bytes": 64 * MiB, "size_bytes": 64 * MiB, "s3": {"multipart_bytes": 8 * MiB}}, "block_kb"),
])
def test_spec_refuses_what_s3_cannot_do(kw, key):
    with pytest.raises(ConfigError) as e:
        s3spec(**kw).check()
    assert e.value.key == key


def test_a_marker_of_another_boot_namespace_or_a_live_pid_is_not_a_dead_run():
    from workloads.targets.local import owner, owner_is_dead

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = owner(dead.pid) | {"start": 1}
    assert owner_is_dead(gone)
    assert not owner_is_dead(owner(os.getpid()))  # alive
    assert not owner_is_dead(gone | {"pidns": "pid:[1]"})  # a container sharing the hostname: its own pids
    assert not owner_is_dead(gone | {"boot": "another-boot"})  # another machine of that name, or a reboot
    assert not owner_is_dead(gone | {"pid": -1}) and not owner_is_dead(gone | {"pid": "7"})
    assert not owner_is_dead(["not", "a", "marker"])


def test_app_refuses_object_mb_where_it_means_nothing(tmp_path):
    from runner import app
    from test_config import compose_with

    for overrides, key in ((["target=s3", "target.bucket=bench", "pattern=metadata", "object_mb=4"], "object_mb"),
                           (["object_mb=4", "file_kb=4"], "file_kb"),
                           (["object_mb=4", "pattern=append"], "object_mb"),
                           (["object_mb=4", "block_kb=3072"], "object_mb")):
        with pytest.raises(ConfigError) as e:
            app.to_spec(compose_with(overrides))
        assert e.value.key == key, overrides
    spec = app.to_spec(compose_with(["object_mb=4", "size_mb=64", "writers=2"]))  # local: files of object_mb
    assert (spec.files_per_writer, spec.file_bytes) == (8, 4 * MiB)
    spec = app.to_spec(compose_with(["target=s3", "target.bucket=bench", "size_mb=64"]))  # null: 16 MiB objects
    assert spec.object_bytes == 16 * MiB and spec.objects_per_writer == 4


def test_spec_sizes_objects_from_size_and_writers():
    spec = s3spec(size_bytes=40 * MiB, writers=2, object_bytes=4 * MiB).check()
    assert spec.objects_per_writer == 5 and spec.file_size == 20 * MiB
    assert s3spec(pattern="metadata", files_per_writer=30).check().objects_per_writer == 30
    assert "secret" not in repr(s3spec(s3={"access_key_id": "AKIAX", "secret_access_key": "hunter22"}))


def test_unreachable_endpoint_is_one_line_within_seconds():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = s3spec(s3={"endpoint_url": f"http://127.0.0.1:{port}", "access_key_id": "k", "secret_access_key": "s"})
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        run(spec)
    assert time.monotonic() - t0 < 10
    assert e.value.key == "target.endpoint_url" and "cannot be reached" in str(e.value)


# --- against the server ---------------------------------------------------------------------------

def cli(s3_server, tmp_path, *args, bucket="iosweep", env=None, timeout=300):
    s3_server.make_bucket(bucket)
    tmp_path.mkdir(exist_ok=True)
    return run_cli(tmp_path, "target=s3", f"target.endpoint_url={s3_server.endpoint_url}", f"target.bucket={bucket}",
                   *args, env={**s3_server.env(), **(env or {})}, timeout=timeout)


def keys(s3_server, bucket="iosweep", prefix=""):
    c = s3_server.client()
    return [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]


def only_run(tmp_path):
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_seq_write_then_read_log_objects_ttfb_and_provenance(s3_server, tmp_path):
    r = cli(s3_server, tmp_path / "default", "size_mb=32")  # object_mb=null: 16 MiB objects
    assert r.returncode == 0, r.stderr
    assert only_run(tmp_path / "default").data.metrics["objects_total"] == 2
    r = cli(s3_server, tmp_path, "pattern=seq_write", "object_mb=1", "size_mb=16", "writers=2")
    assert r.returncode == 0, r.stderr
    run_ = only_run(tmp_path)
    m, tags, params = run_.data.metrics, run_.data.tags, run_.data.params
    assert run_.info.status == "FINISHED"
    assert m["objects_total"] == 16 and m["ops_total"] == 16 and m["bytes_total"] == 16 * MiB
    assert m["throughput_mib_s"] > 0 and m["lat_p99_us"] >= m["lat_p50_us"] > 0
    assert tags["target.s3_endpoint"] == s3_server.endpoint_url.split("//")[1]
    assert tags["target.s3_bucket"] == "iosweep" and "SeaweedFS" in tags["target.s3_server"]
    assert tags["iosweep.io_mode"] == "object" and params["object_mb"] == "1"
    assert "target.dir" not in params and "direct" not in params and "cache" not in params
    everything = json.dumps([m, tags, params]) + r.stdout + r.stderr
    assert s3_server.secret_key not in everything and s3_server.access_key not in everything
    assert not [k for k in keys(s3_server) if "iosweep-" in k]  # deleted: what it wrote, all of it

    r = cli(s3_server, tmp_path, "pattern=seq_read", "object_mb=2", "size_mb=16")
    assert r.returncode == 0, r.stderr
    _, runs = mlflow_runs(tmp_path)
    m = next(x for x in runs if x.data.params["pattern"] == "seq_read").data.metrics
    assert m["bytes_total"] == 16 * MiB and m["ops_total"] == 8 and m["objects_total"] == 8
    assert 0 < m["ttfb_p50_us"] <= m["lat_p50_us"] and m["ttfb_p99_us"] <= m["lat_max_us"]
    assert "ttfb us" in r.stdout
    assert not [k for k in keys(s3_server) if "iosweep-" in k]


@pytest.mark.slow
def test_ranged_reads_with_iodepth_and_mixed_and_multipart(s3_server, tmp_path):
    r = cli(s3_server, tmp_path, "pattern=rand_read", "object_mb=1", "block_kb=64", "size_mb=4", "writers=2",
            "iodepth=4")
    assert r.returncode == 0, r.stderr
    m = only_run(tmp_path).data.metrics
    assert m["ops_total"] == 64 and m["bytes_total"] == 4 * MiB  # a pass: as many 64 KiB ranges as the objects hold
    assert "objects_total" not in m and m["ttfb_p50_us"] > 0

    # a warm-up is left out of the window, repeats pool their requests (and TTFB histograms) exactly
    r = cli(s3_server, tmp_path / "mixed", "pattern=mixed", "pattern.read_pct=50", "object_mb=1", "size_mb=4",
            "ramp_s=0.5", "duration_s=1", "repeats=2")
    assert r.returncode == 0, r.stderr
    m = only_run(tmp_path / "mixed").data.metrics
    assert m["read_iops"] > 0 and m["write_iops"] > 0 and 1.9 < m["elapsed_s"] < 3 and m["repeats"] == 2
    assert m["ttfb_p50_us"] > 0 and m["objects_total"] == m["ops_total"]

    # 12 MiB objects above multipart_mb=8: parts of block_kb=6144, two per object, every part a request
    r = cli(s3_server, tmp_path / "mp", "pattern=seq_write", "object_mb=12", "size_mb=24", "target.multipart_mb=8",
            "block_kb=6144", "keep_files=true", "data.compress_ratio=2")
    assert r.returncode == 0, r.stderr
    m = only_run(tmp_path / "mp").data.metrics
    assert m["objects_total"] == 2 and m["ops_total"] == 4 and m["bytes_total"] == 24 * MiB
    kept = [k for k in keys(s3_server) if k.endswith(("/w0/o0", "/w0/o1"))]
    assert len(kept) == 2
    c = s3_server.client()
    body = c.get_object(Bucket="iosweep", Key=kept[0])["Body"].read()
    assert len(body) == 12 * MiB
    import zstandard

    ratio = len(body) / len(zstandard.ZstdCompressor(level=1).compress(body))
    assert 1.7 < ratio < 2.4  # dgen-py's compress_ratio=2 holds in the object
    assert f"s3://iosweep/{kept[0].rsplit('w0/', 1)[0]}" in r.stdout + json.dumps(only_run(tmp_path / "mp").data.tags)
    r = cli(s3_server, tmp_path / "after", "pattern=seq_write", "object_mb=1", "size_mb=1")
    assert r.returncode == 0 and len([k for k in keys(s3_server) if k in kept]) == 2  # kept on purpose: not stale
    prefix = kept[0].rsplit("w0/", 1)[0]
    c.delete_objects(Bucket="iosweep", Delete={"Objects": [{"Key": k} for k in keys(s3_server, prefix=prefix)]})


@pytest.mark.slow
def test_a_versioned_bucket_keeps_no_version_of_ours(s3_server, tmp_path):
    c = s3_server.client()
    bucket = s3_server.make_bucket("versioned")
    c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    r = cli(s3_server, tmp_path, "pattern=mixed", "object_mb=1", "size_mb=2", "duration_s=1", bucket=bucket)
    assert r.returncode == 0, r.stderr
    listed = c.list_object_versions(Bucket=bucket)
    assert listed.get("Versions", []) == [] and listed.get("DeleteMarkers", []) == []


@pytest.mark.slow
def test_metadata_rates_and_nothing_left(s3_server, tmp_path):
    r = cli(s3_server, tmp_path, "pattern=metadata", "files_per_writer=50", "writers=2", "file_kb=4")
    assert r.returncode == 0, r.stderr
    m = only_run(tmp_path).data.metrics
    for phase in ("put", "head", "list", "get", "delete"):
        assert m[f"{phase}_per_s"] > 0 and m[f"{phase}_ops"] == 100 and m[f"{phase}_p99_us"] > 0
    assert not [k for k in keys(s3_server) if "iosweep-" in k]


@pytest.mark.slow
def test_foreign_objects_stay_and_dead_runs_are_cleaned(s3_server, tmp_path):
    """A prefix with foreign objects is left alone; a run prefix whose owner died on this host loses
    exactly the keys iosweep names there, and one whose owner lives is untouched."""
    c = s3_server.client()
    bucket = s3_server.make_bucket("shared")
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def owner(pid):
        from workloads.targets.local import owner as owner_of

        return json.dumps(owner_of(pid) if pid == os.getpid() else {"host": host, "pid": pid, "start": 1})

    foreign = ["team/data.bin", "team/iosweep-notes.txt", "team/iosweep-1-0000000a/w0/o0",  # no marker: not ours
               "team/iosweep-2-0000000b/readme", "team/iosweep-3-0000000c/w0/o0"]
    stale = ["team/iosweep-2-0000000b/w0/o0", "team/iosweep-2-0000000b/w1/m3", "team/iosweep-2-0000000b/.iosweep-owner"]
    alive = ["team/iosweep-3-0000000c/.iosweep-owner"]
    for k in foreign + stale + alive:
        body = owner(dead.pid) if k in stale and k.endswith("owner") else owner(os.getpid()) if k in alive else b"x"
        c.put_object(Bucket=bucket, Key=k, Body=body)
    r = cli(s3_server, tmp_path, "pattern=seq_write", "object_mb=1", "size_mb=2", "target.prefix=team", bucket=bucket)
    assert r.returncode == 0, r.stderr
    assert "removed 3 object(s) left under team" in r.stdout
    assert sorted(keys(s3_server, bucket)) == sorted(foreign + alive)


@pytest.mark.slow
def test_bad_bucket_credentials_and_readonly_identity_are_one_line(s3_server, tmp_path):
    s3_server.make_bucket("iosweep")
    base = ["target=s3", f"target.endpoint_url={s3_server.endpoint_url}", "size_mb=2", "object_mb=1"]
    cases = [
        (["target.bucket=missing-bucket"], s3_server.env(), "target.bucket", "create_bucket=true"),
        (["target.bucket=iosweep"], {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret"},
         "target.access_key_id", "refused the credentials"),
        (["target.bucket=iosweep", f"target.access_key_id={s3_server.readonly_key}",
          f"target.secret_access_key={s3_server.readonly_secret}"], {}, "target.access_key_id", "refused"),
    ]
    for args, env, key, says in cases:
        r = run_cli(tmp_path, *base, *args, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"iosweep: error: {key}") and says in lines[0], r.stderr
        assert "Traceback" not in r.stderr and s3_server.readonly_secret not in r.stdout + r.stderr
    assert mlflow_runs(tmp_path)[1] == []  # bad input: no MLflow run

    r = run_cli(tmp_path, *base, "target.bucket=made-by-iosweep", "target.create_bucket=true", env=s3_server.env())
    assert r.returncode == 0, r.stderr
    assert "made-by-iosweep" in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]


def _wait_for(proc, text: str, timeout: float = 60) -> str:
    """Read proc's stdout until a line holds text."""
    seen, t0 = "", time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        seen += line
        if text in line:
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{text!r} not seen:\n{seen}")


def _start(s3_server, tmp_path, *args):
    s3_server.make_bucket("iosweep")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}
    env.update(s3_server.env(), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "runner", "target=s3", f"target.endpoint_url={s3_server.endpoint_url}",
                             "target.bucket=iosweep", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_server_stopped_mid_run_fails_in_one_line_and_the_next_run_cleans(s3_server, tmp_path):
    proc = _start(s3_server, tmp_path, "pattern=seq_write", "object_mb=1", "size_mb=8", "duration_s=60")
    try:
        _wait_for(proc, "MiB/s")  # the progress line: PUTs are going on
        s3_server.stop()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_server.start()
    assert proc.returncode == 2, out + err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "were not deleted" in lines[0], err
    assert "Traceback" not in err
    run_ = only_run(tmp_path)
    assert run_.info.status == "FAILED" and "cannot be reached" in run_.data.tags["iosweep.error"]
    assert [k for k in keys(s3_server) if "iosweep-" in k]  # the server was gone: its objects are still there
    r = cli(s3_server, tmp_path / "next", "pattern=seq_write", "object_mb=1", "size_mb=1")
    assert r.returncode == 0, r.stderr
    assert "left under / by earlier iosweep runs" in r.stdout
    assert not [k for k in keys(s3_server) if "iosweep-" in k]


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_and_its_objects_are_deleted(s3_server, tmp_path):
    import psutil

    proc = _start(s3_server, tmp_path, "pattern=seq_write", "object_mb=12", "target.multipart_mb=8", "block_kb=6144",
                  "size_mb=24", "duration_s=60")
    try:
        _wait_for(proc, "MiB/s")
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "iosweep-worker" in " ".join(
            p.cmdline()) or "multiprocessing" in " ".join(p.cmdline())]
        assert workers
        t0 = time.monotonic()
        while not s3_server.client().list_multipart_uploads(Bucket="iosweep").get("Uploads"):
            assert time.monotonic() - t0 < 30, "no multipart upload in flight"
        for w in workers:  # mid-upload: its parts stay on the server unless the upload is aborted
            w.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out + err
    assert "died" in err and "Traceback" not in err
    assert only_run(tmp_path).info.status == "FAILED"
    assert not [k for k in keys(s3_server) if "iosweep-" in k]  # the server was there: all of it deleted
    assert not s3_server.client().list_multipart_uploads(Bucket="iosweep").get("Uploads")  # aborted too


@pytest.mark.slow
def test_one_sweep_compares_file_and_object_storage(s3_server, tmp_path):
    s3_server.make_bucket("iosweep")
    r = run_cli(tmp_path, "-m", "target=local,s3", "pattern=seq_write,seq_read", "object_mb=1,4", "size_mb=8",
                f"target.endpoint_url={s3_server.endpoint_url}", "target.bucket=iosweep",
                "target.dir=" + str(tmp_path / "scratch"), env=s3_server.env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path)
    parents = [x for x in runs if x.data.tags.get("iosweep.sweep") == "true"]
    children = [x for x in runs if x not in parents]
    assert len(parents) == 1 and len(children) == 8
    assert all(x.info.status == "FINISHED" for x in runs)
    sweep_dir = next(tmp_path.glob("outputs/sweeps/*/*"))
    summary = (sweep_dir / "summary.md").read_text()
    assert "target=s3 is" in summary and "x target=local throughput" in summary
    assert "object size step" in summary or "MiB objects" in summary
    assert (sweep_dir / "throughput_vs_object_mb.png").stat().st_size > 10_000
