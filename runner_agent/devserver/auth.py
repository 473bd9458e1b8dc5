"""Runner identities, channel authentication (PROTOCOL.md §1.4) and the per-runner connection
rate limit (§1.5).

A runner is known by UUID and slug and holds the SHA-256 (lowercase hex) of its key, as Bencher
stores it. Authentication resolves the ``{runner}`` path segment (UUID first, then slug), parses
``Authorization: Bearer <key>``, checks the key format and compares hashes; any failure is an
:class:`AuthError`, which the channel answers by dropping the connection without a Close frame.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections import deque
from collections.abc import Sequence
from uuid import UUID

from attrs import field, frozen

from runner_agent.protocol import is_valid_runner_key

KEY_PREFIX = "bencher_runner_"
KEY_BODY_LEN = 30
_PATH_RE = re.compile(r"/v0/runners/([^/?#]+)/channel")


class AuthError(Exception):
    """The connection is not allowed (bad header, key, runner, or rate limit)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A fresh key in Bencher's format: ``bencher_runner_`` + 30 ASCII alphanumerics."""
    alphabet = string.ascii_letters + string.digits
    return KEY_PREFIX + "".join(secrets.choice(alphabet) for _ in range(KEY_BODY_LEN))


def is_key_format(key: str) -> bool:
    return is_valid_runner_key(key)


@frozen
class RunnerIdentity:
    uuid: UUID
    slug: str
    key_hash: str

    @classmethod
    def with_key(cls, uuid: UUID, slug: str, key: str) -> RunnerIdentity:
        if not is_key_format(key):
            raise ValueError(
                f"runner key must be {KEY_PREFIX!r} followed by {KEY_BODY_LEN} letters or digits"
            )
        return cls(uuid=uuid, slug=slug, key_hash=hash_key(key))


def runner_ref_from_path(path: str) -> str | None:
    """The ``{runner}`` segment of ``/v0/runners/{runner}/channel`` (query string ignored)."""
    match = _PATH_RE.fullmatch(path.split("?", 1)[0])
    return match.group(1) if match else None


def resolve_runner(runners: Sequence[RunnerIdentity], ref: str) -> list[RunnerIdentity]:
    """Runners the path segment names: by UUID if it parses as one, else by slug."""
    try:
        as_uuid = UUID(ref)
    except ValueError:
        return [r for r in runners if r.slug == ref]
    return [r for r in runners if r.uuid == as_uuid]


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.decode("latin-1").lower() == "authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                break
            return token
    raise AuthError("Missing or invalid Authorization header")


def authenticate(
    runners: Sequence[RunnerIdentity], ref: str, headers: Sequence[tuple[bytes, bytes]]
) -> RunnerIdentity:
    token = bearer_token(headers)
    if not is_key_format(token):
        raise AuthError("Invalid runner key format")
    digest = hash_key(token)
    for runner in resolve_runner(runners, ref):
        if runner.key_hash == digest:
            return runner
    raise AuthError("Invalid runner key")


@frozen
class RateLimits:
    """Connection attempts allowed per runner per sliding window (Bencher Cloud's defaults)."""

    minute: int = 16
    hour: int = 256
    day: int = 4096


@frozen
class RateLimiter:
    """Sliding-window limiter keyed by runner UUID; times are monotonic seconds."""

    limits: RateLimits
    _seen: dict[UUID, deque[float]] = field(factory=dict)

    def check(self, runner: UUID, now: float) -> None:
        """Record one attempt at ``now``; raise :class:`AuthError` if it exceeds a window."""
        seen = self._seen.setdefault(runner, deque())
        while seen and now - seen[0] >= 86_400:
            seen.popleft()
        for window, limit, name in (
            (60.0, self.limits.minute, "minute"),
            (3600.0, self.limits.hour, "hour"),
            (86_400.0, self.limits.day, "day"),
        ):
            if sum(1 for t in seen if now - t < window) >= limit:
                raise AuthError(f"Too many requests for runner per {name}")
        seen.append(now)
