"""The metrics file: one JSON line per iteration, appended, validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner_agent.host.metrics import IterationRecord, MetricsFile


def record(iteration: int = 0, **kw: object) -> IterationRecord:
    base: dict[str, object] = dict(
        job="job-1", iteration=iteration, wall=1.25, user=1.0, sys=0.125, peak_rss=10_485_760,
        exit=0, cpus=frozenset({3, 1}), tuning={"aslr": "0"}, timestamp="2026-11-27T01:00:00Z",
    )
    base.update(kw)
    return IterationRecord(**base)  # type: ignore[arg-type]


def test_appends_one_line_per_iteration(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    metrics = MetricsFile(path)
    metrics.append(record(0))
    metrics.append(record(1, exit=-9, peak_rss=None, cgroup_cpu_usec=5, cgroup_memory_peak=7))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "job": "job-1", "iteration": 0, "wall": 1.25, "user": 1.0, "sys": 0.125,
        "peak_rss": 10_485_760, "exit": 0, "cpus": [1, 3], "tuning": {"aslr": "0"},
        "timestamp": "2026-11-27T01:00:00Z", "cgroup_cpu_usec": None, "cgroup_memory_peak": None,
    }
    assert (second["exit"], second["peak_rss"], second["cgroup_cpu_usec"]) == (-9, None, 5)


def test_existing_content_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"old": true}\n')
    MetricsFile(path).append(record(0))
    assert path.read_text().splitlines()[0] == '{"old": true}'


@pytest.mark.parametrize("field_name", ["iteration", "wall", "user", "sys", "peak_rss"])
def test_negative_values_are_refused(field_name: str) -> None:
    with pytest.raises(ValueError, match=f"{field_name} must not be negative"):
        record(**{field_name: -1})
