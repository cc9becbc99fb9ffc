"""cfg -> workloads.Spec -> workloads.run() -> result.json -> MLflow; user errors -> one line.

A single run with bad input exits 2 before any I/O and before any MLflow run exists. In a sweep
the bad point becomes a FAILED child run carrying the one-line error and the sweep goes on.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import workloads
from workloads import ConfigError, DataSpec, Interrupted, Result, Spec, WorkloadError
from workloads.spec import S3Spec

from . import console, host, launchers, secrets, tracking
from .schema import GROUPS
_UID = f"{os.getpid()}"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed


def stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted once; later ones are ignored so that cleanup
    and the record of the KILLED run complete (every wait in that cleanup is bounded)."""
    def handler(signum, frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def register_resolvers() -> None:
    # Run dirs are named by second; the pid keeps two runs started in the same second apart.
    OmegaConf.register_new_resolver("iosweep_uid", lambda: _UID, replace=True)


def quote_null_choices(args: list[str]) -> list[str]:
    """`engine=null` must pick conf/engine/null.yaml, but Hydra reads a bare null as None."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in GROUPS and "null" in value.split(","):
            value = ",".join("'null'" if v == "null" else v for v in value.split(","))
        out.append(f"{key}{sep}{value}")
    return out


def _whole(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"must be a whole number >= {minimum}")
    return value


def _number(cfg: DictConfig, key: str, minimum: float = 0.0, optional: bool = False, strict: bool = True):
    value = OmegaConf.select(cfg, key)
    if optional and value is None:
        return None
    # inf and nan pass a plain comparison (nan compares False) and then overflow the ns clocks
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (value <= minimum if strict else value < minimum):
        rule = f"must be a finite number {'>' if strict else '>='} {minimum:g}" + (" or null" if optional else "")
        raise ConfigError(key, value, rule)
    return float(value)


def _switch(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def _resolve_all(cfg: DictConfig) -> None:
    """An interpolation that cannot be resolved (`${nope}`, `${oc.env:UNSET}`) is the user's error
    naming its key; in a sweep where only some points have it, those points fail alone."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raw = OmegaConf.to_container(cfg)  # unresolved: the text the user wrote
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        reason = str(e).strip().splitlines()[0]
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", reason).strip("\"'")  # oc.env's KeyError
        raise ConfigError(key, raw, f"cannot be resolved ({reason}): define what it refers to or give a value") \
            from None


def to_spec(cfg: DictConfig) -> Spec:
    """Type-check the knobs (the schema leaves them loose, see schema.py), then range-check."""
    _resolve_all(cfg)
    _switch(cfg, "allow_concurrent_points")  # runner.launchers reads it in a sweep; a single run checks it too
    return Spec(
        pattern=cfg.pattern.name, read_pct=_whole(cfg, "pattern.read_pct", 0),
        block_size=_whole(cfg, "block_kb") * 1024, writers=_whole_or_auto(cfg, "writers"), clients=_whole(cfg, "clients"),
        iodepth=_whole(cfg, "iodepth"),
        size_bytes=_size_bytes(cfg), duration_s=_number(cfg, "duration_s", optional=True),
        ramp_s=_number(cfg, "ramp_s", strict=False), direct=_switch(cfg, "direct"),
        direct_fallback=_switch(cfg, "direct_fallback"), end_fsync=_switch(cfg, "end_fsync"),
        engine=cfg.engine.name, ioengine=cfg.engine.ioengine, target=cfg.target.name, target_dir=cfg.target.dir,
        target_path=cfg.target.path, allow_overwrite=_switch(cfg, "target.allow_overwrite"),
        data=DataSpec(cfg.data.name, _whole(cfg, "data.compress_ratio"), _whole(cfg, "data.dedup_ratio"),
                      cfg.data.format, None if cfg.data.rows is None else _whole(cfg, "data.rows"),
                      **_pipeline_knobs(cfg)),
        seed=_whole(cfg, "seed", 0), keep_files=_switch(cfg, "keep_files"),
        log_interval_s=_number(cfg, "log_interval_s"), cache=cfg.cache, repeats=_whole(cfg, "repeats"),
        latency=_switch(cfg, "latency"), access=cfg.engine.access, **_uring_knobs(cfg),
        hint=cfg.hint, prefetch_blocks=_whole(cfg, "prefetch.blocks", 0), prefetch_after=_whole(cfg, "prefetch.after", 0),
        **_files_or_objects(cfg),
        trace=cfg.pattern.trace, timing=cfg.pattern.timing or "asap", order=cfg.pattern.order or "file",
        **_merge_knobs(cfg), **_append_knobs(cfg), **_s3_knobs(cfg),
    ).check()


OBJECT_MB_DEFAULT = 16  # target=s3 with object_mb=null
FILE_PATTERNS_BY_OBJECT = ("seq_write", "seq_read", "rand_read", "rand_write", "mixed")  # local files of object_mb


