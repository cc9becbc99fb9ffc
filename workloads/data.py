"""Block buffers for the hot loop: dgen-py data generated ahead by producer threads, or zeros.

The pipeline of one worker (seed 002's producer-consumer design, made explicit):
    data.producers threads --fill--> data.pool_buffers chunks of data.buffer_mb --> the writer (hot loop)
Buffers are anonymous mmaps (page-aligned, as O_DIRECT needs). dgen-py costs ~100-200 us per
call, so a producer fills a whole chunk (>= 1 MiB) per call and the hot loop writes it block by
block; fill_chunk releases the GIL, so generation overlaps the I/O. Two waits are counted: the
writer waiting for a filled chunk (`wait_ns`: generation is too slow) and the producers waiting
for a free buffer (`producer_wait_ns()`: the writer, i.e. storage, is too slow).

Every byte of the stream is a function of (seed, worker, pass, offset) only (`stream_fill`: one
dgen-py Generator per 1 MiB unit), so several producers filling chunks in any order, and any
chunk size, write the same bytes as one producer, and measure_ratios() regenerates exactly what
was written.
"""
from __future__ import annotations

import hashlib
import math
import mmap
import os
import queue
import threading
import time

from .spec import Spec

MIN_CHUNK = 1 << 20
RING = 4  # data.pool_buffers' default


DEPTH_CHUNK_OPS = 64  # with ops in flight (iodepth > 1), a chunk holds this many queues' worth of blocks...
MAX_DEPTH_CHUNK = 16 << 20  # ...up to this size, but never fewer than 4 queues' worth


