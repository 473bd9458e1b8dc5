"""Docker Registry HTTP API v2 client on httpx (under trio): bearer auth and token challenges,
bounded retries of 5xx/connection errors, manifest fetches, streamed blob reads, and pushes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from attrs import frozen

from runner_agent.errors import ImageError
from runner_agent.oci.errors import (
    ImageNotFoundError,
    ManifestError,
    RegistryAuthError,
    RegistryUnavailableError,
    TruncatedBlobError,
)
from runner_agent.oci.mediatypes import ACCEPT_MANIFESTS

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024


@frozen
class RetryPolicy:
    """Bounded exponential backoff for 5xx and 429 answers and for connection errors."""

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 4.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay, self.base_delay * (2**attempt)))


def normalize_registry_url(registry: str) -> str:
    """``https://registry.bencher.dev/`` → ``https://registry.bencher.dev``; a bare host gets https.

    Like Bencher's reference runner, trailing ``/`` is trimmed and the scheme (http or https)
    decides how we connect.
    """
    text = registry.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "https", text
    elif scheme not in ("http", "https"):
        raise ImageError(f"unsupported registry URL scheme in {registry!r} (use http or https)")
    host = rest.rstrip("/")
    if not _HOST_RE.match(host):
        raise ImageError(f"invalid registry URL {registry!r}: expected [http[s]://]host[:port][/]")
    return f"{scheme}://{host}"


_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


def parse_bearer_challenge(header: str) -> dict[str, str] | None:
    """``Bearer realm="…",service="…",scope="…"`` → its parameters; None if not a Bearer challenge."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return {k.lower(): v for k, v in _PARAM_RE.findall(params)}