def _object_bytes(cfg: DictConfig) -> int | None:
    """object_mb in bytes; None when null."""
    mb = OmegaConf.select(cfg, "object_mb")
    if mb is None:
        return None
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb <= 0 \
            or (mb * (1 << 20)) % 1024 or mb > (5 << 20):
        raise ConfigError("object_mb", mb, "must be a number of MiB > 0 (a whole number of KiB, at most 5 TiB, "
                                           "S3's largest object), or null")
    return int(mb * (1 << 20))


def _files_or_objects(cfg: DictConfig) -> dict:
    """files_per_writer and file_kb, or what object_mb makes of them: on target=local/tmpfs each writer
    writes files of object_mb (size_mb / writers / object_mb of them), so a sweep over target=local,s3
    compares files and objects of one size; target=s3 reads object_mb itself (_s3_knobs)."""
    ob = _object_bytes(cfg)
    if ob is None or cfg.target.name == "s3":
        return {"files_per_writer": _whole(cfg, "files_per_writer"), "file_bytes": _file_bytes(cfg)}
    if cfg.target.name not in ("local", "tmpfs") or cfg.pattern.name not in FILE_PATTERNS_BY_OBJECT:
        raise ConfigError("object_mb", cfg.object_mb, f"sizes objects (target=s3) or, with target=local/tmpfs and "
                                                      f"pattern {'/'.join(FILE_PATTERNS_BY_OBJECT)}, files: not "
                                                      f"target={cfg.target.name} pattern={cfg.pattern.name}; "
                                                      "set object_mb=null")
    for key in ("file_kb", "files_per_writer"):
        if OmegaConf.select(cfg, key) not in (None, 1) or (key == "file_kb" and cfg.file_kb is not None):
            raise ConfigError(key, OmegaConf.select(cfg, key), "object_mb sets the files' size and count itself: "
                                                               f"drop {key}, or set object_mb=null")
    block = _whole(cfg, "block_kb") * 1024
    if ob % block:
        raise ConfigError("object_mb", cfg.object_mb, f"must be a multiple of block_kb={block >> 10} with "
                                                      f"target={cfg.target.name} (every op a whole block of one file): "
                                                      "lower block_kb")
    share = (_whole(cfg, "size_mb") << 20) // _whole_or_auto(cfg, "writers")
    if share < ob:
        raise ConfigError("size_mb", cfg.size_mb, f"too small for writers={cfg.writers} x object_mb={cfg.object_mb}: "
                                                  "each writer needs one file")
    return {"files_per_writer": share // ob, "file_bytes": ob}


def _s3_knobs(cfg: DictConfig) -> dict:
    """target=s3's keys and object_mb, type-checked (workloads/targets/s3.py checks the rest); other
    targets leave them out."""
    if cfg.target.name != "s3":
        return {}
    ob = _object_bytes(cfg)
    if ob is not None and cfg.pattern.name == "metadata":
        raise ConfigError("object_mb", cfg.object_mb, "pattern=metadata sizes its objects with file_kb (0: empty): "
                                                      "set object_mb=null")
    ob = ob or OBJECT_MB_DEFAULT << 20
    text = {k: OmegaConf.select(cfg, f"target.{k}") for k in ("endpoint_url", "bucket", "prefix", "region",
                                                             "access_key_id", "secret_access_key")}
    for key, value in text.items():
        if value is not None and not isinstance(value, str):
            shown = "MASKED" if key in ("access_key_id", "secret_access_key") else value
            raise ConfigError(f"target.{key}", shown, "must be a string (quote it)")
    if text["bucket"] is None:
        raise ConfigError("target.bucket", None, "target=s3 needs a bucket: set target.bucket=NAME")
    return {"object_bytes": ob, "s3": S3Spec(
        endpoint_url=text["endpoint_url"], bucket=text["bucket"], prefix=text["prefix"] or "",
        region="us-east-1" if text["region"] is None else text["region"], access_key_id=text["access_key_id"],
        secret_access_key=text["secret_access_key"], max_connections=_whole(cfg, "target.max_connections"),
        multipart_bytes=int(_number(cfg, "target.multipart_mb") * (1 << 20)),
        create_bucket=_switch(cfg, "target.create_bucket"),
        connect_timeout_s=_number(cfg, "target.connect_timeout_s"), read_timeout_s=_number(cfg, "target.read_timeout_s"))}


def _append_knobs(cfg: DictConfig) -> dict:
    """record_bytes and append.*, type-checked where set (workloads/append.py checks their ranges and
    refuses them with another pattern). end_fsync=true typed beside a policy other than end is refused:
    append.fsync is the one durability knob of an append point."""
    knobs = {}
    if OmegaConf.select(cfg, "record_bytes") is not None:
        value = cfg.record_bytes
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("record_bytes", value, "must be a whole number of bytes >= 1")
        knobs["record_bytes"] = value
    for key, check in (("mode", str), ("buffer_kb", int), ("fsync", str), ("fsync_every", int),
                       ("fsync_interval_ms", float), ("fsync_call", str), ("shared_file", bool), ("fallocate", bool)):
        value = OmegaConf.select(cfg, f"append.{key}")
        if value is None:
            continue
        if check is int:
            value = _whole(cfg, f"append.{key}", 0 if cfg.pattern.name != "append" else 1)
        elif check is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"append.{key}", value, "must be a number of milliseconds > 0")
        elif check is bool:
            value = _switch(cfg, f"append.{key}")
        else:
            value = str(value)
        knobs[f"append_{key}"] = value
    typed = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    if knobs.get("append_fsync", "end") != "end" and cfg.end_fsync is True \
            and any(o.lstrip("+~").split("=", 1)[0] == "end_fsync" for o in typed):
        raise ConfigError("end_fsync", True, f"contradicts append.fsync={knobs['append_fsync']} (end_fsync=true is "
                                             "append.fsync=end): drop end_fsync, or set append.fsync=end")
    return knobs


