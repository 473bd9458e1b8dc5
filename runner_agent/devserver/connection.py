"""One accepted channel connection: Bencher's IDLE → POLLING → EXECUTING loop (PROTOCOL.md §3).

Theory of operation: the handler task reads frames itself (``get_message``) under the timer the
current state prescribes, decodes them with :mod:`runner_agent.protocol`, applies job-status
changes through the :class:`JobStore` and queues replies. A writer task sends queued frames in
order; an ack may carry a "not before" time (the ack-delay fault), which holds back everything
behind it, exactly like a slow peer would. :meth:`Channel.run` returns an :class:`Ending` saying
whether the connection must end with a Close frame (code + reason) or by dropping TCP without one;
the server performs it. Pings are answered by trio-websocket itself (so, unlike Bencher, a Ping does
not restart the IDLE timer: trio-websocket does not surface control frames).
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any
from uuid import UUID

import trio
from attrs import frozen
from trio_websocket import ConnectionClosed, WebSocketConnection

from runner_agent.devserver.auth import RunnerIdentity
from runner_agent.devserver.faults import Faults
from runner_agent.devserver.jobs import job_frame
from runner_agent.devserver.settings import DevServerSettings
from runner_agent.devserver.store import InvalidTransitionError, JobStore, TerminalReceipt
from runner_agent.devserver.token import make_oci_token
from runner_agent.protocol import (
    Ack,
    Cancel,
    Canceled,
    Completed,
    Failed,
    Heartbeat,
    NoJob,
    ProtocolError,
    Ready,
    RunnerMessage,
    Running,
    decode_runner,
    encode,
)

log = logging.getLogger(__name__)

SHUTDOWN_CODE = 1001
SHUTDOWN_REASON = "server shutting down"


class ConnState(enum.Enum):
    IDLE = "idle"
    POLLING = "polling"
    EXECUTING = "executing"
    ENDED = "ended"


@frozen
class Ending:
    """How a connection ends: ``code is None`` means drop TCP without a Close frame."""

    why: str
    code: int | None = None
    reason: str | None = None
    watch_job: bool = True  # spawn the background timeout task for an unfinished job
    flush: bool = True  # send queued frames before ending

    @classmethod
    def drop(cls, why: str) -> Ending:
        return cls(why=why)

    @classmethod
    def shutdown(cls) -> Ending:
        return cls(why="shutdown", code=SHUTDOWN_CODE, reason=SHUTDOWN_REASON, watch_job=False, flush=False)


@frozen
class FrameRecord:
    """One text frame on a connection (binary frames are summarised)."""

    at: float  # trio clock
    conn_id: int
    runner: UUID
    direction: str  # "in" (runner → server) | "out"
    text: str


FrameLog = deque[FrameRecord]

_PEER_GONE = object()


class Channel:
    """The server side of one runner connection."""

    def __init__(
        self,
        *,
        conn_id: int,
        ws: WebSocketConnection,
        runner: RunnerIdentity,
        settings: DevServerSettings,
        store: JobStore,
        faults: Faults,
        wall_clock: Callable[[], float],
        watch_job: Callable[[UUID], None],
        notify: Callable[[], None],
        frame_log: FrameLog,
    ) -> None:
        self.conn_id = conn_id
        self.runner = runner
        self.state = ConnState.IDLE
        self.job: UUID | None = None
        self._frame_log = frame_log
        self._ws = ws
        self._settings = settings
        self._store = store
        self._faults = faults
        self._wall_clock = wall_clock
        self._watch_job = watch_job
        self._notify = notify
        self._poll_timeout = settings.default_poll_timeout
        self._window_start = 0.0
        self._scope = trio.CancelScope()
        self._external: Ending | None = None
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[float, str]](math.inf)

    # --- control from outside (server / tests) -------------------------------------------------

    def end(self, ending: Ending) -> None:
        """End this connection as soon as possible (shutdown, test-induced close or drop)."""
        if self._external is None:
            self._external = ending
        self._scope.cancel()

    def inject(self, text: str) -> None:
        """Queue a raw text frame (garbage, an unknown event, an ``update``…) to the runner."""
        self._queue(text)

    # --- main ----------------------------------------------------------------------------------

    async def run(self) -> Ending:
        async with trio.open_nursery() as nursery:
            writer_done = trio.Event()
            nursery.start_soon(self._writer, writer_done)
            ending: Ending | None = None
            with self._scope:
                try:
                    ending = await self._loop()
                except OSError as error:
                    # The store could not save a change (Bencher: a database error in the
                    # handler): drop this connection without a reply, as Bencher does; the
                    # background timeout task watches an unfinished job.
                    log.error("connection %d: handler error: %s", self.conn_id, error)
                    ending = Ending.drop(f"handler error: {error}")
            if self._external is not None and (ending is None or self._scope.cancelled_caught):
                ending = self._external
            assert ending is not None
            if ending.flush:
                self._out_send.close()
                with trio.move_on_after(self._settings.close_timeout):
                    await writer_done.wait()
            nursery.cancel_scope.cancel()
        if ending.watch_job and self.state is ConnState.EXECUTING and self.job is not None:
            self._watch_job(self.job)
        self.state = ConnState.ENDED
        self._notify()
        log.info("connection %d (%s) ended: %s", self.conn_id, self.runner.slug, ending.why)
        return ending

    async def _loop(self) -> Ending:
        while True:
            if self.state is ConnState.IDLE:
                ending = await self._idle()
            elif self.state is ConnState.POLLING:
                ending = await self._polling()
            else:
                ending = await self._executing()
            if ending is not None:
                return ending

    def _set_state(self, state: ConnState, job: UUID | None = None) -> None:
        self.state = state
        self.job = job
        self._notify()

    # --- I/O helpers ---------------------------------------------------------------------------

    async def _receive(self) -> str | bytes | object:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed:
            return _PEER_GONE
        self._record("in", message)
        return message

    def _queue(self, text: str, not_before: float = 0.0) -> None:
        try:
            self._out_send.send_nowait((not_before, text))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            log.debug("connection %d: frame not sent, connection ending", self.conn_id)

    def _send_ack(self, job: UUID) -> str:
        if self._faults.withhold_acks:
            self._faults.acks_withheld += 1
            return "ack_withheld"
        delay = self._faults.ack_delay
        self._queue(encode(Ack(job=job)), trio.current_time() + delay if delay else 0.0)
        return "acked"

    async def _writer(self, done: trio.Event) -> None:
        try:
            async for not_before, text in self._out_recv:
                if not_before:
                    await trio.sleep_until(not_before)
                await self._ws.send_message(text)
                self._record("out", text)
        except ConnectionClosed:
            log.debug("connection %d: peer gone while sending", self.conn_id)
        finally:
            done.set()

    def _record(self, direction: str, message: str | bytes) -> None:
        text = message if isinstance(message, str) else f"<binary {len(message)} bytes>"
        self._frame_log.append(
            FrameRecord(at=trio.current_time(), conn_id=self.conn_id, runner=self.runner.uuid,
                        direction=direction, text=text)
        )
        self._notify()

    # --- IDLE ----------------------------------------------------------------------------------

    async def _idle(self) -> Ending | None:
        with trio.move_on_after(self._settings.heartbeat_timeout) as timer:
            frame = await self._receive()
        if timer.cancelled_caught:
            return Ending.drop("idle timeout waiting for ready")
        if frame is _PEER_GONE:
            return Ending.drop("peer closed the connection")
        if not isinstance(frame, str):
            return None  # binary: ignored
        try:
            message = decode_runner(frame)
        except ProtocolError as error:
            return Ending.drop(f"unparseable message in IDLE: {error}")
        if isinstance(message, Ready):
            if self._faults.update is not None:
                self._queue(encode(self._faults.update))
                return Ending.drop("update offered")
            self._poll_timeout = message.poll_timeout or self._settings.default_poll_timeout
            self._set_state(ConnState.POLLING)
            return None
        if isinstance(message, Running | Heartbeat):
            log.info("connection %d: unexpected %s in IDLE, ignored", self.conn_id, type(message).__name__)
            return None
        return self._idle_terminal(message, frame)

    def _idle_terminal(self, message: Completed | Failed | Canceled, frame: str) -> Ending | None:
        event = _event_name(message)
        if self._faults.take_discard():
            self._receipt(message.job, event, "idle", "discarded", frame)
            return None
        record = self._store.find(message.job)
        if record is None or record.runner != self.runner.uuid:
            log.info("connection %d: %s for unknown/foreign job %s, acked", self.conn_id, event, message.job)
        else:
            try:
                self._apply_terminal(message.job, message, frame)
            except InvalidTransitionError as error:
                self._receipt(message.job, event, "idle", "dropped", frame)
                return Ending.drop(str(error))
        outcome = self._send_ack(message.job)
        self._receipt(message.job, event, "idle", outcome, frame)
        return None

    # --- POLLING -------------------------------------------------------------------------------

    async def _polling(self) -> Ending | None:
        deadline = trio.current_time() + self._poll_timeout
        while True:
            record = self._store.claim(self.runner.uuid)
            if record is not None:
                token = make_oci_token(
                    runner=self.runner.uuid,
                    project=UUID(record.config["project"]),
                    issued_at=int(self._wall_clock()),
                    issuer=self._settings.issuer,
                )
                self._queue(
                    job_frame(
                        uuid=record.uuid,
                        config=record.config,
                        spec=record.spec,
                        timeout=record.timeout,
                        created=record.created,
                        oci_token=token,
                    )
                )
                self._window_start = trio.current_time()
                self._set_state(ConnState.EXECUTING, record.uuid)
                return None
            now = trio.current_time()
            if now >= deadline:
                self._queue(encode(NoJob()))
                self._set_state(ConnState.IDLE)
                return None
            with trio.move_on_after(min(self._settings.poll_interval, deadline - now)):
                frame = await self._receive()
                if frame is _PEER_GONE:
                    return Ending.drop("peer closed the connection")
                log.info("connection %d: unexpected frame during polling, discarded", self.conn_id)

    # --- EXECUTING -----------------------------------------------------------------------------

    async def _executing(self) -> Ending | None:
        job = self.job
        assert job is not None
        with trio.move_on_at(self._window_start + self._settings.heartbeat_timeout) as timer:
            frame = await self._receive()
        if timer.cancelled_caught:
            reason = self._store.window_expired(job, self._settings.grace)
            return Ending(why=f"heartbeat window expired ({reason})", code=1000, reason=json.dumps(reason), watch_job=False)
        if frame is _PEER_GONE:
            return Ending.drop("peer closed the connection during a job")
        if not isinstance(frame, str):
            return None
        try:
            message = decode_runner(frame)
        except ProtocolError as error:
            log.info("connection %d: unparseable message while executing, ignored: %s", self.conn_id, error)
            return None
        if isinstance(message, Ready):
            self._send_ack(job)  # no timer reset
            return None
        if isinstance(message, Running | Heartbeat):
            if isinstance(message, Running):
                cancel = self._store.running(job)
            else:
                cancel = self._store.heartbeat(job, self._settings.grace)
            if cancel:
                self._queue(encode(Cancel()))
                self._set_state(ConnState.IDLE)
                return None
            self._send_ack(job)
            self._window_start = trio.current_time()
            return None
        return self._executing_terminal(job, message, frame)

    def _executing_terminal(
        self, job: UUID, message: Completed | Failed | Canceled, frame: str
    ) -> Ending | None:
        event = _event_name(message)
        if self._faults.take_discard():
            self._receipt(message.job, event, "executing", "discarded", frame)
            return None
        if message.job != job:
            log.warning(
                "connection %d: %s names job %s but the current job is %s; applying to the current job",
                self.conn_id, event, message.job, job,
            )
        try:
            self._apply_terminal(job, message, frame)
        except InvalidTransitionError as error:
            self._receipt(job, event, "executing", "dropped", frame)
            return Ending.drop(str(error))
        outcome = self._send_ack(job)
        self._receipt(job, event, "executing", outcome, frame)
        self._set_state(ConnState.IDLE)
        return None

    # --- shared --------------------------------------------------------------------------------

    def _apply_terminal(self, job: UUID, message: RunnerMessage, frame: str) -> None:
        if isinstance(message, Completed):
            self._store.completed(job, _wire_results(frame))
        elif isinstance(message, Failed):
            self._store.failed(job, _wire_results(frame), message.error)
        elif isinstance(message, Canceled):
            self._store.canceled(job)

    def _receipt(self, job: UUID, event: str, path: str, outcome: str, frame: str) -> None:
        self._store.record_terminal(
            job,
            TerminalReceipt(
                event=event, job=job, at=self._wall_clock(), path=path, outcome=outcome, text=frame
            ),
        )


def _event_name(message: Completed | Failed | Canceled) -> str:
    return type(message).__name__.lower()


def _wire_results(frame: str) -> list[dict[str, Any]]:
    """The ``results`` array exactly as received (the frame has already been validated)."""
    results: list[dict[str, Any]] = json.loads(frame)["results"]
    return results
