"""Persistence across a restart on the same port, and spool-directory submission."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from runner_agent.devserver import DevServerSettings, JobStatus
from runner_agent.devserver.server import DevServer

from .conftest import (
    RUNNER_A,
    RUNNER_B,
    claim,
    client,
    dev_server,
    expect_dropped,
    job_config,
    recv,
    send,
)

RESULTS = [{"exit_code": 0, "output": {"/out.json": "{}"}}]


def fixed_wall_clock() -> float:
    return 1_800_000_000.0 + trio.current_time()


async def test_restart_on_the_same_port_keeps_jobs(
    io_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    persist = tmp_path / "jobs.json"
    settings = DevServerSettings(heartbeat_timeout=30)
    with trio.fail_after(600):
        async with dev_server(persist_path=persist, settings=settings, wall_clock=fixed_wall_clock) as first:
            port = first.port
            job = first.submit_job(job_config())
            waiting = first.submit_job(job_config())
            async with client(first) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
        assert json.loads(persist.read_text())["version"] == 1
        async with dev_server(
            persist_path=persist, settings=settings, wall_clock=fixed_wall_clock, port=port
        ) as second:
            assert second.port == port
            assert second.job_status(job) is JobStatus.RUNNING
            assert second.job_status(waiting) is JobStatus.PENDING
            async with client(second) as ws:
                # the result from before the restart is delivered via the IDLE path
                await send(ws, {"event": "completed", "job": str(job), "results": RESULTS})
                assert await recv(ws) == {"event": "ack", "job": str(job)}
                frame = await claim(ws)
                assert frame["uuid"] == str(waiting)
            assert second.job(job).results == RESULTS


async def test_restart_watches_unfinished_jobs(io_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    persist = tmp_path / "jobs.json"
    with trio.fail_after(600):
        async with dev_server(persist_path=persist, wall_clock=fixed_wall_clock) as first:
            job = first.submit_job(job_config())
            async with client(first) as ws:
                await claim(ws)
                await send(ws, {"event": "running"})
                await recv(ws)
                await first.abort()
                await expect_dropped(ws)
        async with dev_server(persist_path=persist, wall_clock=fixed_wall_clock) as second:
            await second.wait_for_status(job, {JobStatus.FAILED})


async def test_spool_directory_submission(io_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with trio.fail_after(600):
        async with dev_server(spool_dir=spool) as server:
            config = json.loads(
                '{"registry":"file:///srv/layout","project":"11111111-2222-3333-4444-555555555555",'
                '"digest":"sha256:' + "cd" * 32 + '","cmd":["true"],"timeout":30}'
            )
            (spool / "incoming" / "bare.json").write_text(json.dumps(config))
            (spool / "incoming" / "wrapped.json").write_text(json.dumps({"config": config, "timeout": 9}))
            (spool / "incoming" / "bad.json").write_text('{"registry": 1}')
            await server.wait_until(lambda: len(server.store.all()) == 2)
            await server.wait_until(lambda: (spool / "rejected" / "bad.json.error.txt").exists())
            assert not list((spool / "incoming").glob("*.json"))
            assert "registry" in (spool / "rejected" / "bad.json.error.txt").read_text()
            jobs = server.store.all()
            assert sorted(r.timeout for r in jobs) == [9, 30]
            async with client(server) as ws:
                frame = await claim(ws)
                assert frame["config"]["registry"] == "file:///srv/layout"
                job = frame["uuid"]
                await send(ws, {"event": "running"})
                await recv(ws)
                await send(ws, {"event": "failed", "job": job, "results": [{"exit_code": 1}], "error": "boom"})
                await recv(ws)
            written = json.loads((spool / "jobs" / f"{job}.json").read_text())
            assert written["status"] == "failed" and written["error"] == "boom"
            assert written["runner"] == str(RUNNER_A.uuid)
            assert [m["event"] for m in written["terminal_messages"]] == ["failed"]


async def test_default_server_generates_a_key(io_clock: trio.testing.MockClock) -> None:
    server = DevServer()
    assert server.key is not None and server.key.startswith("bencher_runner_")
    assert server.runner.uuid not in (RUNNER_A.uuid, RUNNER_B.uuid)
    with trio.fail_after(600):
        async with DevServer.start(settings=DevServerSettings(heartbeat_timeout=5)) as running:
            assert running.key is not None
            async with client(running, key=running.key, runner="dev-runner") as ws:
                await send(ws, {"event": "ready", "poll_timeout": 1})
                assert await recv(ws) == {"event": "no_job"}


async def test_a_store_write_error_drops_only_that_connection(
    io_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Like a database error in Bencher's handler: the connection is dropped without a reply and
    the server goes on serving (it must not take every other connection down with it)."""
    import shutil

    folder = tmp_path / "store"
    with trio.fail_after(600):
        async with dev_server(persist_path=folder / "jobs.json") as server:
            job = server.submit_job(job_config())
            async with client(server) as ws:
                await claim(ws)
                shutil.rmtree(folder)
                folder.write_text("not a folder")  # the next save fails
                await send(ws, {"event": "running"})
                await expect_dropped(ws)
            folder.unlink()
            async with client(server) as ws:
                await send(ws, {"event": "ready", "poll_timeout": 1})
                assert await recv(ws) == {"event": "no_job"}
            assert server.job_status(job) in (JobStatus.CLAIMED, JobStatus.RUNNING)
