"""Safe, streaming application of image layers (gzip, zstd or plain tar) onto a rootfs directory.

Every path is resolved component by component from an fd of the rootfs with ``O_NOFOLLOW``:
symlinks met on the way are interpreted *inside* the rootfs (absolute targets restart at its
root, ``..`` stops there), so no entry — whatever its name, link target or the symlinks already
present — can create, replace or write anything outside. ``..`` components and absolute member
names are refused, device nodes are skipped (and reported), and limits bound total size and
entry count. OCI whiteouts (``.wh.<name>``, ``.wh..wh..opq``) are applied per the image spec.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol

import zstandard
from attrs import frozen

from runner_agent.errors import ImageError
from runner_agent.oci._threads import CancelToken
from runner_agent.oci.digest import Digest
from runner_agent.oci.errors import DigestMismatchError, UnsafeLayerError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_TAR_BUFFER = 64 * 1024  # tarfile copies its buffer per header read: keep it modest
_SMALL_FILE = 1024 * 1024  # files up to this size are written by the writer pool
_WRITERS = 4  # file creation is latency-bound on many filesystems: overlap it
_MAX_PENDING = 64
_MAX_SYMLINK_HOPS = 40
_MAX_CACHED_DIRS = 512
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


@frozen
class UnpackLimits:
    """Bounds on what an image may unpack to (over all its layers)."""

    max_total_bytes: int = 32 * 1024**3
    max_entries: int = 2_000_000
    max_path_length: int = 4096


@frozen
class UnpackStats:
    entries: int
    bytes: int
    skipped: tuple[str, ...]


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HashingReader:
    """File-like wrapper hashing everything read (to check a layer's ``diff_id``)."""

    def __init__(self, inner: _Readable, algorithm: str) -> None:
        self.inner = inner
        self.hash = hashlib.new(algorithm)

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _decompressor(blob: BinaryIO) -> _Readable:
    raw = io.BufferedReader(blob, CHUNK)  # type: ignore[type-var]
    magic = raw.peek(4)[:4]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == b"\x28\xb5\x2f\xfd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True
        )
        return reader
    return raw


