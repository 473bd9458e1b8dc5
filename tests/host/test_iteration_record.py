"""``iteration_record``: what ``run --metrics-file`` writes per iteration — exit, CPUs, and the job
cgroup's cumulative CPU time and memory peak read from a fake cgroup tree."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner_agent.execute.results import IterationMetrics
from runner_agent.host.cgroups import JobCgroupManager
from runner_agent.host.layout import choose_layout
from runner_agent.host.metrics import MetricsFile, iteration_record
from runner_agent.host.placement import JobPlacer
from tests.host.conftest import FakeHost

PARENT = "sys/fs/cgroup/runner.service"
NOW = datetime(2026, 11, 27, 2, 30, 1, 250000, tzinfo=UTC)


def measured(iteration: int = 0, *, exit_code: int | None = 0, signal: int | None = None,
             max_rss_kb: int = 2048) -> IterationMetrics:
    return IterationMetrics(
        iteration=iteration, wall_s=0.5, user_s=0.375, sys_s=0.125, max_rss_kb=max_rss_kb,
        exit_code=exit_code, signal=signal, stdout_bytes=10, stderr_bytes=0, dropped_bytes=0,
        killed=signal is not None,
    )


def test_records_cumulative_cgroup_usage_of_a_placed_job(quiet_host: FakeHost, tmp_path: Path) -> None:
    placer = JobPlacer(choose_layout(frozenset({0, 1, 2, 3})),
                       JobCgroupManager(quiet_host.sys / "fs/cgroup", quiet_host.proc))
    placed = placer.place("job-7", 2, 1024**3)
    assert placed.cgroup is not None
    metrics = MetricsFile(tmp_path / "m.jsonl")
    usage = [(400_000, 3_145_728), (810_000, 3_670_016)]
    for i, (usec, peak) in enumerate(usage):  # the kernel's counters grow over the job's life
        quiet_host.write(f"{PARENT}/job-job-7/cpu.stat", f"usage_usec {usec}\nuser_usec {usec}\n")
        quiet_host.write(f"{PARENT}/job-job-7/memory.peak", f"{peak}\n")
        metrics.append(iteration_record("job-7", measured(i), placed.placement.cpus or frozenset(),
                                        placed.cgroup, {"aslr": "0"}, NOW))
    first, second = (json.loads(line) for line in metrics.path.read_text().splitlines())
    assert first == {
        "job": "job-7", "iteration": 0, "wall": 0.5, "user": 0.375, "sys": 0.125,
        "peak_rss": 2048 * 1024, "exit": 0, "cpus": [1, 2], "tuning": {"aslr": "0"},
        "timestamp": "2026-11-27T02:30:01.250Z", "cgroup_cpu_usec": 400_000,
        "cgroup_memory_peak": 3_145_728,
    }
    assert (second["iteration"], second["cgroup_cpu_usec"], second["cgroup_memory_peak"]) == (
        1, 810_000, 3_670_016)


def test_memory_peak_is_null_on_kernels_without_memory_peak(quiet_host: FakeHost) -> None:
    placer = JobPlacer(choose_layout(frozenset({0, 1})),
                       JobCgroupManager(quiet_host.sys / "fs/cgroup", quiet_host.proc))
    placed = placer.place("j", 1, None)
    quiet_host.write(f"{PARENT}/job-j/cpu.stat", "usage_usec 99\n")  # and no memory.peak (< 5.19)
    record = iteration_record("j", measured(), frozenset({1}), placed.cgroup, {}, NOW)
    assert (record.cgroup_cpu_usec, record.cgroup_memory_peak) == (99, None)


def test_without_a_cgroup_the_usage_fields_are_null() -> None:
    record = iteration_record("j", measured(), frozenset({0}), None, {}, NOW)
    assert record.to_json()["cgroup_cpu_usec"] is None
    assert record.to_json()["cgroup_memory_peak"] is None


def test_an_unreadable_cgroup_is_logged_and_the_record_still_written(
    quiet_host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    placer = JobPlacer(choose_layout(frozenset({0, 1})),
                       JobCgroupManager(quiet_host.sys / "fs/cgroup", quiet_host.proc))
    placed = placer.place("j", 1, None)
    quiet_host.write(f"{PARENT}/job-j/cpu.stat", "user_usec 5\n")  # no usage_usec
    caplog.set_level(logging.WARNING, logger="runner_agent.host.metrics")
    record = iteration_record("j", measured(3), frozenset({1}), placed.cgroup, {}, NOW)
    assert record.cgroup_cpu_usec is None and record.exit == 0
    assert any("iteration 3: cannot read cgroup usage" in r.getMessage() and "no usage_usec" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(
    ("exit_code", "signal", "expected"),
    [(0, None, 0), (3, None, 3), (None, 9, -9), (None, 15, -15), (None, None, None)],
)
def test_exit_is_the_status_or_minus_the_signal(exit_code: int | None, signal: int | None,
                                                expected: int | None) -> None:
    record = iteration_record("j", measured(exit_code=exit_code, signal=signal), frozenset({0}), None, {}, NOW)
    assert record.exit == expected


def test_unknown_peak_rss_is_null_not_zero_and_time_is_utc() -> None:
    record = iteration_record("j", measured(max_rss_kb=0), frozenset({0}), None, {},
                              datetime(2026, 11, 27, 4, 30, tzinfo=timezone(timedelta(hours=2))))
    assert record.peak_rss is None
    assert record.timestamp == "2026-11-27T02:30:00.000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        iteration_record("j", measured(), frozenset({0}), None, {}, datetime(2026, 11, 27))
