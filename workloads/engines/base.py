"""The Engine contract and its registry, after fio's ioengine_ops.

An in-process engine hands the worker loop two callables, `read(fd, iovec, offset)` and
`write(fd, buffer, offset)`, each returning the byte count; the loop times them. An external
engine (fio) runs the whole job itself and returns a Result.
"""
from __future__ import annotations

from ..errors import ConfigError

REGISTRY: dict[str, "Engine"] = {}


class Engine:
    name = ""
    does_io = True  # False: no files are created (the null engine measures the harness)
    external = False  # True: run_job() replaces the worker loop

    def ops(self, block_size: int):
        raise NotImplementedError

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
