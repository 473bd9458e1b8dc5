"""The driver's handle on a running job: cancel it (server ``cancel``, shutdown) from any task."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import trio

log = logging.getLogger(__name__)

CancelOutcome = Literal["canceled", "failed"]


class JobControl:
    """Created by the driver before the job runs; `request_cancel` works before, during and after.

    ``outcome`` ``"canceled"`` makes the job end as ``canceled`` (server cancel);
    ``"failed"`` ends it as ``failed`` with ``reason`` as its error (e.g. agent shutdown).
    """

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self.reason: str | None = None
        self.outcome: CancelOutcome | None = None

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
