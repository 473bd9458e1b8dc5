"""``host_session``: everything the agent does to the host around its lifetime, in the right
order — restore a crashed run's tuning, tune (optional), choose the CPU layout, pin the agent,
prepare per-job cgroups, log the preflight summary — and the guaranteed restore on exit."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from attrs import frozen

from runner_agent.host.cgroups import JobCgroupManager
from runner_agent.host.cpulist import format_cpulist
from runner_agent.host.layout import CpuLayout, detect_layout, pin_agent
from runner_agent.host.lock import DEFAULT_LOCK_PATH, TuningLockedError
from runner_agent.host.metrics import MetricsFile
from runner_agent.host.partition import apply_cpuset_partition
from runner_agent.host.placement import JobPlacer
from runner_agent.host.preflight import run_preflight
from runner_agent.host.report import Report, Status
from runner_agent.host.tuning import Tuner, TuningError, recover_after_crash

log = logging.getLogger(__name__)


@frozen
class HostSession:
    """What the agent needs from the host while it runs."""

    layout: CpuLayout
    placer: JobPlacer
    report: Report
    tuner: Tuner | None
    metrics: MetricsFile | None

    def tuning_state(self) -> dict[str, str]:
        return self.tuner.state() if self.tuner is not None else {}


@contextmanager
def host_session(
    *,
    state_dir: Path,
    cache_dir: Path,
    tune: bool = False,
    tune_skip: Collection[str] = (),
    benchmark_cpus: str | None = None,
    housekeeping_cpus: str | None = None,
    metrics_file: Path | None = None,
    pin: bool = True,
    steal_sample_seconds: float = 0.5,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    dev_root: Path = Path("/dev"),
    cgroup_root: Path | None = None,
    lock_path: Path = DEFAULT_LOCK_PATH,
) -> Iterator[HostSession]:
    """Prepare the host for the agent's lifetime and restore it afterwards.

    Raises ``LayoutError`` for impossible ``--benchmark-cpus``/``--housekeeping-cpus`` (a usage
    error). Tuning problems never stop the agent: they are logged and it runs untuned.
    """
    try:
        for result in recover_after_crash(state_dir, sys_root, proc_root, lock_path):
            if result.error:
                log.error("could not restore %s left by a crashed run: %s", result.change.path, result.error)
            else:
                log.warning("restored %s to %r (left by a crashed run)", result.change.path, result.change.original)
    except (TuningError, TuningLockedError) as error:
        log.error("cannot recover tuning left by a crashed run: %s", error)
    tuner: Tuner | None = None
    if tune:
        candidate = Tuner(sys_root, proc_root, state_dir, lock_path, tune_skip, dev_root=dev_root)
        try:
            changes = candidate.apply()
        except (TuningError, TuningLockedError) as error:
            log.warning("running untuned: %s", error)
        else:
            tuner = candidate
            log.info("tuning applied: %d change(s)", len(changes))
            for note in candidate.notes:
                if note.outcome in ("failed", "absent"):
                    log.warning("tuning %s %s: %s", note.knob, note.outcome, note.detail)
    try:
        # after tuning: turning SMT off changes which CPUs are online
        layout = detect_layout(
            sys_root, proc_root, benchmark_cpus=benchmark_cpus, housekeeping_cpus=housekeeping_cpus
        )
        log.info("%s", layout.describe())
        if tuner is not None:
            steered = tuner.apply_cpu_scoped(layout)
            log.info("tuning: steered %d IRQ/workqueue setting(s) to housekeeping CPUs", len(steered))
        if pin:
            try:
                pinned = pin_agent(layout, proc_root=proc_root)
            except OSError as error:  # e.g. a container's cpuset does not allow these CPUs
                log.warning("cannot pin the agent to CPUs %s, running unpinned: %s",
                            format_cpulist(layout.housekeeping), error)
            else:
                log.info("agent pinned to CPUs %s", format_cpulist(pinned))
        cgroup_base = cgroup_root or sys_root / "fs/cgroup"
        job_parent: Path | None = None
        if tuner is not None:
            partition = apply_cpuset_partition(tuner, layout, cgroup_base)
            log.info("tuning: cpuset partition level %r at %s", partition.level, partition.path)
            job_parent = partition.path
        cgroups = JobCgroupManager(cgroup_base, proc_root, parent=job_parent)
        cgroups.setup()
        report = run_preflight(
            cache_dir=cache_dir, sys_root=sys_root, proc_root=proc_root, cgroup_root=cgroup_root,
            layout=layout, steal_sample_seconds=steal_sample_seconds,
        )
        log.info("%s", report.summary())
        for finding in report.findings:
            if finding.status in (Status.WARN, Status.FAIL):
                log.info("preflight %s: %s; fix: %s", finding.name, finding.found, finding.fix)
        yield HostSession(
            layout,
            JobPlacer(layout, cgroups),
            report,
            tuner,
            MetricsFile(metrics_file) if metrics_file is not None else None,
        )
    finally:
        if tuner is not None:
            failed = [r for r in tuner.restore() if r.error is not None]
            for r in failed:
                log.error("could not restore %s to %r: %s (runner-agent check --restore retries)", r.change.path, r.change.original, r.error)
