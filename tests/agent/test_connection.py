"""Opening the channel: URL shape, transport rules, headers on the wire, classified failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from runner_agent.config import ConfigError, load_config
from runner_agent.connection import (
    ConnectFailure,
    build_endpoint,
    channel_url,
    close_channel,
    open_channel,
)

KEY = "bencher_runner_" + "x" * 30


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("https://api.bencher.dev", "wss://api.bencher.dev/v0/runners/r1/channel"),
        ("https://api.bencher.dev/", "wss://api.bencher.dev/v0/runners/r1/channel"),
        ("http://localhost:6610", "ws://localhost:6610/v0/runners/r1/channel"),
        ("https://example.com/base/api/", "wss://example.com/base/api/v0/runners/r1/channel"),
        ("ws://127.0.0.1:9", "ws://127.0.0.1:9/v0/runners/r1/channel"),
    ],
)
def test_channel_url(host: str, url: str) -> None:
    assert channel_url(host, "r1") == url


def _config(**flags: object) -> object:
    return load_config({"runner": "r1", **flags}, {}, None, default_config_file=None)


def test_plain_ws_to_remote_host_needs_insecure() -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        build_endpoint(_config(host="http://bench.example.com"))  # type: ignore[arg-type]
    endpoint = build_endpoint(_config(host="http://bench.example.com", insecure=True))  # type: ignore[arg-type]
    assert endpoint.ssl_context is None
    for host in ("http://127.0.0.1:1", "http://localhost:2", "http://[::1]:3"):
        assert build_endpoint(_config(host=host)).ssl_context is None  # type: ignore[arg-type]


def test_tls_verified_by_default_and_ca_bundle_errors(tmp_path: Path) -> None:
    import ssl

    endpoint = build_endpoint(_config())  # type: ignore[arg-type]
    assert endpoint.ssl_context is not None
    assert endpoint.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert endpoint.ssl_context.check_hostname
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca-bundle"):
        build_endpoint(_config(ca_bundle=bad))  # type: ignore[arg-type]


async def test_handshake_headers_and_no_subprotocol() -> None:
    seen: list[WebSocketRequest] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request)
        ws = await request.accept()
        await ws.send_message("hello")
        await ws.get_message()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            endpoint = build_endpoint(_config(host=f"http://127.0.0.1:{server.port}/base"))  # type: ignore[arg-type]
            async with open_channel(endpoint, KEY) as ws:
                assert await ws.get_message() == "hello"
                assert ws.subprotocol is None
                await close_channel(ws, 5)
            nursery.cancel_scope.cancel()
    (request,) = seen
    headers = {k.decode().lower(): v.decode() for k, v in request.headers}
    assert request.path == "/base/v0/runners/r1/channel"
    assert headers["authorization"] == f"Bearer {KEY}"
    assert "sec-websocket-protocol" not in headers
    assert "sec-websocket-extensions" not in headers


@pytest.mark.parametrize(("status", "kind"), [(401, "auth"), (403, "auth"), (429, "http")])
async def test_rejected_upgrade_is_classified(status: int, kind: str) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(status, body=b"no")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            endpoint = build_endpoint(_config(host=f"http://127.0.0.1:{server.port}"))  # type: ignore[arg-type]
            with pytest.raises(ConnectFailure) as info:
                async with open_channel(endpoint, KEY):
                    pass
            nursery.cancel_scope.cancel()
    assert info.value.kind == kind
    assert info.value.status == status
    assert KEY not in str(info.value)


async def test_connect_refused_is_network_failure() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    endpoint = build_endpoint(_config(host=f"http://127.0.0.1:{port}"))  # type: ignore[arg-type]
    with trio.fail_after(10):
        with pytest.raises(ConnectFailure) as info:
            async with open_channel(endpoint, KEY):
                pass
    assert info.value.kind == "network"


async def test_silent_server_hits_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    endpoint = build_endpoint(_config(host=f"http://127.0.0.1:{port}", connect_timeout=3))  # type: ignore[arg-type]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def accept_and_hold() -> None:
                stream = await listeners[0].accept()
                async with stream:
                    await trio.sleep_forever()

            nursery.start_soon(accept_and_hold)
            start = trio.current_time()
            with pytest.raises(ConnectFailure) as info:
                async with open_channel(endpoint, KEY):
                    pass
            assert info.value.kind == "timeout"
            assert trio.current_time() - start == pytest.approx(3)
            nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
