"""What a job produced: per-iteration metrics, Bencher's iteration outputs, the job outcome.

``build_time``/``file_size`` follow the reference runner: the iteration's ``output`` becomes a
single ``"\\u0000bencher"`` entry holding BMF JSON (``build-time`` in seconds rounded to 0.01 for
the benchmark name; ``file-size`` in bytes per collected file, named by its file name).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Literal
from uuid import UUID

from attrs import frozen

from runner_agent.execute.budget import fit_message
from runner_agent.protocol import Canceled, Completed, Failed, IterationOutput

METRIC_OUTPUT_KEY = "\0bencher"
Status = Literal["completed", "failed", "canceled"]


@frozen
class IterationMetrics:
    """Measured by the agent for one iteration (logged; not part of Bencher's wire format)."""

    iteration: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kb: int
    exit_code: int | None
    signal: int | None
    stdout_bytes: int
    stderr_bytes: int
    dropped_bytes: int
    killed: bool


def exit_code_of(exit_code: int | None, sig: int | None) -> int:
    """Bencher's convention: the exit code, or 128 + signal number."""
    if exit_code is not None:
        return exit_code
    return 128 + (sig or 0)


def metric_output(
    wall_s: float | None,
    benchmark_name: str | None,
    file_size: bool,
    files: Mapping[str, int] | None,
) -> dict[str, str] | None:
    """The ``"\\u0000bencher"`` BMF entry, or ``None`` when there is no metric to report."""
    results: dict[str, dict[str, dict[str, float | None]]] = {}
    if wall_s is not None and benchmark_name is not None:
        results[benchmark_name] = {"build-time": _metric(round(wall_s * 100.0) / 100.0)}
    if file_size and files:
        for path, size in files.items():
            name = posixpath.basename(path) or path
            if name:
                results.setdefault(name, {})["file-size"] = _metric(float(size))
    if not results:
        return None
    return {METRIC_OUTPUT_KEY: json.dumps(results, separators=(",", ":"))}


def _metric(value: float) -> dict[str, float | None]:
    return {"value": value, "lower_value": None, "upper_value": None}


def iteration_output(
    exit_code: int, stdout: str, stderr: str, output: Mapping[str, str] | None
) -> IterationOutput:
    """Wire form of one iteration: empty streams omitted, output keys sorted (like a BTreeMap)."""
    return IterationOutput(
        exit_code=exit_code,
        stdout=stdout or None,
        stderr=stderr or None,
        output=dict(sorted(output.items())) if output is not None else None,
    )


@frozen
class JobOutcome:
    """How the job ended, what it produced and what it cost."""

    status: Status
    results: tuple[IterationOutput, ...]
    error: str | None
    metrics: tuple[IterationMetrics, ...] = ()

    def to_message(self, job: UUID, max_message_size: int) -> Completed | Failed | Canceled:
        """The terminal message, its ``encode()`` form kept within ``max_message_size`` bytes."""
        if self.status == "canceled":
            return Canceled(job=job)
        if self.status == "completed":
            return fit_message(Completed(job=job, results=self.results), max_message_size)
        return fit_message(
            Failed(job=job, results=self.results, error=self.error or "failed"), max_message_size
        )
