"""pattern=format_read: one table, stored as raw binary, .npy, CSV or Parquet, read AND decoded as a
data loader does (seed 000's format comparison).

The table (TABLE_DTYPE, 8 columns: ids, timestamps, four float64 features, a float32 score and a
short string label) is generated from the run's seed with numpy, default_rng([seed, worker]), so
every worker has its own table and a run can be reproduced. Outside the window prepare.py writes
each worker's file (write_table) and evicts it; inside the window the worker loads it with the
format's own reader (load) and nothing else:

    binary   numpy tofile of the structured array     -> np.fromfile
    npy      np.save                                   -> np.load
    csv      pyarrow.csv.write_csv (header, shortest   -> pyarrow.csv.read_csv with the column types
             round-trip floats: exact)                    (a loader knows its schema)
    parquet  pyarrow.parquet.write_table (snappy)      -> pyarrow.parquet.read_table

pyarrow decodes with its own thread pool, as it does in a real pipeline; the worker's CPU seconds
count every thread. A load is one op: the latency histogram holds the time per file, bytes are the
file's bytes, rows the table's rows. With duration_s the worker loads its file again and again,
evicting it between loads (cache=cold), and the time spent evicting is not part of the window.
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np

from .metrics import LatencyHistogram
from .prepare import evict
from .spec import Spec

TABLE_DTYPE = np.dtype([("id", "<i8"), ("ts_ns", "<i8"), ("x0", "<f8"), ("x1", "<f8"), ("x2", "<f8"),
                        ("x3", "<f8"), ("score", "<f4"), ("label", "S8")])
LABELS = 10_000  # distinct labels "item0000".."item9999": a low-cardinality string column
T0_NS = 1_700_000_000_000_000_000  # timestamps start here (2023-11-14), 1 ms apart on average
# Bytes per row on disk, to check free space before writing (Spec.file_size). binary and npy are
# exact; csv and parquet are upper bounds over this table (measured: csv 127 B/row, parquet 50 B/row).
BYTES_PER_ROW = {"binary": TABLE_DTYPE.itemsize, "npy": TABLE_DTYPE.itemsize, "csv": 160, "parquet": 64}
HEADER_BYTES = 64 << 10  # npy header, csv header line, parquet footer: generous


def estimated_bytes(fmt: str, rows: int) -> int:
    """An upper bound of the file's size, known before it is written."""
    return BYTES_PER_ROW[fmt] * rows + HEADER_BYTES


def make_table(seed: int, worker: int, rows: int) -> np.ndarray:
    """The worker's table, the same for the same (seed, worker, rows)."""
    rng = np.random.default_rng([seed, worker])
    t = np.empty(rows, dtype=TABLE_DTYPE)
    t["id"] = np.arange(rows, dtype=np.int64) + worker * rows  # unique across workers
    t["ts_ns"] = T0_NS + np.cumsum(rng.integers(1, 2_000_000, rows))
    for i, x in enumerate(rng.standard_normal((4, rows))):
        t[f"x{i}"] = x
    t["score"] = rng.random(rows, dtype=np.float32)
    vocab = np.array([f"item{n:04d}".encode() for n in range(LABELS)], dtype="S8")
    t["label"] = vocab[rng.integers(0, LABELS, rows)]
    return t


def _arrow_schema():
    import pyarrow as pa

    types = {"<i8": pa.int64(), "<f8": pa.float64(), "<f4": pa.float32(), "|S8": pa.string()}
    return pa.schema([(name, types[TABLE_DTYPE[name].str]) for name in TABLE_DTYPE.names])


def _arrow_table(t: np.ndarray):
    import pyarrow as pa

    schema = _arrow_schema()
    return pa.table([pa.array(t[f.name]).cast(f.type) for f in schema], schema=schema)


def write_table(fmt: str, t: np.ndarray, path: str) -> None:
    """Write table t to path (an existing file iosweep created: truncated) in format fmt."""
    if fmt == "binary":
        with open(path, "wb") as f:
            t.tofile(f)
    elif fmt == "npy":
        with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, t)
    elif fmt == "csv":
        import pyarrow.csv

        pyarrow.csv.write_csv(_arrow_table(t), path)
    elif fmt == "parquet":
        import pyarrow.parquet

        pyarrow.parquet.write_table(_arrow_table(t), path)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def load(fmt: str, path):
    """Read and decode the file as a loader does: a structured array (binary, npy) or an Arrow table.
    csv and parquet also take a pyarrow NativeFile (warm_up)."""
    if fmt == "binary":
        return np.fromfile(path, dtype=TABLE_DTYPE)
    if fmt == "npy":
        return np.load(path)
    if fmt == "csv":
        import pyarrow.csv

        schema = _arrow_schema()
        return pyarrow.csv.read_csv(path, convert_options=pyarrow.csv.ConvertOptions(
            column_types={f.name: f.type for f in schema}))
    if fmt == "parquet":
        import pyarrow.parquet

        return pyarrow.parquet.read_table(path)
    raise ValueError(f"unknown format {fmt!r}")


