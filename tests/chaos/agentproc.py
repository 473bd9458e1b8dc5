"""``AgentProcess``: a real ``runner-agent run`` subprocess for chaos/soak/fault tests, with its
combined output captured line by line (kept in memory and appended to a log file) so a test can
wait for a log message instead of sleeping, signal it, sample its RSS and reap it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio


def agent_command(
    host: str, runner: str, state_dir: Path, cache_dir: Path, *extra: str
) -> list[str]:
    """``runner-agent run`` with test-friendly timings; the key comes from the environment."""
    return [
        sys.executable, "-m", "runner_agent", "run",
        "--host", host, "--runner", runner,
        "--state-dir", str(state_dir), "--cache-dir", str(cache_dir),
        "--heartbeat-interval", "0.1", "--poll-timeout", "1", "--ack-timeout", "5",
        "--kill-grace", "0.5", "--log-format", "json", "--log-level", "debug",
        *extra,
    ]


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS``), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class AgentProcess:
    """One agent process. Use ``await nursery.start(agent.run)``; it returns once started."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.lines: list[str] = []
        self.process: trio.Process | None = None
        self.returncode: int | None = None
        self._changed = trio.Event()
        self.exited = trio.Event()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records (lines that are not JSON are skipped)."""
        out = []
        for line in self.lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the process, collect its output until it exits, record the exit status."""
        process = await trio.lowlevel.open_process(
            self.command, env={**os.environ, **self.env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.process = process
        task_status.started()
        assert process.stdout is not None
        pending = b""
        try:
            with self.log_path.open("ab") as log:
                async for chunk in process.stdout:
                    log.write(chunk)
                    log.flush()
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    self.lines.extend(c.decode("utf-8", "replace") for c in complete)
                    self._notify()
            if pending:
                self.lines.append(pending.decode("utf-8", "replace"))
            self.returncode = await process.wait()
        finally:
            if process.returncode is None:
                with trio.CancelScope(shield=True):
                    process.kill()
                    self.returncode = await process.wait()
            self.exited.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_line(self, text: str, start: int = 0) -> int:
        """Wait until a line from index ``start`` on contains ``text``; returns its index.
        Raises RuntimeError if the process exits first."""
        index = start
        while True:
            while index < len(self.lines):
                if text in self.lines[index]:
                    return index
                index += 1
            if self.exited.is_set():
                raise RuntimeError(f"agent exited ({self.returncode}) before logging {text!r}")
            await self._changed.wait()

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.returncode is not None
        return self.returncode
