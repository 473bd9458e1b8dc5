"""Busybox-based test images: OCI layouts built with ``build_layout`` from ``/bin/busybox``,
and pushed to a test registry with ``push_layout``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import trio
from attrs import frozen

from runner_agent.oci.build import (
    Compression,
    Dir,
    File,
    FileSpec,
    Symlink,
    build_layout,
    push_layout,
)
from runner_agent.oci.image import ImageConfig

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "echo", "env", "sleep", "true", "false", "mkdir", "printf", "id", "sync", "nc")


def busybox_files(extra: Mapping[str, FileSpec] | None = None) -> dict[str, FileSpec]:
    """A minimal busybox root: /bin/busybox, applet symlinks, /tmp, /etc/passwd, plus ``extra``."""
    files: dict[str, FileSpec] = {
        "bin": Dir(),
        "bin/busybox": BUSYBOX,
        "etc": Dir(),
        "etc/passwd": File(b"root:x:0:0:root:/root:/bin/sh\n"),
        "tmp": Dir(0o1777),
        "root": Dir(0o700),
    }
    for applet in APPLETS:
        files[f"bin/{applet}"] = Symlink("busybox")
    files.update(extra or {})
    return files


DEFAULT_CONFIG = ImageConfig(
    entrypoint=None, cmd=("/bin/sh",), env=("PATH=/usr/local/bin:/usr/bin:/bin",), working_dir="/"
)


def busybox_layout(
    dest: Path,
    *,
    config: ImageConfig = DEFAULT_CONFIG,
    extra: Mapping[str, FileSpec] | None = None,
    extra_layers: Sequence[Mapping[str, FileSpec]] = (),
    compression: Compression | Sequence[Compression] = "gzip",
    as_index: bool = False,
    tag: str | None = None,
    docker_media_types: bool = False,
) -> str:
    """Write a busybox image layout at ``dest``; returns its (manifest or index) digest."""
    layers = [busybox_files(extra), *extra_layers]
    return build_layout(
        dest,
        layers,
        config=config,
        compression=compression,
        as_index=as_index,
        tag=tag,
        docker_media_types=docker_media_types,
    )


@frozen
class RegistryImage:
    """An image pushed to a test registry: pull it as ``registry``/``repository``@``digest``."""

    registry: str
    repository: str
    digest: str
    layout: Path

    @property
    def reference(self) -> str:
        return f"{self.registry.removeprefix('http://')}/{self.repository}@{self.digest}"


async def push_busybox(
    registry_url: str, repository: str, workdir: Path, *, token: str | None = None, **kwargs: object
) -> RegistryImage:
    """Build a busybox layout under ``workdir`` and push it (with ``token`` as the bearer
    credential, if given); ``kwargs`` go to ``busybox_layout``."""
    layout = workdir / f"layout-{repository.replace('/', '_')}"
    digest = busybox_layout(layout, **kwargs)  # type: ignore[arg-type]
    await push_layout(layout, registry_url, repository, digest=digest, token=token)
    return RegistryImage(registry_url, repository, digest, layout)


def push_busybox_sync(
    registry_url: str, repository: str, workdir: Path, *, token: str | None = None, **kwargs: object
) -> RegistryImage:
    """``push_busybox`` for synchronous (e.g. session-scoped) fixtures."""
    return trio.run(lambda: push_busybox(registry_url, repository, workdir, token=token, **kwargs))