class RegistryClient:
    """One repository on one registry. ``token`` is sent as ``Bearer`` (Bencher's ``oci_token``)
    and, on a token challenge, as the credential for the token endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        registry_url: str,
        repository: str,
        *,
        token: str | None = None,
        actions: str = "pull",
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.http = http
        self.base = normalize_registry_url(registry_url)
        self.repository = repository
        self.retry = retry
        self._token = token
        self._actions = actions
        self._auth: str | None = f"Bearer {token}" if token else None

    def url(self, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{self.repository}/{kind}/{reference}"

    async def _fetch_token(self, challenge: dict[str, str], url: str) -> None:
        realm = challenge.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry at {url} sent a Bearer challenge without a realm")
        params = {}
        if "service" in challenge:
            params["service"] = challenge["service"]
        params["scope"] = challenge.get("scope") or f"repository:{self.repository}:{self._actions}"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            resp = await self.http.get(realm, params=params, headers=headers)
        except httpx.TransportError as err:
            raise RegistryAuthError(f"cannot reach token endpoint {realm}: {err!r}") from None
        if resp.status_code != 200:
            raise RegistryAuthError(
                f"token endpoint {realm} refused the token request (HTTP {resp.status_code}): "
                f"{resp.text[:200]!r}"
            )
        try:
            doc = resp.json()
        except ValueError:
            raise RegistryAuthError(f"token endpoint {realm} did not answer JSON") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"token endpoint {realm} answered without a token")
        self._auth = f"Bearer {token}"

    async def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send with auth, answer one token challenge, retry 5xx/connection errors with backoff.

        Returns a streaming response with a non-5xx, non-401 status; the caller closes it.
        """
        challenged = False
        attempt = 0
        while True:
            req_headers = dict(headers or {})
            if self._auth:
                req_headers["Authorization"] = self._auth
            request = self.http.build_request(
                method, url, headers=req_headers, content=content, params=params
            )
            problem: str
            try:
                resp = await self.http.send(request, stream=True, follow_redirects=True)
            except httpx.TransportError as err:
                problem = f"connection error: {err!r}"
            else:
                if resp.status_code == 401:
                    header = resp.headers.get("www-authenticate", "")
                    await resp.aclose()
                    challenge = parse_bearer_challenge(header)
                    if challenge is not None and not challenged:
                        challenged = True
                        await self._fetch_token(challenge, url)
                        continue
                    raise RegistryAuthError(
                        f"registry refused access to {what} at {url} (HTTP 401"
                        f"{', token rejected' if challenged or self._token else ', no credentials'})"
                    )
                if resp.status_code == 403:
                    await resp.aclose()
                    raise RegistryAuthError(f"registry denied access to {what} at {url} (HTTP 403)")
                if resp.status_code < 500 and resp.status_code != 429:
                    return resp
                problem = f"HTTP {resp.status_code}"
                await resp.aclose()
            attempt += 1
            if attempt >= self.retry.attempts:
                raise RegistryUnavailableError(
                    f"registry failed for {what} at {url} after {attempt} attempts "
                    f"(last: {problem})"
                )
            await trio.sleep(self.retry.delay(attempt - 1))

    async def _fail_status(self, resp: httpx.Response, what: str) -> None:
        try:
            body = (await resp.aread())[:200]
        except httpx.TransportError as err:  # the status is the news; the body is a detail
            body = f"(body unreadable: {err!r})".encode()
        await resp.aclose()
        if resp.status_code == 404:
            raise ImageNotFoundError(
                f"{what} not found in repository {self.repository!r} at {resp.request.url} (HTTP 404)"
            )
        raise ImageError(
            f"registry answered HTTP {resp.status_code} for {what} at {resp.request.url}: {body!r}"
        )

    async def get_manifest(self, reference: str) -> tuple[bytes, str | None]:
        """Fetch a manifest or index; returns (raw body, Content-Type)."""
        what = f"manifest {reference}"
        url = self.url("manifests", reference)
        resp = await self.send("GET", url, what=what, headers={"Accept": ACCEPT_MANIFESTS})
        try:
            if resp.status_code != 200:
                await self._fail_status(resp, what)
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{what} at {url} is {declared} bytes; the limit is {MAX_MANIFEST_BYTES}")
            body = bytearray()
            try:
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise ManifestError(f"{what} at {url} exceeds {MAX_MANIFEST_BYTES} bytes")
            except httpx.TransportError as err:  # cut off, reset, or stalled past the read timeout
                raise TruncatedBlobError(f"{what} at {url}: body not received in full ({err!r})") from None
            return bytes(body), resp.headers.get("content-type")
        finally:
            await resp.aclose()

    @asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[httpx.Response]:
        """A streaming 200 response for a blob (redirects followed); closed on exit."""
        what = f"blob {digest}"
        resp = await self.send(
            "GET", self.url("blobs", digest), what=what, headers={"Accept-Encoding": "identity"}
        )
        try:
            if resp.status_code != 200:
                await self._fail_status(resp, what)
            yield resp
        finally:
            await resp.aclose()

    async def blob_exists(self, digest: str) -> bool:
        resp = await self.send("HEAD", self.url("blobs", digest), what=f"blob {digest}")
        await resp.aclose()
        return resp.status_code == 200

    async def put_blob(self, digest: str, data: bytes) -> None:
        """Monolithic upload: POST an upload session, then PUT the data with ``?digest=``."""
        what = f"upload of blob {digest}"
        start = await self.send("POST", f"{self.base}/v2/{self.repository}/blobs/uploads/", what=what)
        await start.aclose()
        location = start.headers.get("location")
        if start.status_code != 202 or not location:
            raise ImageError(f"{what}: registry answered HTTP {start.status_code} to the upload start")
        target = httpx.URL(self.base).join(location).copy_merge_params({"digest": digest})
        resp = await self.send(
            "PUT",
            str(target),
            what=what,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        await _expect_created(resp, what)

    async def put_manifest(self, reference: str, body: bytes, media_type: str) -> None:
        what = f"upload of manifest {reference}"
        resp = await self.send(
            "PUT",
            self.url("manifests", reference),
            what=what,
            content=body,
            headers={"Content-Type": media_type},
        )
        await _expect_created(resp, what)


async def _expect_created(resp: httpx.Response, what: str) -> None:
    """Read and close an upload's response; anything but 201 Created is an :class:`ImageError`."""
    await resp.aread()
    await resp.aclose()
    if resp.status_code != 201:
        raise ImageError(f"{what}: registry answered HTTP {resp.status_code}: {resp.text[:200]!r}")


def response_length(resp: httpx.Response) -> int | None:
    value: Any = resp.headers.get("content-length")
    return int(value) if isinstance(value, str) and value.isdigit() else None
