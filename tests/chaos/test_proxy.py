"""The chaos proxy against a real echo server on 127.0.0.1: pass-through, RST and FIN cuts, black
hole, delay, throttle, an upstream restarting on the same port, schedules and seeded random plans.

Real sockets run on the real clock (a MockClock autojump would fire timeouts while bytes are in
flight), so the delay/throttle tests assert only lower bounds the proxy's own sleeps guarantee."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.chaos.proxy import LOOPBACK, ChaosProxy, FaultKind, RandomFaults, ScheduledFault


class EchoServer:
    """Echoes every byte back; records what each connection received."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.port = 0
        self.scope = trio.CancelScope()

    async def serve(self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(port, host=LOOPBACK)
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._echo, listeners)
                task_status.started(self.port)

    async def _echo(self, stream: trio.SocketStream) -> None:
        got = bytearray()
        self.received.append(got)
        try:
            async for data in stream:
                got += data
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[EchoServer, ChaosProxy, trio.Nursery]]:
    async with trio.open_nursery() as nursery:
        echo = EchoServer()
        await nursery.start(echo.serve)
        proxy = ChaosProxy(echo.port)
        await nursery.start(proxy.serve)
        yield echo, proxy, nursery
        nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.receive_some(n - len(out))
        if not data:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


async def test_forwards_both_ways() -> None:
    with trio.fail_after(10):
        async with proxied() as (echo, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            payload = bytes(range(256)) * 1000
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, payload)
                assert await receive_exactly(client, len(payload)) == payload
            await client.aclose()
    assert echo.received[0] == payload
    assert proxy.summary()["connections"] == 1
    assert sum(proxy.faults.values()) == 0


