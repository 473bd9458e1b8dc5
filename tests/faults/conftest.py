"""Fixtures for the fault tests: a busybox image pushed to the real registry under a project UUID
(the repository the agent pulls from), a small tmpfs for a state dir, and cache checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from runner_agent.protocol import JobConfig
from tests.support.images import RegistryImage, busybox_layout, push_busybox_sync
from tests.support.registry import RegistryServer

PROJECT = UUID("7a1d3c5e-0b2f-4c6d-8e9f-a0b1c2d3e4f5")


@pytest.fixture(scope="session")
def project_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> RegistryImage:
    """busybox pushed as repository ``PROJECT`` (the agent pulls ``<registry>/<project>@digest``)."""
    return push_busybox_sync(registry.url, str(PROJECT), tmp_path_factory.mktemp("faults-image"))


def registry_job(registry_url: str, image: RegistryImage, script: str, *, timeout: int = 30) -> JobConfig:
    """A one-iteration job running ``script`` in ``image``, pulled from ``registry_url``."""
    return JobConfig(
        registry=registry_url,
        project=UUID(image.repository),
        digest=image.digest,
        entrypoint=("/bin/sh", "-c"),
        cmd=(script,),
        timeout=timeout,
        iter=1,
    )


@contextmanager
def small_tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_kib`` KiB at ``path`` for the body (we are root in CI); skips the
    test when mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path) -> Path:
    """Write a filler file until the filesystem holding ``directory`` has no space left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError:
                break
        for size in (512, 1):  # the last partial page too
            while True:
                try:
                    os.write(fd, block[:size])
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def assert_cache_consistent(cache_dir: Path) -> list[str]:
    """Every blob in the cache matches its name, nothing is left in ``tmp/``; returns the blob
    digests found."""
    found: list[str] = []
    blobs = cache_dir / "blobs"
    for path in sorted(blobs.glob("*/*")) if blobs.exists() else []:
        algorithm, hexdigest = path.parent.name, path.name
        actual = hashlib.new(algorithm, path.read_bytes()).hexdigest()
        assert actual == hexdigest, f"cache blob {path} holds other content ({actual})"
        found.append(f"{algorithm}:{hexdigest}")
    leftovers = list((cache_dir / "tmp").iterdir()) if (cache_dir / "tmp").exists() else []
    assert leftovers == [], f"work in progress left in the cache: {leftovers}"
    for entry in (cache_dir / "rootfs").iterdir() if (cache_dir / "rootfs").exists() else []:
        assert (entry / "fs").is_dir() and (entry / "meta.json").is_file(), f"partial rootfs {entry}"
    return found


def new_marker() -> str:
    return uuid4().hex


@pytest.fixture(scope="session")
def busybox_oci(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A busybox OCI image layout (``file://`` registry for jobs) and its manifest digest."""
    dest = tmp_path_factory.mktemp("faults-layout") / "layout"
    return dest, busybox_layout(dest)
