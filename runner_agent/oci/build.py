"""Writing OCI image layouts (for tests, the dev server and the demo) and pushing them to a registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import zstandard
from attrs import frozen

from runner_agent.oci import mediatypes as mt
from runner_agent.oci.image import ImageConfig
from runner_agent.oci.manifest import Platform, host_platform
from runner_agent.oci.registry import RegistryClient

Compression = Literal["gzip", "zstd", "none"]


@frozen
class File:
    """A regular file with explicit content and mode."""

    data: bytes
    mode: int = 0o644


@frozen
class Dir:
    mode: int = 0o755


@frozen
class Symlink:
    target: str


@frozen
class Hardlink:
    """A hard link to an earlier entry of the same layer (``target`` is its archive path)."""

    target: str


@frozen
class RawTar:
    """An uncompressed tar archive used verbatim as a layer (for hostile-layer tests)."""

    data: bytes


FileSpec = Path | bytes | File | Dir | Symlink | Hardlink
LayerContent = Mapping[str, FileSpec] | Path | RawTar

_LAYER_TYPES: dict[Compression, str] = {
    "gzip": mt.OCI_LAYER_GZIP,
    "zstd": mt.OCI_LAYER_ZSTD,
    "none": mt.OCI_LAYER_TAR,
}


def _tar_from_mapping(files: Mapping[str, FileSpec]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, spec in files.items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.mtime = 0
            if isinstance(spec, Path):
                data = spec.read_bytes()
                info.size = len(data)
                info.mode = spec.stat().st_mode & 0o7777
                tar.addfile(info, io.BytesIO(data))
            elif isinstance(spec, bytes | File):
                data = spec if isinstance(spec, bytes) else spec.data
                info.size = len(data)
                info.mode = 0o644 if isinstance(spec, bytes) else spec.mode
                tar.addfile(info, io.BytesIO(data))
            elif isinstance(spec, Dir):
                info.type = tarfile.DIRTYPE
                info.mode = spec.mode
                tar.addfile(info)
            elif isinstance(spec, Symlink):
                info.type = tarfile.SYMTYPE
                info.linkname = spec.target
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.type = tarfile.LNKTYPE
                info.linkname = spec.target
                info.mode = 0o644
                tar.addfile(info)
    return buf.getvalue()


def _tar_from_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                full = Path(dirpath) / name
                info = tar.gettarinfo(str(full), arcname=str(full.relative_to(root)))
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with full.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def _compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


class _Blobs:
    def __init__(self, dest: Path) -> None:
        self.dir = dest / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> tuple[str, int]:
        hexd = hashlib.sha256(data).hexdigest()
        path = self.dir / hexd
        if not path.exists():
            path.write_bytes(data)
        return f"sha256:{hexd}", len(data)


def _descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _config_json(config: ImageConfig, diff_ids: list[str], plat: Platform) -> bytes:
    inner: dict[str, Any] = {"Env": list(config.env)}
    if config.entrypoint is not None:
        inner["Entrypoint"] = list(config.entrypoint)
    if config.cmd is not None:
        inner["Cmd"] = list(config.cmd)
    if config.working_dir:
        inner["WorkingDir"] = config.working_dir
    if config.user:
        inner["User"] = config.user
    doc = {
        "architecture": config.architecture or plat.architecture,
        "os": config.os or plat.os,
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(doc, sort_keys=True).encode()


def build_layout(
    dest: Path,
    files: LayerContent | Sequence[LayerContent],
    *,
    config: ImageConfig,
    compression: Compression | Sequence[Compression] = "gzip",
    platform: Platform | None = None,
    as_index: bool = False,
    tag: str | None = None,
    docker_media_types: bool = False,
) -> str:
    """Write an OCI image layout at ``dest`` and return the digest its ``index.json`` points to.

    ``files`` is one layer or a sequence of layers (lowest first); each layer is a mapping of
    archive path to content, a directory to archive, or a raw tar. ``compression`` applies to all
    layers or gives one per layer. With ``as_index`` the top-level digest is an image index listing
    the manifest for ``platform`` (default: the host) plus a manifest for another architecture.
    Several images may be written into one layout; ``index.json`` lists them all. With
    ``docker_media_types`` the manifest, config, layers (gzip only) and index use the Docker v2
    schema 2 media types (manifest list instead of OCI index).
    """
    plat = platform or host_platform()
    layers: list[LayerContent]
    if isinstance(files, Mapping | Path | RawTar):
        layers = [files]
    else:
        layers = list(files)
    comps = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(comps) != len(layers):
        raise ValueError(f"{len(comps)} compressions given for {len(layers)} layers")
    if docker_media_types and any(c != "gzip" for c in comps):
        raise ValueError("Docker v2 media types only describe gzip layers")
    manifest_type = mt.DOCKER_MANIFEST if docker_media_types else mt.OCI_MANIFEST
    config_type = mt.DOCKER_CONFIG if docker_media_types else mt.OCI_CONFIG
    index_type = mt.DOCKER_MANIFEST_LIST if docker_media_types else mt.OCI_INDEX
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    blobs = _Blobs(dest)

    layer_descs: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for layer, comp in zip(layers, comps, strict=True):
        if isinstance(layer, RawTar):
            raw = layer.data
        elif isinstance(layer, Path):
            raw = _tar_from_dir(layer)
        else:
            raw = _tar_from_mapping(layer)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        digest, size = blobs.put(_compress(raw, comp))
        layer_type = mt.DOCKER_LAYER_GZIP if docker_media_types else _LAYER_TYPES[comp]
        layer_descs.append(_descriptor(layer_type, digest, size))

    def manifest_for(p: Platform) -> tuple[str, int]:
        cfg = _config_json(config, diff_ids, p)
        cfg_digest, cfg_size = blobs.put(cfg)
        doc = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": _descriptor(config_type, cfg_digest, cfg_size),
            "layers": layer_descs,
        }
        return blobs.put(json.dumps(doc, sort_keys=True).encode())

    m_digest, m_size = manifest_for(plat)
    top_type, top_digest, top_size = manifest_type, m_digest, m_size
    if as_index:
        other = Platform("linux", "arm64" if plat.architecture != "arm64" else "amd64")
        o_digest, o_size = manifest_for(other)
        entries = [
            _descriptor(manifest_type, o_digest, o_size, platform={"os": other.os, "architecture": other.architecture}),
            _descriptor(manifest_type, m_digest, m_size, platform={"os": plat.os, "architecture": plat.architecture}),
        ]
        idx = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
        top_digest, top_size = blobs.put(json.dumps(idx, sort_keys=True).encode())
        top_type = index_type

    index_path = dest / "index.json"
    existing: list[dict[str, Any]] = []
    if index_path.exists():
        existing = [
            m for m in json.loads(index_path.read_text()).get("manifests", [])
            if m.get("digest") != top_digest
        ]
    extra = {"annotations": {"org.opencontainers.image.ref.name": tag}} if tag else {}
    existing.append(_descriptor(top_type, top_digest, top_size, **extra))
    index_path.write_text(
        json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": existing})
    )
    return top_digest


def _layout_blob(layout: Path, digest: str) -> Path:
    alg, hexd = digest.split(":", 1)
    return layout / "blobs" / alg / hexd


async def push_layout(
    layout: Path,
    registry_url: str,
    repository: str,
    *,
    client: httpx.AsyncClient | None = None,
    token: str | None = None,
    digest: str | None = None,
) -> str:
    """Push the image(s) of an OCI layout to ``registry_url`` (``http://host:port``) under
    ``repository``; returns the pushed top-level digest (``digest`` or the last in index.json).

    Blobs are uploaded monolithically; manifests are put by digest and by their
    ``org.opencontainers.image.ref.name`` tag when they have one. Bearer token challenges are
    answered like a pull does (see ``runner_agent.oci.registry``).
    """
    index = json.loads((layout / "index.json").read_text())
    entries = index["manifests"]
    if digest is not None:
        entries = [e for e in entries if e["digest"] == digest]
        if not entries:
            raise ValueError(f"{digest} is not listed in {layout / 'index.json'}")
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=60)
    try:
        reg = RegistryClient(http, registry_url, repository, token=token, actions="pull,push")
        top = ""
        for entry in entries:
            await _push_node(reg, layout, entry["digest"], entry["mediaType"])
            ref = (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            if ref:
                body = _layout_blob(layout, entry["digest"]).read_bytes()
                await reg.put_manifest(ref, body, entry["mediaType"])
            top = entry["digest"]
        return top
    finally:
        if own_client:
            await http.aclose()


async def _push_node(reg: RegistryClient, layout: Path, digest: str, media_type: str) -> None:
    body = _layout_blob(layout, digest).read_bytes()
    doc = json.loads(body)
    if media_type in mt.INDEX_TYPES:
        for child in doc["manifests"]:
            await _push_node(reg, layout, child["digest"], child["mediaType"])
    else:
        for desc in [doc["config"], *doc["layers"]]:
            if not await reg.blob_exists(desc["digest"]):
                await reg.put_blob(desc["digest"], _layout_blob(layout, desc["digest"]).read_bytes())
    await reg.put_manifest(digest, body, media_type)
