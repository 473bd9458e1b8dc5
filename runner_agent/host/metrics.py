"""The ``--metrics-file``: one JSON object per benchmark iteration, appended, so operators can chart
machine noise over time (wall/user/sys time, peak RSS, exit, CPUs used, tuning state, and the job
cgroup's CPU time and memory peak when there is one); ``iteration_record`` builds a record from what
the executor measured."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import field, frozen

from runner_agent.execute.results import IterationMetrics
from runner_agent.host.cgroups import CgroupError, JobCgroup

log = logging.getLogger(__name__)


def _non_negative(instance: object, attribute: Any, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


@frozen
class IterationRecord:
    """One iteration of one job. Times are seconds; ``peak_rss`` is bytes (``None`` if unknown);
    ``exit`` is the exit status (negative: killed by that signal; ``None``: did not start);
    ``cpus`` the CPUs the benchmark was pinned to.

    ``cgroup_cpu_usec`` / ``cgroup_memory_peak`` come from the job's cgroup (``cpu.stat``
    ``usage_usec`` in µs, ``memory.peak`` in bytes) and are **cumulative for the job so far**: the
    group lives for the whole job, so iteration N's values include iterations 0..N (difference
    consecutive records for one iteration's CPU time; the peak never goes down). ``None`` when the
    job has no cgroup (affinity + rlimits fallback) or the value cannot be read (memory.peak needs
    Linux 5.19)."""

    job: str
    iteration: int = field(validator=_non_negative)
    wall: float = field(validator=_non_negative)
    user: float = field(validator=_non_negative)
    sys: float = field(validator=_non_negative)
    peak_rss: int | None = field(validator=_non_negative)
    exit: int | None
    cpus: frozenset[int]
    tuning: Mapping[str, str] = field(factory=dict)
    timestamp: str = ""  # RFC 3339, from the caller's clock
    cgroup_cpu_usec: int | None = None
    cgroup_memory_peak: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "iteration": self.iteration,
            "wall": self.wall,
            "user": self.user,
            "sys": self.sys,
            "peak_rss": self.peak_rss,
            "exit": self.exit,
            "cpus": sorted(self.cpus),
            "tuning": dict(self.tuning),
            "timestamp": self.timestamp,
            "cgroup_cpu_usec": self.cgroup_cpu_usec,
            "cgroup_memory_peak": self.cgroup_memory_peak,
        }


def iteration_record(
    job: str,
    metrics: IterationMetrics,
    cpus: frozenset[int],
    cgroup: JobCgroup | None,
    tuning: Mapping[str, str],
    now: datetime,
) -> IterationRecord:
    """The record for one finished iteration; reads the job cgroup's usage now (cumulative).

    An unreadable cgroup leaves both cgroup fields ``None`` with a warning; the record is still
    written. ``now`` must be timezone-aware (the caller's clock).
    """
    if now.tzinfo is None:
        raise ValueError("iteration_record needs a timezone-aware time")
    cpu_usec: int | None = None
    memory_peak: int | None = None
    if cgroup is not None:
        try:
            stats = cgroup.stats()
        except (CgroupError, ValueError) as error:
            log.warning("job %s iteration %d: cannot read cgroup usage: %s", job, metrics.iteration, error)
        else:
            cpu_usec, memory_peak = stats.cpu_usage_usec, stats.memory_peak
    if metrics.exit_code is not None:
        exit_status: int | None = metrics.exit_code
    elif metrics.signal:
        exit_status = -metrics.signal
    else:
        exit_status = None
    stamp = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return IterationRecord(
        job=job,
        iteration=metrics.iteration,
        wall=metrics.wall_s,
        user=metrics.user_s,
        sys=metrics.sys_s,
        peak_rss=metrics.max_rss_kb * 1024 if metrics.max_rss_kb > 0 else None,
        exit=exit_status,
        cpus=cpus,
        tuning=dict(tuning),
        timestamp=stamp,
        cgroup_cpu_usec=cpu_usec,
        cgroup_memory_peak=memory_peak,
    )


class MetricsFile:
    """Appends records as JSON lines. Each record is a single ``write`` on an ``O_APPEND`` file, so
    concurrent writers never interleave inside a line; the file is created (0644) if missing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: IterationRecord) -> None:
        line = (json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
        finally:
            os.close(fd)
