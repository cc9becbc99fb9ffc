"""Check the command line before Hydra runs anything: one line for a misspelt key, an unknown
group choice, a `+key` the schema lacks, a launcher that runs points at once (runner.launchers), a chdir, a run dir
or store that cannot exist, instead of Hydra's multi-line report or a traceback later.

Values are checked on the first point with the same to_spec()/Spec.check() each job runs: a bad
value is refused before any run dir exists, unless in a sweep another value of a swept key gives
a point that passes; then the bad points fail alone (the knobs are loosely typed in the schema
for this reason).
"""
from __future__ import annotations

import difflib
import os
import re

from omegaconf import OmegaConf

from . import launchers, secrets
from .schema import CONF, GROUPS

NOT_RUNS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
            "--resolve", "--package", "-p"}
RUN_MODES = {"--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--run", "-r"}  # one each, says Hydra


class UserError(Exception):
    def __init__(self, message: str, code: int = 2):  # 2: the user's input; 3: the tracking store
        super().__init__(message)
        self.code = code


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def known_keys() -> list[str]:
    from .schema import IosweepConfig
    from .tracking import flatten

    return list(flatten(OmegaConf.to_container(OmegaConf.structured(IosweepConfig))))


def check(args: list[str]) -> None:
    """Raise UserError (one line) for overrides that cannot compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    check_mode(args)
    if any(a.split("=")[0] in NOT_RUNS for a in args):
        return
    texts = [a for a in args if "=" in a and not a.startswith("-") or a.startswith("~")]
    try:
        overrides = OverridesParser.create().parse_overrides(texts)
    except HydraException as e:
        raise UserError(secrets.mask_text(str(e).strip().splitlines()[0])) from None
    check_additions(overrides)
    first_values = []
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra"):
            if o.is_sweep_override() and key.startswith("hydra."):  # Hydra: "Sweeping over Hydra's configuration…"
                raise UserError(f"{key}: Hydra's own settings take one value, not a sweep; to give a grid its "
                                f"values quote them as one string: {key}='{','.join(o.sweep_string_iterator())}'")
            first_values.append(first_value(o))  # hydra.job.chdir, hydra.run.dir…: checked once composed
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if key in GROUPS and not o.is_delete():
            for v in (v.strip("'\"") for v in values):  # engine='null' (quoted so Hydra keeps it a string)
                if v not in choices(key) and not (key in ("point", "experiment") and v == "null"):
                    raise UserError(f"{key}={v}: no such choice; choose one of {', '.join(choices(key))}")
        first_values.append(f"{o.get_key_element()}={values[0]}" if values and not o.is_delete()
                            else o.input_line)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=first_values, return_hydra_config=True)
    except Exception as e:  # Hydra and OmegaConf errors: say which key, in one line
        raise UserError(describe(e)) from None
    multirun = "-m" in args or "--multirun" in args or str(OmegaConf.select(cfg, "hydra.mode")).endswith("MULTIRUN")
    check_hydra_settings(cfg, multirun)
    check_values(cfg, overrides, first_values, multirun)


def first_value(o) -> str:
    """The override as it applies to the first point of a sweep (itself when it sweeps nothing)."""
    if o.is_delete() or not o.is_sweep_override():
        return o.input_line
    return f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"


def check_mode(args: list[str]) -> None:
    """Hydra takes one of -m, --cfg, --info…; together it raised a ValueError with a traceback."""
    if "-m" not in args and "--multirun" not in args:
        return
    other = next((a.split("=")[0] for a in args if a.split("=")[0] in RUN_MODES), None)
    if other:
        raise UserError(f"-m with {other}: Hydra does one of them at a time; to see a point's config, drop -m "
                        f"and give one value per key (python -m runner {other} job block_kb=4)")


def check_additions(overrides) -> None:
    """`+key=` and `++key=` add a key the schema lacks: it would be logged as a parameter while
    changing nothing (`+engine.iodepth=32`). Only config groups (Hydra's defaults list) and
    hydra.* settings may be added."""
    for o in overrides:
        key = o.key_or_group
        if not (o.is_add() or o.is_force_add()) or key.startswith("hydra") or "/" in key or key in GROUPS:
            continue
        if key in known_keys():
            continue  # ++block_kb=4 sets an existing key; +block_kb=4 is refused by Hydra (describe)
        plus = "++" if o.is_force_add() else "+"
        near = difflib.get_close_matches(key, known_keys(), n=1)
        raise UserError(f"{plus}{key}: no such key, so it would be logged while changing nothing; "
                        + (f"did you mean {near[0]}?" if near else "remove it (conf/config.yaml lists the knobs)"))


def launcher_missing(name: str) -> str:
    return (f"hydra/launcher={name}: no such launcher installed; Hydra's launchers are pip packages "
            f"(hydra-joblib-launcher, hydra-submitit-launcher), or drop the override for the basic launcher")


def check_hydra_settings(cfg, multirun: bool) -> None:
    """What Hydra itself would do with the composed config, whether set on the command line or
    in a preset: a concurrent launcher, a chdir into each job, a run dir or store that cannot exist."""
    if multirun:  # the same check SweepCallback makes: here it comes before Hydra creates the sweep dir
        refused = launchers.refusal(cfg)
        if refused:
            raise UserError(refused)
    if OmegaConf.select(cfg, "hydra.job.chdir"):
        raise UserError("hydra.job.chdir=true: iosweep finds its run dirs and MLflow store (outputs/) from the "
                        "directory you run in, so each job would start a store of its own; remove that setting "
                        "(iosweep needs chdir=false)")
    check_output_dirs(cfg, multirun)


def static_part(path: str) -> str:
    """The part of a run-dir template before its first interpolation (`outputs/runs/${now:...}`
    -> `outputs/runs`): what exists, or must, before the job starts."""
    head = path.split("${", 1)[0]
    return head if head == path else head.rsplit("/", 1)[0] or "."


def check_output_dirs(cfg, multirun: bool) -> None:
    """outputs/ being a file, or a 300-byte name: one line before Hydra creates anything."""
    from workloads.spec import path_problem

    from .tracking import tracking_uri

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    template = str(OmegaConf.to_container(cfg.hydra, resolve=False)["sweep" if multirun else "run"]["dir"])
    problem = path_problem(static_part(template))
    if problem:
        raise UserError(f"{key}={template}: {problem}")
    refuse_used_output_dir(cfg, key)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        store_dir = os.path.dirname(uri[len("sqlite:///"):])
        problem = path_problem(store_dir)
        if problem:
            raise UserError(f"tracking store {uri}: {problem}", code=3)


def check_values(cfg, overrides: list, first_values: list[str], multirun: bool) -> None:
    """Build the first point's Spec as app.to_spec does (finite numbers, ranges, paths, `${nope}`):
    a bad value is refused here, before Hydra creates a run dir. In a sweep it is refused only
    when no other value of a swept key gives a point that passes; otherwise the bad points fail
    alone, each as a FAILED child run with this same line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.utils import setup_globals

    from workloads import ConfigError

    from .app import to_spec

    def composed(point: list[str]):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=point, return_hydra_config=True)

    def problem(cfg) -> ConfigError | None:
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} and ${now:} resolve as in a job
        try:
            to_spec(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        except ConfigError as e:
            return e
        except Exception:  # not a value the user can fix: the job itself reports it as before
            return None
        return None

    setup_globals()
    overrides, first_values = list(overrides), list(first_values)
    given = {o.key_or_group for o in overrides}
    grids = sweep_grids(cfg) if multirun else [{}]
    for grid in grids[1:]:  # later studies: a key that does not compose would stop the sweep mid-way
        try:
            parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in grid.items() if k not in given])
            composed([first_value(o) for o in parsed] + first_values)
        except Exception as e:
            raise UserError(f"study {grid.get('study')}: {describe(e)}") from None
    swept = [f"{k}={v}" for k, v in grids[0].items() if k not in given]  # a preset's sweep (its first study's)
    if swept:
        extra = OverridesParser.create().parse_overrides(swept)
        overrides += extra
        first_values += [first_value(o) for o in extra]
        cfg = composed(first_values)
    error = problem(cfg)
    if error is None or "${hydra:" in str(error.value):  # job-time values (hydra.job.num) exist only in a job
        return
    if multirun:  # does another value of a swept key give a point that passes?
        for i, o in enumerate(overrides):
            if o.key_or_group.startswith("hydra") or not o.is_sweep_override():
                continue
            for value in list(o.sweep_string_iterator())[1:]:
                try:
                    if problem(composed(first_values[:i] + [f"{o.get_key_element()}={value}"]
                                        + first_values[i + 1:])) is None:
                        return  # some points pass: the others fail alone, as FAILED children
                except Exception:
                    continue  # that value does not compose: its point fails by itself
    raise UserError(secrets.mask_text(str(error)))


