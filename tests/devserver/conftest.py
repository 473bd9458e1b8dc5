"""Fixtures for the dev server tests: two runners, a job config, a WebSocket test client, and a
MockClock that tolerates real loopback I/O."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from runner_agent.devserver import DevServer, DevServerSettings, RunnerIdentity
from runner_agent.protocol import JobConfig

KEY_A = "bencher_runner_" + "A1" * 15
KEY_B = "bencher_runner_" + "B2" * 15
RUNNER_A = RunnerIdentity.with_key(UUID("aaaaaaaa-0000-4000-8000-000000000001"), "runner-a", KEY_A)
RUNNER_B = RunnerIdentity.with_key(UUID("bbbbbbbb-0000-4000-8000-000000000002"), "runner-b", KEY_B)
PROJECT = UUID("11111111-2222-3333-4444-555555555555")
DIGEST = "sha256:" + "ab" * 32


def job_config(**changes: Any) -> JobConfig:
    fields: dict[str, Any] = {
        "registry": "http://127.0.0.1:5000/",
        "project": PROJECT,
        "digest": DIGEST,
        "cmd": ("echo", "hi"),
        "timeout": 60,
    }
    fields.update(changes)
    return JobConfig(**fields)


@pytest.fixture
def io_clock() -> trio.testing.MockClock:
    """A MockClock for tests with real sockets: threshold 0 would jump the clock while a frame
    is in flight on loopback (trio's MockClock docs), so it jumps only after 300 ms of real
    idleness. That must outlast any stall of a loaded machine between a send and its receipt,
    or the clock leaps to the next deadline (a heartbeat window) mid-exchange; each jump costs
    that much real time, so tests keep their number of timed waits small."""
    return trio.testing.MockClock(autojump_threshold=0.3)


@asynccontextmanager
async def dev_server(**kwargs: Any) -> AsyncIterator[DevServer]:
    kwargs.setdefault("runners", [RUNNER_A, RUNNER_B])
    kwargs.setdefault("settings", DevServerSettings(heartbeat_timeout=5, grace=60))
    async with DevServer.start(**kwargs) as server:
        yield server


@asynccontextmanager
async def client(
    server: DevServer, key: str = KEY_A, runner: str = "runner-a", **kwargs: Any
) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(
        server.channel_url(runner),
        extra_headers=[(b"Authorization", f"Bearer {key}".encode())],
        **kwargs,
    ) as ws:
        yield ws


async def send(ws: WebSocketConnection, obj: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(obj))


async def recv(ws: WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    obj: dict[str, Any] = json.loads(message)
    return obj


async def expect_dropped(ws: WebSocketConnection) -> None:
    """The server ended the connection without a Close frame (trio-websocket reports 1006)."""
    with pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1006, closed.value.reason


async def expect_close(ws: WebSocketConnection, code: int, reason: str) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (code, reason)


async def claim(ws: WebSocketConnection, poll_timeout: int = 30) -> dict[str, Any]:
    await send(ws, {"event": "ready", "poll_timeout": poll_timeout})
    frame = await recv(ws)
    assert frame["event"] == "job", frame
    return frame
