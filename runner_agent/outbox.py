"""Durable store of terminal messages (``completed``/``failed``/``canceled``) not yet acknowledged.

Layout under the state directory::

    <state_dir>/outbox/<job-uuid>.json        one pending message per job
    <state_dir>/outbox/quarantine/<name>      files that could not be read back (corrupt, truncated)
    <state_dir>/dead-letter/<job-uuid>.json   messages whose delivery attempts were exhausted

Each outbox file is a JSON object ``{"format": 1, "job": <uuid>, "message": <wire text>,
"attempts": <int>, "first_queued": <unix seconds>}``. Files are written atomically: a temporary file
in the same folder is written and fsynced, renamed over the target, and the folder is fsynced, so a
crash leaves either the old or the new file, never a partial one. A message is written *before* it is
sent and removed only when its own ``ack`` arrives. Any write error raises :class:`OutboxError`; the
caller keeps the message in memory and retries, so nothing is lost silently.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from attrs import frozen

from runner_agent.errors import AgentError
from runner_agent.fsutil import TMP_PREFIX, atomic_write, remove_durably
from runner_agent.protocol import (
    Canceled,
    Completed,
    Failed,
    ProtocolError,
    TerminalMessage,
    decode_runner,
    encode,
    terminal_job,
)

log = logging.getLogger(__name__)

FORMAT = 1


class OutboxError(AgentError):
    """The outbox could not be written or changed; the message is *not* durable yet."""


@frozen
class OutboxEntry:
    """One pending terminal message and its delivery bookkeeping."""

    job: UUID
    message: TerminalMessage
    attempts: int
    first_queued: float


class Outbox:
    """Pending terminal messages, one file per job, in ``<state_dir>/outbox``.

    ``clock`` gives wall-clock seconds for ``first_queued``; ``rename`` is the atomic replace step
    (``os.replace``), injectable so tests can fail or crash between write and rename.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        rename: Callable[[str, str], None] = os.replace,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "outbox"
        self.quarantine_dir = self.dir / "quarantine"
        self.dead_letter_dir = self.state_dir / "dead-letter"
        self._clock = clock
        self._rename = rename
        self._entries: dict[UUID, OutboxEntry] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.dead_letter_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create outbox folders under {self.state_dir}: {exc}") from exc

    @property
    def depth(self) -> int:
        """Number of messages awaiting their ack."""
        return len(self._entries)

    def path_for(self, job: UUID) -> Path:
        return self.dir / f"{job}.json"

    def get(self, job: UUID) -> OutboxEntry | None:
        return self._entries.get(job)

    def put(self, msg: TerminalMessage, attempts: int = 0) -> OutboxEntry:
        """Durably store ``msg`` (replacing any earlier message for the same job)."""
        job = terminal_job(msg)
        previous = self._entries.get(job)
        first_queued = previous.first_queued if previous is not None else self._clock()
        entry = OutboxEntry(job=job, message=msg, attempts=attempts, first_queued=first_queued)
        self._write(entry)
        return entry

    def remove(self, job: UUID) -> bool:
        """Forget ``job``'s message (its own ack arrived). Returns False if it was not pending."""
        known = self._entries.pop(job, None) is not None
        path = self.path_for(job)
        try:
            removed = remove_durably(path)
        except OSError as exc:
            raise OutboxError(f"cannot remove delivered message {path}: {exc}") from exc
        return removed or known

    def dead_letter(
        self, job: UUID, reason: str, *, message: TerminalMessage | None = None, attempts: int = 0
    ) -> Path:
        """Move ``job``'s message to the dead-letter folder with ``reason``; returns its new path.

        ``message``/``attempts`` are used when the message is not in the outbox (its write had
        failed), so a message the caller still holds is dead-lettered all the same.
        """
        entry = self._entries.get(job)
        if entry is None and message is not None and terminal_job(message) == job:
            entry = OutboxEntry(job=job, message=message, attempts=attempts, first_queued=self._clock())
        if entry is None:
            raise OutboxError(f"no pending message for job {job} to dead-letter")
        record = self._record(entry)
        record["reason"] = reason
        record["dead_lettered"] = self._clock()
        target = self.dead_letter_dir / f"{job}.json"
        self._atomic_write(target, record)
        self.remove(job)
        log.error(
            "outbox: job %s message moved to dead-letter after %d attempts: %s (%s)",
            job,
            entry.attempts,
            reason,
            target,
        )
        return target

    def load(self) -> list[OutboxEntry]:
        """Read every pending message from disk, oldest first. Unreadable files are quarantined."""
        entries: dict[UUID, OutboxEntry] = {}
        for path in sorted(self.dir.iterdir()):
            if not path.is_file():
                continue
            if path.name.startswith(TMP_PREFIX):
                # left behind by a crash between write and rename: the target is intact
                log.warning("outbox: removing unfinished temporary file %s", path)
                path.unlink(missing_ok=True)
                continue
            if path.suffix != ".json":
                self._quarantine(path, "not an outbox file (expected <job-uuid>.json)")
                continue
            try:
                entry = self._read(path)
            except (OSError, ValueError, ProtocolError) as exc:
                self._quarantine(path, str(exc))
                continue
            entries[entry.job] = entry
        self._entries = entries
        return sorted(entries.values(), key=lambda e: (e.first_queued, str(e.job)))

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _record(entry: OutboxEntry) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "job": str(entry.job),
            "message": encode(entry.message),
            "attempts": entry.attempts,
            "first_queued": entry.first_queued,
        }

    def _write(self, entry: OutboxEntry) -> None:
        self._atomic_write(self.path_for(entry.job), self._record(entry))
        self._entries[entry.job] = entry

    def _atomic_write(self, target: Path, record: dict[str, Any]) -> None:
        data = json.dumps(record, separators=(",", ":")).encode()
        try:
            atomic_write(target, data, mode=0o600, replace=self._rename)
        except OSError as exc:
            raise OutboxError(f"cannot write {target}: {exc}") from exc

    @staticmethod
    def _read(path: Path) -> OutboxEntry:
        raw = json.loads(path.read_bytes())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown format {raw.get('format')!r} (expected {FORMAT})")
        job_text, text = raw.get("job"), raw.get("message")
        attempts, first_queued = raw.get("attempts"), raw.get("first_queued")
        if not isinstance(job_text, str) or not isinstance(text, str):
            raise ValueError("'job' and 'message' must be strings")
        if type(attempts) is not int or attempts < 0:
            raise ValueError(f"'attempts' must be a non-negative integer, got {attempts!r}")
        if isinstance(first_queued, bool) or not isinstance(first_queued, int | float):
            raise ValueError(f"'first_queued' must be a number, got {first_queued!r}")
        job = UUID(job_text)
        if path.name != f"{job}.json":
            raise ValueError(f"file name does not match its job {job}")
        message = decode_runner(text)
        if not isinstance(message, Completed | Failed | Canceled):
            raise ValueError(f"not a terminal message: {text[:80]!r}")
        if terminal_job(message) != job:
            raise ValueError(f"message is for job {terminal_job(message)}, file is for {job}")
        return OutboxEntry(
            job=job, message=message, attempts=attempts, first_queued=float(first_queued)
        )

    def _quarantine(self, path: Path, why: str) -> None:
        try:
            self.quarantine_dir.mkdir(exist_ok=True)
            target = self.quarantine_dir / path.name
            n = 1
            while target.exists():
                target = self.quarantine_dir / f"{path.name}.{n}"
                n += 1
            os.replace(path, target)
        except OSError as exc:
            log.error("outbox: unreadable file %s (%s) and it could not be quarantined: %s", path, why, exc)
            return
        log.error("outbox: quarantined unreadable file %s -> %s: %s", path, target, why)
