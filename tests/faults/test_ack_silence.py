"""A server that stops acknowledging (acks withheld, as when a proxy or server is wedged) while the
agent holds an undelivered result. The agent rightly closes each connection after its ack timeout
and reconnects; those closes are the *agent's own*, after a connection the server accepted, so
they must not count as "the server closed right after the upgrade without a frame" — Bencher's
answer to a bad key — which would make the agent report a probable authentication failure and
back off for 5-10 minutes (or exit 3 with ``--exit-on-auth-failure``).

Former bug: ``runner_agent/reconnect.py`` called
``backoff.record_disconnected`` for every session end, including ``closed_by_agent:*`` ones, and
``Backoff.record_disconnected`` counted any frame-less connection shorter than ``immediate_close``
as a silent close. Fixed in the reconnect loop (f2c1e9f); this test keeps it fixed."""

from __future__ import annotations

from pathlib import Path

import trio

from runner_agent.devserver import DevServer, DevServerSettings
from runner_agent.devserver.store import JobStatus
from tests.agent.conftest import agent_config, job_config, make_agent
from tests.chaos.probe import AgentProbe


async def test_agent_closes_for_missing_acks_are_not_auth_failures(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(90):
        async with DevServer.start(settings=DevServerSettings(heartbeat_timeout=30.0)) as server:
            probe = AgentProbe()
            agent = make_agent(
                agent_config(server, tmp_path / "state", tmp_path / "cache", ack_timeout=0.5),
                work_dir=tmp_path / "work", stats=probe,
            )
            job = server.submit_job(job_config(busybox_oci, "sleep 0.5; echo done"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(agent.run)
                await server.wait_for_status(job, {JobStatus.RUNNING})
                server.faults.pause_acks()  # the result will never be acknowledged
                # the connection the job ran on, then three frame-less ones the agent closes itself
                await probe.wait_until(lambda: sum(probe.reconnects.values()) >= 4)
                suspected = agent.backoff.auth_suspected
                nursery.cancel_scope.cancel()
    accepted = [a for a in server.attempts if a.outcome == "accepted"]
    assert len(accepted) >= 4  # the server accepted every connection; it never rejected one
    assert not suspected, "agent-closed connections were taken for a rejected key"
    assert probe.reconnects["auth_rejected"] == 0
