"""One benchmark process: gated spawn, placement, exit wait with resource usage, kill ladder.

The child starts as a tiny host ``/bin/sh`` gate in a new session (so its own process group)
that waits on its stdin pipe. While it waits, the agent moves it into the cgroup, sets its CPU
affinity and memory rlimit; then releases it and the gate ``exec``s the real command, which
inherits all of that — no ``preexec_fn``, no window where the benchmark runs unplaced.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio
from attrs import frozen

from runner_agent.errors import JobError
from runner_agent.execute import proctree

log = logging.getLogger(__name__)

GATE = 'read -r _ || exit 125; exec "$@" </dev/null'
_EXITED = re.compile(r"Command exited with non-zero status (\d+)")
_SIGNALED = re.compile(r"Command terminated by signal (\d+)")


def rss_probe() -> str | None:
    """A host ``busybox`` whose ``time`` applet reports the benchmark's own peak RSS, if any.

    Why: a process forked from the agent inherits the agent's RSS high-water mark at ``exec``
    (the kernel carries the old mm's peak into ``ru_maxrss``), so ``wait4`` on the direct child
    would never report less than the agent's own size. ``busybox time`` forks the benchmark from
    a small process and reports that child's peak.
    """
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("busybox")


PROBE_FORMAT = "%M %U %S"


def probe_prefix(busybox: str, fd: int) -> list[str]:
    """The argv prefix that runs a command under ``busybox time``, reporting into ``fd``."""
    return [busybox, "time", "-f", PROBE_FORMAT, "-o", f"/proc/self/fd/{fd}"]


@frozen
class Usage:
    """What ``busybox time`` said about the benchmark it ran (and its waited-for children)."""

    max_rss_kb: int
    user_s: float
    sys_s: float
    exit_code: int | None
    signal: int | None


def parse_probe(text: str) -> Usage | None:
    """``busybox time -f "%M %U %S"`` output → `Usage`; ``None`` if it is incomplete."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    fields = lines[-1].split()
    try:
        rss, user, sys_ = int(fields[0]), float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        return None
    exit_code: int | None = 0
    sig: int | None = None
    for line in lines[:-1]:
        if m := _EXITED.search(line):
            exit_code = int(m.group(1))
        elif m := _SIGNALED.search(line):
            exit_code, sig = None, int(m.group(1))
    return Usage(rss, user, sys_, exit_code, sig)
KILL_ROUNDS = 100
_live_roots: set[int] = set()


class Child:
    """A spawned, not yet released benchmark process with its output pipes."""

    def __init__(
        self,
        build_argv: Callable[[int | None], Sequence[str]],
        env: Mapping[str, str],
        cwd: Path,
        *,
        adopt_orphans: bool,
        spare_depth: int,
        probe: bool,
        inherit_fds: Sequence[int] = (),
    ) -> None:
        """``build_argv(probe_fd)`` gives the command (``probe_fd`` is ``None`` without probe);
        processes up to ``spare_depth`` levels below the root (0: the root) are wrappers that
        get no SIGTERM (their death would end the benchmark without its grace period).
        ``env`` is the gate's whole process environment (the command inherits it);
        ``inherit_fds`` are passed to the command under their numbers, and closed here once it
        is spawned (or failed to)."""
        self.adopt_orphans = adopt_orphans
        self.spare_depth = spare_depth
        if adopt_orphans:
            proctree.enable_subreaper()
        try:
            gate_r, self._gate_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            self._probe_r = -1
            pass_fds: tuple[int, ...] = ()
            if probe:
                self._probe_r, probe_w = os.pipe()
                pass_fds = (probe_w,)
            command = list(build_argv(pass_fds[0] if pass_fds else None))
        except BaseException:
            for fd in inherit_fds:
                os.close(fd)
            raise
        pass_fds += tuple(inherit_fds)
        try:
            self._popen = subprocess.Popen(
                ["/bin/sh", "-c", GATE, "runner-agent-gate", *command],
                stdin=gate_r, stdout=out_w, stderr=err_w, env=dict(env), cwd=cwd,
                start_new_session=True, close_fds=True, pass_fds=pass_fds,
            )
        except OSError as exc:
            for fd in (self._gate_w, out_r, err_r, self._probe_r):
                if fd >= 0:
                    os.close(fd)
            raise JobError(f"Failed to spawn process: {exc}") from exc
        finally:
            for fd in (gate_r, out_w, err_w, *pass_fds):
                os.close(fd)
        self.pid = self._popen.pid
        _live_roots.add(self.pid)
        self._pidfd = os.pidfd_open(self.pid)
        info = proctree.read_stat(self.pid)
        self.start_ticks = info.start if info else 0
        for fd in (out_r, err_r):
            _grow_pipe(fd)
        self.stdout = trio.lowlevel.FdStream(out_r)
        self.stderr = trio.lowlevel.FdStream(err_r)
        self.started = 0.0
        self.exited = 0.0
        self.killed = False
        self.status: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self.usage: Usage | None = None
        self.cgroup: Path | None = None

    def place(self, cpus: frozenset[int], cgroup: Path | None, memory: int | None) -> None:
        """Apply placement to the gated process; raises `JobError` if the kernel refuses."""
        try:
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(f"{self.pid}\n")
                self.cgroup = cgroup
            if cpus:
                os.sched_setaffinity(self.pid, cpus)
            if memory is not None:
                resource.prlimit(self.pid, resource.RLIMIT_DATA, (memory, memory))
        except OSError as exc:
            self._abort()
            raise JobError(f"Execution error: could not place the benchmark process: {exc}") from exc

    def release(self) -> None:
        """Let the gate exec the benchmark."""
        self.started = time.perf_counter()
        try:
            os.write(self._gate_w, b"go\n")
        finally:
            os.close(self._gate_w)
            self._gate_w = -1

    def _abort(self) -> None:
        if self._gate_w >= 0:
            os.close(self._gate_w)
            self._gate_w = -1
        proctree.signal_group(self.pid, signal.SIGKILL)

    async def wait(self) -> None:
        """Until the root process has exited (it is then reaped with its resource usage)."""
        if self.status is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._reap()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        self.exited = time.perf_counter()
        self.status, self.rusage = status, usage
        self._popen.returncode = os.waitstatus_to_exitcode(status)
        _live_roots.discard(self.pid)
        if self._probe_r >= 0:
            os.set_blocking(self._probe_r, False)
            try:
                text = os.read(self._probe_r, 65536).decode(errors="replace")
            except BlockingIOError:
                text = ""
            self.usage = parse_probe(text)

    def members(self, *, spare_wrappers: bool = False) -> set[int]:
        """The live (non-zombie) processes of this benchmark's tree, root included; with
        ``spare_wrappers``, without the wrapper chain (see ``spare_depth``)."""
        procs = proctree.scan()
        pids = proctree.tree(
            self.pid, self.start_ticks, procs, adopted=self.adopt_orphans, known=_live_roots
        )
        if self.status is not None:
            pids.discard(self.pid)
        if spare_wrappers:
            pids -= proctree.chain(self.pid, procs, self.spare_depth)
        return {p for p in pids if procs[p].state not in ("Z", "X")}

    async def terminate(self, grace: float) -> None:
        """The kill ladder: SIGTERM to the group and tree, ``grace`` seconds for the root to exit,
        then SIGKILL (and ``cgroup.kill``) until no process of the tree is left."""
        if self._gate_w >= 0:
            self._abort()
        self.killed = True
        # the benchmark gets SIGTERM; the wrappers (probe, bwrap) do not: their death would
        # SIGKILL or orphan it before its grace period
        term = self.members(spare_wrappers=True)
        if self.spare_depth < 0:
            proctree.signal_group(self.pid, signal.SIGTERM)
        proctree.signal_all(term, signal.SIGTERM)
        with trio.move_on_after(grace):
            await self.wait()
        await self.kill_rest()
        self._cgroup_kill()  # last step: whatever is still in the cgroup, seen by us or not

    def _cgroup_kill(self) -> None:
        if self.cgroup is None:
            return
        try:
            (self.cgroup / "cgroup.kill").write_text("1\n")
        except OSError as exc:
            log.warning("cgroup.kill in %s failed: %s", self.cgroup, exc)

    async def kill_rest(self) -> None:
        """SIGKILL whatever is left of the tree (after the root exited, or after the grace)."""
        seen: set[int] = set()
        for round_ in range(KILL_ROUNDS):
            live = self.members()
            if not live:
                break
            seen |= live
            proctree.signal_group(self.pid, signal.SIGKILL)
            proctree.signal_all(live, signal.SIGKILL)
            self._cgroup_kill()
            proctree.reap_adopted(live - {self.pid})
            if self.status is None and self.pid in live:
                with trio.move_on_after(1.0):
                    await self.wait()
            await trio.sleep(0.0005 * (round_ + 1))
        else:
            log.error("benchmark processes survived %d SIGKILL rounds: %s", KILL_ROUNDS, live)
        await self.wait()
        if self.adopt_orphans:
            await _reap_adopted(seen - {self.pid})

    def close(self) -> None:
        """Release the process handle (the pipes belong to the caller's streams)."""
        if self._gate_w >= 0:
            self._abort()
        os.close(self._pidfd)
        if self._probe_r >= 0:
            os.close(self._probe_r)
            self._probe_r = -1


async def _reap_adopted(pids: set[int]) -> None:
    """Wait (briefly) for killed adopted orphans to exit, and collect their zombies."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            with trio.move_on_after(1.0):
                await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        proctree.reap_adopted((pid,))


PIPE_SIZE = 1 << 20


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer wake-ups while draining); keep the default if refused."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
