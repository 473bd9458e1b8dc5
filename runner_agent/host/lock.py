"""The host-wide tuning lock: an ``fcntl.flock`` on one file (default
``/run/runner-agent-tuning.lock``) so two agents never tune, or restore, the same machine at once.
The kernel drops the lock when the holder dies, so a crash never leaves it stuck."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

DEFAULT_LOCK_PATH = Path("/run/runner-agent-tuning.lock")


class TuningLockedError(RuntimeError):
    """Another process holds the tuning lock; the message names it and the lock file."""


class HostLock:
    """A non-blocking exclusive lock; ``acquire`` raises ``TuningLockedError`` when contended."""

    def __init__(self, path: Path = DEFAULT_LOCK_PATH) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise TuningLockedError(
                f"another runner-agent (pid {holder}) is tuning this host (lock {self.path} is held)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
