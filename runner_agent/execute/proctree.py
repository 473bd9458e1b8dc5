"""The benchmark's process tree, read from ``/proc``, and the means to end all of it.

A tree is the iteration's root process, everything descending from it, and (in host mode, where
the agent is a child subreaper) orphans the agent adopted that started after the root: that is
how a ``setsid`` + double-fork escapee is still found and killed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Iterable

from attrs import frozen

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_subreaper = False


@frozen
class ProcInfo:
    """One ``/proc/<pid>/stat`` line, the fields we use."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int


def read_stat(pid: int) -> ProcInfo | None:
    """The process's stat fields, or ``None`` if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not raw:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    return ProcInfo(pid, int(rest[1]), int(rest[2]), int(rest[3]), rest[0].decode(), int(rest[19]))


def scan() -> dict[int, ProcInfo]:
    """All processes visible in ``/proc``."""
    procs: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_stat(int(name))
            if info is not None:
                procs[info.pid] = info
    return procs


def enable_subreaper() -> None:
    """Make the agent adopt orphaned descendants (``PR_SET_CHILD_SUBREAPER``); idempotent."""
    global _subreaper
    if _subreaper:
        return
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(err)}")
    _subreaper = True


def tree(
    root: int, root_start: int, procs: dict[int, ProcInfo], *, adopted: bool, known: Iterable[int] = ()
) -> set[int]:
    """``root`` and its descendants; with ``adopted``, also the agent's children that are not in
    ``known`` (processes the agent spawned itself) and started no earlier than the root."""
    me = os.getpid()
    members = {root} if root in procs else set()
    if adopted:
        skip = set(known)
        members |= {
            p.pid for p in procs.values()
            if p.ppid == me and p.pid not in skip and p.pid != root and p.start >= root_start
        }
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    stack = list(members)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in members:
                members.add(child)
                stack.append(child)
    return members


def chain(root: int, procs: dict[int, ProcInfo], depth: int) -> set[int]:
    """``root`` and its descendants down to ``depth`` levels below it (empty when ``depth`` < 0)."""
    if depth < 0:
        return set()
    level = {root}
    found = set(level)
    for _ in range(depth):
        level = {p.pid for p in procs.values() if p.ppid in level}
        found |= level
    return found


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid, ignoring the ones already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap_adopted(pids: Iterable[int]) -> None:
    """Collect exited adopted children (zombies) so they vanish from ``/proc``."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
