"""The image cache: one unpack per digest across tasks and processes, LRU eviction that spares
images in use, and consistency after cancellation or failure at any point."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from runner_agent.errors import ImageError
from runner_agent.oci.build import File, build_layout
from runner_agent.oci.cache import ImageCache
from runner_agent.oci.digest import parse_digest
from runner_agent.oci.fetch import prepare_image
from runner_agent.oci.image import ImageConfig
from runner_agent.oci.source import LayoutSource, RegistrySource
from tests.oci.faultproxy import FaultProxy
from tests.support.images import RegistryImage, busybox_layout

REPO_ROOT = Path(__file__).resolve().parents[2]


def blob_gets(proxy: FaultProxy, img: RegistryImage) -> dict[str, int]:
    manifest = json.loads((img.layout / "blobs/sha256" / img.digest[7:]).read_text())
    digests = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
    return {d: sum(1 for p in proxy.faults.requests if p.endswith(f"/blobs/{d}")) for d in digests}


def assert_consistent(cache: ImageCache) -> None:
    """Every published entry is complete, every published blob hashes to its name, no temp left."""
    assert list((cache.root / "tmp").iterdir()) == []
    for entry in (cache.root / "rootfs").iterdir():
        meta = json.loads((entry / "meta.json").read_text())
        assert meta["digest"].replace(":", "-") == entry.name
        assert (entry / "fs/bin/busybox").stat().st_size == Path("/bin/busybox").stat().st_size
    for blob in (cache.root / "blobs/sha256").glob("*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


async def test_two_tasks_one_digest(unique_image: RegistryImage, proxy: FaultProxy, tmp_path: Path) -> None:
    src = RegistrySource(proxy.url, unique_image.repository, unique_image.digest)
    results = []

    async def user(cache: ImageCache) -> None:
        results.append(await prepare_image(src, cache))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # two cache objects on one directory behave like two processes (separate lock fds)
            nursery.start_soon(user, ImageCache(tmp_path / "shared"))
            nursery.start_soon(user, ImageCache(tmp_path / "shared"))
    assert results[0].rootfs == results[1].rootfs
    assert set(blob_gets(proxy, unique_image).values()) == {1}


async def test_waiter_reuses_instead_of_creating(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c")
    digest = parse_digest("sha256:" + "ab" * 32)
    gate = trio.Event()
    started = trio.Event()
    calls: list[str] = []

    async def create(fs: Path) -> ImageConfig:
        calls.append("create")
        started.set()
        (fs / "marker").write_text("x")
        await gate.wait()
        return ImageConfig(cmd=("true",))

    metas = []

    async def user() -> None:
        lease, meta = await cache.lease_rootfs(digest, create)
        metas.append(meta)
        lease.release()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(user)
            await started.wait()
            nursery.start_soon(user)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == ["create"]
            gate.set()
    assert calls == ["create"]
    assert metas[0] == metas[1]
    assert (cache.rootfs_dir(digest) / "fs/marker").read_text() == "x"


_CHILD = """
import sys, trio
from pathlib import Path
from runner_agent.oci.cache import ImageCache
from runner_agent.oci.fetch import prepare_image
from runner_agent.oci.source import RegistrySource
async def main():
    print("starting", flush=True)
    image = await prepare_image(RegistrySource(sys.argv[1], sys.argv[2], sys.argv[3]), ImageCache(Path(sys.argv[4])))
    print(image.rootfs, flush=True)
