"""OCI content digests: parsing/validation and incremental verification over streamed chunks."""

from __future__ import annotations

import hashlib
import re

from attrs import frozen

from runner_agent.errors import ImageError
from runner_agent.oci.errors import DigestMismatchError

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


@frozen
class Digest:
    """A validated ``algorithm:hex`` digest (sha256 or sha512, lowercase hex of the right length)."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def path_key(self) -> str:
        """``alg-hex``: a file-name-safe form of the digest."""
        return f"{self.algorithm}-{self.hex}"


def parse_digest(text: str) -> Digest:
    """Parse and validate ``sha256:<64 hex>`` / ``sha512:<128 hex>``; raise ImageError otherwise."""
    match = _DIGEST_RE.match(text)
    if match is None or len(match.group(2)) != _HEX_LEN[match.group(1)]:
        raise ImageError(
            f"invalid digest {text!r}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>"
        )
    return Digest(match.group(1), match.group(2))


class DigestVerifier:
    """Hashes chunks as they stream by; ``verify()`` checks the result against the expected digest."""

    def __init__(self, expected: Digest, what: str) -> None:
        self.expected = expected
        self.what = what
        self.size = 0
        self._hash = hashlib.new(expected.algorithm)

    def update(self, chunk: bytes | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def verify(self) -> None:
        actual = self._hash.hexdigest()
        if actual != self.expected.hex:
            raise DigestMismatchError(
                f"digest mismatch for {self.what}: expected {self.expected}, "
                f"content hashes to {self.expected.algorithm}:{actual} ({self.size} bytes)"
            )


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
