"""The typed schema the YAML in conf/ builds on, stored in Hydra's ConfigStore.

A misspelt key or a value of the wrong type is refused by OmegaConf while composing, before any
code of ours runs. Range checks live in workloads.Spec.check(), so the library enforces them too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TargetConf:
    name: str = "local"
    dir: str = "outputs/scratch"  # relative paths are taken from the directory you run in


@dataclass
class PatternConf:
    name: str = "seq_write"
    read_pct: int = 100  # share of reads in percent; used by the mixed pattern


@dataclass
class EngineConf:
    name: str = "sync"
    ioengine: Optional[str] = None  # engine=fio only: fio's ioengine; null for iosweep's own engines


@dataclass
class DataConf:
    name: str = "dgen"
    compress_ratio: int = 1
    dedup_ratio: int = 1


@dataclass
class IosweepConfig:
    target: TargetConf = field(default_factory=TargetConf)
    pattern: PatternConf = field(default_factory=PatternConf)
    engine: EngineConf = field(default_factory=EngineConf)
    data: DataConf = field(default_factory=DataConf)
    block_kb: int = 1024
    writers: int = 1
    size_mb: int = 256
    duration_s: Optional[float] = None
    ramp_s: float = 0.0
    direct: bool = False
    direct_fallback: bool = False
    end_fsync: bool = True
    cache: str = "cold"
    repeats: int = 1
    latency: bool = True
    seed: int = 0
    trial: int = 0
    keep_files: bool = False
    log_interval_s: float = 1.0


def register() -> None:
    ConfigStore.instance().store(name="iosweep_schema", node=IosweepConfig)
