"""CPU layout: online CPUs, kernel isolation (``isolcpus=``/``nohz_full=``/``rcu_nocbs=``), the split
into housekeeping cores (agent, heartbeat, I/O) and benchmark cores (jobs), pinning of the agent, and
the choice of CPUs for one job."""

from __future__ import annotations

import os
from pathlib import Path

from attrs import frozen

from runner_agent.host.cpulist import CpuListError, format_cpulist, parse_cpulist

ISOLCPUS_FLAGS = frozenset({"nohz", "domain", "managed_irq"})


class LayoutError(ValueError):
    """The requested CPU layout is impossible on this host; the message names the flag and CPUs."""


@frozen
class KernelIsolation:
    """CPU isolation requested on the kernel command line (``/proc/cmdline``)."""

    isolcpus: frozenset[int] = frozenset()
    isolcpus_flags: tuple[str, ...] = ()
    nohz_full: frozenset[int] = frozenset()
    rcu_nocbs: frozenset[int] = frozenset()
    rcu_nocbs_present: bool = False
    problems: tuple[str, ...] = ()

    @property
    def isolated(self) -> frozenset[int]:
        """CPUs the kernel keeps quiet for us (``isolcpus`` or, failing that, ``nohz_full``)."""
        return self.isolcpus or self.nohz_full


def _cmdline_params(cmdline: str) -> list[tuple[str, str | None]]:
    params: list[tuple[str, str | None]] = []
    for token in cmdline.split():
        if token == "--":  # everything after belongs to init
            break
        key, eq, value = token.partition("=")
        params.append((key, value.strip('"') if eq else None))
    return params


def parse_kernel_cmdline(cmdline: str, *, last_cpu: int | None = None) -> KernelIsolation:
    """Extract isolation parameters; malformed values are reported in ``problems``, never dropped."""
    isolcpus: frozenset[int] = frozenset()
    flags: tuple[str, ...] = ()
    nohz: frozenset[int] = frozenset()
    nocbs: frozenset[int] = frozenset()
    nocbs_present = False
    problems: list[str] = []
    for key, value in _cmdline_params(cmdline):
        try:
            if key == "isolcpus":
                parts = (value or "").split(",")
                lead: list[str] = []
                while parts and parts[0] and parts[0][0].isalpha() and parts[0] != "N":
                    lead.append(parts.pop(0))
                unknown = [f for f in lead if f not in ISOLCPUS_FLAGS]
                if unknown:
                    raise CpuListError(f"unknown isolcpus flag(s) {', '.join(unknown)}")
                flags = tuple(lead)
                isolcpus = parse_cpulist(",".join(parts), last=last_cpu)
            elif key == "nohz_full":
                nohz = parse_cpulist(value or "", last=last_cpu)
            elif key == "rcu_nocbs":
                nocbs_present = True
                nocbs = parse_cpulist(value or "", last=last_cpu)
        except CpuListError as error:
            problems.append(f"{key}={value}: {error}")
    return KernelIsolation(isolcpus, flags, nohz, nocbs, nocbs_present, tuple(problems))


@frozen
class CpuLayout:
    """Which CPUs do housekeeping and which run benchmarks; ``source`` says how it was decided."""

    online: frozenset[int]
    housekeeping: frozenset[int]
    benchmark: frozenset[int]
    source: str  # "flags", "isolcpus", "auto" or "single-cpu"
    kernel: KernelIsolation = KernelIsolation()

    @property
    def has_isolation(self) -> bool:
        """True when benchmark and housekeeping cores are disjoint (the job never shares a core)."""
        return bool(self.benchmark) and not (self.benchmark & self.housekeeping)

    def describe(self) -> str:
        """One log line: the layout and where it came from."""
        shared = "" if self.has_isolation else " (shared: no isolation possible)"
        return (
            f"CPU layout ({self.source}): online {format_cpulist(self.online)}, "
            f"housekeeping {format_cpulist(self.housekeeping)}, "
            f"benchmark {format_cpulist(self.benchmark)}{shared}"
        )


def read_online_cpus(sys_root: Path) -> frozenset[int]:
    """Online CPU ids from ``<sys>/devices/system/cpu/online`` (holes allowed), else affinity."""
    path = sys_root / "devices/system/cpu/online"
    try:
        text = path.read_text()
    except OSError:
        return frozenset(os.sched_getaffinity(0))
    cpus = parse_cpulist(text)
    if not cpus:
        raise LayoutError(f"{path} lists no online CPUs")
    return cpus


def _siblings(sys_root: Path, cpu: int) -> frozenset[int]:
    path = sys_root / f"devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
    try:
        return parse_cpulist(path.read_text()) | {cpu}
    except (OSError, CpuListError):
        return frozenset({cpu})


def _flag_set(text: str, flag: str, online: frozenset[int]) -> frozenset[int]:
    try:
        cpus = parse_cpulist(text, last=max(online))
    except CpuListError as error:
        raise LayoutError(f"{flag}: {error}") from error
    if not cpus:
        raise LayoutError(f"{flag}: the list is empty")
    offline = cpus - online
    if offline:
        raise LayoutError(
            f"{flag}: CPU(s) {format_cpulist(offline)} are not online "
            f"(online: {format_cpulist(online)})"
        )
    return cpus


