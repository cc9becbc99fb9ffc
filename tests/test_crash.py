"""Issue 9: a stopped worker, kill -9 and SIGHUP never hang a run nor leave anything behind."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import children_but_servers, run_cli
from test_faults import start_cli, wait_for_measuring, wait_for_runs, workers_of
from workloads import Spec, WorkloadError, job, processes
from workloads.targets import local

MIB = 1 << 20


def alive(pid: int) -> bool:
    """Running or stopped, not a zombie and not gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def semaphores_of(pids: list[int]) -> set[str]:
    """The multiprocessing named semaphores these processes have mapped (other processes on the
    machine create and remove their own at the same time: compare only ours)."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names |= {line.rsplit("/", 1)[1] for line in maps.splitlines() if "/dev/shm/sem.mp-" in line}
    return names


def left(names: set[str]) -> set[str]:
    return {n for n in names if Path("/dev/shm", n).exists()}


@pytest.mark.parametrize("grace, stall, writers, duration, says", [
    (1.0, 600.0, 2, 2.0, "still running 1 s after the run's end"),
    (600.0, 1.0, 2, 2.0, "made no progress for 1 s"),
    (600.0, 1.0, 1, None, "was stopped for 1 s"),  # no deadline, no other worker to compare with
])
def test_a_stopped_worker_ends_the_run_by_itself(tmp_path, monkeypatch, grace, stall, writers, duration, says):
    """No signal to the runner: the deadline + grace (or a stall rule) ends it, in one line."""
    monkeypatch.setattr(processes, "RUN_GRACE_S", grace)
    monkeypatch.setattr(processes, "STALL_S", stall)
    stopped = []

    def stop_one(*_):  # the first progress call: the window is open
        if not stopped:
            worker = next(c for c in children_but_servers() if "resource_tracker" not in " ".join(c.cmdline()))
            worker.suspend()
            stopped.append(worker)

    spec = Spec(pattern="rand_read", block_size=4096, writers=writers, size_bytes=8 * MIB, duration_s=duration,
                target_dir=str(tmp_path / "t"))
    if duration is None:  # a sized run long enough to be stopped in the middle: 1 TiB with no I/O
        spec = Spec(pattern="seq_read", engine="null", block_size=4096, writers=1, size_bytes=1 << 40,
                    target_dir=str(tmp_path / "t"))
    t0 = time.monotonic()
    with pytest.raises(WorkloadError) as e:
        job.run(spec, progress=stop_one)
    took = time.monotonic() - t0
    message = str(e.value)
    assert stopped and f"pid {stopped[0].pid}, stopped" in message and says in message, message
    assert "\n" not in message
    kept = e.value.partial  # what the other worker measured, marked invalid
    assert (kept is None) == (writers == 1)
    assert kept is None or (kept.ops_read > 0 and not kept.valid and "worker" in " ".join(kept.warnings))
    assert took < 2.0 + 1.0 + 15, took  # window + grace or stall + start-up and reaping on a loaded machine
    assert not [c for c in children_but_servers() if alive(c.pid) and "resource_tracker" not in
                " ".join(c.cmdline())]
    assert not (tmp_path / "t").exists() or list((tmp_path / "t").iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_ends_a_run_whose_worker_is_stopped(tmp_path):
    p = start_cli(tmp_path, "pattern=rand_read", "block_kb=4", "writers=2", "size_mb=16", "duration_s=60")
    wait_for_measuring(p)
    workers = workers_of(p.pid)
    ours = semaphores_of([p.pid, *workers])
    os.kill(workers[0], signal.SIGSTOP)
    time.sleep(0.5)
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    took = time.monotonic() - sent
    print(f"exit {took:.2f} s after SIGINT with a stopped worker")
    assert took < 10, took
    assert p.returncode == 130 and "Traceback" not in err, err
    assert not [w for w in workers if alive(w)]
    assert list((tmp_path / "outputs" / "scratch").iterdir()) == []
    (run,) = wait_for_runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.metrics["bytes_total"] > 0
    assert "worker 0 returned nothing" in run.data.tags["iosweep.warnings"]
    assert not left(ours)


@pytest.mark.slow
def test_kill_9_leaves_no_worker_and_the_next_run_removes_its_scratch_dir(tmp_path):
    p = start_cli(tmp_path, "pattern=rand_read", "block_kb=4", "writers=2", "size_mb=16", "duration_s=60")
    wait_for_measuring(p)
    workers = workers_of(p.pid)
    ours = semaphores_of([p.pid, *workers])
    assert not ours  # pipes and shared memory only: nothing named that a kill -9 could leave
    tracker = [c.pid for c in psutil.Process(p.pid).children() if c.pid not in workers]
    p.kill()
    p.communicate()
    deadline = time.monotonic() + 3
    while [w for w in workers + tracker if alive(w)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers + tracker if alive(w)], "a worker outlived its parent"
    (stale,) = (tmp_path / "outputs" / "scratch").iterdir()
    assert stale.name.startswith("iosweep-") and list(stale.glob("job*.dat"))
    assert not left(ours)
    done = run_cli(tmp_path, "pattern=rand_read", "size_mb=4", "block_kb=64")
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "outputs" / "scratch").iterdir()) == []


def test_a_worker_dies_with_its_parent_even_while_waiting(tmp_path):
    """PR_SET_PDEATHSIG: a worker blocked in the start barrier (no ppid check there) dies too."""
    code = textwrap.dedent("""
        import os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import os, sys, time; from workloads.processes import _die_with_parent; "
            "_die_with_parent(int(sys.argv[1])); print('armed', flush=True); time.sleep(600)", str(os.getpid())],
            stdout=subprocess.PIPE, text=True)
        assert grandchild.stdout.readline().strip() == "armed"
        print(grandchild.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 3
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(worker)


def test_a_worker_whose_parent_is_already_gone_exits_at_once():
    p = subprocess.run([sys.executable, "-c", "from workloads.processes import _die_with_parent; _die_with_parent(1); "
                        "print('still here')"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "still here" not in p.stdout


def test_only_stale_scratch_dirs_of_dead_owners_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()

    def scratch(name, owner, files=("job0.dat", "job1.dat")):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x")
        if owner is not None:
            (d / local.OWNER_FILE).write_text(json.dumps(owner))
        return d

    gone = scratch("iosweep-gone", local.owner(dead.pid) | {"start": 1})
    mine = scratch("iosweep-mine", local.owner(os.getpid()))
    reused = scratch("iosweep-reused", local.owner(os.getpid()) | {"start": 1})  # same pid, another process
    unmarked = scratch("iosweep-unmarked", None)
    other_host = scratch("iosweep-elsewhere", local.owner(dead.pid) | {"host": "not-this-host"})
    foreign = scratch("iosweep-foreign", local.owner(dead.pid), files=("job0.dat", "their.db"))
    assert sorted(local.remove_stale_scratch(tmp_path)) == [gone, reused]
    assert not gone.exists() and not reused.exists()
    assert mine.exists() and unmarked.exists() and other_host.exists()
    assert sorted(p.name for p in foreign.iterdir()) == ["their.db"]  # ours removed, theirs kept


def test_scratch_dir_is_marked_with_its_owner_and_the_marker_removed(tmp_path):
    spec = Spec(pattern="seq_write", block_size=64 << 10, writers=1, size_bytes=MIB, target_dir=str(tmp_path))
    target = local.LocalTarget(spec)
    placement = target.prepare()
    assert json.loads((placement.scratch / local.OWNER_FILE).read_text()) == local.owner(os.getpid())
    target.cleanup(placement)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_stopped_before_it_got_ready_ends_the_run(tmp_path, monkeypatch):
    """The start barrier is bounded too: worker 1 is stopped as soon as it is spawned."""
    import multiprocessing.context

    monkeypatch.setattr(processes, "START_STALL_S", 1.0)
    start = multiprocessing.context.SpawnProcess.start

    def start_then_stop(self):
        start(self)
        if self.name.endswith("-1"):
            os.kill(self.pid, signal.SIGSTOP)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_then_stop)
    spec = Spec(pattern="rand_read", block_size=4096, writers=2, size_bytes=4 * MIB, duration_s=2.0,
                target_dir=str(tmp_path / "t"))
    with pytest.raises(WorkloadError, match=r"worker 1 \(pid \d+, stopped\) did not get ready within 1 s"):
        job.run(spec)
    assert not [c for c in children_but_servers() if alive(c.pid) and "resource_tracker" not in
                " ".join(c.cmdline())]
    assert list((tmp_path / "t").iterdir()) == []


def test_a_worker_killed_mid_run_is_noticed_at_once(tmp_path):
    """Each worker holds the only write end of its result pipe: its death reads as EOF at once."""
    killed = []

    def kill_one(*_):
        if not killed:
            worker = next(c for c in children_but_servers() if "resource_tracker" not in " ".join(c.cmdline()))
            worker.kill()
            killed.append(time.monotonic())

    spec = Spec(pattern="rand_read", block_size=4096, writers=2, size_bytes=4 * MIB, duration_s=30.0,
                target_dir=str(tmp_path / "t"))
    with pytest.raises(WorkloadError, match=r"worker \d died without a result \(exit code -9\)"):
        job.run(spec, progress=kill_one)
    assert time.monotonic() - killed[0] < 5
    assert list((tmp_path / "t").iterdir()) == []


def test_a_worker_that_cannot_be_killed_is_not_waited_for(tmp_path, monkeypatch):
    """As a worker in uninterruptible I/O: SIGKILL does not end it at once. The run ends anyway,
    and nothing joins it at exit (multiprocessing would, without a timeout)."""
    import multiprocessing
    import multiprocessing.context

    monkeypatch.setattr(processes, "STALL_S", 1.0)
    monkeypatch.setattr(processes, "KILL_WAIT_S", 0.5)
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "kill", lambda self: None)  # the kernel's delay
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "terminate", lambda self: None)
    stopped = []

    def stop_one(*_):
        if not stopped:
            worker = next(c for c in children_but_servers() if "resource_tracker" not in " ".join(c.cmdline()))
            worker.suspend()
            stopped.append(worker)

    spec = Spec(pattern="rand_read", block_size=4096, writers=2, size_bytes=4 * MIB, duration_s=2.0,
                target_dir=str(tmp_path / "t"))
    try:
        with pytest.raises(WorkloadError, match="made no progress"):
            job.run(spec, progress=stop_one)
        assert alive(stopped[0].pid) and stopped[0].pid not in [p.pid for p in multiprocessing.active_children()]
        assert list((tmp_path / "t").iterdir()) == []
    finally:
        stopped[0].kill()
        stopped[0].wait(10)
