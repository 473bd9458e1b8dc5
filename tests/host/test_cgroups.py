"""Per-job cgroup v2 manager on fake trees (it is just files), and the clean fallback here."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from runner_agent.host.cgroups import CgroupError, JobCgroup, JobCgroupManager, probe_cgroup_v2
from runner_agent.host.layout import choose_layout
from runner_agent.host.placement import JobPlacer
from tests.host.conftest import FakeHost

PARENT = "sys/fs/cgroup/runner.service"


def manager(host: FakeHost) -> JobCgroupManager:
    return JobCgroupManager(host.sys / "fs/cgroup", host.proc, pids_max=512)


def test_probe_accepts_delegated_parent(quiet_host: FakeHost) -> None:
    support = probe_cgroup_v2(quiet_host.sys / "fs/cgroup", quiet_host.proc)
    assert support.available and support.parent == quiet_host.sys / "fs/cgroup/runner.service"


def test_setup_moves_agent_to_leaf_and_enables_controllers(quiet_host: FakeHost) -> None:
    quiet_host.write(f"{PARENT}/cgroup.procs", "4242\n")
    support = manager(quiet_host).setup()
    assert support.available
    assert quiet_host.read(f"{PARENT}/agent/cgroup.procs") == "4242"
    assert quiet_host.read(f"{PARENT}/cgroup.subtree_control") == "+cpuset +memory +pids"


def test_create_writes_limits(quiet_host: FakeHost) -> None:
    group = manager(quiet_host).create("j1", frozenset({2, 3, 8, 10, 11}), 4 * 1024**3)
    assert group is not None
    assert group.path == quiet_host.sys / "fs/cgroup/runner.service/job-j1"
    assert quiet_host.read(f"{PARENT}/job-j1/cpuset.cpus") == "2-3,8,10-11"
    assert quiet_host.read(f"{PARENT}/job-j1/memory.max") == str(4 * 1024**3)
    assert quiet_host.read(f"{PARENT}/job-j1/memory.swap.max") == "0"
    assert quiet_host.read(f"{PARENT}/job-j1/pids.max") == "512"


def test_create_without_memory_limit(quiet_host: FakeHost) -> None:
    group = manager(quiet_host).create("j2", None, None)
    assert group is not None
    assert quiet_host.read(f"{PARENT}/job-j2/memory.max") == "max"
    assert not (group.path / "cpuset.cpus").exists()


def test_bad_job_id_and_memory_are_refused(quiet_host: FakeHost) -> None:
    with pytest.raises(ValueError, match="not usable as a cgroup name"):
        manager(quiet_host).create("../escape", None, None)
    with pytest.raises(ValueError, match="must be positive"):
        manager(quiet_host).create("j", None, 0)


def test_stats_kill_remove(quiet_host: FakeHost) -> None:
    group = manager(quiet_host).create("j3", frozenset({1}), 1024**3)
    assert group is not None
    quiet_host.write(f"{PARENT}/job-j3/cpu.stat", "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n")
    quiet_host.write(f"{PARENT}/job-j3/memory.peak", "7340032\n")
    quiet_host.write(f"{PARENT}/job-j3/cgroup.events", "populated 1\nfrozen 0\n")
    stats = group.stats()
    assert (stats.cpu_usage_usec, stats.memory_peak) == (123456, 7340032)
    assert group.populated()
    quiet_host.write(f"{PARENT}/job-j3/cgroup.kill", "")
    group.kill()
    assert quiet_host.read(f"{PARENT}/job-j3/cgroup.kill") == "1"
    with pytest.raises(CgroupError, match="cannot remove cgroup"):
        group.remove()  # a fake tree's control files are real files: not empty
    for f in group.path.iterdir():
        f.unlink()
    group.remove()
    assert not group.path.exists()
    group.remove()  # already gone is fine


def test_stats_without_memory_peak_and_bad_cpu_stat(quiet_host: FakeHost) -> None:
    group = JobCgroup(quiet_host.sys / "fs/cgroup/x")
    quiet_host.write("sys/fs/cgroup/x/cpu.stat", "usage_usec 5\n")
    assert group.stats().memory_peak is None
    quiet_host.write("sys/fs/cgroup/x/cpu.stat", "user_usec 5\n")
    with pytest.raises(CgroupError, match="no usage_usec"):
        group.stats()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h: (h.sys / "fs/cgroup/cgroup.controllers").unlink(), "not mounted"),
        (lambda h: h.write("proc/self/cgroup", "4:memory:/x\n"), "no cgroup v2 entry"),
        (lambda h: h.write(f"{PARENT}/cgroup.controllers", "cpu memory\n"), "lacks controller(s) cpuset, pids"),
    ],
)
def test_unavailable_reasons(quiet_host: FakeHost, change, reason: str) -> None:  # type: ignore[no-untyped-def]
    change(quiet_host)
    support = probe_cgroup_v2(quiet_host.sys / "fs/cgroup", quiet_host.proc)
    assert not support.available
    assert support.reason is not None and reason in support.reason


def test_fallback_on_this_machine_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    mgr = JobCgroupManager()
    if mgr.available:
        pytest.skip("this machine has delegated cgroup v2")
    caplog.set_level(logging.WARNING, logger="runner_agent.host.cgroups")
    assert mgr.create("a", frozenset({1}), 1024**2) is None
    assert mgr.create("b", frozenset({1}), 1024**2) is None
    warnings = [r for r in caplog.records if "falling back to CPU affinity and rlimits" in r.getMessage()]
    assert len(warnings) == 1
    assert mgr.support.reason and mgr.support.reason in warnings[0].getMessage()


async def test_placer_with_cgroup(quiet_host: FakeHost) -> None:
    placer = JobPlacer(choose_layout(frozenset({0, 1, 2, 3})), manager(quiet_host))
    placed = placer.place("j9", 2, 1024**3)
    assert placed.placement.cpus == frozenset({1, 2})
    assert placed.placement.cgroup_dir == quiet_host.sys / "fs/cgroup/runner.service/job-j9"
    assert placed.placement.memory_limit is None
    quiet_host.write(f"{PARENT}/job-j9/cpu.stat", "usage_usec 42\n")
    quiet_host.write(f"{PARENT}/job-j9/cgroup.kill", "")
    with trio.fail_after(5), pytest.raises(CgroupError):
        await placer.release(placed)  # fake control files make rmdir fail with ENOTEMPTY, not EBUSY
    assert quiet_host.read(f"{PARENT}/job-j9/cgroup.kill") == "1"


async def test_placer_fallback_puts_memory_in_rlimit(tmp_path: Path) -> None:
    mgr = JobCgroupManager(tmp_path / "nothing", tmp_path)
    placer = JobPlacer(choose_layout(frozenset({0, 1})), mgr)
    placed = placer.place("j", 1, 1024**3)
    assert placed.cgroup is None
    assert placed.placement.cgroup_dir is None and placed.placement.memory_limit == 1024**3
    assert placed.placement.cpus == frozenset({1})
    with trio.fail_after(5):
        assert await placer.release(placed) is None
