"""Check the command line before Hydra runs anything: one line for a misspelt key or an unknown
group choice, instead of Hydra's multi-line report.

Values are not checked here: the numeric knobs are loosely typed in the schema and checked per
point by to_spec()/Spec.check(), so that in a sweep a bad value fails its own point only.
"""
from __future__ import annotations

import difflib
import re

from omegaconf import OmegaConf

from . import secrets
from .schema import CONF, GROUPS

NOT_RUNS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
            "--resolve", "--package", "-p"}


class UserError(Exception):
    pass


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

    if any(a.split("=")[0] in NOT_RUNS for a in args):
        return
    texts = [a for a in args if "=" in a and not a.startswith("-") or a.startswith("~")]
    try:
        overrides = OverridesParser.create().parse_overrides(texts)
    except HydraException as e:
        raise UserError(secrets.mask_text(str(e).strip().splitlines()[0])) from None
    first_values = []
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra"):
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
            compose("config", overrides=first_values)
    except Exception as e:  # Hydra and OmegaConf errors: say which key, in one line
        raise UserError(describe(e)) from None
    refuse_used_output_dir(args, first_values)


def refuse_used_output_dir(args: list[str], overrides: list[str]) -> None:
    """Hydra writes .hydra/ into the run dir (a sweep's points into the sweep dir) before the task
    runs, and iosweep then writes result.json beside it: a dir that already holds files (/etc, a
    previous run's dir) would be written over. Refuse it before Hydra starts."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from .app import register_resolvers

    register_resolvers()  # the default dirs name the pid: ${iosweep_uid:}
    hydra_overrides = [a for a in args if a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides + hydra_overrides, return_hydra_config=True)
        multirun = any(a in ("-m", "--multirun") for a in args) or str(cfg.hydra.mode).endswith("MULTIRUN")
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        out_dir = Path(OmegaConf.select(cfg, key))
    except Exception:  # a dir that cannot even be resolved: Hydra says so itself
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{key}={out_dir}: already holds files, which iosweep would write over; "
                        "choose a new or empty directory")


def describe(e: Exception) -> str:
    text = f"{e} {e.__cause__ or ''}"
    m = re.search(r"Could not override '([^']+)'|Key '([^']+)' is not in struct|Could not append to config. "
                  r"An item is already at '([^']+)'", text)
    if m:
        key = next(g for g in m.groups() if g)
        if "already at" in text:
            return f"+{key}: {key} already exists; set it without the +"
        near = difflib.get_close_matches(key, known_keys(), n=1)
        return f"{key}: no such key" + (f"; did you mean {near[0]}?" if near else "; see conf/config.yaml")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return secrets.mask_text(" ".join(lines[:2]))