trio.run(main)
"""


async def test_two_processes_one_digest(unique_image: RegistryImage, proxy: FaultProxy, tmp_path: Path) -> None:
    """The first process is held mid-download (holding the create lock); the second starts its
    pull meanwhile, waits, and reuses the first one's rootfs: every blob is fetched once."""
    proxy.faults.stall_blobs = True
    args = [sys.executable, "-c", _CHILD, proxy.url, unique_image.repository, unique_image.digest, str(tmp_path / "shared")]
    outputs: list[list[str]] = []

    async def child(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        proc = await trio.lowlevel.open_process(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT
        )
        assert proc.stdout is not None and proc.stderr is not None
        out = b""
        while b"starting\n" not in out:
            chunk = await proc.stdout.receive_some()
            assert chunk, "child exited before starting"
            out += chunk
        task_status.started()
        async for chunk in proc.stdout:
            out += chunk
        err = b"".join([c async for c in proc.stderr])
        assert await proc.wait() == 0, err.decode()
        outputs.append(out.decode().split())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            await trio.to_thread.run_sync(proxy.faults.stalled.wait)
            proxy.faults.stall_blobs = False
            await nursery.start(child)  # the second pull has begun while the first is stalled
            proxy.faults.release.set()
    assert len(outputs) == 2
    assert outputs[0][0] == outputs[1][0] == "starting"
    assert outputs[0][1] == outputs[1][1]
    assert_consistent(ImageCache(tmp_path / "shared"))
    assert set(blob_gets(proxy, unique_image).values()) == {1}  # pulled and unpacked once


def _tiny_image(path: Path, size: int) -> tuple[LayoutSource, str]:
    digest = build_layout(path, {"data": File(os.urandom(size))}, config=ImageConfig(cmd=("x",)))
    return LayoutSource(path, digest), f"sha256-{digest[7:]}"


async def test_lru_eviction_spares_images_in_use(tmp_path: Path) -> None:
    ticks = itertools.count()
    cache = ImageCache(tmp_path / "c", max_bytes=700_000, clock=lambda: float(next(ticks)))
    a, a_key = _tiny_image(tmp_path / "a", 300_000)
    b, b_key = _tiny_image(tmp_path / "b", 300_000)
    c, c_key = _tiny_image(tmp_path / "c-img", 300_000)
    d, d_key = _tiny_image(tmp_path / "d-img", 300_000)
    with trio.fail_after(30):
        image_a = await prepare_image(a, cache)
        image_a.release()
        image_b = await prepare_image(b, cache)  # does not fit with a: a (unused, oldest) goes
        assert not image_a.rootfs.exists()
        assert image_b.rootfs.exists()
        index = cache.index()
        assert a_key not in index
        assert sum(e["size"] for e in index.values()) <= 700_000

        image_c = await prepare_image(c, cache)  # b is in use: it is spared
        assert image_b.rootfs.exists() and image_c.rootfs.exists()
        image_b.release()
        image_d = await prepare_image(d, cache)  # now b (least recently used, free) goes
        assert not image_b.rootfs.exists()
        assert image_c.rootfs.exists() and image_d.rootfs.exists()
        assert b_key not in cache.index()
        assert {c_key, d_key} <= cache.index().keys()
        image_c.release()
        image_d.release()
        assert await cache.evict() == []  # within budget: nothing more to do


async def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c")
    digest = parse_digest("sha256:" + "cd" * 32)

    async def broken(fs: Path) -> ImageConfig:
        (fs / "half").write_text("x")
        raise ImageError("boom")

    with trio.fail_after(10), pytest.raises(ImageError, match="boom"):
        await cache.lease_rootfs(digest, broken)
    assert list((cache.root / "rootfs").iterdir()) == []
    assert list((cache.root / "tmp").iterdir()) == []


def test_stale_temp_of_dead_process_removed(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c")
    stale = cache.root / "tmp" / "999999999-sha256-x"
    stale.mkdir()
    (stale / "file").write_text("half")
    live = cache.root / "tmp" / f"{os.getpid()}-in-progress"
    live.mkdir()
    ImageCache(tmp_path / "c")
    assert not stale.exists()
    assert live.exists()


async def test_cancel_at_any_point_keeps_cache_consistent(tmp_path: Path) -> None:
    layers = [{f"d{i}/f{j}": File(os.urandom(64 * 1024)) for j in range(40)} for i in range(3)]
    layout = tmp_path / "big"
    digest = busybox_layout(layout, extra_layers=layers, compression=["gzip", "zstd", "none", "gzip"])
    src = LayoutSource(layout, digest)
    cache = ImageCache(tmp_path / "c")
    with trio.fail_after(60):
        for delay in (0, 0.0005, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1):
            with trio.move_on_after(delay):
                image = await prepare_image(src, cache)
                image.release()
            assert_consistent(cache)
        image = await prepare_image(src, cache)
    assert_consistent(cache)
    assert len(list((image.rootfs / "d2").iterdir())) == 40


async def test_reopen_reconciles_index(busybox_image: RegistryImage, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c")
    with trio.fail_after(30):
        image = await prepare_image(LayoutSource(busybox_image.layout), cache)
    image.release()
    (cache.root / "index.json").unlink()  # as if we crashed before recording anything
    reopened = ImageCache(tmp_path / "c", max_bytes=1)
    index = reopened.index()
    assert index[f"sha256-{busybox_image.digest[7:]}"]["kind"] == "rootfs"
    assert sum(1 for e in index.values() if e["kind"] == "blob") == 2
    with trio.fail_after(30):
        await reopened.evict()
    assert not image.rootfs.exists()
    assert reopened.index() == {}


async def test_unpacked_images_are_private_to_the_agent(tmp_path: Path) -> None:
    # a set-uid root binary from an image must not be executable by other users of the host
    root = tmp_path / "cache-root"
    root.mkdir(mode=0o755)
    src, _ = _tiny_image(tmp_path / "img", 1000)
    cache = ImageCache(root)
    with trio.fail_after(30):
        image = await prepare_image(src, cache)
    image.release()
    for sub in ("rootfs", "tmp"):
        assert (root / sub).stat().st_mode & 0o777 == 0o700, sub
    assert image.rootfs.is_relative_to(root / "rootfs")


async def test_blobs_and_rootfs_are_on_disk_before_they_are_published(
    unique_image: RegistryImage, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut must not leave a published blob or rootfs with missing data: each blob file is
    fsynced before its rename, the unpacked tree is flushed (syncfs) before its rename, and the
    directory holding each new name is fsynced after it."""
    import runner_agent.oci.cache as cache_module

    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    real_syncfs, real_fsync_dir = cache_module.sync_filesystem, cache_module.fsync_dir

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst)

    def syncfs(path: Path) -> None:
        events.append(("syncfs", str(path)))
        real_syncfs(path)

    def fsync_dir(path: Path) -> None:
        events.append(("fsync_dir", str(path)))
        real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(cache_module, "sync_filesystem", syncfs)
    monkeypatch.setattr(cache_module, "fsync_dir", fsync_dir)
    cache = ImageCache(tmp_path / "cache")
    with trio.fail_after(60):
        image = await prepare_image(
            RegistrySource(proxy.url, unique_image.repository, unique_image.digest), cache
        )
    monkeypatch.undo()

    renames = [(i, *detail.split(" -> ")) for i, (kind, detail) in enumerate(events) if kind == "rename"]
    blob_renames = [r for r in renames if "/blobs/" in r[2]]
    rootfs_renames = [r for r in renames if r[2] == str(image.rootfs.parent)]
    assert len(blob_renames) >= 2 and len(rootfs_renames) == 1  # config + layers; one entry
    for at, src, dst in blob_renames + rootfs_renames:
        before, after = events[:at], events[at + 1 :]
        flushed = ("fsync", src) in before or any(
            kind == "syncfs" and src.startswith(path) for kind, path in before
        )
        assert flushed, f"{src} renamed to {dst} before it was flushed: {events}"
        assert ("fsync_dir", str(Path(dst).parent)) in after
    assert_consistent(cache)
