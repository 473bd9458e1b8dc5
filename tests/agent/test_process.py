"""`runner-agent run` as a real subprocess: SIGTERM drains, SIGKILL loses nothing, bad config exits 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from runner_agent.devserver.store import JobStatus
from tests.agent.conftest import AgentHarness, harness

BMF = '{"bench":{"latency":{"value":2.5}}}'


def _command(h: AgentHarness, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "runner_agent", "run",
        "--host", h.server.url, "--runner", h.server.runner.slug,
        "--state-dir", str(h.state_dir), "--cache-dir", str(h.cache_dir),
        "--heartbeat-interval", "0.1", "--poll-timeout", "1", "--ack-timeout", "3",
        "--kill-grace", "0.5", "--log-format", "json", "--log-level", "debug", *extra,
    ]


def _env(h: AgentHarness) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHER_", "RUNNER_AGENT_"))}
    env["BENCHER_RUNNER_KEY"] = h.server.key or ""
    return env


async def _start(h: AgentHarness, log: Path, *extra: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        _command(h, *extra), env=_env(h), stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )


async def test_sigterm_mid_job_delivers_the_result_and_exits_0(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    log = tmp_path / "agent.log"
    with trio.fail_after(60):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 1; env; echo '{BMF}'", iterations=2)
            proc = await _start(h, log)
            try:
                await h.server.wait_for_status(job, {JobStatus.RUNNING})
                proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
            record = h.server.job(job)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert record.status is JobStatus.PROCESSED
    assert record.results is not None and len(record.results) == 2
    assert [r.event for r in record.terminal_messages] == ["completed"]
    assert h.server.key not in text  # the key never reaches the log
    assert h.server.key not in json.dumps(record.results)  # nor the benchmark's environment
    assert "draining" in text
    events = [json.loads(line) for line in text.splitlines()]  # --log-format json: one object a line
    assert {"ts", "level", "logger", "msg"} <= set(events[0])
    assert any(e.get("outcome") == "completed" and e.get("iterations") == 2 for e in events)


async def test_sigkill_with_a_pending_result_then_next_start_delivers_it(
    tmp_path: Path, busybox_oci: tuple[Path, str]
) -> None:
    log = tmp_path / "agent.log"
    with trio.fail_after(60):
        async with harness(tmp_path, busybox_oci) as h:
            job = h.submit(f"sleep 0.5; echo '{BMF}'")
            proc = await _start(h, log)
            try:
                # Heartbeats are answered in order, so once two arrived the reply to `running`
                # has gone out and the benchmark runs.
                await h.server.wait_until(lambda: len(h.server.frames_received("heartbeat")) >= 2)
                h.server.faults.pause_acks()  # the result will arrive but its ack never does
                await h.server.wait_until(lambda: len(h.server.job(job).terminal_messages) >= 1)
                proc.kill()
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
            pending = list((h.state_dir / "outbox").glob("*.json"))
            assert [p.name for p in pending] == [f"{job}.json"]

            h.server.faults.resume_acks()
            proc = await _start(h, log)
            try:
                await h.server.wait_until(
                    lambda: any(r.outcome == "acked" for r in h.server.job(job).terminal_messages)
                )
                proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
            record = h.server.job(job)
    assert code == 0, log.read_text()[-3000:]
    assert record.status is JobStatus.PROCESSED
    assert [r.event for r in record.terminal_messages] == ["completed", "completed"]
    assert not list((h.state_dir / "outbox").glob("*.json"))


def test_missing_runner_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHER_", "RUNNER_AGENT_"))}
    out = subprocess.run(
        [sys.executable, "-m", "runner_agent", "run", "--state-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "no runner given" in out.stderr


def test_plain_ws_to_remote_host_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHER_", "RUNNER_AGENT_"))}
    env["BENCHER_RUNNER_KEY"] = "bencher_runner_" + "q" * 30
    out = subprocess.run(
        [sys.executable, "-m", "runner_agent", "run", "--host", "http://bench.example.com",
         "--runner", "r1", "--state-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "--insecure" in out.stderr
    assert "q" * 30 not in out.stderr


def test_no_working_bwrap_refuses_to_start_with_the_fix(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHER_", "RUNNER_AGENT_"))}
    env["BENCHER_RUNNER_KEY"] = "bencher_runner_" + "q" * 30
    env["PATH"] = str(tmp_path)  # no bwrap on PATH
    out = subprocess.run(
        [sys.executable, "-m", "runner_agent", "run", "--host", "http://127.0.0.1:9",
         "--runner", "r1", "--state-dir", str(tmp_path / "state")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "--danger-allow-no-sandbox" in out.stderr
    assert "sandbox" in out.stderr.lower()
