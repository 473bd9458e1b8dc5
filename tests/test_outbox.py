"""Durable outbox: atomic writes, reload order, quarantine of corrupt files, dead-letter."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from itertools import count
from pathlib import Path
from uuid import UUID

import pytest

from runner_agent.outbox import Outbox, OutboxError
from runner_agent.protocol import Canceled, Completed, Failed, encode

JOB_A = UUID("3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50")
JOB_B = UUID("6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d")
JOB_C = UUID("11111111-2222-3333-4444-555555555555")
REPO = Path(__file__).resolve().parents[1]


def ticking_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    ticks = count()
    return lambda: start + next(ticks)


def test_put_load_round_trip_oldest_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path, clock=ticking_clock())
    box.put(Canceled(job=JOB_B))
    box.put(Completed(job=JOB_C, results=()))
    box.put(Failed(job=JOB_A, results=(), error="Benchmark exited with non-zero exit code: 1"))
    assert box.depth == 3

    fresh = Outbox(tmp_path)
    loaded = fresh.load()
    assert [e.job for e in loaded] == [JOB_B, JOB_C, JOB_A]
    assert loaded[0].message == Canceled(job=JOB_B)
    assert loaded[2].message == Failed(
        job=JOB_A, results=(), error="Benchmark exited with non-zero exit code: 1"
    )
    assert all(e.attempts == 0 for e in loaded)
    assert fresh.depth == 3
    on_disk = json.loads((tmp_path / "outbox" / f"{JOB_B}.json").read_text())
    assert on_disk["message"] == encode(Canceled(job=JOB_B))


def test_attempts_are_durable_and_a_rewrite_keeps_first_queued(tmp_path: Path) -> None:
    box = Outbox(tmp_path, clock=ticking_clock())
    first = box.put(Canceled(job=JOB_A))
    assert box.put(Canceled(job=JOB_A), attempts=1).attempts == 1
    assert box.put(Canceled(job=JOB_A), attempts=2).attempts == 2
    (entry,) = Outbox(tmp_path).load()
    assert entry.attempts == 2
    assert entry.first_queued == first.first_queued


def test_remove_only_the_acknowledged_job(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(Canceled(job=JOB_A))
    box.put(Canceled(job=JOB_B))
    assert box.remove(JOB_A) is True
    assert box.remove(JOB_A) is False
    assert [e.job for e in Outbox(tmp_path).load()] == [JOB_B]
    assert box.depth == 1


def test_failed_rename_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(Failed(job=JOB_A, results=(), error="old"))

    def disk_full(_src: str, _dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    broken = Outbox(tmp_path, rename=disk_full)
    broken.load()
    with pytest.raises(OutboxError, match="No space left on device"):
        broken.put(Completed(job=JOB_A, results=()))
    with pytest.raises(OutboxError):
        broken.put(Canceled(job=JOB_B))
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [f"{JOB_A}.json"]
    (entry,) = Outbox(tmp_path).load()
    assert entry.message == Failed(job=JOB_A, results=(), error="old")


def _crash_during_put(state_dir: Path, message_text: str) -> int:
    script = textwrap.dedent(
        f"""
        import os
        from runner_agent.outbox import Outbox
        from runner_agent.protocol import decode_runner

        def crash(_src, _dst):
            os._exit(17)  # the process dies after the temp file is written, before the rename

        box = Outbox({str(state_dir)!r}, rename=crash)
        box.load()
        box.put(decode_runner({message_text!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60, check=False)
    return proc.returncode


def test_crash_between_write_and_rename_leaves_old_or_nothing(tmp_path: Path) -> None:
    def leftovers() -> list[Path]:
        return [p for p in (tmp_path / "outbox").iterdir() if p.name.startswith(".tmp-")]

    # new file: the crash leaves no message at all (and no partial one)
    assert _crash_during_put(tmp_path, encode(Canceled(job=JOB_B))) == 17
    assert len(leftovers()) == 1  # the crash really happened after writing
    assert Outbox(tmp_path).load() == []
    assert leftovers() == []  # cleaned up at load
    # existing file: the crash leaves the old content intact
    Outbox(tmp_path).put(Failed(job=JOB_A, results=(), error="old"))
    assert _crash_during_put(tmp_path, encode(Completed(job=JOB_A, results=()))) == 17
    assert len(leftovers()) == 1

    box = Outbox(tmp_path)
    loaded = box.load()
    assert [e.message for e in loaded] == [Failed(job=JOB_A, results=(), error="old")]
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [f"{JOB_A}.json"]


def test_corrupt_and_truncated_files_are_quarantined_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path)
    box.put(Canceled(job=JOB_A))
    box.put(Completed(job=JOB_B, results=()))
    good = (tmp_path / "outbox" / f"{JOB_B}.json").read_bytes()
    (tmp_path / "outbox" / f"{JOB_B}.json").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "outbox" / f"{JOB_C}.json").write_text(
        json.dumps({"format": 1, "job": str(JOB_C), "message": '{"event":"running"}',
                    "attempts": 0, "first_queued": 1.0})
    )
    (tmp_path / "outbox" / "notes.txt").write_text("hello")

    loaded = Outbox(tmp_path).load()
    assert [e.job for e in loaded] == [JOB_A]
    quarantined = sorted(p.name for p in (tmp_path / "outbox" / "quarantine").iterdir())
    assert quarantined == sorted([f"{JOB_B}.json", f"{JOB_C}.json", "notes.txt"])
    assert "not a terminal message" in caplog.text
    assert f"{JOB_B}.json" in caplog.text


