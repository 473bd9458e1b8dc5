"""OCI pull tokens for claimed jobs: JWT-shaped, HS256-signed with a dev secret (stdlib hmac).

Claim layout as Bencher's ``OCI_RUNNER`` tokens (PROTOCOL.md §2.2 ``oci_token``): header
``{"typ":"JWT","alg":"HS256"}``; claims ``aud: "oci_runner"``, ``exp = iat + 600``, ``iat``,
``iss``, ``sub`` = runner UUID, ``oci: {repository: <project uuid>, actions: ["pull"]}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from uuid import UUID

OCI_RUNNER_TOKEN_TTL = 600
DEV_SECRET = b"runner-agent dev-server secret (not for production)"
DEFAULT_ISSUER = "http://localhost:6610/"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def make_oci_token(
    *,
    runner: UUID,
    project: UUID,
    issued_at: int,
    issuer: str = DEFAULT_ISSUER,
    secret: bytes = DEV_SECRET,
) -> str:
    """A signed pull token for ``project``'s repository, valid for 600 s from ``issued_at``."""
    header = {"typ": "JWT", "alg": "HS256"}
    claims = {
        "aud": "oci_runner",
        "exp": issued_at + OCI_RUNNER_TOKEN_TTL,
        "iat": issued_at,
        "iss": issuer,
        "sub": str(runner),
        "oci": {"repository": str(project), "actions": ["pull"]},
    }
    signing_input = f"{_b64url(_compact(header))}.{_b64url(_compact(claims))}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def verify_oci_token(token: str, *, secret: bytes = DEV_SECRET) -> dict[str, Any]:
    """Check the signature and return the claims (expiry is the caller's business)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("token must have three dot-separated segments")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    expected = hmac.new(secret, signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64url_decode(parts[2])):
        raise ValueError("bad token signature")
    claims: dict[str, Any] = json.loads(_b64url_decode(parts[1]))
    return claims
