"""Where an image comes from: a registry repository at a digest (or tag), or a local OCI layout."""

from __future__ import annotations

import re
from pathlib import Path

from attrs import field, frozen

from runner_agent.errors import ImageError
from runner_agent.oci.digest import parse_digest
from runner_agent.oci.registry import normalize_registry_url

_REPO_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_REPO_COMPONENT}(?:/{_REPO_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _check_repository(_: object, __: object, value: str) -> None:
    if not _REPO_RE.match(value):
        raise ImageError(f"invalid repository name {value!r} (lowercase path components expected)")


def _check_reference(_: object, __: object, value: str) -> None:
    if ":" in value:
        parse_digest(value)
    elif not _TAG_RE.match(value):
        raise ImageError(f"invalid image reference {value!r}: expected a digest or a tag")


def _check_registry(_: object, __: object, value: str) -> None:
    normalize_registry_url(value)


@frozen
class RegistrySource:
    """A registry image: ``registry`` is a URL or host (Bencher's ``config.registry``, e.g.
    ``https://registry.bencher.dev/``), ``repository`` the project UUID, ``digest`` the manifest
    (or index) digest — a tag is accepted for ``runner-agent exec`` — and ``token`` the job's
    ``oci_token`` (sent as ``Authorization: Bearer``)."""

    registry: str = field(validator=_check_registry)
    repository: str = field(validator=_check_repository)
    digest: str = field(validator=_check_reference)
    token: str | None = field(default=None, repr=False)

    @property
    def is_digest(self) -> bool:
        return ":" in self.digest

    @property
    def url(self) -> str:
        return normalize_registry_url(self.registry)

    def describe(self) -> str:
        sep = "@" if self.is_digest else ":"
        return f"{self.url.split('://', 1)[1]}/{self.repository}{sep}{self.digest}"


@frozen
class LayoutSource:
    """A local OCI image layout directory; ``digest`` None means its first listed image."""

    path: Path
    digest: str | None = field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.digest is not None:
            parse_digest(self.digest)

    def describe(self) -> str:
        return f"OCI layout {self.path}" + (f"@{self.digest}" if self.digest else "")


ImageSource = RegistrySource | LayoutSource


def parse_image_reference(ref: str, token: str | None = None) -> RegistrySource:
    """``[scheme://]host[:port]/repo@sha256:…`` or ``host/repo:tag`` → a RegistrySource.

    Without a scheme, localhost/127.0.0.1/[::1] use http and every other host https.
    """
    text = ref.strip()
    scheme = ""
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise ImageError(f"image reference {ref!r}: unsupported scheme {scheme!r}")
    host, sep, rest = text.partition("/")
    if not sep or not host or not rest:
        raise ImageError(f"image reference {ref!r}: expected host[:port]/repository@digest or :tag")
    if "@" in rest:
        repository, reference = rest.split("@", 1)
    else:
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon <= last_slash:
            raise ImageError(f"image reference {ref!r} names neither a digest nor a tag")
        repository, reference = rest[:colon], rest[colon + 1 :]
    if not scheme:
        scheme = "http" if host.split(":")[0] in _LOCAL_HOSTS or host.startswith("[::1]") else "https"
    return RegistrySource(f"{scheme}://{host}", repository, reference, token)
