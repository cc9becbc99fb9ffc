"""The schema the YAML in conf/ builds on, stored in Hydra's ConfigStore.

Every key is declared, so a misspelt key is refused while composing. The numbers and switches
are typed `Any` on purpose: OmegaConf would refuse `block_kb=abc` while Hydra composes a sweep's
job, which ends the whole sweep; iosweep checks them per point instead (runner.app.to_spec and
workloads.Spec.check), so a bad value fails its own point with one line and the rest still run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

# conf/ at the top of a checkout; a wheel installs it as runner/conf (pyproject.toml package-dir)
_INSTALLED_CONF = Path(__file__).resolve().parent / "conf"
CONF = _INSTALLED_CONF if _INSTALLED_CONF.is_dir() else Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("target", "pattern", "engine", "data", "point", "experiment")  # config groups: conf/<group>/*.yaml


@dataclass
class TargetConf:
    name: str = "local"
    dir: str = "outputs/scratch"  # relative paths are taken from the directory you run in
    path: Optional[str] = None  # target=device: an existing file or block device; target=file: file, dir or glob
    size_mb: Any = None  # target=file: cap on the bytes read (MiB); null: the files' size
    allow_overwrite: Any = False  # target=device: consent to overwrite it
    # target=s3 (conf/target/s3.yaml sets them; workloads/targets/s3.py checks them)
    endpoint_url: Optional[str] = None
    bucket: Any = None
    prefix: Any = None
    region: Any = None
    access_key_id: Any = None
    secret_access_key: Any = None
    max_connections: Any = None
    multipart_mb: Any = None
    create_bucket: Any = None
    connect_timeout_s: Any = None
    read_timeout_s: Any = None


@dataclass
class PatternConf:
    name: str = "seq_write"
    read_pct: Any = 100  # share of reads in percent; used by the mixed pattern
    trace: Optional[str] = None  # pattern=replay: fio iolog v2/v3 or CSV offset,length,op[,time_us]
    timing: Optional[str] = None  # pattern=replay: asap | original (conf/pattern/replay.yaml)
    order: Optional[str] = None  # pattern=model_load: file | layer (conf/pattern/model_load.yaml)


@dataclass
class EngineConf:
    name: str = "sync"
    ioengine: Optional[str] = None  # engine=fio only: fio's ioengine; null for iosweep's own engines
    batch_submit: Any = None  # engine=uring only (conf/engine/uring.yaml sets them)
    batch_complete: Any = None
    fixed_files: Any = None
    fixed_bufs: Any = None
    sqpoll: Any = None
    access: Optional[str] = None  # engine=mmap only: copy | touch (how a read accesses the mapping)


@dataclass
class DataConf:
    name: str = "dgen"
    compress_ratio: Any = 1
    dedup_ratio: Any = 1
    format: Optional[str] = None  # pattern=format_read only (conf/pattern/format_read.yaml sets it)
    rows: Any = None  # pattern=format_read only: rows of each worker's table
    producers: Any = 1  # dgen-py threads per worker filling its buffers, or auto (workloads/data.py)
    pool_buffers: Any = 4  # buffers in each worker's ring
    buffer_mb: Any = None  # MiB per buffer, a multiple of block_kb; null: >= 1 MiB of whole blocks
    refill: Any = True  # false: one buffer generated once and written again and again


@dataclass
class PrefetchConf:
    blocks: Any = 0  # application prefetch (workloads/hints.py): blocks kept requested ahead; 0 = off
    after: Any = 3  # sequential reads seen before prefetching starts


@dataclass
class MergeConf:
    batch: Any = 32  # merge_kb: ops per batch, sorted by offset and merged


@dataclass
class AppendConf:  # pattern=append only (conf/pattern/append.yaml sets them; null: not set)
    mode: Any = None
    buffer_kb: Any = None
    fsync: Any = None
    fsync_every: Any = None
    fsync_interval_ms: Any = None
    fsync_call: Any = None
    shared_file: Any = None
    fallocate: Any = None


@dataclass
class IosweepConfig:
    target: TargetConf = field(default_factory=TargetConf)
    pattern: PatternConf = field(default_factory=PatternConf)
    engine: EngineConf = field(default_factory=EngineConf)
    data: DataConf = field(default_factory=DataConf)
    prefetch: PrefetchConf = field(default_factory=PrefetchConf)
    merge: MergeConf = field(default_factory=MergeConf)
    merge_kb: Any = None
    append: AppendConf = field(default_factory=AppendConf)
    record_bytes: Any = None
    block_kb: Any = 1024
    writers: Any = 1  # a whole number, or auto (runner.app.resolve_auto)
    iodepth: Any = 1
    clients: Any = 1  # MPI ranks of one point (workloads/clients.py)
    client_timeout_s: Any = 300
    size_mb: Any = 256
    files_per_writer: Any = 1
    file_kb: Any = None
    object_mb: Any = None  # MiB per object (target=s3; null: 16) or per file (target=local/tmpfs; null: one file)
    duration_s: Any = None
    ramp_s: Any = 0.0
    direct: Any = False
    direct_fallback: Any = False
    end_fsync: Any = True
    cache: str = "cold"
    hint: Any = "none"  # read-ahead advice: checked against workloads.hints.HINTS per point
    repeats: Any = 1
    latency: Any = True
    seed: Any = 0
    trial: Any = 0
    study: Any = None  # a label: the named grid of a hydra/sweeper=studies sweep
    keep_files: Any = False
    log_interval_s: Any = 1.0
    objective: str = "throughput_mib_s"  # a metric name: what the task function returns
    allow_concurrent_points: Any = False  # a launcher running points at once on one host (runner/launchers.py)


def expose_hydra_plugins() -> None:
    """Hydra finds sweepers by listing the `hydra_plugins` namespace on disk. An editable install
    (setuptools >= 64) serves this project through an import hook that cannot be listed
    (hydra issue 2359), so hydra/sweeper=studies would be unknown: put the checkout's root, which
    holds hydra_plugins/iosweep_studies, on sys.path. An installed copy sits in site-packages,
    already on it. Must run before Hydra's first plugin scan (Plugins.instance())."""
    import sys

    root = Path(__file__).resolve().parents[1]
    if (root / "hydra_plugins" / "iosweep_studies").is_dir() and str(root) not in sys.path:
        sys.path.append(str(root))


def register() -> None:
    expose_hydra_plugins()
    ConfigStore.instance().store(name="iosweep_schema", node=IosweepConfig)
    from omegaconf import OmegaConf

    from .helptext import knob_help

    OmegaConf.register_new_resolver("iosweep_knobs", knob_help, replace=True)  # --help (conf/hydra/help)
