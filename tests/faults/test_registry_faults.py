"""A registry that fails while the agent pulls a job's image: 5xx answers, connections reset (at
once, or part-way through a blob) and truncated blobs. Each job ends ``failed`` with a readable
error naming the problem, the agent keeps serving (the next job, with the registry healthy again,
is processed) and the image cache holds only verified content. A transient 5xx is retried away.

Real pieces: the dev server on 127.0.0.1, the agent in-process, the real ``docker-registry`` behind
an HTTP fault front (``tests.oci.faultproxy``) or the chaos TCP proxy, bwrap execution."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from runner_agent.agent import Agent
from runner_agent.devserver import DevServer, DevServerSettings
from runner_agent.devserver.store import JobRecord, JobStatus
from tests.agent.conftest import agent_config, make_agent
from tests.chaos.probe import AgentProbe
from tests.chaos.proxy import ChaosProxy, FaultKind
from tests.faults.conftest import assert_cache_consistent, new_marker, registry_job
from tests.oci.faultproxy import run_fault_proxy
from tests.support.images import RegistryImage
from tests.support.registry import RegistryServer

DONE = {JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED}


@asynccontextmanager
async def serving_agent(tmp_path: Path) -> AsyncIterator[tuple[DevServer, Agent]]:
    """A dev server and an agent serving it; on exit, waits until the agent's outbox is empty
    (every result acknowledged) before stopping both."""
    async with DevServer.start(settings=DevServerSettings(heartbeat_timeout=10.0)) as server:
        config = agent_config(server, tmp_path / "state", tmp_path / "cache")
        probe = AgentProbe()
        agent = make_agent(config, work_dir=tmp_path / "work", stats=probe)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run)
            yield server, agent
            await probe.wait_until(lambda: agent.outbox.depth == 0)
            nursery.cancel_scope.cancel()


async def run_job(server: DevServer, url: str, image: RegistryImage) -> tuple[str, JobRecord]:
    marker = new_marker()
    job = server.submit_job(registry_job(url, image, f"echo {marker}"))
    return marker, await server.wait_for_status(job, DONE)


def assert_processed(marker: str, record: JobRecord) -> None:
    assert record.status is JobStatus.PROCESSED, record.error
    assert record.results is not None and record.results[0]["stdout"] == f"{marker}\n"


def assert_failed_with(record: JobRecord, *words: str) -> None:
    assert record.status is JobStatus.FAILED
    assert record.error, "a failed job must say why"
    text = record.error.lower()
    assert all(w in text for w in words), f"error {record.error!r} lacks one of {words}"
    assert [m.event for m in record.terminal_messages] == ["failed"]
    print(f"job failed as expected: {record.error}")


@pytest.mark.parametrize(
    ("arm", "words"),
    [
        pytest.param(lambda f: setattr(f, "fail_times", 10_000), ("after 4 attempts (last: http 503)",), id="5xx"),
        pytest.param(lambda f: setattr(f, "truncate_blobs", True), ("body ended after 128 of 256 bytes",), id="truncated-blob"),
    ],
)
async def test_http_faults_fail_the_job_and_the_agent_keeps_serving(
    tmp_path: Path, registry: RegistryServer, project_image: RegistryImage,
    arm: Callable[[object], None], words: tuple[str, ...],
) -> None:
    with trio.fail_after(60), run_fault_proxy(registry.url) as front:
        async with serving_agent(tmp_path) as (server, agent):
            arm(front.faults)
            _, bad = await run_job(server, front.url, project_image)
            assert_failed_with(bad, *words)
            assert_cache_consistent(tmp_path / "cache")
            front.faults.fail_times = 0
            front.faults.truncate_blobs = False
            marker, good = await run_job(server, front.url, project_image)
            assert_processed(marker, good)
    blobs = assert_cache_consistent(tmp_path / "cache")
    assert blobs, "the successful pull left its verified blobs in the cache"
    assert agent.outbox.depth == 0


async def test_transient_5xx_is_retried_away(
    tmp_path: Path, registry: RegistryServer, project_image: RegistryImage
) -> None:
    with trio.fail_after(60), run_fault_proxy(registry.url) as front:
        async with serving_agent(tmp_path) as (server, _):
            front.faults.fail_times = 2
            marker, record = await run_job(server, front.url, project_image)
    assert_processed(marker, record)
    assert front.faults.fail_times == 0  # both failures were met and retried
    assert_cache_consistent(tmp_path / "cache")


@pytest.mark.parametrize(
    ("after", "words"),
    [
        pytest.param(0, ("after 4 attempts (last: connection error", "connection reset"), id="reset-at-once"),
        pytest.param(3000, ("body ended after", "(after 4 attempts)"), id="reset-mid-body"),
    ],
)
async def test_connection_resets_fail_the_job_and_the_agent_keeps_serving(
    tmp_path: Path, registry: RegistryServer, project_image: RegistryImage, after: int,
    words: tuple[str, ...],
) -> None:
    port = int(registry.url.rsplit(":", 1)[1])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proxy = ChaosProxy(port)
            await nursery.start(proxy.serve)
            async with serving_agent(tmp_path) as (server, agent):
                proxy.reset_links_after(after)
                _, bad = await run_job(server, proxy.url, project_image)
                assert_failed_with(bad, *words)
                assert_cache_consistent(tmp_path / "cache")
                proxy.clear()
                marker, good = await run_job(server, proxy.url, project_image)
                assert_processed(marker, good)
            nursery.cancel_scope.cancel()
    assert proxy.faults[FaultKind.RESET] >= 1
    assert agent.outbox.depth == 0
    assert assert_cache_consistent(tmp_path / "cache")
