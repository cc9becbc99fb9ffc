"""The knobs part of `iosweep --help`, read from the comments in conf/ so that each knob's meaning
is written once, beside its default (conf/config.yaml and the group files).

conf/hydra/help/iosweep.yaml uses it as the resolver ${iosweep_knobs:}; Hydra fills in the
group choices itself ($APP_CONFIG_GROUPS).
"""
from __future__ import annotations

import re
from pathlib import Path

from .schema import CONF, GROUPS

_TOP_KEY = re.compile(r"^(\w+):\s*(\S.*?)\s*#\s*(.*)$")  # block_kb: 1024   # meaning
_PARENT = re.compile(r"^(\w+):\s*(#.*)?$")  # prefetch:   (a block of nested knobs)
_NESTED = re.compile(r"^  (\w+):\s*(\S.*?)\s*#\s*(.*)$")  #   blocks: 0   # meaning
_DEFAULT = re.compile(r"^\s+-\s+(\w+):\s*(\S+)\s*#\s*(.*)$")  # - target: local  # meaning


def _line(setting: str, meaning: str) -> str:
    return f"  {setting:<28} {meaning}"


_SECTION = re.compile(r"^(\w+):\s*$")  # data:
_NESTED = re.compile(r"^\s+(\w+):\s*(\S.*?)\s*#\s*(.*)$")  #   format: binary   # meaning


def _nested_keys(lines: list[str], choice: str, out: dict) -> None:
    """`section.key` lines of a `# @package _global_` pattern file, as `(pattern=choice) meaning`."""
    section = None
    for text in lines:
        if m := _SECTION.match(text):
            section = m[1]
        elif section and (m := _NESTED.match(text)) and f"{section}.{m[1]}" not in out:
            out[f"{section}.{m[1]}"] = _line(f"{section}.{m[1]}={m[2]}", f"(pattern={choice}) {m[3]}")
        elif (m := _TOP_KEY.match(text)) and m[1] not in out:  # a top-level knob it brings (append: record_bytes)
            section = None
            out[m[1]] = _line(f"{m[1]}={m[2]}", f"(pattern={choice}) {m[3]}")


def knob_help(conf: Path = CONF) -> str:
    """Groups and knobs as `key=default  meaning`, from the `key: value  # meaning` lines in conf/."""
    groups, knobs = [], []
    parent = None
    for text in (conf / "config.yaml").read_text().splitlines():
        if m := _PARENT.match(text):
            parent = m[1] if m[1] not in ("defaults", "hydra") else None
        elif parent and (m := _NESTED.match(text)):
            knobs.append(_line(f"{parent}.{m[1]}={m[2]}", m[3]))
        elif m := _DEFAULT.match(text):
            groups.append(_line(f"{m[1]}={m[2]}", m[3]))
        elif m := _TOP_KEY.match(text):
            knobs.append(_line(f"{m[1]}={m[2]}", m[3]))
    group_keys = {}  # first commented occurrence of each group key, with the choice it belongs to
    for group in GROUPS:
        for f in sorted((conf / group).glob("*.yaml")):
            lines = f.read_text().splitlines()
            if "# @package _global_" in lines:  # points and studies set top-level knobs...
                if group == "pattern":  # ...a pattern that brings its own keys (format_read: data.format)
                    _nested_keys(lines, f.stem, group_keys)
                continue
            for text in lines:
                m = _TOP_KEY.match(text)
                if m and m[1] != "name" and f"{group}.{m[1]}" not in group_keys:
                    group_keys[f"{group}.{m[1]}"] = _line(f"{group}.{m[1]}={m[2]}", f"({group}={f.stem}) {m[3]}")
    text = "\n".join(["== Groups: default and meaning ==", *groups, "", "== Knobs: key=default and meaning ==",
                      *knobs, "", "== Keys inside a group choice ==", *group_keys.values()])
    return text.replace("$", "$$")  # Hydra runs the template through string.Template after resolving
