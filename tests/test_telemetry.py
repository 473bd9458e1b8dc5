"""AgentStats: health verdicts with an injected clock, metric values, and input validation."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner_agent.telemetry import RECONNECT_CLASSES, AgentStats


class FakeClock:
    """A settable clock in seconds."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def samples(stats: AgentStats) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text format, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(stats.render_metrics().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_unhealthy_before_any_contact() -> None:
    stats = AgentStats(clock=FakeClock())
    ok, reason = stats.healthy(max_silence_s=60)
    assert not ok
    assert "no successful contact with the server yet" in reason
    assert stats.health().status == "unhealthy"


def test_healthy_after_contact_then_unhealthy_after_silence() -> None:
    clock = FakeClock()
    stats = AgentStats(clock=clock)
    stats.connection_state("connecting")
    stats.connected()
    assert stats.healthy(max_silence_s=60) == (
        True,
        "server contacted 0.0 s ago; idle; state connected",
    )
    clock.advance(59.5)
    assert stats.healthy(max_silence_s=60)[0]
    clock.advance(1.0)
    ok, reason = stats.healthy(max_silence_s=60)
    assert not ok
    assert "no contact with the server for 60.5 s (limit 60 s)" in reason
    stats.contact()  # any frame restores health
    assert stats.healthy(max_silence_s=60)[0]


def test_explicit_now_overrides_clock() -> None:
    stats = AgentStats(clock=FakeClock(0.0))
    stats.contact(now=100.0)
    assert stats.healthy(now=150.0, max_silence_s=60)[0]
    assert not stats.healthy(now=161.0, max_silence_s=60)[0]
    assert stats.last_contact == 100.0


def test_running_job_without_server_is_degraded_and_names_the_job() -> None:
    clock = FakeClock()
    stats = AgentStats(clock=clock)
    stats.connected()
    stats.job_started("6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d")
    assert stats.health(max_silence_s=30).reason.endswith(
        "running job 6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d; state connected"
    )
    stats.reconnect("connection_lost")
    clock.advance(31)
    report = stats.health(max_silence_s=30)
    assert not report.ok
    assert report.status == "degraded"
    assert report.reason.startswith("degraded: job 6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d is running")
    assert "last reconnect reason: connection_lost" in report.reason
    assert report.connection_state == "disconnected"
    assert report.to_json()["running_job"] == "6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d"
    stats.job_finished("completed", 12.5)
    assert stats.health(max_silence_s=30).status == "unhealthy"


def test_job_started_accepts_an_object_with_uuid() -> None:
    class Job:
        uuid = "3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50"

    stats = AgentStats(clock=FakeClock())
    stats.job_started(Job())
    assert stats.running_job == "3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50"


def test_metrics_reflect_updates() -> None:
    clock = FakeClock(1_700_000_123.0)
    stats = AgentStats(clock=clock, version="9.9.9", runner="bench-1")
    stats.connection_state("connecting")
    stats.connected()
    stats.job_started("a")
    stats.heartbeat_rtt(0.003)
    stats.heartbeat_rtt(0.2)
    stats.job_finished("completed", 4.25)
    stats.job_started("b")
    stats.cancel_latency(0.04)
    stats.job_finished("canceled", 1.5)
    stats.reconnect("heartbeat_timeout")
    stats.reconnect("something odd happened")
    stats.outbox_depth(2)
    m = samples(stats)
    assert m[("runner_agent_info", (("runner", "bench-1"), ("version", "9.9.9")))] == 1
    assert m[("runner_agent_up", ())] == 1
    assert m[("runner_agent_jobs_total", (("outcome", "completed"),))] == 1
    assert m[("runner_agent_jobs_total", (("outcome", "canceled"),))] == 1
    assert m[("runner_agent_jobs_total", (("outcome", "failed"),))] == 0
    assert m[("runner_agent_job_running", ())] == 0
    assert m[("runner_agent_last_job_duration_seconds", ())] == 1.5
    assert m[("runner_agent_reconnects_total", (("reason", "heartbeat_timeout"),))] == 1
    assert m[("runner_agent_reconnects_total", (("reason", "other"),))] == 1
    assert m[("runner_agent_reconnects_total", (("reason", "auth_rejected"),))] == 0
    assert m[("runner_agent_outbox_depth", ())] == 2
    assert m[("runner_agent_connection_state", (("state", "disconnected"),))] == 1
    assert m[("runner_agent_connection_state", (("state", "connected"),))] == 0
    assert m[("runner_agent_connection_state", (("state", "connecting"),))] == 0
    assert m[("runner_agent_last_contact_timestamp_seconds", ())] == 1_700_000_123.0
    assert m[("runner_agent_heartbeat_rtt_seconds_count", ())] == 2
    assert math.isclose(m[("runner_agent_heartbeat_rtt_seconds_sum", ())], 0.203)
    assert m[("runner_agent_heartbeat_rtt_seconds_bucket", (("le", "0.005"),))] == 1
    assert m[("runner_agent_heartbeat_rtt_seconds_bucket", (("le", "0.25"),))] == 2
    assert m[("runner_agent_cancel_latency_seconds_count", ())] == 1
    assert m[("runner_agent_cancel_latency_seconds_bucket", (("le", "0.05"),))] == 1
    assert m[("runner_agent_cancel_latency_seconds_bucket", (("le", "0.025"),))] == 0


