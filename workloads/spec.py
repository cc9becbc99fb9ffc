"""What to run, as plain frozen dataclasses, with the range checks the library itself relies on.

The runner builds a Spec from the Hydra config; anything else (a test, an MPI rank, a notebook)
can build one directly. `Spec.check()` raises ConfigError naming the key the user wrote.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError

PATTERNS = ("seq_write", "seq_read", "rand_read", "rand_write", "mixed")  # block ops generated from the knobs
MODEL_LOAD = "model_load"  # the tensors of a safetensors/GGUF file, read as a loader does (workloads/model.py)
TRACED = ("replay", MODEL_LOAD)  # patterns whose ops are a Trace: offsets and lengths, once, one worker
ALL_PATTERNS = PATTERNS + TRACED  # replay: the ops of a trace (workloads/replay.py)
FILE_OP_PATTERNS = ("metadata",)  # ops on files themselves (create, stat, open, unlink): workloads/metadata.py
APPEND = "append"  # records appended to a log file with a durability policy (workloads/append.py)
FORMAT_READ = "format_read"  # not a block pattern: loads a table file with numpy/pyarrow (workloads/formats.py)
TABLE_FORMATS = ("binary", "npy", "csv", "parquet")  # data.format of pattern=format_read
TIMINGS = ("asap", "original")  # pattern=replay: issue the trace's ops back to back, or at the trace's times
CACHE_MODES = ("cold", "warm", "drop")
DATA_KINDS = ("dgen", "zeros")
PAGE = 4096
MAX_PIPELINE = 1024  # data.producers, data.pool_buffers: beyond this, threads or buffers per worker are a typo
MAX_POOL_BYTES = 16 << 30  # data.buffer_mb x data.pool_buffers per worker
MAX_WRITERS = 256  # beyond this a 2..64-core box only measures its scheduler
MAX_CLIENTS = 4096  # MPI ranks of one point
MAX_SECONDS = 7 * 24 * 3600  # a week: longer is a typo, and ns clocks and fio's runtime still hold it
MAX_IODEPTH = 32768  # IORING_MAX_ENTRIES: the largest ring the kernel makes
MAX_SEED = 2**63 - 2  # fio takes randseed=seed+1 as a signed 64-bit number
MIN_FILE = 1024  # file_kb: the smallest file (1 KiB), as the notebook's smallest
NAME_MAX, PATH_MAX = 255, 4096  # Linux: bytes per path component, bytes per path (with its NUL)


def path_problem(path: str, is_dir: bool = True) -> str | None:
    """Why `path` can never be used (a directory iosweep creates or uses, or a file if not is_dir), or None.

    Checked before any I/O, so the user gets one line instead of ENAMETOOLONG or ENOTDIR later.
    """
    raw = os.fsencode(str(path))
    if len(raw) >= PATH_MAX:
        return f"is {len(raw)} bytes long; Linux allows paths of at most {PATH_MAX - 1} bytes: choose a shorter path"
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            return (f"has a component of {len(part)} bytes; Linux allows at most {NAME_MAX} bytes per name: "
                    "choose shorter names")
    absolute = os.path.abspath(os.path.expanduser(str(path)))
    if not is_dir:
        absolute = os.path.dirname(absolute)
    while True:  # the nearest existing ancestor must be a directory (outputs/ being a file: ENOTDIR)
        if os.path.lexists(absolute):
            if not os.path.isdir(absolute):
                return f"{absolute} is not a directory: move that file away or choose another path"
            return None
        parent = os.path.dirname(absolute)
        if parent == absolute:
            return None
        absolute = parent
# engine=fio: the ioengines that issue this Spec's ops to a file or block device (psync = engine=sync)
FIO_IOENGINES = ("psync", "sync", "pvsync", "pvsync2", "vsync", "libaio", "io_uring", "posixaio", "mmap")
# engine=mmap: how a read accesses the mapping (copy: memcpy the block, like fio's mmap; touch: one byte per page)
MMAP_ACCESS = ("copy", "touch")


@dataclass(frozen=True)
class DataSpec:
    kind: str = "dgen"
    compress_ratio: int = 1
    dedup_ratio: int = 1
    format: str | None = None  # pattern=format_read only: one of TABLE_FORMATS
    rows: int | None = None  # pattern=format_read only: rows of each worker's table
    # the streaming writer's pipeline per worker (workloads/data.py): producers threads of dgen-py
    # fill pool_buffers chunks of buffer_bytes (None: data.chunk_bytes' rule) that the writer writes
    producers: int = 1
    pool_buffers: int = 4
    buffer_bytes: int | None = None
    refill: bool = True  # False: one chunk generated once and written again and again (seed 001's single buffer)


@dataclass(frozen=True)
class S3Spec:
    """target=s3's keys (conf/target/s3.yaml). Credentials None: boto3's chain (environment, ~/.aws)."""

    endpoint_url: str | None = None
    bucket: str | None = None
    prefix: str = ""
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    max_connections: int = 10
    multipart_bytes: int = 64 << 20
    create_bucket: bool = False
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0

    def __repr__(self) -> str:  # never print a secret in a traceback or a log line
        return f"S3Spec(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def host(self) -> str:
        """The endpoint's host:port, never its user part (a URL may carry credentials)."""
        if not self.endpoint_url:
            return f"s3.{self.region}.amazonaws.com"
        parts = urlsplit(self.endpoint_url)
        return parts.hostname + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Spec:
    pattern: str = "seq_write"
    block_size: int = 1 << 20
    writers: int = 1
    clients: int = 1  # MPI ranks running this point together (clients.py); writers and size_bytes are per client
    iodepth: int = 1  # ops in flight per worker (fio iodepth); > 1 needs an engine with a queue (uring)
    size_bytes: int | None = 256 << 20  # total working set; each writer owns size_bytes // writers
    #                                      target=file: a cap, None = the files' size (targets.file.resolve)
    duration_s: float | None = None  # time-based over the working set (fio time_based)
    ramp_s: float = 0.0  # warm-up excluded from the metrics (fio ramp_time)
    read_pct: int = 100  # share of reads, used by the mixed pattern (fio rwmixread)
    direct: bool = False
    direct_fallback: bool = False
    end_fsync: bool = True  # written data reaches the device inside the window (fio end_fsync)
    cache: str = "cold"  # cold: evict laid-out files before the window; warm: keep them cached; drop: also drop_caches
    repeats: int = 1  # measure the point this many times; metrics merge, throughput gets mean/std/CI
    latency: bool = True  # record per-op latency (fio disable_lat=0); off only to measure its own cost
    engine: str = "sync"
    ioengine: str | None = None  # engine=fio only: fio's ioengine (psync by default)
    # engine=uring only (checked by workloads/engines/uring.py):
    batch_submit: int = 1  # SQEs handed to the kernel per io_uring_enter (fio iodepth_batch_submit)
    batch_complete: int = 1  # completions waited for at least, per reap (fio iodepth_batch_complete_min)
    fixed_files: bool = False  # register the file with the ring (fio registerfiles)
    fixed_bufs: bool = False  # register the I/O buffers with the ring (fio fixedbufs)
    sqpoll: bool = False  # a kernel thread polls the submission queue (fio sqthread_poll)
    access: str | None = None  # engine=mmap only: one of MMAP_ACCESS (copy by default)
    hint: str = "none"  # read-ahead advice, one of hints.HINTS: posix_fadvise / madvise / fio fadvise_hint
    prefetch_blocks: int = 0  # application prefetch: blocks kept advised WILLNEED ahead of the reads (0 = off)
    prefetch_after: int = 3  # sequential reads seen before the prefetch starts
    target: str = "local"
    target_dir: str = "outputs/scratch"
    target_path: str | None = None  # target=device: an existing file or block device; target=file: file, dir or glob
    allow_overwrite: bool = False  # target=device: consent to overwrite target_path
    data: DataSpec = field(default_factory=DataSpec)
    files_per_writer: int = 1  # files each worker owns, visited one after another (fio nrfiles)
    file_bytes: int | None = None  # bytes per file (fio filesize); None: the writer's share of size_bytes split
    #                                 over its files_per_writer files. pattern=metadata: bytes written per file (0)
    seed: int = 0
    keep_files: bool = False
    log_interval_s: float = 1.0
    trace: str | None = None  # pattern=replay: an fio iolog (v2/v3) or a CSV offset,length,op[,time_us]
    timing: str = "asap"  # pattern=replay: one of TIMINGS
    order: str = "file"  # pattern=model_load: read the tensors in file order or by layer (model.ORDERS)
    merge_kb: int | None = None  # reads: coalesce requests <= merge_kb apart within each batch (None: off)
    merge_batch: int = 32  # ops per batch that merge_kb sorts and coalesces
    # pattern=append only (workloads/append.py checks them; None: not set, its default there)
    record_bytes: int | None = None  # bytes per appended record, any size >= 1 (independent of block_size)
    append_mode: str | None = None  # unbuffered | buffered | mmap (append.MODES)
    append_buffer_kb: int | None = None  # buffered: the user-space buffer (64 KiB)
    append_fsync: str | None = None  # none | end | every | interval | dsync; None: end if end_fsync else none
    append_fsync_every: int | None = None  # fsync=every: records between two fsyncs
    append_fsync_interval_ms: float | None = None  # fsync=interval: ms between two fsyncs
    append_fsync_call: str | None = None  # fsync | fdatasync
    append_shared_file: bool | None = None  # all writers append to one file with O_APPEND
    append_fallocate: bool | None = None  # preallocate each writer's share (fallocate KEEP_SIZE)
    # target=s3 only (workloads/targets/s3.py checks them)
    s3: S3Spec = field(default_factory=S3Spec)
    object_bytes: int = 16 << 20  # each object a writer PUTs or reads (object_mb)

    def _trace(self):
        if self.pattern == MODEL_LOAD:  # the reads of the model file's tensors, from its header
            from . import model

            return model.load(self)
        from .replay import load  # parsed once per process (cached by path, size and mtime)

        return load(self.trace, self.direct)

    @property
    def variable_lengths(self) -> bool:
        """Ops of different lengths (replay, merging): bytes are counted per op. Otherwise every op is
        block_size bytes and the loops take their fast path (bytes = ops x block_size)."""
        return self.pattern in TRACED or self.merge_kb is not None or self.pattern == APPEND \
            or self.target == "s3"  # append: records; s3: objects and ranges

    @property
    def max_op_bytes(self) -> int:
        """The largest op: what a read buffer (per slot) must hold. block_size unless ops vary."""
        if self.merge_kb is not None:  # merged requests, of the pattern's or the trace's ops
            from .merge import max_request

            return max_request(self)
        if self.pattern in TRACED:
            return max(self._trace().max_length, self.block_size)
        return self.block_size

    @property
    def per_file(self) -> int:
        """Bytes per file: file_bytes, or the writer's share of size_bytes over its files in whole blocks
        (format_read: an upper bound of its table file; replay: the bytes the trace addresses)."""
        if self.pattern == FORMAT_READ and self.data.format in TABLE_FORMATS and self.data.rows:
            from .formats import estimated_bytes

            return estimated_bytes(self.data.format, self.data.rows)
        if self.pattern in TRACED:  # its file is laid out that large (model_load: target=file, the file's own)
            return self._trace().end
        if self.file_bytes is not None:
            return self.file_bytes
        if self.metadata:
            return 0  # mdtest's default: empty files
        if self.target == "s3":  # whole objects: each writer's share of size_bytes, as object_bytes objects
            return self.objects_per_writer * self.object_bytes
        if self.pattern == APPEND:  # the record bytes each writer appends per pass, not whole blocks
            return self.size_bytes // self.writers
        per = self.size_bytes // self.writers // self.files_per_writer
        return per - per % self.block_size

    @property
    def objects_per_writer(self) -> int:
        """target=s3: the objects each writer PUTs or reads (pattern=metadata: files_per_writer)."""
        if self.metadata:
            return self.files_per_writer
        return max(1, self.size_bytes // self.writers // self.object_bytes)

    @property
    def file_size(self) -> int:
        """Bytes per writer (over all its files), in whole blocks per file."""
        return self.per_file * self.files_per_writer

    @property
    def metadata(self) -> bool:
        """mdtest's phases (create, stat, open, unlink) over files_per_writer files per worker."""
        return self.pattern == "metadata"

    @property
    def reads(self) -> bool:
        if self.pattern in TRACED:
            return self._trace().reads > 0
        return self.pattern in ("seq_read", "rand_read", "mixed", FORMAT_READ)

    @property
    def writes(self) -> bool:
        if self.pattern in TRACED:
            return self._trace().writes > 0
        return self.pattern in ("seq_write", "rand_write", "mixed", APPEND)

    @property
    def random(self) -> bool:
        return self.pattern in ("rand_read", "rand_write", "mixed")

    @property
    def read_only_target(self) -> bool:
        """Files iosweep did not create and only reads (target=file): never written, never laid out."""
        return self.target == "file"

    @property
    def needs_layout(self) -> bool:
        """Reads and random writes run over files laid out in full beforehand, as fio does."""
        return self.pattern not in ("seq_write", "metadata", FORMAT_READ, APPEND)  # format_read: formats.write_worker_file

    def check(self) -> "Spec":
        def positive(key, value, unit=""):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(key, value, f"must be a finite number > 0{unit}")

        def seconds(key, value, zero_ok=False):
            """A time knob: finite, > 0 (or >= 0), at most a week (inf and 1e10 overflow the ns clocks)."""
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and not zero_ok):
                raise ConfigError(key, value, f"must be a finite number {'>=' if zero_ok else '>'} 0 (seconds)")
            if value > MAX_SECONDS:
                raise ConfigError(key, value, f"must be at most {MAX_SECONDS} (one week, in seconds)")

        every = ALL_PATTERNS + FILE_OP_PATTERNS + (FORMAT_READ, APPEND)
        if self.pattern not in every:
            raise ConfigError("pattern", self.pattern, "choose one of " + ", ".join(every))
        if self.target == "s3":  # objects: which patterns and knobs apply (targets/s3.py)
            from .targets.s3 import check as check_s3

            check_s3(self)
        self._check_format_read()
        from .append import check as check_append  # append.py: records, buffering, durability policy

        check_append(self)
        if self.pattern == "replay":
            self._check_replay()
        if self.pattern == MODEL_LOAD:
            self._check_model_load()
        if self.merge_kb is not None:
            from .merge import check

            check(self)
        if self.block_size <= 0 or self.block_size % 1024:
            raise ConfigError("block_kb", self.block_size / 1024, "must be a whole number of KiB > 0")
        positive("writers", self.writers)
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or not 1 <= self.clients <= MAX_CLIENTS:
            raise ConfigError("clients", self.clients, f"must be a whole number from 1 to {MAX_CLIENTS} (MPI ranks)")
        if self.clients > 1 and self.metadata:
            raise ConfigError("clients", self.clients, "pattern=metadata keeps its phases in step on one host only: "
                                                       "use clients=1 (writers run its workers)")
        if self.writers > MAX_WRITERS:
            raise ConfigError("writers", self.writers, f"must be <= {MAX_WRITERS}")
        if isinstance(self.iodepth, bool) or not isinstance(self.iodepth, int) \
                or not 1 <= self.iodepth <= MAX_IODEPTH:
            raise ConfigError("iodepth", self.iodepth, f"must be a whole number from 1 to {MAX_IODEPTH} "
                                                       "(the io_uring ring limit)")
        if self.read_only_target and self.writes and self.pattern == "replay":
            raise ConfigError("pattern.trace", self.trace, f"has {self._trace().writes} write(s) and target=file only "
                                                           "reads: replay it on iosweep's own files (target=local)")
        if self.read_only_target and self.writes:
            raise ConfigError("pattern", self.pattern, "target=file only reads (iosweep never writes your files): "
                                                       "choose pattern=seq_read or rand_read, or to write into an "
                                                       "existing file use target=device target.path=... "
                                                       "target.allow_overwrite=true")
        if self.size_bytes is not None or not self.read_only_target:  # target=file: None = the files' size
            positive("target.size_mb" if self.read_only_target else "size_mb", self.size_bytes)
        if self.duration_s is not None:
            seconds("duration_s", self.duration_s)
        seconds("ramp_s", self.ramp_s, zero_ok=True)
        seconds("log_interval_s", self.log_interval_s)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"must be a whole number from 0 to {MAX_SEED} (fio's range)")
        for key, path, is_dir in (("target.dir", self.target_dir, True), ("target.path", self.target_path, False)):
            problem = path and path_problem(path, is_dir)
            if problem:
                raise ConfigError(key, path, problem)
        if self.cache not in CACHE_MODES:
            raise ConfigError("cache", self.cache, "choose one of " + ", ".join(CACHE_MODES))
        positive("repeats", self.repeats)
        if isinstance(self.repeats, float) or self.repeats > 100:
            raise ConfigError("repeats", self.repeats, "must be a whole number from 1 to 100")
        if not 0 <= self.read_pct <= 100:
            raise ConfigError("pattern.read_pct", self.read_pct, "must be between 0 and 100")
        if self.direct and self.block_size % PAGE:
            raise ConfigError("block_kb", self.block_size // 1024,
                              "direct=true needs a multiple of 4 KiB (or set direct=false)")
        self._check_files()
        if not self.read_only_target and not self.metadata and self.pattern not in (FORMAT_READ, APPEND, *TRACED) \
                and self.target != "s3" \
                and self.file_size < self.block_size:  # target=file: resolve() says; replay: the trace sizes it
            raise ConfigError("size_mb", self.size_bytes >> 20,
                              f"too small for writers={self.writers} x block_kb={self.block_size >> 10}: "
                              "each writer needs at least one block")
        if self.data.kind not in DATA_KINDS:
            raise ConfigError("data", self.data.kind, "choose one of " + ", ".join(DATA_KINDS))
        for key in ("compress_ratio", "dedup_ratio"):
            value = getattr(self.data, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}", value, "must be an integer >= 1 (dgen-py takes whole ratios)")
        self._check_pipeline()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"must be a whole number from 0 to {MAX_SEED} (2**63 - 2)")
        if self.ioengine is not None and self.ioengine not in FIO_IOENGINES:  # it is written into fio's job file
            raise ConfigError("engine.ioengine", self.ioengine, "choose one of " + ", ".join(FIO_IOENGINES))
        if self.access is not None and self.access not in MMAP_ACCESS:
            raise ConfigError("engine.access", self.access, "choose one of " + ", ".join(MMAP_ACCESS))
        from .hints import check as check_hints  # hints.py: read-ahead advice and prefetch, with their rules

        check_hints(self)
        return self

    def _check_pipeline(self) -> None:
        """data.producers, data.pool_buffers, data.buffer_mb, data.refill: the writer's data pipeline."""
        d = self.data
        for key, value, what in (("producers", d.producers, "dgen-py threads filling each worker's buffers"),
                                 ("pool_buffers", d.pool_buffers, "buffers in each worker's ring")):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PIPELINE:
                raise ConfigError(f"data.{key}", value, f"must be a whole number from 1 to {MAX_PIPELINE} ({what}), "
                                                        "or auto for data.producers")
        if not isinstance(d.refill, bool):
            raise ConfigError("data.refill", d.refill, "must be true or false")
        if d.buffer_bytes is None:
            return
        mb, bs = d.buffer_bytes / (1 << 20), self.block_size
        mb = int(mb) if mb == int(mb) else mb
        if d.buffer_bytes < bs:
            raise ConfigError("data.buffer_mb", mb, f"is smaller than block_kb={bs >> 10}: a buffer holds whole "
                                                          f"blocks; set data.buffer_mb >= {-(-bs // (1 << 20))} "
                                                          "or null (the default rule)")
        if d.buffer_bytes % bs:
            raise ConfigError("data.buffer_mb", mb, f"is not a multiple of block_kb={bs >> 10}: a buffer holds "
                                                          "whole blocks; choose a multiple, or null (the default rule)")
        if d.buffer_bytes * d.pool_buffers > MAX_POOL_BYTES:
            raise ConfigError("data.buffer_mb", mb, f"x data.pool_buffers={d.pool_buffers} is more than "
                                                          f"{MAX_POOL_BYTES >> 30} GiB per worker: lower either")

    def _check_format_read(self) -> None:
        """data.format and data.rows belong to pattern=format_read, which reads its own table with
        numpy/pyarrow: knobs that cannot apply there are refused, not ignored."""
        if self.pattern != FORMAT_READ:
            for key in ("format", "rows"):
                if getattr(self.data, key) is not None:
                    raise ConfigError(f"data.{key}", getattr(self.data, key),
                                      f"applies to pattern=format_read only (this is pattern={self.pattern}): "
                                      f"remove data.{key} or set pattern=format_read")
            return
        if self.data.format not in TABLE_FORMATS:
            raise ConfigError("data.format", self.data.format, "choose one of " + ", ".join(TABLE_FORMATS))
        rows = self.data.rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError("data.rows", rows, "must be a whole number >= 1 (rows of each worker's table)")
        for key, bad, fix in (("engine", self.engine != "sync", "numpy and pyarrow read the file: use engine=sync"),
                              ("direct", self.direct, "numpy and pyarrow read through the page cache: "
                                                      "set direct=false (cache=cold evicts the file)"),
                              ("target", self.target in ("file", "device"),
                               "format_read writes its own table files: use target=local or tmpfs"),
                              ("iodepth", self.iodepth != 1, "a load is one call of the format's reader: "
                                                             "set iodepth=1"),
                              ("files_per_writer", self.files_per_writer != 1 or self.file_bytes is not None,
                               "each worker loads one table file (data.rows sizes it): set files_per_writer=1 "
                               "and file_kb=null")):
            if bad:
                raise ConfigError(key, getattr(self, key), f"not with pattern=format_read: {fix}")

    def _check_files(self) -> None:
        """files_per_writer and file_kb (small files), and what pattern=metadata needs."""
        fpw, fb = self.files_per_writer, self.file_bytes
        if isinstance(fpw, bool) or not isinstance(fpw, int) or fpw < 1:
            raise ConfigError("files_per_writer", fpw, "must be a whole number >= 1 (files each writer owns)")
        if fb is not None:
            if isinstance(fb, bool) or not isinstance(fb, int) or fb < 0 or fb % 1024 \
                    or (fb < MIN_FILE and not (fb == 0 and self.metadata)):
                kb = (fb // 1024 if fb % 1024 == 0 else fb / 1024) \
                    if isinstance(fb, (int, float)) and not isinstance(fb, bool) else fb
                raise ConfigError("file_kb", kb, "must be a whole number of KiB >= 1 (or null: the writer's share "
                                                 "of size_mb)" + ("; 0 with pattern=metadata: empty files"
                                                                  if self.metadata else ""))
        if (fpw > 1 or fb is not None) and self.target not in ("local", "tmpfs") \
                and not (self.metadata and self.target == "s3"):  # s3: pattern=metadata's objects
            raise ConfigError("files_per_writer" if fpw > 1 else "file_kb", fpw if fpw > 1 else fb // 1024,
                              f"iosweep creates small files in its own scratch dir, and target={self.target} is "
                              "not one: use target=local or target=tmpfs")
        if self.metadata:
            problems = [("engine", self.engine, "only engine=sync runs pattern=metadata (fio has no create/stat/"
                                                "unlink phases; mdtest does): set engine=sync")
                        if self.engine != "sync" else None,
                        ("duration_s", self.duration_s, "pattern=metadata runs each phase over files_per_writer "
                                                        "files (mdtest -n): set duration_s=null")
                        if self.duration_s is not None else None,
                        ("ramp_s", self.ramp_s, "pattern=metadata has no warm-up: set ramp_s=0") if self.ramp_s
                        else None,
                        ("direct", True, "pattern=metadata goes through the page cache, as mdtest does: set "
                                         "direct=false") if self.direct else None,
                        ("iodepth", self.iodepth, "pattern=metadata issues one op at a time: set iodepth=1")
                        if self.iodepth != 1 else None]
            for problem in filter(None, problems):
                raise ConfigError(*problem)
        elif fb is not None and fb % self.block_size:
            raise ConfigError("file_kb", fb // 1024, f"must be a multiple of block_kb={self.block_size >> 10} "
                                                     "(every op reads or writes a whole block of one file): "
                                                     "change file_kb or block_kb")
        elif fb is None and fpw > 1 and self.size_bytes is not None and self.per_file < self.block_size:
            raise ConfigError("files_per_writer", fpw,
                              f"leaves files smaller than block_kb={self.block_size >> 10}: size_mb="
                              f"{self.size_bytes >> 20} / writers={self.writers} / files_per_writer={fpw}; "
                              "raise size_mb, or lower files_per_writer or block_kb")

    def _check_replay(self) -> None:
        """pattern=replay: a readable trace (load() names the line that is wrong), one worker, no duration."""
        if not self.trace:
            raise ConfigError("pattern.trace", self.trace, "pattern=replay needs a trace: set pattern.trace=PATH "
                                                           "(an fio iolog or a CSV offset,length,op[,time_us])")
        if self.timing not in TIMINGS:
            raise ConfigError("pattern.timing", self.timing, "choose one of " + ", ".join(TIMINGS))
        self._trace()
        if self.writers != 1:
            raise ConfigError("writers", self.writers, "pattern=replay replays the trace once, with one worker: "
                                                       "set writers=1")
        if self.duration_s is not None:
            raise ConfigError("duration_s", self.duration_s, "pattern=replay runs the trace's ops once: "
                                                             "set duration_s=null")
        if self.files_per_writer != 1 or self.file_bytes is not None:
            raise ConfigError("files_per_writer", self.files_per_writer, "pattern=replay replays the trace on one "
                                                                         "file: set files_per_writer=1 and file_kb=null")

    def _check_model_load(self) -> None:
        """pattern=model_load: one model file on target=file (model.py names what is wrong with it),
        read once by one worker (a loader)."""
        from .model import ORDERS

        if self.target != "file":
            raise ConfigError("target", self.target, "pattern=model_load reads an existing model file: set "
                                                     "target=file target.path=MODEL.safetensors|MODEL.gguf")
        if self.order not in ORDERS:
            raise ConfigError("pattern.order", self.order, "choose one of " + ", ".join(ORDERS))
        for key, bad, fix in (("writers", self.writers != 1, "a loader is one worker: set writers=1"),
                              ("duration_s", self.duration_s is not None, "a load reads the file once: "
                                                                          "set duration_s=null"),
                              ("pattern.trace", self.trace is not None, "the model's header is the trace: "
                                                                        "remove pattern.trace")):
            if bad:
                raise ConfigError(key, getattr(self, key.split(".")[-1]), f"not with pattern=model_load: {fix}")
        self._trace()
