"""Path resolution inside an unpacked image root, the way a chroot sees it.

Absolute symlink targets are re-rooted at the image root and ``..`` stops at the root, so no
lookup ever leaves it. Used to find the program (``PATH`` search inside the image) and to read
``file_paths`` after an iteration.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_SYMLINKS = 40


class RootPathError(OSError):
    """A path could not be resolved inside the image root (missing, loop, not UTF-8...)."""


def resolve_in_root(root: Path, path: str, *, max_symlinks: int = MAX_SYMLINKS) -> Path:
    """The host path of ``path`` (as seen from inside ``root``), all symlinks resolved inside it.

    Raises `RootPathError` if a component is missing or there are too many symlinks.
    """
    pending = [part for part in reversed(path.split("/")) if part]
    parts: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        candidate = root.joinpath(*parts, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            raise RootPathError(f"no such file or directory: {path}") from None
        except OSError as exc:
            raise RootPathError(f"cannot access {path}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > max_symlinks:
                raise RootPathError(f"too many levels of symbolic links: {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                parts = []
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        parts.append(part)
    return root.joinpath(*parts)


def find_program(root: Path, program: str, env: dict[str, str]) -> str:
    """The in-image path of ``program``: as given if it contains ``/``, else searched in PATH.

    Raises `RootPathError` with Bencher's wording when it is not found or not executable.
    """
    if "/" in program:
        candidates = [program if program.startswith("/") else "/" + program]
        search = None
    else:
        search = env.get("PATH", DEFAULT_PATH)
        candidates = [f"{d.rstrip('/') or ''}/{program}" for d in search.split(":") if d]
    for candidate in candidates:
        try:
            host = resolve_in_root(root, candidate)
        except RootPathError:
            continue
        if host.is_file() and os.access(host, os.X_OK):
            return candidate
    if search is None:
        raise RootPathError(f"Binary not found: {program}. no executable file at {program} in the image")
    raise RootPathError(
        f"Binary not found: {program}. not found in PATH directories within rootfs (PATH={search})"
    )
