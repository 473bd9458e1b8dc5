"""The driver's handle on a running job: cancel it (server ``cancel``, shutdown) from any task,
and the job's deadline (its ``timeout``, counted from the job's arrival, image pull included)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import trio
from attrs import frozen

log = logging.getLogger(__name__)

CancelOutcome = Literal["canceled", "failed"]


def timeout_error(seconds: float) -> str:
    """The ``error`` of a job that ran out of time."""
    return f"Execution error: Benchmark timeout: job timed out after {seconds:g} s"


@frozen
class JobDeadline:
    """The job's ``timeout`` seconds, counted on trio's clock from ``started``.

    The agent starts it when the job arrives (the moment ``running`` is sent, which is when the
    server sets ``started`` and starts its own ``timeout + 60 s`` hard limit), so the image pull
    and the wait for the server's ``ack`` count against it as well as the iterations.
    """

    timeout: float
    started: float

    @classmethod
    def starting_now(cls, timeout: float) -> JobDeadline:
        return cls(timeout, trio.current_time())

    @property
    def at(self) -> float:
        """The trio time at which the job is out of time."""
        return self.started + self.timeout

    @property
    def error(self) -> str:
        return timeout_error(self.timeout)


class JobControl:
    """Created by the driver before the job runs; `request_cancel` works before, during and after.

    ``outcome`` ``"canceled"`` makes the job end as ``canceled`` (server cancel);
    ``"failed"`` ends it as ``failed`` with ``reason`` as its error (e.g. agent shutdown).
    """

    def __init__(self, deadline: JobDeadline | None = None) -> None:
        """``deadline``: the job's, when the driver started it at the job's arrival; else the
        first `start_deadline` starts it."""
        self._scopes: set[trio.CancelScope] = set()
        self.reason: str | None = None
        self.outcome: CancelOutcome | None = None
        self.deadline = deadline

    def start_deadline(self, timeout: float) -> JobDeadline:
        """The job's deadline: the one already started (by the driver, or by an earlier step of
        this job), else ``timeout`` seconds from now."""
        if self.deadline is None:
            self.deadline = JobDeadline.starting_now(timeout)
        return self.deadline

    @property
    def cancel_requested(self) -> bool:
        return self.outcome is not None

    def request_cancel(self, reason: str, *, outcome: CancelOutcome = "canceled") -> None:
        """Ask the job to stop; the first request wins, later ones are ignored."""
        if self.outcome is not None:
            return
        log.info("job cancel requested (%s): %s", outcome, reason)
        self.reason = reason
        self.outcome = outcome
        for scope in self._scopes:
            scope.cancel()

    @contextmanager
    def guard(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that a cancel request (past or future) cancels."""
        scope = trio.CancelScope()
        if self.outcome is not None:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
