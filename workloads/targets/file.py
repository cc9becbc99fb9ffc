"""Existing files read in place: `target=file`.

`target.path` is a file, a directory (its regular files, not recursing) or a glob (`**` recurses).
iosweep only opens them O_RDONLY: it never writes, truncates, creates, renames or removes anything
there, so it needs no allow_overwrite, and `Placement.files` (what cleanup removes) stays empty.
cache=cold evicts them with posix_fadvise(DONTNEED), which is advice, not a write.

The working set is the files in path order, each counted in whole blocks (a tail shorter than
block_kb is not read: it would be a short read), capped by size_bytes if set (target.size_mb), and
split evenly across writers by bytes: the files are laid end to end and worker w reads bytes
[w*share, (w+1)*share) of that concatenation. With one file that is target=device's region per
worker; with several, a worker's share may span files and it reads them one after another.
"""
from __future__ import annotations

import dataclasses
import glob
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..spec import TRACED, Spec
from .base import Placement, block_device, mount_of, register

GLOB_CHARS = "*?["
KEY = "target.path"


def _readable(path: Path) -> None:
    """Open it read-only once, so that EACCES is one line before any I/O rather than a failed worker."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as e:
        raise ConfigError(KEY, str(path), f"cannot be read ({e.strerror}): give iosweep read access to it or "
                                          "choose other files") from None


def _block_device(path: Path) -> ConfigError:
    return ConfigError(KEY, str(path), "is a block device: target=file reads regular files; to measure a device "
                                       "use target=device target.path=... (it writes: target.allow_overwrite=true)")


def scan(spec: Spec) -> list[tuple[Path, int]]:
    """The regular files target.path names, in path order, with their sizes: or one line on what is wrong."""
    if not spec.target_path:
        raise ConfigError(KEY, spec.target_path, "target=file needs the path of a file, a directory or a glob "
                                                 "of files to read: set target.path=...")
    raw = os.path.expanduser(str(spec.target_path))
    if os.path.lexists(raw) or not any(c in raw for c in GLOB_CHARS):
        path = Path(raw).absolute()
        if not path.exists():
            raise ConfigError(KEY, str(path), "does not exist: point target.path at an existing file, directory "
                                              "or glob")
        mode = path.stat().st_mode
        if stat.S_ISBLK(mode):
            raise _block_device(path)
        if stat.S_ISDIR(mode):
            try:
                entries = sorted(path.iterdir())
            except OSError as e:
                raise ConfigError(KEY, str(path), f"cannot be listed ({e.strerror}): give iosweep read access to "
                                                  "it or choose other files") from None
            if not entries:
                raise ConfigError(KEY, str(path), "is an empty directory: point target.path at files to read")
            candidates = [p for p in entries if p.is_file()]  # its regular files (symlinks followed), no subdirs
            if not candidates:
                raise ConfigError(KEY, str(path), "holds no regular files (target=file does not recurse): point "
                                                  "target.path at a directory of files, or a glob such as dir/**/*")
        elif stat.S_ISREG(mode):
            candidates = [path]
        else:
            raise ConfigError(KEY, str(path), "is neither a regular file nor a directory: point target.path at "
                                              "files to read")
    else:
        matches = sorted(Path(p).absolute() for p in glob.glob(raw, recursive=True))
        if not matches:
            raise ConfigError(KEY, raw, "matches nothing: point target.path at existing files")
        for p in matches:
            if p.exists() and stat.S_ISBLK(p.stat().st_mode):
                raise _block_device(p)
        candidates = [p for p in matches if p.is_file()]
        if not candidates:
            raise ConfigError(KEY, raw, "matches no regular files: point target.path at files to read")
    files = []
    for p in candidates:
        _readable(p)
        files.append((p, p.stat().st_size))
    return files


def share_of(spec: Spec, files: list[tuple[Path, int]]) -> int:
    """Bytes each writer reads: the files' whole blocks, capped by size_bytes, split evenly."""
    bs = spec.block_size
    in_files = sum(size // bs for _, size in files)
    blocks = in_files if spec.size_bytes is None else min(in_files, spec.size_bytes // bs)
    if blocks < spec.writers:
        need = f"{blocks} whole block(s) of block_kb={bs >> 10} but writers={spec.writers} need at least one each"
        if blocks < in_files:  # the cap, not the files, is too small
            raise ConfigError("target.size_mb", spec.size_bytes / (1 << 20), f"leaves {need}: raise it")
        where = str(files[0][0]) if len(files) == 1 else f"{spec.target_path} ({len(files)} files)"
        total = sum(size for _, size in files)
        raise ConfigError(KEY, where, f"holds {total} bytes = {need}: lower block_kb or writers, or choose "
                                      "larger files")
    return blocks // spec.writers * bs


def resolve(spec: Spec) -> Spec:
    """The spec with size_bytes = the bytes the writers will read (a whole number of blocks each)."""
    files = scan(spec)
    if spec.pattern == "replay":  # the trace's offsets are in one file, and must lie inside it
        from ..replay import check_file

        if len(files) != 1:
            raise ConfigError(KEY, spec.target_path, f"names {len(files)} files and pattern=replay replays the "
                                                     "trace of one: point target.path at that file")
        check_file(spec, str(files[0][0]), files[0][1])
        return spec
    if spec.pattern == "model_load":  # model.py parsed the file's header and checked its tensors lie inside it
        if len(files) != 1:
            raise ConfigError(KEY, spec.target_path, f"names {len(files)} files and pattern=model_load loads one "
                                                     "model file: point target.path at it")
        return spec
    return dataclasses.replace(spec, size_bytes=share_of(spec, files) * spec.writers)


def regions(files: list[tuple[Path, int]], block: int, share: int, writers: int) -> list[list[tuple[Path, int, int]]]:
    """Each worker's extents [(path, base, bytes)]: the files' whole blocks laid end to end, cut in shares."""
    out: list[list[tuple[Path, int, int]]] = [[] for _ in range(writers)]
    w, room = 0, share
    for path, size in files:
        usable, pos = size - size % block, 0
        while pos < usable and w < writers:
            n = min(room, usable - pos)
            out[w].append((path, pos, n))
            pos, room = pos + n, room - n
            if room == 0:
                w, room = w + 1, share
    return out


@dataclass
class FilePlacement(Placement):
    sources: list[Path] = field(default_factory=list)  # the files read (never written, never removed)
    regions: list[list[tuple[Path, int, int]]] = field(default_factory=list)  # per worker
    user_path: str = ""

    def worker_paths(self, writers: int) -> list[Path]:
        """The files to prepare (evict): every file read. Workers read worker_extents()."""
        return list(self.sources)

    def worker_extents(self, worker: int, file_size: int) -> list[tuple[Path, int, int]]:
        return self.regions[worker]

    def info(self) -> dict:
        return dict(super().info(), target_path=self.user_path)


@register
class FileTarget:
    name = "file"
    resolve = staticmethod(resolve)

    def __init__(self, spec: Spec, does_io: bool = True):
        self.spec = spec
        self.does_io = does_io

    def prepare(self) -> Placement:
        spec = self.spec
        files = scan(spec)
        mount = mount_of(files[0][0])
        placement = FilePlacement(None, mount, block_device(mount.dev), "none", user_path=str(spec.target_path),
                                  shared_path=files[0][0] if len(files) == 1 else None)
        if not self.does_io:  # the null engine: checked, nothing opened
            return placement
        share = spec.file_size
        traced = spec.pattern in TRACED  # the trace's offsets are the file's own
        placement.regions = regions(files, spec.block_size, share, spec.writers) if not traced \
            else [[(files[0][0], 0, files[0][1] if spec.pattern == "model_load" else share)]]
        placement.sources = list(dict.fromkeys(p for extents in placement.regions for p, _, _ in extents))
        total, read = sum(size for _, size in files), share * spec.writers
        if total > read and not traced:  # a trace reads what it reads
            tails = sum(size % spec.block_size for _, size in files)
            why = ([f"{tails} in file tails shorter than block_kb={spec.block_size >> 10}"] if tails else []) + \
                ([f"{total - read - tails} beyond the cap or the even split over writers={spec.writers}"]
                 if total - read - tails else [])
            placement.warnings.append(f"target=file: {total - read} of {total} bytes are not read "
                                      f"({'; '.join(why)})")
        firsts = {}  # the first file on each filesystem (st_dev): one mountinfo look-up each, not one per file
        for p in placement.sources:
            firsts.setdefault(p.stat().st_dev, p)
        if len(firsts) > 1:
            placement.warnings.append(f"target=file: the files are on {len(firsts)} filesystems; device counters "
                                      f"are those of {mount.mountpoint} only")
        placement.io_mode = self._io_mode(placement, list(firsts.values()))
        return placement

    def _io_mode(self, placement: FilePlacement, firsts: list[Path]) -> str:
        if not self.spec.direct:
            return "buffered"
        # one read probe per filesystem: O_DIRECT acceptance, nothing written
        probed = [(mount_of(p), probe_direct_read(p)) for p in firsts]
        refused = [(m, why) for m, why in probed if why]
        if refused:
            mount, why = refused[0]
            if not self.spec.direct_fallback:
                raise ConfigError("direct", True, f"{mount.fs_type} at {mount.mountpoint} refuses O_DIRECT ({why}): "
                                                  "set direct=false, or direct_fallback=true to run buffered")
            placement.warnings.append(f"O_DIRECT refused by {mount.fs_type} ({why}); ran buffered "
                                      "(direct_fallback=true)")
            return "buffered"
        ram = all(m.fs_type in ("tmpfs", "ramfs") for m, _ in probed)
        return "direct-ignored" if ram else "direct"

    def create_files(self, placement: Placement) -> None:
        """Nothing to create: the files are the user's."""

    def cleanup(self, placement: Placement) -> None:
        """Nothing to remove: placement.files is empty, the files were never iosweep's."""


def probe_direct_read(path: Path) -> str | None:
    """None if an aligned O_DIRECT read of `path` works, else the kernel's reason."""
    buf = mmap.mmap(-1, 4096)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [buf], 0)
        finally:
            os.close(fd)
        return None
    except OSError as e:
        return e.strerror
    finally:
        buf.close()
