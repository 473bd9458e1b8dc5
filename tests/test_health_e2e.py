"""Health and metrics over real HTTP while a real agent serves a job from the dev server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from runner_agent import __version__
from runner_agent.devserver.store import JobStatus
from runner_agent.health import serve_health
from runner_agent.telemetry import AgentStats
from tests.agent.conftest import harness, make_agent
from tests.support.images import busybox_layout

BMF = '{"bench":{"latency":{"value":1.5}}}'


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    dest = tmp_path_factory.mktemp("health-image") / "layout"
    return dest, busybox_layout(dest)


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_health_and_metrics_while_serving_a_job(
    tmp_path: Path, image: tuple[Path, str]
) -> None:
    stats = AgentStats(runner="e2e")
    with trio.fail_after(60):
        async with harness(tmp_path, image) as h, trio.open_nursery() as nursery:
            bound = await nursery.start(serve_health, "127.0.0.1:0", stats)
            async with httpx.AsyncClient(base_url=bound.url, timeout=10) as client:
                before = await client.get("/healthz")
                assert before.status_code == 503
                assert "no successful contact with the server yet" in before.text

                # The benchmark itself takes 2 s, long enough to look at the agent mid-job.
                job = h.submit(f"sleep 2; echo '{BMF}'", iterations=1)
                agent = make_agent(
                    h.config(exit_after_jobs=1), work_dir=tmp_path / "work", stats=stats
                )
                exit_codes: list[int] = []
                agent_done = trio.Event()

                async def run_agent() -> None:
                    exit_codes.append(await agent.run())  # exits by itself after one job
                    agent_done.set()

                nursery.start_soon(run_agent)
                await h.server.wait_for_status(job, {JobStatus.RUNNING})
                during = await client.get("/healthz", params={"format": "json"})
                assert during.status_code == 200, during.text
                body = during.json()
                assert body["status"] == "ok"
                assert body["running_job"] == str(job)
                assert body["connection_state"] == "connected"
                mid = metric_values((await client.get("/metrics")).text)
                assert mid[("runner_agent_job_running", ())] == 1

                await agent_done.wait()
                after = metric_values((await client.get("/metrics")).text)
            nursery.cancel_scope.cancel()

    assert exit_codes == [0]
    assert h.server.job(job).status is JobStatus.PROCESSED
    assert after[("runner_agent_jobs_total", (("outcome", "completed"),))] == 1
    assert after[("runner_agent_jobs_total", (("outcome", "failed"),))] == 0
    assert after[("runner_agent_job_running", ())] == 0
    assert after[("runner_agent_last_job_duration_seconds", ())] >= 2.0
    assert after[("runner_agent_heartbeat_rtt_seconds_count", ())] >= 1
    assert after[("runner_agent_last_contact_timestamp_seconds", ())] > 0
    assert after[("runner_agent_outbox_depth", ())] == 0
    assert after[("runner_agent_info", (("runner", "e2e"), ("version", __version__)))] == 1
