"""``DevServer``: a Bencher-compatible runner channel server on trio-websocket, with a job store,
an in-process API for tests, fault switches, and optional persistence and spool directory.

Connections are served with ``trio.serve_listeners`` + trio-websocket's public
``wrap_server_stream``, so the server owns each raw TCP stream. That is how it "rejects without a
frame" like Bencher (accept the upgrade with 101, then close the TCP stream without a WebSocket
Close frame): trio-websocket's ``WebSocketServer`` always sends a Close frame when a handler
returns, and only a private attribute would reach its stream.

Known differences from Bencher's ``channel.rs`` (all due to trio-websocket or deliberate):

- a Ping is answered by trio-websocket but does not restart the IDLE inactivity timer (control
  frames are not surfaced to the handler);
- an over-size message makes trio-websocket send Close 1009 before the connection ends (Bencher
  just ends it); the limit counts characters of a text message, not UTF-8 bytes;
- no self-update check: ``update`` is only sent when a test sets ``faults.offer_update``;
- no billing, no spec/tier matching: any runner may claim a job unless it was submitted for one;
- result "processing" is a pluggable check (default: accept), so ``completed`` → ``processed``.

Typical test use::

    async with DevServer.start(settings=DevServerSettings(heartbeat_timeout=5)) as server:
        job = server.submit_job(config)
        ... point the agent at server.url with server.runner.slug and server.key ...
        record = await server.wait_for_status(job, {JobStatus.PROCESSED})
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4, uuid5

import trio
from attrs import evolve, frozen
from trio_websocket import WebSocketRequest, wrap_server_stream

from runner_agent.devserver.auth import (
    AuthError,
    RateLimiter,
    RunnerIdentity,
    authenticate,
    generate_key,
    resolve_runner,
    runner_ref_from_path,
)
from runner_agent.devserver.connection import Channel, ConnState, Ending, FrameLog, FrameRecord
from runner_agent.devserver.faults import Faults
from runner_agent.devserver.jobs import default_spec, to_wire
from runner_agent.devserver.settings import DevServerSettings
from runner_agent.devserver.spool import Spool
from runner_agent.devserver.store import (
    JobRecord,
    JobStatus,
    JobStore,
    ResultProcessor,
    process_all,
)
from runner_agent.protocol import JobConfig, Spec

log = logging.getLogger(__name__)

_RUNNER_NAMESPACE = UUID("0b3c9d7e-51a4-4f0e-9a57-3c2d1e0f4a6b")


@frozen
class ConnectionAttempt:
    """One WebSocket upgrade request on a channel path (counted before authentication)."""

    at: float  # trio clock
    ref: str  # the {runner} path segment
    runner: UUID | None  # the runner the segment names, if any
    outcome: str  # "accepted" | "auth_failed" | "rate_limited"


def runner_uuid_for(slug: str) -> UUID:
    """A stable UUID for a runner slug (so a restarted dev server keeps the same runner)."""
    return uuid5(_RUNNER_NAMESPACE, slug)


class DevServer:
    """A local Bencher-compatible channel server. Use :meth:`start` or run :meth:`serve`."""

    def __init__(
        self,
        *,
        runners: Sequence[RunnerIdentity] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: DevServerSettings | None = None,
        persist_path: Path | None = None,
        spool_dir: Path | None = None,
        wall_clock: Callable[[], float] | None = None,
        result_processor: ResultProcessor = process_all,
    ) -> None:
        self.key: str | None = None
        if runners is None:
            self.key = generate_key()
            runners = [RunnerIdentity.with_key(runner_uuid_for("dev-runner"), "dev-runner", self.key)]
        if not runners:
            raise ValueError("at least one runner is needed")
        self.runners = list(runners)
        self.host = host
        self.settings = settings or DevServerSettings()
        self.faults = Faults()
        self.attempts: list[ConnectionAttempt] = []
        self.frames: FrameLog = deque(maxlen=self.settings.frame_log_size)
        self._requested_port = port
        self._port: int | None = None
        self._wall_clock = wall_clock
        self._anchor: float | None = None
        self._changed = trio.Event()
        self.store = JobStore(
            wall_clock=self.wall_now,
            persist_path=persist_path,
            process_results=result_processor,
            on_change=self._job_changed,
        )
        self._spool = Spool(spool_dir, self._submit_parsed) if spool_dir is not None else None
        self._limiter = RateLimiter(self.settings.rate_limits) if self.settings.rate_limits else None
        self._channels: dict[int, Channel] = {}
        self._ids = itertools.count(1)
        self._watchers: dict[UUID, trio.CancelScope] = {}
        self._background: trio.Nursery | None = None
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self._crash = False

    # --- clock ---------------------------------------------------------------------------------

    def wall_now(self) -> float:
        """Seconds since the epoch, advancing with trio's clock (so ``MockClock`` drives it)."""
        if self._wall_clock is not None:
            return self._wall_clock()
        if self._anchor is None:
            self._anchor = time.time() - trio.current_time()
        return self._anchor + trio.current_time()

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def runner(self) -> RunnerIdentity:
        """The first (usually only) runner."""
        return self.runners[0]

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not listening yet")
        return self._port

    @property
    def authority(self) -> str:
        """``HOST:PORT`` for URLs (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The ``--host`` URL an agent uses (``http://HOST:PORT``)."""
        return f"http://{self.authority}"

    def channel_url(self, runner: str | None = None) -> str:
        return f"ws://{self.authority}/v0/runners/{runner or self.runner.slug}/channel"

    @classmethod
    @asynccontextmanager
    async def start(cls, **kwargs: Any) -> AsyncIterator[DevServer]:
        """Serve in the background for the ``async with`` body; shut down gracefully after.
        Takes the constructor's keyword arguments."""
        server = cls(**kwargs)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            try:
                yield server
            finally:
                await server.aclose()

    async def aclose(self) -> None:
        """Graceful shutdown: every connection gets Close 1001 ``server shutting down``."""
        self._shutdown.set()
        await self._stopped.wait()

    def shutdown(self) -> None:
        self._shutdown.set()

    async def abort(self) -> None:
        """Stop like a crashed server: every connection is dropped without a Close frame and no
        timeout task is started (a restarted server's startup sweep takes over)."""
        self._crash = True
        await self.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until :meth:`shutdown`/:meth:`aclose`; reports the port to ``start``.

        A corrupt persistence file (``ValueError``) or an address that cannot be bound
        (``OSError``) is raised as itself, before anything is served.
        """
        try:
            self.store.load()
            if self._spool is not None:
                self._spool.prepare()
                for record in self.store.all():
                    self._spool.write_job(record)
            listeners = await trio.open_tcp_listeners(self._requested_port, host=self.host)
            self._port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as background:
                self._background = background
                for job in self.store.startup_sweep(self.settings.heartbeat_timeout):
                    self.watch_job(job)
                if self._spool is not None:
                    background.start_soon(self._spool.run)
                async with trio.open_nursery() as connections:
                    listening = trio.CancelScope()

                    async def listen() -> None:
                        with listening:
                            await trio.serve_listeners(
                                self._handle_tcp, listeners, handler_nursery=connections
                            )

                    connections.start_soon(listen)
                    log.info("dev server listening on %s", self.url)
                    task_status.started(self.port)
                    await self._shutdown.wait()
                    listening.cancel()
                    for channel in list(self._channels.values()):
                        channel.end(self._final_ending())
                background.cancel_scope.cancel()
        finally:
            self._stopped.set()

    def _final_ending(self) -> Ending:
        if self._crash:
            return Ending(why="server crashed", watch_job=False, flush=False)
        return Ending.shutdown()

    # --- connections ---------------------------------------------------------------------------

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._handle_ws(nursery, stream)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle_ws(self, nursery: trio.Nursery, stream: trio.SocketStream) -> None:
        request: WebSocketRequest | None = None
        with trio.move_on_after(self.settings.connect_timeout):
            request = await wrap_server_stream(
                nursery, stream, max_message_size=self.settings.max_message_size
            )
        if request is None:  # the client never completed the handshake
            return
        ref = runner_ref_from_path(request.path)
        if ref is None:
            await request.reject(404, body=b"not found\n")
            return
        ws = await request.accept()  # Bencher authenticates only after the 101
        named = resolve_runner(self.runners, ref)
        try:
            runner = authenticate(self.runners, ref, request.headers)
            if self._limiter is not None:
                self._limiter.check(runner.uuid, trio.current_time())
        except AuthError as error:
            outcome = "rate_limited" if "Too many" in str(error) else "auth_failed"
            self._attempt(ref, named, outcome)
            log.info("connection for runner %r rejected (dropped without a frame): %s", ref, error)
            return
        self._attempt(ref, named, "accepted")
        channel = Channel(
            conn_id=next(self._ids),
            ws=ws,
            runner=runner,
            settings=self.settings,
            store=self.store,
            faults=self.faults,
            wall_clock=self.wall_now,
            watch_job=self.watch_job,
            notify=self._notify,
            frame_log=self.frames,
        )
        self._channels[channel.conn_id] = channel
        if self._shutdown.is_set():
            channel.end(self._final_ending())
        self._notify()
        try:
            ending = await channel.run()
        finally:
            del self._channels[channel.conn_id]
            self._notify()
        if ending.code is not None:
            with trio.move_on_after(self.settings.close_timeout):
                await ws.aclose(ending.code, ending.reason)

    def _attempt(self, ref: str, named: list[RunnerIdentity], outcome: str) -> None:
        runner = named[0].uuid if named else None
        self.attempts.append(ConnectionAttempt(trio.current_time(), ref, runner, outcome))
        self._notify()

    def connections(self, runner: UUID | None = None) -> list[Channel]:
        """Live connections (optionally of one runner), oldest first."""
        return [c for c in self._channels.values() if runner is None or c.runner.uuid == runner]

    def frames_received(self, event: str | None = None) -> list[FrameRecord]:
        """Text frames the runner sent (all connections, oldest first), optionally only those
        whose text contains ``"event":"<event>"``."""
        needle = None if event is None else f'"event":"{event}"'
        return [
            f for f in self.frames
            if f.direction == "in" and (needle is None or needle in f.text.replace(" ", ""))
        ]

    def connection_attempts(self, runner: UUID | None = None) -> int:
        """How many upgrade requests named this runner (or any runner), whatever their outcome."""
        return sum(1 for a in self.attempts if runner is None or a.runner == runner)

    async def wait_for_connection(self, state: ConnState | None = None) -> Channel:
        """The first live connection (in ``state``, if given), waiting for one."""

        def find() -> Channel | None:
            for channel in self._channels.values():
                if state is None or channel.state is state:
                    return channel
            return None

        await self.wait_until(lambda: find() is not None)
        found = find()
        assert found is not None
        return found

    def inject_frame(self, text: str, conn: Channel | None = None) -> None:
        """Send a raw text frame to one connection (default: every live connection)."""
        for channel in [conn] if conn is not None else self.connections():
            channel.inject(text)

    def close_connections(self, code: int, reason: str, conn: Channel | None = None) -> None:
        """End connections with a Close frame of this code and reason."""
        for channel in [conn] if conn is not None else self.connections():
            channel.end(Ending(why=f"closed by test ({code})", code=code, reason=reason, flush=False))

    def drop_connections(self, conn: Channel | None = None) -> None:
        """Drop connections' TCP streams without a Close frame."""
        for channel in [conn] if conn is not None else self.connections():
            channel.end(Ending(why="dropped by test", flush=False))

    # --- jobs ----------------------------------------------------------------------------------

    def submit_job(
        self,
        config: JobConfig,
        *,
        spec: Spec | None = None,
        timeout: int | None = None,
        runner: UUID | None = None,
        uuid: UUID | None = None,
    ) -> UUID:
        """Queue a job (pending); ``timeout`` overrides ``config.timeout``; ``runner`` restricts
        which runner may claim it. Returns the job UUID."""
        if timeout is not None:
            config = evolve(config, timeout=timeout)
        config_json, spec_json = to_wire(config, spec or default_spec())
        record = self.store.add(
            uuid=uuid or uuid4(),
            config=config_json,
            spec=spec_json,
            timeout=config.timeout,
            target_runner=runner,
        )
        return record.uuid

    def _submit_parsed(self, config: JobConfig, spec: Spec | None, timeout: int | None) -> UUID:
        return self.submit_job(config, spec=spec, timeout=timeout)

    def job(self, uuid: UUID) -> JobRecord:
        return self.store.get(uuid)

    def job_status(self, uuid: UUID) -> JobStatus:
        return self.store.get(uuid).status

    def cancel_job(self, uuid: UUID) -> JobRecord:
        """User cancel: the next ``running``/``heartbeat`` for it is answered ``cancel``."""
        return self.store.user_cancel(uuid)

    async def wait_for_status(self, uuid: UUID, statuses: Iterable[JobStatus]) -> JobRecord:
        wanted = frozenset(statuses)
        await self.wait_until(lambda: self.store.get(uuid).status in wanted)
        return self.store.get(uuid)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked on every job or connection change."""
        while not predicate():
            await self._changed.wait()

    def watch_job(self, job: UUID) -> None:
        """Start (or restart) the background heartbeat-timeout task for a job (§3.5)."""
        previous = self._watchers.pop(job, None)
        if previous is not None:
            previous.cancel()
        if self._background is None:
            return
        scope = trio.CancelScope()
        self._watchers[job] = scope
        self._background.start_soon(self._timeout_task, job, scope)

    async def _timeout_task(self, job: UUID, scope: trio.CancelScope) -> None:
        with scope:
            delay = self.settings.heartbeat_timeout
            while True:
                await trio.sleep(delay)
                following = self.store.background_check(
                    job, self.settings.heartbeat_timeout, self.settings.grace
                )
                if following is None:
                    break
                delay = following
        if self._watchers.get(job) is scope:
            del self._watchers[job]

    # --- change notification -------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _job_changed(self, record: JobRecord) -> None:
        if self._spool is not None:
            self._spool.write_job(record)
        self._notify()
