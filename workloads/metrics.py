"""Latency histograms and the Result a run returns.

The histogram is log-linear (HdrHistogram's layout): values below 2**SUB_BITS ns get a bucket
each, every power of two above is split into 2**SUB_BITS equal buckets. Relative bucket width is
at most 1/128, so a percentile read at the bucket midpoint is within 0.4% of the true value.
Every histogram has the same edges, so workers, repeats and hosts merge by adding counts: no
averaging of percentiles anywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SUB_BITS = 7
SUB = 1 << SUB_BITS
MAX_EXP = 42  # 2**42 ns = 73 minutes; slower ops land in the last bucket
N_BUCKETS = SUB + (MAX_EXP - SUB_BITS + 1) * SUB
MIB = 1 << 20
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def bucket_index(values_ns: np.ndarray) -> np.ndarray:
    v = np.maximum(values_ns.astype(np.int64, copy=False), 0)
    _, exp2 = np.frexp(v.astype(np.float64))  # v = m * 2**exp2, m in [0.5, 1): exact for ints < 2**53
    e = np.maximum(exp2.astype(np.int64) - 1, SUB_BITS)  # floor(log2 v), at least SUB_BITS
    shift = e - SUB_BITS
    idx = np.where(v < SUB, v, SUB + shift * SUB + ((v >> shift) - SUB))
    return np.minimum(idx, N_BUCKETS - 1)


def bucket_bounds(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[low, high) in ns of each bucket index."""
    idx = np.asarray(idx, dtype=np.int64)
    shift = np.maximum((idx - SUB) // SUB, 0)
    low = np.where(idx < SUB, idx, (SUB + (idx - SUB) % SUB) << shift)
    width = np.where(idx < SUB, 1, 1 << shift)
    return low, low + width


@dataclass
class LatencyHistogram:
    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, dtype=np.int64))
    total: int = 0
    sum_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0

    def add(self, values_ns: np.ndarray) -> None:
        if len(values_ns) == 0:
            return
        self.counts += np.bincount(bucket_index(values_ns), minlength=N_BUCKETS)
        lo, hi = int(values_ns.min()), int(values_ns.max())
        self.min_ns = lo if self.total == 0 else min(self.min_ns, lo)
        self.max_ns = max(self.max_ns, hi)
        self.total += len(values_ns)
        self.sum_ns += int(values_ns.sum())

    def add_counts(self, values_ns: np.ndarray, counts: np.ndarray) -> None:
        """Add pre-binned values (another tool's histogram): `counts[i]` ops of `values_ns[i]`."""
        self.counts += np.bincount(bucket_index(values_ns), weights=counts, minlength=N_BUCKETS).astype(np.int64)
        self.total += int(counts.sum())
        self.sum_ns += int((values_ns * counts).sum())

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        if other.total:
            self.counts += other.counts
            self.min_ns = other.min_ns if self.total == 0 else min(self.min_ns, other.min_ns)
            self.max_ns = max(self.max_ns, other.max_ns)
            self.total += other.total
            self.sum_ns += other.sum_ns
        return self

    def percentile(self, q: float) -> float:
        """Value in ns at percentile q (0-100): midpoint of the bucket holding that rank."""
        if self.total == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.total))
        idx = int(np.searchsorted(np.cumsum(self.counts), rank))
        low, high = bucket_bounds(np.array([idx]))
        mid = (int(low[0]) + int(high[0]) - 1) / 2.0
        return float(min(max(mid, self.min_ns), self.max_ns))

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.total if self.total else math.nan

    def to_dict(self) -> dict:
        nz = np.flatnonzero(self.counts)
        low, high = bucket_bounds(nz)
        return {"unit": "ns", "sub_bits": SUB_BITS, "total": self.total, "sum_ns": self.sum_ns,
                "min_ns": self.min_ns, "max_ns": self.max_ns,
                "buckets": [[int(a), int(b), int(c)] for a, b, c in zip(low, high, self.counts[nz])]}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyHistogram":
        h = cls(total=d["total"], sum_ns=d["sum_ns"], min_ns=d["min_ns"], max_ns=d["max_ns"])
        for low, _high, count in d["buckets"]:
            h.counts[int(bucket_index(np.array([low]))[0])] += count
        return h


