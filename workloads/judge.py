"""Is this number storage truth? Every run is judged from what was measured, never assumed.

Returns the warnings (one line each) and whether the figures measure the storage (`valid`).
"""
from __future__ import annotations

import psutil

from .append import policy as append_policy
from .metrics import MIB, Result
from .spec import Spec

CACHE_SERVED_MAX_PCT = 10.0  # more than this share of reads from RAM: not a storage measurement
WRITES_ON_DEVICE_MIN = 0.90  # less than this share of written bytes reached the device: page cache
DATAGEN_WAIT_MAX = 0.05  # workers waiting for dgen-py more than this share of their time
MIN_WAIT_S = 0.02  # below this, waiting is start-up noise, not a bottleneck
SHORT_WINDOW_S = 0.5  # a window this short is dominated by start and end effects
PAGE_CACHE_MODES = ("buffered", "mmap")  # I/O through the page cache: reads may hit it, writes may stay in it


def judge(spec: Spec, result: Result) -> tuple[bool, list[str]]:
    invalid: list[str] = []
    notes: list[str] = []
    if spec.target == "s3":  # no device here to check: what the server did is its own affair
        notes.append(f"target=s3: figures of the S3 server at {spec.s3.host} over HTTP, its caches included "
                     "(iosweep sees no device behind it)")
    if spec.metadata and spec.target == "s3":
        if not result.info.get("ramp_done", True) or result.info.get("stopped"):
            invalid.append("the run stopped inside a phase: its rates cover only the objects handled")
        return not invalid, invalid + notes
    if spec.metadata:  # mdtest's rates: of the filesystem with its caches, not of the device
        notes.append("pattern=metadata: rates include the page, inode and dentry caches, as mdtest's do (each "
                     "phase works on files the previous one just touched)")
        if not result.info.get("ramp_done", True) or result.info.get("stopped"):
            invalid.append("the run stopped inside a phase: its rates cover only the files handled")
        return not invalid, invalid + notes
    fs = result.info.get("fs_type", "?")
    if result.io_mode == "none":
        invalid.append("engine=null does no I/O: the figures measure the harness, not storage")
    if result.io_mode == "direct-ignored":
        invalid.append(f"O_DIRECT has no effect on {fs}: the figures are RAM speed")
    if spec.reads and spec.cache == "warm" and result.io_mode != "none":
        invalid.append("cache=warm: reads were served from the page cache on purpose, not from storage")
    if result.bytes_read and result.device_read_bytes is not None and spec.cache != "warm":
        served = result.cache_served_pct
        if served > CACHE_SERVED_MAX_PCT:
            invalid.append(f"{served:.0f}% of read bytes came from the page cache: the device read "
                           f"{result.device_read_bytes / MIB:.0f} of {result.bytes_read / MIB:.0f} MiB")
    elif result.bytes_read and result.io_mode in PAGE_CACHE_MODES and result.device_read_bytes is None:
        working_set = spec.file_size * spec.writers
        ram = psutil.virtual_memory().total
        if working_set < ram:
            notes.append(f"buffered read of {working_set / MIB:.0f} MiB, less than RAM ({ram / 2**30:.0f} GiB), "
                         f"and no block device behind {fs} to verify it reached storage")
    if result.bytes_written and result.device_write_bytes is not None and result.io_mode in PAGE_CACHE_MODES:
        share = result.device_write_bytes / result.bytes_written
        policy = append_policy(spec) if spec.pattern == "append" else None
        if share < WRITES_ON_DEVICE_MIN and policy in ("none", "every", "interval"):  # the policy lets them stay
            notes.append(f"append.fsync={policy}: {100 * share:.0f}% of the record bytes reached the device inside "
                         "the window, the rest is in the page cache as the policy allows (records/s of a log that "
                         "does not wait for the device)")
        elif share < WRITES_ON_DEVICE_MIN:
            invalid.append(f"only {100 * share:.0f}% of written bytes reached the device inside the window "
                           f"(page cache): {_write_advice(spec, result.io_mode)}")
    if not result.info.get("ramp_done", True):
        invalid.append(f"the run ended inside ramp_s={spec.ramp_s}: nothing after the warm-up was measured")
    busy = result.elapsed_s * spec.writers * spec.clients  # clients: every rank's workers waited into datagen_wait_s
    if busy > 0 and result.datagen_wait_s > max(DATAGEN_WAIT_MAX * busy, MIN_WAIT_S):
        invalid.append(f"data generation was slower than the I/O: workers waited {result.datagen_wait_s:.2f} s "
                       f"for dgen-py ({100 * result.datagen_wait_s / busy:.0f}% of their time)")
    window_s = result.elapsed_s / max(1, len(result.repeat_throughputs))  # each repeat is its own window
    if 0 < window_s < SHORT_WINDOW_S and result.io_mode != "none":
        how = "raise duration_s" if spec.duration_s else "set duration_s (with ramp_s)" if spec.read_only_target \
            else "raise data.rows or set duration_s" if spec.pattern == "format_read" \
            else "raise file_kb or files_per_writer, or set duration_s (with ramp_s)" if spec.file_bytes is not None \
            else "raise size_mb or set duration_s (with ramp_s)"  # target=file: the files fix the size
        notes.append(f"the measured window was only {1000 * window_s:.0f} ms: {how} for a stable figure")
    if len(result.repeat_throughputs) > 1:
        low = result.metrics()["throughput_mib_s_ci95_low"]
        if low < 0:
            notes.append(f"the 95% CI of throughput reaches below zero ({low:.1f} MiB/s): {spec.repeats} repeats "
                         "are too few or too noisy for an interval; raise repeats or the window (shown unclamped)")
    if spec.writes and result.bytes_written and not spec.metadata and _own_writer(spec):
        result.info["bottleneck"], line = bottleneck(spec, result)
        notes.append(line)
    measured = result.data_measured
    if spec.data.kind == "dgen" and measured:
        got_c = measured["data_compress_ratio_measured"]
        got_d = measured["data_dedup_ratio_measured_1mib"]
        if abs(got_c - spec.data.compress_ratio) > 0.1 * spec.data.compress_ratio:
            notes.append(f"data compresses {got_c:.2f}:1 (zstd), asked for {spec.data.compress_ratio}:1")
        if abs(got_d - spec.data.dedup_ratio) > 0.1 * spec.data.dedup_ratio:
            notes.append(f"data dedups {got_d:.2f}:1 in 1 MiB units over the first "
                         f"{measured['data_sample_mib']:.0f} MiB, asked for {spec.data.dedup_ratio}:1")
        if spec.data.compress_ratio > 1:
            notes.append(f"dgen-py makes compressible data with zero runs: at 4 KiB those zero blocks also dedup "
                         f"({measured['data_dedup_ratio_measured']:.2f}:1 measured)")
    return not invalid, invalid + notes


