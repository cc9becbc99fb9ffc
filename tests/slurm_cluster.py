"""A real single-node Slurm (slurm-wlm 22.05, Debian's slurmctld + slurmd) for the tests, run as root, no systemd.

Everything lives in one temp dir: a generated slurm.conf, state, spool and logs. Authentication is auth/none
(22.05 still ships it; 23.11 removed it), so no munged and no key to manage. No cgroups (task/none,
proctrack/linuxproc) and no accounting (no slurmdbd): `sacct` fails, so submitit knows a job ended only from its
result pickle (a job killed before writing one would be waited on until the caller's timeout).

start() waits until sinfo shows the node idle; stop() cancels the jobs, SIGTERMs each daemon's process group,
SIGKILLs what is left, and kills the slurmstepd processes (and their jobs) that served this cluster's spool dir:
slurmd's step daemons leave its process group. Every wait is bounded.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from conftest import stop_group

DAEMONS = ("slurmctld", "slurmd")


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs the daemon when the test process dies (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # all held open until all are picked: n distinct ports
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def available() -> str | None:
    """Why this machine cannot run the cluster (None: it can)."""
    missing = [b for b in (*DAEMONS, "sinfo", "sbatch", "squeue", "scancel") if not shutil.which(b)]
    if missing:
        return f"not on PATH: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs as their user"
    return None


class SlurmCluster:
    def __init__(self, root: Path, start_timeout: float = 30):
        self.root = Path(root)
        self.start_timeout = start_timeout
        self.node = socket.gethostname().split(".")[0]  # slurmd finds its NodeName from the short host name
        self.conf = self.root / "slurm.conf"
        self.spool = self.root / "spool"
        self.procs: dict[str, subprocess.Popen] = {}
        self.start_seconds = None
        atexit.register(self.stop)  # a session that dies in Python still leaves no daemon behind

    def env(self) -> dict[str, str]:
        """What a process needs to talk to this cluster (sbatch, sinfo, submitit)."""
        return {"SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        ctld_port, d_port = _free_ports(2)
        memory_mb = int(psutil.virtual_memory().total / 2**20 * 0.9)  # slurmd drains a node claiming more than it has
        r = self.root
        self.conf.write_text(f"""\
ClusterName=iosweeptest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={self.spool}
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        why = available()
        if why:
            raise RuntimeError(f"no Slurm here: {why}")
        self.write_conf()
        t0 = time.monotonic()
        env = {**os.environ, **self.env()}
        for daemon in DAEMONS:
            with open(self.root / "log" / f"{daemon}.out", "ab") as out:
                self.procs[daemon] = subprocess.Popen(
                    [daemon, "-D", "-f", str(self.conf)], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, cwd=self.root, env=env,
                    start_new_session=True,  # its own group: stop() kills slurmctld's slurmscriptd too
                    preexec_fn=_die_with_parent)
        while self.node_state() != "idle":
            dead = [d for d, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() - t0 > self.start_timeout:
                why = f"{dead[0]} exited with {self.procs[dead[0]].returncode}" if dead else \
                    f"node not idle within {self.start_timeout:.0f} s (state {self.node_state()!r})"
                logs = self.logs()
                self.stop()
                raise RuntimeError(f"Slurm did not start: {why}\n{logs}")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - t0
        return self

    def run(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env()})

    def node_state(self) -> str:
        try:
            return self.run("sinfo", "-h", "-N", "-o", "%t", timeout=5).stdout.strip()
        except subprocess.TimeoutExpired:
            return "sinfo timed out"

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def _stepds(self) -> list[psutil.Process]:
        """The slurmstepd processes serving this cluster: they hold unix sockets in its spool dir."""
        found = []
        for p in psutil.process_iter(["name"]):
            if p.info["name"] != "slurmstepd":
                continue
            try:
                if any(str(c.laddr).startswith(str(self.spool)) for c in p.net_connections(kind="unix")):
                    found.append(p)
            except psutil.Error:
                continue
        return found

    def stop(self, timeout: float = 15) -> None:
        if not self.procs:
            return
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:  # jobs end through Slurm first: slurmd kills their processes
                self.run("scancel", "--full", "--user", "root", timeout=5)
                deadline = time.monotonic() + timeout
                while self.run("squeue", "-h", timeout=5).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(0.2)
            except subprocess.TimeoutExpired:
                pass
        stepds = self._stepds()
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            stop_group(proc, timeout)
        stepds += self._stepds()
        for stepd in stepds:  # whatever scancel missed: the step daemons and the job processes under them
            try:
                victims = stepd.children(recursive=True) + [stepd]
            except psutil.Error:
                continue
            for v in victims:
                try:
                    v.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(victims, timeout=5)

    def leftovers(self) -> list[str]:
        """Processes this cluster left behind (should be none after stop())."""
        return [f"{p.pid} {p.name()}" for p in self._stepds()]