async def test_reset_gives_the_client_an_rst() -> None:
    with trio.fail_after(10):
        async with proxied() as (_, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await client.send_all(b"ping")
            assert await receive_exactly(client, 4) == b"ping"
            assert proxy.cut(FaultKind.RESET) == 1
            with pytest.raises(trio.BrokenResourceError):
                while await client.receive_some(100):
                    pass
            await client.aclose()
            await proxy.wait_all_closed()
    assert proxy.faults[FaultKind.RESET] == 1
    assert proxy.links_cut == 1


async def test_fin_gives_the_client_a_clean_eof() -> None:
    with trio.fail_after(10):
        async with proxied() as (_, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await client.send_all(b"ping")
            assert await receive_exactly(client, 4) == b"ping"
            assert proxy.cut(FaultKind.FIN) == 1
            assert await client.receive_some(100) == b""
            await client.aclose()
    assert proxy.faults[FaultKind.FIN] == 1


async def test_blackhole_forwards_nothing_and_sends_no_fin() -> None:
    with trio.fail_after(10):
        async with proxied() as (echo, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await client.send_all(b"before")
            assert await receive_exactly(client, 6) == b"before"
            assert proxy.blackhole() == 1
            await client.send_all(b"into the void")
            await proxy.wait_swallowed(len(b"into the void"))
            # a fresh connection still works while the old one is black-holed
            other = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await other.send_all(b"alive")
            assert await receive_exactly(other, 5) == b"alive"
            assert proxy.live == 2
            # the black-holed client got no FIN and no data: when we finally cut it, the very
            # next thing it reads is the EOF
            proxy.cut(FaultKind.FIN)
            assert await client.receive_some(100) == b""
            await client.aclose()
            await other.aclose()
    assert bytes(echo.received[0]) == b"before"
    assert proxy.faults[FaultKind.BLACKHOLE] == 1


async def test_delay_holds_every_chunk_and_keeps_order() -> None:
    with trio.fail_after(10):
        async with proxied() as (_, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            proxy.set_delay(0.2)
            start = trio.current_time()
            for part in (b"a", b"b", b"c"):
                await client.send_all(part)
            assert await receive_exactly(client, 3) == b"abc"
            elapsed = trio.current_time() - start
            proxy.clear()
            await client.aclose()
    assert elapsed >= 0.4  # delayed on the way there and on the way back
    assert proxy.faults[FaultKind.DELAY] == 1


async def test_throttle_limits_the_rate() -> None:
    with trio.fail_after(10):
        async with proxied() as (echo, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            proxy.set_throttle(2000)  # 100-byte pieces, 0.05 s apart
            payload = b"x" * 1000
            start = trio.current_time()
            await client.send_all(payload)
            assert await receive_exactly(client, len(payload)) == payload
            elapsed = trio.current_time() - start
            proxy.set_throttle(None)
            await client.aclose()
    assert elapsed >= 0.45  # the 10th piece leaves no earlier than 9 pauses in
    assert bytes(echo.received[0]) == payload


async def test_reset_after_bytes_cuts_an_answer_part_way() -> None:
    with trio.fail_after(10):
        async with proxied() as (_, proxy, _):
            proxy.reset_links_after(10)
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await client.send_all(b"0123456789abcdefghij")
            got = bytearray()
            with pytest.raises(trio.BrokenResourceError):
                while data := await client.receive_some(100):
                    got += data
            await client.aclose()
            proxy.clear()
            fresh = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await fresh.send_all(b"whole answer, no cut")
            assert await receive_exactly(fresh, 20) == b"whole answer, no cut"
            await fresh.aclose()
    assert bytes(got) == b"0123456789"[: len(got)]
    assert len(got) <= 10
    assert proxy.faults[FaultKind.RESET] == 1


async def test_upstream_restart_on_the_same_port() -> None:
    with trio.fail_after(10):
        async with proxied() as (echo, proxy, nursery):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await client.send_all(b"one")
            assert await receive_exactly(client, 3) == b"one"
            port = echo.port
            echo.scope.cancel()  # the upstream goes away; its connections die with it
            assert await client.receive_some(10) == b""
            await client.aclose()
            down = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            assert await down.receive_some(10) == b""  # accepted, then cut: nothing behind it
            await down.aclose()
            assert proxy.upstream_refused == 1
            again = EchoServer()
            await nursery.start(again.serve, port)
            back = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await back.send_all(b"two")
            assert await receive_exactly(back, 3) == b"two"
            await back.aclose()
    assert proxy.upstream_port == port


async def test_schedule_injects_in_order_and_counts() -> None:
    with trio.fail_after(10):
        async with proxied() as (_, proxy, _):
            client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
            await client.send_all(b"hi")
            assert await receive_exactly(client, 2) == b"hi"
            await proxy.run_schedule(
                [
                    ScheduledFault(0.05, FaultKind.THROTTLE, 5000.0, 0.05),
                    ScheduledFault(0.0, FaultKind.DELAY, 0.01, 0.05),
                    ScheduledFault(0.1, FaultKind.RESET),
                ]
            )
            with pytest.raises(trio.BrokenResourceError):
                while await client.receive_some(100):
                    pass
            await client.aclose()
    assert proxy.summary() | {"connections": 0, "links_cut": 0, "upstream_refused": 0} == {
        "reset": 1, "fin": 0, "blackhole": 0, "delay": 1, "throttle": 1,
        "connections": 0, "links_cut": 0, "upstream_refused": 0,
    }
    assert proxy.delay == 0.0 and proxy.rate is None  # both lifted after their durations


def test_random_plan_is_deterministic_per_seed() -> None:
    a = RandomFaults(seed=1, count=50).plan()
    assert a == RandomFaults(seed=1, count=50).plan()
    assert a != RandomFaults(seed=2, count=50).plan()
    assert len(a) == 50
    assert [f.at for f in a] == sorted(f.at for f in a)
    assert all(0.5 <= b.at - p.at <= 3.0 for p, b in itertools.pairwise(a))
    only_cuts = RandomFaults(seed=3, count=40, weights={FaultKind.RESET: 1, FaultKind.FIN: 1}).plan()
    assert {f.kind for f in only_cuts} == {FaultKind.RESET, FaultKind.FIN}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        RandomFaults(seed=1, weights={FaultKind.RESET: 0})
    with pytest.raises(ValueError, match="loopback"):
        ChaosProxy(80, upstream_host="example.com")
    proxy = ChaosProxy(1)
    with pytest.raises(ValueError):
        proxy.set_delay(-1)
    with pytest.raises(ValueError):
        proxy.set_throttle(0)
    with pytest.raises(ValueError):
        proxy.cut(FaultKind.DELAY)
    with pytest.raises(RuntimeError):
        _ = proxy.port


async def test_random_plan_runs_against_live_traffic() -> None:
    plan = RandomFaults(seed=11, count=8, min_gap=0.01, max_gap=0.03, max_delay=0.01,
                        min_rate=100_000, max_duration=0.02)
    with trio.fail_after(20):
        async with proxied() as (_, proxy, nursery):
            done = trio.Event()

            async def chatter() -> None:
                # reconnect whenever the proxy cuts or black-holes us; bounded rounds
                for _ in range(200):
                    if done.is_set():
                        return
                    try:
                        client = await trio.open_tcp_stream(LOOPBACK, proxy.port)
                        with trio.move_on_after(0.5):
                            await client.send_all(b"x" * 64)
                            await receive_exactly(client, 64)
                        await client.aclose()
                    except (trio.BrokenResourceError, EOFError, OSError):
                        pass

            nursery.start_soon(chatter)
            await proxy.run_random(plan)
            done.set()
    expected: dict[FaultKind, int] = {}
    for fault in plan.plan():
        expected[fault.kind] = expected.get(fault.kind, 0) + 1
    assert dict(proxy.faults) == expected
