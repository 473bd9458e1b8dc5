"""Reconnect policy: full-jitter exponential backoff plus a per-runner connection-rate guard.

Pure logic: every method takes ``now`` (seconds on any monotonic clock) and randomness comes from an
injected ``random.Random``, so a day of failures can be simulated in milliseconds.

Three rules combine in :meth:`Backoff.next_delay`:

1. **Full jitter.** After ``n`` attempts without a healthy connection the delay is
   ``uniform(0, min(cap, base * 2**n))``. The very first attempt goes out at once. The failure count
   resets only when a connection stayed open for ``healthy_after`` seconds, so a server that accepts
   and then drops every connection still drives the delay up to ``cap``.
2. **Probable authentication failure.** Bencher rejects a bad key (and an excess over its rate limit)
   by accepting the upgrade and closing without a frame (PROTOCOL.md §1.2, §1.4). After
   ``auth_suspect_after`` consecutive connections that closed within ``immediate_close`` seconds
   without a single frame from the server (or one HTTP 401/403), the delay is at least
   ``auth_floor`` (plus jitter of up to another ``auth_floor``) until a frame arrives again.
   Bencher checks the key right after the upgrade, so its rejection comes within milliseconds;
   the window is kept short (2 s) so that a server that crashes soon after restarting is not
   taken for a key problem, and any connection that was not such a close breaks the streak.
3. **Rate guard.** Bencher Cloud allows 16 connections a minute, 256 an hour and 4096 a day per
   runner (PROTOCOL.md §1.5). Every attempt is remembered for the longest window and the delay is
   stretched so that no sliding window ever holds more than ``budget_fraction`` of its limit.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque

from attrs import field, frozen

from runner_agent.validators import positive


@frozen
class RateLimit:
    """At most ``limit`` connection attempts in any sliding ``window`` seconds."""

    window: float
    limit: int


#: Bencher Cloud's per-runner channel limits (PROTOCOL.md §1.5).
BENCHER_CLOUD_LIMITS: tuple[RateLimit, ...] = (
    RateLimit(window=60.0, limit=16),
    RateLimit(window=3600.0, limit=256),
    RateLimit(window=86400.0, limit=4096),
)


_positive = positive("backoff")


@frozen
class BackoffPolicy:
    """Tunables of :class:`Backoff` (seconds unless noted)."""

    base: float = field(default=1.0, validator=_positive)
    cap: float = field(default=60.0, validator=_positive)
    healthy_after: float = field(default=60.0, validator=_positive)
    immediate_close: float = field(default=2.0, validator=_positive)
    auth_suspect_after: int = field(default=3, validator=_positive)
    auth_floor: float = field(default=300.0, validator=_positive)
    limits: tuple[RateLimit, ...] = BENCHER_CLOUD_LIMITS
    budget_fraction: float = field(default=0.75, validator=_positive)

    def budgets(self) -> tuple[tuple[float, int], ...]:
        """``(window, allowed attempts)`` per limit after applying the safety margin."""
        return tuple(
            (limit.window, max(1, math.floor(limit.limit * self.budget_fraction)))
            for limit in self.limits
        )


class Backoff:
    """Mutable reconnect state for one runner. Driver protocol, per attempt::

        delay = backoff.next_delay(now); sleep(delay)
        backoff.record_attempt(now)              # just before connecting
        backoff.record_connected(now)            # the WebSocket handshake succeeded
        backoff.record_frame()                   # any frame arrived from the server (cheap, idempotent)
        backoff.record_disconnected(now)         # the connection ended (any reason)
        backoff.record_rejected()                # HTTP 401/403 on the upgrade
    """

    def __init__(self, policy: BackoffPolicy | None = None, rng: random.Random | None = None) -> None:
        self.policy = policy if policy is not None else BackoffPolicy()
        self._rng = rng if rng is not None else random.Random()
        self._attempts: deque[float] = deque()
        self._longest_window = max((w for w, _ in self.policy.budgets()), default=0.0)
        self._ever_attempted = False
        self.failures = 0
        """Attempts since the last healthy connection."""
        self.immediate_closes = 0
        """Consecutive connections closed quickly without any frame from the server."""
        self._connected_at: float | None = None
        self._frame_seen = False

    @property
    def auth_suspected(self) -> bool:
        """True while repeated silent closes make a rejected key (or rate limit) likely."""
        return self.immediate_closes >= self.policy.auth_suspect_after

    def record_attempt(self, now: float) -> None:
        """A connection attempt starts now (counted against the rate limits)."""
        self._ever_attempted = True
        self.failures += 1
        self._attempts.append(now)
        self._forget_before(now - self._longest_window)

    def record_connected(self, now: float) -> None:
        """The handshake succeeded."""
        self._connected_at = now
        self._frame_seen = False

    def record_frame(self) -> None:
        """The server sent something on the current connection: it accepted us."""
        self._frame_seen = True
        self.immediate_closes = 0

    def record_disconnected(self, now: float) -> None:
        """The current connection ended; classify it as healthy, silent-immediate or plain failure."""
        started = self._connected_at
        self._connected_at = None
        if started is None:
            return
        lasted = now - started
        if lasted >= self.policy.healthy_after:
            self.failures = 0
            self.immediate_closes = 0
        elif lasted < self.policy.immediate_close and not self._frame_seen:
            self.immediate_closes += 1
        else:
            self.immediate_closes = 0  # "consecutive": a longer or talking connection breaks it

    def record_rejected(self) -> None:
        """The server answered the upgrade with 401/403: certainly an authentication problem."""
        self._connected_at = None
        self.immediate_closes = max(self.immediate_closes + 1, self.policy.auth_suspect_after)

    def next_delay(self, now: float) -> float:
        """Seconds to wait before the next attempt (0 for the very first one)."""
        if not self._ever_attempted:
            delay = 0.0
        else:
            exponent = min(self.failures, 60)
            delay = self._rng.uniform(0.0, min(self.policy.cap, self.policy.base * 2.0**exponent))
        if self.auth_suspected:
            floor = self.policy.auth_floor
            delay = max(delay, floor + self._rng.uniform(0.0, floor))
        return max(delay, self._rate_guard_delay(now))

    def _rate_guard_delay(self, now: float) -> float:
        """Smallest wait after which one more attempt keeps every window within its budget."""
        wait = 0.0
        attempts = self._attempts  # sorted: attempts are recorded in time order
        for window, budget in self.policy.budgets():
            first = bisect.bisect_right(attempts, now - window)
            if len(attempts) - first >= budget:
                # The attempt that must leave the window before we may go again.
                leaving = attempts[len(attempts) - budget]
                wait = max(wait, leaving + window - now)
        return wait

    def _forget_before(self, cutoff: float) -> None:
        while self._attempts and self._attempts[0] <= cutoff:
            self._attempts.popleft()