def _components(name: str, what: str) -> list[str]:
    if name.startswith("/"):
        raise UnsafeLayerError(f"{what}: entry {name!r} has an absolute path; refusing the layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayerError(f"{what}: entry {name!r} contains '..'; refusing the layer")
    return parts


class Unpacker:
    """Applies layers, in order, onto one rootfs directory (not thread-safe; one layer at a time)."""

    def __init__(self, root: str | os.PathLike[str], limits: UnpackLimits = UnpackLimits()) -> None:
        self.limits = limits
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.as_root = os.geteuid() == 0
        self.entries = 0
        self.bytes = 0
        self.skipped: list[str] = []
        self._dirs: dict[str, int] = {}
        self._walk_created = False
        self._stale: list[int] = []
        self._layer_paths: set[str] = set()
        self._fresh_dirs: set[str] = set()  # created by this layer: nothing older inside
        self._pool = ThreadPoolExecutor(_WRITERS, thread_name_prefix="unpack-writer")
        self._pending: list[Future[None]] = []
        self._pending_paths: set[str] = set()
        self._slots = threading.BoundedSemaphore(_MAX_PENDING)

    def close(self) -> None:
        self._flush(raise_errors=False)
        self._invalidate()
        self._close_stale()
        self._pool.shutdown()
        os.close(self.root_fd)

    def _flush(self, raise_errors: bool = True) -> None:
        """Wait for every queued small-file write; re-raise the first failure."""
        first: BaseException | None = None
        for future in self._pending:
            err = future.exception()
            if err is not None and first is None:
                first = err
        self._pending.clear()
        self._pending_paths.clear()
        if first is not None and raise_errors:
            raise first

    def stats(self) -> UnpackStats:
        return UnpackStats(self.entries, self.bytes, tuple(self.skipped))

    # -- path resolution -------------------------------------------------------------------

    def _invalidate(self) -> None:
        """Forget cached directory fds (after a removal); they stay open until the entry is done."""
        self._stale.extend(self._dirs.values())
        self._dirs.clear()

    def _close_stale(self) -> None:
        if self._stale:
            self._flush()  # queued writes may still use these directory fds
        for fd in self._stale:
            os.close(fd)
        self._stale.clear()

    def _dir(self, parts: list[str], create: bool, what: str) -> int | None:
        """An fd of the directory ``parts`` resolves to inside the rootfs (cached; do not close)."""
        key = "/".join(parts)
        fd = self._dirs.get(key)
        if fd is None:
            fd = self._walk(parts, create, what)
            if fd is None:
                return None
            if len(self._dirs) >= _MAX_CACHED_DIRS:
                self._invalidate()
            self._dirs[key] = fd
            if self._walk_created:
                self._fresh_dirs.add(key)
        return fd

    def _walk(self, parts: list[str], create: bool, what: str) -> int | None:
        stack = [os.dup(self.root_fd)]
        todo = list(reversed(parts))
        hops = 0
        self._walk_created = False
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                cur = stack[-1]
                try:
                    stack.append(os.open(name, _DIR_FLAGS, dir_fd=cur))
                    continue
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(name, 0o755, dir_fd=cur)
                    stack.append(os.open(name, _DIR_FLAGS, dir_fd=cur))
                    self._walk_created = hops == 0
                    continue
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise UnsafeLayerError(
                        f"{what}: {'/'.join(parts)!r} needs {name!r} to be a directory, but it is not"
                    )
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise UnsafeLayerError(f"{what}: too many symlinks resolving {'/'.join(parts)!r}")
                target = os.readlink(name, dir_fd=cur)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo.extend(reversed(target.split("/")))
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)

    def _remove(self, pfd: int, name: str) -> bool:
        """Remove whatever is at ``name`` (never following symlinks); True if something was there."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        self._flush()
        self._invalidate()
        self._fresh_dirs.clear()
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return True

    # -- layers -----------------------------------------------------------------------------

    def apply_layer(
        self, blob: BinaryIO, what: str, diff_id: Digest | None, token: CancelToken | None = None
    ) -> None:
        """Apply one layer blob (compression detected from its magic bytes)."""
        self._layer_paths = set()
        self._fresh_dirs = set()
        stream = _decompressor(blob)
        reader = _HashingReader(stream, diff_id.algorithm if diff_id else "sha256")
        try:
            with tarfile.open(fileobj=reader, mode="r|", bufsize=_TAR_BUFFER) as tar:  # type: ignore[call-overload]
                for member in tar:
                    if token is not None:
                        token.check()
                    self._entry(tar, member, what, token)
            self._flush()
            reader.drain()
        except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as err:
            if isinstance(err, OSError) and err.errno not in (None, 0) and not isinstance(
                err, gzip.BadGzipFile
            ):
                raise ImageError(f"{what}: cannot unpack: {err}") from None
            raise ImageError(f"{what} is not a valid (compressed) tar archive: {err}") from None
        finally:
            self._flush(raise_errors=False)
            self._invalidate()
            self._close_stale()
        if diff_id is not None and reader.hash.hexdigest() != diff_id.hex:
            raise DigestMismatchError(
                f"{what}: uncompressed content does not match diff_id {diff_id} "
                f"(got {diff_id.algorithm}:{reader.hash.hexdigest()})"
            )

    def _count(self, member: tarfile.TarInfo, what: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnsafeLayerError(
                f"{what}: image has more than {self.limits.max_entries} entries (limit)"
            )
        if len(member.name) > self.limits.max_path_length:
            raise UnsafeLayerError(f"{what}: entry path longer than {self.limits.max_path_length}")
        if member.isreg():
            self.bytes += member.size
            if self.bytes > self.limits.max_total_bytes:
                raise UnsafeLayerError(
                    f"{what}: image unpacks to more than {self.limits.max_total_bytes} bytes "
                    f"(limit reached at {member.name!r})"
                )

    def _entry(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, what: str, token: CancelToken | None
    ) -> None:
        self._close_stale()
        self._count(member, what)
        parts = _components(member.name, what)
        if not parts:
            return  # the root directory itself
        *parent, name = parts
        if name.startswith(_WHITEOUT):
            self._whiteout(parent, name, what)
            return
        path = "/".join(parts)
        if path in self._pending_paths:
            self._flush()
        pfd = self._dir(parent, True, what)
        assert pfd is not None
        fresh = "/".join(parent) in self._fresh_dirs and path not in self._layer_paths
        self._layer_paths.add(path)
        mode = member.mode & 0o7777
        if member.isreg():
            self._file(tar, member, pfd, name, mode, what, token, fresh)
        elif member.isdir():
            self._directory(member, parts, pfd, name, mode)
        elif member.issym():
            self._remove(pfd, name)
            os.symlink(member.linkname, name, dir_fd=pfd)
            self._own(member, name, pfd)
        elif member.islnk():
            self._hardlink(member, pfd, name, what)
        elif member.isfifo():
            self._remove(pfd, name)
            os.mkfifo(name, mode, dir_fd=pfd)
            self._own(member, name, pfd)
        else:
            kind = "character device" if member.ischr() else "block device" if member.isblk() else f"type {member.type!r}"
            note = f"{what}: skipped {path!r} ({kind}; device nodes and special files are not created)"
            log.warning("%s", note)
            self.skipped.append(note)

    def _own(self, member: tarfile.TarInfo, name: str, pfd: int) -> None:
        if self.as_root:
            os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)

    def _file(
        self,
        tar: tarfile.TarFile,
        member: tarfile.TarInfo,
        pfd: int,
        name: str,
        mode: int,
        what: str,
        token: CancelToken | None,
        fresh: bool,
    ) -> None:
        if member.size <= _SMALL_FILE:
            src = tar.extractfile(member)
            data = src.read(member.size) if src is not None else b""
            if len(data) != member.size:
                raise ImageError(f"{what}: archive ended inside {member.name!r}")
            if not fresh:  # something from a lower layer may be there: replace it here
                self._remove(pfd, name)
            owner = (member.uid, member.gid) if self.as_root else None
            self._slots.acquire()
            future = self._pool.submit(
                _write_file, pfd, name, data, mode, owner, int(member.mtime), self._slots
            )
            self._pending.append(future)
            self._pending_paths.add("/".join(p for p in member.name.split("/") if p not in ("", ".")))
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
        except FileExistsError:
            self._remove(pfd, name)
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(member)
            remaining = member.size
            if src is not None:
                while remaining > 0:
                    data = src.read(min(CHUNK, remaining))
                    if not data:
                        raise ImageError(f"{what}: archive ended inside {member.name!r}")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    remaining -= len(data)
                    if token is not None and remaining > 0:
                        token.check()
            if self.as_root:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, mode)
            mtime = int(member.mtime)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)

    def _directory(
        self, member: tarfile.TarInfo, parts: list[str], pfd: int, name: str, mode: int
    ) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            self._fresh_dirs.add("/".join(parts))
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self._remove(pfd, name)
            os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        if self.as_root:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, mode if self.as_root else mode | 0o700)
        key = "/".join(parts)
        if key in self._dirs or len(self._dirs) >= _MAX_CACHED_DIRS:
            os.close(fd)
        else:
            self._dirs[key] = fd

    def _hardlink(self, member: tarfile.TarInfo, pfd: int, name: str, what: str) -> None:
        self._flush()  # the target may still be queued for writing
        if member.linkname.startswith("/"):
            raise UnsafeLayerError(
                f"{what}: hard link {member.name!r} -> {member.linkname!r} points outside the image"
            )
        target = _components(member.linkname, what)
        if not target:
            raise UnsafeLayerError(f"{what}: hard link {member.name!r} has an empty target")
        tfd = self._dir(target[:-1], False, what)
        try:
            st = None if tfd is None else os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if tfd is None or st is None:
            raise UnsafeLayerError(
                f"{what}: hard link {member.name!r} -> {member.linkname!r}: target does not exist in the image"
            )
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeLayerError(f"{what}: hard link {member.name!r} points to a directory")
        if os.path.samestat(os.fstat(tfd), os.fstat(pfd)) and target[-1] == name:
            return
        self._remove(pfd, name)
        os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, parent: list[str], name: str, what: str) -> None:
        pfd = self._dir(parent, False, what)
        if pfd is None:
            return
        prefix = "/".join(parent)
        if name == _OPAQUE:
            for child in _listdir(pfd):
                path = f"{prefix}/{child}" if prefix else child
                if path not in self._layer_paths:
                    self._remove(pfd, child)
            return
        victim = name[len(_WHITEOUT) :]
        if victim in ("", ".", "..") or "/" in victim:
            raise UnsafeLayerError(f"{what}: invalid whiteout {name!r}")
        path = f"{prefix}/{victim}" if prefix else victim
        if path not in self._layer_paths:
            self._remove(pfd, victim)


def _listdir(fd: int) -> Iterator[str]:
    dup = os.dup(fd)
    try:
        names = os.listdir(dup)
    finally:
        os.close(dup)
    yield from names


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_file(
    pfd: int,
    name: str,
    data: bytes,
    mode: int,
    owner: tuple[int, int] | None,
    mtime: int,
    slots: threading.BoundedSemaphore,
) -> None:
    """Create ``name`` in ``pfd`` (never following a symlink) with ``data``; a writer-pool job."""
    try:
        try:
            fd = os.open(name, _CREATE, 0o600, dir_fd=pfd)
        except FileExistsError:
            # Another queued entry reached the same file through a symlinked parent: replace it.
            os.unlink(name, dir_fd=pfd)
            fd = os.open(name, _CREATE, 0o600, dir_fd=pfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
    finally:
        slots.release()
