"""The ``--health-addr`` HTTP endpoint: ``/healthz`` and ``/metrics`` served under trio by hypercorn.

``serve_health(addr, stats)`` runs until cancelled (start it in the agent's root nursery with
``await nursery.start(serve_health, addr, stats)``; ``start`` returns the bound :class:`HealthAddr`,
whose port is the real one when ``addr`` asked for port 0).

- ``GET /healthz`` → ``200 ok: …`` when the server was heard within ``max_silence_s``, else ``503``
  with the reason (``degraded: …`` while a job runs without a server). JSON instead of text with
  ``?format=json`` or ``Accept: application/json``.
- ``GET /metrics`` → the Prometheus text format of the agent's private registry.

HTTP parsing is hypercorn's; this module only holds a tiny ASGI app, the address parsing and the
socket it hands to hypercorn (bound here, so a bad or busy address fails with a clear error before
anything is served).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qs

import click
import trio
from attrs import frozen
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from prometheus_client import CONTENT_TYPE_LATEST

from runner_agent.errors import AgentError
from runner_agent.telemetry import DEFAULT_MAX_SILENCE_S, AgentStats

log = logging.getLogger("runner_agent.health")

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_EXAMPLE = "e.g. 127.0.0.1:9100, 0.0.0.0:9100 or [::1]:9100"


class HealthAddrError(ValueError):
    """A ``--health-addr`` value that is not ``HOST:PORT``; the message says what is wrong."""


class HealthServerError(AgentError):
    """The health endpoint could not listen on its address."""


@frozen
class HealthAddr:
    """Where the health endpoint listens (``host`` without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9100``."""
        return f"http://{self}"


def parse_health_addr(text: str) -> HealthAddr:
    """Parse ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6; port 0 picks a free port)."""
    value = text.strip()
    if not value:
        raise HealthAddrError(f"empty address; expected HOST:PORT ({_EXAMPLE})")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise HealthAddrError(f"{text!r}: expected [IPv6]:PORT, e.g. [::1]:9100")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HealthAddrError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise HealthAddrError(f"{text!r}: missing port; expected HOST:PORT ({_EXAMPLE})")
        if not host:
            raise HealthAddrError(
                f"{text!r}: missing host; use 127.0.0.1:{port_text} for this machine only "
                f"or 0.0.0.0:{port_text} for all interfaces"
            )
        if ":" in host:
            raise HealthAddrError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:9100")
        if not _HOSTNAME_RE.match(host):
            raise HealthAddrError(f"{text!r}: {host!r} is not a host name or IP address")
    if not port_text.isascii() or not port_text.isdigit():
        raise HealthAddrError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise HealthAddrError(f"{text!r}: port {port} is out of range (0-65535)")
    return HealthAddr(host=host, port=port)


class HealthAddrParam(click.ParamType[HealthAddr]):
    """Click type for ``--health-addr HOST:PORT`` (a bad value exits 2 naming the option)."""

    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> HealthAddr:
        if isinstance(value, HealthAddr):
            return value
        try:
            return parse_health_addr(str(value))
        except HealthAddrError as error:
            self.fail(str(error), param, ctx)


HEALTH_ADDR = HealthAddrParam()


def _wants_json(scope: Scope) -> bool | None:
    """True/False from ``?format=``, else from the Accept header; None for a bad format."""
    query = parse_qs(cast(bytes, scope.get("query_string", b"")).decode("latin-1"))
    formats = query.get("format")
    if formats:
        fmt = formats[-1].lower()
        if fmt == "json":
            return True
        if fmt in ("text", "plain"):
            return False
        return None
    headers = cast("list[tuple[bytes, bytes]]", scope.get("headers", []))
    accept = b",".join(v for k, v in headers if k.lower() == b"accept").lower()
    return b"application/json" in accept


class HealthApp:
    """The ASGI application behind the endpoint (usable with any ASGI server)."""

    def __init__(self, stats: AgentStats, max_silence_s: float = DEFAULT_MAX_SILENCE_S) -> None:
        self.stats = stats
        self.max_silence_s = max_silence_s

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            # WebSocket requests: refuse the upgrade (an http.response would be an error here).
            await send({"type": "websocket.close", "code": 1008, "reason": "not supported"})
            return
        method = scope["method"]
        path = scope["path"]
        head_only = method == "HEAD"
        if path not in ("/healthz", "/metrics"):
            await self._respond(send, 404, "not found: try /healthz or /metrics\n", head_only)
            return
        if method not in ("GET", "HEAD"):
            await self._respond(
                send, 405, f"method {method} not allowed\n", head_only, [(b"allow", b"GET, HEAD")]
            )
            return
        if path == "/metrics":
            body = self.stats.render_metrics()
            await self._send(send, 200, body, CONTENT_TYPE_LATEST, head_only)
            return
        as_json = _wants_json(scope)
        if as_json is None:
            await self._respond(
                send, 400, "unknown format: use format=json or format=text\n", head_only
            )
            return
        report = self.stats.health(max_silence_s=self.max_silence_s)
        status = 200 if report.ok else 503
        if as_json:
            payload = json.dumps(report.to_json(), sort_keys=True).encode() + b"\n"
            await self._send(send, status, payload, "application/json", head_only)
        else:
            text = (
                report.reason
                if report.reason.startswith("degraded")
                else f"{report.status}: {report.reason}"
            )
            await self._respond(send, status, text + "\n", head_only)

    async def _lifespan(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _respond(
        self,
        send: ASGISendCallable,
        status: int,
        text: str,
        head_only: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await self._send(send, status, text.encode(), "text/plain; charset=utf-8", head_only, extra)

    async def _send(
        self,
        send: ASGISendCallable,
        status: int,
        body: bytes,
        content_type: str,
        head_only: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if head_only else body, "more_body": False}
        )


async def _bind(addr: HealthAddr) -> socket.socket:
    """A bound (not yet listening) TCP socket for ``addr``, or a clear HealthServerError."""
    try:
        infos = await trio.socket.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        raise HealthServerError(
            f"--health-addr {addr}: cannot resolve {addr.host!r}: {error}"
        ) from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise HealthServerError(f"--health-addr {addr}: cannot listen: {error}") from None
    return sock


async def serve_health(
    addr: str | HealthAddr,
    stats: AgentStats,
    *,
    max_silence_s: float = DEFAULT_MAX_SILENCE_S,
    task_status: trio.TaskStatus[HealthAddr] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/healthz`` and ``/metrics`` on ``addr`` until cancelled; ``started`` gets the bound address.

    Raises :class:`HealthAddrError` for a malformed address and :class:`HealthServerError` when it
    cannot be resolved or bound (both before ``task_status.started``).
    """
    where = addr if isinstance(addr, HealthAddr) else parse_health_addr(addr)
    sock = await _bind(where)
    bound = HealthAddr(host=where.host, port=sock.getsockname()[1])
    config = HypercornConfig()
    # Hypercorn adopts the already-bound socket by its descriptor (and closes it when done).
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 1.0
    config.include_server_header = False
    app = HealthApp(stats, max_silence_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, app, config, mode="asgi"))
        log.info("health endpoint on %s (/healthz, /metrics)", bound.url)
        task_status.started(bound)
