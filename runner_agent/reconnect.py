"""The connection loop: connect, run one session, classify how it ended, back off, repeat.

`ConnectionLoop.run()` owns everything between two WebSocket sessions: the key is read again before
every attempt (``--key-file`` rotation), the delay comes from `runner_agent.backoff.Backoff` (full
jitter, healthy reset, Bencher Cloud's 16/min, 256/h, 4096/day guard, longer waits when
authentication is probably rejected), and every reconnect reason is logged.

The session itself (reader, writer, heartbeat) belongs to the caller: ``session(ws)`` runs while the
connection is open and returns when it should end (its own nursery's cancel scope is the
"reconnect" switch). The loop calls ``frame_seen()`` hooks through `SessionLink.frame()`, which the
session's reader must call for every frame it receives — that is how an accepted connection is told
apart from Bencher's silent "accept, then close" rejection (PROTOCOL.md §1.2, §1.4).

Authentication policy (exit status 3, `AuthRejected`):
- HTTP 401/403 on the upgrade is definitive: the loop raises `AuthRejected` when ``may_exit()``
  says nothing is at stake (no running job).
- Repeated immediate closes without a frame (Bencher's real behaviour for a bad key *and* for an
  exceeded rate limit) are only *probable*: logged loudly and backed off (minutes, not seconds);
  with ``exit_on_auth_failure`` they also raise `AuthRejected`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import WebSocketConnection

from runner_agent.backoff import Backoff
from runner_agent.config import ConfigError
from runner_agent.connection import ConnectFailure, Endpoint, open_channel
from runner_agent.errors import AgentError

log = logging.getLogger("runner_agent.connection")

#: Prefix of a session's end reason when the agent closed the connection itself (ack timeout,
#: shutdown). The server kept such a connection open until we gave up, which is not Bencher's
#: "accept, then close at once" rejection, so it never counts towards a suspected auth failure.
AGENT_CLOSED = "closed_by_agent"


class AuthRejected(AgentError):
    """The server rejected our credentials (exit status 3)."""


class SessionLink:
    """What the loop hands a session: report frames (proves the server accepted us)."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self.frames = 0

    def frame(self) -> None:
        if self.frames == 0:
            self._backoff.record_frame()
        self.frames += 1


Session = Callable[[WebSocketConnection, SessionLink], Awaitable[str]]


class ConnectionLoop:
    """Reconnects forever (until ``stop()``), with backoff, around ``session``."""

    def __init__(
        self,
        endpoint: Endpoint,
        read_key: Callable[[], str],
        session: Session,
        backoff: Backoff,
        *,
        exit_on_auth_failure: bool = False,
        may_exit: Callable[[], bool] = lambda: True,
        on_reconnect: Callable[[str], None] | None = None,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._read_key = read_key
        self._session = session
        self.backoff = backoff
        self._exit_on_auth_failure = exit_on_auth_failure
        self._may_exit = may_exit
        self._on_reconnect = on_reconnect or (lambda reason: None)
        self._on_state = on_state or (lambda state: None)
        self._stop = trio.Event()
        self.attempts = 0
        self._auth_warned = False

    def stop(self) -> None:
        """End the loop after the current session (the session itself is ended by its owner)."""
        self._stop.set()

    async def run(self) -> None:
        """Loop until `stop()`; raises `AuthRejected` per the policy in the module docstring."""
        reason = "start-up"
        while not self._stop.is_set():
            delay = self.backoff.next_delay(trio.current_time())
            if delay > 0:
                self._on_state("backoff")
                log.info("reconnecting in %.1f s (%s)", delay, reason,
                         extra={"fields": {"delay_s": round(delay, 3), "reason": reason}})
                with trio.move_on_after(delay):
                    await self._stop.wait()
                if self._stop.is_set():
                    return
            reason = await self._attempt()
            if self._stop.is_set():
                return
            self._on_reconnect(reason)
            self._check_auth(reason)

    async def _attempt(self) -> str:
        now = trio.current_time()
        self.backoff.record_attempt(now)
        self.attempts += 1
        try:
            key = self._read_key()
        except ConfigError as e:
            log.error("cannot read the runner key: %s", e)
            return "key_unreadable"
        self._on_state("connecting")
        log.debug("connecting to %s", self.endpoint.url)
        link = SessionLink(self.backoff)
        reason = "connection_lost"
        try:
            async with open_channel(self.endpoint, key) as ws:
                self.backoff.record_connected(trio.current_time())
                self._on_state("connected")
                log.info("connected to %s", self.endpoint.url)
                try:
                    reason = await self._session(ws, link)
                finally:
                    if reason.startswith(AGENT_CLOSED):
                        link.frame()  # the server held the connection open: it accepted us
                    self.backoff.record_disconnected(trio.current_time())
        except ConnectFailure as e:
            if e.kind == "auth":
                self.backoff.record_rejected()
            log.warning("connect failed (%s): %s", e.kind, e,
                        extra={"fields": {"kind": e.kind, "status": e.status}})
            return f"connect_failed:{e.kind}"
        except Exception:
            # Whatever broke this connection (a library error while closing, a bug in a session
            # task, possibly as an exception group), the agent keeps serving: log it, reconnect.
            log.exception("connection failed unexpectedly; reconnecting")
            self._on_state("disconnected")
            return "protocol_error"
        self._on_state("disconnected")
        return reason

    def _check_auth(self, reason: str) -> None:
        if reason == "connect_failed:auth":
            log.error("the server rejected the runner key (HTTP 401/403): check --key/--key-file and "
                      "--runner; a rotated key must be installed on this machine")
            if self._may_exit():
                raise AuthRejected("authentication rejected by the server (HTTP 401/403)")
            return
        if self.backoff.auth_suspected:
            if not self._auth_warned:
                log.error(
                    "authentication probably rejected: %d connections in a row were closed right "
                    "after the upgrade without a single frame. Bencher answers a wrong or rotated "
                    "key (or a key for another runner, or too many connections) this way. Check the "
                    "key and --runner; backing off for minutes between attempts.",
                    self.backoff.immediate_closes,
                )
                self._auth_warned = True
            if self._exit_on_auth_failure and self._may_exit():
                raise AuthRejected("authentication probably rejected (repeated immediate closes)")
        else:
            self._auth_warned = False
