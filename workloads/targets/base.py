"""The Target contract, its registry, and what the kernel says about where a path lives.

A target owns the place the bytes go: it checks the user's directory, creates a scratch
directory under a name iosweep owns, says whether O_DIRECT takes effect there, records every
file the run creates, and removes exactly those files afterwards.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

REGISTRY: dict[str, type] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def get(name: str):
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError("target", name, "choose one of " + ", ".join(sorted(REGISTRY))) from None


@dataclass
class Mount:
    mountpoint: str
    fs_type: str
    source: str
    options: str
    dev: str  # major:minor


def mount_of(path: str | os.PathLike) -> Mount:
    """The mount holding `path` (longest mount-point prefix in /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            mp = parts[4].replace("\\040", " ")
            if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) >= len(best.mountpoint)):
                best = Mount(mp, rparts[0], rparts[1] if len(rparts) > 1 else "", parts[5], parts[2])
    return best or Mount("/", "unknown", "", "", "0:0")


def block_device(dev: str) -> str | None:
    """Name of the whole-disk block device behind major:minor (vda for vda1), as psutil names it."""
    sys_path = Path("/sys/dev/block") / dev
    if not sys_path.exists():
        return None
    real = sys_path.resolve()
    if (real / "partition").exists():
        real = real.parent
    return real.name


@dataclass
class Placement:
    """Where one run puts its files and what it learned about that place."""

    scratch: Path | None
    mount: Mount
    device: str | None
    io_mode: str
    files: list[Path] = field(default_factory=list)  # what this run created, and will remove
    warnings: list[str] = field(default_factory=list)
    shared_path: Path | None = None  # target=device: one existing path, a region per worker
    files_per_writer: int = 1  # files each worker owns (fio nrfiles): its extents, one per file
    dirs: list[Path] = field(default_factory=list)  # pattern=metadata: a directory per worker, made by this run
    object_prefix: str | None = None  # target=s3: the run's own key prefix (iosweep-<pid>-<hex>/)
    extra_info: dict = field(default_factory=dict)  # what the target learnt (target=s3: endpoint, server, bucket)

    def worker_path(self, worker: int, index: int = 0) -> Path:
        """The worker's file `index` (of files_per_writer): fio's filename_format job$jobnum.dat, or
        job$jobnum.$filenum.dat with several files, names the same."""
        if self.shared_path is not None:
            return self.shared_path
        if self.files_per_writer > 1:
            return self.scratch / f"job{worker}.{index}.dat"
        return self.scratch / f"job{worker}.dat"

    def worker_dir(self, worker: int) -> Path:
        """pattern=metadata: where worker `worker` creates, stats and removes its files (mdtest's per-rank dir)."""
        return self.scratch / f"md{worker}"

    def worker_paths(self, writers: int) -> list[Path]:
        """The file each worker uses: the run's own files, or the shared existing path."""
        if self.shared_path is not None:
            return [self.shared_path] * writers
        return list(self.files)

    def offset(self, worker: int, file_size: int) -> int:
        """Where the worker's region starts in its file."""
        return worker * file_size if self.shared_path is not None else 0

    def worker_extents(self, worker: int, file_size: int) -> list[tuple[Path, int, int]]:
        """What the worker reads or writes, as [(path, where its part starts, bytes)]: its region of
        one file, or its files_per_writer files (file_size is the worker's total); target=file gives a
        worker's share of several files as several extents."""
        if self.shared_path is None and self.files_per_writer > 1:
            per_file = file_size // self.files_per_writer
            return [(self.worker_path(worker, i), 0, per_file) for i in range(self.files_per_writer)]
        return [(self.worker_path(worker), self.offset(worker, file_size), file_size)]

    def info(self) -> dict:
        return {"scratch_dir": str(self.scratch) if self.scratch else "", "fs_type": self.mount.fs_type,
                "mountpoint": self.mount.mountpoint, "mount_opts": self.mount.options,
                "device": self.device or "", "target_path": str(self.shared_path or ""), **self.extra_info}