AUTO_KEYS = ("writers", "data.producers")  # knobs that take `auto` (resolve_auto)


def _whole_or_auto(cfg: DictConfig, key: str) -> int:
    """A knob that also takes `auto`. A job's resolve_auto replaces `auto` by a number before to_spec;
    where `auto` still reaches it (resolve_auto's own check, preflight's) it checks the rest as 1."""
    value = OmegaConf.select(cfg, key)
    if value == "auto":
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be a whole number >= 1, or auto (chosen from the CPUs and a "
                                      "calibration of dgen-py)")
    return value


def _pipeline_knobs(cfg: DictConfig) -> dict:
    """data.producers, data.pool_buffers, data.buffer_mb, data.refill: the streaming writer's pipeline
    (data=zeros leaves them at their defaults; Spec.check range-checks them)."""
    knobs = {}
    if OmegaConf.select(cfg, "data.producers") is not None:
        knobs["producers"] = _whole_or_auto(cfg, "data.producers")
    if OmegaConf.select(cfg, "data.pool_buffers") is not None:
        knobs["pool_buffers"] = _whole(cfg, "data.pool_buffers")
    if OmegaConf.select(cfg, "data.buffer_mb") is not None:
        mb = OmegaConf.select(cfg, "data.buffer_mb")
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb <= 0 \
                or (mb * (1 << 20)) % 1024:
            raise ConfigError("data.buffer_mb", mb, "must be a number of MiB > 0 (a whole number of KiB), "
                                                    "or null for the default")
        knobs["buffer_bytes"] = int(mb * (1 << 20))
    if OmegaConf.select(cfg, "data.refill") is not None:
        knobs["refill"] = _switch(cfg, "data.refill")
    return knobs


def resolve_auto(cfg: DictConfig) -> dict[str, str]:
    """writers=auto and data.producers=auto -> numbers, in cfg (so params and run name hold them),
    chosen by workloads.data.auto_tune from the usable CPUs and a calibration of dgen-py; printed.
    Returns the tag that says what was auto. Any other bad knob fails here by name (to_spec)."""
    keys = [k for k in AUTO_KEYS if OmegaConf.select(cfg, k) == "auto"]
    if not keys:
        return {}
    from workloads.data import auto_tune

    spec = workloads.checked(to_spec(cfg))  # auto counts as 1 here
    writers, producers, measured = auto_tune(spec, "writers" in keys, "data.producers" in keys)
    chosen = {"writers": writers, "data.producers": producers}
    for key in keys:
        OmegaConf.update(cfg, key, chosen[key])
    why = f"{measured['cpus']} usable CPUs"
    if "datagen_1_mib_s" in measured:
        why += (f"; one dgen-py producer {measured['datagen_1_mib_s']:.0f} MiB/s, one thread copies "
                f"{measured['copy_mib_s']:.0f} MiB/s")
    said = " ".join(f"{k}=auto->{chosen[k]}" for k in keys)
    print(f"iosweep: {said} ({why})", flush=True)
    return {"iosweep.auto": f"{said} ({why})"}


def _merge_knobs(cfg: DictConfig) -> dict:
    """merge_kb (null or -1: off; a negative other than -1 is refused) and merge.batch."""
    if cfg.merge_kb is None or (cfg.merge_kb == -1 and not isinstance(cfg.merge_kb, bool)):
        return {}
    value = cfg.merge_kb
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("merge_kb", value, "must be a whole number of KiB >= 0 (0: merge adjacent requests only), "
                                             "or null / -1 to turn merging off")
    return {"merge_kb": value, "merge_batch": _whole(cfg, "merge.batch")}


def _uring_knobs(cfg: DictConfig) -> dict:
    """engine=uring's knobs, type-checked where set (the other engines leave them null)."""
    knobs = {}
    for key in ("batch_submit", "batch_complete"):
        if OmegaConf.select(cfg, f"engine.{key}") is not None:
            knobs[key] = _whole(cfg, f"engine.{key}")
    for key in ("fixed_files", "fixed_bufs", "sqpoll"):
        if OmegaConf.select(cfg, f"engine.{key}") is not None:
            knobs[key] = _switch(cfg, f"engine.{key}")
    return knobs


