"""End-to-end harness: a real dev server on 127.0.0.1 port 0, a busybox OCI layout, a real agent.

`AgentHarness` runs an in-process `Agent` (signals not handled: pytest owns them) against a
`DevServer`; jobs point at a local OCI layout (``file://`` registry) and run in the bwrap sandbox.
Real processes run on the real clock, so these tests use short heartbeat intervals and timeouts
instead of a MockClock (a MockClock would expire job timeouts while a benchmark process runs).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio

from runner_agent.agent import Agent
from runner_agent.backoff import Backoff, BackoffPolicy
from runner_agent.config import Config, load_config
from runner_agent.devserver.server import DevServer
from runner_agent.devserver.settings import DevServerSettings
from runner_agent.execute import ExecOptions, check_sandbox
from runner_agent.jobrunner import OciJobRunner
from runner_agent.oci.cache import ImageCache
from runner_agent.outbox import Outbox
from runner_agent.protocol import JobConfig
from tests.support.images import busybox_layout


@pytest.fixture(scope="session")
def busybox_oci(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A busybox OCI image layout (built once) and its manifest digest."""
    dest = tmp_path_factory.mktemp("agent-image") / "layout"
    digest = busybox_layout(dest)
    return dest, digest


def job_config(image: tuple[Path, str], script: str, *, iterations: int = 1, timeout: int = 60,
               file_paths: Sequence[str] | None = None, **extra: Any) -> JobConfig:
    layout, digest = image
    return JobConfig(
        registry=f"file://{layout}",
        project=uuid4(),
        digest=digest,
        entrypoint=("/bin/sh", "-c"),
        cmd=(script,),
        timeout=timeout,
        iter=iterations,
        file_paths=tuple(file_paths) if file_paths else None,
        **extra,
    )


def agent_config(server: DevServer, state_dir: Path, cache_dir: Path, **flags: object) -> Config:
    base: dict[str, object] = {
        "host": server.url,
        "runner": server.runner.slug,
        "key": server.key,
        "state_dir": state_dir,
        "cache_dir": cache_dir,
        "heartbeat_interval": 0.05,
        "poll_timeout": 1,
        "ack_timeout": 2.0,
        "kill_grace": 0.5,
    }
    base.update(flags)
    return load_config(base, {}, None, default_config_file=None)


def fast_backoff(seed: int = 0) -> Backoff:
    """Reconnect quickly in tests (the real policy's base is 1 s)."""
    return Backoff(BackoffPolicy(base=0.05, cap=0.2, healthy_after=5.0), random.Random(seed))


def make_agent(config: Config, *, work_dir: Path, **kwargs: Any) -> Agent:
    kwargs.setdefault("backoff", fast_backoff())
    options = ExecOptions(kill_grace=config.kill_grace, max_message_size=config.max_message_size,
                          work_dir=work_dir)
    check_sandbox(options)
    runner = OciJobRunner(ImageCache(config.cache_dir), options)
    return Agent(config, runner, Outbox(config.state_dir), handle_signals=False, **kwargs)


class AgentHarness:
    """A dev server plus a way to run agents against it."""

    def __init__(self, server: DevServer, tmp: Path, image: tuple[Path, str]) -> None:
        self.server = server
        self.tmp = tmp
        self.image = image
        self.state_dir = tmp / "state"
        self.cache_dir = tmp / "cache"

    def submit(self, script: str, **kwargs: Any) -> UUID:
        timeout = kwargs.pop("timeout", 60)
        return self.server.submit_job(job_config(self.image, script, timeout=timeout, **kwargs))

    def config(self, **flags: object) -> Config:
        return agent_config(self.server, self.state_dir, self.cache_dir, **flags)

    def agent(self, agent_kwargs: dict[str, Any] | None = None, **flags: object) -> Agent:
        return make_agent(self.config(**flags), work_dir=self.tmp / "work", **(agent_kwargs or {}))

    @asynccontextmanager
    async def running(self, agent: Agent) -> AsyncIterator[list[int]]:
        """Run ``agent`` in the background for the body (yields the list its exit status lands
        in); after the body the agent is given 10 s to finish on its own, then cancelled."""
        async with trio.open_nursery() as nursery:
            result: list[int] = []
            stopped = trio.Event()

            async def run() -> None:
                result.append(await agent.run())
                stopped.set()

            nursery.start_soon(run)
            yield result
            with trio.move_on_after(10):
                await stopped.wait()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def harness(tmp_path: Path, image: tuple[Path, str], **settings: Any) -> AsyncIterator[AgentHarness]:
    server_settings = DevServerSettings(**{"heartbeat_timeout": 5.0, **settings})
    async with DevServer.start(settings=server_settings) as server:
        yield AgentHarness(server, tmp_path, image)
