"""Parsing and validating OCI/Docker manifests, indexes and image configs; platform selection."""

from __future__ import annotations

import json
import platform as _platform
from typing import Any

from attrs import frozen

from runner_agent.oci import mediatypes as mt
from runner_agent.oci.digest import Digest, parse_digest
from runner_agent.oci.errors import ManifestError
from runner_agent.oci.image import ImageConfig

_ARCH_BY_MACHINE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
}


@frozen
class Platform:
    """An OCI platform: ``os`` and ``architecture`` (plus ``variant`` where it matters)."""

    os: str
    architecture: str
    variant: str | None = None


def host_platform() -> Platform:
    """linux + amd64/arm64 from ``platform.machine()``."""
    machine = _platform.machine()
    return Platform("linux", _ARCH_BY_MACHINE.get(machine.lower(), machine.lower()))


@frozen
class Descriptor:
    """A content descriptor: media type, digest and exact size of a blob."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None


@frozen
class Manifest:
    """An image manifest: its config descriptor and the layers, lowest first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


@frozen
class Index:
    """An image index / manifest list."""

    manifests: tuple[Descriptor, ...]


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _str(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ManifestError(f"{what}: field {key!r} must be a string, got {value!r}")
    return value


def parse_descriptor(value: Any, what: str) -> Descriptor:
    obj = _obj(value, what)
    media_type = _str(obj, "mediaType", what)
    try:
        digest = parse_digest(_str(obj, "digest", what))
    except ManifestError:
        raise
    except Exception as err:
        raise ManifestError(f"{what}: {err}") from None
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what}: field 'size' must be a non-negative integer, got {size!r}")
    plat = None
    if "platform" in obj:
        p = _obj(obj["platform"], f"{what} platform")
        variant = p.get("variant")
        plat = Platform(
            _str(p, "os", f"{what} platform"),
            _str(p, "architecture", f"{what} platform"),
            variant if isinstance(variant, str) else None,
        )
    return Descriptor(media_type, digest, size, plat)


def load_json(body: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object, with a readable error for non-JSON content."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        preview = body[:60]
        raise ManifestError(f"{what} is not valid JSON ({err}); body starts with {preview!r}") from None
    return _obj(value, what)


def media_type_of(doc: dict[str, Any], header_type: str | None, what: str) -> str:
    """The document's media type: its ``mediaType`` field, else the Content-Type, else inferred."""
    declared = doc.get("mediaType")
    if isinstance(declared, str):
        return declared
    if header_type and header_type.split(";")[0].strip() in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
        return header_type.split(";")[0].strip()
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "layers" in doc and "config" in doc:
        return mt.OCI_MANIFEST
    raise ManifestError(f"{what} has no mediaType and does not look like a manifest or an index")


def parse_manifest(doc: dict[str, Any], what: str) -> Manifest:
    config = parse_descriptor(doc.get("config"), f"{what} config")
    if config.media_type not in mt.CONFIG_TYPES:
        raise ManifestError(
            f"{what}: unsupported config media type {config.media_type!r} (not a container image)"
        )
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ManifestError(f"{what}: field 'layers' must be a list")
    layers = tuple(parse_descriptor(v, f"{what} layer {i}") for i, v in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in mt.LAYER_TYPES:
            raise ManifestError(
                f"{what}: layer {i} ({layer.digest}) has unsupported media type {layer.media_type!r}"
            )
    return Manifest(config, layers)


def parse_index(doc: dict[str, Any], what: str) -> Index:
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise ManifestError(f"{what}: field 'manifests' must be a list")
    return Index(tuple(parse_descriptor(v, f"{what} entry {i}") for i, v in enumerate(raw)))


def select_platform(index: Index, want: Platform, what: str) -> Descriptor:
    """The index entry for ``want`` (an entry without platform is accepted only if it is alone)."""
    candidates = [d for d in index.manifests if d.media_type in mt.MANIFEST_TYPES | mt.INDEX_TYPES]
    for d in candidates:
        p = d.platform
        if p is not None and p.os == want.os and p.architecture == want.architecture:
            if want.variant is None or p.variant in (None, want.variant):
                return d
    untagged = [d for d in candidates if d.platform is None]
    if len(candidates) == 1 and untagged:
        return untagged[0]
    offered = ", ".join(
        f"{d.platform.os}/{d.platform.architecture}" for d in candidates if d.platform
    )
    raise ManifestError(
        f"{what} has no manifest for platform {want.os}/{want.architecture} "
        f"(offers: {offered or 'none'})"
    )


def _str_tuple(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{what} must be a list of strings, got {value!r}")
    return tuple(value)


@frozen
class ParsedConfig:
    """The parts of an image config JSON that unpacking and running need."""

    image: ImageConfig
    diff_ids: tuple[Digest, ...]


def parse_image_config(body: bytes, what: str) -> ParsedConfig:
    doc = load_json(body, what)
    cfg = doc.get("config") or {}
    cfg = _obj(cfg, f"{what} 'config'")
    env = _str_tuple(cfg.get("Env"), f"{what} Env") or ()
    workdir = cfg.get("WorkingDir")
    user = cfg.get("User")
    rootfs = doc.get("rootfs") or {}
    rootfs = _obj(rootfs, f"{what} 'rootfs'")
    diff_ids = tuple(
        parse_digest(d) for d in (_str_tuple(rootfs.get("diff_ids"), f"{what} diff_ids") or ())
    )
    os_name = doc.get("os")
    arch = doc.get("architecture")
    image = ImageConfig(
        entrypoint=_str_tuple(cfg.get("Entrypoint"), f"{what} Entrypoint"),
        cmd=_str_tuple(cfg.get("Cmd"), f"{what} Cmd"),
        env=env,
        working_dir=workdir if isinstance(workdir, str) and workdir else None,
        user=user if isinstance(user, str) and user else None,
        os=os_name if isinstance(os_name, str) else None,
        architecture=arch if isinstance(arch, str) else None,
    )
    return ParsedConfig(image, diff_ids)
