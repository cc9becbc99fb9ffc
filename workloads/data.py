"""Block buffers for the hot loop: dgen-py data generated ahead by a producer thread, or zeros.

Buffers are anonymous mmaps (page-aligned, as O_DIRECT needs). dgen-py costs ~100-200 us per
call, so it fills chunks of >= 1 MiB that the hot loop writes block by block. A producer thread keeps RING chunks ready (fill_chunk releases the GIL), so generation
overlaps the I/O; the time the loop still waits for data is counted in `wait_ns`.

dgen-py's ratios hold within one Generator pass of the size it was given, so each worker's
Generator is sized to its file: every pass over the file writes a fresh, correctly-shaped stream.
"""
from __future__ import annotations

import hashlib
import mmap
import queue
import threading
import time

from .spec import Spec

MIN_CHUNK = 1 << 20
RING = 4


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


def aligned_buffer(nbytes: int) -> mmap.mmap:
    return mmap.mmap(-1, nbytes)


def dgen_generator(spec: Spec, worker: int, pass_no: int, size: int):
    """The Generator for one pass of one worker over its file.

    dgen-py 0.3: a Generator after set_seed()+reset() repeats one unit forever, and seed s+1
    yields seed s's stream shifted by one unit. So: a new Generator per pass, with seeds hashed
    far apart for every (seed, worker, pass).
    """
    import dgen_py

    key = f"{spec.seed}/{worker}/{pass_no}".encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    return dgen_py.Generator(size=size, dedup_ratio=spec.data.dedup_ratio,
                             compress_ratio=spec.data.compress_ratio, seed=seed, max_threads=1)


class BlockSource:
    """A ring of chunks for the hot loop: `current_chunk()`, then `advance()` when it is used up.

    The plain source has one chunk that never changes (zeros); DgenSource refills them.
    """

    def __init__(self, buffers: list[mmap.mmap]):
        self.buffers = buffers
        self.wait_ns = 0

    def current_chunk(self) -> mmap.mmap:
        return self.buffers[0]

    def advance(self) -> mmap.mmap:
        return self.current_chunk()

    def close(self) -> None:
        pass


class DgenSource(BlockSource):
    def __init__(self, spec: Spec, worker: int, stream_bytes: int, first_pass: int = 0):
        size = chunk_bytes(spec.block_size, spec.iodepth)
        super().__init__([aligned_buffer(size) for _ in range(RING)])
        self._spec, self._worker, self._stream_bytes, self._pass = spec, worker, stream_bytes, first_pass
        self._gen = self._new_generator()
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        self._current = self.buffers[0]
        self._fill(self._current)
        for buf in self.buffers[1:]:
            self._free.put(buf)
        self._thread = threading.Thread(target=self._produce, name="dgen", daemon=True)
        self._thread.start()

    def _new_generator(self):
        return dgen_generator(self._spec, self._worker, self._pass, self._stream_bytes)

    def _fill(self, buf) -> None:
        view, done = memoryview(buf), 0
        while done < len(buf):
            n = self._gen.fill_chunk(view[done:])
            if n == 0:  # pass complete: the next pass over the file gets a new stream
                self._pass += 1
                self._gen = self._new_generator()
                continue
            done += n
        view.release()

    def _produce(self) -> None:
        while True:
            buf = self._free.get()
            if buf is None:
                return
            self._fill(buf)
            self._full.put(buf)

    def current_chunk(self) -> mmap.mmap:
        return self._current

    def advance(self) -> mmap.mmap:
        self._free.put(self._current)
        t0 = time.perf_counter_ns()
        self._current = self._full.get()
        self.wait_ns += time.perf_counter_ns() - t0
        return self._current

    def close(self) -> None:
        self._free.put(None)
        self._thread.join(timeout=5)


def write_source(spec: Spec, worker: int, first_pass: int = 0) -> BlockSource:
    """Data for a worker's writes; pass 0 is the layout, measured writes over a laid-out file start at 1."""
    if spec.data.kind == "zeros" or spec.engine == "null":
        return BlockSource([aligned_buffer(chunk_bytes(spec.block_size, spec.iodepth))])
    return DgenSource(spec, worker, spec.file_size, first_pass)


SAMPLE_CAP = 1 << 30
DEDUP_BLOCK = 4096


def measure_ratios(spec: Spec) -> dict[str, float]:
    """Compression and dedup ratios of the bytes worker 0 wrote in its first pass, measured.

    The stream is regenerated from its seed (byte-identical to what was written) after the
    window, so measuring costs the run nothing. Dedup: distinct 4 KiB blocks (and 1 MiB units,
    dgen-py's own unit) over the whole first pass up to SAMPLE_CAP. Compression: zstd level 1
    over every 4th MiB.
    """
    import zstandard

    if spec.engine == "null" or not (spec.writes or spec.needs_layout):
        return {}
    size = min(spec.file_size, SAMPLE_CAP)
    gen = dgen_generator(spec, 0, 0, spec.file_size) if spec.data.kind == "dgen" else None
    buf = aligned_buffer(MIN_CHUNK)
    zstd = zstandard.ZstdCompressor(level=1)
    blocks, units = set(), set()
    n_blocks = n_units = raw = packed = 0
    for i in range(0, size, MIN_CHUNK):
        n = min(MIN_CHUNK, size - i)
        if gen is not None:
            gen.fill_chunk(buf)
        piece = memoryview(buf)[:n]
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