def _file_bytes(cfg: DictConfig) -> int | None:
    """file_kb in bytes (null: the writer's share of size_mb); 0 only for pattern=metadata (Spec.check says)."""
    if OmegaConf.select(cfg, "file_kb") is None:
        return None
    return _whole(cfg, "file_kb", 0) * 1024


def _size_bytes(cfg: DictConfig) -> int | None:
    """The working set: size_mb, or for target=file the files' size (None) capped by target.size_mb.

    target=file has its own cap because size_mb always has a value (the default): an explicit
    size_mb=... there would be silently ignored, so it is refused."""
    if cfg.target.name != "file":
        return _whole(cfg, "size_mb") << 20
    typed = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    if any(o.lstrip("+~").split("=", 1)[0] == "size_mb" for o in typed):
        raise ConfigError("size_mb", cfg.size_mb, "does not apply to target=file, which reads the files' size: "
                                                  "cap it with target.size_mb instead")
    return None if cfg.target.size_mb is None else _whole(cfg, "target.size_mb") << 20


def run_name(cfg: DictConfig) -> str:
    def get(key):  # a bad interpolation must not stop the point before to_spec names it
        return OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    if get("pattern.name") == "format_read":  # no blocks: the table's format and rows say what it read
        return f"format_read {get('data.format')} {get('data.rows')} rows x{get('writers')}"
    if get("pattern.name") == "append":  # records, not blocks: their size, buffering and durability policy
        return (f"append {get('record_bytes')} B {get('append.mode')} fsync={get('append.fsync') or 'default'} "
                f"x{get('writers')} {get('engine.name')}")
    if get("object_mb") is not None or (get("target.name") == "s3" and get("pattern.name") != "metadata"):
        rng = f" {get('block_kb')}k" if get("pattern.name") != "seq_write" or get("target.name") != "s3" else ""
        return (f"{get('pattern.name')} {get('object_mb') or OBJECT_MB_DEFAULT}MiB "
                f"{'objects' if get('target.name') == 's3' else 'files'}{rng} x{get('writers')} {get('target.name')}")
    return f"{get('pattern.name')} {get('block_kb')}k x{get('writers')} {get('engine.name')}"


# param -> whether it does anything at this point (keys not listed always apply): the MLflow run
# shows only the knobs that shaped the measurement
APPLIES = {
    "pattern.read_pct": lambda c: c.pattern.name == "mixed",  # the other patterns fix the mix
    "block_kb": lambda c: c.pattern.name not in ("replay", "format_read", "append") and not _s3_whole(c),  # replay: the trace's ops set their
    #           lengths; format_read: a load is one call of the format's reader
    "merge.batch": lambda c: c.merge_kb not in (None, -1),
    "end_fsync": lambda c: Spec(pattern=c.pattern.name, trace=c.pattern.trace).writes and c.target.name != "s3"
    and not (c.pattern.name == "append" and c.append.fsync is not None),  # append.fsync decides then
    "append.buffer_kb": lambda c: c.append.mode == "buffered",
    "append.fsync_every": lambda c: c.append.fsync == "every",
    "append.fsync_interval_ms": lambda c: c.append.fsync == "interval",
    "append.fsync_call": lambda c: c.append.fsync in (None, "end", "every", "interval") and c.append.mode != "mmap",
    "direct_fallback": lambda c: c.direct is True,
    "engine.ioengine": lambda c: c.engine.name == "fio",
    **{f"engine.{k}": (lambda c: c.engine.name == "uring")
       for k in ("batch_submit", "batch_complete", "fixed_files", "fixed_bufs", "sqpoll")},
    "engine.access": lambda c: c.engine.name == "mmap",
    # the streaming writer's pipeline: iosweep's own workers writing dgen-py data (fio fills its own buffers)
    **{f"data.{k}": (lambda c: c.data.name == "dgen" and c.engine.name not in ("fio", "null")
                     and Spec(pattern=c.pattern.name, trace=c.pattern.trace).writes)
       for k in ("producers", "pool_buffers", "refill")},
    "data.buffer_mb": lambda c: c.engine.name not in ("fio", "null") and Spec(pattern=c.pattern.name,
                                                                              trace=c.pattern.trace).writes,
    "prefetch.after": lambda c: c.prefetch.blocks != 0,
    "client_timeout_s": lambda c: c.clients != 1,
    "target.dir": lambda c: c.target.name not in ("device", "file", "s3"),
    "target.path": lambda c: c.target.name in ("device", "file"),
    "target.size_mb": lambda c: c.target.name == "file",
    "size_mb": lambda c: c.target.name != "file" and c.file_kb is None
    and c.pattern.name not in ("metadata", "format_read", "replay"),
    #          target=file reads the files' size (target.size_mb caps it); file_kb sets it; metadata: file_kb;
    #          format_read: data.rows sizes the table; replay: the trace's extent
    "target.allow_overwrite": lambda c: c.target.name == "device",
    "object_mb": lambda c: c.pattern.name != "metadata",  # null (not logged) but with s3 and local/tmpfs
    "files_per_writer": lambda c: c.target.name != "file" and c.pattern.name not in ("format_read", "replay")
    and c.object_mb is None,  # object_mb sets it

    **{f"target.{k}": (lambda c: c.target.name == "s3")
       for k in ("endpoint_url", "bucket", "prefix", "region", "access_key_id", "secret_access_key", "max_connections",
                 "multipart_mb", "create_bucket", "connect_timeout_s", "read_timeout_s")},
    **{k: (lambda c: c.target.name != "s3") for k in ("cache", "direct", "hint")},  # knobs of files
    "data.compress_ratio": lambda c: c.data.name == "dgen" and c.target.name != "file"  # file: the user's bytes
    and c.pattern.name != "format_read",  # format_read: numpy's table, not dgen's bytes
    "data.dedup_ratio": lambda c: c.data.name == "dgen" and c.target.name != "file" and c.pattern.name != "format_read",
}


