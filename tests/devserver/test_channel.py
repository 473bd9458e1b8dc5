"""The dev server's channel over real WebSocket connections on 127.0.0.1 (PROTOCOL.md §3, §5, §7)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from runner_agent.devserver import ConnState, DevServerSettings, JobStatus
from runner_agent.devserver.token import verify_oci_token
from runner_agent.protocol import decode_job

from .conftest import (
    KEY_A,
    KEY_B,
    RUNNER_A,
    claim,
    client,
    dev_server,
    expect_close,
    expect_dropped,
    job_config,
    recv,
    send,
)

RESULTS = [{"exit_code": 0, "stdout": "ok\n"}]


async def test_auth_ok_by_slug_and_uuid(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            for ref in ("runner-a", str(RUNNER_A.uuid)):
                async with client(server, runner=ref) as ws:
                    await send(ws, {"event": "ready", "poll_timeout": 1})
                    assert await recv(ws) == {"event": "no_job"}
            assert server.connection_attempts(RUNNER_A.uuid) == 2


@pytest.mark.parametrize(
    ("key", "runner"),
    [
        ("bencher_runner_" + "Z" * 30, "runner-a"),  # well-formed, unknown key
        ("not-a-runner-key", "runner-a"),  # bad format
        (KEY_B, "runner-a"),  # the other runner's key
        (KEY_A, "no-such-runner"),
    ],
)
async def test_bad_auth_is_dropped_without_close_frame(
    io_clock: trio.testing.MockClock, key: str, runner: str
) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            async with client(server, key=key, runner=runner) as ws:
                await expect_dropped(ws)
            assert [a.outcome for a in server.attempts] == ["auth_failed"]


async def test_rate_limit_drops_excess_connections(io_clock: trio.testing.MockClock) -> None:
    from runner_agent.devserver import RateLimits

    settings = DevServerSettings(heartbeat_timeout=5, rate_limits=RateLimits(minute=2, hour=10, day=10))
    with trio.fail_after(600):
        async with dev_server(settings=settings) as server:
            for _ in range(2):
                async with client(server) as ws:
                    await send(ws, {"event": "ready", "poll_timeout": 1})
                    assert await recv(ws) == {"event": "no_job"}
            async with client(server) as ws:
                await expect_dropped(ws)
            await trio.sleep(61)
            async with client(server) as ws:
                await send(ws, {"event": "ready", "poll_timeout": 1})
                assert await recv(ws) == {"event": "no_job"}
            assert [a.outcome for a in server.attempts] == [
                "accepted", "accepted", "rate_limited", "accepted"
            ]


async def test_ready_gets_no_job_at_the_deadline(io_clock: trio.testing.MockClock) -> None:
    # a 5 s claim cadence (Bencher: 1 s) keeps the clock jumps few; the last wait is cut to the deadline
    settings = DevServerSettings(heartbeat_timeout=5, grace=60, poll_interval=5)
    with trio.fail_after(600):
        async with dev_server(settings=settings) as server, client(server) as ws:
            start = trio.current_time()
            await send(ws, {"event": "ready", "poll_timeout": 7})
            assert await recv(ws) == {"event": "no_job"}
            assert 7 <= trio.current_time() - start < 8
            # without poll_timeout the server default (30 s) applies
            await send(ws, {"event": "ready"})
            assert await recv(ws) == {"event": "no_job"}
            assert trio.current_time() - start >= 37


async def test_job_lifecycle_running_heartbeats_completed(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            frame = await claim(ws)
            claimed = decode_job(frame)
            assert claimed.uuid == job and claimed.timeout == 60
            claims = verify_oci_token(claimed.oci_token)
            assert claims["sub"] == str(RUNNER_A.uuid) and claims["aud"] == "oci_runner"
            assert claims["exp"] - claims["iat"] == 600
            assert server.job_status(job) is JobStatus.CLAIMED
            ack = {"event": "ack", "job": str(job)}
            await send(ws, {"event": "running"})
            assert await recv(ws) == ack
            assert server.job_status(job) is JobStatus.RUNNING
            for _ in range(3):
                await send(ws, {"event": "heartbeat"})
                assert await recv(ws) == ack
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            assert await recv(ws) == ack
            record = server.job(job)
            assert record.status is JobStatus.PROCESSED
            assert record.results == RESULTS and record.runner == RUNNER_A.uuid
            assert [(r.event, r.outcome) for r in record.terminal_messages] == [("completed", "acked")]
            assert len(server.frames_received("heartbeat")) == 3
            assert [f.text for f in server.frames if f.direction == "out"][-1] == json.dumps(
                ack, separators=(",", ":")
            )
            # back in IDLE: the connection stays open for the next ready
            await send(ws, {"event": "ready", "poll_timeout": 1})
            assert await recv(ws) == {"event": "no_job"}


async def test_user_cancel_is_the_reply_to_running_and_heartbeat(
    io_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            await send(ws, {"event": "running"})
            assert (await recv(ws))["event"] == "ack"
            server.cancel_job(job)
            await send(ws, {"event": "heartbeat"})
            assert await recv(ws) == {"event": "cancel"}
            # now IDLE: stray heartbeats are ignored, canceled is acked with the echoed uuid
            await send(ws, {"event": "heartbeat"})
            await send(ws, {"event": "canceled", "job": str(job)})
            assert await recv(ws) == {"event": "ack", "job": str(job)}
            assert server.job_status(job) is JobStatus.CANCELED

            job2 = server.submit_job(job_config())
            await claim(ws)
            server.cancel_job(job2)
            await send(ws, {"event": "running"})
            assert await recv(ws) == {"event": "cancel"}


async def test_heartbeat_window_expiry_closes_1000_heartbeat_timeout(
    io_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            await send(ws, {"event": "running"})
            await recv(ws)
            start = trio.current_time()
            await expect_close(ws, 1000, '"heartbeat_timeout"')
            assert 5 <= trio.current_time() - start < 6
            assert server.job_status(job) is JobStatus.FAILED


async def test_job_timeout_exceeded_cancels(io_clock: trio.testing.MockClock) -> None:
    settings = DevServerSettings(heartbeat_timeout=5, grace=2)
    with trio.fail_after(600):
        async with dev_server(settings=settings) as server, client(server) as ws:
            job = server.submit_job(job_config(), timeout=3)
            await claim(ws)
            await send(ws, {"event": "running"})
            await recv(ws)
            # heartbeat every 4 s: after 8 s we are past timeout + grace (5 s) => cancel
            await trio.sleep(4)
            await send(ws, {"event": "heartbeat"})
            assert (await recv(ws))["event"] == "ack"
            await trio.sleep(2)
            await send(ws, {"event": "heartbeat"})
            assert await recv(ws) == {"event": "cancel"}
            assert server.job_status(job) is JobStatus.CANCELED

            # window expiry past the hard limit => Close 1000 "job_timeout_exceeded"
            job2 = server.submit_job(job_config(), timeout=1)
            await claim(ws)
            await send(ws, {"event": "running"})
            await recv(ws)
            await trio.sleep(4)
            await send(ws, {"event": "ready"})  # acked but does not extend the window
            assert (await recv(ws)) == {"event": "ack", "job": str(job2)}
            await expect_close(ws, 1000, '"job_timeout_exceeded"')
            assert server.job_status(job2) is JobStatus.CANCELED


async def test_idle_path_acks_retries_with_the_echoed_uuid(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            job = server.submit_job(job_config())
            async with client(server) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
            # the runner reconnects and delivers its result from IDLE
            async with client(server) as ws:
                await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
                assert await recv(ws) == {"event": "ack", "job": str(job)}
                assert server.job_status(job) is JobStatus.PROCESSED
                # a duplicate is acked again, no change
                await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
                assert await recv(ws) == {"event": "ack", "job": str(job)}
                # an unknown job is acked with its own uuid
                unknown = "3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50"
                await send(ws, {"event": "failed", "job": unknown, "results": [], "error": "x"})
                assert await recv(ws) == {"event": "ack", "job": unknown}
            record = server.job(job)
            assert [(r.path, r.outcome) for r in record.terminal_messages] == [
                ("idle", "acked"), ("idle", "acked")
            ]


async def test_completed_while_claimed_drops_without_ack(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            job = server.submit_job(job_config())
            async with client(server) as ws:
                await claim(ws)
                await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
                await expect_dropped(ws)
            assert server.job_status(job) is JobStatus.CLAIMED
            assert server.job(job).terminal_messages[0].outcome == "dropped"
            # the same from IDLE on a new connection
            async with client(server) as ws:
                await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
                await expect_dropped(ws)
            # the background task fails it after the heartbeat timeout
            record = await server.wait_for_status(job, {JobStatus.FAILED})
            assert record.status is JobStatus.FAILED


async def test_canceled_after_completed_drops_without_ack(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            await send(ws, {"event": "running"})
            await recv(ws)
            await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
            await recv(ws)
            await send(ws, {"event": "canceled", "job": str(job)})
            await expect_dropped(ws)
            assert server.job_status(job) is JobStatus.PROCESSED


async def test_completed_overrides_failed(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            job = server.submit_job(job_config())
            async with client(server) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
                await expect_close(ws, 1000, '"heartbeat_timeout"')
            assert server.job_status(job) is JobStatus.FAILED
            async with client(server) as ws:
                await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
                assert await recv(ws) == {"event": "ack", "job": str(job)}
            record = server.job(job)
            assert record.status is JobStatus.PROCESSED
            assert [c.status.value for c in record.history][-3:] == ["failed", "completed", "processed"]


async def test_ready_during_executing_is_acked(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            job = server.submit_job(job_config())
            await claim(ws)
            await send(ws, {"event": "ready", "poll_timeout": 5})
            assert await recv(ws) == {"event": "ack", "job": str(job)}
            assert server.connections()[0].state is ConnState.EXECUTING


async def test_parse_error_is_fatal_in_idle(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            for garbage in ("not json", '{"event":"Ready"}', '{"event":"ready","poll_timeout":0}'):
                async with client(server) as ws:
                    await ws.send_message(garbage)
                    await expect_dropped(ws)


async def test_parse_errors_are_ignored_while_polling_and_executing(
    io_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            await send(ws, {"event": "ready", "poll_timeout": 3})
            await server.wait_for_connection(ConnState.POLLING)
            await ws.send_message("garbage")
            await send(ws, {"event": "ready"})  # also discarded while polling
            assert await recv(ws) == {"event": "no_job"}
            job = server.submit_job(job_config())
            await claim(ws)
            await ws.send_message("{{{")
            await ws.send_message(b"\x00binary")  # ignored too
            await send(ws, {"event": "surprise"})
            await send(ws, {"event": "running"})
            assert await recv(ws) == {"event": "ack", "job": str(job)}


async def test_idle_timeout_drops(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws:
            start = trio.current_time()
            await expect_dropped(ws)
            assert trio.current_time() - start >= 5


async def test_oversize_message_ends_the_connection(io_clock: trio.testing.MockClock) -> None:
    settings = DevServerSettings(heartbeat_timeout=5, max_message_size=1024)
    with trio.fail_after(600):
        async with dev_server(settings=settings) as server:
            job = server.submit_job(job_config())
            async with client(server) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
                big = [{"exit_code": 0, "stdout": "x" * 4096}]
                await send(ws, {"event": "completed", "job": str(job), "results": big})
                with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed (1009 from trio-websocket)
                    await ws.get_message()
            # treated as a disconnect: the job is still running and gets a timeout task
            assert server.job_status(job) is JobStatus.RUNNING
            await server.wait_for_status(job, {JobStatus.FAILED})


async def test_shutdown_sends_1001(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            async with client(server) as idle_ws, client(server) as busy_ws:
                job = server.submit_job(job_config())
                await claim(busy_ws)
                await server.wait_for_connection(ConnState.IDLE)
                await server.aclose()
                for ws in (idle_ws, busy_ws):
                    await expect_close(ws, 1001, "server shutting down")
            # no timeout task on shutdown: the job is left as it was
            assert server.job_status(job) is JobStatus.CLAIMED


async def test_two_connections_race_for_one_job(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server, client(server) as ws1, client(server) as ws2:
            await send(ws1, {"event": "ready", "poll_timeout": 5})
            await send(ws2, {"event": "ready", "poll_timeout": 5})
            await server.wait_until(
                lambda: [c.state for c in server.connections()] == [ConnState.POLLING] * 2
            )
            job = server.submit_job(job_config())
            events = sorted([(await recv(ws1))["event"], (await recv(ws2))["event"]])
            assert events == ["job", "no_job"]
            assert server.job(job).runner == RUNNER_A.uuid


async def test_jobs_for_another_runner_are_not_claimed(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            from .conftest import RUNNER_B

            job = server.submit_job(job_config(), runner=RUNNER_B.uuid)
            async with client(server) as ws:
                await send(ws, {"event": "ready", "poll_timeout": 2})
                assert await recv(ws) == {"event": "no_job"}
            async with client(server, key=KEY_B, runner="runner-b") as ws:
                frame = await claim(ws)
                assert frame["uuid"] == str(job)


async def test_disconnect_mid_job_starts_background_timeout(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server() as server:
            job = server.submit_job(job_config(), timeout=600)
            async with client(server) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
            start = trio.current_time()
            await server.wait_for_status(job, {JobStatus.FAILED})
            assert trio.current_time() - start >= 5


async def test_close_frame_reason_is_json_text() -> None:
    assert json.dumps("heartbeat_timeout") == '"heartbeat_timeout"'


async def test_ipv6_listen_address_gives_bracketed_urls(io_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with dev_server(host="::1") as server:
            assert server.url == f"http://[::1]:{server.port}"
            assert server.channel_url().startswith(f"ws://[::1]:{server.port}/v0/runners/")
            async with client(server) as ws:
                await send(ws, {"event": "ready", "poll_timeout": 1})
                assert await recv(ws) == {"event": "no_job"}
