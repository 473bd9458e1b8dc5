"""A private, writable view of the shared read-only rootfs for one iteration (kernel overlayfs).

`scratch_root` mounts ``overlay(lower=rootfs, upper=<scratch>/upper)`` at ``<scratch>/merged``
and removes it (lazy unmount + delete) afterwards, so the benchmark may write anywhere in its
``/`` and ``file_paths`` can be read back, while the shared rootfs is never written. Needs the
right to mount (root, as a runner is); `overlay_available` tells whether it works here.

Scratch directories are named ``iter-<pid>-…`` (``probe-<pid>-…`` for the check): those of an
agent process that is gone (crash, SIGKILL) are unmounted and deleted by `sweep_stale`, which
the first overlay of each process runs on its work dir.
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

from runner_agent.execute import proctree

log = logging.getLogger(__name__)

MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_FORBIDDEN = (",", ":", "\\", "\n")
_PREFIXES = ("iter", "probe")
_swept: set[Path] = set()


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
        if work_dir not in _swept:
            _swept.add(work_dir)
            sweep_stale(work_dir)
        self.path = Path(tempfile.mkdtemp(prefix=f"iter-{os.getpid()}-", dir=work_dir))
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


def sweep_stale(work_dir: Path) -> list[Path]:
    """Unmount and delete the scratch directories under ``work_dir`` whose agent process is
    gone; returns them. A directory still mounted after the unmount is left (and logged)."""
    removed: list[Path] = []
    try:
        entries = sorted(work_dir.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        prefix, _, rest = entry.name.partition("-")
        pid_text = rest.split("-", 1)[0]
        if prefix not in _PREFIXES or not pid_text.isdigit():
            continue
        if proctree.read_stat(int(pid_text)) is not None:
            continue  # its agent still runs
        merged = entry / "merged"
        if os.path.ismount(merged):
            _umount(merged)
            if os.path.ismount(merged):
                log.warning("stale overlay %s is still mounted; not deleting it", merged)
                continue
        shutil.rmtree(entry, ignore_errors=True)
        log.warning("removed the per-iteration overlay %s left by agent process %s", entry, pid_text)
        removed.append(entry)
    return removed


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
        lower = Path(tempfile.mkdtemp(prefix=f"probe-{os.getpid()}-", dir=work_dir))
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
