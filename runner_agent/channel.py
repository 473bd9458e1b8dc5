"""The sans-IO runner channel: Bencher's protocol as a pure state machine (no trio, no sockets, no clock).

Theory of operation
===================

Like h11's ``Connection``, :class:`Channel` is a plain object that is *told* what happened
(:data:`Event`) and answers with what to do (:data:`Effect`). It never reads a clock (time comes in as
``now`` on every event), never touches a socket or a file, and never raises: bad input becomes a
:class:`Log` effect. The trio driver (``agent.py``) performs effects in order and feeds events back.

Two things live on independent tracks and are modelled separately:

* **The connection** (``conn``: disconnected / connecting / open / closing) and what the server
  believes on it. Bencher's server is IDLE after connect, POLLING after ``ready`` until it answers
  ``job``/``no_job``/``update``, and EXECUTING one job from ``job`` until it answers that job's terminal
  message or a ``cancel`` (PROTOCOL.md §3). We mirror that in ``polling`` and ``executing``.
* **The job** (:class:`JobState`): claimed → preparing (image pull; may overlap the wait for the reply
  to ``running``) → benchmark started (only after that reply was an ``ack``) → finished. A job outlives
  connections: after a reconnect the server is IDLE and cannot re-attach it (§7 item 2), so we send no
  ``ready``, expect no replies, keep the socket alive with WebSocket pings and deliver the terminal
  message through the server's IDLE path when the job ends.

Exact reply correlation: the server answers ``running``, ``heartbeat`` and terminal messages in order,
each with ``ack`` (or ``cancel`` instead of the ack for ``running``/``heartbeat``); every ack carries the
*current* job uuid, so the uuid cannot say which message is answered. We keep a FIFO of sent messages
awaiting a reply on this connection and pop it per ``ack``/``cancel``. After a ``cancel`` the server is
IDLE and ignores ``running``/``heartbeat``, so those entries are dropped (terminal entries stay: the IDLE
path acks them). A stale heartbeat ack therefore never counts as the terminal message's ack.

Delivery: every terminal message is persisted (:class:`PersistMessage`) before each send and stays
pending until its own ack (:class:`DeleteMessage`). Pending messages are sent one at a time, oldest
first, before any ``ready``, on every connection; a message whose attempts are exhausted is
dead-lettered (:class:`DeadLetter`), never dropped silently. A reply that does not come within
``ack_timeout`` means the connection is presumed dead: we close it and reconnect (the message is sent
again first thing on the next connection).

How a driver uses it
--------------------

1. Build ``Channel(ChannelConfig(...))``. Load the outbox and feed ``Started(now, pending)`` with the
   stored messages oldest first; perform the returned effects (a :class:`Connect`).
2. Perform effects strictly in order. :class:`Connect` → open a WebSocket after the backoff delay, then
   feed :class:`ConnectionOpened` or :class:`ConnectFailed`. :class:`CloseConnection` → close the socket;
   when it is gone feed :class:`ConnectionClosed`.
3. Decode every Text frame with ``protocol.decode_server``; feed :class:`FrameReceived`, or
   :class:`BadFrame` with the ``ProtocolError`` text. Feed :class:`PongReceived` for pongs and
   :class:`ConnectionClosed` (close code and raw reason, or ``code=None`` with an error for a TCP drop).
4. Keep one deadline per :class:`TimerName`: :class:`SetTimer` replaces it, :class:`CancelTimer` clears
   it; when it passes feed :class:`TimerFired` (a stale one is ignored, so races are harmless).
5. :class:`Send` → ``protocol.encode`` and send as a Text frame; :class:`SendPing` → WebSocket ping.
   :class:`PersistMessage` → ``outbox.put(message, attempts)`` *before* performing the following
   :class:`Send`; :class:`DeleteMessage` → ``outbox.remove``; :class:`DeadLetter` →
   ``outbox.dead_letter`` with the message it carries (the outbox may never have stored it). If an
   outbox write fails, log it and carry on: the channel still holds the message in memory and the
   next :class:`PersistMessage` for it retries the write; a failed dead-letter logs the message.
6. :class:`PrepareJob` → start preparing the job (pull, unpack) in the job task and feed
   :class:`ImageReady` when done. :class:`StartBenchmark` → run it. :class:`AbortJob` → cancel the job
   task (kill ladder). Whatever happens, the job task ends with exactly one :class:`JobFinished` carrying
   the terminal message it built (an aborted job reports ``failed`` with ``AbortJob.reason`` as error and
   its partial results; the channel substitutes ``canceled`` where the server canceled it).
7. Signals: feed ``Shutdown(now, 1)`` (drain: no new jobs, finish and deliver) and ``Shutdown(now, 2)``
   (abort the job, report it failed, deliver); a third signal is the driver's own business (exit now,
   the outbox keeps the result). ``--exit-after-jobs`` is a ``Shutdown(now, 1)`` fed right after the
   N-th :class:`JobFinished`.
8. :class:`Exit` → close the connection if open, end the program. Log every :class:`Log` effect.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TypeAlias
from uuid import UUID

from attrs import define, field, frozen

from runner_agent.protocol import (
    Ack,
    Cancel,
    Canceled,
    ClaimedJob,
    Completed,
    Failed,
    Heartbeat,
    NoJob,
    Ready,
    RunnerMessage,
    RunnerMetadata,
    Running,
    ServerMessage,
    TerminalMessage,
    Update,
    parse_close_reason,
    terminal_job,
)
from runner_agent.validators import positive

# ------------------------------------------------------------------------------------------------
# Configuration


_positive = positive("channel")


def _poll_timeout(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 900:
        raise ValueError(f"poll_timeout must be an integer 1..900, got {value!r}")


@frozen
class ChannelConfig:
    """Protocol tunables (seconds unless noted)."""

    poll_timeout: int = field(default=55, validator=_poll_timeout)
    poll_margin: float = field(default=30.0, validator=_positive)
    heartbeat_interval: float = field(default=1.0, validator=_positive)
    ack_timeout: float = field(default=10.0, validator=_positive)
    max_attempts: int = field(default=10, validator=_positive)
    ping_interval: float = field(default=20.0, validator=_positive)
    runner: RunnerMetadata | None = None
    """Sent in ``ready`` only when set; by default none, so Bencher never offers an ``update``."""


# ------------------------------------------------------------------------------------------------
# Events (driver → channel)


class TimerName(enum.StrEnum):
    POLL = "poll"
    """Waiting for ``job``/``no_job`` after ``ready`` (poll_timeout + margin)."""
    HEARTBEAT = "heartbeat"
    """Next ``heartbeat`` while the server executes our job."""
    ACK = "ack"
    """The oldest message awaiting a reply on this connection is overdue."""
    PING = "ping"
    """Next keep-alive WebSocket ping while a job runs detached from the server."""


@frozen
class Pending:
    """A stored terminal message handed over at start-up."""

    message: TerminalMessage
    attempts: int = 0


@frozen
class Started:
    now: float
    pending: tuple[Pending, ...] = ()


@frozen
class ConnectionOpened:
    now: float


@frozen
class ConnectFailed:
    now: float
    error: str


@frozen
class ConnectionClosed:
    """The connection ended: a Close frame (``code``, raw ``reason``) or ``code=None`` for a drop."""

    now: float
    code: int | None = None
    reason: str = ""
    error: str | None = None


@frozen
class FrameReceived:
    now: float
    message: ServerMessage


@frozen
class BadFrame:
    """A Text frame that ``decode_server`` rejected."""

    now: float
    error: str
    text: str = ""


@frozen
class PongReceived:
    now: float


@frozen
class TimerFired:
    now: float
    name: TimerName


@frozen
class ImageReady:
    now: float
    job: UUID


@frozen
class JobFinished:
    now: float
    message: TerminalMessage


@frozen
class Shutdown:
    """1 = drain (finish the job, deliver, exit); 2 = abort the job, report it failed, deliver, exit."""

    now: float
    level: int


Event: TypeAlias = (
    Started
    | ConnectionOpened
    | ConnectFailed
    | ConnectionClosed
    | FrameReceived
    | BadFrame
    | PongReceived
    | TimerFired
    | ImageReady
    | JobFinished
    | Shutdown
)

# ------------------------------------------------------------------------------------------------
# Effects (channel → driver)


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@frozen
class Log:
    level: LogLevel
    text: str


@frozen
class Connect:
    """Open a new connection (after the backoff delay)."""

    reason: str


@frozen
class CloseConnection:
    reason: str


@frozen
class Send:
    message: RunnerMessage


@frozen
class SendPing:
    pass


@frozen
class SetTimer:
    name: TimerName
    deadline: float


@frozen
class CancelTimer:
    name: TimerName


@frozen
class PrepareJob:
    """Start pulling/unpacking the job's image now; report :class:`ImageReady`."""

    job: ClaimedJob


