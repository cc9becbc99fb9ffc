"""The Engine contract and its registry, after fio's ioengine_ops.

An in-process engine names how the C hot loop (workloads/_hotloop.c) issues each op: its
`hot_mode`. An external engine (fio) runs the whole job itself and returns a Result.
"""
from __future__ import annotations

from ..errors import ConfigError

REGISTRY: dict[str, "Engine"] = {}


class Engine:
    name = ""
    does_io = True  # False: no files are created (the null engine measures the harness)
    external = False  # True: run_job() replaces the worker loop

    hot_mode = 0  # in-process engines: 0 = pread/pwrite, 1 = no I/O

    def run_job(self, spec, target, placement, progress):
        raise NotImplementedError

    def check(self, spec) -> None:
        """Raise ConfigError for a spec this engine cannot run (before any I/O)."""


def register(engine_cls):
    REGISTRY[engine_cls.name] = engine_cls()
    return engine_cls


def get(name: str) -> Engine:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError("engine", name, "choose one of " + ", ".join(sorted(REGISTRY))) from None
