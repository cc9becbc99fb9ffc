"""Seeded offset and op-mix generators: what each worker does, in what order.

Random patterns visit every block of the file once per pass in a random order (fio's random
map); past PERMUTATION_LIMIT blocks they draw offsets with replacement (fio norandommap) to
bound memory. Time-based runs start a new pass when one ends.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .spec import TRACED, Spec

CHUNK_OPS = 1 << 16
PERMUTATION_LIMIT = 1 << 25  # 32 Mi blocks = 256 MiB of int64 indices


def worker_rng(spec: Spec, worker: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([spec.seed, worker, stream])


def op_chunks(spec: Spec, worker: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (byte offsets, is_read flags or None) in chunks of at most CHUNK_OPS ops.

    Size-based runs yield one pass over the file; time-based runs (duration_s) never end.
    """
    for _, offsets, flags, _ in extent_chunks(spec, worker, [spec.file_size // spec.block_size]):
        yield offsets, flags


def extent_chunks(spec: Spec, worker: int, extents: list[int]) \
        -> Iterator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Yield (extent index, byte offsets within that extent, is_read flags or None, lengths or None)
    over a worker's extents (sizes in blocks) one after another: a pass visits each extent in turn, in
    the pattern's order within it. One extent is op_chunks; several are target=file over several files.
    lengths: None when every op is block_size bytes (every pattern but replay), else int64 bytes per op.
    """
    if spec.pattern in TRACED:  # the trace's ops, in its order, once (writers=1: one extent)
        from .replay import chunks

        for offsets, flags, lengths in chunks(spec, CHUNK_OPS):
            yield 0, offsets, flags, lengths
        return
    rng = worker_rng(spec, worker)
    mix_rng = worker_rng(spec, worker, stream=1)
    while True:
        for index, n_blocks in enumerate(extents):
            if not spec.random:
                order = np.arange(n_blocks, dtype=np.int64)
            elif n_blocks <= PERMUTATION_LIMIT:
                order = rng.permutation(n_blocks).astype(np.int64)
            else:
                order = rng.integers(0, n_blocks, size=n_blocks, dtype=np.int64)
            for start in range(0, n_blocks, CHUNK_OPS):
                offsets = order[start:start + CHUNK_OPS] * spec.block_size
                flags = None
                if spec.pattern == "mixed":
                    flags = mix_rng.random(len(offsets)) < spec.read_pct / 100.0
                yield index, offsets, flags, None
        if spec.duration_s is None:
            return
