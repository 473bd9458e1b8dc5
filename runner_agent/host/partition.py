"""The cpuset scheduler partition for job cgroups (tuning): a cgroup directly under the cgroup v2
root holding the benchmark CPUs as an ``isolated`` partition, so the load balancer never pulls other
tasks onto them — the runtime counterpart of ``isolcpus=``. Every change goes through the
``Tuner``'s record, so it is undone on exit, after a crash, or by ``check --restore``."""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from runner_agent.host.cgroups import REQUIRED_CONTROLLERS
from runner_agent.host.cpulist import format_cpulist
from runner_agent.host.layout import CpuLayout
from runner_agent.host.tuning import CPUSET_PARTITION, Tuner

PARTITION_NAME = "runner-agent-jobs"
MODES = ("isolated", "root")


@frozen
class PartitionResult:
    """``level`` is "isolated", "root" or "member" (plain cgroup); ``path`` is the cgroup job
    cgroups go under, or None when no partition cgroup could be made."""

    level: str
    path: Path | None


def _mode_token(state: str) -> str:
    """``isolated invalid (reason)`` → ``isolated``; empty → ``member`` (the kernel default)."""
    words = state.split()
    return words[0] if words else "member"


def apply_cpuset_partition(
    tuner: Tuner, layout: CpuLayout, cgroup_root: Path, name: str = PARTITION_NAME
) -> PartitionResult:
    """Make ``<cgroup_root>/<name>`` a cpuset partition on the benchmark CPUs (best effort).

    Falls back isolated → root → member, verifying the kernel's read-back each time (a rejected
    partition reads ``<mode> invalid (...)``). What could not be done is in ``tuner.notes``.
    """
    if CPUSET_PARTITION in tuner.skip:
        tuner.note(CPUSET_PARTITION, "skipped", "--tune-skip")
        return PartitionResult("member", None)
    if not layout.has_isolation:
        tuner.note(CPUSET_PARTITION, "skipped", "no separate benchmark cores")
        return PartitionResult("member", None)
    controllers_file = cgroup_root / "cgroup.controllers"
    try:
        available = set(controllers_file.read_text().split())
    except OSError:
        tuner.note(CPUSET_PARTITION, "absent", f"no cgroup v2 root at {cgroup_root}")
        return PartitionResult("member", None)
    missing = [c for c in REQUIRED_CONTROLLERS if c not in available]
    if missing:
        tuner.note(CPUSET_PARTITION, "absent", f"cgroup v2 root lacks {', '.join(missing)}")
        return PartitionResult("member", None)
    subtree = cgroup_root / "cgroup.subtree_control"
    try:
        enabled = set(subtree.read_text().split())
    except OSError as error:
        tuner.note(CPUSET_PARTITION, "failed", f"cannot read {subtree}: {error}")
        return PartitionResult("member", None)
    for controller in REQUIRED_CONTROLLERS:
        if controller not in enabled and not tuner.record_write(
            CPUSET_PARTITION, subtree, f"-{controller}", f"+{controller}"
        ):
            return PartitionResult("member", None)
    path = cgroup_root / name
    if not path.exists() and not tuner.record_mkdir(CPUSET_PARTITION, path):
        return PartitionResult("member", None)
    try:
        mems = (cgroup_root / "cpuset.mems.effective").read_text().strip()
    except OSError:
        mems = ""
    if not mems:
        tuner.note(CPUSET_PARTITION, "failed", f"cannot read {cgroup_root}/cpuset.mems.effective")
        return PartitionResult("member", path)
    for file, value in (("cpuset.cpus", format_cpulist(layout.benchmark)), ("cpuset.mems", mems)):
        target = path / file
        try:
            current = target.read_text().strip() if target.exists() else ""
        except OSError as error:
            tuner.note(CPUSET_PARTITION, "failed", f"cannot read {target}: {error}")
            return PartitionResult("member", path)
        # an empty original is restored by writing a newline (clears the list)
        if current != value and not tuner.record_write(CPUSET_PARTITION, target, current or "\n", value):
            return PartitionResult("member", path)
    partition = path / "cpuset.cpus.partition"
    try:
        original = _mode_token(partition.read_text()) if partition.exists() else "member"
    except OSError as error:
        tuner.note(CPUSET_PARTITION, "absent", f"cpuset partitions unavailable: {error}")
        return PartitionResult("member", path)
    for mode in MODES:
        if not tuner.record_write(CPUSET_PARTITION, partition, original, mode):
            continue
        state = partition.read_text().strip()
        if state == mode:
            return PartitionResult(mode, path)
        tuner.note(CPUSET_PARTITION, "failed", f"kernel rejected partition mode {mode!r}: {state}")
    return PartitionResult("member", path)
