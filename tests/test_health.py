"""The health endpoint over real HTTP (httpx → hypercorn on 127.0.0.1, port 0)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import click
import httpx
import pytest
import trio
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from runner_agent.health import (
    HEALTH_ADDR,
    HealthAddr,
    HealthServerError,
    parse_health_addr,
    serve_health,
)
from runner_agent.telemetry import AgentStats


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def running(
    stats: AgentStats, max_silence_s: float = 60.0
) -> AsyncIterator[tuple[HealthAddr, httpx.AsyncClient]]:
    """The endpoint on a free loopback port and a client for it; both stopped afterwards."""
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_health(
                "127.0.0.1:0", stats, max_silence_s=max_silence_s, task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=bound.url, timeout=5) as client:
            yield bound, client
        nursery.cancel_scope.cancel()


async def test_reports_the_bound_port() -> None:
    with trio.fail_after(10):
        async with running(AgentStats(clock=FakeClock())) as (bound, client):
            assert bound.host == "127.0.0.1"
            assert bound.port > 0
            assert (await client.get("/metrics")).status_code == 200


async def test_healthz_transitions_with_the_injected_clock() -> None:
    clock = FakeClock()
    stats = AgentStats(clock=clock)
    with trio.fail_after(10):
        async with running(stats, max_silence_s=60) as (_, client):
            r = await client.get("/healthz")
            assert r.status_code == 503
            assert r.text.startswith("unhealthy: no successful contact with the server yet")
            assert r.headers["content-type"].startswith("text/plain")

            stats.connected()
            r = await client.get("/healthz")
            assert r.status_code == 200
            assert r.text == "ok: server contacted 0.0 s ago; idle; state connected\n"

            clock.t += 61
            r = await client.get("/healthz")
            assert r.status_code == 503
            assert "no contact with the server for 61.0 s (limit 60 s)" in r.text

            stats.contact()
            stats.job_started("6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d")
            assert (await client.get("/healthz")).status_code == 200

            stats.reconnect("connection_lost")
            clock.t += 120
            r = await client.get("/healthz")
            assert r.status_code == 503
            assert r.text.startswith("degraded: job 6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d")

            head = await client.head("/healthz")
            assert head.status_code == 503
            assert head.content == b""


async def test_healthz_json_by_query_or_accept_header() -> None:
    clock = FakeClock()
    stats = AgentStats(clock=clock)
    stats.connected()
    clock.t += 2.5
    with trio.fail_after(10):
        async with running(stats, max_silence_s=60) as (_, client):
            for r in (
                await client.get("/healthz", params={"format": "json"}),
                await client.get("/healthz", headers={"Accept": "application/json"}),
            ):
                assert r.status_code == 200
                assert r.headers["content-type"] == "application/json"
                body = r.json()
                assert body["ok"] is True
                assert body["status"] == "ok"
                assert body["seconds_since_contact"] == 2.5
                assert body["connection_state"] == "connected"
                assert body["running_job"] is None
                assert body["max_silence_s"] == 60.0
            # an explicit format wins over the Accept header
            r = await client.get(
                "/healthz", params={"format": "text"}, headers={"Accept": "application/json"}
            )
            assert r.text.startswith("ok: ")
            r = await client.get("/healthz", params={"format": "xml"})
            assert r.status_code == 400
            assert "format=json" in r.text


async def test_metrics_content_after_simulated_updates() -> None:
    clock = FakeClock()
    stats = AgentStats(clock=clock, version="1.2.3")
    with trio.fail_after(10):
        async with running(stats) as (_, client):
            stats.connection_state("connecting")
            stats.connected()
            stats.job_started("j1")
            stats.heartbeat_rtt(0.004)
            stats.job_finished("failed", 7.0)
            stats.cancel_latency(0.09)
            stats.reconnect("server_shutdown")
            stats.outbox_depth(1)
            r = await client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            values = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.text)
                for s in family.samples
            }
            assert values[("runner_agent_jobs_total", (("outcome", "failed"),))] == 1
            assert values[("runner_agent_jobs_total", (("outcome", "completed"),))] == 0
            assert values[("runner_agent_last_job_duration_seconds", ())] == 7.0
            assert values[("runner_agent_reconnects_total", (("reason", "server_shutdown"),))] == 1
            assert values[("runner_agent_outbox_depth", ())] == 1
            assert values[("runner_agent_connection_state", (("state", "disconnected"),))] == 1
            assert values[("runner_agent_heartbeat_rtt_seconds_count", ())] == 1
            assert values[("runner_agent_cancel_latency_seconds_count", ())] == 1
            assert values[("runner_agent_info", (("runner", ""), ("version", "1.2.3")))] == 1
            assert values[("runner_agent_last_contact_timestamp_seconds", ())] == clock.t


async def test_unknown_path_and_method() -> None:
    with trio.fail_after(10):
        async with running(AgentStats(clock=FakeClock())) as (_, client):
            r = await client.get("/")
            assert r.status_code == 404
            assert "/healthz" in r.text
            r = await client.post("/metrics", content=b"x")
            assert r.status_code == 405
            assert r.headers["allow"] == "GET, HEAD"


async def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with (
            trio.fail_after(10),
            pytest.raises(HealthServerError, match=f"127.0.0.1:{port}: cannot listen"),
        ):
            await serve_health(f"127.0.0.1:{port}", AgentStats(clock=FakeClock()))


async def test_server_stops_when_cancelled_and_frees_the_port() -> None:
    with trio.fail_after(10):
        async with running(AgentStats(clock=FakeClock())) as (bound, _):
            pass
        # the same port can be bound again: nothing is left listening
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", bound.port))
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", bound.port), timeout=2).close()


def test_health_addr_option_names_the_flag_on_error() -> None:
    @click.command()
    @click.option("--health-addr", type=HEALTH_ADDR)
    def cmd(health_addr: HealthAddr | None) -> None:
        click.echo(str(health_addr))

    ok = CliRunner().invoke(cmd, ["--health-addr", "[::1]:9100"])
    assert ok.exit_code == 0
    assert ok.output == "[::1]:9100\n"
    bad = CliRunner().invoke(cmd, ["--health-addr", "localhost"])
    assert bad.exit_code == 2
    assert "--health-addr" in bad.output
    assert "missing port" in bad.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", HealthAddr("127.0.0.1", 0)),
        (" 0.0.0.0:9100 ", HealthAddr("0.0.0.0", 9100)),
        ("localhost:65535", HealthAddr("localhost", 65535)),
        ("[::]:9100", HealthAddr("::", 9100)),
    ],
)
def test_parse_health_addr(text: str, expected: HealthAddr) -> None:
    assert parse_health_addr(text) == expected
