"""Fault switches the agent's tests rely on: withheld, delayed and discarded acks, injected
frames, test-induced close and drop, and the ``update`` offer."""

from __future__ import annotations

import trio
import trio.testing

from runner_agent.devserver import ConnState, JobStatus
from runner_agent.protocol import Update, encode

from .conftest import (
    claim,
    client,
    dev_server,
    expect_close,
    expect_dropped,
    job_config,
    recv,
    send,
)

RESULTS = [{"exit_code": 0}]


async def test_withheld_acks_still_apply_the_message(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            await send(ws, {"event": "running"})
            assert (await recv(ws))["event"] == "ack"
            server.faults.pause_acks()
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            await server.wait_for_status(job, {JobStatus.PROCESSED})
            # the runner resends from IDLE: still withheld, then acked once resumed
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            await server.wait_until(lambda: len(server.job(job).terminal_messages) == 2)
            server.faults.resume_acks()
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            assert await recv(ws) == {"event": "ack", "job": str(job)}
            outcomes = [r.outcome for r in server.job(job).terminal_messages]
            assert outcomes == ["ack_withheld", "ack_withheld", "acked"]
            assert server.faults.acks_withheld == 2


async def test_delayed_acks_queue_up_in_order(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            server.faults.delay_acks(3)
            start = trio.current_time()
            await send(ws, {"event": "running"})
            await send(ws, {"event": "heartbeat"})
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            await server.wait_for_status(job, {JobStatus.PROCESSED})
            assert trio.current_time() - start < 1  # processed long before any ack went out
            for _ in range(3):
                assert await recv(ws) == {"event": "ack", "job": str(job)}
            assert trio.current_time() - start >= 3


async def test_discarded_terminal_message_is_lost_silently(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            await send(ws, {"event": "running"})
            await recv(ws)
            server.faults.discard_next_terminal()
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            assert await recv(ws) == {"event": "ack", "job": str(job)}
            record = server.job(job)
            assert [r.outcome for r in record.terminal_messages] == ["discarded", "acked"]
            assert record.status is JobStatus.PROCESSED


async def test_injected_frames_reach_the_runner(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            await server.wait_for_connection(ConnState.IDLE)
            update = Update(version="9.9.9", url="https://example.invalid/runner", checksum="a" * 64)
            server.inject_frame("garbage")
            server.inject_frame('{"event":"surprise"}')
            server.inject_frame(encode(update))
            assert await ws.get_message() == "garbage"
            assert await recv(ws) == {"event": "surprise"}
            assert (await recv(ws))["event"] == "update"
            # the connection is unaffected
            await send(ws, {"event": "ready", "poll_timeout": 1})
            assert await recv(ws) == {"event": "no_job"}


async def test_update_offer_answers_ready_then_drops(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            update = Update(version="9.9.9", url="https://example.invalid/runner", checksum="a" * 64)
            server.faults.offer_update(update)
            await send(ws, {"event": "ready"})
            assert await recv(ws) == {
                "event": "update", "version": "9.9.9",
                "url": "https://example.invalid/runner", "checksum": "a" * 64,
            }
            await expect_dropped(ws)


async def test_close_and_drop_connections(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            async with client(server) as ws:
                await server.wait_for_connection(ConnState.IDLE)
                server.close_connections(1000, '"heartbeat_timeout"')
                await expect_close(ws, 1000, '"heartbeat_timeout"')
            job = server.submit_job(job_config())
            async with client(server) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
                server.drop_connections()
                await expect_dropped(ws)
            # a dropped job connection behaves like a disconnect: background timeout task
            await server.wait_for_status(job, {JobStatus.FAILED})
            assert server.connection_attempts() == 2
