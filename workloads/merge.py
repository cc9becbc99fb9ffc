"""merge_kb: request merging as seed 003's readBatch does it, for read patterns.

The pattern's ops are cut into batches of `merge.batch` ops (in issue order); each batch is sorted
by offset and requests whose gap to the previous one is <= merge_kb KiB (0: only adjacent or
overlapping ones) become one larger read, gap bytes included. A merged request is one
variable-length op (the `lengths` of the issue functions), issued by any in-process engine.

Metrics: `ops_requested` (the pattern's ops), `ops_issued` (the reads issued after merging),
`bytes_over_read` (gap bytes read that nobody asked for). bytes_read is what was really read,
gaps included. Writes are refused (merging writes would need the data of the gaps).

The largest merged request is batch x the largest op + (batch-1) x merge_kb: each read buffer
(per in-flight slot with engine=uring) is that large, so no cap splits a merge.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .spec import Spec

KEY = "merge_kb"
BATCH_MAX = 4096  # ops per batch; a batch's merged request must fit a read buffer
PAD = np.int64(1 << 62)  # offset of the filler ops that round the last batch up (dropped again)


def check(spec: Spec) -> None:
    if isinstance(spec.merge_kb, bool) or not isinstance(spec.merge_kb, int) or spec.merge_kb < 0:
        raise ConfigError(KEY, spec.merge_kb, "must be a whole number of KiB >= 0 (0: merge adjacent requests "
                                              "only), or null / -1 to turn merging off")
    if isinstance(spec.merge_batch, bool) or not isinstance(spec.merge_batch, int) \
            or not 1 <= spec.merge_batch <= BATCH_MAX:
        raise ConfigError("merge.batch", spec.merge_batch, f"must be a whole number of ops from 1 to {BATCH_MAX}")
    if spec.pattern == "replay" and spec.timing == "original":
        raise ConfigError(KEY, spec.merge_kb, "reorders the trace's ops, which timing=original issues at their "
                                              "times: set pattern.timing=asap or merge_kb=null")
    if spec.pattern in ("metadata", "format_read"):
        raise ConfigError(KEY, spec.merge_kb, f"merges block reads, and pattern={spec.pattern} issues none: "
                                              "set merge_kb=null")
    if spec.writes:
        raise ConfigError(KEY, spec.merge_kb, f"merges reads only and pattern={spec.pattern} writes: choose a read "
                                              "pattern (seq_read, rand_read, a read-only trace) or set merge_kb=null")


def max_request(spec: Spec) -> int:
    """The largest request merging can form: what each read buffer must hold."""
    largest = spec._trace().max_length if spec.pattern == "replay" else spec.block_size
    return spec.merge_batch * largest + (spec.merge_batch - 1) * spec.merge_kb * 1024


def coalesce(offsets: np.ndarray, lengths: np.ndarray | None, block: int, gap_bytes: int, batch: int):
    """Merge each batch of `batch` ops. Returns (offsets, lengths, covers, over): per merged request its
    offset, length, how many requested ops it serves, and how many bytes of it nobody asked for."""
    n = len(offsets)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    lens = np.full(n, block, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    rows = -(-n // batch)
    pad = rows * batch - n
    o = np.concatenate([offsets.astype(np.int64, copy=False), np.full(pad, PAD, dtype=np.int64)]).reshape(rows, batch)
    ln = np.concatenate([lens, np.zeros(pad, dtype=np.int64)]).reshape(rows, batch)
    order = np.argsort(o, axis=1, kind="stable")
    o = np.take_along_axis(o, order, axis=1)
    ln = np.take_along_axis(ln, order, axis=1)
    ends = o + ln
    reach = np.maximum.accumulate(ends, axis=1)  # the furthest byte of the requests so far in the batch
    starts = np.ones_like(o, dtype=bool)
    starts[:, 1:] = o[:, 1:] - reach[:, :-1] > gap_bytes
    # the fillers sort last in the last row: the first n entries are the real ops
    o, ln, ends, starts = o.ravel()[:n], ln.ravel()[:n], ends.ravel()[:n], starts.ravel()[:n]
    first = np.flatnonzero(starts)
    merged_off = o[first]
    merged_len = np.maximum.reduceat(ends, first) - merged_off
    covers = np.diff(np.append(first, n))
    asked = np.add.reduceat(ln, first)
    over = np.maximum(merged_len - asked, 0)  # overlapping requests read less than asked: no over-read
    return merged_off, merged_len, covers.astype(np.int64), over
