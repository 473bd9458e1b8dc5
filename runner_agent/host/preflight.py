"""``run_preflight``: run every check against the host (or a fake tree) and build the ``Report``
that ``runner-agent check`` prints and ``run`` logs at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from runner_agent.host import checks
from runner_agent.host.checks import HostRoots
from runner_agent.host.knobs import KNOBS
from runner_agent.host.layout import CpuLayout, LayoutError, detect_layout
from runner_agent.host.report import Finding, Report, Status


def run_preflight(
    *,
    cache_dir: Path,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    cgroup_root: Path | None = None,
    layout: CpuLayout | None = None,
    benchmark_cpus: str | None = None,
    housekeeping_cpus: str | None = None,
    steal_sample_seconds: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    bwrap_path: str | None = None,
    check_bwrap: bool = True,
    state_dir: Path | None = None,
) -> Report:
    """Check the host; never raises for a host problem (each becomes a ``Finding``).

    ``layout`` is detected (honouring the CPU flags) unless given. ``bwrap_path`` is the PATH used
    to find ``bwrap`` (default: the process's PATH). With ``state_dir``, a tuning record left by a
    crashed run is reported.
    """
    roots = HostRoots(sys_root, proc_root)
    findings: list[Finding] = [checks.check_knob(roots, k) for k in KNOBS]
    findings.append(checks.check_cstates(roots))
    findings.append(checks.check_irqbalance(roots))
    if layout is None:
        try:
            layout = detect_layout(
                sys_root, proc_root, benchmark_cpus=benchmark_cpus, housekeeping_cpus=housekeeping_cpus
            )
        except (LayoutError, ValueError) as error:
            findings.append(
                Finding(
                    "cpu_layout",
                    Status.FAIL,
                    "CPU layout",
                    f"cannot choose a layout: {error}",
                    "the agent must know which cores run benchmarks",
                    "fix --benchmark-cpus/--housekeeping-cpus so they name online CPUs",
                )
            )
    if layout is not None:
        findings.append(checks.check_layout(layout))
        findings.append(checks.check_isolation(layout))
        findings.append(checks.check_irq_affinity(roots, layout))
    findings.append(checks.check_cgroup_v2(roots, cgroup_root))
    findings.append(checks.check_virtualisation(roots, steal_sample_seconds, sleep))
    if check_bwrap:
        findings.append(checks.check_bwrap(bwrap_path))
    findings.append(checks.check_disk(cache_dir))
    findings.append(checks.check_clocksource(roots))
    if state_dir is not None:
        findings.append(checks.check_tuning_record(state_dir))
    return Report(tuple(findings), layout.describe() if layout is not None else "")
