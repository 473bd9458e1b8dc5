"""Agent statistics: the one object the driver updates, and the health verdict derived from it.

The driver owns one :class:`AgentStats` and calls its plain methods (no I/O, no awaiting) as things
happen: connection state changes, every frame from the server (``contact``), reconnects, job start
and end, cancel latency, heartbeat round-trips and the outbox depth. The numbers live in
``prometheus_client`` metrics in a private ``CollectorRegistry`` (so two agents in one process, as in
tests, never share counters); ``render_metrics()`` gives the Prometheus text format for ``/metrics``.

Health follows Buildkite's agent watchdog: the agent is healthy only after a recent successful
contact with the server. When the server has been silent for longer than ``max_silence_s`` while a
job runs, the verdict is *degraded* (the benchmark goes on and its result is kept for the next
connection) — still not healthy, but the reason says so, so nobody restarts a busy agent blindly.
An upgrade counts as contact, except after a reconnect classed ``auth_rejected``: Bencher answers a
wrong key by accepting the upgrade and then closing, so from then on only a frame from the server
counts, until one arrives.

All times are seconds from the injected ``clock`` (default ``time.time``, so the
``*_timestamp_seconds`` gauges are Unix times); methods taking ``now`` use the clock when it is
omitted.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Literal, Protocol, get_args

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from runner_agent import __version__

JobOutcome = Literal["completed", "failed", "canceled"]
JOB_OUTCOMES: tuple[str, ...] = get_args(JobOutcome)

HealthStatus = Literal["ok", "degraded", "unhealthy"]

# Reconnect reasons are counted by class so the label set stays small; the raw reason text of the
# latest reconnect is kept and shown by /healthz. A reason outside this set is counted as "other".
RECONNECT_CLASSES: tuple[str, ...] = (
    "connect_failed",  # TCP/TLS/upgrade failed or timed out
    "connection_lost",  # the socket dropped without a close frame
    "server_closed",  # a close frame from the server (other than the ones below)
    "heartbeat_timeout",  # Close 1000 "heartbeat_timeout"
    "server_shutdown",  # Close 1001 (server going away)
    "auth_rejected",  # HTTP 401/403 or repeated immediate closes after the upgrade
    "protocol_error",  # a frame or state we could not continue from
    "other",
)

# Default silence after which the agent is no longer healthy. It must exceed the poll timeout
# (default 55 s), since an idle agent only hears from the server once per poll.
DEFAULT_MAX_SILENCE_S = 120.0
# How long past a poll's end the server's answer may take (Bencher's poll margin is 30 s) before
# silence counts against health.
POLL_ANSWER_SLACK_S = 60.0


def max_silence_for(poll_timeout: float) -> float:
    """The health silence limit for an agent polling with ``poll_timeout``: an idle agent hears
    from the server once per poll, so the limit must outlast one poll plus slack."""
    return max(DEFAULT_MAX_SILENCE_S, poll_timeout + POLL_ANSWER_SLACK_S)

_STATE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# Cancel: frame in → `canceled` out, includes the kill ladder's grace period.
_CANCEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Heartbeat round-trip on a healthy link is milliseconds; stalls show up in the upper buckets.
_RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HasUuid(Protocol):
    """Anything that names a job by its ``uuid`` (e.g. the protocol's claimed job)."""

    @property
    def uuid(self) -> object: ...


@frozen
class HealthReport:
    """The health verdict at one instant: ``ok`` only when ``status == "ok"``."""

    ok: bool
    status: HealthStatus
    reason: str
    connection_state: str
    seconds_since_contact: float | None
    running_job: str | None
    max_silence_s: float

    def to_json(self) -> dict[str, object]:
        """A JSON-ready mapping for ``/healthz?format=json``."""
        return {
            "ok": self.ok,
            "status": self.status,
            "reason": self.reason,
            "connection_state": self.connection_state,
            "seconds_since_contact": self.seconds_since_contact,
            "running_job": self.running_job,
            "max_silence_s": self.max_silence_s,
        }


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def reconnect_class(reason: str) -> str:
    """The reconnect class counted for ``reason`` (itself when known, else ``"other"``)."""
    return reason if reason in RECONNECT_CLASSES else "other"


class AgentStats:
    """Counters, gauges and health state of one agent; updated by the driver, read by /healthz."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        version: str = __version__,
        runner: str = "",
    ) -> None:
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        info = Info("runner_agent", "runner-agent build and identity", registry=r)
        info.info({"version": version, "runner": runner})
        up = Gauge("runner_agent_up", "1 while the agent process is running", registry=r)
        up.set(1)
        self._jobs = Counter(
            "runner_agent_jobs", "Jobs finished, by outcome", ["outcome"], registry=r
        )
        for outcome in JOB_OUTCOMES:
            self._jobs.labels(outcome=outcome)
        self._job_running = Gauge(
            "runner_agent_job_running", "1 while a job is being executed", registry=r
        )
        self._state_gauge = Gauge(
            "runner_agent_connection_state",
            "1 for the current connection state, 0 for states seen before",
            ["state"],
            registry=r,
        )
        self._reconnects = Counter(
            "runner_agent_reconnects",
            "Reconnects, by reason class",
            ["reason"],
            registry=r,
        )
        for cls in RECONNECT_CLASSES:
            self._reconnects.labels(reason=cls)
        self._outbox = Gauge(
            "runner_agent_outbox_depth",
            "Terminal messages stored and not yet acknowledged by the server",
            registry=r,
        )
        self._last_job_duration = Gauge(
            "runner_agent_last_job_duration_seconds",
            "Wall time of the most recently finished job",
            registry=r,
        )
        self._cancel_latency = Histogram(
            "runner_agent_cancel_latency_seconds",
            "From a cancel (or timeout) decision to the job's processes being gone",
            buckets=_CANCEL_BUCKETS,
            registry=r,
        )
        self._heartbeat_rtt = Histogram(
            "runner_agent_heartbeat_rtt_seconds",
            "From sending a heartbeat to the server's reply",
            buckets=_RTT_BUCKETS,
            registry=r,
        )
        self._last_contact_gauge = Gauge(
            "runner_agent_last_contact_timestamp_seconds",
            "Clock time of the last frame received from the server (0 = never)",
            registry=r,
        )
        self._state = ""
        self._last_contact: float | None = None
        self._running_job: str | None = None
        self._last_reconnect_reason: str | None = None
        self._auth_rejected = False  # since the last auth_rejected reconnect, no frame arrived
        self.connection_state("disconnected")

    # -- updates (called by the driver) ------------------------------------------------------

    def now(self) -> float:
        """The injected clock's current time."""
        return self._clock()

    def connection_state(self, state: str) -> None:
        """Record the connection's state (``snake_case``, e.g. ``connecting``, ``connected``)."""
        if not isinstance(state, str) or not _STATE_RE.match(state):
            raise ValueError(f"connection state must be a snake_case name, got {state!r}")
        if self._state:
            self._state_gauge.labels(state=self._state).set(0)
        self._state = state
        self._state_gauge.labels(state=state).set(1)

    def connected(self, now: float | None = None) -> None:
        """The WebSocket upgrade succeeded: state ``connected`` and a successful contact (not
        proof of a working key after an ``auth_rejected`` reconnect; see the module docstring)."""
        self.connection_state("connected")
        self._touch(now)

    def contact(self, now: float | None = None) -> None:
        """Any frame arrived from the server: the link is alive at ``now`` (and the key works)."""
        self._touch(now)
        self._auth_rejected = False

    def _touch(self, now: float | None) -> None:
        at = self._clock() if now is None else _non_negative("now", now)
        self._last_contact = at
        self._last_contact_gauge.set(at)

    def reconnect(self, reason: str) -> None:
        """The connection is being re-established because of ``reason`` (see ``RECONNECT_CLASSES``).

        Also moves the connection state to ``disconnected``.
        """
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reconnect reason must be a non-empty string, got {reason!r}")
        self._reconnects.labels(reason=reconnect_class(reason)).inc()
        self._last_reconnect_reason = reason
        if reconnect_class(reason) == "auth_rejected":
            self._auth_rejected = True
        self.connection_state("disconnected")

    def job_started(self, job: str | HasUuid) -> None:
        """A job began executing (``job`` is its uuid or an object with a ``uuid``)."""
        job_id = job if isinstance(job, str) else str(job.uuid)
        if not job_id:
            raise ValueError("job_started needs the job's uuid, got an empty one")
        self._running_job = job_id
        self._job_running.set(1)

    def job_finished(self, outcome: JobOutcome, duration_s: float) -> None:
        """The running job ended with ``outcome`` after ``duration_s`` seconds."""
        if outcome not in JOB_OUTCOMES:
            raise ValueError(
                f"job outcome must be one of {', '.join(JOB_OUTCOMES)}, got {outcome!r}"
            )
        duration = _non_negative("duration_s", duration_s)
        self._jobs.labels(outcome=outcome).inc()
        self._last_job_duration.set(duration)
        self._running_job = None
        self._job_running.set(0)

    def cancel_latency(self, seconds: float) -> None:
        """How long a cancel took from the decision to the processes being gone."""
        self._cancel_latency.observe(_non_negative("cancel latency", seconds))

    def heartbeat_rtt(self, seconds: float) -> None:
        """Round-trip time of one heartbeat (send → its ack or cancel)."""
        self._heartbeat_rtt.observe(_non_negative("heartbeat rtt", seconds))

    def outbox_depth(self, n: int) -> None:
        """Number of terminal messages waiting in the outbox for their ack."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"outbox depth must be an integer >= 0, got {n!r}")
        self._outbox.set(n)

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current connection state."""
        return self._state

    @property
    def running_job(self) -> str | None:
        """The uuid of the job being executed, if any."""
        return self._running_job

    @property
    def last_contact(self) -> float | None:
        """Clock time of the last frame from the server, or ``None`` before the first."""
        return self._last_contact

    def health(
        self, now: float | None = None, max_silence_s: float = DEFAULT_MAX_SILENCE_S
    ) -> HealthReport:
        """The health verdict at ``now``: ok only if the server was heard within ``max_silence_s``."""
        at = self._clock() if now is None else float(now)
        limit = _non_negative("max_silence_s", max_silence_s)
        job = self._running_job
        since: float | None = None
        if self._last_contact is not None:
            since = max(0.0, at - self._last_contact)

        def report(status: HealthStatus, reason: str) -> HealthReport:
            return HealthReport(
                ok=status == "ok",
                status=status,
                reason=reason,
                connection_state=self._state,
                seconds_since_contact=since,
                running_job=job,
                max_silence_s=limit,
            )

        if since is not None and since <= limit and not self._auth_rejected:
            doing = f"running job {job}" if job else "idle"
            return report("ok", f"server contacted {since:.1f} s ago; {doing}; state {self._state}")
        if self._auth_rejected:
            silence = ("the server closes each connection right after the upgrade "
                       "(authentication probably rejected) and has sent no frame since")
        elif since is None:
            silence = "no successful contact with the server yet"
        else:
            silence = f"no contact with the server for {since:.1f} s (limit {limit:g} s)"
        detail = f"state {self._state}"
        if self._last_reconnect_reason is not None:
            detail += f"; last reconnect reason: {self._last_reconnect_reason}"
        if job:
            return report(
                "degraded",
                f"degraded: job {job} is running but {silence}; its result is kept for the "
                f"next connection; {detail}",
            )
        return report("unhealthy", f"{silence}; {detail}")

    def healthy(
        self, now: float | None = None, max_silence_s: float = DEFAULT_MAX_SILENCE_S
    ) -> tuple[bool, str]:
        """``(ok, reason)`` — the short form of :meth:`health`."""
        verdict = self.health(now, max_silence_s)
        return verdict.ok, verdict.reason

    def render_metrics(self) -> bytes:
        """All metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
