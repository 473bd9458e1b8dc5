"""runner_agent.fsutil: atomic replace keeps the old file on failure, sets the mode at creation."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner_agent.fsutil import TMP_PREFIX, atomic_write, fsync_dir, remove_durably, sync_filesystem

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_writes_bytes_and_text_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"\x00one")
    assert target.read_bytes() == b"\x00one"
    atomic_write(target, "twö")
    assert target.read_bytes() == "twö".encode()
    assert _names(tmp_path) == ["state.json"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_mode_is_set_on_the_temp_file_before_publishing(tmp_path: Path, mode: int) -> None:
    seen: list[tuple[str, int, bytes]] = []

    def inspecting_replace(src: str, dst: str) -> None:
        seen.append((Path(src).name, _mode(src), Path(src).read_bytes()))
        os.replace(src, dst)

    target = tmp_path / "f"
    atomic_write(target, b"data", mode=mode, replace=inspecting_replace)
    ((name, tmp_mode, content),) = seen
    assert name.startswith(f"{TMP_PREFIX}f.")
    assert tmp_mode == mode
    assert content == b"data"
    assert _mode(target) == mode


def test_secret_mode_replacing_a_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "env"
    atomic_write(target, "A=1\n", mode=0o644)
    atomic_write(target, "SECRET=1\n", mode=0o600)
    assert _mode(target) == 0o600
    assert target.read_text() == "SECRET=1\n"


@pytest.mark.parametrize(
    "failure", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["enospc", "interrupt"]
)
def test_failure_between_write_and_rename_keeps_old_file_and_removes_temp(
    tmp_path: Path, failure: BaseException
) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def failing_replace(_src: str, _dst: str) -> None:
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(target, b"new", replace=failing_replace)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["f"]


def test_crash_between_write_and_rename_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from runner_agent.fsutil import atomic_write

        def crash(_src, _dst):
            os._exit(17)  # the process dies after the temp file is written, before the rename

        atomic_write(Path({str(target)!r}), b"new", replace=crash)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 17
    assert target.read_bytes() == b"old"
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "f"]
    assert leftover.name.startswith(TMP_PREFIX)  # recognisable, so its owner can delete it
    assert leftover.read_bytes() == b"new"
    assert _mode(leftover) == 0o644


def test_exclusive_creates_but_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "env"
    atomic_write(target, "first", mode=0o600, exclusive=True)
    assert target.read_text() == "first"
    assert _mode(target) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write(target, "second", mode=0o600, exclusive=True)
    assert target.read_text() == "first"
    assert _names(tmp_path) == ["env"]


def test_explicit_temp_path_is_used_and_removed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "index.json"
    seen: list[str] = []

    def recording_replace(src: str, dst: str) -> None:
        seen.append(src)
        os.replace(src, dst)

    atomic_write(target, "{}", durable=False, tmp=work / "1-index", replace=recording_replace)
    assert seen == [str(work / "1-index")]
    assert target.read_text() == "{}"
    assert _names(work) == []


def test_explicit_temp_path_that_exists_is_refused(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.write_text("someone else's")
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "f", b"x", tmp=busy)
    assert busy.read_text() == "someone else's"
    assert not (tmp_path / "f").exists()


def test_missing_directory_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "absent" / "f", b"x")


def test_remove_durably_reports_whether_it_removed(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    assert remove_durably(target) is True
    assert not target.exists()
    assert remove_durably(target) is False
    fsync_dir(tmp_path)  # a directory can be flushed on its own


def test_sync_filesystem_flushes_a_tree_or_says_why_not(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a/b").mkdir(parents=True)
    (tree / "a/b/file").write_bytes(b"x" * 4096)
    sync_filesystem(tree)  # syncfs(2) on this file system; no error
    assert (tree / "a/b/file").read_bytes() == b"x" * 4096
    with pytest.raises(FileNotFoundError):
        sync_filesystem(tmp_path / "missing")