def t95(df: int) -> float:
    """Two-sided 95% Student t critical value for `df` degrees of freedom."""
    # scipy.stats.t.ppf is this same function; scipy.stats costs ~1 s to import, scipy.special ~0.3 s
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.975))


def repeat_stats(values: list[float]) -> dict[str, float]:
    """Mean, sample stddev and 95% confidence interval of the mean over repeats."""
    v = np.asarray(values, dtype=float)
    mean, std = float(v.mean()), float(v.std(ddof=1))
    half = t95(len(v) - 1) * std / math.sqrt(len(v))
    return {"throughput_mib_s": mean, "throughput_mib_s_std": std, "throughput_mib_s_ci95_low": mean - half,
            "throughput_mib_s_ci95_high": mean + half, "repeats": float(len(v))}


def combine(results: list["Result"]) -> "Result":
    """Merge repeats of one point: counters add, histograms merge exactly, windows add up."""
    first = results[0]
    out = Result(elapsed_s=0.0, bytes_read=0, bytes_written=0, ops_read=0, ops_written=0,
                 lat_read=LatencyHistogram(), lat_write=LatencyHistogram(), io_mode=first.io_mode,
                 info=dict(first.info), attachments=dict(first.attachments))
    dev = all(r.device_read_bytes is not None for r in results)
    out.device_read_bytes = 0 if dev else None
    out.device_write_bytes = 0 if dev else None
    for i, r in enumerate(results):
        out.elapsed_s += r.elapsed_s
        out.bytes_read += r.bytes_read
        out.bytes_written += r.bytes_written
        out.ops_read += r.ops_read
        out.ops_written += r.ops_written
        out.lat_read.merge(r.lat_read)
        out.lat_write.merge(r.lat_write)
        if r.lat_fsync is not None:  # pattern=append
            out.lat_fsync = (out.lat_fsync or LatencyHistogram()).merge(r.lat_fsync)
        if r.lat_ttfb is not None:  # target=s3
            out.lat_ttfb = (out.lat_ttfb or LatencyHistogram()).merge(r.lat_ttfb)
        out.cpu_s += r.cpu_s
        out.datagen_wait_s += r.datagen_wait_s
        for k, v in r.pipeline.items():
            out.pipeline[k] = out.pipeline.get(k, []) + list(v)
        out.datagen_mib_s = first.datagen_mib_s
        for k, v in r.counters.items():  # a maximum (`*_max_us`) is the largest, the rest add up
            out.counters[k] = max(out.counters.get(k, 0.0), v) if k.endswith("_max_us") else out.counters.get(k, 0.0) + v
        for name, p in r.metadata.items():  # pattern=metadata: ops and windows add, histograms merge
            mine = out.metadata.setdefault(name, {"ops": 0, "seconds": 0.0, "hist": LatencyHistogram()})
            mine["ops"] += p["ops"]
            mine["seconds"] += p["seconds"]
            mine["hist"].merge(p["hist"])
        if dev:
            out.device_read_bytes += r.device_read_bytes
            out.device_write_bytes += r.device_write_bytes
            for k, v in r.device_requests.items():
                out.device_requests[k] = out.device_requests.get(k, 0) + v
        out.warnings += [w for w in r.warnings if w not in out.warnings]
        out.timeseries += [dict(row, repeat=i) for row in r.timeseries]
        out.repeat_throughputs.append((r.bytes_read + r.bytes_written) / MIB / r.elapsed_s if r.elapsed_s else 0.0)
    if "clients" in first.info:  # clients > 1: every repeat's table of ranks (each over its own window)
        out.info["clients"] = [dict(row, repeat=i) for i, r in enumerate(results) for row in r.info["clients"]]
        out.info["client_spread_pct"] = max(r.info["client_spread_pct"] for r in results)
    return out


