"""Issue 9: never write, copy or run what is not ours."""
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from workloads import ConfigError, Spec
from workloads.engines import fio as fio_engine
from workloads.spec import FIO_IOENGINES, MAX_SEED
from workloads.targets.base import Mount, Placement

MIB = 1 << 20
INJECTION = "psync\n[x]\ndirectory={dir}\nfilename=sentinel.txt\nrw=write\nsize=4k\n[y]"


def placement(scratch=None, shared_path=None) -> Placement:
    return Placement(Path(scratch) if scratch else None, Mount("/", "ext4", "", "", "0:0"), None, "buffered",
                     shared_path=Path(shared_path) if shared_path else None)


def fio_spec(**kw) -> Spec:
    return Spec(**dict(dict(engine="fio", pattern="rand_read", block_size=4096, size_bytes=4 * MIB), **kw))


# --- fio job file ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ioengine", [INJECTION.format(dir="/"), "cpuio", "exec", "psync ", 1])
def test_ioengine_outside_the_fixed_set_is_refused(ioengine):
    with pytest.raises(ConfigError) as e:
        fio_spec(ioengine=ioengine).check()
    assert e.value.key == "engine.ioengine" and "choose one of psync" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):  # job_file guards a Spec that was never checked
        fio_engine.job_file(fio_spec(ioengine=ioengine), placement("/tmp/s"), Path("/tmp/l"))


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64, 2**64 + 5, 1.5, True, "1"])
def test_seed_outside_what_both_engines_accept_is_refused(seed):
    with pytest.raises(ConfigError) as e:
        fio_spec(seed=seed).check()
    assert e.value.key == "seed" and "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["/tmp/a\n[x]", "/tmp/a:/etc", "/tmp/$HOME", "/tmp/a;b", "/tmp/a#b", "/tmp/a]",
                                 "/tmp/a\\b", "/tmp/a ", "/tmp/a\rb"])
def test_paths_fio_would_misparse_are_refused(bad):
    with pytest.raises(ConfigError) as e:
        fio_engine.job_file(fio_spec(), placement(scratch=bad), Path("/tmp/l"))
    assert e.value.key == "target.dir"
    with pytest.raises(ConfigError) as e:
        fio_engine.job_file(fio_spec(target="device"), placement(shared_path=bad), Path("/tmp/l"))
    assert e.value.key == "target.path"
    with pytest.raises(ConfigError) as e:  # refused before the target creates anything
        fio_engine.FioEngine().check(fio_spec(target_dir=bad))
    assert e.value.key == "target.dir"


@pytest.mark.parametrize("read_pct", ["50\n[x]\nfilename=/etc/x", "50]", 50.5, True])
def test_job_file_takes_numbers_only_as_numbers(read_pct):
    """A Spec built without check(): job_file itself refuses anything but an int."""
    spec = fio_spec(pattern="mixed", read_pct=read_pct)
    with pytest.raises((TypeError, ValueError)):
        fio_engine.job_file(spec, placement("/tmp/s"), Path("/tmp/l"))


