"""The on-disk image cache under ``--cache-dir``: content-addressed blobs, unpacked rootfs per
image digest, an index of sizes and last-use times, LRU eviction, and fcntl locks that make
concurrent users (tasks or processes) of one digest safe.

Layout::

    blobs/<alg>/<hex>          verified blobs (written to tmp/, verified, then renamed)
    rootfs/<alg>-<hex>/fs/     an unpacked rootfs;  rootfs/<alg>-<hex>/meta.json its config
    tmp/<pid>-…                work in progress (never trusted; cleared when its process is gone)
    locks/<key>.use            shared-locked while a rootfs is in use; eviction needs it exclusive
    locks/<key>.create         exclusive while one user pulls and unpacks that digest
    locks/index.lock           guards index.json
    index.json                 {key: {"kind", "size", "last_used"}}

An entry directory appears only by an atomic rename of a fully unpacked temp directory, so a
cancelled or crashed pull never leaves anything that is later trusted. Blobs and unpacked trees
are flushed to disk before that rename (and the rename itself after it), so a power cut cannot
leave a published entry with missing data either.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import trio
from attrs import asdict, frozen

from runner_agent.errors import ImageError
from runner_agent.fsutil import atomic_write, fsync_dir, sync_filesystem
from runner_agent.oci.digest import Digest, DigestVerifier
from runner_agent.oci.errors import TruncatedBlobError
from runner_agent.oci.image import ImageConfig

GiB = 1024**3
_WRITE_BUFFER = 4 * 1024 * 1024
_LOCK_POLL_MIN = 0.005
_LOCK_POLL_MAX = 0.1


@frozen
class RootfsMeta:
    """What is stored beside an unpacked rootfs."""

    digest: str
    config: ImageConfig
    size: int


class RootfsLease:
    """Holds the shared "in use" lock of one rootfs; eviction skips it until ``release()``."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        if self._fd is not None:
            self._fd = None
            self._finalizer()

    @property
    def held(self) -> bool:
        return self._fd is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class ImageCache:
    """The cache at ``root`` (created if missing), kept under ``max_bytes`` by LRU eviction."""

    def __init__(
        self, root: Path, max_bytes: int = 20 * GiB, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.clock = clock
        for sub in ("blobs", "rootfs", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # unpacked images keep their owners and set-uid bits: no other local user may reach them
        for private in ("rootfs", "tmp"):
            os.chmod(self.root / private, 0o700)
        self._clean_tmp()
        self._reconcile()

    # -- paths and locks --------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def rootfs_dir(self, digest: Digest) -> Path:
        return self.root / "rootfs" / digest.path_key

    def _lock_fd(self, name: str) -> int:
        return os.open(self.root / "locks" / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    async def _flock(self, fd: int, mode: int) -> None:
        """Take an flock without blocking the trio thread (polls; cancellable)."""
        delay = _LOCK_POLL_MIN
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await trio.sleep(delay)
                delay = min(_LOCK_POLL_MAX, delay * 2)

    def _new_tmp(self, label: str) -> Path:
        return self.root / "tmp" / f"{os.getpid()}-{label}-{uuid.uuid4().hex[:12]}"

    def _clean_tmp(self) -> None:
        for entry in (self.root / "tmp").iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if not pid_text.isdigit() or not _pid_alive(int(pid_text)):
                _rmtree(entry)

    def _reconcile(self) -> None:
        """Index entries published but never recorded (a crash between rename and index update),
        so eviction knows about them, and drop index entries whose files are gone."""
        on_disk: dict[str, tuple[str, int]] = {}
        for alg_dir in (self.root / "blobs").iterdir():
            for blob in alg_dir.iterdir():
                on_disk[f"{alg_dir.name}:{blob.name}"] = ("blob", blob.stat().st_size)
        for entry in (self.root / "rootfs").iterdir():
            try:
                size = int(json.loads((entry / "meta.json").read_text())["size"])
            except (OSError, ValueError, KeyError):
                size = 0
            on_disk[entry.name] = ("rootfs", size)
        now = self.clock()

        def update(index: dict[str, Any]) -> None:
            for key in [k for k in index if k not in on_disk]:
                del index[key]
            for key, (kind, size) in on_disk.items():
                index.setdefault(key, {"kind": kind, "size": size, "last_used": now})

        self._with_index(update)

    # -- index ------------------------------------------------------------------------------

    def _with_index(self, update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        fd = self._lock_fd("index.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = self.root / "index.json"
            try:
                index = json.loads(path.read_text())
                if not isinstance(index, dict):
                    index = {}
            except (FileNotFoundError, ValueError):
                index = {}
            update(index)
            atomic_write(path, json.dumps(index), durable=False, tmp=self._new_tmp("index"))
            return index
        finally:
            os.close(fd)

    def index(self) -> dict[str, Any]:
        """A snapshot of the index (for tests and status output)."""
        return self._with_index(lambda _: None)

    def _touch_sync(self, key: str, kind: str, size: int | None) -> None:
        now = self.clock()

        def update(index: dict[str, Any]) -> None:
            entry = index.get(key) or {"kind": kind, "size": size or 0}
            if size is not None:
                entry["size"] = size
            entry["last_used"] = now
            index[key] = entry

        self._with_index(update)

    def _evict_sync(self, keep: str) -> list[str]:
        """Evict LRU entries until the total fits; never ``keep`` or a rootfs in use."""
        evicted: list[str] = []
        doomed: list[Path] = []

        def update(index: dict[str, Any]) -> None:
            total = sum(int(e.get("size", 0)) for e in index.values())
            for key in sorted(index, key=lambda k: float(index[k].get("last_used", 0))):
                if total <= self.max_bytes:
                    break
                if key == keep:
                    continue
                entry = index[key]
                if entry.get("kind") == "rootfs":
                    digest = Digest(*key.split("-", 1))
                    fd = self._lock_fd(f"{key}.use")
                    try:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            continue  # in use
                        target = self.rootfs_dir(digest)
                        if target.exists():
                            grave = self._new_tmp("evict")
                            os.rename(target, grave)
                            doomed.append(grave)
                    finally:
                        os.close(fd)
                else:
                    alg, hexd = key.split(":", 1)
                    self.blob_path(Digest(alg, hexd)).unlink(missing_ok=True)
                total -= int(entry.get("size", 0))
                del index[key]
                evicted.append(key)

        self._with_index(update)
        for grave in doomed:
            _rmtree(grave)
        return evicted

    async def evict(self, keep: str = "") -> list[str]:
        """Run eviction now; returns the evicted index keys."""
        return await trio.to_thread.run_sync(self._evict_sync, keep)

    # -- blobs ------------------------------------------------------------------------------

    def open_blob(self, digest: Digest) -> BinaryIO | None:
        """An open reader of a cached (already verified) blob, or None."""
        try:
            fh = _open_rb(self.blob_path(digest))
        except FileNotFoundError:
            return None
        return fh

    def blob_writer(self, digest: Digest, size: int | None, what: str) -> BlobWriter:
        return BlobWriter(self, digest, size, what)

    # -- rootfs -----------------------------------------------------------------------------

    def read_meta(self, digest: Digest) -> RootfsMeta | None:
        path = self.rootfs_dir(digest) / "meta.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise ImageError(f"cache entry {path} is corrupt: {err}") from None
        return RootfsMeta(doc["digest"], ImageConfig(**_tuples(doc["config"])), int(doc["size"]))

    async def lease_rootfs(
        self, digest: Digest, create: Callable[[Path], Awaitable[ImageConfig]]
    ) -> tuple[RootfsLease, RootfsMeta]:
        """Return a lease and the metadata of the rootfs for ``digest``, creating it if needed.

        ``create(fs_dir)`` fills the empty directory ``fs_dir`` and returns the image config; only
        one caller (task or process) runs it for a digest, the others wait and reuse the result.
        """
        key = digest.path_key
        use_fd = self._lock_fd(f"{key}.use")
        try:
            await self._flock(use_fd, fcntl.LOCK_SH)
            meta = self.read_meta(digest)
            if meta is None:
                meta = await self._create(digest, create)
            await trio.to_thread.run_sync(self._touch_sync, key, "rootfs", meta.size)
            await trio.to_thread.run_sync(self._evict_sync, key)
        except BaseException:
            os.close(use_fd)
            raise
        return RootfsLease(use_fd), meta

    async def _create(
        self, digest: Digest, create: Callable[[Path], Awaitable[ImageConfig]]
    ) -> RootfsMeta:
        create_fd = self._lock_fd(f"{digest.path_key}.create")
        try:
            await self._flock(create_fd, fcntl.LOCK_EX)
            meta = self.read_meta(digest)
            if meta is not None:
                return meta
            tmp = self._new_tmp(digest.path_key)
            try:
                await trio.to_thread.run_sync(_make_fs_dir, tmp / "fs")
                config = await create(tmp / "fs")
                meta = await trio.to_thread.run_sync(
                    _publish_rootfs, tmp, str(digest), config, self.rootfs_dir(digest)
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_rmtree, tmp)
                raise
            return meta
        finally:
            os.close(create_fd)


def _make_fs_dir(fs: Path) -> None:
    fs.mkdir(parents=True)
    os.chmod(fs, 0o755)


def _publish_rootfs(tmp: Path, digest: str, config: ImageConfig, final: Path) -> RootfsMeta:
    """Measure, describe and atomically publish a fully unpacked temp entry."""
    meta = RootfsMeta(digest, config, _tree_size(tmp))
    (tmp / "meta.json").write_text(json.dumps(asdict(meta)))
    os.chmod(tmp, 0o755)
    sync_filesystem(tmp)  # every file of the tree is on disk before the entry exists
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return meta


def _open_rb(path: Path) -> BinaryIO:
    return open(path, "rb")


def _tuples(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}


class BlobWriter:
    """Streams a blob into the cache: buffered writes off the trio thread, hashing as it goes,
    size checked against the descriptor; ``commit()`` verifies and atomically publishes it.
    All file-system calls run in worker threads (creates and renames can stall on a busy disk)."""

    def __init__(self, cache: ImageCache, digest: Digest, size: int | None, what: str) -> None:
        self.cache = cache
        self.digest = digest
        self.expected_size = size
        self.what = what
        self.verifier = DigestVerifier(digest, what)
        self.tmp = cache._new_tmp("blob")
        self._fd = -1
        self._buffer = bytearray()
        self.received = 0

    async def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.expected_size is not None and self.received > self.expected_size:
            raise TruncatedBlobError(
                f"{self.what} is larger than the {self.expected_size} bytes its descriptor says"
            )
        self._buffer += chunk
        if len(self._buffer) >= _WRITE_BUFFER:
            await self._flush()

    def _open_sync(self) -> None:
        if self._fd < 0:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._fd = os.open(self.tmp, flags, 0o644)

    def _write_sync(self, data: bytes) -> None:
        self._open_sync()
        self.verifier.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def _flush(self) -> None:
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            await trio.to_thread.run_sync(self._write_sync, data)

    def _publish_sync(self) -> BinaryIO:
        self._open_sync()
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)  # the data is on disk before the blob is published
        finally:
            os.close(fd)
        if self.expected_size is not None and self.received != self.expected_size:
            raise TruncatedBlobError(
                f"{self.what} ended after {self.received} of {self.expected_size} bytes (truncated)"
            )
        self.verifier.verify()
        final = self.cache.blob_path(self.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fh = _open_rb(self.tmp)
        os.rename(self.tmp, final)
        fsync_dir(final.parent)
        self.cache._touch_sync(str(self.digest), "blob", self.received)
        return fh

    async def commit(self) -> BinaryIO:
        """Verify size and digest, publish under ``blobs/``, and return it opened for reading."""
        await self._flush()
        return await trio.to_thread.run_sync(self._publish_sync)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.tmp.unlink(missing_ok=True)
