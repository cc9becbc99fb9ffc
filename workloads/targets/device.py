"""An existing file or block device that iosweep did not create: `target=device`.

Refused unless `target.allow_overwrite=true`, and then only after saying what will be
overwritten. Writers share the path, each in its own region (fio's offset_increment). Nothing is
ever created, truncated or removed here: the path is someone else's.

A block device is claimed with an exclusive open (O_EXCL) for the whole run: the kernel refuses it
(EBUSY) while the device is mounted or another program (LVM, md, another exclusive opener) holds
it, and while iosweep holds the claim nothing can mount it. Workers and fio open it without O_EXCL,
which the claim allows (a second O_EXCL open would itself get EBUSY).
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import weakref
from pathlib import Path

from ..errors import ConfigError
from ..spec import Spec
from .base import Placement, block_device, mount_of, register

log = logging.getLogger("workloads")


def claim(path: Path) -> int:
    """An exclusive open of a block device: the kernel refuses it while the device is in use."""
    try:
        return os.open(path, os.O_RDONLY | os.O_EXCL)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise ConfigError("target.path", str(path), "is in use (mounted or claimed by another program): "
                                                        "unmount it or stop that program, or choose another "
                                                        "device") from None
        raise ConfigError("target.path", str(path), f"cannot be opened ({e.strerror}): choose a device you "
                                                    "may write") from None


def capacity(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)  # works for block devices and regular files alike
    finally:
        os.close(fd)


@register
class DeviceTarget:
    name = "device"

    def __init__(self, spec: Spec, does_io: bool = True):
        self.spec = spec
        self.does_io = does_io
        self._release = None  # closes the exclusive claim on a block device

    def prepare(self) -> Placement:
        spec = self.spec
        if not spec.target_path:
            raise ConfigError("target.path", spec.target_path, "target=device needs the path of an existing file "
                                                               "or block device")
        path = Path(spec.target_path).expanduser().absolute()
        if not path.exists():
            raise ConfigError("target.path", str(path), "does not exist: target=device only uses an existing file "
                                                        "or block device (use target=local for a new one)")
        mode = path.stat().st_mode
        kind = "block device" if stat.S_ISBLK(mode) else "file" if stat.S_ISREG(mode) else None
        if kind is None:
            raise ConfigError("target.path", str(path), "is neither a regular file nor a block device")
        if kind == "block device" and self.does_io:
            # held until cleanup(), or until this target is dropped (cleanup is skipped with keep_files)
            self._release = weakref.finalize(self, os.close, claim(path))
        try:
            return self._placement(path, kind)
        except BaseException:
            self._release_claim()
            raise

    def _placement(self, path: Path, kind: str) -> Placement:
        spec = self.spec
        size = capacity(path)
        need = spec.file_size * spec.writers
        if need > size:
            raise ConfigError("size_mb", spec.size_bytes >> 20,
                              f"needs {need >> 20} MiB but {path} holds {size >> 20} MiB: lower size_mb")
        if not spec.allow_overwrite:
            raise ConfigError("target.allow_overwrite", False,
                              f"{path} is an existing {kind} iosweep did not create; its first {need >> 20} MiB "
                              "would be overwritten: set target.allow_overwrite=true if that is intended")
        device = path.resolve().name if kind == "block device" else block_device(mount_of(path).dev)
        placement = Placement(None, mount_of(path), device, "none", shared_path=path)
        if self.does_io:
            log.warning("target.allow_overwrite=true: overwriting %s (%s, %d MiB): bytes 0 to %d MiB",
                        path, kind, size >> 20, need >> 20)
            placement.io_mode = self._io_mode(path)
        return placement

    def _io_mode(self, path: Path) -> str:
        if not self.spec.direct:
            return "buffered"
        buf = mmap.mmap(-1, 4096)
        try:  # a read probe: O_DIRECT acceptance without writing anything
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                os.preadv(fd, [buf], 0)
            finally:
                os.close(fd)
        except OSError as e:
            if not self.spec.direct_fallback:
                raise ConfigError("direct", True, f"{path} refuses O_DIRECT ({e.strerror}): set direct=false, or "
                                                  "direct_fallback=true to run buffered") from None
            return "buffered"
        finally:
            buf.close()
        return "direct-ignored" if mount_of(path).fs_type in ("tmpfs", "ramfs") and path.is_file() else "direct"

    def create_files(self, placement: Placement) -> None:
        """Nothing to create: every worker uses the existing path at its own offset."""

    def cleanup(self, placement: Placement) -> None:
        """Nothing to remove: the path was never iosweep's. Release the claim on a block device."""
        self._release_claim()

    def _release_claim(self) -> None:
        if self._release is not None:
            self._release()  # closes once, however often it is called
            self._release = None
