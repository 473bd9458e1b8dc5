"""Per-iteration overlays left behind by a dead agent (crash, SIGKILL) are unmounted and removed
by the next agent's first iteration; those of live agents are left alone."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from runner_agent.execute import JobControl, run_plan
from runner_agent.execute.overlay import _mount_overlay
from tests.execute.jobs import plan_for


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


async def test_overlay_left_by_a_dead_agent_is_removed(busybox_rootfs: Path, tmp_path: Path) -> None:
    done = await trio.run_process(["/bin/sh", "-c", "echo $$"], capture_stdout=True)
    dead_pid = int(done.stdout)
    work = tmp_path / "work"
    stale = work / f"iter-{dead_pid}-crashed"
    for name in ("upper", "work", "merged"):
        (stale / name).mkdir(parents=True)
    _mount_overlay(busybox_rootfs, stale / "upper", stale / "work", stale / "merged")
    (stale / "merged" / "left.txt").write_text("x")
    stale_probe = work / f"probe-{dead_pid}-crashed"
    stale_probe.mkdir()
    live = work / f"iter-{os.getpid()}-busy"
    live.mkdir()
    other = work / "notes"
    other.mkdir()

    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "echo hi")
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed"
    assert not _mounted(stale / "merged")
    assert sorted(p.name for p in work.iterdir()) == sorted([live.name, other.name])
    assert not (busybox_rootfs / "left.txt").exists()
