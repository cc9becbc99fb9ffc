"""pattern=replay: issue the ops of a recorded trace, in its order, with its offsets and lengths.

Traces read:
- fio iolog v2 (`fio version 2 iolog`, then `FILE add|open|close` and `FILE ACTION OFFSET LENGTH`; a
  `FILE wait USEC 0` line delays what follows, as fio replays it) and v3 (`fio version 3 iolog`, each
  line led by a timestamp in microseconds since the log started: what `fio --write_iolog` writes
  since fio 3.31). Only read and write ops are replayed: sync, datasync and trim lines are skipped
  (counted in Trace.skipped); a trace of more than one file is refused.
- CSV `offset,length,op[,time_us]` (op: read|write|r|w), `#` comments, an optional header line.

Ops and bytes of the run equal the trace's reads and writes. One worker replays the trace
(writers > 1 is refused: several workers replaying one trace on one file would be another
workload). On iosweep's own files the file is laid out to the trace's end (the largest
offset+length) before the window; on target=file the trace must fit in the file and hold no
writes. `timing=original` issues each op at its time from the trace (relative to the first op)
and reports how late ops were issued (`replay_late_*_us`); `asap` issues them back to back.

Bad input (missing, empty or malformed trace, a line number named; an op beyond the file) is one
ConfigError on `pattern.trace` before any I/O.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .spec import PAGE, Spec

KEY = "pattern.trace"
V2, V3 = "fio version 2 iolog", "fio version 3 iolog"
OPS = {"read": 1, "r": 1, "write": 0, "w": 0}
SKIPPED = ("sync", "datasync", "trim", "sync_file_range")  # fio actions iosweep does not replay
FILE_ACTIONS = ("add", "open", "close")
SPIN_NS = 200_000  # original timing: sleep until this close to an op's time, then spin (sleep overshoots ~60 us)


@dataclass(frozen=True)
class Trace:
    offsets: np.ndarray  # int64 byte offsets, in trace order
    lengths: np.ndarray  # int64 bytes
    is_read: np.ndarray  # bool
    times_ns: np.ndarray | None  # int64 ns since the first op, or None: the trace has no times
    lines: np.ndarray  # int64: the line of each op in the trace file (for messages)
    files: tuple[str, ...] = ()  # the file names an fio iolog addresses
    skipped: int = 0  # sync / trim / datasync lines, not replayed

    @property
    def reads(self) -> int:
        return int(self.is_read.sum())

    @property
    def writes(self) -> int:
        return len(self.is_read) - self.reads

    @property
    def end(self) -> int:
        """The file size the trace needs: its largest offset + length."""
        return int((self.offsets + self.lengths).max())

    @property
    def max_length(self) -> int:
        return int(self.lengths.max())

    @property
    def bytes(self) -> int:
        return int(self.lengths.sum())


def _bad(path: str, line: int, what: str) -> ConfigError:
    return ConfigError(KEY, f"{path}:{line}", what)


def _int(path: str, line: int, text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(path, line, f"{name} {text!r} is not a whole number: fix or remove that line") from None
    if value < 0:
        raise _bad(path, line, f"{name} {value} is negative: fix or remove that line")
    return value


def _parse_fio(path: str, lines: list[str], v3: bool) -> tuple[list, list, list, list, list, set, int]:
    offs, lens, reads, times, where, files, skipped = [], [], [], [], [], set(), 0
    wait_us = 0  # v2: the sum of the wait lines so far, the time of the ops that follow
    form = "TIMESTAMP FILE ACTION [OFFSET LENGTH]" if v3 else "FILE ACTION [OFFSET LENGTH]"
    for n, raw in enumerate(lines[1:], start=2):
        fields = raw.split()
        if not fields:
            continue
        t = None
        if v3:
            t = _int(path, n, fields[0], "timestamp")
            fields = fields[1:]
        if len(fields) == 2 and fields[1] in FILE_ACTIONS:
            files.add(fields[0])
            continue
        if len(fields) != 4:
            raise _bad(path, n, f"expected {form} (fio iolog v{3 if v3 else 2}), got {raw.strip()!r}: "
                                "fix or remove that line")
        name, action, off, length = fields[0], fields[1], fields[2], fields[3]
        if action == "wait" and not v3:
            wait_us += _int(path, n, off, "wait time")
            continue
        if action in SKIPPED:
            skipped += 1
            continue
        if action not in ("read", "write"):
            raise _bad(path, n, f"unknown action {action!r}: fio iologs have read, write, sync, datasync, trim"
                                f"{'' if v3 else ', wait'}, add, open, close")
        files.add(name)
        offs.append(_int(path, n, off, "offset"))
        lens.append(_int(path, n, length, "length"))
        reads.append(action == "read")
        times.append(t if v3 else wait_us)
        where.append(n)
    has_times = v3 or wait_us > 0
    return offs, lens, reads, times if has_times else None, where, files, skipped


def _parse_csv(path: str, lines: list[str]) -> tuple[list, list, list, list | None, list]:
    offs, lens, reads, times, where = [], [], [], [], []
    timed = None
    for n, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        fields = [f.strip() for f in text.split(",")]
        if not offs and not where and not fields[0].isdigit() and fields[0].lower() == "offset":
            continue  # the header line
        if len(fields) not in (3, 4):
            raise _bad(path, n, f"expected offset,length,op[,time_us], got {raw.strip()!r}: fix or remove that line")
        if timed is None:
            timed = len(fields) == 4
        elif timed != (len(fields) == 4):
            raise _bad(path, n, "has time_us on some lines and not on others: give it on every line or none")
        op = fields[2].lower()
        if op not in OPS:
            raise _bad(path, n, f"op {fields[2]!r} is not read or write (r / w)")
        offs.append(_int(path, n, fields[0], "offset"))
        lens.append(_int(path, n, fields[1], "length"))
        reads.append(bool(OPS[op]))
        times.append(_int(path, n, fields[3], "time_us") if timed else 0)
        where.append(n)
    return offs, lens, reads, times if timed else None, where


@functools.lru_cache(maxsize=8)
def _parse(path: str, size: int, mtime_ns: int) -> Trace:
    """The trace at `path` (size and mtime are the cache key: an edited trace is read again)."""
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ConfigError(KEY, path, "is not a text file: give an fio iolog or a CSV offset,length,op[,time_us]") \
            from None
    except OSError as e:
        raise ConfigError(KEY, path, f"cannot be read ({e.strerror}): check the path and its permissions") from None
    first = lines[0].strip() if lines else ""
    files, skipped = set(), 0
    if first.startswith("fio version"):
        if first not in (V2, V3):
            raise _bad(path, 1, f"{first!r} is not an iolog version iosweep reads: fio iolog v2 or v3")
        offs, lens, reads, times, where, files, skipped = _parse_fio(path, lines, first == V3)
    else:
        offs, lens, reads, times, where = _parse_csv(path, lines)
    if not offs:
        raise ConfigError(KEY, path, "holds no read or write ops: give a trace with some (fio --write_iolog=PATH "
                                     "writes one)")
    if len(files) > 1:
        raise ConfigError(KEY, path, f"addresses {len(files)} files ({', '.join(sorted(files)[:3])}...): iosweep "
                                     "replays the trace of one file; split it per file")
    lengths = np.asarray(lens, dtype=np.int64)
    if (lengths == 0).any():
        raise _bad(path, where[int(np.argmax(lengths == 0))], "has an op of length 0: fix or remove that line")
    t = None
    if times is not None:
        t = np.asarray(times, dtype=np.int64)
        if (np.diff(t) < 0).any():
            raise _bad(path, where[int(np.argmax(np.diff(t) < 0)) + 1], "goes back in time: the times must not "
                                                                        "decrease")
        t = (t - t[0]) * 1000
    return Trace(np.asarray(offs, dtype=np.int64), lengths, np.asarray(reads, dtype=bool), t,
                 np.asarray(where, dtype=np.int64), tuple(sorted(files)), skipped)


def load(path: str | None, direct: bool = False) -> Trace:
    """The parsed trace, or one ConfigError naming the file (and line) and the fix."""
    if not path:
        raise ConfigError(KEY, path, "pattern=replay needs a trace: set pattern.trace=PATH")
    path = os.path.abspath(os.path.expanduser(str(path)))
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(KEY, path, f"cannot be read ({e.strerror}): point pattern.trace at an fio iolog or a "
                                     "CSV file") from None
    if not os.path.isfile(path):
        raise ConfigError(KEY, path, "is not a regular file: point pattern.trace at an fio iolog or a CSV file")
    if st.st_size == 0:
        raise ConfigError(KEY, path, "is empty: give a trace with read or write ops (fio --write_iolog=PATH)")
    trace = _parse(path, st.st_size, st.st_mtime_ns)
    if direct:
        bad = (trace.offsets % PAGE != 0) | (trace.lengths % PAGE != 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise _bad(path, int(trace.lines[i]), f"op at offset {trace.offsets[i]} of {trace.lengths[i]} bytes: "
                                                  "direct=true needs offsets and lengths in multiples of 4 KiB "
                                                  "(or set direct=false)")
    return trace


def resolve(spec: Spec) -> Spec:
    """The spec a replay runs with: block_size = the largest op (rounded up to 4 KiB), which sizes the
    read buffer and the blocks of the write chunk; timing=original needs a trace with times."""
    trace = load(spec.trace, spec.direct)
    if spec.timing == "original" and trace.times_ns is None:
        raise ConfigError("pattern.timing", spec.timing, f"the trace {spec.trace} has no times (a CSV without "
                                                         "time_us, an fio v2 iolog without waits): use timing=asap")
    block = -(-trace.max_length // PAGE) * PAGE
    return dataclasses.replace(spec, block_size=block)


def check_file(spec: Spec, path: str, size: int) -> None:
    """target=file: every op of the trace must lie inside the file."""
    trace = load(spec.trace, spec.direct)
    beyond = trace.offsets + trace.lengths > size
    if beyond.any():
        i = int(np.argmax(beyond))
        raise _bad(spec.trace, int(trace.lines[i]), f"reads bytes {trace.offsets[i]}..{trace.offsets[i] + trace.lengths[i]} "
                                                    f"beyond the end of {path} ({size} bytes): replay it on a file "
                                                    "that large, or on iosweep's own files (target=local)")


def chunks(spec: Spec, chunk_ops: int):
    """(offsets, is_read flags or None, lengths) of the trace in chunks of at most chunk_ops ops."""
    trace = spec._trace()  # replay's trace file, or pattern=model_load's reads of the tensors
    mixed = trace.reads not in (0, len(trace.is_read))
    for start in range(0, len(trace.offsets), chunk_ops):
        end = start + chunk_ops
        yield (trace.offsets[start:end], trace.is_read[start:end] if mixed else None, trace.lengths[start:end])


class Pacer:
    """timing=original: holds each op back until its time from the trace (relative to the first op,
    which is issued at once), and keeps how late ops were issued."""

    def __init__(self, spec: Spec, clock=time.perf_counter_ns):
        self.times = load(spec.trace, spec.direct).times_ns
        self.clock = clock
        self.t0 = None
        self.late_sum_ns = self.late_max_ns = self.late_ops = 0

    def due(self, first: int, count: int) -> int:
        """Wait until op `first` (trace order) is due; return how many of ops first .. first+count-1
        are due now (>= 1), counting each one's lateness from now (a lower bound for all but the first)."""
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        at = self.t0 + int(self.times[first])
        if now < at:
            if at - now > SPIN_NS:
                time.sleep((at - now - SPIN_NS) / 1e9)
            while (now := self.clock()) < at:
                pass
        since = now - self.t0
        n = max(1, int(np.searchsorted(self.times[first:first + count], since, side="right")))
        late = since - self.times[first:first + n]
        self.late_sum_ns += int(late.sum())
        self.late_max_ns = max(self.late_max_ns, int(late.max()))
        self.late_ops += int((late > 1_000_000).sum())
        return n

    def reset(self) -> None:
        """The measured window starts (after ramp_s): forget the warm-up's lateness."""
        self.late_sum_ns = self.late_max_ns = self.late_ops = 0

    def counters(self) -> dict[str, float]:
        return {"replay_late_total_us": self.late_sum_ns / 1e3, "replay_late_max_us": self.late_max_ns / 1e3,
                "replay_ops_late_1ms": float(self.late_ops)}