def chunk_bytes(block_size: int, iodepth: int = 1) -> int:
    """Smallest multiple of the block that is >= 1 MiB; larger with a queue depth, as an engine with
    writes in flight completes them before the chunk is refilled: a pipeline bubble per chunk, rare
    when a chunk holds many queues' worth of blocks."""
    want = MIN_CHUNK
    if iodepth > 1:
        queue = iodepth * block_size
        want = max(MIN_CHUNK, min(DEPTH_CHUNK_OPS * queue, max(MAX_DEPTH_CHUNK, 4 * queue)))
    return -(-want // block_size) * block_size


def stream_chunk_bytes(spec: Spec) -> int:
    """The chunk a producer fills and the writer writes: data.buffer_mb, or chunk_bytes()' rule."""
    return spec.data.buffer_bytes or chunk_bytes(spec.block_size, spec.iodepth)


def aligned_buffer(nbytes: int) -> mmap.mmap:
    return mmap.mmap(-1, nbytes)


UNIT = MIN_CHUNK  # the stream's unit: one dgen-py Generator each


def dgen_generator(spec: Spec, worker: int, pass_no: int, unit: int):
    """The Generator of one 1 MiB unit of one pass of one worker's stream.

    dgen-py 0.3: a Generator after set_seed()+reset() repeats one unit forever, and seed s+1
    yields seed s's stream shifted by one unit (with compress_ratio 1). So: a new Generator per
    unit, with seeds hashed far apart for every (seed, worker, pass, unit). One per unit costs
    nothing measurable (a Generator is made in < 1 us; filling 1 MiB takes ~200 us), and makes
    every unit a function of where it is in the stream only.
    """
    import dgen_py

    key = f"{spec.seed}/{worker}/{pass_no}/{unit}".encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    return dgen_py.Generator(size=UNIT, dedup_ratio=1, compress_ratio=spec.data.compress_ratio, seed=seed,
                             max_threads=1)


_scratch = threading.local()  # per producer thread: a whole unit, for chunks that take part of one


def stream_fill(spec: Spec, worker: int, stream_bytes: int, first_pass: int, start: int, buf) -> None:
    """Fill `buf` with bytes [start, start + len(buf)) of the worker's data stream from `first_pass` on.

    The stream is the worker's passes over its file (stream_bytes each) one after another. A pass
    is ceil(stream_bytes / 1 MiB) units; with dedup_ratio d it has ceil(units / d) distinct ones,
    unit u repeating unit u mod that, so every unit appears d times in a pass, as in dgen-py's own
    dedup; compress_ratio is each unit's Generator's. A byte's value depends only on (seed, worker,
    pass, offset): not on the chunk size, the producers or the order they fill chunks in.
    """
    view, pos, n = memoryview(buf), 0, len(buf)
    distinct = -(-(-(-stream_bytes // UNIT)) // spec.data.dedup_ratio)
    while pos < n:
        pass_no, x = divmod(start + pos, stream_bytes)
        unit, at = divmod(x, UNIT)
        take = min(UNIT - at, stream_bytes - x, n - pos)
        gen = dgen_generator(spec, worker, first_pass + pass_no, unit % distinct)
        if take == UNIT:
            _fill(gen, view[pos:pos + UNIT])
        else:  # part of a unit (a chunk's edge, a pass's last unit): generate it whole, copy the part
            whole = getattr(_scratch, "unit", None)
            if whole is None:
                whole = _scratch.unit = bytearray(UNIT)
            _fill(gen, memoryview(whole))
            view[pos:pos + take] = whole[at:at + take]
        pos += take
    view.release()


def _fill(gen, view) -> None:
    done = 0
    while done < len(view):
        n = gen.fill_chunk(view[done:])
        if n == 0:  # dgen-py fills all it was sized for in one call; a guard, not a path
            raise RuntimeError(f"dgen-py stopped after {done} of {len(view)} bytes")
        done += n


class BlockSource:
    """Chunks for the hot loop: `current_chunk()`, then `advance()` when it is used up.

    The plain source has one chunk that never changes (zeros, or one dgen-py chunk rewritten:
    data.refill=false); DgenSource refills them.
    """

    producers = 0

    def __init__(self, buffers: list[mmap.mmap]):
        self.buffers = buffers
        self.wait_ns = 0

    def current_chunk(self) -> mmap.mmap:
        return self.buffers[0]

    def advance(self) -> mmap.mmap:
        return self.current_chunk()

    def producer_wait_ns(self) -> int:
        return 0

    def close(self) -> None:
        pass


class DgenSource(BlockSource):
    """data.producers threads fill data.pool_buffers chunks; the writer takes them in index order."""

    def __init__(self, spec: Spec, worker: int, stream_bytes: int, first_pass: int = 0):
        super().__init__([aligned_buffer(stream_chunk_bytes(spec)) for _ in range(spec.data.pool_buffers)])
        self._spec, self._worker, self._stream_bytes, self._first = spec, worker, stream_bytes, first_pass
        self.producers = spec.data.producers
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._ready: dict[int, mmap.mmap] = {}  # filled chunks by index, until the writer takes them
        self._filled = threading.Condition()
        self._take = threading.Lock()  # hands out chunk indexes in order
        self._next_index = 1  # chunk 0 is filled here, before the start
        self._want = 1  # the index the writer takes next
        self._waited_ns = 0  # producers' finished waits for a free buffer
        self._error: BaseException | None = None  # a producer's failure, raised to the writer by advance()
        self._waiting_since = [0] * self.producers  # a producer blocked now: since when (0: not)
        self._current = self.buffers[0]
        self._fill(0, self._current)
        for buf in self.buffers[1:]:
            self._free.put(buf)
        self._threads = [threading.Thread(target=self._produce, args=(p,), name=f"dgen-{p}", daemon=True)
                         for p in range(self.producers)]
        for t in self._threads:
            t.start()

    def _fill(self, index: int, buf) -> None:
        stream_fill(self._spec, self._worker, self._stream_bytes, self._first, index * len(buf), buf)

    def _produce(self, me: int) -> None:
        while True:
            t0 = time.perf_counter_ns()
            self._waiting_since[me] = t0
            buf = self._free.get()
            self._waiting_since[me] = 0
            with self._take:
                self._waited_ns += time.perf_counter_ns() - t0
                if buf is None:
                    return
                index = self._next_index
                self._next_index += 1
            try:
                self._fill(index, buf)
            except BaseException as e:  # dgen-py failed: the writer must hear it, not wait for this chunk forever
                with self._filled:
                    self._error = e
                    self._filled.notify_all()
                return
            with self._filled:
                self._ready[index] = buf
                self._filled.notify_all()

    def producer_wait_ns(self) -> int:
        """Time the producers waited for a free buffer, summed over them, up to now (a wait still
        going on included: at the end of a storage-bound run they all wait)."""
        now = time.perf_counter_ns()
        with self._take:
            return self._waited_ns + sum(now - t for t in self._waiting_since if t)

    def current_chunk(self) -> mmap.mmap:
        return self._current

    def advance(self) -> mmap.mmap:
        self._free.put(self._current)
        t0 = time.perf_counter_ns()
        with self._filled:
            while self._want not in self._ready:
                if self._error is not None:
                    raise RuntimeError(f"dgen-py producer failed: {self._error}") from self._error
                self._filled.wait(timeout=1.0)  # woken by a fill or a failure; the timeout is a backstop
            self._current = self._ready.pop(self._want)
            self._want += 1
        self.wait_ns += time.perf_counter_ns() - t0
        return self._current

    def close(self) -> None:
        for _ in self._threads:
            self._free.put(None)
        for t in self._threads:
            t.join(timeout=5)


def write_source(spec: Spec, worker: int, first_pass: int = 0) -> BlockSource:
    """Data for a worker's writes; pass 0 is the layout, measured writes over a laid-out file start at 1."""
    if spec.data.kind == "zeros" or spec.engine == "null":
        return BlockSource([aligned_buffer(stream_chunk_bytes(spec))])
    if not spec.data.refill:  # one chunk of the stream, generated once and written again and again
        buf = aligned_buffer(stream_chunk_bytes(spec))
        stream_fill(spec, worker, spec.file_size, first_pass, 0, buf)
        return BlockSource([buf])
    return DgenSource(spec, worker, spec.file_size, first_pass)


CALIBRATE_S = 0.3  # the generator alone (seed 002's /dev/null test): long enough for a steady rate


def calibrate(spec: Spec, producers: int | None = None, seconds: float = CALIBRATE_S) -> float:
    """MiB/s that `producers` threads (data.producers) of dgen-py reach filling this point's chunks
    with nothing else to do: the most one worker's pipeline can feed its writer. Outside the window."""
    producers = producers or spec.data.producers
    size = stream_chunk_bytes(spec)
    filled = [0] * producers
    deadline = time.perf_counter() + seconds

    def fill(p: int) -> None:
        buf, i = aligned_buffer(size), 0
        while time.perf_counter() < deadline:
            stream_fill(spec, 1 << 30, size, p + i * producers, 0, buf)  # a worker no run has
            filled[p] += size
            i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=fill, args=(p,), daemon=True) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(filled) / MIN_CHUNK / (time.perf_counter() - t0)


COPY_SPAN = 64 << 20


def copy_mib_s(spec: Spec, seconds: float = 0.1) -> float:
    """MiB/s of one thread copying a chunk (memmove): what one writer can at most consume through
    the page cache, each write being a copy into it. auto_tune() sizes the producers with it."""
    size = stream_chunk_bytes(spec)
    slots = max(1, COPY_SPAN // size)  # copies land in memory no cache holds, as written pages do
    src, dst = aligned_buffer(size), aligned_buffer(size * slots)
    copied, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        at = (copied // size % slots) * size
        dst[at:at + size] = src
        copied += size
    return copied / MIN_CHUNK / (time.perf_counter() - t0)


def usable_cpus() -> int:
    """CPUs this process may run on (taskset/cgroups cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


MAX_AUTO_WRITERS = 32  # seed 002's auto-tune: 128 CPUs -> 32 writers


def auto_tune(spec: Spec, writers_auto: bool, producers_auto: bool, cpus: int | None = None,
              gen_mib_s: float | None = None, copy_rate: float | None = None) -> tuple[int, int, dict]:
    """writers=auto and data.producers=auto resolved from the CPUs and a calibration; returns
    (writers, producers, what it measured).

    writers = half the usable CPUs (1..32): seed 002's auto-tune (8 CPUs -> 4 writers, 16 -> 8),
    the other half left to generation and the kernel.
    producers = threads of dgen-py one writer needs never to wait: ceil(copy rate / generator rate),
    where the copy rate (one thread memmoving a chunk) bounds what one writer can consume, and the
    generator rate is one producer's, calibrated; at least 1, and at most the CPUs left per worker
    beside its writer."""
    cpus = cpus or usable_cpus()
    writers = max(1, min(MAX_AUTO_WRITERS, cpus // 2)) if writers_auto else spec.writers
    producers, measured = spec.data.producers, {"cpus": cpus}
    if producers_auto:
        gen_mib_s = gen_mib_s if gen_mib_s is not None else calibrate(spec, producers=1)
        copy_rate = copy_rate if copy_rate is not None else copy_mib_s(spec)
        need = math.ceil(copy_rate / max(gen_mib_s, 1e-9))
        producers = max(1, min(need, cpus // writers - 1))
        measured.update(datagen_1_mib_s=gen_mib_s, copy_mib_s=copy_rate)
    return writers, producers, measured


SAMPLE_CAP = 1 << 30
DEDUP_BLOCK = 4096


def measure_ratios(spec: Spec) -> dict[str, float]:
    """Compression and dedup ratios of the bytes worker 0 wrote in its first pass, measured.

    The stream is regenerated from its seed (stream_fill: byte-identical to what was written,
    whichever producer filled which chunk) after the window, so measuring costs the run nothing.
    Dedup: distinct 4 KiB blocks (and 1 MiB units, dgen-py's own unit) over the whole first pass
    up to SAMPLE_CAP. Compression: zstd level 1 over every 4th MiB.
    """
    import zstandard

    if spec.engine == "null" or not (spec.writes or spec.needs_layout):
        return {}
    size = min(spec.file_size, SAMPLE_CAP)
    buf = aligned_buffer(MIN_CHUNK)
    rewritten = None  # data.refill=false: the one chunk every write repeats
    if spec.data.kind == "dgen" and not spec.data.refill:
        rewritten = aligned_buffer(stream_chunk_bytes(spec))
        stream_fill(spec, 0, spec.file_size, 0, 0, rewritten)
    zstd = zstandard.ZstdCompressor(level=1)
    blocks, units = set(), set()
    n_blocks = n_units = raw = packed = 0
    for i in range(0, size, MIN_CHUNK):
        n = min(MIN_CHUNK, size - i)
        piece = memoryview(buf)[:n]
        if rewritten is not None:
            _repeat(rewritten, i, piece)
        elif spec.data.kind == "dgen":
            stream_fill(spec, 0, spec.file_size, 0, i, piece)
        units.add(hashlib.blake2b(piece, digest_size=16).digest())
        n_units += 1
        for j in range(0, n, DEDUP_BLOCK):
            blocks.add(hashlib.blake2b(piece[j:j + DEDUP_BLOCK], digest_size=16).digest())
        n_blocks += -(-n // DEDUP_BLOCK)
        if (i // MIN_CHUNK) % 4 == 0:
            raw += n
            packed += len(zstd.compress(piece))
        piece.release()
    return {"data_compress_ratio_measured": raw / packed,
            "data_dedup_ratio_measured": n_blocks / len(blocks),
            "data_dedup_ratio_measured_1mib": n_units / len(units),
            "data_sample_mib": size / MIN_CHUNK}


def _repeat(chunk, start: int, view) -> None:
    """Bytes [start, start + len(view)) of `chunk` written again and again."""
    pos = 0
    while pos < len(view):
        at = (start + pos) % len(chunk)
        take = min(len(chunk) - at, len(view) - pos)
        view[pos:pos + take] = chunk[at:at + take]
        pos += take
