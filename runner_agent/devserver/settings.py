"""Tunable timings and limits of the dev server (defaults as Bencher's, PROTOCOL.md §4)."""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import ge, gt, le

from runner_agent.devserver.auth import RateLimits
from runner_agent.devserver.token import DEFAULT_ISSUER


@frozen
class DevServerSettings:
    """All durations in seconds, measured on trio's clock (so tests can use ``MockClock``)."""

    heartbeat_timeout: float = field(default=90.0, validator=[gt(0), le(900)])
    grace: float = field(default=60.0, validator=[ge(0), le(900)])
    poll_interval: float = field(default=1.0, validator=gt(0))
    default_poll_timeout: int = field(default=30, validator=[ge(1), le(900)])
    max_message_size: int = field(default=1 << 22, validator=gt(0))
    rate_limits: RateLimits | None = None  # None: no connection rate limit (the default)
    connect_timeout: float = field(default=10.0, validator=gt(0))
    close_timeout: float = field(default=5.0, validator=gt(0))
    issuer: str = DEFAULT_ISSUER
    frame_log_size: int = field(default=100_000, validator=gt(0))  # frames kept in DevServer.frames