@frozen
class StartBenchmark:
    job: UUID


@frozen
class AbortJob:
    """Stop the job (preparation or benchmark) and report :class:`JobFinished`."""

    job: UUID
    reason: str
    canceled_by_server: bool


@frozen
class PersistMessage:
    """Durably store ``message`` with ``attempts`` (write it before the next :class:`Send`)."""

    message: TerminalMessage
    attempts: int


@frozen
class DeleteMessage:
    job: UUID


@frozen
class DeadLetter:
    """Move ``message`` to the dead-letter folder: ``attempts`` sends got no ack. It carries the
    message itself, so it can be kept even when it never reached the outbox (e.g. a full disk)."""

    message: TerminalMessage
    attempts: int
    reason: str

    @property
    def job(self) -> UUID:
        return terminal_job(self.message)


@frozen
class Exit:
    pass


Effect: TypeAlias = (
    Log
    | Connect
    | CloseConnection
    | Send
    | SendPing
    | SetTimer
    | CancelTimer
    | PrepareJob
    | StartBenchmark
    | AbortJob
    | PersistMessage
    | DeleteMessage
    | DeadLetter
    | Exit
)

# ------------------------------------------------------------------------------------------------
# State


class ConnState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"


class ReplyTo(enum.StrEnum):
    RUNNING = "running"
    HEARTBEAT = "heartbeat"
    TERMINAL = "terminal"


