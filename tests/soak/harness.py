"""Soak-test machinery: a dev server that can be restarted (gracefully or as a crash) on the same
port with its jobs persisted, the mixed job catalogue, process scans, and the summary table.

Every soak job's command starts with ``echo soakjob-<its own uuid>``, so a result can be checked
against the job it claims to belong to, and leftover benchmark processes can be found in /proc by
the ``soakjob-`` marker."""

from __future__ import annotations

import enum
import functools
import random
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from uuid import UUID

import trio
from attrs import frozen

from runner_agent.devserver import DevServer, DevServerSettings, RunnerIdentity
from runner_agent.devserver.server import runner_uuid_for
from runner_agent.devserver.store import JobRecord, JobStatus

MARKER = "soakjob-"
TERMINAL = frozenset({JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED})


class Kind(enum.Enum):
    """The kinds of job in the mix."""

    QUICK = "quick"
    SLOW = "slow"
    FAILING = "failing"
    CHATTY = "chatty"  # prints a lot (more than the result budget)
    CANCELED = "canceled"  # canceled by the server while it runs
    TIMEOUT = "timeout"  # runs past its job timeout


#: share of each kind in the mix
MIX: dict[Kind, float] = {
    Kind.QUICK: 0.50,
    Kind.SLOW: 0.14,
    Kind.FAILING: 0.10,
    Kind.CHATTY: 0.10,
    Kind.CANCELED: 0.08,
    Kind.TIMEOUT: 0.08,
}


@frozen
class SoakJob:
    uuid: UUID
    kind: Kind
    script: str
    timeout: int


def marker(uuid: UUID) -> str:
    return f"{MARKER}{uuid}"


def make_jobs(rng: random.Random, count: int) -> list[SoakJob]:
    """``count`` jobs in the ``MIX`` proportions (every kind at least once), shuffled."""
    kinds: list[Kind] = []
    for kind, share in MIX.items():
        kinds += [kind] * max(1, round(count * share))
    while len(kinds) > count:
        kinds.remove(Kind.QUICK)
    while len(kinds) < count:
        kinds.append(Kind.QUICK)
    rng.shuffle(kinds)
    jobs = []
    for kind in kinds:
        uuid = UUID(int=rng.getrandbits(128), version=4)
        echo = f"echo {marker(uuid)}"
        match kind:
            case Kind.QUICK:
                script, timeout = echo, 30
            case Kind.SLOW:
                script, timeout = f"{echo}; sleep {rng.choice(['0.5', '1', '1.5', '2'])}", 30
            case Kind.FAILING:
                script, timeout = f"{echo}; echo failing >&2; exit {rng.randint(1, 120)}", 30
            case Kind.CHATTY:
                script, timeout = f"{echo}; busybox yes {uuid.hex} | busybox head -n 6000", 30
            case Kind.CANCELED:
                script, timeout = f"{echo}; sleep 30", 60
            case Kind.TIMEOUT:
                script, timeout = f"{echo}; sleep 30", 1
        jobs.append(SoakJob(uuid, kind, script, timeout))
    return jobs


async def serve_in(nursery: trio.Nursery, server: DevServer) -> tuple[trio.CancelScope, trio.Event]:
    """Serve ``server`` in ``nursery`` (listening once this returns). Cancelling the scope kills
    it like a crash (sockets die, no Close frame); the event is set once it has stopped."""
    scope, done = trio.CancelScope(), trio.Event()

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        try:
            with scope:
                await server.serve(task_status=task_status)
        finally:
            done.set()

    await nursery.start(serve)
    return scope, done


class ServerHost:
    """Runs one :class:`DevServer` at a time on a fixed port with a persistence file, and restarts
    it. ``wait_until`` survives restarts (it re-waits on the new server)."""

    def __init__(self, tmp: Path, settings: DevServerSettings, key: str) -> None:
        self.persist = tmp / "devserver-jobs.json"
        self.settings = settings
        self.runner = RunnerIdentity.with_key(runner_uuid_for("soak-runner"), "soak-runner", key)
        self.key = key
        self.port = 0
        self.server: DevServer | None = None
        self.graceful_restarts = 0
        self.crash_restarts = 0
        self.accepted_connections = 0  # over all server instances
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()
        self._waiters: set[trio.CancelScope] = set()
        self._up = trio.Event()

    async def start(self, nursery: trio.Nursery) -> DevServer:
        server = DevServer(
            runners=[self.runner], port=self.port, settings=self.settings, persist_path=self.persist
        )
        scope, done = await serve_in(nursery, server)
        self.port = server.port
        self.server, self._scope, self._done = server, scope, done
        self._up.set()
        for waiter in list(self._waiters):
            waiter.cancel()  # re-wait on the new server
        return server

    def _retire(self) -> None:
        assert self.server is not None
        self.accepted_connections += sum(1 for a in self.server.attempts if a.outcome == "accepted")
        self._up = trio.Event()

    async def restart(self, nursery: trio.Nursery, *, crash: bool) -> None:
        """Stop the server — gracefully (Close 1001 to everyone) or as a crash (sockets just die)
        — and start a new one on the same port with the persisted jobs."""
        assert self.server is not None and self._scope is not None
        self._retire()
        if crash:
            self._scope.cancel()
            await self._done.wait()  # its listener is closed: the port is free again
            self.crash_restarts += 1
        else:
            await self.server.aclose()
            self.graceful_restarts += 1
        await self.start(nursery)

    async def stop(self) -> None:
        if self.server is not None:
            self._retire()
            await self.server.aclose()

    @property
    def current(self) -> DevServer:
        assert self.server is not None
        return self.server

    def records(self) -> list[JobRecord]:
        return self.current.store.all()

    async def wait_until(self, predicate: Callable[[DevServer], bool]) -> None:
        """Wait until ``predicate(server)`` holds on the current server (across restarts)."""
        while True:
            await self._up.wait()
            server = self.current
            with trio.CancelScope() as scope:
                self._waiters.add(scope)
                try:
                    await server.wait_until(functools.partial(predicate, server))
                    return
                finally:
                    self._waiters.discard(scope)


def processes_with(text: str) -> list[tuple[int, str]]:
    """``(pid, cmdline)`` of every process on the machine whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def memory_growth_kib(samples: Sequence[int]) -> int:
    """Median RSS of the last quarter of the samples minus that of the second quarter (the first
    quarter is warm-up: imports, first image unpack)."""
    if len(samples) < 8:
        return 0
    q = len(samples) // 4
    return int(statistics.median(samples[-q:]) - statistics.median(samples[q : 2 * q]))


def table(rows: Sequence[tuple[str, object]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
