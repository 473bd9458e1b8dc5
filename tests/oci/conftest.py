"""Fixtures for OCI tests: unique busybox images per test, a fault-injecting front, a cache."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner_agent.oci.build import File
from runner_agent.oci.cache import ImageCache
from tests.oci.faultproxy import FaultProxy, run_fault_proxy
from tests.support.images import RegistryImage, push_busybox
from tests.support.registry import RegistryServer


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    return ImageCache(tmp_path / "cache")


@pytest.fixture
async def unique_image(registry: RegistryServer, tmp_path: Path) -> AsyncIterator[RegistryImage]:
    """A busybox image whose layers are unique to this test (safe to corrupt in the registry)."""
    tag = os.urandom(8).hex()
    extra = {"etc/unique": File(os.urandom(64 * 1024)), "etc/tag": File(tag.encode())}
    yield await push_busybox(
        registry.url, f"test/unique-{tag}", tmp_path, extra=extra, compression="gzip"
    )


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with run_fault_proxy(registry.url) as front:
        yield front
