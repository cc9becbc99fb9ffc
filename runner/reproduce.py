"""python -m runner.reproduce RUN_ID|RUN_DIR [--dry-run]: run a past point or sweep again with today's code.

A point: its saved overrides (.hydra/overrides.yaml) are composed again with the current conf/ and
schema, and the result is diffed against the resolved config.yaml it ran with; then
`python -m runner <overrides>` runs with IOSWEEP_REPRODUCED_FROM=RUN_ID and the new metrics are
compared with the old ones. Hydra's own --experimental-rerun is not used: it skips the callbacks
that log to MLflow, and `--config-dir RUN/.hydra` silently loads the app's config instead.

A sweep parent: every old point is diffed the same way, the sweep runs again from the parent's
`iosweep.overrides`, and the new points are matched to the old ones by their overrides.

Credentials were masked when logged (runner.secrets): a saved override whose value is the mask is
not run with the mask; `--set KEY=VALUE` gives the value again (a dry run only says so).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from workloads.clients import mpi_size

from . import app, console, runs, schema, secrets, tracking


@dataclass
class Original:
    """What a point run left behind: how it was asked for, what that resolved to, what it measured."""
    origin: str                # the MLflow run id, or the run dir when no run in the store has that dir
    overrides: list[str]
    config: dict[str, str]     # the resolved config it ran with, flattened
    metrics: dict[str, float] = field(default_factory=dict)


def _read_saved(files: Path, label: str) -> tuple[list[str], dict[str, str]]:
    """overrides.yaml and the resolved config from a run dir or a download of a run's artifacts."""
    overrides_file = files / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        console.fail(f"{label} has no .hydra/overrides.yaml: not a run made by python -m runner")
    # A FAILED point never wrote config.yaml; Hydra's .hydra/config.yaml is the same config, unresolved.
    config_file = next((p for p in (files / "config.yaml", files / ".hydra" / "config.yaml") if p.is_file()), None)
    if config_file is None:
        console.fail(f"{label} has neither config.yaml nor .hydra/config.yaml")
    overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_file))]
    # runs logged before MASKED was the mask hold `password: ***`, which YAML reads as an alias
    saved = OmegaConf.create(secrets.readable_yaml(config_file.read_text()))
    config = tracking.flatten(OmegaConf.to_container(saved, resolve=True))
    # a run dir holds the real values: learn them so that nothing printed below shows them
    secrets.remember_overrides(overrides)
    secrets.remember_params(config, overrides)
    return overrides, config