def warm_up(fmt: str) -> None:
    """Write and decode a tiny table in memory, so that the reader's lazy imports (pyarrow.dataset:
    0.3-1.5 s) and its thread pool start before the window, and the file stays cold."""
    if fmt not in ("csv", "parquet"):
        return
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    t = make_table(0, 0, 16)
    if fmt == "csv":
        import pyarrow.csv

        pyarrow.csv.write_csv(_arrow_table(t), sink)
    else:
        import pyarrow.parquet

        pyarrow.parquet.write_table(_arrow_table(t), sink)
    load(fmt, pa.BufferReader(sink.getvalue()))


def rows_of(decoded) -> int:
    return len(decoded) if isinstance(decoded, np.ndarray) else decoded.num_rows


def as_records(decoded) -> np.ndarray:
    """A decoded table as TABLE_DTYPE records, to compare it with what was generated (tests)."""
    if isinstance(decoded, np.ndarray):
        return decoded
    out = np.empty(decoded.num_rows, dtype=TABLE_DTYPE)
    for name in TABLE_DTYPE.names:
        out[name] = decoded.column(name).to_numpy(zero_copy_only=False)
    return out


def write_worker_file(spec: Spec, worker: int, path: str) -> None:
    """Outside the window: the worker's table in spec's format (prepare.prepare_files evicts it)."""
    write_table(spec.data.format, make_table(spec.seed, worker, spec.data.rows), path)


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the worker: pyarrow's pool too
    return ru.ru_utime, ru.ru_stime


def format_loop(spec: Spec, worker: int, path: str | None, direct: bool, wait_start, ops_done=None, stop=None,
                prepared: bool = True, base: int = 0, extents=None) -> dict:
    """worker.worker_loop's contract for pattern=format_read: wait for the start, load the file
    (once, or until duration_s), return the same counters plus bytes_r, rows and CPU split.

    ops_done is published in blocks of the file's bytes, so the sampler's MiB/s is the file bytes'.
    """
    from .worker import open_window

    path = extents[0][0] if extents else path
    size = os.path.getsize(path)
    fmt, cold = spec.data.format, spec.cache != "warm"
    clock = time.perf_counter_ns
    hist, times = LatencyHistogram(), []
    parent = os.getppid()
    loads = rows = 0
    user = system = 0.0
    evict_ns = 0  # time spent evicting between loads: taken out of the window
    warm_up(fmt)
    t_start, ramp_end, deadline = open_window(spec, wait_start, stop)
    measuring, t_measure = spec.ramp_s <= 0, t_start
    while True:
        if loads and cold:  # the first load finds the file evicted by prepare_files
            e0 = clock()
            fd = os.open(path, os.O_RDONLY)
            try:
                evict(fd, sync=False)  # written and fsynced before the window: nothing dirty
            finally:
                os.close(fd)
            evict_ns += clock() - e0
        u0, s0 = _cpu()
        t0 = clock()
        decoded = load(fmt, path)
        t1 = clock()
        u1, s1 = _cpu()
        n = rows_of(decoded)
        del decoded
        if n != spec.data.rows:  # the file was changed under us: these figures would be wrong
            raise OSError(0, f"{path}: decoded {n} rows, wrote {spec.data.rows}")
        if not measuring and t1 >= ramp_end:  # the warm-up is over: what it measured is forgotten
            measuring, t_measure, evict_ns = True, t1, 0
            times, loads, rows, user, system = [], 0, 0, 0.0, 0.0
        else:
            times.append(t1 - t0)
            loads += 1
            rows += n
            user += u1 - u0
            system += s1 - s0
        if ops_done is not None:
            ops_done[worker] += size // spec.block_size
        if not spec.duration_s or t1 >= deadline or (stop is not None and stop.value) or os.getppid() != parent:
            break
    t_end = clock() - evict_ns
    if not measuring:
        times, loads, rows, user, system, t_measure = [], 0, 0, 0.0, 0.0, t_end
    hist.add(np.array(times, dtype=np.int64))
    return {"worker": worker, "t_start": t_start, "t_measure": t_measure, "t_end": t_end,
            "hist_r": hist, "hist_w": LatencyHistogram(), "ops_r": loads, "ops_w": 0, "bytes_r": loads * size,
            "cpu_s": user + system, "ops_total": loads, "file_bytes": size,
            "counters": {"rows_read": float(rows), "decode_cpu_s": user, "read_sys_cpu_s": system},
            "datagen_wait_ns": 0, "ramp_done": measuring, "stopped": bool(stop is not None and stop.value)}
