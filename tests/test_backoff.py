"""Reconnect policy: jitter, reset rules, auth-failure detection and the Bencher Cloud rate limits."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from runner_agent.backoff import BENCHER_CLOUD_LIMITS, Backoff, BackoffPolicy, RateLimit
from tests.support.rate import max_in_window

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def simulate(
    backoff: Backoff, hold: Callable[[int], tuple[float, bool]], horizon: float = DAY
) -> list[float]:
    """Drive ``backoff`` like the agent would; ``hold(i)`` says how long connection i stays open
    and whether the server sent a frame. Returns the attempt times."""
    now = 0.0
    times: list[float] = []
    i = 0
    while True:
        now += backoff.next_delay(now)
        if now >= horizon:
            return times
        backoff.record_attempt(now)
        times.append(now)
        backoff.record_connected(now)
        lasted, frame = hold(i)
        if frame:
            backoff.record_frame()
        now += lasted
        backoff.record_disconnected(now)
        i += 1


def assert_under_cloud_limits(times: list[float]) -> None:
    for limit in BENCHER_CLOUD_LIMITS:
        worst = max_in_window(times, limit.window, slack=1e-9)
        # a real margin, not just "under": at most 75 % of each limit
        assert worst <= limit.limit * 0.75, (limit, worst)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_day_of_immediate_drops_stays_under_the_rate_limits(seed: int) -> None:
    backoff = Backoff(rng=random.Random(seed))
    times = simulate(backoff, lambda _i: (0.01, False))
    assert_under_cloud_limits(times)
    assert backoff.auth_suspected
    # backs off hard: a silently-closing server sees a handful of attempts an hour, not hundreds
    assert len(times) < 24 * 12


@pytest.mark.parametrize("seed", [0, 1])
def test_a_day_of_accept_frame_then_drop_stays_under_the_rate_limits(seed: int) -> None:
    # the server speaks (so no auth suspicion) but drops every connection after a second
    backoff = Backoff(rng=random.Random(seed))
    times = simulate(backoff, lambda _i: (1.0, True))
    assert_under_cloud_limits(times)
    assert not backoff.auth_suspected
    assert backoff.failures > 5  # never reset: no connection was healthy


def test_rate_guard_holds_even_with_a_tiny_cap() -> None:
    # a misconfigured policy (no real backoff) is still kept under the limits by the guard alone
    policy = BackoffPolicy(base=0.001, cap=0.001, auth_suspect_after=10**9)
    backoff = Backoff(policy, rng=random.Random(3))
    times = simulate(backoff, lambda _i: (0.0, True))
    assert_under_cloud_limits(times)
    # and it uses its budget rather than stalling
    assert len(times) > 0.7 * 3072


def test_healthy_connections_reset_but_still_respect_limits() -> None:
    backoff = Backoff(rng=random.Random(4))
    times = simulate(backoff, lambda _i: (60.0, True))
    assert_under_cloud_limits(times)
    assert backoff.failures <= 1


def test_first_attempt_is_immediate_then_full_jitter_grows_to_cap() -> None:
    backoff = Backoff(BackoffPolicy(base=1.0, cap=8.0), rng=random.Random(5))
    assert backoff.next_delay(0.0) == 0.0
    bounds = []
    for n in range(1, 7):
        backoff.record_attempt(float(n * 1000))
        bounds.append(min(8.0, 2.0**n))
        delay = backoff.next_delay(float(n * 1000))
        assert 0.0 <= delay <= bounds[-1]
    assert backoff.failures == 6


def test_jitter_spreads_delays() -> None:
    backoff = Backoff(BackoffPolicy(base=1.0, cap=32.0), rng=random.Random(6))
    for t in range(5):
        backoff.record_attempt(float(t * 1000))
    delays = [backoff.next_delay(10_000.0) for _ in range(2000)]
    assert min(delays) < 3.2 and max(delays) > 28.8  # spans the full [0, 32] range
    mean = sum(delays) / len(delays)
    assert 14.0 < mean < 18.0
    assert len({round(d, 6) for d in delays}) > 1900


def test_reset_only_after_staying_healthy_long_enough() -> None:
    policy = BackoffPolicy(healthy_after=60.0)
    backoff = Backoff(policy, rng=random.Random(7))
    for t in (0.0, 100.0, 200.0):
        backoff.record_attempt(t)
        backoff.record_connected(t)
        backoff.record_frame()
        backoff.record_disconnected(t + 59.9)  # almost healthy: not enough
    assert backoff.failures == 3
    backoff.record_attempt(300.0)
    backoff.record_connected(300.0)
    backoff.record_disconnected(360.0)
    assert backoff.failures == 0
    assert 0.0 <= backoff.next_delay(400.0) <= policy.base


def test_repeated_silent_immediate_closes_mean_probable_auth_failure() -> None:
    policy = BackoffPolicy(auth_suspect_after=3, auth_floor=300.0, immediate_close=5.0)
    backoff = Backoff(policy, rng=random.Random(8))
    now = 0.0
    for _ in range(3):
        assert not backoff.auth_suspected
        backoff.record_attempt(now)
        backoff.record_connected(now)
        backoff.record_disconnected(now + 0.05)
        now += 1000.0
    assert backoff.auth_suspected
    delay = backoff.next_delay(now)
    assert 300.0 <= delay <= 600.0
    # a frame from the server clears the suspicion
    backoff.record_attempt(now)
    backoff.record_connected(now)
    backoff.record_frame()
    assert not backoff.auth_suspected


def test_slow_silent_close_is_not_an_auth_signal() -> None:
    backoff = Backoff(BackoffPolicy(immediate_close=5.0), rng=random.Random(9))
    for t in range(5):
        backoff.record_attempt(t * 100.0)
        backoff.record_connected(t * 100.0)
        backoff.record_disconnected(t * 100.0 + 30.0)  # polled 30 s, then dropped: not auth
    assert not backoff.auth_suspected


def test_http_401_is_an_auth_failure_at_once() -> None:
    backoff = Backoff(rng=random.Random(10))
    backoff.record_attempt(0.0)
    backoff.record_rejected()
    assert backoff.auth_suspected
    assert backoff.next_delay(1.0) >= backoff.policy.auth_floor


def test_rate_guard_waits_for_the_oldest_attempt_to_leave_the_window() -> None:
    policy = BackoffPolicy(
        base=0.001, cap=0.001, limits=(RateLimit(window=60.0, limit=4),), budget_fraction=1.0
    )
    backoff = Backoff(policy, rng=random.Random(11))
    for t in (0.0, 1.0, 2.0, 3.0):
        backoff.record_attempt(t)
    assert backoff.next_delay(10.0) == pytest.approx(50.0)
    assert backoff.next_delay(60.5) == pytest.approx(0.0, abs=0.002)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="cap"):
        BackoffPolicy(cap=0)


def test_a_server_that_crashes_seconds_after_restarting_is_not_taken_for_a_bad_key() -> None:
    # Bencher's key check closes within milliseconds of the upgrade; a crash-looping server drops
    # a few seconds in. Only the former is an authentication signal.
    backoff = Backoff(BackoffPolicy(), rng=random.Random(10))
    for t in range(6):
        backoff.record_attempt(t * 100.0)
        backoff.record_connected(t * 100.0)
        backoff.record_disconnected(t * 100.0 + 2.5)
    assert not backoff.auth_suspected


def test_the_auth_streak_must_be_consecutive() -> None:
    backoff = Backoff(BackoffPolicy(auth_suspect_after=3), rng=random.Random(11))
    for t, lasted in enumerate([0.05, 0.05, 10.0, 0.05, 0.05]):
        backoff.record_attempt(t * 100.0)
        backoff.record_connected(t * 100.0)
        backoff.record_disconnected(t * 100.0 + lasted)
    assert backoff.immediate_closes == 2
    assert not backoff.auth_suspected
