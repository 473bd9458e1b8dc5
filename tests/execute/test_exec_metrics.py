"""``runner-agent exec --cpus`` and ``--metrics-file``: the benchmark is pinned where asked, and each
iteration's own measurement is appended as the JSON line ``run --metrics-file`` writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner_agent.cli import main
from tests.support.images import busybox_layout


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    busybox_layout(tmp_path / "layout")
    return tmp_path / "layout"


def last_allowed_cpu() -> int:
    return max(os.sched_getaffinity(0))


def test_metrics_file_has_one_record_per_iteration_on_the_pinned_cpu(layout: Path, tmp_path: Path) -> None:
    cpu = last_allowed_cpu()
    metrics = tmp_path / "out" / "metrics.jsonl"
    result = CliRunner().invoke(main, [
        "exec", str(layout), "--iter", "3", "--timeout", "60", "--json", "--cache-dir", str(tmp_path / "cache"),
        "--cpus", str(cpu), "--metrics-file", str(metrics),
        "--", "/bin/sh", "-c", "grep Cpus_allowed_list /proc/self/status",
    ])
    assert result.exit_code == 0, result.output
    message = json.loads(result.stdout)
    assert [r["stdout"].split() for r in message["results"]] == [["Cpus_allowed_list:", str(cpu)]] * 3
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert {r["job"] for r in records} == {message["job"]}
    for r in records:
        assert r["exit"] == 0 and r["cpus"] == [cpu]
        assert r["wall"] > 0 and r["user"] >= 0 and r["sys"] >= 0
        assert r["peak_rss"] is None or r["peak_rss"] > 0
        assert r["tuning"] == {} and r["cgroup_cpu_usec"] is None
        assert r["timestamp"].endswith("Z")


def test_metrics_file_appends_and_records_a_failing_exit(layout: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"earlier":"line"}\n')
    result = CliRunner().invoke(main, [
        "exec", str(layout), "--timeout", "60", "--cache-dir", str(tmp_path / "cache"), "--metrics-file", str(metrics),
        "--", "/bin/sh", "-c", "exit 3",
    ])
    assert result.exit_code == 1
    lines = metrics.read_text().splitlines()
    assert lines[0] == '{"earlier":"line"}'
    assert len(lines) == 2 and json.loads(lines[1])["exit"] == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cpus", "1-"], "--cpus"),
        (["--cpus", "100000"], "are not online"),
        (["--metrics-file", "{blocker}/m.jsonl"], "--metrics-file"),
    ],
)
def test_bad_cpus_or_metrics_file_exit_2(layout: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, [
        "exec", str(layout), "--cache-dir", str(tmp_path / "cache"),
        *(a.format(blocker=blocker) for a in args),
    ])
    assert result.exit_code == 2, result.output
    assert needle in result.output
