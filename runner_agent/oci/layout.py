"""Reading a local OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from runner_agent.oci.cache import BlobWriter
from runner_agent.oci.digest import Digest, parse_digest
from runner_agent.oci.errors import ImageNotFoundError, ManifestError
from runner_agent.oci.manifest import Descriptor, load_json, parse_descriptor
from runner_agent.oci.registry import MAX_MANIFEST_BYTES

_CHUNK = 4 * 1024 * 1024


class LayoutOrigin:
    """Serves manifests and blobs from an OCI layout, like a registry would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not (path / "oci-layout").is_file():
            raise ImageNotFoundError(f"{path} is not an OCI image layout (no oci-layout file)")
        try:
            self.index = load_json((path / "index.json").read_bytes(), f"{path}/index.json")
        except FileNotFoundError:
            raise ImageNotFoundError(f"{path} is not an OCI image layout (no index.json)") from None
        raw = self.index.get("manifests")
        if not isinstance(raw, list):
            raise ManifestError(f"{path}/index.json has no 'manifests' list")
        self.entries: list[Descriptor] = [
            parse_descriptor(v, f"{path}/index.json entry {i}") for i, v in enumerate(raw)
        ]

    def describe(self) -> str:
        return f"OCI layout {self.path}"

    def default_digest(self) -> Digest:
        if not self.entries:
            raise ImageNotFoundError(f"OCI layout {self.path} lists no images in index.json")
        return self.entries[0].digest

    def _blob(self, digest: Digest) -> Path:
        return self.path / "blobs" / digest.algorithm / digest.hex

    def _media_type(self, digest: Digest) -> str | None:
        for entry in self.entries:
            if entry.digest == digest:
                return entry.media_type
        return None

    async def manifest(self, reference: str) -> tuple[bytes, str | None]:
        digest = parse_digest(reference)
        path = self._blob(digest)
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"manifest {digest} in {self.path} is {size} bytes (too large)")
            body = await trio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise ImageNotFoundError(f"manifest {digest} not found in OCI layout {self.path}") from None
        return body, self._media_type(digest)

    async def blob_into(self, desc: Descriptor, writer: BlobWriter) -> None:
        path = self._blob(desc.digest)
        try:
            fh = await trio.open_file(path, "rb")
        except FileNotFoundError:
            raise ImageNotFoundError(f"blob {desc.digest} not found in OCI layout {self.path}") from None
        async with fh:
            while chunk := await fh.read(_CHUNK):
                await writer.write(chunk)

    async def aclose(self) -> None:
        pass


def read_index(path: Path) -> list[dict[str, object]]:
    """The raw ``manifests`` entries of a layout's index.json (for tools and tests)."""
    doc = json.loads((path / "index.json").read_text())
    entries = doc.get("manifests", [])
    return list(entries) if isinstance(entries, list) else []
