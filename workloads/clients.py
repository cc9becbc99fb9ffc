"""One point on N clients: the ranks of an MPI job (`mpirun -np N python -m runner ... clients=N`).

Every rank runs the point's workers on its own host, against its own files (its own scratch dir
under target.dir, also on a shared file system). The ranks start together: each says "ready"
when its workers are prepared, rank 0 answers with a common start instant (wall clock), and
each releases its workers at that instant. Each rank then sends rank 0 what its workers
measured; rank 0 merges them as it merges workers (histograms add, the window runs from the
first start to the last end, as IOR's aggregate bandwidth) and alone writes the MLflow run.

All messages are point-to-point and non-blocking (mpi4py's pickle isend/iprobe), and every wait
polls with a deadline: MPI's own Barrier and gather cannot time out, and a rank that failed,
died or was stopped must end the point on rank 0 naming it, not hang the others. Rank 0 hears
from every other rank at least every HEARTBEAT_S while it runs; a rank on rank 0's host that
died is noticed by its pid at once.

Clocks: times are converted to wall-clock ns (time.time_ns at the same instant as perf_counter_ns)
so that windows compare across hosts; on one host that is exact, across hosts it is as good as
their clock synchronisation (NTP/PTP), as for IOR's MPI_Wtime.
"""
from __future__ import annotations

import os
import socket
import time

import psutil

from .errors import ConfigError, WorkloadError

TAG = 71  # every iosweep message; a dict with "kind" and "round"
# "ready", "go", "beat" and "result" belong to one measured run (a round); "error", "abort" and "done" to the
# whole point: a rank that failed before its first round must still be heard
POINT_KINDS = ("error", "abort", "done")
HEARTBEAT_S = 1.0
POLL_S = 0.01
START_LEAD_S = 0.05  # the common start is this far after rank 0 heard the last "ready": every rank gets "go" first
SILENCE_S = 30.0  # a running rank sends a heartbeat every second: this long without one means stopped or stuck
DONE_MIN_S = 60.0  # a rank waits at least this long for rank 0 to record a point (MLflow's import alone takes seconds)
MIN_TIMEOUT_S = 1.0  # client_timeout_s below this cannot even carry one message round
RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")  # Open MPI, PMIx launchers (srun), MPICH
SIZE_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def mpi_rank() -> int | None:
    """This process's rank when started by an MPI launcher (read from its environment: no MPI import)."""
    for name in RANK_ENV:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def mpi_size() -> int | None:
    for name in SIZE_ENV:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


class RankFailed(WorkloadError):
    """Another rank failed, died or went silent; the message names it."""


class RankLost(RankFailed):
    """A rank died, or is stopped or stuck: the job cannot run another point, and MPI_Finalize (a collective
    step at exit) would wait for that rank forever. The process exits without it (see broken())."""

    def __init__(self, message: str):
        super().__init__(message)
        global _BROKEN
        _BROKEN = True


_BROKEN = False


def broken() -> bool:
    """A rank was lost: exit with os._exit after the atexit handlers (mpirun then ends the other ranks)."""
    return _BROKEN


