"""The job's deadline covers the whole job: counted from the job's arrival (when ``running`` is
sent), the image pull included, the iterations getting only what is left. Real registry behind
the stalling fault proxy, real bwrap, real clock (a MockClock would jump over real I/O)."""

from __future__ import annotations

import os
from pathlib import Path
from uuid import uuid4

import trio

from runner_agent import channel as ch
from runner_agent.config import load_config
from runner_agent.execute import (
    ExecOptions,
    JobControl,
    JobDeadline,
    execute_job,
    run_plan,
    timeout_error,
)
from runner_agent.jobrunner import OciJobRunner, image_source
from runner_agent.oci.cache import ImageCache
from runner_agent.protocol import ClaimedJob, Failed
from tests.agent.conftest import make_agent
from tests.execute.jobs import make_job, plan_for, processes_with
from tests.oci.faultproxy import run_fault_proxy
from tests.support.images import push_busybox
from tests.support.registry import RegistryServer


async def _job_behind(registry_url: str, registry: RegistryServer, tmp_path: Path, job_timeout: int) -> ClaimedJob:
    """A job whose image (pushed to ``registry`` under a fresh project) is pulled via ``registry_url``."""
    project = str(uuid4())
    img = await push_busybox(registry.url, project, tmp_path / "image")
    return make_job({"registry": registry_url, "project": project, "digest": img.digest,
                     "timeout": job_timeout, "entrypoint": ["/bin/sh", "-c"], "cmd": ["echo never"]})


def _no_rootfs(cache: ImageCache) -> bool:
    rootfs = cache.root / "rootfs"
    return not rootfs.exists() or list(rootfs.iterdir()) == []


async def test_a_pull_slower_than_the_timeout_fails_the_job_with_the_timeout_error(
    registry: RegistryServer, tmp_path: Path
) -> None:
    with run_fault_proxy(registry.url) as proxy:
        with trio.fail_after(30):
            job = await _job_behind(proxy.url, registry, tmp_path, job_timeout=1)
        proxy.faults.stall_blobs = True  # every blob body stops halfway (for 30 s)
        cache = ImageCache(tmp_path / "cache")
        with trio.fail_after(20):
            outcome = await execute_job(
                job, image_source(job), cache, ExecOptions(work_dir=tmp_path / "work"), JobControl()
            )
        assert proxy.faults.stalled.is_set()
        assert outcome.status == "failed" and outcome.results == ()
        assert outcome.error == timeout_error(1)
        assert _no_rootfs(cache)


async def test_the_agent_starts_the_deadline_at_hand_off_and_a_stalled_pull_times_out(
    registry: RegistryServer, tmp_path: Path
) -> None:
    config = load_config({"host": "http://127.0.0.1:9", "runner": "r", "key": "bencher_runner_" + "a" * 30,
                          "state_dir": tmp_path / "state", "cache_dir": tmp_path / "cache"},
                         {}, None, default_config_file=None)
    agent = make_agent(config, work_dir=tmp_path / "work")
    assert isinstance(agent.runner, OciJobRunner)
    with run_fault_proxy(registry.url) as proxy:
        with trio.fail_after(30):
            job = await _job_behind(proxy.url, registry, tmp_path, job_timeout=1)
        proxy.faults.stall_blobs = True
        now = trio.current_time()
        agent._feed(ch.Started(now))
        agent._feed(ch.ConnectionOpened(now))
        before = trio.current_time()
        agent._feed(ch.FrameReceived(now, job))  # `running` goes out; the job is handed off
        control = agent._control
        assert control is not None and control.deadline is not None
        assert control.deadline.timeout == 1 and before <= control.deadline.started <= trio.current_time()
        queued = agent._jobs_receive.receive_nowait()
        with trio.fail_after(20):
            await agent._run_job(queued)
        assert proxy.faults.stalled.is_set()
    pending = agent.channel.pending[job.uuid].message
    assert isinstance(pending, Failed) and pending.error == timeout_error(1)
    assert pending.results == ()


async def test_iterations_that_start_late_get_only_the_time_left(busybox_rootfs: Path, tmp_path: Path) -> None:
    marker = f"95{os.getpid() % 10000:04d}4"
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", f"sleep {marker}",
                    {"timeout": 600, "iter": 3}, opts={"kill_grace": 0.2})
    # the job arrived 599.5 s ago (a slow pull): half a second is left of its 600 s
    control = JobControl(JobDeadline(600, trio.current_time() - 599.5))
    with trio.fail_after(20):  # the full 600 s would trip this
        outcome = await run_plan(plan, control)
    assert outcome.status == "failed" and outcome.error == timeout_error(600)
    assert outcome.results == () and len(outcome.metrics) == 1 and outcome.metrics[0].killed
    assert processes_with(marker) == []


async def test_no_iteration_starts_once_the_deadline_has_passed(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "echo never", {"timeout": 5})
    control = JobControl(JobDeadline(5, trio.current_time() - 6))
    with trio.fail_after(20):
        outcome = await run_plan(plan, control)
    assert outcome.status == "failed" and outcome.error == timeout_error(5)
    assert outcome.results == () and outcome.metrics == ()
    assert not any((tmp_path / "work").glob("*"))  # no iteration root was even made


async def test_start_deadline_keeps_the_drivers_deadline() -> None:
    given = JobDeadline(60, trio.current_time() - 10)
    control = JobControl(given)
    assert control.start_deadline(600) is given and given.at == given.started + 60
    fresh = JobControl()
    started = fresh.start_deadline(7)
    assert fresh.deadline is started and started.timeout == 7
    assert fresh.start_deadline(99) is started
