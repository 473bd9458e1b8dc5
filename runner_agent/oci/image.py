"""The data an unpacked image hands to job execution: its runtime config and its rootfs."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from attrs import field, frozen


class Lease(Protocol):
    """Something that keeps a cached rootfs from being evicted until released."""

    def release(self) -> None: ...


@frozen
class ImageConfig:
    """The runtime part of an OCI image config (``config`` object of the image config JSON).

    ``entrypoint``/``cmd`` are ``None`` when the image does not set them (Docker's override rules
    distinguish "unset" from "empty"). ``env`` keeps the image's ``KEY=VALUE`` strings in order.
    """

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str | None = None
    user: str | None = None
    os: str | None = None
    architecture: str | None = None


@frozen
class PreparedImage:
    """An image pulled, verified and unpacked: ``rootfs`` is read-only and shared by all users."""

    manifest_digest: str
    rootfs: Path
    config: ImageConfig
    lease: Lease | None = field(default=None, eq=False, repr=False)

    def release(self) -> None:
        """Let the cache evict this rootfs again (idempotent; also happens when garbage collected)."""
        if self.lease is not None:
            self.lease.release()
