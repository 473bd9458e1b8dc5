"""The driver fed events directly (no server): job hand-off and clean-up, with the real job runner on a busybox image."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import attrs
import trio

from runner_agent import channel as ch
from runner_agent.agent import Agent
from runner_agent.config import Config, load_config
from runner_agent.devserver.jobs import default_spec
from runner_agent.execute import ExecOptions
from runner_agent.jobrunner import OciJobRunner, PreparedJob
from runner_agent.oci.cache import ImageCache
from runner_agent.outbox import Outbox
from runner_agent.protocol import Ack, ClaimedJob, Completed, Failed, decode_server
from tests.agent.conftest import job_config, make_agent
from tests.conftest import fixtures_dir


def _claimed(image: tuple[Path, str], script: str) -> ClaimedJob:
    base = decode_server((fixtures_dir() / "job_minimal.json").read_text())
    assert isinstance(base, ClaimedJob)
    return attrs.evolve(base, uuid=uuid4(), spec=default_spec(), config=job_config(image, script))


def _config(tmp_path: Path) -> Config:
    return load_config({"host": "http://127.0.0.1:9", "runner": "r", "key": "bencher_runner_" + "a" * 30,
                        "state_dir": tmp_path / "state", "cache_dir": tmp_path / "cache"},
                       {}, None, default_config_file=None)


async def test_abort_before_the_executor_picks_the_job_up_is_not_lost(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    # The connection drops after `job` arrived but before the job executor ran: the channel
    # aborts the job (the reply to `running` can never come). That abort must reach the job,
    # or it prepares, waits for a go that never comes, and the agent never asks for work again.
    agent = make_agent(_config(tmp_path), work_dir=tmp_path / "work")
    job = _claimed(busybox_oci, "sleep 30")
    now = trio.current_time()
    agent._feed(ch.Started(now))
    agent._feed(ch.ConnectionOpened(now))
    agent._feed(ch.FrameReceived(now, job))  # no connection object: handed to the executor at once
    agent._feed(ch.ConnectionClosed(now, None, "", "dropped"))
    assert agent.channel.job is not None and agent.channel.job.aborting is not None
    queued = agent._jobs_receive.receive_nowait()
    with trio.fail_after(10):
        await agent._run_job(queued)
    assert agent.channel.job is None
    pending = agent.channel.pending[job.uuid].message
    assert isinstance(pending, Failed) and "no reply to running" in pending.error
    assert pending.results == ()


class _FailingRelease(OciJobRunner):
    """The real runner, with a fault injected where its resources are given back."""

    async def release(self, prepared: PreparedJob) -> None:
        await super().release(prepared)
        raise OSError("injected: cannot release")


async def test_a_failing_release_never_loses_the_result(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    config = _config(tmp_path)
    options = ExecOptions(kill_grace=config.kill_grace, max_message_size=config.max_message_size,
                          work_dir=tmp_path / "work")
    runner = _FailingRelease(ImageCache(config.cache_dir), options)
    agent = Agent(config, runner, Outbox(config.state_dir), handle_signals=False)
    job = _claimed(busybox_oci, "echo done")
    now = trio.current_time()
    agent._feed(ch.Started(now))
    agent._feed(ch.ConnectionOpened(now))
    agent._feed(ch.FrameReceived(now, job))
    agent._feed(ch.FrameReceived(now, Ack(job.uuid)))  # the reply to `running`: go
    queued = agent._jobs_receive.receive_nowait()
    with trio.fail_after(10):
        await agent._run_job(queued)
    pending = agent.channel.pending[job.uuid].message
    assert isinstance(pending, Completed)
    assert [r.stdout for r in pending.results] == ["done\n"]