def test_mismatched_job_and_file_name_is_quarantined(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(Canceled(job=JOB_A))
    src = tmp_path / "outbox" / f"{JOB_A}.json"
    src.rename(tmp_path / "outbox" / f"{JOB_B}.json")
    assert Outbox(tmp_path).load() == []
    assert (tmp_path / "outbox" / "quarantine" / f"{JOB_B}.json").exists()


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    for _ in range(2):
        (tmp_path / "outbox").mkdir(parents=True, exist_ok=True)
        (tmp_path / "outbox" / f"{JOB_A}.json").write_text("{")
        Outbox(tmp_path).load()
    names = sorted(p.name for p in (tmp_path / "outbox" / "quarantine").iterdir())
    assert names == [f"{JOB_A}.json", f"{JOB_A}.json.1"]


def test_dead_letter_moves_message_with_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path)
    box.put(Completed(job=JOB_A, results=()), attempts=10)
    target = box.dead_letter(JOB_A, "no ack after 10 attempts")
    assert box.depth == 0
    assert Outbox(tmp_path).load() == []
    record = json.loads(target.read_text())
    assert target == tmp_path / "dead-letter" / f"{JOB_A}.json"
    assert record["reason"] == "no ack after 10 attempts"
    assert record["attempts"] == 10
    assert record["message"] == encode(Completed(job=JOB_A, results=()))
    assert "dead-letter" in caplog.text
    with pytest.raises(OutboxError):
        box.dead_letter(JOB_A, "again")


def test_dead_letter_of_a_message_whose_write_had_failed(tmp_path: Path) -> None:
    # The disk was full when the result was persisted, so only the caller holds it; when its
    # attempts run out it must still reach the dead-letter folder.
    full = [True]

    def rename(src: str, dst: str) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.replace(src, dst)

    box = Outbox(tmp_path, rename=rename)
    message = Completed(job=JOB_A, results=())
    with pytest.raises(OutboxError):
        box.put(message, attempts=1)
    full[0] = False
    with pytest.raises(OutboxError):
        box.dead_letter(JOB_A, "no ack")  # nothing stored and nothing given
    with pytest.raises(OutboxError):
        box.dead_letter(JOB_B, "no ack", message=message, attempts=3)  # another job's message
    target = box.dead_letter(JOB_A, "not acknowledged after 3 attempts", message=message, attempts=3)
    record = json.loads(target.read_text())
    assert record["message"] == encode(message)
    assert record["attempts"] == 3
    assert record["reason"] == "not acknowledged after 3 attempts"
    assert Outbox(tmp_path).load() == []


def test_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutboxError, match="cannot create outbox folders"):
        Outbox(blocker)
