"""``runner-agent dev-server`` as a real process: it prints its URL and key, serves the channel,
takes jobs from the spool directory, and exits cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from trio_websocket import ConnectionClosed, open_websocket_url

from runner_agent.cli import main

from .conftest import DIGEST, PROJECT


def test_help_documents_the_spool() -> None:
    result = CliRunner().invoke(main, ["dev-server", "--help"])
    assert result.exit_code == 0
    assert "DIR/incoming/NAME.json" in result.output and "--heartbeat-timeout" in result.output


def test_bad_key_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["dev-server", "--key", "nope"])
    assert result.exit_code == 2 and "--key" in result.output


async def test_dev_server_process_serves_a_spooled_job(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            command = [
                sys.executable, "-m", "runner_agent", "dev-server", "--port", "0",
                "--runner", "cli-runner", "--spool", str(spool), "--heartbeat-timeout", "5",
            ]
            run = partial(
                trio.run_process, command,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
            )
            process: trio.Process = await nursery.start(run)
            assert process.stdout is not None
            lines: dict[str, str] = {}
            buffer = b""
            while "try" not in lines:
                chunk = await process.stdout.receive_some()
                assert chunk, "dev-server exited early"
                buffer += chunk
                *done, rest = buffer.split(b"\n")
                buffer = rest
                for line in done:
                    name, _, value = line.decode().partition(": ")
                    lines[name] = value
            url, key = lines["dev server"], lines["key"]
            (spool / "incoming" / "job.json").write_text(
                json.dumps({"registry": "http://127.0.0.1:5000/", "project": str(PROJECT),
                            "digest": DIGEST, "timeout": 30})
            )
            ws_url = url.replace("http://", "ws://") + "/v0/runners/cli-runner/channel"
            async with open_websocket_url(
                ws_url, extra_headers=[(b"Authorization", f"Bearer {key}".encode())]
            ) as ws:
                await ws.send_message('{"event":"ready","poll_timeout":10}')
                frame = json.loads(await ws.get_message())
                assert frame["event"] == "job"
                await ws.send_message('{"event":"running"}')
                assert json.loads(await ws.get_message())["event"] == "ack"
                await ws.send_message(json.dumps(
                    {"event": "completed", "job": frame["uuid"], "results": [{"exit_code": 0}]}
                ))
                assert json.loads(await ws.get_message()) == {"event": "ack", "job": frame["uuid"]}
                record = json.loads((spool / "jobs" / f"{frame['uuid']}.json").read_text())
                assert record["status"] == "processed"
                os.kill(process.pid, signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1001
            assert await process.wait() == 0


def test_busy_port_and_corrupt_persist_file_are_clear_errors(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["dev-server", "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"cannot serve on 127.0.0.1:{port}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    persist = tmp_path / "jobs.json"
    persist.write_text("{not json")
    result = CliRunner().invoke(main, ["dev-server", "--port", "0", "--persist", str(persist)])
    assert result.exit_code == 1, result.output
    assert f"cannot load job store {persist}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
