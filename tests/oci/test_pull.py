"""Pulling from a real docker-registry: manifests and indexes, cache reuse, and every failure
kind with its specific error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
import trio

from runner_agent.oci.cache import ImageCache
from runner_agent.oci.digest import parse_digest
from runner_agent.oci.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    ManifestError,
    RegistryUnavailableError,
    TruncatedBlobError,
    UnsafeLayerError,
)
from runner_agent.oci.fetch import prepare_image
from runner_agent.oci.manifest import Platform, host_platform
from runner_agent.oci.registry import RetryPolicy
from runner_agent.oci.source import LayoutSource, RegistrySource
from runner_agent.oci.unpack import UnpackLimits
from tests.oci.faultproxy import FaultProxy
from tests.support.images import RegistryImage, push_busybox
from tests.support.registry import RegistryServer, free_port

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def source(img: RegistryImage, registry_url: str | None = None, ref: str | None = None) -> RegistrySource:
    return RegistrySource(registry_url or img.registry, img.repository, ref or img.digest)


def assert_clean(cache: ImageCache) -> None:
    """Nothing half-done: no rootfs entries, no temp files."""
    assert list((cache.root / "rootfs").iterdir()) == []
    assert list((cache.root / "tmp").iterdir()) == []


async def test_pull_oci_manifest(busybox_image: RegistryImage, cache: ImageCache) -> None:
    with trio.fail_after(30):
        image = await prepare_image(source(busybox_image), cache)
    assert image.manifest_digest == busybox_image.digest
    assert image.config.cmd == ("/bin/sh",)
    assert (image.rootfs / "bin/sh").readlink() == Path("busybox")
    out = await trio.run_process([image.rootfs / "bin/busybox", "echo", "hi"], capture_stdout=True)
    assert out.stdout == b"hi\n"
    image.release()


async def test_pull_index_picks_host_platform(
    registry: RegistryServer, tmp_path: Path, cache: ImageCache
) -> None:
    with trio.fail_after(30):
        img = await push_busybox(registry.url, "test/indexed", tmp_path, as_index=True)
        index = json.loads((img.layout / "blobs/sha256" / img.digest.split(":")[1]).read_text())
        assert len(index["manifests"]) == 2
        image = await prepare_image(source(img), cache)
        assert image.manifest_digest == img.digest
        assert image.config.architecture == host_platform().architecture
        assert (image.rootfs / "bin/busybox").is_file()
        with pytest.raises(ManifestError, match="no manifest for platform linux/s390x"):
            await prepare_image(source(img), ImageCache(tmp_path / "c2"), platform=Platform("linux", "s390x"))


async def test_reuse_from_cache_without_network(busybox_image: RegistryImage, cache: ImageCache) -> None:
    with trio.fail_after(30):
        first = await prepare_image(source(busybox_image), cache)
        dead = f"http://127.0.0.1:{free_port()}"
        again = await prepare_image(source(busybox_image, dead), cache, retry=FAST_RETRY)
    assert again.rootfs == first.rootfs
    assert again.config == first.config


async def test_tag_reference(busybox_image: RegistryImage, registry: RegistryServer, tmp_path: Path, cache: ImageCache) -> None:
    with trio.fail_after(30):
        img = await push_busybox(registry.url, "test/tagged", tmp_path, tag="v1")
        image = await prepare_image(source(img, ref="v1"), cache)
    assert image.manifest_digest == img.digest


async def test_layout_source(busybox_image: RegistryImage, cache: ImageCache) -> None:
    with trio.fail_after(30):
        image = await prepare_image(LayoutSource(busybox_image.layout), cache)
    assert image.manifest_digest == busybox_image.digest
    assert (image.rootfs / "etc/passwd").read_text().startswith("root:")


async def test_layout_corrupt_blob(registry: RegistryServer, unique_image: RegistryImage, cache: ImageCache) -> None:
    manifest = json.loads((unique_image.layout / "blobs/sha256" / unique_image.digest[7:]).read_text())
    layer = manifest["layers"][0]["digest"]
    path = unique_image.layout / "blobs/sha256" / layer[7:]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with trio.fail_after(30), pytest.raises(DigestMismatchError, match=f"expected {layer}"):
        await prepare_image(LayoutSource(unique_image.layout), cache)
    assert_clean(cache)
    assert not cache.blob_path(parse_digest(layer)).exists()


async def test_registry_blob_digest_mismatch(
    registry: RegistryServer, unique_image: RegistryImage, cache: ImageCache
) -> None:
    manifest = json.loads((unique_image.layout / "blobs/sha256" / unique_image.digest[7:]).read_text())
    layer = manifest["layers"][0]["digest"]
    stored = registry.blob_data_path(layer)
    data = bytearray(stored.read_bytes())
    data[-40] ^= 0xFF
    stored.write_bytes(bytes(data))
    with trio.fail_after(30), pytest.raises(DigestMismatchError) as err:
        await prepare_image(source(unique_image), cache)
    assert f"digest mismatch for layer 0 ({layer})" in str(err.value)
    assert unique_image.digest in str(err.value)
    assert_clean(cache)


async def test_manifest_digest_mismatch(busybox_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.manifest_body = json.dumps({"schemaVersion": 2, "layers": [], "config": {}}).encode()
    with trio.fail_after(30), pytest.raises(DigestMismatchError, match=f"manifest {busybox_image.digest}"):
        await prepare_image(source(busybox_image, proxy.url), cache)
    assert_clean(cache)


async def test_missing_image(busybox_image: RegistryImage, cache: ImageCache) -> None:
    missing = "sha256:" + hashlib.sha256(b"nothing").hexdigest()
    with trio.fail_after(30), pytest.raises(ImageNotFoundError, match=r"not found .*HTTP 404"):
        await prepare_image(source(busybox_image, ref=missing), cache)
    with trio.fail_after(30), pytest.raises(ImageNotFoundError, match="HTTP 404"):
        await prepare_image(RegistrySource(busybox_image.registry, "no/such-repo", busybox_image.digest), cache)
    assert_clean(cache)


async def test_non_json_manifest(busybox_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.manifest_body = b"<html>oops</html>"
    proxy.faults.manifest_type = "text/html"
    with trio.fail_after(30), pytest.raises(ManifestError, match=r"is not valid JSON.*<html>"):
        await prepare_image(RegistrySource(proxy.url, busybox_image.repository, "latest"), cache)
    assert_clean(cache)


async def test_unsupported_media_type(busybox_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.manifest_body = json.dumps({"mediaType": "application/vnd.example.thing+json"}).encode()
    proxy.faults.manifest_type = "application/vnd.example.thing+json"
    with trio.fail_after(30), pytest.raises(ManifestError, match=r"unsupported manifest media type 'application/vnd\.example\.thing"):
        await prepare_image(RegistrySource(proxy.url, busybox_image.repository, "latest"), cache)


async def test_5xx_retried_then_ok(busybox_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.fail_times = 2
    with trio.fail_after(30):
        image = await prepare_image(source(busybox_image, proxy.url), cache, retry=FAST_RETRY)
    assert image.manifest_digest == busybox_image.digest
    manifest_gets = [p for p in proxy.faults.requests if "/manifests/" in p]
    assert len(manifest_gets) == 3


async def test_5xx_bounded_then_error(busybox_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.fail_times = 100
    proxy.faults.fail_status = 502
    with trio.fail_after(30), pytest.raises(RegistryUnavailableError, match=r"after 3 attempts \(last: HTTP 502\)"):
        await prepare_image(source(busybox_image, proxy.url), cache, retry=FAST_RETRY)
    assert len(proxy.faults.requests) == 3
    assert_clean(cache)


async def test_connection_refused(busybox_image: RegistryImage, cache: ImageCache) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with trio.fail_after(30), pytest.raises(RegistryUnavailableError, match="connection error"):
        await prepare_image(source(busybox_image, dead), cache, retry=FAST_RETRY)


async def test_truncated_body(unique_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.truncate_blobs = True
    with trio.fail_after(30), pytest.raises(
        TruncatedBlobError, match=r"body ended after \d+ of \d+ bytes .*\(after 3 attempts\)"
    ):
        await prepare_image(source(unique_image, proxy.url), cache, retry=FAST_RETRY)
    assert_clean(cache)
    assert [p for p in (cache.root / "blobs").rglob("*") if p.is_file()] == []


async def test_cancel_mid_pull_leaves_cache_consistent(
    unique_image: RegistryImage, proxy: FaultProxy, cache: ImageCache
) -> None:
    proxy.faults.stall_blobs = True
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def pull() -> None:
                with scope:
                    await prepare_image(source(unique_image, proxy.url), cache)

            nursery.start_soon(pull)
            await trio.to_thread.run_sync(proxy.faults.stalled.wait)
            scope.cancel()
        assert scope.cancelled_caught
        assert_clean(cache)
        assert [p for p in (cache.root / "blobs").rglob("*") if p.is_file()] == []
        proxy.faults.stall_blobs = False
        proxy.faults.release.set()
        image = await prepare_image(source(unique_image, proxy.url), cache)
    assert (image.rootfs / "etc/unique").stat().st_size == 64 * 1024


@pytest.mark.parametrize("as_index", [False, True])
async def test_docker_v2_manifest_and_list(
    registry: RegistryServer, tmp_path: Path, cache: ImageCache, as_index: bool
) -> None:
    with trio.fail_after(30):
        img = await push_busybox(
            registry.url, f"test/docker-{str(as_index).lower()}", tmp_path, as_index=as_index, docker_media_types=True
        )
        image = await prepare_image(source(img), cache)
    assert image.manifest_digest == img.digest
    assert (image.rootfs / "bin/busybox").is_file()


async def test_interrupted_body_fetched_again(unique_image: RegistryImage, proxy: FaultProxy, cache: ImageCache) -> None:
    proxy.faults.truncate_blobs = True
    proxy.faults.truncate_times = 1
    with trio.fail_after(30):
        image = await prepare_image(source(unique_image, proxy.url), cache, retry=FAST_RETRY)
    assert (image.rootfs / "etc/unique").stat().st_size == 64 * 1024
    assert proxy.faults.truncate_times == 0


async def test_manifest_body_read_timeout_is_an_image_error(
    busybox_image: RegistryImage, proxy: FaultProxy, cache: ImageCache
) -> None:
    # headers arrive, then the body stalls: httpx's ReadTimeout must become a readable job error
    proxy.faults.stall_manifests = True
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=0.2)) as client:
        with trio.fail_after(30), pytest.raises(TruncatedBlobError, match=r"manifest .*body not received in full \(ReadTimeout"):
            await prepare_image(source(busybox_image, proxy.url), cache, client=client, retry=FAST_RETRY)
    assert_clean(cache)


async def test_layers_over_the_unpack_limit_are_not_downloaded(
    unique_image: RegistryImage, proxy: FaultProxy, cache: ImageCache
) -> None:
    with trio.fail_after(30), pytest.raises(UnsafeLayerError, match="compressed, over the unpack limit"):
        await prepare_image(
            source(unique_image, proxy.url), cache, limits=UnpackLimits(max_total_bytes=50_000)
        )
    manifest = json.loads((unique_image.layout / "blobs/sha256" / unique_image.digest[7:]).read_text())
    layer_gets = [p for p in proxy.faults.requests for layer in manifest["layers"] if layer["digest"] in p]
    assert layer_gets == []
    assert_clean(cache)