@pytest.mark.parametrize("ioengine", FIO_IOENGINES)
def test_job_file_with_the_largest_seed_parses_in_fio(tmp_path, ioengine):
    spec = fio_spec(seed=MAX_SEED, ioengine=ioengine, pattern="mixed", read_pct=70, duration_s=1.5, ramp_s=0.5,
                    writers=2).check()
    job = fio_engine.job_file(spec, placement(tmp_path / "scratch dir"), tmp_path)
    assert [line for line in job.splitlines() if line.startswith("[")] == ["[global]", "[iosweep]"]
    assert f"randseed={MAX_SEED + 1}" in job
    (tmp_path / "job.fio").write_text(job)
    p = subprocess.run(["fio", "--parse-only", str(tmp_path / "job.fio")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_fio_job_injection_from_the_command_line_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sentinel = foreign / "sentinel.txt"
    sentinel.write_text("precious\n")
    work = tmp_path / "work"
    work.mkdir()
    attack = "engine.ioengine='" + INJECTION.format(dir=foreign) + "'"
    p = run_cli(work, "engine=fio", attack, "size_mb=4")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "engine.ioengine=" in p.stderr, p.stderr
    assert "choose one of psync" in p.stderr
    assert sentinel.read_text() == "precious\n" and [q.name for q in foreign.iterdir()] == ["sentinel.txt"]


# --- target=device: a block device in use is refused ----------------------------------------------

@pytest.fixture
def loop_device(tmp_path):
    """A 64 MiB loop device with an ext4 filesystem holding a sentinel file (not mounted)."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MIB)
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                         check=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", dev], check=True)
        subprocess.run(["mount", dev, str(mnt)], check=True)
        (mnt / "sentinel.txt").write_text("precious\n")
        subprocess.run(["umount", str(mnt)], check=True)
        yield dev, mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)  # if a test left it mounted
        subprocess.run(["losetup", "-d", dev], check=True)


def mount(dev: str, mnt: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", dev, str(mnt)], capture_output=True, text=True)


def test_the_claim_on_a_block_device_is_held_until_cleanup(loop_device):
    from workloads.targets.device import DeviceTarget

    dev, mnt = loop_device
    spec = Spec(target="device", target_path=dev, allow_overwrite=True, size_bytes=16 * MIB)
    first = DeviceTarget(spec)
    placement = first.prepare()
    with pytest.raises(ConfigError, match="is in use"):  # a second exclusive open is refused too
        DeviceTarget(spec).prepare()
    assert mount(dev, mnt).returncode != 0  # nothing can mount it while iosweep holds it
    with open(dev, "rb"):  # workers open it without O_EXCL
        pass
    first.cleanup(placement)
    kept = DeviceTarget(spec)
    kept.prepare()
    del kept  # keep_files=true skips cleanup(): dropping the target still releases the claim
    DeviceTarget(spec).cleanup(DeviceTarget(spec).prepare())
    assert mount(dev, mnt).returncode == 0
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.slow
def test_a_mounted_block_device_is_refused_and_its_filesystem_kept(tmp_path, loop_device):
    from test_faults import start_cli, wait_for_measuring

    dev, mnt = loop_device
    assert mount(dev, mnt).returncode == 0
    try:
        p = run_cli(tmp_path, "target=device", f"target.path={dev}", "target.allow_overwrite=true", "size_mb=16")
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert p.stderr.strip().splitlines() == [
            f"iosweep: error: target.path='{dev}': is in use (mounted or claimed by another program): unmount it "
            "or stop that program, or choose another device"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert mount(dev, mnt).returncode == 0 and (mnt / "sentinel.txt").read_text() == "precious\n"
    subprocess.run(["umount", str(mnt)], check=True)
    # unmounted, the run works; while it runs the device cannot be mounted
    p = start_cli(tmp_path, "target=device", f"target.path={dev}", "target.allow_overwrite=true", "size_mb=16",
                  "pattern=rand_write", "block_kb=4", "duration_s=4")
    wait_for_measuring(p)
    during = mount(dev, mnt)
    if during.returncode == 0:
        subprocess.run(["umount", str(mnt)], check=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert during.returncode != 0, "mounted while iosweep wrote to it"


# --- run and sweep dirs: never written over ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("key, mode", [("hydra.run.dir", []), ("hydra.sweep.dir", ["-m", "block_kb=4,8"])])
def test_an_output_dir_holding_files_is_refused_before_hydra_writes(tmp_path, key, mode):
    used = tmp_path / "used"
    used.mkdir()
    (used / "result.json").write_text("someone else's\n")
    p = run_cli(tmp_path, *mode, f"{key}={used}", "engine=null", "size_mb=1")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.strip().splitlines() == [
        f"iosweep: error: {key}={used}: already holds files, which iosweep would write over; "
        "choose a new or empty directory"]
    assert [q.name for q in used.iterdir()] == ["result.json"]  # no .hydra, nothing else
    assert (used / "result.json").read_text() == "someone else's\n"


@pytest.mark.slow
def test_the_same_run_dir_twice_is_refused_and_the_first_result_kept(tmp_path):
    run_dir = tmp_path / "run"
    p = run_cli(tmp_path, f"hydra.run.dir={run_dir}", "engine=null", "size_mb=1")
    assert p.returncode == 0, p.stderr
    first = (run_dir / "result.json").read_bytes()
    p = run_cli(tmp_path, f"hydra.run.dir={run_dir}", "engine=null", "size_mb=2")
    assert p.returncode == 2 and "already holds files" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert (run_dir / "result.json").read_bytes() == first


def test_run_files_are_created_never_replaced(tmp_path):
    from runner import app

    app._write_new(tmp_path / "result.json", lambda p: p.write_text("first"))
    with pytest.raises(FileExistsError):  # a second write of the same file is a bug, never a silent replace
        app._write_new(tmp_path / "result.json", lambda p: p.write_text("second"))
    assert (tmp_path / "result.json").read_text() == "first"  # and the file already there is kept


def test_preflight_resolves_the_dirs_as_hydra_will(tmp_path, monkeypatch):
    from runner import preflight, schema

    schema.register()
    monkeypatch.chdir(tmp_path)
    preflight.check(["block_kb=4"])  # the default run dir (date, time, pid) does not exist yet
    (tmp_path / "x" / "7").mkdir(parents=True)
    preflight.check(["hydra.run.dir=x/${writers}", "writers=7"])  # exists, but empty: fine
    (tmp_path / "x" / "7" / "f").write_text("")
    with pytest.raises(preflight.UserError, match=r"^hydra.run.dir=x/7: already holds files"):
        preflight.check(["hydra.run.dir=x/${writers}", "writers=7"])
    preflight.check(["-m", "hydra.sweep.dir=x/new", "block_kb=4,8"])
    with pytest.raises(preflight.UserError, match=r"^hydra.sweep.dir=x: already holds files"):
        preflight.check(["hydra.sweep.dir=x", "hydra.mode=MULTIRUN"])
