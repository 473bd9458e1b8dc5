"""The dev server's job store: job records, the status lifecycle of PROTOCOL.md §6/§7, persistence.

Every transition mirrors one of Bencher's conditional ``UPDATE … WHERE status = …`` statements,
including its quirks: ``completed`` overrides ``failed`` ("the runner is the authority"),
``completed`` on a claimed job and ``canceled`` on a completed/failed job are invalid
(:class:`InvalidTransitionError`, which the channel answers by dropping the connection).

The store is plain synchronous code over an in-memory dict; with a ``persist_path`` every change
is written atomically (temp file + fsync + rename) as one JSON document, so a restarted server keeps
its jobs. Times are seconds since the epoch from an injected wall clock.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

import cattrs
from attrs import evolve, field, frozen

from runner_agent.fsutil import atomic_write

JsonObject = dict[str, Any]


class JobStatus(enum.Enum):
    """Bencher's ``JobStatus`` (``lib/bencher_json/src/runner/job_status.rs``)."""

    PENDING = "pending"
    CLAIMED = "claimed"
    RUNNING = "running"
    COMPLETED = "completed"
    PROCESSED = "processed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def has_run(self) -> bool:
        """Bencher's ``has_run()``: the server treats these as terminal."""
        return self in _HAS_RUN


_HAS_RUN = frozenset(
    {JobStatus.COMPLETED, JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED}
)


class InvalidTransitionError(Exception):
    """A runner message asked for a status change Bencher refuses (the connection is dropped)."""


class UnknownJobError(KeyError):
    """No job with this UUID exists in the store."""


@frozen
class TerminalReceipt:
    """One terminal message as it arrived, kept to detect duplicates and double execution."""

    event: str  # "completed" | "failed" | "canceled"
    job: UUID  # the UUID the message named
    at: float
    path: str  # "executing" | "idle"
    outcome: str  # "acked" | "dropped" | "discarded" | "ack_withheld"
    text: str  # the raw frame


@frozen
class StatusChange:
    status: JobStatus
    at: float
    cause: str


@frozen
class JobRecord:
    """Everything the dev server knows about one job."""

    uuid: UUID
    status: JobStatus
    config: JsonObject  # the wire form of JsonJobConfig
    spec: JsonObject  # the wire form of JsonSpec
    timeout: int
    created: float
    modified: float
    target_runner: UUID | None = None  # None: any runner may claim it
    runner: UUID | None = None
    claimed: float | None = None
    started: float | None = None
    completed: float | None = None
    last_heartbeat: float | None = None
    results: list[JsonObject] | None = None
    error: str | None = None
    processing_error: str | None = None
    user_canceled: bool = False
    terminal_messages: tuple[TerminalReceipt, ...] = ()
    history: tuple[StatusChange, ...] = ()

    def past_hard_limit(self, now: float, grace: float) -> bool:
        """Bencher's ``is_job_timed_out``: strictly more than ``timeout + grace`` since ``started``."""
        return self.started is not None and now - self.started > self.timeout + grace


def process_all(results: list[JsonObject]) -> str | None:
    """Default result processing: every result is accepted (returns no error)."""
    del results
    return None


ResultProcessor = Callable[[list[JsonObject]], "str | None"]

_converter = cattrs.Converter()
_converter.register_unstructure_hook(UUID, str)
_converter.register_structure_hook(UUID, lambda value, _type: UUID(value))


def record_to_json(record: JobRecord) -> JsonObject:
    result: JsonObject = _converter.unstructure(record)
    return result


def record_from_json(obj: JsonObject) -> JobRecord:
    return _converter.structure(obj, JobRecord)


