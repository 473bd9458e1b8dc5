"""``prepare_image``: pull (or reuse) an image, verify it, unpack it (or reuse the unpacked rootfs)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx
import trio

from runner_agent.errors import ImageError
from runner_agent.oci import mediatypes as mt
from runner_agent.oci._threads import CancelToken, run_sync_cancellable
from runner_agent.oci.cache import BlobWriter, ImageCache
from runner_agent.oci.digest import Digest, DigestVerifier, parse_digest
from runner_agent.oci.errors import (
    InterruptedBodyError,
    ManifestError,
    TruncatedBlobError,
    UnsafeLayerError,
)
from runner_agent.oci.image import ImageConfig, PreparedImage
from runner_agent.oci.layout import LayoutOrigin
from runner_agent.oci.manifest import (
    Descriptor,
    Platform,
    host_platform,
    load_json,
    media_type_of,
    parse_image_config,
    parse_index,
    parse_manifest,
    select_platform,
)
from runner_agent.oci.registry import MAX_MANIFEST_BYTES, RegistryClient, RetryPolicy
from runner_agent.oci.source import ImageSource, LayoutSource, RegistrySource
from runner_agent.oci.unpack import Unpacker, UnpackLimits

MAX_PARALLEL_DOWNLOADS = 4
DEFAULT_LIMITS = UnpackLimits()
DEFAULT_RETRY = RetryPolicy()


class Origin(Protocol):
    def describe(self) -> str: ...

    async def manifest(self, reference: str) -> tuple[bytes, str | None]: ...

    async def blob_into(self, desc: Descriptor, writer: BlobWriter) -> None: ...

    async def aclose(self) -> None: ...


class RegistryOrigin:
    """Manifests and blobs from a registry; the HTTP client is made on first use (warm starts
    from the cache never touch the network)."""

    def __init__(
        self, source: RegistrySource, client: httpx.AsyncClient | None, retry: RetryPolicy
    ) -> None:
        self.source = source
        self._client = client
        self._own: httpx.AsyncClient | None = None
        self._retry = retry
        self._registry: RegistryClient | None = None

    def describe(self) -> str:
        return self.source.describe()

    def _reg(self) -> RegistryClient:
        if self._registry is None:
            http = self._client
            if http is None:
                http = self._own = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=120.0))
            self._registry = RegistryClient(
                http, self.source.registry, self.source.repository, token=self.source.token,
                retry=self._retry,
            )
        return self._registry

    async def manifest(self, reference: str) -> tuple[bytes, str | None]:
        return await self._reg().get_manifest(reference)

    async def blob_into(self, desc: Descriptor, writer: BlobWriter) -> None:
        async with self._reg().open_blob(str(desc.digest)) as resp:
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) != desc.size:
                raise TruncatedBlobError(
                    f"blob {desc.digest} at {resp.request.url}: registry sends {length} bytes, "
                    f"the manifest says {desc.size}"
                )
            try:
                async for chunk in resp.aiter_bytes():
                    await writer.write(chunk)
            except httpx.TransportError as err:
                raise InterruptedBodyError(
                    f"blob {desc.digest} at {resp.request.url}: body ended after "
                    f"{writer.received} of {desc.size} bytes ({err!r})"
                ) from None

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.aclose()


@contextlib.asynccontextmanager
async def _open_origin(
    source: ImageSource, client: httpx.AsyncClient | None, retry: RetryPolicy
) -> AsyncIterator[Origin]:
    origin: Origin
    if isinstance(source, RegistrySource):
        origin = RegistryOrigin(source, client, retry)
    else:
        origin = await trio.to_thread.run_sync(LayoutOrigin, source.path)
    try:
        yield origin
    finally:
        with trio.CancelScope(shield=True):
            await origin.aclose()


def _first_image_error(group: BaseExceptionGroup[BaseException]) -> ImageError | None:
    for exc in group.exceptions:
        if isinstance(exc, ImageError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_image_error(exc)
            if found is not None:
                return found
    return None


async def prepare_image(
    source: ImageSource,
    cache: ImageCache,
    *,
    client: httpx.AsyncClient | None = None,
    limits: UnpackLimits = DEFAULT_LIMITS,
    platform: Platform | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> PreparedImage:
    """Pull (or reuse) + verify + unpack (or reuse) the image; returns its read-only rootfs and
    config, holding a lease on the cache entry until ``PreparedImage.release()``.

    ``platform`` (default: the host's) selects from an image index. Cancellable at any await;
    a cancelled pull leaves no cache entry that would later be trusted. Every failure is an
    ``ImageError`` with a specific message.
    """
    plat = platform or host_platform()
    async with _open_origin(source, client, retry) as origin:
        key: Digest
        if isinstance(source, LayoutSource):
            if source.digest is not None:
                key = parse_digest(source.digest)
            else:
                assert isinstance(origin, LayoutOrigin)
                key = origin.default_digest()
        elif source.is_digest:
            key = parse_digest(source.digest)
        else:
            body, _ = await origin.manifest(source.digest)
            key = Digest("sha256", hashlib.sha256(body).hexdigest())

        async def create(fs: Path) -> ImageConfig:
            try:
                return await _pull_and_unpack(origin, key, fs, plat, limits, cache, retry)
            except BaseExceptionGroup as group:
                found = _first_image_error(group)
                if found is not None:
                    raise found from None
                raise

        lease, meta = await cache.lease_rootfs(key, create)
    return PreparedImage(
        manifest_digest=str(key), rootfs=cache.rootfs_dir(key) / "fs", config=meta.config, lease=lease
    )


async def _verified_manifest(
    origin: Origin, digest: Digest, size: int | None
) -> tuple[dict[str, object], str]:
    what = f"manifest {digest} from {origin.describe()}"
    body, content_type = await origin.manifest(str(digest))
    verifier = DigestVerifier(digest, what)
    verifier.update(body)
    verifier.verify()
    if size is not None and len(body) != size:
        raise TruncatedBlobError(f"{what} is {len(body)} bytes; its descriptor says {size}")
    doc = load_json(body, what)
    return doc, media_type_of(doc, content_type, what)


async def _small_blob(
    origin: Origin, cache: ImageCache, desc: Descriptor, retry: RetryPolicy
) -> bytes:
    if desc.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"image config {desc.digest} is {desc.size} bytes (too large)")
    fh = await _blob(
        origin, cache, desc, f"image config {desc.digest} from {origin.describe()}", retry
    )
    with fh:
        return fh.read()


async def _blob(
    origin: Origin, cache: ImageCache, desc: Descriptor, what: str, retry: RetryPolicy
) -> BinaryIO:
    """The verified blob, from the cache or downloaded into it; a body cut off mid-way is
    fetched again (bounded backoff) before the truncation becomes the error."""
    cached = cache.open_blob(desc.digest)
    if cached is not None:
        if os.fstat(cached.fileno()).st_size == desc.size:
            return cached
        cached.close()
    attempt = 0
    while True:
        writer = cache.blob_writer(desc.digest, desc.size, what)
        try:
            await origin.blob_into(desc, writer)
            return await writer.commit()
        except InterruptedBodyError as err:
            attempt += 1
            if attempt >= retry.attempts:
                raise InterruptedBodyError(f"{err} (after {attempt} attempts)") from None
        finally:
            writer.abort()
        await trio.sleep(retry.delay(attempt - 1))


async def _pull_and_unpack(
    origin: Origin,
    digest: Digest,
    fs: Path,
    plat: Platform,
    limits: UnpackLimits,
    cache: ImageCache,
    retry: RetryPolicy,
) -> ImageConfig:
    what = f"image {digest} from {origin.describe()}"
    doc, media_type = await _verified_manifest(origin, digest, None)
    if media_type in mt.INDEX_TYPES:
        chosen = select_platform(parse_index(doc, what), plat, what)
        doc, media_type = await _verified_manifest(origin, chosen.digest, chosen.size)
        what = f"image {chosen.digest} ({plat.os}/{plat.architecture} of {digest}) from {origin.describe()}"
    if media_type not in mt.MANIFEST_TYPES:
        raise ManifestError(f"{what}: unsupported manifest media type {media_type!r}")
    manifest = parse_manifest(doc, what)
    config_body = await _small_blob(origin, cache, manifest.config, retry)
    parsed = parse_image_config(config_body, f"{what} config")
    if parsed.diff_ids and len(parsed.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{what}: config lists {len(parsed.diff_ids)} diff_ids for {len(manifest.layers)} layers"
        )

    layers = manifest.layers
    compressed = sum(layer.size for layer in layers)
    if compressed > limits.max_total_bytes:  # refuse before filling the disk with downloads
        raise UnsafeLayerError(
            f"{what}: its layers are {compressed} bytes compressed, over the unpack limit of "
            f"{limits.max_total_bytes} bytes"
        )
    files: list[BinaryIO | None] = [None] * len(layers)
    ready = [trio.Event() for _ in layers]
    limiter = trio.CapacityLimiter(MAX_PARALLEL_DOWNLOADS)

    async def fetch(i: int) -> None:
        async with limiter:
            files[i] = await _blob(
                origin, cache, layers[i], f"layer {i} ({layers[i].digest}) of {what}", retry
            )
        ready[i].set()

    unpacker = await trio.to_thread.run_sync(Unpacker, fs, limits)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(layers)):
                nursery.start_soon(fetch, i)
            for i, desc in enumerate(layers):
                await ready[i].wait()
                fh = files[i]
                assert fh is not None
                diff_id = parsed.diff_ids[i] if parsed.diff_ids else None
                layer_what = f"layer {i} ({desc.digest}) of {what}"
                await run_sync_cancellable(
                    functools.partial(_apply, unpacker, fh, layer_what, diff_id)
                )
                fh.close()
    finally:
        with trio.CancelScope(shield=True):  # waits for queued file writes: off the trio thread
            await trio.to_thread.run_sync(unpacker.close)
        for fh in files:
            if fh is not None:
                fh.close()
    return parsed.image


def _apply(
    unpacker: Unpacker, fh: BinaryIO, what: str, diff_id: Digest | None, token: CancelToken
) -> None:
    unpacker.apply_layer(fh, what, diff_id, token)
