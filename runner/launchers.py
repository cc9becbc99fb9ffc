"""Whether a sweep's launcher runs points at the same time on one host, where they measure each other.

The basic launcher (the default) runs points one after another. Others may not:
- joblib runs n_jobs points at once (its default n_jobs=-1: one per CPU);
- submitit_local starts every point as its own process at once: LocalExecutor has no array_parallelism
  (hydra-submitit-launcher 1.2's LocalQueueConf lacks the key) and no setting makes it sequential;
- submitit_slurm submits one job array with %array_parallelism (default 256) tasks running at once; Slurm
  packs them on one node when they fit, unless each job asks for a node to itself
  (additional_parameters.exclusive=true: sbatch --exclusive) or array_parallelism=1;
- any other launcher (ray, a plugin iosweep does not know): it cannot tell, so it assumes they may.
Such a sweep is refused in one line unless allow_concurrent_points=true; then the parent and every point are
tagged iosweep.concurrent_points=true and each point carries a warning.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
TAG = "iosweep.concurrent_points"


def _get(cfg, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def concurrency(cfg: DictConfig) -> tuple[str, str] | None:
    """(why points may run at the same time on one host, how to stop it), or None when they cannot.
    cfg: a config with its hydra node (a point's, or the sweep's in on_multirun_start)."""
    target = str(_get(cfg, "hydra.launcher._target_", BASIC))
    if target == BASIC:
        return None
    if target.endswith("JoblibLauncher"):
        n_jobs = _get(cfg, "hydra.launcher.n_jobs", -1)
        if n_jobs == 1:
            return None
        return f"n_jobs={n_jobs}", "set hydra.launcher.n_jobs=1"
    if target.endswith("submitit_launcher.LocalLauncher"):
        return "every point is a process started at once", "use the basic launcher (drop hydra/launcher)"
    if target.endswith("submitit_launcher.SlurmLauncher"):
        parallel = _get(cfg, "hydra.launcher.array_parallelism", 256)
        exclusive = _get(cfg, "hydra.launcher.additional_parameters.exclusive")
        if parallel == 1 or exclusive is True:  # exclusive=user|mcs still shares a node with the user's jobs
            return None
        return (f"array_parallelism={parallel} jobs may share a node",
                "set +hydra.launcher.additional_parameters.exclusive=true (a node per point) or "
                "hydra.launcher.array_parallelism=1")
    return "a launcher iosweep does not know may", "use the basic launcher"


def launcher_name(cfg: DictConfig) -> str:
    choice = (_get(cfg, "hydra.runtime.choices") or {}).get("hydra/launcher")
    if choice and choice != "basic":
        return f"hydra/launcher={choice}"
    return f"hydra.launcher._target_={_get(cfg, 'hydra.launcher._target_', BASIC)}"


def refusal(cfg: DictConfig) -> str | None:
    """The one-line refusal for a sweep whose points would run at the same time on one host, unless
    allow_concurrent_points=true (then None, as for a launcher that runs them one after another)."""
    allowed = _get(cfg, "allow_concurrent_points")
    if not isinstance(allowed, bool):  # `yes` or 1 would otherwise read as "no" and be refused for the wrong reason
        return f"allow_concurrent_points={allowed!r}: must be true or false"
    found = concurrency(cfg)
    if found is None or allowed:
        return None
    why, fix = found
    return (f"{launcher_name(cfg)} runs points at the same time on one host ({why}): they measure each other; "
            f"{fix}, or allow_concurrent_points=true to accept it")


def check_sweep(config: DictConfig) -> dict[str, str]:
    """SweepCallback.on_multirun_start, before the parent run exists: refuse (one line, exit 2), or
    return the tags of a sweep whose points run at the same time by consent ({} otherwise)."""
    message = refusal(config)
    if message:
        from .console import fail

        fail(message)
    return {TAG: "true"} if concurrency(config) else {}


def mark_point(record: dict) -> None:
    """A point of a sweep that runs points at the same time (allowed): the tag and a warning on its record."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:  # a single run uses no launcher
        return
    cfg = OmegaConf.create({"hydra": {"launcher": hc.launcher, "runtime": {"choices": hc.runtime.choices}}})
    found = concurrency(cfg)
    if found is None:
        return
    warning = (f"{launcher_name(cfg)} ran points at the same time on one host ({found[0]}; "
               f"allow_concurrent_points=true): they measured each other")
    tags = record.setdefault("tags", {})
    tags[TAG] = "true"
    tags["iosweep.warnings"] = "\n".join(filter(None, [tags.get("iosweep.warnings"), warning]))
    record["warnings"] = [*record.get("warnings", []), warning]
