"""Per-job cgroup v2 groups (cpuset, memory limit, swap off, pids limit, kill, usage stats) under a
parent the agent owns, and the clean fallback when cgroup v2 is missing or not delegated."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
from pathlib import Path

from attrs import frozen

from runner_agent.host.cpulist import format_cpulist

log = logging.getLogger(__name__)

REQUIRED_CONTROLLERS = ("cpuset", "memory", "pids")
DEFAULT_PIDS_MAX = 4096
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class CgroupError(OSError):
    """A cgroup operation failed; the message names the file and what was being done."""


@frozen
class CgroupStats:
    """Usage read from a job's cgroup: CPU time (µs) and peak memory (bytes, None before 5.19)."""

    cpu_usage_usec: int
    memory_peak: int | None


@frozen
class CgroupSupport:
    """Whether per-job cgroups can be used here and, if not, why (one readable sentence)."""

    available: bool
    parent: Path | None
    reason: str | None = None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise CgroupError(error.errno, f"cannot read {path}: {error.strerror}") from error


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as error:
        raise CgroupError(
            error.errno, f"cannot write {value!r} to {path}: {error.strerror}"
        ) from error


def own_cgroup_path(proc_root: Path, pid: int | str = "self") -> str | None:
    """The process's cgroup v2 path (the ``0::/path`` line of ``/proc/<pid>/cgroup``)."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def probe_cgroup_v2(cgroup_root: Path, proc_root: Path) -> CgroupSupport:
    """Decide whether per-job cgroup v2 groups can be made, without changing anything."""
    controllers_file = cgroup_root / "cgroup.controllers"
    if not controllers_file.exists():
        unified = cgroup_root / "unified" / "cgroup.controllers"
        if unified.exists():
            unified_have = unified.read_text().split()
            return CgroupSupport(
                False,
                None,
                f"hybrid cgroup layout: cgroup v2 at {unified.parent} has controllers "
                f"{' '.join(unified_have) or '(none)'}, the rest are on v1; per-job cgroups need "
                f"{', '.join(REQUIRED_CONTROLLERS)} on v2 (boot with "
                "systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all)",
            )
        return CgroupSupport(False, None, f"cgroup v2 is not mounted at {cgroup_root}")
    own = own_cgroup_path(proc_root)
    if own is None:
        return CgroupSupport(
            False, None, f"{proc_root}/self/cgroup has no cgroup v2 entry ('0::/path')"
        )
    return probe_parent(cgroup_root / own.lstrip("/"))


def probe_parent(parent: Path) -> CgroupSupport:
    """Whether job cgroups can be made under ``parent`` (controllers present, writable)."""
    try:
        have = set(_read(parent / "cgroup.controllers").split())
    except CgroupError as error:
        return CgroupSupport(False, None, str(error))
    missing = [c for c in REQUIRED_CONTROLLERS if c not in have]
    if missing:
        return CgroupSupport(
            False,
            None,
            f"cgroup {parent} lacks controller(s) {', '.join(missing)} "
            "(enable them in the parent's cgroup.subtree_control, or Delegate=yes in the unit)",
        )
    if not os.access(parent, os.W_OK) or not os.access(parent / "cgroup.subtree_control", os.W_OK):
        return CgroupSupport(
            False,
            None,
            f"cgroup {parent} is not delegated to us (not writable); run under a unit "
            "with Delegate=yes or as root",
        )
    return CgroupSupport(True, parent)


class JobCgroup:
    """One job's cgroup: the benchmark joins ``path`` before exec; ``kill`` is the last kill step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def kill(self) -> None:
        """Kill every process in the group (``cgroup.kill``; SIGKILL each pid on kernels < 5.14)."""
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            _write(kill_file, "1")
            return
        for line in _read(self.path / "cgroup.procs").split():
            try:
                os.kill(int(line), signal.SIGKILL)
            except ProcessLookupError:
                continue

    def populated(self) -> bool:
        """Whether any process is still in the group (``cgroup.events``)."""
        for line in _read(self.path / "cgroup.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() == "1"
        raise CgroupError(errno.EINVAL, f"{self.path}/cgroup.events has no 'populated' line")

    def stats(self) -> CgroupStats:
        """CPU time used and peak memory of everything that ran in the group."""
        usage: int | None = None
        for line in _read(self.path / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                usage = int(value)
        if usage is None:
            raise CgroupError(errno.EINVAL, f"{self.path}/cpu.stat has no usage_usec line")
        peak_file = self.path / "memory.peak"
        peak = int(_read(peak_file).strip()) if peak_file.exists() else None
        return CgroupStats(usage, peak)

    def remove(self) -> None:
        """Remove the (empty) group; a missing group is fine, a busy one raises ``CgroupError``."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise CgroupError(
                error.errno, f"cannot remove cgroup {self.path}: {error.strerror}"
            ) from error

    def __repr__(self) -> str:
        return f"JobCgroup({str(self.path)!r})"


class JobCgroupManager:
    """Makes one cgroup per job under the agent's own (delegated) cgroup v2.

    ``setup()`` moves the agent's processes into an ``agent`` leaf (cgroup v2 allows controllers
    only for groups without processes of their own) and enables cpuset, memory and pids for the
    children. With ``parent`` (e.g. the tuner's cpuset partition) job groups go there instead and
    the agent stays where it is. When cgroup v2 is unusable, ``create`` returns ``None`` and the reason is logged once:
    the caller falls back to CPU affinity and rlimits.
    """

    def __init__(
        self,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        proc_root: Path = Path("/proc"),
        *,
        pids_max: int = DEFAULT_PIDS_MAX,
        parent: Path | None = None,
    ) -> None:
        self.cgroup_root = cgroup_root
        self.parent = parent
        self.proc_root = proc_root
        self.pids_max = pids_max
        self._support: CgroupSupport | None = None
        self._said_fallback = False
        self._said_swap = False

    @property
    def support(self) -> CgroupSupport:
        if self._support is None:
            if self.parent is not None:
                self._support = probe_parent(self.parent)
            else:
                self._support = probe_cgroup_v2(self.cgroup_root, self.proc_root)
        return self._support

    @property
    def available(self) -> bool:
        return self.support.available

    def setup(self) -> CgroupSupport:
        """Prepare the parent (once); on failure, switch to the fallback with the reason."""
        support = self.support
        if not support.available or support.parent is None:
            self._say_fallback()
            return support
        parent = support.parent
        try:
            procs = _read(parent / "cgroup.procs").split() if self.parent is None else []
            if procs and parent != self.cgroup_root:
                leaf = parent / "agent"
                leaf.mkdir(exist_ok=True)
                for pid in procs:
                    try:
                        _write(leaf / "cgroup.procs", pid)
                    except CgroupError as error:
                        if error.errno != errno.ESRCH:
                            raise
            _write(
                parent / "cgroup.subtree_control",
                " ".join(f"+{c}" for c in REQUIRED_CONTROLLERS),
            )
        except (CgroupError, OSError) as error:
            self._support = CgroupSupport(False, None, f"cannot prepare {parent}: {error}")
            self._say_fallback()
        return self.support

    def _say_fallback(self) -> None:
        if not self._said_fallback:
            self._said_fallback = True
            log.warning(
                "per-job cgroups unavailable, falling back to CPU affinity and rlimits: %s",
                self.support.reason,
            )

    def create(self, job_id: str, cpus: frozenset[int] | None, memory: int | None) -> JobCgroup | None:
        """A fresh cgroup for ``job_id`` limited to ``cpus``/``memory`` (swap off, pids capped).

        Returns ``None`` when cgroups are unavailable (logged once). A leftover group of the same
        name (from a crash) is emptied and reused.
        """
        if not _JOB_NAME.fullmatch(job_id):
            raise ValueError(f"job id {job_id!r} is not usable as a cgroup name")
        if memory is not None and memory < 1:
            raise ValueError(f"memory limit must be positive, got {memory}")
        if self._support is None:
            self.setup()
        support = self.support
        if not support.available or support.parent is None:
            self._say_fallback()
            return None
        path = support.parent / f"job-{job_id}"
        try:
            path.mkdir()
        except FileExistsError:
            JobCgroup(path).kill()
        except OSError as error:
            raise CgroupError(error.errno, f"cannot create cgroup {path}: {error.strerror}") from error
        if cpus:
            _write(path / "cpuset.cpus", format_cpulist(cpus))
        _write(path / "memory.max", str(memory) if memory is not None else "max")
        try:
            _write(path / "memory.swap.max", "0")
        except CgroupError as error:
            if not self._said_swap:
                self._said_swap = True
                log.warning("swap of jobs is not limited (swap accounting is off): %s", error)
        _write(path / "pids.max", str(self.pids_max))
        return JobCgroup(path)