@frozen
class JobStore:
    """All jobs, keyed by UUID; optional JSON persistence. Mutates by replacing records."""

    wall_clock: Callable[[], float]
    persist_path: Path | None = None
    process_results: ResultProcessor = process_all
    on_change: Callable[[JobRecord], None] | None = None
    _jobs: dict[UUID, JobRecord] = field(factory=dict)

    # --- reading -------------------------------------------------------------------------------

    def get(self, job: UUID) -> JobRecord:
        try:
            return self._jobs[job]
        except KeyError:
            raise UnknownJobError(f"no job {job}") from None

    def find(self, job: UUID) -> JobRecord | None:
        return self._jobs.get(job)

    def all(self) -> list[JobRecord]:
        return sorted(self._jobs.values(), key=lambda r: r.created)

    # --- persistence ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the persistence file (if configured and present), replacing the in-memory jobs."""
        if self.persist_path is None or not self.persist_path.exists():
            return
        try:
            document = json.loads(self.persist_path.read_text(encoding="utf-8"))
            if document.get("version") != 1 or not isinstance(document.get("jobs"), list):
                raise ValueError("expected {'version': 1, 'jobs': [...]}")
            records = [record_from_json(item) for item in document["jobs"]]
        except (OSError, ValueError, cattrs.BaseValidationError) as error:
            raise ValueError(f"cannot load job store {self.persist_path}: {error}") from error
        self._jobs.clear()
        self._jobs.update({record.uuid: record for record in records})

    def _save(self) -> None:
        if self.persist_path is None:
            return
        document = {"version": 1, "jobs": [record_to_json(r) for r in self.all()]}
        self.persist_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.persist_path, json.dumps(document, indent=1), mode=0o600)

    def _put(self, record: JobRecord) -> JobRecord:
        self._jobs[record.uuid] = record
        self._save()
        if self.on_change is not None:
            self.on_change(record)
        return record

    def _set_status(self, record: JobRecord, status: JobStatus, cause: str, **changes: Any) -> JobRecord:
        now = self.wall_clock()
        history = (*record.history, StatusChange(status, now, cause))
        return self._put(evolve(record, status=status, modified=now, history=history, **changes))

    # --- submission and user actions -----------------------------------------------------------

    def add(
        self,
        *,
        uuid: UUID,
        config: JsonObject,
        spec: JsonObject,
        timeout: int,
        target_runner: UUID | None = None,
    ) -> JobRecord:
        if uuid in self._jobs:
            raise ValueError(f"job {uuid} already exists")
        now = float(int(self.wall_clock()))  # Bencher stores whole seconds
        record = JobRecord(
            uuid=uuid,
            status=JobStatus.PENDING,
            config=config,
            spec=spec,
            timeout=timeout,
            created=now,
            modified=now,
            target_runner=target_runner,
            history=(StatusChange(JobStatus.PENDING, now, "submitted"),),
        )
        return self._put(record)

    def user_cancel(self, job: UUID) -> JobRecord:
        """A user cancels (documented by Bencher; done there by editing the DB): any non-terminal
        job becomes canceled, so the runner's next ``running``/``heartbeat`` is answered ``cancel``."""
        record = self.get(job)
        if record.status.has_run:
            return record
        return self._set_status(
            record, JobStatus.CANCELED, "user cancel", completed=self.wall_clock(), user_canceled=True
        )

    def record_terminal(self, job: UUID, receipt: TerminalReceipt) -> None:
        record = self.find(job)
        if record is not None:
            self._put(evolve(record, terminal_messages=(*record.terminal_messages, receipt)))

    # --- channel transitions -------------------------------------------------------------------

    def claim(self, runner: UUID) -> JobRecord | None:
        """Atomically claim the oldest pending job this runner may take (pending → claimed)."""
        for record in self.all():
            if record.status is JobStatus.PENDING and record.target_runner in (None, runner):
                now = self.wall_clock()
                return self._set_status(
                    record, JobStatus.CLAIMED, "claimed", runner=runner, claimed=now, last_heartbeat=now
                )
        return None

    def running(self, job: UUID) -> bool:
        """``handle_running``; returns True when the reply must be ``cancel`` instead of ``ack``."""
        record = self.get(job)
        now = self.wall_clock()
        if record.status is JobStatus.RUNNING:
            self._put(evolve(record, last_heartbeat=now))
        elif record.status is JobStatus.CLAIMED:
            self._set_status(record, JobStatus.RUNNING, "running", started=now, last_heartbeat=now)
        elif record.status is JobStatus.CANCELED:
            return True
        return False

    def heartbeat(self, job: UUID, grace: float) -> bool:
        """``handle_heartbeat``; returns True when the reply must be ``cancel``."""
        record = self.get(job)
        now = self.wall_clock()
        if record.status is JobStatus.CANCELED:
            return True
        if record.past_hard_limit(now, grace):
            if record.status in (JobStatus.CLAIMED, JobStatus.RUNNING):
                self._set_status(record, JobStatus.CANCELED, "heartbeat past hard limit", completed=now)
            return True
        if record.status in (JobStatus.CLAIMED, JobStatus.RUNNING):
            self._put(evolve(record, last_heartbeat=now))
        return False

    def completed(self, job: UUID, results: list[JsonObject]) -> None:
        """``handle_completed``: running/failed → completed → processed (or failed on a processing
        error, which is still acknowledged). Raises :class:`InvalidTransitionError` otherwise."""
        record = self.get(job)
        if record.status in (JobStatus.RUNNING, JobStatus.FAILED):
            record = self._set_status(
                record, JobStatus.COMPLETED, "runner completed",
                completed=self.wall_clock(), results=results, processing_error=None,
            )
            self._process(record)
        elif record.status in (JobStatus.COMPLETED, JobStatus.PROCESSED, JobStatus.CANCELED):
            return  # idempotent / "completion report lost"
        else:
            raise InvalidTransitionError(f"job {job}: completed while {record.status.value}")

    def _process(self, record: JobRecord) -> None:
        error = self.process_results(record.results or [])
        if error is None:
            self._set_status(record, JobStatus.PROCESSED, "results processed")
        else:
            self._set_status(record, JobStatus.FAILED, "result processing failed", processing_error=error)

    def failed(self, job: UUID, results: list[JsonObject], error: str) -> None:
        """``handle_failed``: claimed/running → failed (storing results and error)."""
        record = self.get(job)
        if record.status in (JobStatus.CLAIMED, JobStatus.RUNNING):
            self._set_status(
                record, JobStatus.FAILED, "runner failed",
                completed=self.wall_clock(), results=results, error=error,
            )
        elif record.status is JobStatus.PENDING:
            raise InvalidTransitionError(f"job {job}: failed while pending")
        # already failed, or another terminal state: "failure report lost", no-op

    def canceled(self, job: UUID) -> None:
        """``handle_canceled``: claimed/running → canceled; already canceled is a no-op; any other
        status is an invalid transition."""
        record = self.get(job)
        if record.status in (JobStatus.CLAIMED, JobStatus.RUNNING):
            self._set_status(record, JobStatus.CANCELED, "runner canceled", completed=self.wall_clock())
        elif record.status is not JobStatus.CANCELED:
            raise InvalidTransitionError(f"job {job}: canceled while {record.status.value}")

    def window_expired(self, job: UUID, grace: float) -> str:
        """``handle_timeout`` when the EXECUTING heartbeat window expires; returns the close reason."""
        record = self.get(job)
        now = self.wall_clock()
        if record.status.has_run:
            return "heartbeat_timeout"
        if record.past_hard_limit(now, grace):
            self._set_status(record, JobStatus.CANCELED, "job timeout exceeded", completed=now)
            return "job_timeout_exceeded"
        self._set_status(record, JobStatus.FAILED, "heartbeat timeout", completed=now)
        return "heartbeat_timeout"

    def background_check(self, job: UUID, heartbeat_timeout: float, grace: float) -> float | None:
        """The background heartbeat-timeout task's check (§3.5); returns seconds until the next
        check, or None when the task is finished."""
        record = self.find(job)
        if record is None or record.status.has_run:
            return None
        now = self.wall_clock()
        if record.past_hard_limit(now, grace):
            self._set_status(record, JobStatus.CANCELED, "background: job timeout exceeded", completed=now)
            return None
        if record.last_heartbeat is not None:
            elapsed = now - record.last_heartbeat
            if elapsed < heartbeat_timeout:
                return max(1.0, heartbeat_timeout - elapsed)
        self._set_status(record, JobStatus.FAILED, "background: heartbeat timeout", completed=now)
        return None

    def startup_sweep(self, heartbeat_timeout: float) -> list[UUID]:
        """At server start: fail stale claimed jobs, reprocess completed ones, and return the
        claimed/running jobs that need a background timeout task."""
        now = self.wall_clock()
        watch: list[UUID] = []
        for record in self.all():
            if record.status is JobStatus.CLAIMED and (
                record.claimed is None or now - record.claimed > heartbeat_timeout
            ):
                self._set_status(record, JobStatus.FAILED, "startup: stale claimed job", completed=now)
            elif record.status is JobStatus.COMPLETED:
                self._process(record)
            elif record.status in (JobStatus.CLAIMED, JobStatus.RUNNING):
                watch.append(record.uuid)
        return watch

    def pending(self) -> Iterable[JobRecord]:
        return (r for r in self.all() if r.status is JobStatus.PENDING)
