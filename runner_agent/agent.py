"""The trio driver of `runner-agent run`: performs the sans-IO channel's effects and feeds it events.

Task tree (DESIGN.md)::

    root nursery ─────────────── lives for the process
    ├── signal watcher            1st SIGTERM/SIGINT: drain · 2nd: abort job · 3rd: exit now
    ├── timer                     one deadline per channel timer → TimerFired
    ├── job executor              own cancel scope (JobControl) = job abort; survives reconnects
    └── connection loop           backoff between attempts (runner_agent.reconnect)
        └── per-connection nursery   its cancel scope = "reconnect"
            ├── reader            always draining (pings answered by trio-websocket), decodes frames
            └── writer            single consumer of this connection's send queue (+ pings)

All protocol decisions are the channel's (`runner_agent.channel.Channel`); heartbeats are its
``HEARTBEAT`` timer, so they are sent only while a job runs. `Agent._feed` is synchronous: it steps
the channel and performs every effect in order before returning, so a `PersistMessage` is on disk
before the `Send` that follows it is queued. Nothing here awaits while holding channel state.

Exit statuses (`runner_agent.errors`): 0 after a drain or abort-and-deliver shutdown and after
``--exit-after-jobs``; 1 on a third signal, when a second signal's result could not be delivered
within the kill ladder + ``abort_delivery_grace`` (30 s), or on an internal failure (undelivered
results stay in the outbox for the next start); 3 when the server rejected the key
(`runner_agent.reconnect.AuthRejected`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import WebSocketConnection

from runner_agent import channel as ch
from runner_agent.backoff import Backoff, BackoffPolicy
from runner_agent.config import Config, read_key
from runner_agent.connection import Endpoint, build_endpoint, close_channel
from runner_agent.errors import EXIT_AUTH_REJECTED, EXIT_FAILURE, EXIT_OK, JobError
from runner_agent.execute import IterationMetrics, JobControl, JobDeadline
from runner_agent.jobrunner import JobRunner, PreparedJob
from runner_agent.logging_setup import add_secret
from runner_agent.outbox import Outbox, OutboxError
from runner_agent.protocol import (
    Ack,
    Cancel,
    Canceled,
    ClaimedJob,
    Completed,
    Failed,
    Heartbeat,
    ProtocolError,
    TerminalMessage,
    decode_server,
    encode,
)
from runner_agent.reconnect import AGENT_CLOSED, AuthRejected, ConnectionLoop, SessionLink
from runner_agent.signals import watch_signals

log = logging.getLogger("runner_agent.agent")
chlog = logging.getLogger("runner_agent.channel")

_LOG_LEVELS = {
    ch.LogLevel.DEBUG: logging.DEBUG,
    ch.LogLevel.INFO: logging.INFO,
    ch.LogLevel.WARNING: logging.WARNING,
    ch.LogLevel.ERROR: logging.ERROR,
}
ABNORMAL_CLOSE = 1006  # trio-websocket's code when the TCP stream ended without a Close frame


def channel_config(config: Config) -> ch.ChannelConfig:
    return ch.ChannelConfig(
        poll_timeout=config.poll_timeout,
        heartbeat_interval=config.heartbeat_interval,
        ack_timeout=config.ack_timeout,
        max_attempts=config.max_delivery_attempts,
    )


def close_class(code: int | None, reason: str) -> str:
    """The reconnect reason class (telemetry's ``RECONNECT_CLASSES``) of a connection's end."""
    if code is None or code == ABNORMAL_CLOSE:
        return "connection_lost"
    if code == 1001:
        return "server_shutdown"
    if code == 1000 and "heartbeat_timeout" in reason:
        return "heartbeat_timeout"
    return "server_closed"


class _Connection:
    """The per-connection half: the socket, its send queue and its cancel scope."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.send, self.receive = trio.open_memory_channel[ch.Send | ch.SendPing | ch.PrepareJob](
            math.inf
        )
        self.scope = trio.CancelScope()
        self.closed_by_us: str | None = None
        self.code: int | None = None
        self.reason = ""
        self.error: str | None = None