@frozen
class Awaiting:
    """A sent message awaiting its reply on the current connection."""

    kind: ReplyTo
    job: UUID
    sent_at: float


@define
class JobState:
    """The one job this runner holds (mutable: it moves through its phases)."""

    claimed: ClaimedJob
    go: bool = False
    """The reply to ``running`` was an ``ack``: the benchmark may start."""
    image_ready: bool = False
    started: bool = False
    aborting: str | None = None
    forced: TerminalMessage | None = None
    """Outcome decided by the channel (server cancel, abort before start), whatever the job reports."""

    @property
    def uuid(self) -> UUID:
        return self.claimed.uuid


@define
class PendingDelivery:
    message: TerminalMessage
    attempts: int
    persisted: bool
    """Written to the outbox with the current attempt count."""


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


class Channel:
    """The runner side of one Bencher channel, across connections. See the module docstring."""

    def __init__(self, config: ChannelConfig | None = None) -> None:
        self.config = config if config is not None else ChannelConfig()
        self.conn = ConnState.DISCONNECTED
        self.polling = False
        self.executing: UUID | None = None
        self.fifo: deque[Awaiting] = deque()
        self.pending: dict[UUID, PendingDelivery] = {}
        self.job: JobState | None = None
        self.shutdown_level = 0
        self.started = False
        self.exited = False
        self.timers: dict[TimerName, float] = {}
        self.ping_sent_at: float | None = None
        self._out: list[Effect] = []

    # -- public ----------------------------------------------------------------------------------

    @property
    def server_state(self) -> str:
        """What the server believes on the current connection: idle, polling or executing."""
        if self.conn is not ConnState.OPEN and self.conn is not ConnState.CLOSING:
            return "none"
        if self.polling:
            return "polling"
        return "executing" if self.executing is not None else "idle"

    def step(self, event: Event) -> list[Effect]:
        """Feed one event; returns the effects to perform, in order. Never raises."""
        self._out = []
        try:
            if self.exited:
                self._log(LogLevel.DEBUG, f"ignoring {type(event).__name__} after exit")
            else:
                self._dispatch(event)
                self._pump(event.now)
                self._persist_new()
        except Exception as exc:  # the last line of defence: a bug must not kill the agent
            self._log(LogLevel.ERROR, f"internal error handling {event!r}: {exc!r}")
        out, self._out = self._out, []
        return out

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        match event:
            case Started():
                self._on_started(event)
            case ConnectionOpened():
                self._on_opened(event)
            case ConnectFailed():
                self._on_connect_failed(event)
            case ConnectionClosed():
                self._on_closed(event)
            case FrameReceived():
                self._on_frame(event.now, event.message)
            case BadFrame():
                self._log(
                    LogLevel.WARNING,
                    f"ignoring undecodable frame from server ({self.server_state}): "
                    f"{event.error}; frame: {_short(event.text)!r}",
                )
            case PongReceived():
                self.ping_sent_at = None
            case TimerFired():
                self._on_timer(event)
            case ImageReady():
                self._on_image_ready(event)
            case JobFinished():
                self._on_job_finished(event)
            case Shutdown():
                self._on_shutdown(event)
            case _:
                self._log(LogLevel.ERROR, f"unknown event {event!r}")

    def _on_started(self, event: Started) -> None:
        if self.started:
            self._log(LogLevel.WARNING, "Started fed twice; ignoring the second one")
            return
        self.started = True
        for item in event.pending:
            self._queue(item.message, item.attempts, persisted=True)
        if event.pending:
            self._log(
                LogLevel.INFO,
                f"{len(event.pending)} undelivered result(s) from an earlier run will be sent first",
            )
        self._connect("start-up")

    def _on_opened(self, event: ConnectionOpened) -> None:
        if self.conn is not ConnState.CONNECTING:
            self._log(LogLevel.WARNING, f"connection opened while {self.conn}; treating it as new")
        self._reset_connection()
        self.conn = ConnState.OPEN
        what = "idle"
        if self.job is not None:
            what = f"job {self.job.uuid} still running (detached: the server cannot re-attach it)"
        self._log(LogLevel.INFO, f"connected; {len(self.pending)} result(s) to deliver; {what}")

    def _on_connect_failed(self, event: ConnectFailed) -> None:
        if self.conn is not ConnState.CONNECTING:
            self._log(LogLevel.WARNING, f"connect failure reported while {self.conn}: {event.error}")
        self.conn = ConnState.DISCONNECTED
        self._log(LogLevel.WARNING, f"connection attempt failed: {event.error}")
        self._after_disconnect(f"connect failed: {event.error}")

    def _on_closed(self, event: ConnectionClosed) -> None:
        if self.conn is ConnState.DISCONNECTED:
            self._log(LogLevel.DEBUG, "connection-closed reported while already disconnected")
            return
        if event.code is None:
            why = f"connection lost ({event.error or 'no close frame'})"
        else:
            reason = parse_close_reason(event.reason)
            why = f"server closed the connection: code {event.code}, reason {reason!r}"
            if event.error:
                why += f" ({event.error})"
        self._log(LogLevel.WARNING if self.conn is ConnState.OPEN else LogLevel.INFO, why)
        self.conn = ConnState.DISCONNECTED
        lost = [a for a in self.fifo if a.kind is ReplyTo.TERMINAL]
        for a in lost:
            self._log(LogLevel.WARNING, f"result of job {a.job} was not acknowledged; it will be re-sent")
        self._reset_connection()
        job = self.job
        if job is not None and not job.go and job.aborting is None:
            # The reply to `running` can never come now (the server is IDLE on the next
            # connection), so the benchmark must not start: the job fails without running.
            reason = "connection lost before the server confirmed the job (no reply to running)"
            self._abort(job, reason, canceled_by_server=False, forced=Failed(job.uuid, (), reason))
        self._after_disconnect(why)

    def _after_disconnect(self, why: str) -> None:
        if self._ready_to_exit():
            self._exit("shutdown complete")
        else:
            self._connect(why)

    # -- frames ----------------------------------------------------------------------------------

    def _on_frame(self, now: float, msg: ServerMessage) -> None:
        if self.conn is not ConnState.OPEN and self.conn is not ConnState.CLOSING:
            self._log(LogLevel.WARNING, f"frame {type(msg).__name__} while {self.conn}; ignored")
            return
        match msg:
            case Ack():
                self._on_ack(msg)
            case Cancel():
                self._on_cancel()
            case ClaimedJob():
                self._on_job(now, msg)
            case NoJob():
                if not self.polling:
                    self._log(LogLevel.WARNING, "unexpected no_job (we were not polling); ignored")
                    return
                self.polling = False
                self._cancel_timer(TimerName.POLL)
                self._log(LogLevel.DEBUG, "no_job: polling again")
            case Update():
                self._log(
                    LogLevel.WARNING,
                    f"server offered update {msg.version} ({msg.url}); this agent does not "
                    "self-update, ignoring it (the server may now close the connection)",
                )
            case _:
                self._log(LogLevel.WARNING, f"unhandled server message {msg!r}; ignored")

    def _on_ack(self, ack: Ack) -> None:
        if not self.fifo:
            self._log(LogLevel.WARNING, f"unexpected ack (nothing awaits a reply): {ack!r}")
            return
        head = self.fifo.popleft()
        self._arm_ack_timer()
        if ack.job is not None and ack.job != head.job:
            self._log(
                LogLevel.ERROR,
                f"ack for {head.kind} of job {head.job} names job {ack.job}; the server applied "
                "it to another job",
            )
        match head.kind:
            case ReplyTo.RUNNING:
                job = self.job
                if job is None or job.uuid != head.job:
                    self._log(LogLevel.INFO, f"running of job {head.job} acked after the job ended")
                    return
                job.go = True
                self._log(LogLevel.INFO, f"job {job.uuid}: server confirmed running")
                self._maybe_start(job)
            case ReplyTo.HEARTBEAT:
                self._log(LogLevel.DEBUG, f"heartbeat of job {head.job} acked")
            case ReplyTo.TERMINAL:
                if self.executing == head.job:
                    self.executing = None  # the server is IDLE again
                    self._cancel_timer(TimerName.HEARTBEAT)
                delivered = self.pending.pop(head.job, None)
                self._out.append(DeleteMessage(head.job))
                kind = type(delivered.message).__name__.lower() if delivered else "result"
                self._log(LogLevel.INFO, f"job {head.job}: {kind} delivered and acknowledged")

    def _on_cancel(self) -> None:
        if not self.fifo or self.fifo[0].kind is ReplyTo.TERMINAL:
            self._log(LogLevel.WARNING, "unexpected cancel (no running/heartbeat awaits a reply); ignored")
            return
        head = self.fifo.popleft()
        # The server is IDLE now: it will not answer running/heartbeat sent before we noticed.
        self.fifo = deque(a for a in self.fifo if a.kind is ReplyTo.TERMINAL)
        self._arm_ack_timer()
        self.executing = None
        self._cancel_timer(TimerName.HEARTBEAT)
        job = self.job
        if job is None or job.uuid != head.job:
            self._log(LogLevel.INFO, f"job {head.job}: server canceled it after it ended")
            return
        self._log(LogLevel.WARNING, f"job {job.uuid}: canceled by the server")
        self._abort(
            job, "canceled by the server", canceled_by_server=True, forced=Canceled(job=job.uuid)
        )

    def _on_job(self, now: float, claimed: ClaimedJob) -> None:
        if not self.polling or self.job is not None:
            self._log(
                LogLevel.ERROR,
                f"server sent job {claimed.uuid} while we were not asking for one "
                f"({self.server_state}); not running it (the server will time it out)",
            )
            return
        self.polling = False
        self._cancel_timer(TimerName.POLL)
        self.executing = claimed.uuid
        self.job = JobState(claimed=claimed)
        self._log(
            LogLevel.INFO,
            f"job {claimed.uuid} received (image {claimed.config.image or claimed.config.digest}, "
            f"timeout {claimed.timeout}s)",
        )
        self._send(now, Running(), ReplyTo.RUNNING, claimed.uuid)
        self._out.append(PrepareJob(claimed))
        self._set_timer(TimerName.HEARTBEAT, now + self.config.heartbeat_interval)

    # -- timers ----------------------------------------------------------------------------------

    def _on_timer(self, event: TimerFired) -> None:
        deadline = self.timers.get(event.name)
        if deadline is None or event.now < deadline:
            self._log(LogLevel.DEBUG, f"stale {event.name} timer ignored")
            return
        del self.timers[event.name]
        now = event.now
        match event.name:
            case TimerName.POLL:
                if self.polling and self.conn is ConnState.OPEN:
                    limit = self.config.poll_timeout + self.config.poll_margin
                    self._close(f"no job/no_job within {limit:g}s of ready")
            case TimerName.ACK:
                if self.fifo and self.conn is ConnState.OPEN:
                    head = self.fifo[0]
                    self._close(
                        f"no reply to {head.kind} of job {head.job} within "
                        f"{self.config.ack_timeout:g}s; connection presumed dead"
                    )
            case TimerName.HEARTBEAT:
                job = self.job
                if (
                    job is not None
                    and self.executing == job.uuid
                    and self.conn is ConnState.OPEN
                ):
                    self._send(now, Heartbeat(), ReplyTo.HEARTBEAT, job.uuid)
                    nxt = deadline + self.config.heartbeat_interval
                    self._set_timer(
                        TimerName.HEARTBEAT,
                        nxt if nxt > now else now + self.config.heartbeat_interval,
                    )
            case TimerName.PING:
                if self.conn is ConnState.OPEN:
                    if (
                        self.ping_sent_at is not None
                        and now - self.ping_sent_at >= self.config.ack_timeout
                    ):
                        self._close(f"no pong within {self.config.ack_timeout:g}s")
                    else:
                        if self.ping_sent_at is None:
                            self.ping_sent_at = now
                        self._out.append(SendPing())

    # -- job lifecycle ---------------------------------------------------------------------------

    def _on_image_ready(self, event: ImageReady) -> None:
        job = self.job
        if job is None or job.uuid != event.job:
            self._log(LogLevel.WARNING, f"image ready for job {event.job}, which is not current")
            return
        job.image_ready = True
        self._log(LogLevel.INFO, f"job {job.uuid}: image ready")
        self._maybe_start(job)

    def _maybe_start(self, job: JobState) -> None:
        if job.go and job.image_ready and not job.started and job.aborting is None:
            job.started = True
            self._out.append(StartBenchmark(job.uuid))
            self._log(LogLevel.INFO, f"job {job.uuid}: benchmark starting")

    def _on_job_finished(self, event: JobFinished) -> None:
        msg = event.message
        if not isinstance(msg, Completed | Failed | Canceled):
            self._log(LogLevel.ERROR, f"job finished with a non-terminal message {msg!r}; ignored")
            return
        uuid = terminal_job(msg)
        job = self.job
        if job is None or job.uuid != uuid:
            # Never lose a result, even one the channel did not expect.
            self._log(LogLevel.ERROR, f"result for job {uuid}, which is not the current job; queued")
            self._queue(msg, 0)
            return
        self.job = None
        if job.forced is not None and job.forced != msg:
            self._log(
                LogLevel.INFO,
                f"job {uuid}: reporting {type(job.forced).__name__.lower()} "
                f"instead of {type(msg).__name__.lower()} ({job.aborting})",
            )
            msg = job.forced
        if self.executing == uuid:
            self._cancel_timer(TimerName.HEARTBEAT)
        self._cancel_timer(TimerName.PING)
        self.ping_sent_at = None
        self._log(LogLevel.INFO, f"job {uuid} finished: {type(msg).__name__.lower()}")
        self._queue(msg, 0)

    def _abort(
        self, job: JobState, reason: str, *, canceled_by_server: bool, forced: TerminalMessage | None
    ) -> None:
        if job.aborting is not None:
            if canceled_by_server and not isinstance(job.forced, Canceled):
                job.forced = forced  # a server cancel outranks our own abort
            return
        job.aborting = reason
        if forced is not None and (canceled_by_server or not job.started):
            job.forced = forced
        self._out.append(AbortJob(job.uuid, reason, canceled_by_server))
        self._log(LogLevel.WARNING, f"job {job.uuid}: aborting ({reason})")

    def _on_shutdown(self, event: Shutdown) -> None:
        level = event.level
        if level not in (1, 2):
            self._log(LogLevel.ERROR, f"unknown shutdown level {level!r}; ignored")
            return
        if level <= self.shutdown_level:
            self._log(LogLevel.DEBUG, f"shutdown level {level} already in effect")
            return
        self.shutdown_level = level
        if level == 1:
            self._log(LogLevel.INFO, "draining: no new jobs; finishing the current job and results")
            if self.polling:
                # A `ready` cannot be taken back (the server discards text while polling) and
                # closing now could fail a job claimed in this instant, so wait for the answer.
                self._log(LogLevel.WARNING,
                          "draining: waiting for the server's answer to the outstanding poll "
                          f"(up to {self.config.poll_timeout + self.config.poll_margin:g} s; a job "
                          "that arrives meanwhile is run); send the signal again to stop now")
        else:
            self._log(LogLevel.WARNING, "shutting down: aborting the current job, then delivering")
            job = self.job
            if job is not None:
                reason = "runner shutting down"
                self._abort(
                    job, reason, canceled_by_server=False, forced=Failed(job.uuid, (), reason)
                )
            if self.polling and self.conn is ConnState.OPEN:
                # Waiting out the poll could take a minute; a job claimed in this instant
                # would be failed by the server's heartbeat timeout.
                self.polling = False
                self._cancel_timer(TimerName.POLL)
        if self.conn in (ConnState.DISCONNECTED, ConnState.CONNECTING) and self._ready_to_exit():
            self._exit("shutdown complete")

    # -- the pump: decide what to send next ------------------------------------------------------

    def _pump(self, now: float) -> None:
        if self.exited or self.conn is not ConnState.OPEN or self.polling:
            return
        if not self._result_in_flight():
            self._deliver_next(now)
        if self.conn is not ConnState.OPEN or self._result_in_flight():
            return
        job = self.job
        if job is not None:
            if self.executing != job.uuid and TimerName.PING not in self.timers:
                self._set_timer(TimerName.PING, now + self.config.ping_interval)
            return
        if self.pending or self.fifo or self.executing is not None:
            return
        if self.shutdown_level:
            self._close("shutdown: all results delivered")
            self._exit("shutdown complete")
            return
        ready = Ready(poll_timeout=self.config.poll_timeout, runner=self.config.runner)
        self._out.append(Send(ready))
        self.polling = True
        self._set_timer(
            TimerName.POLL, now + self.config.poll_timeout + self.config.poll_margin
        )
        self._log(LogLevel.INFO, f"ready: asking for a job (poll_timeout {self.config.poll_timeout}s)")

    def _deliver_next(self, now: float) -> None:
        while self.pending:
            if self.executing is not None:
                # Only the executing job's own result may go while the server is EXECUTING:
                # any other would be applied to the current job (PROTOCOL.md §3.3).
                uuid = self.executing
                if uuid not in self.pending:
                    return
            else:
                uuid = next(iter(self.pending))
            item = self.pending[uuid]
            if item.attempts >= self.config.max_attempts:
                del self.pending[uuid]
                reason = f"not acknowledged after {item.attempts} attempts"
                self._out.append(DeadLetter(item.message, item.attempts, reason))
                self._log(LogLevel.ERROR, f"job {uuid}: result moved to dead-letter: {reason}")
                continue
            item.attempts += 1
            item.persisted = True
            self._out.append(PersistMessage(item.message, item.attempts))
            self._send(now, item.message, ReplyTo.TERMINAL, uuid)
            self._log(
                LogLevel.INFO,
                f"job {uuid}: sending {type(item.message).__name__.lower()} "
                f"(attempt {item.attempts}/{self.config.max_attempts})",
            )
            return

    # -- helpers ---------------------------------------------------------------------------------

    def _result_in_flight(self) -> bool:
        return any(a.kind is ReplyTo.TERMINAL for a in self.fifo)

    def _queue(self, msg: TerminalMessage, attempts: int, *, persisted: bool = False) -> None:
        """Add a result to deliver; it is persisted before its first send or at the end of this step."""
        uuid = terminal_job(msg)
        if uuid in self.pending:
            self._log(LogLevel.WARNING, f"job {uuid}: replacing an undelivered result with a newer one")
        self.pending[uuid] = PendingDelivery(msg, attempts, persisted)

    def _persist_new(self) -> None:
        for item in self.pending.values():
            if not item.persisted:
                item.persisted = True
                self._out.append(PersistMessage(item.message, item.attempts))

    def _send(self, now: float, msg: RunnerMessage, kind: ReplyTo, job: UUID) -> None:
        self._out.append(Send(msg))
        self.fifo.append(Awaiting(kind, job, now))
        if len(self.fifo) == 1:
            self._arm_ack_timer()

    def _arm_ack_timer(self) -> None:
        if self.fifo:
            self._set_timer(TimerName.ACK, self.fifo[0].sent_at + self.config.ack_timeout)
        else:
            self._cancel_timer(TimerName.ACK)

    def _set_timer(self, name: TimerName, deadline: float) -> None:
        self.timers[name] = deadline
        self._out.append(SetTimer(name, deadline))

    def _cancel_timer(self, name: TimerName) -> None:
        if self.timers.pop(name, None) is not None:
            self._out.append(CancelTimer(name))

    def _reset_connection(self) -> None:
        self.polling = False
        self.executing = None
        self.fifo.clear()
        self.ping_sent_at = None
        for name in list(self.timers):
            self._cancel_timer(name)

    def _connect(self, why: str) -> None:
        self.conn = ConnState.CONNECTING
        self._out.append(Connect(why))

    def _close(self, why: str) -> None:
        self.conn = ConnState.CLOSING
        self._out.append(CloseConnection(why))
        self._log(LogLevel.WARNING if not self.shutdown_level else LogLevel.INFO, f"closing: {why}")

    def _ready_to_exit(self) -> bool:
        return self.shutdown_level > 0 and self.job is None and not self.pending

    def _exit(self, why: str) -> None:
        self.exited = True
        self._out.append(Exit())
        self._log(LogLevel.INFO, f"exit: {why}")

    def _log(self, level: LogLevel, text: str) -> None:
        self._out.append(Log(level, text))