def from_run(c, run) -> Original:
    run_id = run.info.run_id
    names = {a.path for a in c.list_artifacts(run_id)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in (".hydra", "config.yaml"):
            if name in names:
                c.download_artifacts(run_id, name, tmp)
        overrides, config = _read_saved(Path(tmp), f"run {run_id}")
    return Original(run_id, overrides, config, dict(run.data.metrics))


def from_dir(run_dir: Path) -> Original:
    if not run_dir.is_dir():
        console.fail(f"no run dir {run_dir}")
    overrides, config = _read_saved(run_dir, str(run_dir))
    result = run_dir / "result.json"  # written before MLflow: the metrics even if logging failed
    metrics = json.loads(result.read_text()).get("metrics", {}) if result.is_file() else {}
    return Original(_run_id_of_dir(run_dir) or str(run_dir), overrides, config,
                    {k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def _run_id_of_dir(run_dir: Path) -> str | None:
    """The MLflow run made in run_dir, so the reproduction is tagged with a run id when there is one."""
    if not runs.store_exists():
        return None
    c = tracking.client()
    found = c.search_runs([tracking.experiment_id(c)], max_results=1, order_by=["attributes.start_time DESC"],
                          filter_string=f"tags.`iosweep.run_dir` = '{run_dir.resolve()}'")
    return found[0].info.run_id if found else None


def _compose(overrides: list[str]) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(schema.CONF), version_base="1.3"):
        cfg = compose("config", overrides=app.quote_null_choices(overrides))
    return tracking.flatten(OmegaConf.to_container(cfg, resolve=True))


def _why(e: Exception) -> str:
    """Hydra's message in one line: its first line, the cause's first line, the valid choices if known."""
    def first_line(x: BaseException) -> str:
        text = str(x).strip()
        return text.splitlines()[0].rstrip(".") if text else type(x).__name__

    parts = [first_line(e)]
    if e.__cause__ is not None:
        parts.append(first_line(e.__cause__))
    if getattr(e, "options", None):  # MissingConfigException: the group's options today
        parts.append("available: " + ", ".join(e.options))
    return "; ".join(parts)


def compose_now(overrides: list[str], label: str) -> dict[str, str]:
    """The config these overrides give with today's code; one line naming the culprit if they no longer compose."""
    try:
        return _compose(overrides)
    except Exception:  # anything Hydra/OmegaConf raise while composing means: does not compose
        pass
    # Compose ever longer prefixes: the first that fails names the override that broke.
    for n in range(len(overrides) + 1):
        try:
            _compose(overrides[:n])
        except Exception as e:
            culprit = f"saved override {overrides[n - 1]!r}" if n else "the current conf/ (no overrides)"
            console.fail(f"{label}: {culprit} no longer composes: {_why(e)}")
    console.fail(f"{label}: saved overrides {' '.join(overrides)!r} no longer compose together")


def print_config_diff(original: Original, label: str) -> None:
    now = compose_now(original.overrides, label)
    secrets.remember_params(now, original.overrides)
    # a value masked when logged cannot be compared: not a difference
    now = {k: (secrets.MASK if secrets.is_masked(original.config.get(k, "")) else v) for k, v in now.items()}
    differ = runs.changes(original.config, now)
    if not differ:
        print(f"{label}: config unchanged ({len(original.config)} keys)")
        return
    print(f"{label}: {len(differ)} config keys differ (saved -> now):")
    for line in differ:
        print(f"  {line}")


def with_given(saved: list[str], given: list[str], origin: str, dry_run: bool) -> list[str]:
    """The saved overrides with the values --set gives again. A value still masked is never run:
    one line naming its key and how to give it (a dry run runs nothing: it only says so)."""
    by_key = {g.partition("=")[0].lstrip("+~"): g.partition("=")[2] for g in given}
    unknown = sorted(by_key.keys() - {o.partition("=")[0].lstrip("+~") for o in saved})
    if unknown:
        console.fail(f"--set {unknown[0]}: not among the saved overrides of {origin}; --set only gives again a "
                     f"value that was masked when logged")
    out = []
    for o in saved:
        key, _, value = o.partition("=")
        out.append(f"{key}={by_key[key.lstrip('+~')]}" if key.lstrip("+~") in by_key else o)
    masked = secrets.masked_keys(out)
    if masked:
        how = (f"give {'it' if len(masked) == 1 else 'them'} again: python -m runner.reproduce {origin} "
               + " ".join(f"--set {k}={secrets.PLACEHOLDER}" for k in masked))
        if not dry_run:
            console.fail(f"{', '.join(masked)}: masked when logged (iosweep never stores credentials); {how}")
        print(f"iosweep: note: {', '.join(masked)}: masked when logged, compared as masked; to run it, {how}")
    return out


def _mpi_ranks(args: list[str]) -> int:
    """The clients=N a saved run was made with (1 if none): such a run is reproduced under mpirun -np N."""
    values = [a.partition("=")[2] for a in args if a.partition("=")[0] == "clients"]
    return max((int(v) for v in ",".join(values).split(",") if v.strip().isdigit()), default=1)


def run_runner(args: list[str], reproduced_from: str) -> int:
    """python -m runner ARGS in the current directory, its output straight to the terminal. Under mpirun each
    rank's runner is one rank of the point (workloads/clients.py)."""
    n = _mpi_ranks(args)
    if n > 1 and not mpi_size():
        console.fail(f"{reproduced_from} ran on {n} MPI ranks (clients={n}): mpirun -np {n} python -m runner.reproduce "
                     f"{reproduced_from}")
    args = app.quote_null_choices(args)
    print(f"iosweep: running python -m runner {' '.join(args)}", flush=True)
    env = dict(os.environ, **{tracking.REPRODUCED_ENV: reproduced_from})
    return subprocess.run([sys.executable, "-m", "runner", *args], env=env).returncode


def find_reproduction(origin: str, since_ms: int, sweep: bool):
    """The newest run tagged reproduced_from=origin that started after since_ms (None if the runner made none)."""
    if not runs.store_exists():
        return None
    c = tracking.client()
    found = c.search_runs([tracking.experiment_id(c)], max_results=100, order_by=["attributes.start_time DESC"],
                          filter_string=f"tags.`iosweep.reproduced_from` = '{origin}'")
    return next((r for r in found if r.info.start_time >= since_ms and runs.is_sweep(r) == sweep), None)


def reproduce_point(original: Original, dry_run: bool, given: list[str] = ()) -> int:
    args = with_given(original.overrides, list(given), original.origin, dry_run)
    print(f"iosweep: reproducing {original.origin}: {' '.join(original.overrides) or '(defaults)'}")
    print_config_diff(original, original.origin)
    if dry_run:
        return 0
    since_ms = int(time.time() * 1000)
    code = run_runner(args, original.origin)
    if code != 0 or app.other_rank():  # a rank > 0 ran its share: rank 0 finds and shows the new run
        return code
    new = find_reproduction(original.origin, since_ms, sweep=False)
    if new is None:
        console.fail(f"the runner finished but no run tagged iosweep.reproduced_from={original.origin} appeared "
                     f"in {tracking.tracking_uri()}")
    print(f"\niosweep: new run {new.info.run_id} reproduces {original.origin}")
    print(runs.metric_table(original.metrics, new.data.metrics, "original", "new"))
    return 0


def reproduce_sweep(c, parent, dry_run: bool, given: list[str] = ()) -> int:
    parent_id = parent.info.run_id
    sweep_args = with_given(runs.overrides_of(parent).split(), list(given), parent_id, dry_run)
    print(f"iosweep: reproducing sweep {parent_id}: -m {' '.join(sweep_args) or '(defaults)'}")
    for child in sorted(runs.children(c, parent), key=runs.overrides_of):
        print_config_diff(from_run(c, child), f"point {runs.overrides_of(child) or '(defaults)'}")
    if dry_run:
        return 0
    since_ms = int(time.time() * 1000)
    code = run_runner(["-m", *sweep_args], parent_id)
    if app.other_rank():
        return code
    new = find_reproduction(parent_id, since_ms, sweep=True)
    if new is None:
        if code != 0:  # the sweep did not even start (e.g. a bad override): the runner said why
            return code
        console.fail(f"the runner finished but no sweep tagged iosweep.reproduced_from={parent_id} appeared "
                     f"in {tracking.tracking_uri()}")
    print(f"\niosweep: new sweep {new.info.run_id} reproduces {parent_id}")
    print(runs.sweep_table(c, parent, new, "original", "new"))
    return code


def main(argv: list[str] | None = None) -> int:
    parser = runs.Parser(prog="python -m runner.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("target", metavar="RUN_ID|RUN_DIR", help="MLflow run id (point or sweep parent) or a Hydra run dir")
    parser.add_argument("--dry-run", action="store_true", help="only show how the config changed; run nothing")
    parser.add_argument("--set", dest="given", action="append", default=[], metavar="KEY=VALUE",
                        help="give again a value that was masked when logged (a credential); repeatable")
    secrets.guard_terminal()
    args = parser.parse_args(argv)
    if app.other_rank():  # under mpirun: rank 0 prints
        sys.stdout = open(os.devnull, "w")
    for g in args.given:
        if "=" not in g:
            console.fail(f"--set {g}: give KEY=VALUE, the key as in the saved overrides")
        secrets.remember_elements(g.partition("=")[2])  # given again because it is a credential
    schema.register()
    app.register_resolvers()
    # A run id is 32 hex digits; anything with a path separator, or an existing dir, is a run dir.
    if os.sep in args.target or Path(args.target).is_dir():
        return reproduce_point(from_dir(Path(args.target)), args.dry_run, args.given)
    c = runs.open_client()
    run = runs.get_run(c, args.target)
    if runs.is_sweep(run):
        return reproduce_sweep(c, run, args.dry_run, args.given)
    return reproduce_point(from_run(c, run), args.dry_run, args.given)


if __name__ == "__main__":
    sys.exit(main())
