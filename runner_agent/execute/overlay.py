"""A private, writable view of the shared read-only rootfs for one iteration (kernel overlayfs).

`scratch_root` mounts ``overlay(lower=rootfs, upper=<scratch>/upper)`` at ``<scratch>/merged``
and removes it (lazy unmount + delete) afterwards, so the benchmark may write anywhere in its
``/`` and ``file_paths`` can be read back, while the shared rootfs is never written. Needs the
right to mount (root, as a runner is); `overlay_available` tells whether it works here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_FORBIDDEN = (",", ":", "\\", "\n")


class OverlayError(OSError):
    """The overlay could not be mounted (no privilege, unsupported filesystem, odd path...)."""


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    for path in (lower, upper, work):
        if any(ch in str(path) for ch in _FORBIDDEN):
            raise OverlayError(f"path {str(path)!r} cannot be used in overlay options")
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, opts) != 0:
        err = ctypes.get_errno()
        raise OverlayError(err, f"mounting overlay of {lower} failed: {os.strerror(err)}")


def _umount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        log.warning("could not unmount %s: %s", target, os.strerror(err))


class Scratch:
    """One mounted per-iteration overlay: ``merged`` is the writable root."""

    def __init__(self, rootfs: Path, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="iter-", dir=work_dir))
        self.merged = self.path / "merged"
        self._mounted = False
        try:
            for name in ("upper", "work", "merged"):
                (self.path / name).mkdir()
            _mount_overlay(rootfs, self.path / "upper", self.path / "work", self.merged)
            self._mounted = True
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Unmount and delete everything (blocking: run it in a thread from async code)."""
        if self._mounted:
            _umount(self.merged)
            self._mounted = False
        shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def scratch_root(rootfs: Path, work_dir: Path) -> Iterator[Path]:
    """Yields the merged, writable root; everything is unmounted and deleted on exit."""
    scratch = Scratch(rootfs, work_dir)
    try:
        yield scratch.merged
    finally:
        scratch.remove()


def overlay_available(work_dir: Path) -> str | None:
    """``None`` when an overlay can be mounted under ``work_dir``, else the reason."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        lower = Path(tempfile.mkdtemp(prefix="probe-", dir=work_dir))
    except OSError as exc:
        return f"cannot create {work_dir}: {exc.strerror}"
    try:
        with scratch_root(lower, work_dir) as merged:
            (merged / "probe").write_bytes(b"")
        return None
    except OSError as exc:
        return str(exc)
    finally:
        shutil.rmtree(lower, ignore_errors=True)
