"""`runner-agent demo` end to end (real dev server, real image layout, real agent and sandbox)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner_agent.demo import (
    DemoIteration,
    DemoResult,
    find_static_busybox,
    is_static_elf,
    parse_bmf,
    summary_lines,
)
from runner_agent.execute import IterationMetrics


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


def _run_demo(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    work = tmp_path / "demo"
    return subprocess.run(
        [sys.executable, "-m", "runner_agent", "demo", "--iterations", "3", "--size-mb", "2",
         "--work-dir", str(work)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def test_demo_end_to_end_in_sandbox(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "benchmark ran in sandbox mode" in out
    assert ": processed" in out
    for i in (1, 2, 3):
        assert f"iteration {i}/3" in out
    assert "sha256/2MiB latency=" in out  # the benchmark's own BMF metrics reached the server
    assert "iteration wall times:" in out and "█" in out
    assert _processes_mentioning(str(tmp_path / "demo")) == []


def test_demo_falls_back_to_host_mode_without_bwrap(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    busybox = find_static_busybox()
    (bindir / "busybox").symlink_to(busybox)
    env = dict(os.environ, PATH=str(bindir))  # no bwrap on PATH
    result = _run_demo(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bubblewrap is not usable here" in result.stdout
    assert "benchmark ran in host mode" in result.stdout
    assert "sha256/2MiB latency=" in result.stdout
    assert _processes_mentioning(str(tmp_path / "demo")) == []


def test_static_elf_detection() -> None:
    assert is_static_elf(find_static_busybox())
    assert not is_static_elf(Path(sys.executable).resolve())  # CPython is dynamically linked


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("noise\n{\"b\":{\"latency\":{\"value\":1}}}\n", {"b": {"latency": {"value": 1}}}),
        ("not json at all\n", None),
        ("[1, 2]\n", None),
    ],
)
def test_parse_bmf(text: str | None, expected: object) -> None:
    assert parse_bmf(text) == expected


def test_summary_has_table_metrics_and_chart() -> None:
    import uuid

    def metrics(i: int, wall: float) -> IterationMetrics:
        return IterationMetrics(iteration=i, wall_s=wall, user_s=wall / 2, sys_s=0.001,
                                max_rss_kb=1000, exit_code=0, signal=None, stdout_bytes=0,
                                stderr_bytes=0, dropped_bytes=0, killed=False)

    rows = tuple(
        DemoIteration(metrics(i, w), None, {"hash": {"latency": {"value": w * 1e9}}})
        for i, w in enumerate([0.1, 0.2])
    )
    result = DemoResult(uuid.uuid4(), "processed", None, "sandbox", 0, rows)
    text = "\n".join(summary_lines(result, width=10))
    assert "hash latency=100.0 ms" in text and "hash latency=200.0 ms" in text
    assert "median 150.0 ms" in text
    assert "│██████████│ 200.0 ms" in text  # the longest bar fills the chart width
    assert "│█████     │ 100.0 ms" in text
