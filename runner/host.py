"""Provenance: which machine, kernel, filesystem, device and code produced a number."""
from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"dgen-py": "dgen_py", "hydra-core": "hydra_core", "mlflow": "mlflow", "numpy": "numpy",
            "omegaconf": "omegaconf"}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=None)
def host_tags() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read(Path("/proc/cpuinfo")).splitlines()
                if line.startswith("model name")), platform.processor())
    nodes = len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or 1
    tags = {"host.name": socket.gethostname(), "host.kernel": platform.release(), "host.cpu": cpu,
            "host.cores": str(os.cpu_count()), "host.ram_gb": f"{psutil.virtual_memory().total / 2**30:.1f}",
            "host.numa_nodes": str(nodes), "host.python": platform.python_version()}
    for dist, key in PACKAGES.items():
        try:
            tags[f"version.{key}"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            tags[f"version.{key}"] = "not installed"
    try:
        tags["iosweep.version"] = metadata.version("iosweep")
    except metadata.PackageNotFoundError:
        tags["iosweep.version"] = "unknown"
    tags.update(_git())
    tags.update(slurm_tags())
    return tags


def slurm_tags() -> dict[str, str]:
    """The Slurm job a run was made in (hydra/launcher=submitit_slurm runs each point as one): its id for
    sacct/scontrol, and, for a job array's task, the id as squeue shows it (ARRAYJOB_TASK)."""
    tags = {}
    if os.environ.get("SLURM_JOB_ID"):
        tags["iosweep.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        tags["iosweep.slurm_array_task"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return tags


def _git() -> dict[str, str]:
    """The checkout's commit and whether it had uncommitted changes, when run from one."""
    if not (REPO / ".git").exists():
        return {}
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"iosweep.git_sha": sha, "iosweep.git_dirty": str(bool(dirty)).lower()} if sha else {}


def device_description(device: str) -> str:
    """'vda (model ..., rotational 0, scheduler mq-deadline)' from /sys/block, where known."""
    if not device:
        return ""
    base = Path("/sys/block") / device
    parts = []
    model = _read(base / "device" / "model")
    if model:
        parts.append(f"model {model}")
    rotational = _read(base / "queue" / "rotational")
    if rotational:
        parts.append(f"rotational {rotational}")
    scheduler = _read(base / "queue" / "scheduler")
    if "[" in scheduler:
        parts.append(f"scheduler {scheduler.split('[', 1)[1].split(']', 1)[0]}")
    return f"{device} ({', '.join(parts)})" if parts else device


def target_tags(info: dict) -> dict[str, str]:
    tags = {"target.fs_type": info.get("fs_type", ""), "target.mount_opts": info.get("mount_opts", ""),
            "target.mountpoint": info.get("mountpoint", ""), "target.device": device_description(info.get("device", ""))}
    for key in ("s3_endpoint", "s3_bucket", "s3_prefix", "s3_server"):  # target=s3: where, never credentials
        if info.get(key):
            tags[f"target.{key}"] = str(info[key])
    if info.get("fio_version"):
        tags["version.fio"] = info["fio_version"]
    return tags
