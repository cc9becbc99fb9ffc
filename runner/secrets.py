"""Credentials never reach MLflow or the terminal: values of credential-like keys become ***.

Applied where data leaves iosweep: params, tags, uploaded YAML/JSON artifacts, printed overrides.
"""
from __future__ import annotations

import json
import logging
import re

MASK = "***"
SECRET_KEY = re.compile(r"(secret|password|passwd|token|access[_-]?key|api[_-]?key|credential|private[_-]?key)",
                        re.IGNORECASE)
# key=value (command-line overrides) and key: value (YAML), the key possibly dotted or +/~ prefixed
_OVERRIDE = re.compile(r"(?P<key>[+~]*[\w.\-]+)=(?P<value>[^\s,\]'\"]+|'[^']*'|\"[^\"]*\")")
_YAML = re.compile(r"^(?P<indent>\s*(?:-\s+)?)(?P<key>[\w.\-]+):(?P<sep>\s+)(?P<value>\S.*)$", re.MULTILINE)


def is_secret(key: str) -> bool:
    return bool(SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def mask_mapping(d: dict) -> dict:
    """Flat key -> value mapping with credential-like keys' values masked."""
    return {k: (MASK if is_secret(k) else v) for k, v in d.items()}


def mask_nested(value):
    if isinstance(value, dict):
        return {k: (MASK if is_secret(str(k)) and not isinstance(v, (dict, list)) else mask_nested(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_nested(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_text(text: str) -> str:
    """Mask `key=value` overrides and `key: value` YAML lines whose key looks like a credential."""
    text = _OVERRIDE.sub(lambda m: f"{m['key']}={MASK}" if is_secret(m["key"]) else m[0], text)
    return _YAML.sub(lambda m: f"{m['indent']}{m['key']}:{m['sep']}{MASK}" if is_secret(m["key"]) else m[0], text)


def mask_file_text(name: str, text: str) -> str:
    if name.endswith(".json"):
        try:
            return json.dumps(mask_nested(json.loads(text)), indent=1)
        except ValueError:
            pass
    return mask_text(text)


class MaskFilter(logging.Filter):
    """For loggers that echo overrides (Hydra's launcher prints every job's overrides)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = ()
        return True
