"""Local directories: a disk or NVMe filesystem (`local`) or RAM (`tmpfs`)."""
from __future__ import annotations

import errno
import json
import mmap
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..spec import Spec
from .base import Placement, block_device, mount_of, register

RAM_FS = ("tmpfs", "ramfs")
SPACE_MARGIN = 64 << 20  # leave the filesystem some room for metadata and for everyone else...
SPACE_MARGIN_SHARE = 20  # ...but on a small filesystem no more than 1/20 of it
# Every scratch dir holds this marker naming the process that made it, so that a later run on the
# same target dir can remove a scratch dir left by a process that was killed (kill -9, power loss
# of a VM...), and only then: its owner is gone, and it holds nothing but names iosweep gives.
OWNER_FILE = ".iosweep-owner"
PROBE_FILE = ".iosweep-direct-probe"
OUR_NAMES = re.compile(r"job\d+(\.\d+)?\.dat|" + re.escape(PROBE_FILE) + "|" + re.escape(OWNER_FILE))
OUR_DIRS = re.compile(r"md\d+")  # pattern=metadata: a directory per worker...
OUR_DIR_NAMES = re.compile(r"f\d+")  # ...holding only files named f<i>
INODE_MARGIN = 16  # the scratch dir, its owner marker, the O_DIRECT probe, and room for others


def _size_key(spec: Spec) -> tuple[str, object]:
    """The knob that sized the run's files, as the user wrote it: what a too-large size names."""
    if spec.pattern == "format_read":
        return "data.rows", spec.data.rows
    if spec.pattern == "replay":
        return "pattern.trace", spec.trace
    if spec.file_bytes is not None:  # files_per_writer x file_kb: the count, when there are many
        return ("files_per_writer", spec.files_per_writer) if spec.files_per_writer > 1 \
            else ("file_kb", spec.file_bytes >> 10)
    return "size_mb", spec.size_bytes >> 20


