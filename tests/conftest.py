import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking(monkeypatch):
    """Tests never talk to a tracking server or store the caller configured."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("IOSWEEP_PARENT_RUN_ID", raising=False)


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
