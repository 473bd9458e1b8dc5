"""The connection loop against real loopback servers: backoff, rate limits, auth handling."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from runner_agent.backoff import Backoff, BackoffPolicy
from runner_agent.config import load_config
from runner_agent.connection import build_endpoint
from runner_agent.reconnect import AuthRejected, ConnectionLoop, SessionLink
from tests.support.rate import max_in_window

KEY = "bencher_runner_" + "r" * 30
DAY = 86400.0


async def drain(ws: WebSocketConnection, link: SessionLink) -> str:
    try:
        while True:
            await ws.get_message()
            link.frame()
    except ConnectionClosed as e:
        return f"closed:{e.reason.code}"


async def _run_day(handler: Callable[[WebSocketRequest], object], seed: int,
                   duration: float = DAY) -> list[float]:
    attempts: list[float] = []

    async def counting(request: WebSocketRequest) -> None:
        attempts.append(trio.current_time())
        await handler(request)  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, counting, "127.0.0.1", 0, None)
        config = load_config({"runner": "r1", "host": f"http://127.0.0.1:{server.port}"}, {}, None,
                             default_config_file=None)
        loop = ConnectionLoop(build_endpoint(config), lambda: KEY, drain,
                              Backoff(BackoffPolicy(), random.Random(seed)))
        with trio.move_on_after(duration):
            await loop.run()
        nursery.cancel_scope.cancel()
    return attempts


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_day_of_accept_then_close_stays_under_bencher_limits(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    async def accept_then_close(request: WebSocketRequest) -> None:
        await request.accept()  # the handler returns at once: closed right after the upgrade

    with trio.fail_after(DAY + 60):
        attempts = await _run_day(accept_then_close, seed)
    assert max_in_window(attempts, 60) <= 16
    assert max_in_window(attempts, 3600) <= 256
    assert len(attempts) <= 4096
    # Probable auth failure: minutes between attempts, not seconds.
    assert len(attempts) < 400


async def test_hours_of_drops_after_a_frame_stay_under_bencher_limits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A day of this takes ~10 s of real loopback connections; two hours show the steady state.
    async def frame_then_close(request: WebSocketRequest) -> None:
        ws = await request.accept()  # accepted (a frame arrives), but the server drops us soon after
        await ws.send_message('{"event":"no_job"}')
        await trio.sleep(2)

    with trio.fail_after(DAY):
        attempts = await _run_day(frame_then_close, 3, duration=2 * 3600)
    assert max_in_window(attempts, 60) <= 16
    assert max_in_window(attempts, 3600) <= 256
    assert len(attempts) > 150  # not auth-suspected: it keeps trying at the capped backoff


async def test_http_401_exits_with_auth_rejected(autojump_clock: trio.testing.MockClock) -> None:
    async def reject(request: WebSocketRequest) -> None:
        await request.reject(401)

    with trio.fail_after(60), pytest.RaisesGroup(AuthRejected):
        await _run_day(reject, 5)


async def test_key_is_read_before_every_attempt(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[str] = []

    async def record(request: WebSocketRequest) -> None:
        seen.append(dict(request.headers)[b"authorization"].decode())
        await request.accept()

    keys = iter([KEY, "bencher_runner_" + "s" * 30, "bencher_runner_" + "t" * 30])
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, record, "127.0.0.1", 0, None)
        config = load_config({"runner": "r1", "host": f"http://127.0.0.1:{server.port}"}, {}, None,
                             default_config_file=None)
        loop = ConnectionLoop(build_endpoint(config), lambda: next(keys), drain,
                              Backoff(BackoffPolicy(), random.Random(0)))

        async def session(ws: WebSocketConnection, link: SessionLink) -> str:
            result = await drain(ws, link)
            if len(seen) == 3:
                loop.stop()
            return result

        loop._session = session
        with trio.fail_after(3600):
            await loop.run()
        nursery.cancel_scope.cancel()
    assert [s.split()[1][-1] for s in seen] == ["r", "s", "t"]


async def test_connections_the_agent_closes_itself_are_not_auth_suspicion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hold(request: WebSocketRequest) -> None:
        ws = await request.accept()  # accepted, but never says a word (acks withheld)
        try:
            await ws.get_message()
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hold, "127.0.0.1", 0, None)
        config = load_config({"runner": "r1", "host": f"http://127.0.0.1:{server.port}"}, {}, None,
                             default_config_file=None)
        backoff = Backoff(BackoffPolicy(), random.Random(0))
        sessions = 0

        async def give_up_quickly(ws: WebSocketConnection, link: SessionLink) -> str:
            nonlocal sessions
            sessions += 1
            await trio.sleep(0.5)  # our ack timeout
            if sessions == 6:
                loop.stop()
            return "closed_by_agent:no reply to terminal within 0.5s"

        loop = ConnectionLoop(build_endpoint(config), lambda: KEY, give_up_quickly, backoff)
        with trio.fail_after(3600):
            await loop.run()
        nursery.cancel_scope.cancel()
    assert sessions == 6
    assert not backoff.auth_suspected


async def test_an_unexpected_session_error_is_logged_and_reconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def accept(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, accept, "127.0.0.1", 0, None)
        config = load_config({"runner": "r1", "host": f"http://127.0.0.1:{server.port}"}, {}, None,
                             default_config_file=None)
        reasons: list[str] = []
        calls = 0

        async def broken(ws: WebSocketConnection, link: SessionLink) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ExceptionGroup("session tasks", [RuntimeError("bug in a session task")])
            loop.stop()
            return "closed_by_agent:done"

        loop = ConnectionLoop(build_endpoint(config), lambda: KEY, broken,
                              Backoff(BackoffPolicy(), random.Random(0)), on_reconnect=reasons.append)
        with trio.fail_after(600):
            await loop.run()
        nursery.cancel_scope.cancel()
    assert calls == 2
    assert reasons == ["protocol_error"]