def _own_writer(spec: Spec) -> bool:
    """iosweep's own workers did the I/O (fio measures no data waits; the null engine does no I/O)."""
    from . import engines

    engine = engines.get(spec.engine)
    return engine.does_io and not engine.external


BOTTLENECK_DATA_PCT = 10.0  # the writer waited longer than this share of its window for data
BOTTLENECK_CPU_PCT = 90.0  # the usable CPUs were at least this busy over the window


def bottleneck(spec: Spec, result: Result) -> tuple[str, str]:
    """Where a writing run's time went (seed 002's bottleneck analysis), from what was measured:
    cpu if the usable CPUs were >= 90% busy over the window (all processes and the kernel's threads:
    generation, the writers and the kernel's copies compete for them; when the writer also waited
    for data, its producers could not get a CPU in time); else data_generation if any worker's
    writer waited > 10% of its window for a filled buffer (more data.producers or data.pool_buffers
    help); else storage (the writer was busy writing; its producers, if any, waited for free buffers).
    Returns (storage|data_generation|cpu, the line with the numbers behind it)."""
    from .data import usable_cpus

    m = result.metrics()
    cpus = usable_cpus()
    data_max, data_mean = m.get("data_wait_pct_max", 0.0), m.get("data_wait_pct_mean", 0.0)
    busy = result.info.get("system_cpu_pct")
    if busy is None:  # no system-wide figure: the workers' own CPU time against every usable CPU
        busy = m.get("cpu_util_pct", 0.0) / cpus
    if busy >= BOTTLENECK_CPU_PCT:
        verdict = "cpu"
    elif data_max > BOTTLENECK_DATA_PCT:
        verdict = "data_generation"
    else:
        verdict = "storage"
    parts = [f"writers waited {data_mean:.1f}% (max {data_max:.1f}%) of the window for data"]
    if "producer_wait_pct_mean" in m:
        parts.append(f"producers waited {m['producer_wait_pct_mean']:.1f}% (max {m['producer_wait_pct_max']:.1f}%) "
                     "for a free buffer")
    elif spec.data.kind == "zeros" or not spec.data.refill:
        parts.append("one buffer rewritten (no generation in the window)")
    if result.datagen_mib_s is not None:
        parts.append(f"generator alone {result.datagen_mib_s:.0f} MiB/s per worker with data.producers="
                     f"{spec.data.producers} vs {m['throughput_mib_s'] / (spec.writers * spec.clients):.0f} MiB/s written per worker")
    parts.append(f"CPUs {busy:.0f}% busy ({cpus} usable; the workers used {m.get('cpu_util_pct', 0.0):.0f}% "
                 "of one)")
    return verdict, f"bottleneck: {verdict} ({'; '.join(parts)})"


def _write_advice(spec: Spec, io_mode: str = "buffered") -> str:
    """What to change when buffered writes did not reach the device: never what is already set,
    and never direct=true for engine=mmap (a mapping cannot bypass the page cache)."""
    direct = io_mode != "mmap"
    if not spec.end_fsync:
        return "set end_fsync=true or direct=true" if direct else "set end_fsync=true"
    if spec.duration_s:  # time-based: the loop rewrites the same blocks, the page cache keeps the last copy
        return (f"end_fsync=true is set, but duration_s={spec.duration_s:g} rewrites the same "
                f"{spec.file_size * spec.writers / MIB:.0f} MiB and the page cache absorbs the rewrites: "
                f"{'set direct=true, or drop' if direct else 'drop'} duration_s (one pass: every byte is written "
                "once, then fsynced)")
    return ("end_fsync=true is set, yet the device saw fewer bytes (another device behind the filesystem, or it "
            "compresses or deduplicates)" + (": set direct=true" if direct else ""))