def _s3_whole(c: DictConfig) -> bool:
    """target=s3 requests of whole objects in one request: block_kb (a range, a multipart part) plays no part."""
    if c.target.name != "s3":
        return False
    if c.pattern.name == "rand_read":
        return False
    ob, mp = c.object_mb or OBJECT_MB_DEFAULT, c.target.multipart_mb
    return c.pattern.name in ("metadata", "seq_read") or not (isinstance(mp, (int, float)) and ob > mp)


def _applies(key: str, cfg: DictConfig) -> bool:
    try:
        return key not in APPLIES or APPLIES[key](cfg)
    except (OmegaConfBaseException, ConfigError):  # the deciding knob does not resolve (or names a bad trace):
        return True  # keep the key, the point fails by name


def params_of(cfg: DictConfig, hc) -> dict[str, str]:
    """The point's knobs as MLflow params: unset (null) keys and keys that do not apply are left out,
    and a group appears once, as its choice (`engine`, not also `engine.name`)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation that does not resolve: to_spec fails the point by name
        container = OmegaConf.to_container(cfg)
    params = {k: v for k, v in tracking.flatten(_without_none(container)).items() if _applies(k, cfg)}
    for group in GROUPS:
        choice = hc.runtime.choices.get(group)
        if choice is not None:
            params[group] = str(choice)
            if params.get(f"{group}.name") == params[group]:
                del params[f"{group}.name"]
    return params


def _without_none(d: dict) -> dict:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def run_point(cfg: DictConfig) -> float:
    """Measure one point, write its run dir (result.json first), then publish it to MLflow.

    Returns the point's objective (the metric `objective` names; NaN when the point failed), the
    value optimising sweepers (Optuna, Nevergrad) minimise or maximise. The sweep's own summary is
    read from the run dirs (tracking.sweep_points), never from this return value.
    """
    if other_rank():
        return _run_as_other_rank(cfg)
    hc = HydraConfig.get()
    for name in ("botocore", "boto3"):  # target=s3: "Found credentials in environment variables" is not news
        logging.getLogger(name).setLevel(logging.WARNING)
    secrets.remember_config(cfg)  # also values interpolated into harmless keys: masked at every exit
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    start_ms = int(time.time() * 1000)
    progress = console.Progress()
    # the overrides as typed: reading the list through OmegaConf would resolve `trial=${oc.env:DB_TOKEN}`
    typed = OmegaConf.to_container(hc.overrides.task)
    base = {"result_id": uuid.uuid4().hex, "name": run_name(cfg), "overrides": typed,
            "params": params_of(cfg, hc), "start_ms": start_ms,
            "parent_run_id": tracking.parent_run_id() if multirun else None}
    clients = None
    try:
        objective = _objective(cfg)
        auto = resolve_auto(cfg)
        if auto:  # the params and the name hold the resolved numbers
            base.update(name=run_name(cfg), params=params_of(cfg, hc))
        clients = _clients(cfg)  # first: a check that fails on one host only must reach rank 0 through it
        if clients is not None:
            progress.label = "  (rank 0's workers only)"
        spec = workloads.checked(to_spec(cfg))  # a point its engine or target refuses prints no header
        print(f"iosweep: {console.describe(spec)}", flush=True)
        result = workloads.run(spec, progress=progress, clients=clients)
    except Interrupted as stopped:  # record what was measured as KILLED, then stop (a sweep too)
        progress.done()
        reason = f"interrupted by {signal.Signals(stopped.signum).name}"
        dead = clients.dead_peers() if clients is not None else []
        if dead:  # mpirun ends every rank when one dies: that rank is the story, not the signal
            reason = f"{', '.join(dead)} died (killed or crashed); mpirun then stopped this rank with " \
                     f"{signal.Signals(stopped.signum).name}"
        elif clients is not None:  # a rank on another host may have died: only mpirun's message can say which
            reason += " under mpirun (if no one stopped the job, another rank ended: mpirun's message names it)"
        files = []
        if stopped.partial is not None:
            print(console.result_table(stopped.partial), flush=True)
            # no PNG: importing matplotlib would hold the exit up by seconds (the JSON histogram stays)
            measured, files = _measured(cfg, hc, stopped.partial, start_ms, plot=multirun)
            record = dict(base, **measured)
            record["tags"]["iosweep.error"] = reason
            record.update(status="FAILED" if dead else "KILLED", error=reason)
        else:
            record = _unmeasured(base, "FAILED" if dead else "KILLED", reason,
                                 why=reason + " before the measured window")
        stopped.recorded_as = record["status"]
        if multirun:  # the sweep's parent closes in this process: MLflow is loaded already
            _write_and_publish(run_dir, record, files)
        else:  # exit now: importing MLflow to publish takes seconds
            _write_and_publish_later(run_dir, record, files)
        if clients is not None:  # recorded: the other ranks stop their workers and leave (no further point)
            clients.fail(reason, final=True)
        raise
    except (ConfigError, WorkloadError) as e:
        progress.done()
        if clients is not None:
            clients.fail(str(e))  # the other ranks stop their workers; they wait for done() below
        if not multirun and isinstance(e, ConfigError):
            _clients_done(clients)
            console.fail(str(e))  # bad input, single run: one line, no MLflow run
        record, files = _unmeasured(base, "FAILED", str(e)), []
        if getattr(e, "partial", None) is not None:  # a worker got stuck: keep what the others measured
            measured, files = _measured(cfg, hc, e.partial, start_ms)
            record = dict(base, **measured)
            record["tags"]["iosweep.error"] = str(e)
            record.update(status="FAILED", error=str(e))
        if clients is not None and clients.dead_peers() and not multirun:
            # mpirun ends this rank within a second of another's death: record it from a detached process
            _write_and_publish_later(run_dir, record, files)
            console.fail(str(e))
        _write_and_publish(run_dir, record, files)
        _clients_done(clients)
        if workloads.clients.broken():  # a rank is lost: no further point can run (the sweep's parent closes at exit)
            console.fail(str(e))
        if not multirun:
            console.fail(str(e))
        print(f"iosweep: point failed: {e}", flush=True)
        if _optimising(hc):
            raise TrialFailed(str(e)) from None
        return float("nan")
    progress.done()
    print(console.result_table(result), flush=True)
    measured, files = _measured(cfg, hc, result, start_ms)
    record = dict(base, **measured)
    record["tags"].update(auto)
    _write_and_publish(run_dir, record, files)
    _clients_done(clients)
    # an invalid point (page cache, O_DIRECT ignored, null engine) is no answer: an optimiser counts it failed
    value = float(record["metrics"].get(objective, float("nan"))) if record.get("valid") else float("nan")
    if math.isnan(value) and _optimising(hc):
        raise TrialFailed(f"{objective} of this point is no answer: " + (record["warnings"][0] if record.get(
            "warnings") else "not measured"))
    return value


def other_rank() -> bool:
    """A rank > 0 of an MPI job: it runs its workers and reports to rank 0, which alone prints and records."""
    return bool(workloads.clients.mpi_rank())


def _clients(cfg: DictConfig):
    """The MPI job of a clients > 1 point (checked against clients), its point counted; None for one client."""
    clients = workloads.clients.world(_whole(cfg, "clients"), _number(cfg, "client_timeout_s"))
    if clients is not None:
        clients.begin_point()
    return clients


def _clients_done(clients) -> None:
    if clients is not None and clients.rank == 0:
        clients.done()


def _run_as_other_rank(cfg: DictConfig) -> float:
    """A rank > 0: run this rank's share of the point and send it to rank 0 (workloads/clients.py); print,
    write and record nothing (rank 0 does). Whatever fails here reaches rank 0, which names this rank."""
    clients = failed = None
    try:
        clients = _clients(cfg)
        workloads.run(workloads.checked(to_spec(cfg)), clients=clients)
    except (ConfigError, WorkloadError, Interrupted) as e:
        failed = e
    except Exception as e:  # a bug: rank 0 says which and where
        failed = WorkloadError(f"{type(e).__name__}: {e}")
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if clients is None:  # failed before it joined the job: so did rank 0 (the same config), which says why
        if isinstance(failed, Interrupted):
            raise failed
        if failed is not None and not multirun:
            sys.exit(2)
        return float("nan")
    try:
        if isinstance(failed, Interrupted):  # rank 0 records the point FAILED naming this rank and ends the job
            clients.fail(f"was stopped by {signal.Signals(failed.signum).name}", final=True)
            clients.wait_done()
            raise failed
        if failed is not None:
            clients.fail(str(failed))  # nothing to send when rank 0 ended the point itself
        if isinstance(failed, workloads.clients.RankLost):  # rank 0 is stopped or stuck: it cannot say it
            raise failed
        if not clients.final:
            clients.wait_done()  # exiting first would make mpirun end rank 0 before it recorded the point
    except workloads.clients.RankLost as lost:
        print(f"iosweep: error: rank {clients.rank} (pid {clients.pid} on {clients.host}): {lost}", file=sys.stderr,
              flush=True)
        sys.exit(2)  # without MPI_Finalize (runner.__main__): it would wait for rank 0
    if clients.final:  # rank 0 was stopped: no further point; exit 0, or mpirun would end rank 0 while it closes
        sys.exit(0)
    if failed is not None and not multirun:
        sys.exit(2)
    return float("nan")


class TrialFailed(Exception):
    """For an optimising sweeper (Optuna): the point measured nothing valid. Optuna's sweeper cannot take NaN
    (hydra-optuna-sweeper 1.3 with optuna 2.10 fails the whole sweep on it), but counts a job that raised
    as a failed trial (tracking.optuna_defaults sets max_failure_rate=1 so the search goes on)."""


def _optimising(hc) -> bool:
    return "optuna" in str(OmegaConf.select(hc, "sweeper._target_") or "").lower()


def _objective(cfg: DictConfig) -> str:
    name = OmegaConf.select(cfg, "objective")
    if name not in tracking.OBJECTIVES:
        raise ConfigError("objective", name, f"not a metric; choose one of {', '.join(tracking.OBJECTIVES)}")
    return name


def _unmeasured(base: dict, status: str, error: str, why: str | None = None) -> dict:
    """The record of a point that measured nothing: its status, why, and its overrides."""
    return dict(base, status=status, error=error, metrics={}, end_ms=int(time.time() * 1000),
                artifacts=[[".hydra", ".hydra"]],
                tags={"iosweep.error": why or error, "iosweep.overrides": " ".join(base["overrides"]),
                      **host.host_tags()})


def _write_new(path: Path, write) -> None:
    """Create path (never over an existing file) with write(path); on failure no partial file stays."""
    path.touch(exist_ok=False)  # FileExistsError: iosweep wrote it twice (a bug), and a foreign file stays
    try:
        write(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_and_publish(run_dir: Path, record: dict, files: list = ()) -> str | None:
    """result.json first and small (the measurement is never lost), then the bulkier files, then
    MLflow. A full disk after result.json costs only the files it refused: the run is published
    FINISHED with the tag iosweep.artifacts_missing. One line says what was lost; a store that is
    down is one line and exit 3, with the way to import the run later."""
    launchers.mark_point(record)  # points run at the same time by consent: tagged, and a warning
    kept = True
    try:
        _write_new(run_dir / "result.json", lambda p: p.write_text(json.dumps(record, indent=1)))
    except OSError as e:
        kept, disk_error = False, e
    unwritten = []
    for name, write in files:
        try:
            _write_new(run_dir / name, write)
        except OSError as e:
            unwritten.append(name)
            disk_error = e
    lost = ([] if kept else ["result.json"]) + unwritten
    disk = f"{run_dir}: {disk_error.strerror or disk_error}: {', '.join(lost)} not written" if lost else ""
    try:  # without result.json on disk the record goes to MLflow from memory: its only copy
        run_id, _ = tracking.publish(run_dir, None if kept else record)
    except tracking.BadRecord:
        raise  # a bug: the record iosweep just made must be loggable
    except Exception as e:  # any failure of the store: the result is safe on disk (if it fit)
        where = (f"the result is kept in {run_dir / 'result.json'}: import it later with python -m runner.sync "
                 f"{run_dir}") if kept else "the measurement shown above is lost"
        message = (f"tracking store {tracking.tracking_uri()} unavailable ({tracking.store_reason(e)}); {where}"
                   + (f"; also {disk}" if disk else ""))
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            console.fail(message, code=3)
        # a sweep goes on: its other points are worth measuring; it exits 3 at the end (SweepCallback)
        print(f"iosweep: error: {message}", file=sys.stderr, flush=True)
        return None
    print(f"  mlflow run {run_id}  ({tracking.tracking_uri()})", flush=True)
    if disk:
        message = (f"{disk}; the measurement is in MLflow run {run_id}"
                   + (" and result.json" if kept else " only") + " (tag iosweep.artifacts_missing); free space there")
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            console.fail(message)
        print(f"iosweep: error: {message}", file=sys.stderr, flush=True)
    return run_id


def _write_and_publish_later(run_dir: Path, record: dict, files: list = ()) -> None:
    """result.json and the files it can, then a detached `python -m runner.sync RUN_DIR` publishes
    them (output in sync.log): a stopped run exits at once. Its own session: the terminal's signals
    spare it. A file the disk refuses is left out; sync tags the run with what is missing."""
    _write_new(run_dir / "result.json", lambda p: p.write_text(json.dumps(record, indent=1)))
    for name, write in files:
        try:
            _write_new(run_dir / name, write)
        except OSError:
            pass
    with open(run_dir / "sync.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "runner.sync", str(run_dir.absolute())], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"  publishing to {tracking.tracking_uri()} in the background (log: {run_dir / 'sync.log'}); "
          f"if it fails: python -m runner.sync {run_dir}", flush=True)
    return None


def _measured(cfg: DictConfig, hc, result: Result, start_ms: int, plot: bool = True) -> tuple[dict, list]:
    """What a measured point leaves: its record for result.json (small: the summary metrics,
    tags, params, status) and the files written after it, as (name, write(path)) pairs: the
    config, the time series, the latency histograms and plot (unless not plot: importing
    matplotlib takes 1-2 s), the engine's attachments."""
    series = {"timeseries": result.timeseries, "step_metrics": _step_metrics(result, start_ms)}
    files = [("config.yaml", lambda p: p.write_text(tracking.resolved_yaml(cfg))),
             ("timeseries.json", lambda p: p.write_text(json.dumps(series)))]
    artifacts = [["result.json", None], ["config.yaml", None], [".hydra", ".hydra"], ["timeseries.json", "data"]]
    if result.latency.total:
        histograms = {"read": result.lat_read.to_dict(), "write": result.lat_write.to_dict()}
        files.append(("latency_histogram.json", lambda p: p.write_text(json.dumps(histograms))))
        artifacts.append(["latency_histogram.json", "latency"])
        if plot:
            from . import plots

            files.append(("latency.png", lambda p: plots.latency_png(result.lat_read, result.lat_write, p)))
            artifacts.append(["latency.png", "latency"])
    if "clients" in result.info:  # clients > 1: each rank's own figures, as IOR's per-task table
        files.append(("clients.csv", lambda p: p.write_text(_clients_csv(result.info["clients"]))))
        artifacts.append(["clients.csv", "clients"])
    for name, text in result.attachments.items():  # e.g. fio's job file and JSON output
        files.append((name, lambda p, text=text: p.write_text(text)))
        artifacts.append([name, "engine"])
    tags = {
        "iosweep.io_mode": result.io_mode,
        "iosweep.valid": str(result.valid).lower(),
        "iosweep.warnings": "\n".join(result.warnings),
        "iosweep.overrides": " ".join(OmegaConf.to_container(hc.overrides.task)),  # as typed
        "iosweep.run_dir": str(Path(hc.runtime.output_dir).absolute()),
        **({"iosweep.bottleneck": result.info["bottleneck"]} if "bottleneck" in result.info else {}),
        **host.host_tags(), **host.target_tags(result.info),
    }
    if os.environ.get(tracking.REPRODUCED_ENV):
        tags["iosweep.reproduced_from"] = os.environ[tracking.REPRODUCED_ENV]
    if "clients" in result.info:  # every host of the point; host.* tags above are rank 0's
        tags["iosweep.client_hosts"] = ",".join(result.info["client_hosts"])
        tags.update({f"iosweep.client.{row['rank']}": f"{row['host']} pid {row['pid']}"
                     for row in result.info["clients"][:MAX_CLIENT_TAGS]})
    return {
        "status": "KILLED" if result.info.get("stopped") else "FINISHED", "end_ms": int(time.time() * 1000),
        "metrics": result.metrics(), "tags": tags, "valid": result.valid, "warnings": result.warnings,
        "info": result.info, "series": "timeseries.json", "artifacts": artifacts,
    }, files


