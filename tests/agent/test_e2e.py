"""The agent end to end against the dev server: real sockets on 127.0.0.1, real bwrap execution."""

from __future__ import annotations

import json
import random
from pathlib import Path
from uuid import uuid4

import trio

from runner_agent.agent import Agent
from runner_agent.devserver.store import JobStatus
from tests.agent.conftest import AgentHarness, harness, job_config
from tests.support.registry import RegistryServer

BMF = '{"bench":{"latency":{"value":1.5}}}'
DONE = {JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.COMPLETED}


class StatsRecorder:
    """Records what the driver reports to its stats object (the telemetry seam)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> object:
        return lambda *args: self.calls.append((name, args))

    def args(self, name: str) -> list[tuple[object, ...]]:
        return [a for n, a in self.calls if n == name]


async def test_happy_path_with_iterations(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    stats = StatsRecorder()
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 0.1; echo '{BMF}'", iterations=3)
            agent = h.agent({"stats": stats}, exit_after_jobs=1)
            code = await agent.run()
            record = h.server.job(job)
    assert code == 0
    assert record.status is JobStatus.PROCESSED
    assert record.results is not None and len(record.results) == 3
    assert all(json.loads(r["stdout"]) == json.loads(BMF) for r in record.results)
    assert [r.event for r in record.terminal_messages] == ["completed"]
    assert agent.outbox.depth == 0
    assert stats.args("job_started") == [(str(job),)]
    assert [a[0] for a in stats.args("job_finished")] == ["completed"]
    rtts = [a[0] for a in stats.args("heartbeat_rtt")]
    assert rtts and all(0 <= float(rtt) < 1 for rtt in rtts)  # type: ignore[arg-type]
    assert stats.args("connected") and stats.args("contact")


async def test_two_jobs_on_one_connection(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            jobs = [h.submit(f"echo '{BMF}'"), h.submit(f"echo '{BMF}'", iterations=2)]
            code = await h.agent(exit_after_jobs=2).run()
            records = [h.server.job(j) for j in jobs]
            attempts = h.server.connection_attempts()
    assert code == 0
    assert [r.status for r in records] == [JobStatus.PROCESSED, JobStatus.PROCESSED]
    assert [len(r.results or ()) for r in records] == [1, 2]
    assert attempts == 1


async def benchmark_started(h: AgentHarness, agent: Agent) -> None:
    """Wait until the agent got the reply to `running` and started the benchmark (heartbeats
    keep changing the job record, so the server's change notifications re-check this)."""
    await h.server.wait_until(lambda: agent.channel.job is not None and agent.channel.job.started)


def marker() -> str:
    """A `sleep` duration unique to this test run, to find its processes in /proc (concurrent
    test runs on one machine must not see each other's)."""
    return f"{random.randint(100, 999)}.{random.randint(100000, 999999)}"


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


async def test_cancel_in_reply_to_running(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            m = marker()
            job = h.submit(f"sleep {m}")
            agent = h.agent(exit_after_jobs=1)
            async with h.running(agent) as result:
                await h.server.wait_for_status(job, {JobStatus.CLAIMED})
                h.server.cancel_job(job)  # the `running` now on its way is answered `cancel`
                await h.server.wait_until(
                    lambda: any(r.event == "canceled" for r in h.server.job(job).terminal_messages))
            record = h.server.job(job)
    assert result == [0]
    assert record.status is JobStatus.CANCELED
    assert [r.event for r in record.terminal_messages] == ["canceled"]
    assert record.started is None  # never ran: the reply to `running` was `cancel`
    assert not _processes_with(m)


async def test_cancel_in_reply_to_heartbeat_kills_the_tree(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            m = marker()
            job = h.submit(f"sleep {m}1 & setsid sleep {m}2 & sleep {m}3")
            agent = h.agent(exit_after_jobs=1)
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                await h.server.wait_until(lambda: len(_processes_with(m)) >= 3)
                h.server.cancel_job(job)
                await h.server.wait_until(lambda: bool(h.server.job(job).terminal_messages))
                tree_after = _processes_with(m)
            record = h.server.job(job)
    assert result == [0]
    assert [r.event for r in record.terminal_messages] == ["canceled"]
    assert [r.outcome for r in record.terminal_messages] == ["acked"]
    assert tree_after == []


async def test_job_timeout_fails_the_job(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            m = marker()
            job = h.submit(f"echo started; sleep {m}", timeout=1)
            code = await h.agent(exit_after_jobs=1).run()
            record = h.server.job(job)
    assert code == 0
    assert record.status is JobStatus.FAILED
    assert record.error is not None and "timed out after 1 s" in record.error
    assert not _processes_with(m)


async def test_tcp_drop_mid_job_job_continues_result_delivered_after_reconnect(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 1; echo '{BMF}'", iterations=2)
            agent = h.agent(exit_after_jobs=1)
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                h.server.drop_connections()
            record = h.server.job(job)
            attempts = h.server.connection_attempts()
    assert result == [0]
    assert attempts >= 2
    assert record.status is JobStatus.PROCESSED
    assert record.results is not None and len(record.results) == 2
    assert [(r.event, r.path) for r in record.terminal_messages] == [("completed", "idle")]


async def test_acks_withheld_result_resent_until_acked_without_rerunning(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(40):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 0.3; echo '{BMF}'")
            agent = h.agent(exit_after_jobs=1, ack_timeout=0.5)
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                h.server.faults.pause_acks()
                await h.server.wait_until(lambda: len(h.server.job(job).terminal_messages) >= 3)
                h.server.faults.resume_acks()
            record = h.server.job(job)
            job_frames = [f for f in h.server.frames if f.direction == "out" and '"event":"job"' in f.text]
    assert result == [0]
    assert record.status is JobStatus.PROCESSED
    events = [r.event for r in record.terminal_messages]
    assert len(events) >= 4 and set(events) == {"completed"}
    assert record.terminal_messages[-1].outcome == "acked"
    assert len(job_frames) == 1  # claimed and run exactly once
    assert agent.jobs_finished == 1


async def test_stale_heartbeat_acks_and_a_discarded_result(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(40):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 0.6; echo '{BMF}'")
            h.server.faults.delay_acks(0.3)  # ~6 heartbeat acks are always in flight
            h.server.faults.discard_next_terminal()
            agent = h.agent(exit_after_jobs=1, ack_timeout=1.0)
            code = await agent.run()
            record = h.server.job(job)
    assert code == 0
    assert record.status is JobStatus.PROCESSED
    assert [r.outcome for r in record.terminal_messages] == ["discarded", "acked"]


async def test_garbage_and_unknown_frames_are_survived(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    from runner_agent.devserver.connection import ConnState

    bad = ["garbage{", '{"event":"bogus"}', '{"event":"Ack"}', "[]", '{"event":"job","uuid":"x"}']
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            agent = h.agent(exit_after_jobs=1)
            async with h.running(agent) as result:
                await h.server.wait_for_connection(ConnState.POLLING)
                for text in bad:
                    h.server.inject_frame(text)
                job = h.submit(f"sleep 0.5; echo '{BMF}'")
                await h.server.wait_for_status(job, {JobStatus.RUNNING})
                for text in bad:
                    h.server.inject_frame(text)
            record = h.server.job(job)
            attempts = h.server.connection_attempts()
    assert result == [0]
    assert record.status is JobStatus.PROCESSED
    assert attempts == 1


async def test_close_1000_heartbeat_timeout_and_1001_reconnect(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    from runner_agent.devserver.connection import ConnState

    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            agent = h.agent(exit_after_jobs=1)
            async with h.running(agent) as result:
                await h.server.wait_for_connection(ConnState.POLLING)
                h.server.close_connections(1001, "server shutting down")
                await h.server.wait_until(lambda: h.server.connection_attempts() >= 2)
                job = h.submit(f"sleep 1; echo '{BMF}'")
                await benchmark_started(h, agent)
                h.server.close_connections(1000, '"heartbeat_timeout"')
            record = h.server.job(job)
            attempts = h.server.connection_attempts()
    assert result == [0]
    assert attempts >= 3
    assert record.status is JobStatus.PROCESSED


async def test_update_offer_is_ignored(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    from runner_agent.protocol import Update

    update = Update(version="9.9.9", url="https://example.com/runner", checksum="a" * 64)
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            h.server.faults.offer_update(update)
            agent = h.agent(exit_after_jobs=1)
            async with h.running(agent) as result:
                await h.server.wait_until(lambda: h.server.connection_attempts() >= 2)
                h.server.faults.offer_update(None)
                job = h.submit(f"echo '{BMF}'")
                await h.server.wait_for_status(job, {JobStatus.PROCESSED})
    assert result == [0]


async def test_results_bigger_than_the_server_limit_are_truncated_and_delivered(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    limit = 64 * 1024
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci, max_message_size=limit) as h:
            job = h.submit("busybox seq 1 200000")
            code = await h.agent(exit_after_jobs=1, max_message_size=limit).run()
            record = h.server.job(job)
            frames = h.server.frames_received("completed")
    assert code == 0
    assert record.status is JobStatus.PROCESSED
    assert frames and all(len(f.text.encode()) <= limit for f in frames)
    stdout = record.results[0]["stdout"] if record.results else ""
    assert stdout.startswith("1\n2\n3\n") and stdout.rstrip().endswith("200000")


async def test_second_shutdown_request_aborts_the_job_and_reports_failed(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            m = marker()
            job = h.submit(f"sleep {m}")
            agent = h.agent()
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                agent.request_shutdown(1)  # drain: would wait for the job...
                agent.request_shutdown(2)  # ...abort it instead
            record = h.server.job(job)
    assert result == [0]
    assert record.status is JobStatus.FAILED
    assert record.error == "runner shutting down"
    assert not _processes_with(m)


async def test_drain_finishes_the_job_then_exits(tmp_path: Path, busybox_oci: tuple[Path, str]) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 0.5; echo '{BMF}'")
            other = h.submit(f"echo '{BMF}'")
            agent = h.agent()
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                agent.request_shutdown(1)
            record = h.server.job(job)
            untouched = h.server.job(other)
    assert result == [0]
    assert record.status is JobStatus.PROCESSED
    assert untouched.status is JobStatus.PENDING


async def test_third_shutdown_request_exits_at_once_leaving_no_process(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            m = marker()
            h.submit(f"sleep {m}1 & sleep {m}2")
            agent = h.agent()
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                await h.server.wait_until(lambda: len(_processes_with(m)) >= 2)
                for level in (1, 2, 3):
                    agent.request_shutdown(level)
    assert result == [1]
    assert not _processes_with(m)


async def test_image_that_cannot_be_prepared_fails_the_job_readably(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    missing = "sha256:" + "0" * 64
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            bad_digest = h.server.submit_job(job_config((busybox_oci[0], missing), "true"))
            no_layout = h.server.submit_job(job_config((tmp_path / "nowhere", busybox_oci[1]), "true"))
            code = await h.agent(exit_after_jobs=2).run()
            records = [h.server.job(bad_digest), h.server.job(no_layout)]
    assert code == 0
    assert [r.status for r in records] == [JobStatus.FAILED, JobStatus.FAILED]
    assert records[0].error is not None and "0" * 64 in records[0].error
    assert records[1].error is not None and "nowhere" in records[1].error


async def test_image_pulled_from_a_real_registry_by_project_and_digest(
    tmp_path: Path, busybox_oci: tuple[Path, str], registry: RegistryServer
) -> None:
    from runner_agent.protocol import JobConfig
    from tests.support.images import push_busybox

    project = uuid4()
    with trio.fail_after(60):
        image = await push_busybox(registry.url, str(project), tmp_path)
        async with harness(tmp_path, busybox_oci) as h:
            job = h.server.submit_job(JobConfig(
                registry=registry.url + "/", project=project, digest=image.digest,
                entrypoint=("/bin/sh", "-c"), cmd=(f"echo '{BMF}'",), timeout=60, iter=2,
            ))
            code = await h.agent(exit_after_jobs=1).run()
            record = h.server.job(job)
    assert code == 0
    assert record.status is JobStatus.PROCESSED, record.error
    assert record.results is not None and len(record.results) == 2


async def test_abort_with_no_way_to_deliver_exits_1_and_keeps_the_result(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    with trio.fail_after(30):
        async with harness(tmp_path, busybox_oci) as h:
            m = marker()
            job = h.submit(f"sleep {m}")
            agent = h.agent({"abort_delivery_grace": 1.0}, ack_timeout=5.0)
            async with h.running(agent) as result:
                await benchmark_started(h, agent)
                h.server.faults.pause_acks()  # nothing will be acknowledged any more
                agent.request_shutdown(1)
                agent.request_shutdown(2)
            stored = list((h.state_dir / "outbox").glob("*.json"))
    assert result == [1]
    assert [p.name for p in stored] == [f"{job}.json"]
    message = json.loads(json.loads(stored[0].read_text())["message"])
    assert (message["event"], message["error"]) == ("failed", "runner shutting down")
    assert not _processes_with(m)
