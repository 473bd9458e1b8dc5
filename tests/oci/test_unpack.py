"""Safe unpacking: escapes of every kind are refused or contained, limits hold, whiteouts and
all three compressions work, diff_ids are verified."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from runner_agent.errors import ImageError
from runner_agent.oci.digest import Digest
from runner_agent.oci.errors import DigestMismatchError, UnsafeLayerError
from runner_agent.oci.unpack import Unpacker, UnpackLimits
from tests.oci.tarutil import E, compress, tar_bytes


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "target").write_text("orig")
    return root, outside


def apply(root: Path, *layers: bytes, limits: UnpackLimits | None = None, comp: str = "none") -> Unpacker:
    unpacker = Unpacker(root, limits or UnpackLimits())
    try:
        for i, layer in enumerate(layers):
            unpacker.apply_layer(io.BytesIO(compress(layer, comp)), f"layer {i}", None)
    finally:
        unpacker.close()
    return unpacker


def snapshot(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(path))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = "-> " + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = "dir"
        else:
            out[rel] = p.read_text()
    return out


@pytest.mark.parametrize("comp", ["gzip", "zstd", "none"])
def test_compressions_give_same_tree(dirs: tuple[Path, Path], comp: str) -> None:
    root, _ = dirs
    layer = tar_bytes(
        E("bin", "dir", mode=0o755),
        E("bin/tool", data=b"#!/bin/sh\n", mode=0o755),
        E("bin/alias", "symlink", link="tool"),
        E("bin/hard", "hardlink", link="bin/tool"),
        E("etc/conf", data=b"x=1"),
    )
    apply(root, layer, comp=comp)
    assert snapshot(root) == {
        "bin": "dir",
        "bin/alias": "-> tool",
        "bin/hard": "#!/bin/sh\n",
        "bin/tool": "#!/bin/sh\n",
        "etc": "dir",
        "etc/conf": "x=1",
    }
    assert os.stat(root / "bin/tool").st_mode & 0o777 == 0o755
    assert os.stat(root / "bin/hard").st_ino == os.stat(root / "bin/tool").st_ino


def test_diff_id_verified(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    layer = tar_bytes(E("a", data=b"1"))
    good = Digest("sha256", hashlib.sha256(layer).hexdigest())
    unpacker = Unpacker(root)
    unpacker.apply_layer(io.BytesIO(compress(layer, "gzip")), "layer 0", good)
    with pytest.raises(DigestMismatchError, match="diff_id"):
        unpacker.apply_layer(io.BytesIO(compress(layer, "zstd")), "layer 1", Digest("sha256", "0" * 64))
    unpacker.close()


def test_dotdot_refused(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    with pytest.raises(UnsafeLayerError, match=r"'\.\./outside/pwned' contains '\.\.'"):
        apply(root, tar_bytes(E("../outside/pwned", data=b"x")))
    assert not (outside / "pwned").exists()


def test_absolute_refused(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    with pytest.raises(UnsafeLayerError, match="absolute path"):
        apply(root, tar_bytes(E(f"{outside}/pwned", data=b"x")))
    assert not (outside / "pwned").exists()


def test_write_through_symlink_is_contained(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    apply(
        root,
        tar_bytes(
            E("rel", "symlink", link="../outside"),
            E("abs", "symlink", link=str(outside)),
            E("rel/pwned", data=b"r"),
            E("abs/pwned", data=b"a"),
        ),
    )
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    assert (root / "outside/pwned").read_text() == "r"
    assert (root / str(outside).lstrip("/") / "pwned").read_text() == "a"


def test_symlink_chain_and_later_layer_is_contained(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    lower = tar_bytes(E("a", "symlink", link="b/c"), E("b", "symlink", link="../.."), E("b2", "dir"))
    upper = tar_bytes(E("a/outside/pwned", data=b"x"), E("a/outside/target", data=b"new"))
    apply(root, lower, upper)
    assert (outside / "target").read_text() == "orig"
    assert not (outside / "pwned").exists()
    assert (root / "c/outside/pwned").read_text() == "x"


def test_symlink_loop_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    with pytest.raises(UnsafeLayerError, match="too many symlinks"):
        apply(root, tar_bytes(E("a", "symlink", link="b"), E("b", "symlink", link="a"), E("a/x", data=b"")))


def test_file_over_symlink_replaces_link_not_target(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    apply(
        root,
        tar_bytes(E("passwd", "symlink", link=str(outside / "target"))),
        tar_bytes(E("passwd", data=b"mine")),
    )
    assert (outside / "target").read_text() == "orig"
    assert (root / "passwd").read_text() == "mine"
    assert not (root / "passwd").is_symlink()


def test_hardlink_out_refused(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    with pytest.raises(UnsafeLayerError, match=r"contains '\.\.'"):
        apply(root, tar_bytes(E("hl", "hardlink", link="../outside/target")))
    with pytest.raises(UnsafeLayerError, match="points outside the image"):
        apply(root, tar_bytes(E("hl", "hardlink", link=str(outside / "target"))))
    with pytest.raises(UnsafeLayerError, match="target does not exist in the image"):
        apply(root, tar_bytes(E("esc", "symlink", link=str(outside)), E("hl", "hardlink", link="esc/target")))
    assert os.stat(outside / "target").st_nlink == 1


def test_device_nodes_skipped_and_reported(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    unpacker = apply(
        root, tar_bytes(E("dev", "dir"), E("dev/null", "chr"), E("dev/sda", "blk"), E("dev/fifo", "fifo"))
    )
    assert sorted(os.listdir(root / "dev")) == ["fifo"]
    skipped = unpacker.stats().skipped
    assert len(skipped) == 2
    assert "'dev/null' (character device" in skipped[0]
    assert "'dev/sda' (block device" in skipped[1]


def test_size_limit(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    bomb = tar_bytes(E("zeros", data=bytes(8 * 1024 * 1024)))
    with pytest.raises(UnsafeLayerError, match="more than 1048576 bytes"):
        apply(root, bomb, limits=UnpackLimits(max_total_bytes=1024 * 1024), comp="gzip")
    assert not (root / "zeros").exists()


def test_entry_limit(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    many = tar_bytes(*(E(f"f{i}") for i in range(100)))
    with pytest.raises(UnsafeLayerError, match="more than 50 entries"):
        apply(root, many, limits=UnpackLimits(max_entries=50))


def test_whiteouts(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    lower = tar_bytes(
        E("a/x", data=b"x"), E("a/y", data=b"y"), E("b/z", data=b"z"), E("c", data=b"c"), E("keep", data=b"k")
    )
    upper = tar_bytes(
        E("a", "dir"),
        E("a/.wh..wh..opq"),
        E("a/new", data=b"n"),
        E(".wh.b"),
        E(".wh.c"),
        E("d", data=b"d"),
        E(".wh.d"),  # same-layer whiteout does not hide d
    )
    apply(root, lower, upper, comp="zstd")
    assert snapshot(root) == {"a": "dir", "a/new": "n", "d": "d", "keep": "k"}


def test_replacements_between_layers(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    lower = tar_bytes(E("p/q", data=b"q"), E("f", data=b"f"), E("l", "symlink", link="p"))
    upper = tar_bytes(E("p", data=b"now a file"), E("f", "dir"), E("f/inner", data=b"i"), E("l", "dir"))
    apply(root, lower, upper)
    assert snapshot(root) == {"f": "dir", "f/inner": "i", "l": "dir", "p": "now a file"}


def test_corrupt_archive_is_image_error(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    data = compress(tar_bytes(E("a", data=b"x" * 10000)), "gzip")
    with pytest.raises(ImageError, match="not a valid"):
        apply(root, data[: len(data) // 2])