MAX_CLIENT_TAGS = 64  # one tag per rank up to this many; clients.csv has them all


def _clients_csv(rows: list[dict]) -> str:
    import csv
    import io

    from workloads.processes import CLIENT_COLUMNS

    out = io.StringIO()
    columns = CLIENT_COLUMNS + (("repeat",) if "repeat" in rows[0] else ())
    writer = csv.DictWriter(out, columns, lineterminator="\n")  # quoted: a dir may hold a comma
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# time-series row field -> MLflow step metric; system/* are the names MLflow's System Metrics tab shows
STEP_METRICS = {"mib_s": "interval_throughput_mib_s", "iops": "interval_iops",
                "device_read_mib_s": "interval_device_read_mib_s", "device_write_mib_s": "interval_device_write_mib_s"}
STEP_METRICS |= {name: f"system/{name}" for name in (  # the fields of workloads.sampler.system_sample
    "cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
    "disk_usage_percentage", "disk_usage_megabytes", "disk_available_megabytes",
    "network_receive_megabytes", "network_transmit_megabytes")}


def _step_metrics(result: Result, start_ms: int) -> list[list]:
    out = []
    for step, row in enumerate(result.timeseries, start=1):
        ts = start_ms + int(row["t_s"] * 1000)
        out += [[name, row[field], ts, step] for field, name in STEP_METRICS.items() if field in row]
    return out
