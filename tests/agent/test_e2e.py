"""The agent end to end against the dev server: real sockets on 127.0.0.1, real bwrap execution."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from runner_agent.devserver.store import JobStatus
from tests.agent.conftest import harness

BMF = '{"bench":{"latency":{"value":1.5}}}'
DONE = {JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.COMPLETED}


async def test_happy_path_with_iterations(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"echo '{BMF}'", iterations=3)
            agent = h.agent(exit_after_jobs=1)
            code = await agent.run()
            record = h.server.job(job)
    assert code == 0
    assert record.status is JobStatus.PROCESSED
    assert record.results is not None and len(record.results) == 3
    assert all(json.loads(r["stdout"]) == json.loads(BMF) for r in record.results)
    assert [r.event for r in record.terminal_messages] == ["completed"]
    assert agent.outbox.depth == 0