def test_every_reconnect_class_is_preinitialised() -> None:
    m = samples(AgentStats(clock=FakeClock()))
    for cls in RECONNECT_CLASSES:
        assert m[("runner_agent_reconnects_total", (("reason", cls),))] == 0


def test_two_agents_do_not_share_metrics() -> None:
    a = AgentStats(clock=FakeClock())
    b = AgentStats(clock=FakeClock())
    a.job_started("x")
    a.job_finished("failed", 1.0)
    assert samples(b)[("runner_agent_jobs_total", (("outcome", "failed"),))] == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.connection_state("Connected!"), "snake_case"),
        (lambda s: s.connection_state(""), "snake_case"),
        (lambda s: s.job_finished("succeeded", 1.0), "completed, failed, canceled"),
        (lambda s: s.job_finished("completed", -1.0), "finite number >= 0"),
        (lambda s: s.job_finished("completed", math.nan), "finite number >= 0"),
        (lambda s: s.cancel_latency(math.inf), "finite number >= 0"),
        (lambda s: s.heartbeat_rtt(-0.1), "finite number >= 0"),
        (lambda s: s.outbox_depth(-1), "integer >= 0"),
        (lambda s: s.outbox_depth(1.5), "integer >= 0"),
        (lambda s: s.reconnect(""), "non-empty"),
        (lambda s: s.job_started(""), "empty"),
        (lambda s: s.healthy(max_silence_s=-1), "finite number >= 0"),
    ],
)
def test_bad_updates_are_rejected_with_a_clear_error(call, message) -> None:  # type: ignore[no-untyped-def]
    stats = AgentStats(clock=FakeClock())
    with pytest.raises(ValueError, match=message):
        call(stats)


def test_non_number_duration_is_a_type_error() -> None:
    stats = AgentStats(clock=FakeClock())
    with pytest.raises(TypeError, match="number of seconds"):
        stats.heartbeat_rtt("0.1")  # type: ignore[arg-type]


def test_upgrades_that_the_server_closes_for_auth_are_not_health() -> None:
    """Bencher rejects a wrong key by accepting the upgrade and closing: those upgrades are not
    successful contact, so /healthz stays unhealthy until the server sends a frame."""
    clock = FakeClock()
    stats = AgentStats(clock=clock)
    for _ in range(3):
        stats.connection_state("connecting")
        stats.connected()
        stats.reconnect("auth_rejected")
        clock.advance(1.0)
    stats.connected()  # the next upgrade: still no frame from the server
    verdict = stats.health(max_silence_s=60)
    assert verdict.status == "unhealthy"
    assert "authentication" in verdict.reason and "auth_rejected" in verdict.reason
    stats.job_started("job-1")
    assert stats.health(max_silence_s=60).status == "degraded"
    stats.job_finished("completed", 1.0)
    stats.contact()  # a frame (e.g. no_job): the key works
    assert stats.health(max_silence_s=60).status == "ok"
    stats.reconnect("connection_lost")  # other reconnect reasons do not taint later upgrades
    stats.connected()
    assert stats.health(max_silence_s=60).status == "ok"


def test_silence_limit_outlasts_one_poll() -> None:
    from runner_agent.telemetry import DEFAULT_MAX_SILENCE_S, max_silence_for

    assert max_silence_for(55) == DEFAULT_MAX_SILENCE_S  # the default poll fits the default limit
    # an idle agent polling for 900 s hears from the server only every 900 s: still healthy then
    assert max_silence_for(900) > 900 + 30
    stats = AgentStats(clock=lambda: 0.0)
    stats.connected(now=0.0)
    stats.contact(now=0.0)
    assert stats.health(now=899.0 + 30, max_silence_s=max_silence_for(900)).ok
