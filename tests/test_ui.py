"""The README's "browse runs in the MLflow UI": a tracking server on our sqlite store shows a sweep as made."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import run_cli

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (uvicorn workers too), SIGKILL what is left after 20 s."""
    pgid = server.pid  # start_new_session: the server leads its own group
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while group_alive(pgid) and time.monotonic() < deadline:
        server.poll()  # reap the leader so the group can vanish
        time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    server.wait(timeout=10)


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_until_up(server: subprocess.Popen, base: str, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow server exited with {server.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


def start_mlflow_server(cwd, db, *extra: str):
    """`mlflow server` on a free port of 127.0.0.1 over sqlite db, in its own process group (stop() ends it);
    returns (process, port, base URL, log path). extra: more server arguments."""
    port = free_port()
    log = cwd / "mlflow_server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner to leave behind
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", *extra],
            cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    return server, port, f"http://127.0.0.1:{port}", log


def test_tracking_server_shows_the_sweep_parent_and_its_children(tmp_path):
    p = run_cli(tmp_path, "-m", "size_mb=8", "block_kb=64,128")
    assert p.returncode == 0, p.stderr

    server, port, base, log = start_mlflow_server(tmp_path, tmp_path / "outputs" / "mlflow.db")
    try:
        wait_until_up(server, base, log)
        exp = api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=iosweep")["experiment"]
        runs = api(base, "/api/2.0/mlflow/runs/search",
                   {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    finally:
        stop(server)
    assert not listening(port) and not group_alive(server.pid)

    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    status = {r["info"]["run_id"]: r["info"]["status"] for r in runs}
    [parent] = [run_id for run_id, t in tags.items() if t.get("iosweep.sweep") == "true"]
    children = [run_id for run_id, t in tags.items() if t.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and len(children) == 2
    assert all(s == "FINISHED" for s in status.values()), status
    assert sorted(tags[c]["iosweep.overrides"] for c in children) == ["size_mb=8 block_kb=128", "size_mb=8 block_kb=64"]
