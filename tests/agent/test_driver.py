"""The driver's job hand-off, fed events directly (no server): a real job runner on a busybox image."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import attrs
import trio

from runner_agent import channel as ch
from runner_agent.config import load_config
from runner_agent.devserver.jobs import default_spec
from runner_agent.protocol import ClaimedJob, Failed, decode_server
from tests.agent.conftest import job_config, make_agent
from tests.conftest import fixtures_dir


def _claimed(image: tuple[Path, str], script: str) -> ClaimedJob:
    base = decode_server((fixtures_dir() / "job_minimal.json").read_text())
    assert isinstance(base, ClaimedJob)
    return attrs.evolve(base, uuid=uuid4(), spec=default_spec(), config=job_config(image, script))


async def test_abort_before_the_executor_picks_the_job_up_is_not_lost(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    # The connection drops after `job` arrived but before the job executor ran: the channel
    # aborts the job (the reply to `running` can never come). That abort must reach the job,
    # or it prepares, waits for a go that never comes, and the agent never asks for work again.
    config = load_config({"host": "http://127.0.0.1:9", "runner": "r", "key": "bencher_runner_" + "a" * 30,
                          "state_dir": tmp_path / "state", "cache_dir": tmp_path / "cache"},
                         {}, None, default_config_file=None)
    agent = make_agent(config, work_dir=tmp_path / "work")
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
