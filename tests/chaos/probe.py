"""``AgentProbe``: a stats sink for an in-process ``Agent`` (its ``stats=`` seam) that records what
the agent reports — outbox depth, reconnects by class, connection states, finished jobs — and
lets a test wait for a condition on it without sleeping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio


class AgentProbe:
    """Implements the agent's stats calls it cares about; every other call is accepted and
    ignored (the agent tolerates any stats object)."""

    def __init__(self) -> None:
        self.outbox = 0
        self.reconnects: Counter[str] = Counter()
        self.states: list[str] = []
        self.finished: Counter[str] = Counter()
        self.started: list[str] = []
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def outbox_depth(self, depth: int) -> None:
        self.outbox = depth
        self._notify()

    def reconnect(self, cls: str) -> None:
        self.reconnects[cls] += 1
        self._notify()

    def connection_state(self, state: str) -> None:
        self.states.append(state)
        self._notify()

    def job_started(self, job: str) -> None:
        self.started.append(job)
        self._notify()

    def job_finished(self, status: str, elapsed: float) -> None:
        del elapsed
        self.finished[status] += 1
        self._notify()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: None

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked whenever the agent reports something."""
        while not predicate():
            await self._changed.wait()
