"""Atomic file replacement: the one place that writes a temp file and renames it over a target.

A crash or error at any point leaves either the old file or the new one, never a torn one. The temp
file is created ``0600`` (never readable by others, even briefly) in the target's own directory (so
the rename is atomic), set to the requested ``mode`` before any data is written, and removed again
if anything fails before it is published. ``durable=True`` also fsyncs the file before the rename
and the directory after it, so the new contents survive a power cut once this returns.

`sync_filesystem` flushes a whole tree at once (``syncfs``), for publishing directories.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Names of temp files made by :func:`atomic_write` (unless ``tmp=`` is given) start with this;
a file with this prefix is an unfinished write a crash left behind and can be deleted."""


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    durable: bool = True,
    replace: Callable[[str, str], None] = os.replace,
    exclusive: bool = False,
    tmp: Path | None = None,
) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) atomically, with permissions ``mode``.

    ``replace`` is the publishing step (``os.replace``), injectable so tests can fail or crash
    between write and rename. ``exclusive=True`` publishes with a hard link instead, which raises
    :class:`FileExistsError` (and leaves the existing file alone) if ``path`` already exists.
    ``tmp`` names the temp file explicitly (it must not exist and must be on the same file system),
    for callers that keep work in progress in a folder of their own. The parent directory must
    exist. Errors propagate unchanged (as :class:`OSError`), after the temp file is removed.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if tmp is None:
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    else:
        tmp_name = str(tmp)
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    published = False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(payload)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if exclusive:
            os.link(tmp_name, path)  # the temp name is removed below
        else:
            replace(tmp_name, str(path))
            published = True
    finally:
        if not published:
            _discard(tmp_name)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries (creations, renames, deletions) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page and inode of the file system holding ``path`` (``syncfs(2)``: one
    call for a whole unpacked tree instead of an fsync per file); ``sync()`` where libc lacks it."""
    libc_name = ctypes.util.find_library("c")
    syncfs = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def remove_durably(path: Path) -> bool:
    """Delete ``path`` and fsync its directory. Returns False (and does nothing) if it was absent."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def _discard(tmp_name: str) -> None:
    try:
        os.unlink(tmp_name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove temporary file %s: %s", tmp_name, exc)