@dataclass
class Result:
    """What one measured window produced, merged over all workers."""

    elapsed_s: float
    bytes_read: int
    bytes_written: int
    ops_read: int
    ops_written: int
    lat_read: LatencyHistogram
    lat_write: LatencyHistogram
    io_mode: str  # direct | buffered | direct-ignored | none (null engine)
    cpu_s: float = 0.0  # user+system seconds of the workers inside the window
    datagen_wait_s: float = 0.0  # time workers waited for dgen-py, summed
    # the streaming writer (data=dgen, refill): per worker, % of its window the writer waited for data
    # ("data_wait_pct") and its producers for a free buffer ("producer_wait_pct"); repeats append
    pipeline: dict = field(default_factory=dict)
    datagen_mib_s: float | None = None  # the generator alone, before the window (data.calibrate)
    device_read_bytes: int | None = None  # the block device's own counters over the window
    device_write_bytes: int | None = None
    device_requests: dict = field(default_factory=dict)  # read/write ios, merges, time_ms over the window
    warnings: list[str] = field(default_factory=list)
    timeseries: list[dict] = field(default_factory=list)  # one row per log interval
    info: dict = field(default_factory=dict)  # where it ran: fs type, scratch dir, files
    valid: bool = True  # False: the figures do not measure the storage (see warnings)
    repeat_throughputs: list[float] = field(default_factory=list)  # MiB/s of each repeat
    data_measured: dict = field(default_factory=dict)  # ratios measured in the bytes written
    attachments: dict = field(default_factory=dict)  # name -> text, e.g. an external engine's job file
    counters: dict = field(default_factory=dict)  # engine counters over the window, e.g. minor_faults
    # pattern=metadata: phase -> {"ops", "seconds" (the phase's window), "hist" (LatencyHistogram)}
    metadata: dict = field(default_factory=dict)
    lat_fsync: LatencyHistogram | None = None  # pattern=append: every fsync/fdatasync/msync, merged exactly
    lat_ttfb: LatencyHistogram | None = None  # target=s3: each GET's time to first byte (status and headers)

    def append_metrics(self) -> dict[str, float]:
        """pattern=append: records/s, fsync latency, and write amplification (device bytes / record bytes)."""
        if "records_total" not in self.counters:
            return {}
        el = self.elapsed_s
        m = {"records_per_s": self.counters["records_total"] / el if el > 0 else 0.0}
        h = self.lat_fsync or LatencyHistogram()
        for name, q in (("p50", 50.0), ("p99", 99.0)):
            m[f"fsync_{name}_us"] = h.percentile(q) / 1e3
        m["fsync_mean_us"], m["fsync_max_us"] = h.mean_ns / 1e3, h.max_ns / 1e3 if h.total else math.nan
        if self.device_write_bytes is not None and self.bytes_written:
            m["write_amplification"] = self.device_write_bytes / self.bytes_written
        return m

    def metadata_metrics(self) -> dict[str, float]:
        """`<phase>_per_s` (mdtest's "File creation/stat/read/removal" rates), `<phase>_p50_us`, `<phase>_p99_us`."""
        m = {}
        for name, p in self.metadata.items():
            m[f"{name}_per_s"] = p["ops"] / p["seconds"] if p["seconds"] > 0 else 0.0
            m[f"{name}_p50_us"] = p["hist"].percentile(50.0) / 1e3
            m[f"{name}_p99_us"] = p["hist"].percentile(99.0) / 1e3
            m[f"{name}_ops"] = float(p["ops"])
        return m

    @property
    def latency(self) -> LatencyHistogram:
        return LatencyHistogram().merge(self.lat_read).merge(self.lat_write)

    def metrics(self) -> dict[str, float]:
        el = self.elapsed_s
        total_b = self.bytes_read + self.bytes_written
        total_ops = self.ops_read + self.ops_written
        lat = self.latency
        m = {
            "throughput_mib_s": total_b / MIB / el if el > 0 else 0.0,
            "iops": total_ops / el if el > 0 else 0.0,
            "bytes_total": float(total_b),
            "ops_total": float(total_ops),
            "elapsed_s": el,
            "lat_mean_us": lat.mean_ns / 1e3,
            "lat_max_us": lat.max_ns / 1e3,
        }
        for name, q in PERCENTILES.items():
            m[f"lat_{name}_us"] = lat.percentile(q) / 1e3
        if self.bytes_read and self.bytes_written:
            for kind, b, ops, h in (("read", self.bytes_read, self.ops_read, self.lat_read),
                                    ("write", self.bytes_written, self.ops_written, self.lat_write)):
                m[f"{kind}_throughput_mib_s"] = b / MIB / el if el > 0 else 0.0
                m[f"{kind}_iops"] = ops / el if el > 0 else 0.0
                m[f"{kind}_lat_p99_us"] = h.percentile(99.0) / 1e3
        if el > 0:
            m["cpu_util_pct"] = 100.0 * self.cpu_s / el  # workers' CPU time; 100 = one core busy
        if len(self.repeat_throughputs) > 1:
            m.update(repeat_stats(self.repeat_throughputs))
        for k, per_worker in self.pipeline.items():  # where the streaming writer's time went
            if per_worker:
                m[f"{k}_mean"], m[f"{k}_max"] = float(np.mean(per_worker)), float(np.max(per_worker))
        if self.datagen_mib_s is not None:
            m["datagen_mib_s"] = self.datagen_mib_s
        m.update(self.data_measured)
        m.update(self.counters)
        if "rows_read" in self.counters and el > 0:  # pattern=format_read: decoded rows
            m["rows_per_s"] = self.counters["rows_read"] / el
        if "file_bytes" in self.info:  # pattern=format_read: the table files' size on disk
            m["file_mib"] = self.info["file_bytes"] / MIB
        m.update(self.metadata_metrics())
        m.update(self.append_metrics())
        if self.lat_ttfb is not None and self.lat_ttfb.total:  # target=s3: the server's answer before the body
            for name, q in PERCENTILES.items():
                m[f"ttfb_{name}_us"] = self.lat_ttfb.percentile(q) / 1e3
            m["ttfb_mean_us"] = self.lat_ttfb.mean_ns / 1e3
        if "model_tensors" in self.info:  # pattern=model_load: the window is the load
            m.update(load_s=el / max(1, len(self.repeat_throughputs)),  # one load's time (repeats: the mean)
                     load_gb_s=self.bytes_read / 1e9 / el if el > 0 else 0.0,
                     tensors=float(self.info["model_tensors"]),
                     tensor_max_mib=self.info["model_tensor_max_bytes"] / MIB,
                     tensor_min_kib=self.info["model_tensor_min_bytes"] / 1024)
        if "clients" in self.info:  # clients > 1: every rank's figures are in the ones above; how far apart they were
            m["clients"] = float(len({row["rank"] for row in self.info["clients"]}))
            m["client_spread_pct"] = self.info["client_spread_pct"]
        if "ops_requested" in self.counters and el > 0:  # merge_kb: the pattern's requests served per second
            m["requested_iops"] = self.counters["ops_requested"] / el
        if "replay_late_total_us" in self.counters and total_ops:  # pattern.timing=original
            m["replay_late_mean_us"] = self.counters["replay_late_total_us"] / total_ops
        if self.device_read_bytes is not None:
            m["device_read_bytes"] = float(self.device_read_bytes)
            m["device_write_bytes"] = float(self.device_write_bytes)
            if self.bytes_read:
                m["cache_served_pct"] = self.cache_served_pct
        for kind in ("read", "write") if self.device_requests else ():
            ios = self.device_requests[f"{kind}_ios"]
            m[f"device_{kind}_ios"] = float(ios)
            m[f"device_{kind}_merges"] = float(self.device_requests[f"{kind}_merges"])
            if ios:  # the mean request the device saw, and how long one took (iostat's rareq-sz, r_await)
                m[f"device_{kind}_req_kb"] = getattr(self, f"device_{kind}_bytes") / ios / 1024
                m[f"device_{kind}_await_ms"] = self.device_requests[f"{kind}_time_ms"] / ios
        return m

    def set_device_traffic(self, before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
        """The block device's own (read, write) byte counters at the window's start and end; left
        unknown (None) when either reading is missing."""
        if before and after:
            self.device_read_bytes, self.device_write_bytes = after[0] - before[0], after[1] - before[1]
            if hasattr(after, "_fields") and hasattr(before, "_fields"):  # prepare.DeviceCounters: requests too
                self.device_requests = {k: getattr(after, k) - getattr(before, k) for k in after._fields[2:]}

    @property
    def cache_served_pct(self) -> float:
        """Share of logical read bytes that never reached the device (read-ahead can make it 0)."""
        if not self.bytes_read or self.device_read_bytes is None:
            return math.nan
        return 100.0 * max(0.0, 1.0 - self.device_read_bytes / self.bytes_read)
