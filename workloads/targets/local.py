"""Local directories: a disk or NVMe filesystem (`local`) or RAM (`tmpfs`)."""
from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..spec import Spec
from .base import Placement, block_device, mount_of, register

RAM_FS = ("tmpfs", "ramfs")
SPACE_MARGIN = 64 << 20  # leave the filesystem some room for metadata and for everyone else...
SPACE_MARGIN_SHARE = 20  # ...but on a small filesystem no more than 1/20 of it


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
            raise ConfigError("size_mb", spec.size_bytes >> 20,
                              f"needs {need >> 20} MiB but {root} has {free >> 20} MiB free: "
                              "lower size_mb or choose another target.dir")
        placement.scratch = Path(tempfile.mkdtemp(prefix="iosweep-", dir=root))
        try:
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

    def create_files(self, placement: Placement) -> None:
        """Create every worker file here, under names iosweep owns; O_EXCL never clobbers."""
        for w in range(self.spec.writers):
            path = placement.worker_path(w)
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
        if placement.scratch is not None:
            try:
                placement.scratch.rmdir()  # only if empty: never removes what others put there
            except OSError:
                pass


@register
class TmpfsTarget(LocalTarget):
    name = "tmpfs"
    fs_types = RAM_FS


def probe_direct(directory: Path) -> str | None:
    """None if an aligned O_DIRECT write works in `directory`, else the kernel's reason."""
    path = directory / ".iosweep-direct-probe"
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
