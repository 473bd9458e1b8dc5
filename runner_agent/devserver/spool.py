"""Spool-directory job submission for ``runner-agent dev-server --spool DIR``.

Layout (created on start):

- ``DIR/incoming/*.json`` — drop a job here. The file is either a bare ``JsonJobConfig`` object
  (``{"registry": …, "project": …, "digest": …, "timeout": …, …}``) or
  ``{"config": {...}, "spec": {...}?, "timeout": N?}``. Write it under another name and rename it
  to ``*.json`` so the server never reads a half-written file. Accepted files are deleted.
- ``DIR/rejected/NAME`` + ``DIR/rejected/NAME.error.txt`` — a file that did not validate, and why.
- ``DIR/jobs/<uuid>.json`` — one per submitted job, rewritten atomically on every change: status,
  timestamps, runner, results, error and every terminal message received.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import trio

from runner_agent.devserver.jobs import parse_submission
from runner_agent.devserver.store import JobRecord, record_to_json
from runner_agent.fsutil import atomic_write
from runner_agent.protocol import JobConfig, ProtocolError, Spec

log = logging.getLogger(__name__)

Submit = Callable[[JobConfig, "Spec | None", "int | None"], UUID]


class Spool:
    """Watches ``incoming/`` and mirrors job records into ``jobs/``."""

    def __init__(self, root: Path, submit: Submit, scan_interval: float = 0.25) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.rejected = root / "rejected"
        self.jobs = root / "jobs"
        self._submit = submit
        self._scan_interval = scan_interval

    def prepare(self) -> None:
        for directory in (self.incoming, self.rejected, self.jobs):
            directory.mkdir(parents=True, exist_ok=True)

    def scan_once(self) -> list[UUID]:
        """Submit every ``incoming/*.json``; returns the new job UUIDs."""
        submitted: list[UUID] = []
        for path in sorted(self.incoming.glob("*.json")):
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
                config, spec, timeout = parse_submission(obj)
            except (OSError, ValueError, ProtocolError) as error:
                self._reject(path, str(error))
                continue
            uuid = self._submit(config, spec, timeout)
            path.unlink(missing_ok=True)
            log.info("spool: %s submitted as job %s", path.name, uuid)
            submitted.append(uuid)
        return submitted

    def _reject(self, path: Path, error: str) -> None:
        log.warning("spool: rejected %s: %s", path.name, error)
        try:
            os.replace(path, self.rejected / path.name)
            (self.rejected / f"{path.name}.error.txt").write_text(error + "\n", encoding="utf-8")
        except OSError as move_error:
            log.error("spool: cannot move %s to %s: %s", path.name, self.rejected, move_error)

    def write_job(self, record: JobRecord) -> None:
        """Mirror one record to ``jobs/<uuid>.json``; a write error is logged, never fatal."""
        document = record_to_json(record)
        try:
            atomic_write(
                self.jobs / f"{record.uuid}.json",
                json.dumps(document, indent=1) + "\n",
                mode=0o600,
                durable=False,
            )
        except OSError as error:
            log.error("spool: cannot write job %s: %s", record.uuid, error)

    async def run(self) -> None:
        while True:
            self.scan_once()
            await trio.sleep(self._scan_interval)
