"""pattern=model_load: read a model file's tensors as a loader does (seed 003, GGUF/safetensors loading).

The file's header is read with the format's own library -- `safetensors` (safe_open for the tensor
names, the header JSON for each tensor's data_offsets) or `gguf` (GGUFReader: each tensor's
data_offset and n_bytes) -- outside the window. The ops are then a Trace (workloads/replay.py) of
reads: every tensor's bytes, in file order (`pattern.order=file`) or layer by layer
(`pattern.order=layer`: the layer number in the name, `model.layers.12.` / `blk.12.`, ascending;
tensors of no layer -- embeddings, final norm, head -- first; file order within a layer), each
tensor in reads of at most block_kb, the last one shorter. The worker loop, the engines and the
target are replay's: engine=mmap with engine.access=touch is llama.cpp's mmap-and-touch load.
One worker (a loader); the header itself is not read inside the window (the library parsed it).

Bad input -- a file that is neither safetensors nor GGUF, or one whose header addresses bytes
beyond its end (truncated) -- is one ConfigError naming the file, before any I/O.
"""
from __future__ import annotations

import functools
import json
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .replay import Trace

KEY = "target.path"
ORDERS = ("file", "layer")
GGUF_MAGIC = b"GGUF"
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit on the header's size
LAYER = re.compile(r"(?:^|\.)(?:layers|blk|h|block|blocks)\.(\d+)\.")
FIX = "point target.path at a .safetensors or .gguf model file"


@dataclass(frozen=True)
class Tensor:
    name: str
    offset: int  # absolute byte offset of its data in the file
    nbytes: int


def _safetensors(path: str, size: int) -> list[Tensor]:
    from safetensors import safe_open

    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= n <= min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ConfigError(KEY, path, f"is neither safetensors (a header of {n} bytes in a file of {size}) nor "
                                         f"GGUF (no GGUF magic): {FIX}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise ConfigError(KEY, path, f"is neither safetensors (its header is not JSON) nor GGUF: {FIX}")
    data_start = 8 + n
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(KEY, path, f"safetensors header entry {name!r} has no data_offsets [begin, end]: "
                                         f"the file is damaged; {FIX}") from None
        if data_start + end > size or begin > end:
            raise ConfigError(KEY, path, f"is truncated: tensor {name!r} ends at byte {data_start + end} but the "
                                         f"file has {size} bytes; copy or download it again")
        tensors.append(Tensor(name, data_start + begin, end - begin))
    try:  # the library's own reading of the header: the names it would load (and its validation)
        with safe_open(path, framework="numpy") as f:
            names = set(f.keys())
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed file
        raise ConfigError(KEY, path, f"is not a valid safetensors file ({str(e).splitlines()[0][:120]}): "
                                     f"{FIX}") from None
    return sorted((t for t in tensors if t.name in names), key=lambda t: t.offset)


def _gguf(path: str, size: int) -> list[Tensor]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # gguf raises ValueError, IndexError... for a damaged or cut header
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ConfigError(KEY, path, f"is not a readable GGUF file ({why}): it is damaged or truncated; "
                                     "copy or download it again") from None
    tensors = [Tensor(t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
    for t in tensors:
        if t.offset + t.nbytes > size:
            raise ConfigError(KEY, path, f"is truncated: tensor {t.name!r} ends at byte {t.offset + t.nbytes} but "
                                         f"the file has {size} bytes; copy or download it again")
    return sorted(tensors, key=lambda t: t.offset)


@functools.lru_cache(maxsize=8)
def _tensors(path: str, size: int, mtime_ns: int) -> tuple[Tensor, ...]:
    """The file's tensors in file order (size and mtime are the cache key: a changed file is read again)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConfigError(KEY, path, f"cannot be read ({e.strerror}): {FIX}") from None
    tensors = _gguf(path, size) if magic == GGUF_MAGIC else _safetensors(path, size)
    if not any(t.nbytes for t in tensors):
        raise ConfigError(KEY, path, f"holds no tensor data: {FIX}")
    return tuple(t for t in tensors if t.nbytes)  # a 0-element tensor has nothing to read


def tensors(path: str) -> tuple[Tensor, ...]:
    """The model file's tensors (file order), or one ConfigError naming the file."""
    if not path:
        raise ConfigError(KEY, path, "pattern=model_load needs a model file: set target.path=MODEL.safetensors or "
                                     "MODEL.gguf (with target=file)")
    path = os.path.abspath(os.path.expanduser(str(path)))
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(KEY, path, f"cannot be read ({e.strerror}): {FIX}") from None
    if not os.path.isfile(path):
        raise ConfigError(KEY, path, f"is not a regular file: pattern=model_load loads one model file; {FIX}")
    return _tensors(path, st.st_size, st.st_mtime_ns)


def layer_of(name: str) -> int:
    """The layer number in a tensor's name (`model.layers.12.` / `blk.12.`), or -1 (no layer)."""
    m = LAYER.search(name)
    return int(m.group(1)) if m else -1


def ordered(found: tuple[Tensor, ...], order: str) -> list[Tensor]:
    if order == "layer":  # sorted() is stable: file order within a layer
        return sorted(found, key=lambda t: layer_of(t.name))
    return list(found)


@functools.lru_cache(maxsize=8)
def _trace(found: tuple[Tensor, ...], order: str, block: int) -> Trace:
    offs, lens, index = [], [], []
    for i, t in enumerate(ordered(found, order)):
        starts = np.arange(t.offset, t.offset + t.nbytes, block, dtype=np.int64)
        offs.append(starts)
        lens.append(np.minimum(block, t.offset + t.nbytes - starts))
        index.append(np.full(len(starts), i, dtype=np.int64))
    offsets = np.concatenate(offs)
    return Trace(offsets, np.concatenate(lens), np.ones(len(offsets), dtype=bool), None, np.concatenate(index))


def load(spec) -> Trace:
    """The load as a trace of reads (Trace.lines = each op's tensor, in load order)."""
    return _trace(tensors(spec.target_path), spec.order, spec.block_size)


def info(spec) -> dict:
    """Result.info of a model load: what was loaded (metrics.py derives tensors, tensor_max_mib...)."""
    found = tensors(spec.target_path)
    sizes = [t.nbytes for t in found]
    return {"model_tensors": len(found), "model_tensor_max_bytes": max(sizes), "model_tensor_min_bytes": min(sizes),
            "model_bytes": sum(sizes), "model_order": spec.order}