def sweep_grids(cfg) -> list[dict]:
    """The grids a preset sweeps: hydra.sweeper.params, or with hydra/sweeper=studies one per study
    (the shared params, then the study's own, and its label), in the order they run."""
    sweeper = OmegaConf.select(cfg, "hydra.sweeper")
    params = dict(OmegaConf.select(cfg, "hydra.sweeper.params") or {})
    if not str(OmegaConf.select(cfg, "hydra.sweeper._target_")).endswith(".StudiesSweeper"):
        return [params]
    from hydra.errors import HydraException
    from hydra_plugins.iosweep_studies import selected_studies, study_overrides

    try:
        studies = selected_studies(OmegaConf.select(sweeper, "studies"), OmegaConf.select(sweeper, "only"))
    except HydraException as e:  # hydra.sweeper.only names no study, or there is none
        raise UserError(str(e)) from None
    return [dict(o.split("=", 1) for o in study_overrides(params, grid, name)) for name, grid in studies.items()]


def refuse_used_output_dir(cfg, key: str) -> None:
    """Hydra writes .hydra/ into the run dir (a sweep's points into the sweep dir) before the task
    runs, and iosweep then writes result.json beside it: a dir that already holds files (/etc, a
    previous run's dir) would be written over. Refuse it before Hydra starts."""
    from pathlib import Path

    from .app import register_resolvers

    register_resolvers()  # the default dirs name the pid: ${iosweep_uid:}
    try:
        out_dir = Path(OmegaConf.select(cfg, key))
    except Exception:  # a dir that cannot even be resolved: Hydra says so itself
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{key}={out_dir}: already holds files, which iosweep would write over; "
                        "choose a new or empty directory")


def describe(e: Exception) -> str:
    text = f"{e} {e.__cause__ or ''}"
    launcher = re.search(r"Could not find 'hydra/launcher/([^']+)'", text)
    if launcher:  # set by a preset; the plugin is not even installed
        return launcher_missing(launcher[1])
    m = re.search(r"Could not override '([^']+)'|Key '([^']+)' is not in struct|Could not append to config. "
                  r"An item is already at '([^']+)'|Multiple values for (\w+)\.", text)
    if m:
        key = next(g for g in m.groups() if g)
        if "already at" in text or "Multiple values for" in text:  # +block_kb=4, +experiment=NAME
            return f"+{key}: {key} already exists; set it without the +"
        near = difflib.get_close_matches(key, known_keys(), n=1)
        return f"{key}: no such key" + (f"; did you mean {near[0]}?" if near else "; see conf/config.yaml")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return secrets.mask_text(" ".join(lines[:2]))
