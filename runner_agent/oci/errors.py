"""Specific image errors: each says what failed, for which digest or URL, and why."""

from __future__ import annotations

from runner_agent.errors import ImageError


class DigestMismatchError(ImageError):
    """Content did not hash to the digest that named it."""


class ImageNotFoundError(ImageError):
    """The registry or layout has no such manifest or blob (HTTP 404 / missing file)."""


class RegistryAuthError(ImageError):
    """The registry refused our credentials (401/403) or the token exchange failed."""


class RegistryUnavailableError(ImageError):
    """The registry kept answering 5xx or could not be reached, after bounded retries."""


class ManifestError(ImageError):
    """A manifest, index or image config was malformed or of an unsupported media type."""


class TruncatedBlobError(ImageError):
    """A body ended before (or ran past) the size its descriptor announced."""


class InterruptedBodyError(TruncatedBlobError):
    """The connection broke in the middle of a body (retried like a 5xx before it is final)."""


class UnsafeLayerError(ImageError):
    """A layer tried to write outside the rootfs or broke an unpack limit."""