class Agent:
    """One agent process's driver. `run()` returns the exit status."""

    def __init__(
        self,
        config: Config,
        runner: JobRunner,
        outbox: Outbox,
        *,
        endpoint: Endpoint | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        handle_signals: bool = True,
        stats: Any = None,
        on_iteration: Callable[[PreparedJob, IterationMetrics], None] | None = None,
        abort_delivery_grace: float = 30.0,
    ) -> None:
        self.config = config
        self.runner = runner
        self.outbox = outbox
        self.endpoint = endpoint if endpoint is not None else build_endpoint(config)
        self.backoff = backoff if backoff is not None else Backoff(BackoffPolicy(), rng)
        self.channel = ch.Channel(channel_config(config))
        self.handle_signals = handle_signals
        self.stats = stats
        self._on_iteration_hook = on_iteration
        self.exit_code = EXIT_OK
        self.jobs_finished = 0
        self._done = trio.Event()
        self._timers: dict[ch.TimerName, float] = {}
        self._timers_changed = trio.Event()
        self._jobs_send, self._jobs_receive = trio.open_memory_channel[ClaimedJob](math.inf)
        self._conn: _Connection | None = None
        self._loop: ConnectionLoop | None = None
        self._control: JobControl | None = None
        self._go: trio.Event | None = None
        self._current_job: ClaimedJob | None = None
        self._job_started_at = 0.0
        self._abort_requested_at: float | None = None
        self._heartbeat_sent: list[float] = []
        self.signal_level = 0
        self.abort_delivery_grace = abort_delivery_grace
        self._aborting = trio.Event()

    # -- the root nursery --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Serve jobs until a shutdown completes; returns the process exit status."""
        pending = self._load_outbox()
        self._loop = ConnectionLoop(
            self.endpoint,
            self._read_key,
            self._session,
            self.backoff,
            exit_on_auth_failure=self.config.exit_on_auth_failure,
            may_exit=lambda: self.channel.job is None,
            on_reconnect=self._on_reconnect,
            on_state=self._on_conn_state,
        )
        try:
            async with trio.open_nursery() as root:
                if self.handle_signals:
                    await root.start(watch_signals, self._on_signal)
                root.start_soon(self._timer_task)
                root.start_soon(self._abort_watchdog)
                root.start_soon(self._job_task)
                root.start_soon(self._connection_task)
                self._feed(ch.Started(trio.current_time(), tuple(pending)))
                task_status.started()
                await self._done.wait()
                root.cancel_scope.cancel()
        finally:
            self._flush_outbox_memory()
        log.info("agent stopped (exit status %d)", self.exit_code,
                 extra={"fields": {"exit_status": self.exit_code, "jobs": self.jobs_finished}})
        return self.exit_code

    def _finish(self, code: int) -> None:
        if not self._done.is_set():
            self.exit_code = code
            self._done.set()

    def _load_outbox(self) -> list[ch.Pending]:
        entries = self.outbox.load()
        for entry in entries:
            log.info("undelivered %s for job %s from an earlier run (%d attempt(s) so far)",
                     type(entry.message).__name__.lower(), entry.job, entry.attempts)
        self._stat("outbox_depth", len(entries))
        return [ch.Pending(e.message, e.attempts) for e in entries]

    def _flush_outbox_memory(self) -> None:
        """At exit (every way `run` ends), make sure every result the channel still holds is on
        disk (best effort)."""
        for job, item in list(self.channel.pending.items()):
            if self.outbox.get(job) is None:
                try:
                    self.outbox.put(item.message, item.attempts)
                except OutboxError as e:
                    log.error("job %s: result could not be saved at exit: %s", job, e)

    # -- events in, effects out ----------------------------------------------------------------------

    def _feed(self, event: ch.Event) -> None:
        for effect in self.channel.step(event):
            try:
                self._perform(effect)
            except Exception:
                log.exception("performing %r failed", effect)

    def _perform(self, effect: ch.Effect) -> None:
        match effect:
            case ch.Log(level=level, text=text):
                chlog.log(_LOG_LEVELS.get(level, logging.INFO), text)
            case ch.Send():
                self._send(effect)
            case ch.SendPing():
                if self._conn is not None:
                    self._conn.send.send_nowait(effect)
            case ch.SetTimer(name=name, deadline=deadline):
                self._timers[name] = deadline
                self._timers_changed.set()
            case ch.CancelTimer(name=name):
                if self._timers.pop(name, None) is not None:
                    self._timers_changed.set()
            case ch.Connect(reason=reason):
                log.debug("channel asks to connect (%s)", reason)
            case ch.CloseConnection(reason=reason):
                conn = self._conn
                if conn is not None and conn.closed_by_us is None:
                    conn.closed_by_us = reason
                    conn.scope.cancel()
            case ch.PrepareJob(job=job):
                # Handed to the job executor by the writer right after the `running` queued
                # before it has gone out, so image preparation never delays that frame.
                if self._conn is not None:
                    self._conn.send.send_nowait(effect)
                else:
                    self._hand_off(job)
            case ch.StartBenchmark(job=uuid):
                if self._go is not None and self._current_job is not None \
                        and self._current_job.uuid == uuid:
                    self._go.set()
            case ch.AbortJob(job=uuid, reason=reason, canceled_by_server=by_server):
                self._abort_job(uuid, reason, by_server)
            case ch.PersistMessage(message=message, attempts=attempts):
                try:
                    self.outbox.put(message, attempts)
                except OutboxError as e:
                    log.error("could not persist the result of job %s (kept in memory, retried at "
                              "the next send): %s", message.job, e)
                self._stat("outbox_depth", self.outbox.depth)
            case ch.DeleteMessage(job=job):
                try:
                    self.outbox.remove(job)
                except OutboxError as e:
                    log.error("could not remove the delivered result of job %s: %s", job, e)
                self._stat("outbox_depth", self.outbox.depth)
            case ch.DeadLetter(job=job, reason=reason):
                try:
                    path = self.outbox.dead_letter(job, reason, message=effect.message,
                                                   attempts=effect.attempts)
                    log.error("result of job %s moved to %s: %s", job, path, reason)
                except OutboxError as e:
                    # The last copy is in memory: put it in the log rather than lose it.
                    log.error("could not dead-letter the result of job %s (%s): %s; the message "
                              "was: %s", job, reason, e, encode(effect.message))
                self._stat("outbox_depth", self.outbox.depth)
            case ch.Exit():
                # Let an open connection close gracefully (bounded by close_timeout); the
                # connection task finishes the run once the loop has stopped.
                if self._loop is not None:
                    self._loop.stop()
                conn = self._conn
                if conn is None:
                    self._finish(self.exit_code)
                elif conn.closed_by_us is None:
                    conn.closed_by_us = "exiting"
                    conn.scope.cancel()
            case _:
                log.error("unknown channel effect %r", effect)

    def _send(self, effect: ch.Send) -> None:
        conn = self._conn
        if conn is None:
            log.warning("no connection to send %s on", type(effect.message).__name__)
            return
        if isinstance(effect.message, Heartbeat):
            self._heartbeat_sent.append(trio.current_time())
        conn.send.send_nowait(effect)

    # -- timers --------------------------------------------------------------------------------------

    async def _timer_task(self) -> None:
        while True:
            self._timers_changed = trio.Event()
            if not self._timers:
                await self._timers_changed.wait()
                continue
            name, deadline = min(self._timers.items(), key=lambda item: item[1])
            with trio.move_on_at(deadline):
                await self._timers_changed.wait()
                continue
            if self._timers.get(name) == deadline:
                del self._timers[name]
                self._feed(ch.TimerFired(trio.current_time(), name))

    # -- connections ---------------------------------------------------------------------------------

    def _read_key(self) -> str:
        key = read_key(self.config)
        add_secret(key)
        return key

    async def _connection_task(self) -> None:
        assert self._loop is not None
        try:
            await self._loop.run()
        except AuthRejected as e:
            log.error("%s; exiting with status %d", e, EXIT_AUTH_REJECTED)
            self._finish(EXIT_AUTH_REJECTED)
        else:
            self._finish(self.exit_code)

    def _on_conn_state(self, state: str) -> None:
        self._stat("connection_state", state)
        if state == "connected":
            self._stat("connected")

    def _on_reconnect(self, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        cls = kind
        if reason == "connect_failed:auth" or self.backoff.auth_suspected:
            cls = "auth_rejected"
        self._stat("reconnect", cls)
        if kind in ("connect_failed", "key_unreadable"):
            # The attempt failed before a connection existed (connect error, unreadable key).
            self._feed(ch.ConnectFailed(trio.current_time(), reason))

    async def _session(self, ws: WebSocketConnection, link: SessionLink) -> str:
        conn = _Connection(ws)
        self._conn = conn
        try:
            self._feed(ch.ConnectionOpened(trio.current_time()))
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, conn, link, nursery)
                    nursery.start_soon(self._writer, conn, nursery)
            if conn.closed_by_us is not None:
                await close_channel(ws, self.endpoint.close_timeout, 1000, None)
        finally:
            self._conn = None
            self._heartbeat_sent.clear()
            # Jobs whose hand-off was queued behind an unsent frame still run (they outlive
            # the connection); the frames themselves die with it.
            conn.send.close()
            while True:
                try:
                    item = conn.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(item, ch.PrepareJob):
                    self._hand_off(item.job)
            now = trio.current_time()
            if conn.closed_by_us is not None:
                self._feed(ch.ConnectionClosed(now, None, "", f"closed by the agent: {conn.closed_by_us}"))
            else:
                code = None if conn.code == ABNORMAL_CLOSE else conn.code
                error = conn.error
                if conn.code == ABNORMAL_CLOSE and error is None:
                    error = "TCP connection dropped without a Close frame"
                self._feed(ch.ConnectionClosed(now, code, conn.reason, error))
        if conn.closed_by_us is not None:
            return f"{AGENT_CLOSED}:{conn.closed_by_us}"
        return close_class(conn.code, conn.reason)

    def _closed(self, conn: _Connection, exc: WsClosed, nursery: trio.Nursery) -> None:
        if conn.code is None and conn.error is None:
            if exc.reason is None:
                conn.code = ABNORMAL_CLOSE
            else:
                conn.code = exc.reason.code
                conn.reason = exc.reason.reason or ""
        nursery.cancel_scope.cancel()

    async def _reader(self, conn: _Connection, link: SessionLink, nursery: trio.Nursery) -> None:
        while True:
            try:
                data = await conn.ws.get_message()
            except WsClosed as exc:
                self._closed(conn, exc, nursery)
                return
            link.frame()
            now = trio.current_time()
            self._stat("contact")
            if isinstance(data, bytes):
                log.warning("ignoring a binary frame from the server (%d bytes)", len(data))
                continue
            try:
                message = decode_server(data)
            except ProtocolError as e:
                self._feed(ch.BadFrame(now, str(e), data[:500]))
                continue
            self._observe_reply(message, now)
            self._feed(ch.FrameReceived(now, message))

    async def _writer(self, conn: _Connection, nursery: trio.Nursery) -> None:
        async for item in conn.receive:
            try:
                if isinstance(item, ch.PrepareJob):
                    self._hand_off(item.job)
                elif isinstance(item, ch.SendPing):
                    nursery.start_soon(self._ping, conn)
                else:
                    await conn.ws.send_message(encode(item.message))
            except WsClosed as exc:
                self._closed(conn, exc, nursery)
                return

    async def _ping(self, conn: _Connection) -> None:
        try:
            await conn.ws.ping()
        except (WsClosed, ValueError):
            return
        self._feed(ch.PongReceived(trio.current_time()))

    def _observe_reply(self, message: object, now: float) -> None:
        """Heartbeat round-trip for the metrics (the channel does the real correlation): the
        reply at the head of the channel's FIFO answers the oldest heartbeat still unanswered."""
        if not isinstance(message, Ack | Cancel):
            return
        head = self.channel.fifo[0] if self.channel.fifo else None
        if head is not None and head.kind is ch.ReplyTo.HEARTBEAT and self._heartbeat_sent:
            self._stat("heartbeat_rtt", max(0.0, now - self._heartbeat_sent.pop(0)))
        if isinstance(message, Cancel) or head is None:
            self._heartbeat_sent.clear()  # the server answers no earlier heartbeat any more

    # -- the job executor ----------------------------------------------------------------------------

    def _hand_off(self, job: ClaimedJob) -> None:
        """Queue ``job`` for the executor. Its `JobControl` exists from this moment, so an abort
        that comes before the executor picks the job up (a lost connection, a ``cancel`` reply, a
        second signal) is kept and stops the job instead of leaving it waiting for a go.
        Its deadline starts now too: ``running`` was just queued, and the server counts the
        job's ``timeout`` (+ 60 s) from it, so the pull counts against the timeout."""
        deadline = JobDeadline.starting_now(job.config.timeout)
        self._control, self._go, self._current_job = JobControl(deadline), trio.Event(), job
        self._abort_requested_at = None
        self._jobs_send.send_nowait(job)

    async def _job_task(self) -> None:
        async for job in self._jobs_receive:
            await self._run_job(job)

    def _abort_job(self, uuid: object, reason: str, by_server: bool) -> None:
        control = self._control
        if control is None or self._current_job is None or self._current_job.uuid != uuid:
            log.warning("abort for job %s, which is not running", uuid)
            return
        self._abort_requested_at = trio.current_time()
        control.request_cancel(reason, outcome="canceled" if by_server else "failed")

    async def _run_job(self, job: ClaimedJob) -> None:
        control = self._control
        assert control is not None and self._current_job is job, "jobs come through _hand_off"
        self._job_started_at = trio.current_time()
        self._stat("job_started", str(job.uuid))
        log.info("job %s: preparing image %s", job.uuid, job.config.image or job.config.digest,
                 extra={"fields": {"job": str(job.uuid), "digest": job.config.digest,
                                   "iter": job.config.iter, "timeout": job.timeout}})
        message = await self._execute(job, control)
        elapsed = trio.current_time() - self._job_started_at
        if self._abort_requested_at is not None:
            self._stat("cancel_latency", trio.current_time() - self._abort_requested_at)
        self._control = self._go = self._current_job = None
        status = type(message).__name__.lower()
        fields: dict[str, object] = {"job": str(job.uuid), "outcome": status,
                                     "duration_s": round(elapsed, 3)}
        if isinstance(message, Completed | Failed):
            fields["iterations"] = len(message.results)
            fields["exit_codes"] = [r.exit_code for r in message.results]
        if isinstance(message, Failed):
            fields["error"] = message.error
        log.info("job %s finished: %s in %.3f s", job.uuid, status, elapsed, extra={"fields": fields})
        self._stat("job_finished", status, elapsed)
        self.jobs_finished += 1
        self._feed(ch.JobFinished(trio.current_time(), message))
        limit = self.config.exit_after_jobs
        if limit is not None and self.jobs_finished >= limit:
            log.info("served %d job(s) (--exit-after-jobs): draining", self.jobs_finished)
            self._feed(ch.Shutdown(trio.current_time(), 1))

    async def _execute(self, job: ClaimedJob, control: JobControl) -> TerminalMessage:
        """Prepare, wait for the go, run; always returns the job's terminal message."""
        prepared: PreparedJob | None = None
        try:
            try:
                prepared = await self.runner.prepare(job, control)
            except JobError as e:
                if control.cancel_requested:
                    return self._aborted(job, control)
                log.warning("job %s: preparation failed: %s", job.uuid, e)
                return Failed(job.uuid, (), str(e))
            if control.cancel_requested:
                return self._aborted(job, control)
            self._feed(ch.ImageReady(trio.current_time(), job.uuid))
            assert self._go is not None
            with control.guard():
                await self._go.wait()
            if control.cancel_requested:
                return self._aborted(job, control)

            def on_iteration(m: IterationMetrics) -> None:
                log.info("job %s: iteration %d done: exit %s, wall %.3f s, user %.3f s, sys %.3f s, "
                         "peak RSS %d KiB", job.uuid, m.iteration + 1, m.exit_code, m.wall_s,
                         m.user_s, m.sys_s, m.max_rss_kb,
                         extra={"fields": {"job": str(job.uuid), "iteration": m.iteration + 1,
                                           "wall_s": m.wall_s, "user_s": m.user_s,
                                           "sys_s": m.sys_s, "max_rss_kb": m.max_rss_kb,
                                           "exit_code": m.exit_code, "signal": m.signal}})
                if self._on_iteration_hook is not None and prepared is not None:
                    try:
                        self._on_iteration_hook(prepared, m)
                    except Exception:
                        log.exception("job %s: iteration hook failed", job.uuid)

            outcome = await self.runner.run(prepared, control, on_iteration)
            return outcome.to_message(job.uuid, self.config.max_message_size)
        except Exception as e:  # a bug in execution must fail the job, never the agent
            log.exception("job %s: internal error", job.uuid)
            return Failed(job.uuid, (), f"runner-agent internal error: {type(e).__name__}: {e}")
        finally:
            if prepared is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await self.runner.release(prepared)
                    except Exception:  # clean-up must not replace the job's result
                        log.exception("job %s: releasing its resources failed", job.uuid)

    @staticmethod
    def _aborted(job: ClaimedJob, control: JobControl) -> TerminalMessage:
        if control.outcome == "canceled":
            return Canceled(job.uuid)
        return Failed(job.uuid, (), control.reason or "aborted before the benchmark started")

    # -- signals -------------------------------------------------------------------------------------

    def request_shutdown(self, level: int = 1) -> None:
        """What the n-th SIGTERM does, for embedders and tests: 1 drain, 2 abort, 3 exit now."""
        self._on_signal(level, "shutdown request")

    def _on_signal(self, level: int, name: str) -> None:
        self.signal_level = level
        if level == 1:
            log.warning("%s: draining (finishing the current job and delivering results); send it "
                        "again to abort the job, a third time to exit at once", name)
            self._feed(ch.Shutdown(trio.current_time(), 1))
        elif level == 2:
            log.warning("%s again: aborting the current job, reporting it failed, then exiting", name)
            self._aborting.set()
            self._feed(ch.Shutdown(trio.current_time(), 2))
        else:
            log.error("%s a third time: exiting now; undelivered results stay in %s for the next "
                      "start", name, self.outbox.dir)
            if self._control is not None:
                self._control.request_cancel("runner exiting immediately", outcome="failed")
            self._finish(EXIT_FAILURE)

    async def _abort_watchdog(self) -> None:
        """After a second signal, deliver if possible: give up after the kill ladder plus
        ``abort_delivery_grace`` seconds, leaving what is undelivered in the outbox (exit 1)."""
        await self._aborting.wait()
        with trio.move_on_after(self.config.kill_grace + self.abort_delivery_grace):
            await self._done.wait()
            return
        left = len(self.channel.pending) + (1 if self.channel.job is not None else 0)
        log.error("could not deliver %d result(s) within %.0f s of the abort; they stay in %s for "
                  "the next start", left, self.abort_delivery_grace, self.outbox.dir)
        self._finish(EXIT_FAILURE)

    # -- telemetry -----------------------------------------------------------------------------------

    def _stat(self, method: str, *args: Any) -> None:
        if self.stats is None:
            return
        try:
            getattr(self.stats, method)(*args)
        except Exception as e:
            log.debug("stats.%s%r failed: %s", method, args, e)
