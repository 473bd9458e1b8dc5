"""A full state dir while the agent writes its outbox (a 64 KiB tmpfs filled to the last byte).

Outcomes checked:
- the result cannot be made durable, so the agent says so in its log, keeps it in memory and
  delivers it anyway — even when the server loses the first copy (re-sent from memory after the
  ack timeout); the agent keeps serving the next job; the outbox ends empty, with no temp files;
- when the agent must exit before the result was acknowledged, it says explicitly, naming the job,
  that the result could not be saved (nothing disappears silently), and exits 1 (a third signal).
  The server already holds the result in that case (its ack was withheld, not its processing).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
import trio

from runner_agent.devserver import DevServer, DevServerSettings
from runner_agent.devserver.store import JobStatus
from tests.agent.conftest import agent_config, job_config, make_agent
from tests.chaos.agentproc import AgentProcess, agent_command
from tests.chaos.probe import AgentProbe
from tests.faults.conftest import fill_up, new_marker, small_tmpfs

DONE = {JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED}


def outbox_files(state: Path) -> list[Path]:
    outbox = state / "outbox"
    return sorted(p for p in outbox.rglob("*") if p.is_file()) if outbox.exists() else []


async def test_full_state_dir_result_delivered_from_memory(
    tmp_path: Path, busybox_oci: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    state = tmp_path / "state"
    with trio.fail_after(60), small_tmpfs(state, 64):
        async with DevServer.start(settings=DevServerSettings(heartbeat_timeout=10.0)) as server:
            probe = AgentProbe()
            agent = make_agent(
                agent_config(server, state, tmp_path / "cache", exit_after_jobs=2, ack_timeout=1.0),
                work_dir=tmp_path / "work", stats=probe,
            )
            (state / "outbox").mkdir(exist_ok=True)
            filler = fill_up(state)
            markers = [new_marker(), new_marker()]
            jobs = [server.submit_job(job_config(busybox_oci, f"echo {m}")) for m in markers]
            server.faults.discard_next_terminal(1)  # the first copy is lost on the way
            code = await agent.run()
            records = [server.job(j) for j in jobs]
            assert filler.stat().st_size > 0
    assert code == 0
    for marker, record in zip(markers, records, strict=True):
        assert record.status is JobStatus.PROCESSED
        assert record.results is not None and record.results[0]["stdout"] == f"{marker}\n"
    assert [r.outcome for r in records[0].terminal_messages] == ["discarded", "acked"]
    assert [r.outcome for r in records[1].terminal_messages] == ["acked"]
    assert agent.outbox.depth == 0 and outbox_files(state) == []
    persist_errors = [r for r in caplog.records if "could not persist the result" in r.getMessage()]
    assert {str(j) for j in jobs} <= {word for r in persist_errors for word in r.getMessage().split()}


async def test_full_state_dir_at_exit_is_an_explicit_error(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    state = tmp_path / "state"
    log_path = tmp_path / "agent.log"
    with trio.fail_after(60), small_tmpfs(state, 64):
        async with DevServer.start(settings=DevServerSettings(heartbeat_timeout=10.0)) as server:
            assert server.key is not None
            (state / "outbox").mkdir(exist_ok=True)
            fill_up(state)
            marker = new_marker()
            job = server.submit_job(job_config(busybox_oci, f"sleep 1; echo {marker}"))
            agent = AgentProcess(
                agent_command(server.url, server.runner.slug, state, tmp_path / "cache"),
                {"BENCHER_RUNNER_KEY": server.key}, log_path,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await server.wait_for_status(job, {JobStatus.RUNNING})
                server.faults.pause_acks()  # the result will be processed but never acknowledged
                record = await server.wait_for_status(job, DONE)
                await agent.wait_for_line(f"could not persist the result of job {job}")
                seen = 0
                for expected in ("draining", "aborting", "exiting now"):
                    agent.send_signal(signal.SIGTERM)
                    seen = await agent.wait_for_line(expected, seen)
                code = await agent.wait()
    text = log_path.read_text()
    assert record.status is JobStatus.PROCESSED
    assert record.results is not None and record.results[0]["stdout"] == f"{marker}\n"
    assert code == 1, text
    assert f"job {job}: result could not be saved at exit" in text, text
    assert "No space left on device" in text