@register
class LocalTarget:
    name = "local"
    fs_types: tuple[str, ...] = ()  # any filesystem

    def __init__(self, spec: Spec, does_io: bool = True):
        self.spec = spec
        self.does_io = does_io

    def prepare(self) -> Placement:
        spec = self.spec
        root = Path(spec.target_dir).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise ConfigError("target.dir", str(root), "is not a directory: point target.dir at a directory")
        mount = mount_of(root)  # of the nearest existing parent: checked before anything is created
        if self.fs_types and mount.fs_type not in self.fs_types:
            raise ConfigError("target.dir", str(root),
                              f"is on {mount.fs_type}, not {'/'.join(self.fs_types)}: use target=local for it")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("target.dir", str(root), f"cannot be created ({e.strerror}): choose a writable directory") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise ConfigError("target.dir", str(root), "is not writable: choose a writable directory")
        mount = mount_of(root)
        placement = Placement(None, mount, block_device(mount.dev), "none")
        if not self.does_io:
            return placement
        need = spec.file_size * spec.writers
        usage = shutil.disk_usage(root)
        free = usage.free
        if need + min(SPACE_MARGIN, usage.total // SPACE_MARGIN_SHARE) > free:
            key, value = _size_key(spec)
            raise ConfigError(key, value, f"needs {need >> 20} MiB but {root} has {free >> 20} MiB free: "
                                          f"lower {key} or choose another target.dir")
        self._check_inodes(root)
        remove_stale_scratch(root)
        placement.files_per_writer = spec.files_per_writer
        placement.scratch = Path(tempfile.mkdtemp(prefix="iosweep-", dir=root))
        try:
            with open(placement.scratch / OWNER_FILE, "x") as f:
                json.dump(owner(os.getpid()), f)
            placement.io_mode = self._io_mode(placement)
        except BaseException:
            self.cleanup(placement)
            raise
        return placement

    def _io_mode(self, placement: Placement) -> str:
        spec = self.spec
        if not spec.direct:
            return "buffered"
        refused = probe_direct(placement.scratch)
        fs = placement.mount.fs_type
        if refused is None:
            return "direct-ignored" if fs in RAM_FS else "direct"
        if not spec.direct_fallback:
            raise ConfigError("direct", True, f"{fs} at {placement.mount.mountpoint} refuses O_DIRECT ({refused}): "
                                              "set direct=false, or direct_fallback=true to run buffered")
        placement.warnings.append(f"O_DIRECT refused by {fs} ({refused}); ran buffered (direct_fallback=true)")
        return "buffered"

    def _check_inodes(self, root: Path) -> None:
        """Refuse, before anything is created, a file count the filesystem's free inodes cannot hold."""
        spec = self.spec
        count = spec.writers * (spec.files_per_writer + (1 if spec.metadata else 0))  # metadata: + a dir each
        st = os.statvfs(root)
        if st.f_files and count + INODE_MARGIN > st.f_favail:  # f_files 0: no inode limit (btrfs...)
            raise ConfigError("files_per_writer", spec.files_per_writer,
                              f"needs {count} files (writers={spec.writers} x files_per_writer="
                              f"{spec.files_per_writer}) but the filesystem of {root} has {st.f_favail} free inodes: "
                              "lower files_per_writer or writers, or choose another target.dir")

    def create_files(self, placement: Placement) -> None:
        """Create every worker file here, under names iosweep owns; O_EXCL never clobbers.
        pattern=metadata: a directory per worker instead; its files are created inside the window."""
        for w in range(self.spec.writers):
            if self.spec.metadata:
                placement.worker_dir(w).mkdir()
                placement.dirs.append(placement.worker_dir(w))
                continue
            if w and self.spec.pattern == "append" and self.spec.append_shared_file:  # one log for all
                break
            for i in range(self.spec.files_per_writer):
                path = placement.worker_path(w, i)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                placement.files.append(path)

    def cleanup(self, placement: Placement) -> None:
        """Remove the files this run created and its scratch directory, nothing else."""
        for path in placement.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        placement.files.clear()
        for d in placement.dirs:  # pattern=metadata: the files an interrupted phase left, then the dir
            _remove_our_dir(d)
        placement.dirs.clear()
        if placement.scratch is not None:
            (placement.scratch / OWNER_FILE).unlink(missing_ok=True)
            try:
                placement.scratch.rmdir()  # only if empty: never removes what others put there
            except OSError:
                pass


@register
class TmpfsTarget(LocalTarget):
    name = "tmpfs"
    fs_types = RAM_FS


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid
    it names one process, even after the pid is reused. None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _machine() -> dict:
    """What makes a pid mean one process: the boot (a host sharing our name, or rebooted, has another
    boot_id) and the pid namespace (a container sharing our hostname has its own pids)."""
    def read(f, what):
        try:
            return f(what)
        except OSError:
            return ""

    return {"boot": read(lambda p: open(p).read().strip(), "/proc/sys/kernel/random/boot_id"),
            "pidns": read(os.readlink, "/proc/self/ns/pid")}


def owner(pid: int) -> dict:
    return {"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid), **_machine()}


def owner_is_dead(record) -> bool:
    """True only when the marker names a process of this machine and pid namespace that is gone: a marker
    of another host, boot or namespace (whose pids mean nothing here), or one that cannot be read as a
    marker, is not proof of anything. Markers without boot/pidns (older iosweep) go by the host alone."""
    if not isinstance(record, dict) or record.get("host") != socket.gethostname():
        return False
    here = _machine()
    if any(key in record and record[key] != here[key] for key in here):
        return False
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    now = owner(pid)
    return not (now["start"] is not None and now["start"] == record.get("start"))


def remove_stale_scratch(root: Path) -> list[Path]:
    """Remove the `iosweep-*` scratch dirs under root whose owner (per its marker) has died on this
    host, with only the files iosweep names in them. Returns the dirs removed."""
    removed = []
    for d in root.glob("iosweep-*"):
        try:
            if d.is_symlink() or not d.is_dir():
                continue
            record = json.loads((d / OWNER_FILE).read_text())
            if not owner_is_dead(record):
                continue  # still running, or made on another host or namespace sharing this dir
            for f in d.iterdir():
                if OUR_NAMES.fullmatch(f.name) and f.is_file() and not f.is_symlink() and f.name != OWNER_FILE:
                    f.unlink()
                elif OUR_DIRS.fullmatch(f.name) and f.is_dir() and not f.is_symlink():
                    _remove_our_dir(f)
            (d / OWNER_FILE).unlink()
            d.rmdir()  # fails if anything else is in there: then it stays, unmarked
            removed.append(d)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return removed


def _remove_our_dir(d: Path) -> None:
    """Remove the files named f<i> in a metadata worker's dir, then the dir if that emptied it."""
    try:
        with os.scandir(d) as entries:
            for e in entries:
                if OUR_DIR_NAMES.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                    os.unlink(e.path)
        d.rmdir()  # only if empty: never removes what others put there
    except OSError:
        pass


def probe_direct(directory: Path) -> str | None:
    """None if an aligned O_DIRECT write works in `directory`, else the kernel's reason."""
    path = directory / PROBE_FILE
    buf = mmap.mmap(-1, 4096)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        path.unlink(missing_ok=True)  # some kernels create the file before refusing the flag
        return e.strerror
    try:
        os.pwrite(fd, buf, 0)
        return None
    except OSError as e:
        return e.strerror
    finally:
        os.close(fd)
        path.unlink()
        buf.close()
