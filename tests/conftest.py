"""Shared pytest fixtures: where the wire samples in ../shared/fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """The shared wire-sample folder (``../shared/fixtures`` beside the repository)."""
    override = os.environ.get("RUNNER_AGENT_FIXTURES")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    path = fixtures_dir()
    assert path.is_dir(), f"shared wire fixtures not found at {path}"
    return path


# --- OCI registry fixtures (tests/support/registry.py, tests/support/images.py) ---
from collections.abc import Iterator as _Iterator  # noqa: E402

from tests.support.images import RegistryImage, push_busybox_sync  # noqa: E402
from tests.support.registry import RegistryServer, run_registry  # noqa: E402


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> _Iterator[RegistryServer]:
    """A real ``docker-registry`` on 127.0.0.1 (free port, temp storage), shared by the session."""
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def busybox_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> RegistryImage:
    """A busybox image (OCI manifest, gzip layer) pushed to ``registry`` as ``test/busybox`` (tag ``latest``)."""
    return push_busybox_sync(
        registry.url, "test/busybox", tmp_path_factory.mktemp("busybox"), tag="latest"
    )


# --- Job execution fixtures (tests/support/rootfs.py) ---
from tests.support.rootfs import make_busybox_rootfs  # noqa: E402


@pytest.fixture
def busybox_rootfs(tmp_path: Path) -> Path:
    """A busybox root filesystem on disk (``/bin/sh`` and friends), built without OCI."""
    return make_busybox_rootfs(tmp_path / "rootfs")
