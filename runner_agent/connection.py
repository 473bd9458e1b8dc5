"""Opening the runner channel: URL, TLS, headers, timeouts, and one classified connect error.

- `channel_url(host, runner)`: ``{ws|wss}://host[:port][/base]/v0/runners/{runner}/channel`` —
  ``http`` → ``ws``, ``https`` → ``wss`` (``ws``/``wss`` kept), the host URL's base path kept
  (PROTOCOL.md §1.1).
- `build_endpoint(config)`: validates the transport (plain ``ws://`` to a non-loopback host needs
  ``--insecure``; TLS is always verified, ``--ca-bundle`` replaces the system CAs with a private CA).
- `open_channel(endpoint, key)`: async context manager; the WebSocket handshake with
  ``Authorization: Bearer <key>``, no subprotocol and no extensions (PROTOCOL.md §1.2-1.3), inside
  ``connect_timeout``; closing handshake bounded by ``close_timeout``. ``max_message_size`` bounds
  received messages too (trio-websocket closes with 1009 on a bigger one).
- Every failure to connect is raised as one `ConnectFailure` with a ``kind`` the reconnect loop acts
  on: ``auth`` (HTTP 401/403: the key is definitively rejected), ``http`` (other status), ``timeout``,
  ``tls`` (certificate problems: retried, but logged as such), ``network``.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import trio
from attrs import field, frozen
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from runner_agent import __version__
from runner_agent.config import Config, ConfigError

ConnectFailureKind = Literal["auth", "http", "timeout", "tls", "network"]
USER_AGENT = f"runner-agent/{__version__}"


class ConnectFailure(Exception):
    """The channel could not be opened; ``kind`` says how, ``str()`` says what happened."""

    def __init__(self, kind: ConnectFailureKind, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind: ConnectFailureKind = kind
        self.status = status


def channel_url(host: str, runner: str) -> str:
    """The channel URL for ``runner`` on ``host`` (PROTOCOL.md §1.1), base path kept."""
    parts = urlsplit(host)
    scheme = {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"}.get(parts.scheme)
    if scheme is None:
        raise ConfigError(f"host: expected an http:// or https:// URL, got {host!r}")
    base = parts.path.rstrip("/")
    path = f"{base}/v0/runners/{quote(runner, safe='')}/channel"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def is_loopback(hostname: str) -> bool:
    name = hostname.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@frozen
class Endpoint:
    """Everything needed to open the channel, except the key (read fresh at every connect)."""

    url: str
    ssl_context: ssl.SSLContext | None = field(eq=False, repr=False)
    connect_timeout: float = 30.0
    close_timeout: float = 5.0
    max_message_size: int = 4 * 1024 * 1024


def build_endpoint(config: Config) -> Endpoint:
    """Validate the transport settings; raises `ConfigError` with the fix."""
    if not config.runner:
        raise ConfigError("no runner given: pass --runner ID or set BENCHER_RUNNER")
    url = channel_url(config.host, config.runner)
    parts = urlsplit(url)
    context: ssl.SSLContext | None = None
    if parts.scheme == "ws":
        if not is_loopback(parts.hostname or "") and not config.insecure:
            raise ConfigError(
                f"host {config.host} is plain http:// to a non-loopback address: the runner key "
                "would travel unencrypted. Use https://, or pass --insecure if you really mean it"
            )
    else:
        try:
            context = ssl.create_default_context(
                cafile=str(config.ca_bundle) if config.ca_bundle is not None else None
            )
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"ca-bundle {config.ca_bundle}: cannot load certificates: {e}") from None
    return Endpoint(
        url=url,
        ssl_context=context,
        connect_timeout=config.connect_timeout,
        close_timeout=config.close_timeout,
        max_message_size=config.max_message_size,
    )


@asynccontextmanager
async def open_channel(endpoint: Endpoint, key: str) -> AsyncIterator[WebSocketConnection]:
    """Open the WebSocket for the body of the ``async with``; handshake failures become `ConnectFailure`.

    The handshake is bounded by ``connect_timeout`` and the closing handshake on exit by
    ``close_timeout`` (a close that times out is not an error: the connection is gone either way).
    """
    headers = [
        (b"Authorization", b"Bearer " + key.encode("ascii")),
        (b"User-Agent", USER_AGENT.encode("ascii")),
    ]
    entered = False
    # trio-websocket's own connect timeout leaves its reader task waiting on a silent peer, so the
    # handshake also runs under our own deadline, lifted once the connection is open.
    with trio.CancelScope(deadline=trio.current_time() + endpoint.connect_timeout) as handshake:
        try:
            async with open_websocket_url(
                endpoint.url,
                endpoint.ssl_context,
                extra_headers=headers,
                message_queue_size=1,
                max_message_size=endpoint.max_message_size,
                connect_timeout=endpoint.connect_timeout,
                disconnect_timeout=endpoint.close_timeout,
            ) as ws:
                entered = True
                handshake.deadline = math.inf
                yield ws
        except DisconnectionTimeout:
            return
        except Exception as e:
            if entered:
                raise
            raise _classify(e, endpoint) from None
    if handshake.cancelled_caught and not entered:
        if endpoint.ssl_context is not None:
            # trio-websocket does not surface a failed TLS handshake (it waits for the upgrade
            # until the deadline); find out whether that is what happened, for a useful error.
            await _diagnose_tls(endpoint)
        raise ConnectFailure("timeout", f"no handshake within {endpoint.connect_timeout:g} s")


async def _diagnose_tls(endpoint: Endpoint) -> None:
    """Raise a ``tls`` `ConnectFailure` if a bare TLS handshake with the server fails verification."""
    assert endpoint.ssl_context is not None
    parts = urlsplit(endpoint.url)
    host, port = parts.hostname or "", parts.port or 443
    with trio.move_on_after(min(endpoint.connect_timeout, 10.0)):
        try:
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=endpoint.ssl_context)
            try:
                await stream.do_handshake()
            finally:
                await trio.aclose_forcefully(stream)
        except (trio.BrokenResourceError, OSError) as e:
            cause = e.__cause__ if e.__cause__ is not None else e
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise ConnectFailure("tls", f"TLS certificate not trusted: {cause.verify_message} "
                                     "(use --ca-bundle for a private CA)") from None
            if isinstance(cause, ssl.SSLError):
                raise ConnectFailure("tls", f"TLS handshake failed: {cause}") from None


def _classify(e: Exception, endpoint: Endpoint) -> Exception:
    if isinstance(e, ConnectionTimeout):
        return ConnectFailure("timeout", f"no handshake within {endpoint.connect_timeout:g} s")
    if isinstance(e, ConnectionRejected):
        status = int(e.status_code)
        if status in (401, 403):
            return ConnectFailure("auth", f"HTTP {status} on the upgrade: the runner key was rejected",
                                  status)
        return ConnectFailure("http", f"HTTP {status} on the upgrade", status)
    cause = e.__cause__ if isinstance(e, HandshakeError) and e.__cause__ is not None else e
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ConnectFailure("tls", f"TLS certificate not trusted: {cause.verify_message}")
    if isinstance(cause, ssl.SSLError):
        return ConnectFailure("tls", f"TLS error: {cause}")
    if isinstance(cause, ConnectionClosed):
        return ConnectFailure("network", f"closed during the handshake: {cause.reason}")
    if isinstance(cause, OSError | trio.BrokenResourceError | trio.ClosedResourceError | HandshakeError):
        return ConnectFailure("network", f"{type(cause).__name__}: {cause}")
    return e


async def close_channel(ws: WebSocketConnection, within: float, code: int = 1000,
                        reason: str | None = None) -> None:
    """Closing handshake bounded by ``within`` seconds (a peer that never answers cannot hang us)."""
    with trio.move_on_after(within):
        try:
            await ws.aclose(code, reason)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
