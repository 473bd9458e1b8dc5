"""The ``--metrics-file``: one JSON object per benchmark iteration, appended, so operators can chart
machine noise over time (wall/user/sys time, peak RSS, exit, CPUs used, tuning state)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import field, frozen


def _non_negative(instance: object, attribute: Any, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


@frozen
class IterationRecord:
    """One iteration of one job. Times are seconds; ``peak_rss`` is bytes (``None`` if unknown);
    ``exit`` is the exit status (negative: killed by that signal; ``None``: did not start)."""

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
