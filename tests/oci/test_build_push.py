"""build_layout writes a valid OCI layout; push_layout puts it into the real registry."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from runner_agent.oci import mediatypes as mt
from tests.support.images import RegistryImage, busybox_layout
from tests.support.registry import RegistryServer


def test_layout_structure(tmp_path: Path) -> None:
    digest = busybox_layout(tmp_path / "l", compression=["zstd"], tag="v1")
    index = json.loads((tmp_path / "l/index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads((tmp_path / "l/blobs/sha256" / digest.split(":")[1]).read_text())
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert [layer["mediaType"] for layer in manifest["layers"]] == [mt.OCI_LAYER_ZSTD]
    assert json.loads((tmp_path / "l/oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"


async def test_pushed_image_is_served(registry: RegistryServer, busybox_image: RegistryImage) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient() as client:
            resp = await client.get(
                f"{registry.url}/v2/{busybox_image.repository}/manifests/{busybox_image.digest}",
                headers={"Accept": mt.OCI_MANIFEST},
            )
    assert resp.status_code == 200
    assert resp.headers["docker-content-digest"] == busybox_image.digest