def choose_layout(
    online: frozenset[int],
    kernel: KernelIsolation = KernelIsolation(),
    *,
    benchmark_cpus: str | None = None,
    housekeeping_cpus: str | None = None,
    siblings: dict[int, frozenset[int]] | None = None,
) -> CpuLayout:
    """Split ``online`` into housekeeping and benchmark cores.

    Order of precedence: explicit ``--benchmark-cpus``/``--housekeeping-cpus``; then the kernel's
    isolated CPUs (benchmark = isolated, housekeeping = the rest); then automatic: the lowest CPU
    (two CPUs from 8 online) plus its SMT siblings for housekeeping, the rest for benchmarks. One
    CPU is shared by both (no isolation).
    """
    if not online:
        raise LayoutError("no online CPUs")
    if benchmark_cpus is not None or housekeeping_cpus is not None:
        bench = _flag_set(benchmark_cpus, "--benchmark-cpus", online) if benchmark_cpus else None
        house = (
            _flag_set(housekeeping_cpus, "--housekeeping-cpus", online)
            if housekeeping_cpus
            else None
        )
        if bench is None and house is not None:
            bench = online - house
        if house is None and bench is not None:
            house = online - bench
        assert bench is not None and house is not None
        if not bench:
            raise LayoutError("--housekeeping-cpus takes every online CPU; none left for benchmarks")
        if not house:
            raise LayoutError("--benchmark-cpus takes every online CPU; none left for housekeeping")
        overlap = bench & house
        if overlap:
            raise LayoutError(
                f"--benchmark-cpus and --housekeeping-cpus overlap on {format_cpulist(overlap)}"
            )
        return CpuLayout(online, house, bench, "flags", kernel)
    isolated = kernel.isolated & online
    if isolated and online - isolated:
        return CpuLayout(online, online - isolated, isolated, "isolcpus", kernel)
    ordered = sorted(online)
    if len(ordered) == 1:
        return CpuLayout(online, online, online, "single-cpu", kernel)
    chosen = frozenset(ordered[: 2 if len(ordered) >= 8 else 1])
    for cpu in sorted(chosen):
        extended = chosen | ((siblings or {}).get(cpu, frozenset()) & online)
        if online - extended:  # take whole cores, as long as benchmark cores remain
            chosen = extended
    return CpuLayout(online, chosen, online - chosen, "auto", kernel)


def detect_layout(
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    *,
    benchmark_cpus: str | None = None,
    housekeeping_cpus: str | None = None,
) -> CpuLayout:
    """Read the host (online CPUs, SMT siblings, ``/proc/cmdline``) and choose the layout."""
    online = read_online_cpus(sys_root)
    try:
        cmdline = (proc_root / "cmdline").read_text()
    except OSError:
        cmdline = ""
    kernel = parse_kernel_cmdline(cmdline, last_cpu=max(online))
    siblings = {cpu: _siblings(sys_root, cpu) for cpu in sorted(online)[:2]}
    return choose_layout(
        online,
        kernel,
        benchmark_cpus=benchmark_cpus,
        housekeeping_cpus=housekeeping_cpus,
        siblings=siblings,
    )


def pin_agent(layout: CpuLayout, *, pid: int = 0, proc_root: Path = Path("/proc")) -> frozenset[int]:
    """Pin every thread of process ``pid`` (0: this process) to the housekeeping cores.

    ``sched_setaffinity`` acts per thread, so each existing task is pinned; threads created later
    inherit the mask. Returns the affinity now in effect for the main thread.
    """
    target = pid or os.getpid()
    cpus = set(layout.housekeeping)
    try:
        tasks = [int(name) for name in os.listdir(proc_root / str(target) / "task")]
    except OSError:
        tasks = [target]
    for tid in tasks:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            continue  # the thread ended meanwhile
    return frozenset(os.sched_getaffinity(target))


@frozen
class CpuGrant:
    """The CPUs chosen for one job; ``note`` explains a shortfall against what the job asked for."""

    cpus: frozenset[int]
    requested: int | None
    note: str | None = None


def job_cpus(layout: CpuLayout, requested: int | None) -> CpuGrant:
    """The lowest ``requested`` benchmark CPUs (all of them when ``None``).

    A job asking for more CPUs than there are benchmark cores gets them all, and ``note`` says the
    job's threads share cores (the reference runner oversubscribes its VM the same way).
    """
    ordered = sorted(layout.benchmark)
    if requested is None:
        return CpuGrant(frozenset(ordered), None)
    if requested < 1:
        raise LayoutError(f"a job must ask for at least one CPU, got {requested}")
    if requested > len(ordered):
        return CpuGrant(
            frozenset(ordered),
            requested,
            f"job asked for {requested} CPUs; only {len(ordered)} benchmark CPU(s) "
            f"({format_cpulist(ordered)}) exist, so its threads share them",
        )
    return CpuGrant(frozenset(ordered[:requested]), requested)