class Clients:
    """This rank's side of the protocol; rank 0 gathers, the others report."""

    def __init__(self, comm, timeout_s: float):
        self.comm, self.timeout_s = comm, timeout_s
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.point = 0  # the points of a sweep, counted alike on every rank
        self.round = (0, 0)  # (point, measured run within it): messages of another round are ignored
        self.peers: dict[int, dict] = {}  # rank -> {"host", "pid", "boot", "ticks"} (rank 0 only)
        self._sends: list = []
        self._last_beat = 0.0
        self._seen: dict[int, float] = {}
        self._early: dict[int, dict] = {}  # results that came while rank 0 still ran its own workers
        self.aborted: str | None = None  # rank 0's reason when it ended the point
        self.final = False  # ...and the job: rank 0 was stopped, it runs no further point

    # ---- the messages
    def _send(self, dest: int, kind: str, **payload) -> None:
        self._sends = [r for r in self._sends if not r.Test()]  # completed sends are dropped
        self._sends.append(self.comm.isend({"kind": kind, "round": self.round, **payload}, dest=dest, tag=TAG))

    def _receive(self, source: int) -> dict | None:
        if not self.comm.iprobe(source=source, tag=TAG):
            return None
        return self.comm.recv(source=source, tag=TAG)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait (bounded) until what this rank sent is delivered (a large result goes by rendezvous: it is
        delivered when rank 0 takes it). False if it was not."""
        deadline = time.monotonic() + timeout_s
        while self._sends and time.monotonic() < deadline:
            self._sends = [r for r in self._sends if not r.Test()]
            time.sleep(POLL_S)
        return not self._sends

    # ---- rank 0
    def _wait_all(self, kind: str, what: str, timeout_s: float | None) -> dict[int, dict]:
        """Rank 0: the message `kind` of this round from every other rank. A rank that sends an error, dies
        (on this host) or goes silent raises RankFailed naming it."""
        got = {r: m for r, m in self._early.items() if m["kind"] == kind}
        self._early = {r: m for r, m in self._early.items() if r not in got}
        start = time.monotonic()
        self._seen = {r: start for r in range(1, self.size)}
        while len(got) < self.size - 1:
            for r in range(1, self.size):
                if r in got:
                    continue
                msg = self._receive(r)
                while msg is not None:
                    self._seen[r] = time.monotonic()
                    self._take(r, msg)
                    if msg["kind"] == kind and self._ours(msg):
                        got[r] = msg
                        break
                    msg = self._receive(r)
            self._check_alive(set(range(1, self.size)) - set(got), what, start, timeout_s)
            if len(got) < self.size - 1:
                time.sleep(POLL_S)
        return got

    def _take(self, r: int, msg: dict) -> None:
        """A message from rank r: an error of this round ends the point naming r."""
        if msg.get("hello"):
            self.peers[r] = msg["hello"]
        if msg["kind"] == "error" and self._ours(msg):
            if msg.get("final"):  # that rank is stopping (a signal): it runs no further point
                raise RankLost(f"rank {r} ({self.describe(r)}) {msg['why']}")
            raise RankFailed(f"rank {r} ({self.describe(r)}) failed: {msg['why']}")

    def _ours(self, msg: dict) -> bool:
        if msg["kind"] in POINT_KINDS:
            return msg["round"][0] == self.point
        return msg["round"] == self.round

    def describe(self, r: int) -> str:
        p = self.peers.get(r)
        return f"pid {p['pid']} on {p['host']}" if p else "not heard from yet"

    def _check_alive(self, waiting: set[int], what: str, start: float, timeout_s: float | None) -> None:
        now = time.monotonic()
        for r in sorted(waiting):
            p = self.peers.get(r)
            if p and p["host"] == self.host and p["boot"] == boot_id() and not _alive(p["pid"], p["ticks"]):
                raise RankLost(f"rank {r} ({self.describe(r)}) died (killed or crashed) before it could {what}")
            if timeout_s is not None and now - start > timeout_s:
                raise RankLost(f"rank {r} ({self.describe(r)}) did not {what} within {timeout_s:.0f} s "
                               f"(client_timeout_s): stopped, stuck or slower to prepare")
            silence = min(SILENCE_S, self.timeout_s)
            if timeout_s is None and now - self._seen.get(r, start) > silence:
                raise RankLost(f"rank {r} ({self.describe(r)}) sent nothing for {silence:.0f} s: stopped or stuck")

    def hello(self) -> None:
        """Every rank says who it is (host, pid) once: rank 0 can then name ranks and see one that died."""
        me = {"host": self.host, "pid": self.pid, "boot": boot_id(), "ticks": _start_ticks(self.pid)}
        if self.rank:
            self._send(0, "hello", hello=me)
            return
        self.peers[0] = me
        self._wait_all("hello", "start", self.timeout_s)

    def start_together(self) -> int:
        """Called when this rank's workers are prepared: returns the common start instant (time.time_ns()).
        Rank 0 waits (bounded) for every rank's "ready", then sends each the instant."""
        if self.rank:
            self._send(0, "ready")
            msg = self._wait_rank0(("go", "abort"), "start", self.timeout_s)
            return msg["start_ns"]
        self._wait_all("ready", "get its workers ready", self.timeout_s)
        start_ns = time.time_ns() + int(START_LEAD_S * 1e9)
        for r in range(1, self.size):
            self._send(r, "go", start_ns=start_ns)
        return start_ns

    def _wait_rank0(self, kinds: tuple, what: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self._receive(0)
            if msg is not None and msg["kind"] in kinds and self._ours(msg):
                if msg["kind"] == "abort":
                    self._aborted(msg)
                return msg
            if msg is None:
                time.sleep(POLL_S)
        raise RankLost(f"rank 0 did not {what} within {timeout_s:.0f} s (client_timeout_s)")

    def poll(self, bytes_done: int = 0) -> None:
        """While the workers run: ranks > 0 send a heartbeat and obey an abort; rank 0 notices a rank
        that failed, died or fell silent. Raises RankFailed."""
        now = time.monotonic()
        if self.rank:
            if now - self._last_beat >= HEARTBEAT_S:
                self._last_beat = now
                self._send(0, "beat", bytes_done=bytes_done)
            msg = self._receive(0)
            if msg is not None and msg["kind"] == "abort" and self._ours(msg):
                self._aborted(msg)
            return
        for r in range(1, self.size):
            msg = self._receive(r)
            while msg is not None:
                self._seen[r] = now
                self._take(r, msg)
                if msg["kind"] == "result" and self._ours(msg):
                    self._early[r] = msg
                msg = self._receive(r)
        self._check_alive(set(range(1, self.size)) - set(self._early), "send its result", self._round_start, None)

    def _aborted(self, msg: dict):
        self.aborted, self.final = msg["why"], bool(msg.get("final"))
        raise RankFailed(f"rank 0 ended the point: {msg['why']}")

    def begin_point(self) -> None:
        """A new point of the sweep (every rank runs the same points in the same order)."""
        self.point += 1
        self.round = (self.point, 0)
        self.aborted = None

    def begin_round(self) -> None:
        """A new measured run (one repeat of one point): messages of earlier rounds are ignored."""
        self.round = (self.point, self.round[1] + 1)
        self._early = {}
        self._round_start = time.monotonic()
        self._seen = {r: self._round_start for r in range(1, self.size)}

    def gather(self, outs: list[dict], info: dict) -> list[tuple[int, list[dict], dict]] | None:
        """Ranks > 0 send their workers' results; rank 0 returns [(rank, outs, info)] of every rank."""
        if self.rank:
            self._send(0, "result", outs=outs, info=info)
            if not self.flush(self.timeout_s):
                raise RankLost(f"rank 0 did not take this rank's result within {self.timeout_s:.0f} s "
                               "(client_timeout_s): stopped or stuck")
            return None
        got = self._wait_all("result", "send its result", None)
        return [(0, outs, info)] + [(r, got[r]["outs"], got[r]["info"]) for r in sorted(got)]

    def fail(self, why: str, final: bool = False) -> None:
        """This rank failed: rank 0 tells every other rank to stop; another rank tells rank 0 why.
        final: this rank is being stopped (a signal) and runs no further point of a sweep."""
        if self.rank:
            if self.aborted is None:  # rank 0 knows already when it ended the point itself
                self._send(0, "error", why=why, final=final)
                self.flush(5.0)
        else:
            for r in range(1, self.size):
                self._send(r, "abort", why=why, final=final)
            self.flush(5.0)

    def done(self) -> None:
        """Rank 0 has recorded the point: the other ranks may go on (or exit: an exit code other than 0
        before this would make mpirun end rank 0 before it recorded the point)."""
        for r in range(1, self.size):
            self._send(r, "done")
        self.flush(5.0)

    def wait_done(self) -> None:
        """Ranks > 0: wait (bounded) until rank 0 has recorded the point (or ended it). RankLost if it does not
        answer: it is stopped or stuck, and this rank must not wait in MPI_Finalize for it."""
        timeout_s = max(self.timeout_s, DONE_MIN_S)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self._receive(0)
            # "abort" that is not final ended the point only: rank 0 still records it, then says "done"
            if msg is not None and self._ours(msg) and (msg["kind"] == "done" or msg["kind"] == "abort"
                                                        and msg.get("final")):
                self.final = self.final or bool(msg.get("final"))
                return
            if msg is None:
                time.sleep(POLL_S)
        raise RankLost(f"rank 0 did not record the point within {timeout_s:.0f} s: stopped or stuck")

    def dead_peers(self) -> list[str]:
        """Rank 0: the ranks on this host whose process is gone (after mpirun ended this one)."""
        return [f"rank {r} ({self.describe(r)})" for r, p in sorted(self.peers.items())
                if r and p["host"] == self.host and p["boot"] == boot_id() and not _alive(p["pid"], p["ticks"])]


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _alive(pid: int, ticks: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == ticks and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_WORLD: Clients | None = None


def world(clients: int, timeout_s: float) -> Clients | None:
    """The MPI job this process is a rank of, checked against `clients`; None for one client.
    ConfigError when clients and the job disagree (before any I/O)."""
    global _WORLD
    size = mpi_size()
    if clients == 1 and not size or size == 1 and clients == 1:
        return None
    if not size:
        raise ConfigError("clients", clients, f"runs one point on {clients} MPI ranks: start it with "
                                              f"mpirun -np {clients} python -m runner ... clients={clients}")
    if timeout_s < MIN_TIMEOUT_S:
        raise ConfigError("client_timeout_s", timeout_s, f"must be at least {MIN_TIMEOUT_S:g} (seconds)")
    if size != clients:
        raise ConfigError("clients", clients, f"but mpirun started {size} ranks: set clients={size} "
                                              f"or mpirun -np {clients}")
    if _WORLD is None:
        try:
            from mpi4py import MPI  # imported only under mpirun: it costs ~0.1 s and needs libmpi
        except ImportError as e:
            raise ConfigError("clients", clients, f"needs mpi4py ({e}): pip install mpi4py") from None

        _WORLD = Clients(MPI.COMM_WORLD, timeout_s)
        _WORLD.hello()
    _WORLD.timeout_s = timeout_s
    return _WORLD
