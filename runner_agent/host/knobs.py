"""The kernel settings that add benchmark noise: where each lives, its quiet value, why it matters
and how to fix it by hand. Shared by the preflight checks (read) and the tuner (write, restore)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from runner_agent.host.cpulist import format_cpulist, format_cpumask, parse_cpulist, parse_cpumask

_CPU_DIR = re.compile(r"cpu\d+")


def bracketed(text: str) -> str | None:
    """The selected word of a sysfs choice file (``always [madvise] never`` → ``madvise``)."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _int_at_most(limit: int) -> Callable[[str], bool]:
    def ok(value: str) -> bool:
        try:
            return int(value) <= limit
        except ValueError:
            return False

    return ok


def _one_of(*values: str) -> Callable[[str], bool]:
    def ok(value: str) -> bool:
        return value in values

    return ok


@frozen
class Setting:
    """One file of a knob: ``target`` is written by the tuner when ``ok`` rejects the value."""

    path: Path
    target: str
    ok: Callable[[str], bool]
    choice: bool = False  # a ``[selected]`` choice file such as THP's

    def read(self) -> str:
        text = self.path.read_text()
        if self.choice:
            value = bracketed(text)
            if value is None and len(text.split()) == 1:
                value = text.strip()  # a lone word is that choice
            if value is None:
                raise ValueError(f"{self.path}: no [selected] value in {text.strip()!r}")
            return value
        return text.strip()


@frozen
class Knob:
    """A tunable kernel setting; ``settings`` lists the files that exist on this host."""

    name: str
    title: str
    why: str
    fix: str
    settings: Callable[[Path, Path], list[Setting]]  # (sys_root, proc_root) -> existing files


def _single(root: str, rel: str, target: str, ok: Callable[[str], bool], choice: bool = False) -> Callable[[Path, Path], list[Setting]]:
    def settings(sys_root: Path, proc_root: Path) -> list[Setting]:
        path = (sys_root if root == "sys" else proc_root) / rel
        return [Setting(path, target, ok, choice)] if path.exists() else []

    return settings


def _governors(sys_root: Path, proc_root: Path) -> list[Setting]:
    base = sys_root / "devices/system/cpu"
    try:
        names = sorted((n for n in base.iterdir() if _CPU_DIR.fullmatch(n.name)), key=lambda p: int(p.name[3:]))
    except OSError:
        return []
    paths = [n / "cpufreq/scaling_governor" for n in names]
    return [Setting(p, "performance", _one_of("performance")) for p in paths if p.exists()]


def _turbo(sys_root: Path, proc_root: Path) -> list[Setting]:
    no_turbo = sys_root / "devices/system/cpu/intel_pstate/no_turbo"
    if no_turbo.exists():
        return [Setting(no_turbo, "1", _one_of("1"))]
    boost = sys_root / "devices/system/cpu/cpufreq/boost"
    if boost.exists():
        return [Setting(boost, "0", _one_of("0"))]
    return []


def _thp(sys_root: Path, proc_root: Path) -> list[Setting]:
    base = sys_root / "kernel/mm/transparent_hugepage"
    return [
        Setting(base / name, "never", _one_of("never"), choice=True)
        for name in ("enabled", "defrag")
        if (base / name).exists()
    ]


KNOBS: tuple[Knob, ...] = (
    Knob(
        "governor",
        "CPU frequency governor",
        "a dynamic governor changes clock speed with load, so the same work takes varying time",
        "echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor",
        _governors,
    ),
    Knob(
        "turbo",
        "turbo boost",
        "turbo clocks depend on temperature and on how many cores are busy, so results drift",
        "echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo "
        "(or echo 0 > /sys/devices/system/cpu/cpufreq/boost)",
        _turbo,
    ),
    Knob(
        "smt",
        "simultaneous multithreading",
        "a sibling hyperthread shares the core's execution units and caches with the benchmark",
        "echo off > /sys/devices/system/cpu/smt/control (or boot with nosmt)",
        _single(
            "sys",
            "devices/system/cpu/smt/control",
            "off",
            _one_of("off", "forceoff", "notsupported", "notimplemented"),
        ),
    ),
    Knob(
        "aslr",
        "address space layout randomisation",
        "random placement of stack, heap and libraries changes cache and TLB behaviour run to run",
        "sysctl -w kernel.randomize_va_space=0",
        _single("proc", "sys/kernel/randomize_va_space", "0", _one_of("0")),
    ),
    Knob(
        "thp",
        "transparent huge pages",
        "khugepaged compaction and huge-page faults add unpredictable pauses and memory layout",
        "echo never | tee /sys/kernel/mm/transparent_hugepage/{enabled,defrag}",
        _thp,
    ),
    Knob(
        "swappiness",
        "vm.swappiness",
        "a high swappiness lets the kernel page out benchmark memory under pressure",
        "sysctl -w vm.swappiness=10",
        _single("proc", "sys/vm/swappiness", "10", _int_at_most(10)),
    ),
    Knob(
        "perf_event_paranoid",
        "kernel.perf_event_paranoid",
        "benchmarks that read hardware counters (perf, criterion-perf) need it at 1 or below",
        "sysctl -w kernel.perf_event_paranoid=-1",
        _single("proc", "sys/kernel/perf_event_paranoid", "-1", _int_at_most(1)),
    ),
    Knob(
        "nmi_watchdog",
        "NMI watchdog",
        "the watchdog fires periodic non-maskable interrupts on every CPU and holds a perf counter",
        "sysctl -w kernel.nmi_watchdog=0",
        _single("proc", "sys/kernel/nmi_watchdog", "0", _one_of("0")),
    ),
    Knob(
        "numa_balancing",
        "automatic NUMA balancing",
        "page migration between NUMA nodes adds page faults and moves memory during a run",
        "sysctl -w kernel.numa_balancing=0",
        _single("proc", "sys/kernel/numa_balancing", "0", _one_of("0")),
    ),
    Knob(
        "timer_migration",
        "timer migration",
        "timers migrating onto benchmark CPUs wake them up",
        "sysctl -w kernel.timer_migration=0",
        _single("proc", "sys/kernel/timer_migration", "0", _one_of("0")),
    ),
    Knob(
        "soft_watchdog",
        "soft lockup watchdog",
        "the soft watchdog runs a periodic kernel thread on every CPU",
        "sysctl -w kernel.soft_watchdog=0",
        _single("proc", "sys/kernel/soft_watchdog", "0", _one_of("0")),
    ),
    Knob(
        "ksm",
        "kernel samepage merging",
        "ksmd scans and merges pages in the background, stealing CPU and causing copy-on-write faults",
        "echo 0 > /sys/kernel/mm/ksm/run",
        _single("sys", "kernel/mm/ksm/run", "0", _one_of("0")),
    ),
)

KNOB_NAMES = tuple(k.name for k in KNOBS)


def knob(name: str) -> Knob:
    for k in KNOBS:
        if k.name == name:
            return k
    raise KeyError(f"unknown tuning knob {name!r} (known: {', '.join(KNOB_NAMES)})")


IRQ_STEERING = "irq_steering"
IRQ_STEERING_WHY = (
    "device interrupts and unbound kernel workqueue workers landing on benchmark cores steal "
    "cycles mid-measurement"
)


def _same_cpus(cpus: frozenset[int], parse: Callable[[str], frozenset[int]]) -> Callable[[str], bool]:
    def ok(value: str) -> bool:
        try:
            return parse(value) == cpus
        except ValueError:
            return False

    return ok


def kernel_work_settings(sys_root: Path, proc_root: Path, housekeeping: frozenset[int]) -> list[Setting]:
    """Files that steer IRQs (default and each movable IRQ) and unbound workqueues to
    ``housekeeping``: ``/proc/irq/default_smp_affinity``, ``/sys/devices/virtual/workqueue/cpumask``
    (hex masks) and ``/proc/irq/<n>/smp_affinity_list`` (CPU lists)."""
    mask, cpulist = format_cpumask(housekeeping), format_cpulist(housekeeping)
    settings: list[Setting] = []
    for path in (proc_root / "irq/default_smp_affinity", sys_root / "devices/virtual/workqueue/cpumask"):
        if path.exists():
            settings.append(Setting(path, mask, _same_cpus(housekeeping, parse_cpumask)))
    irq_dir = proc_root / "irq"
    try:
        irqs = sorted((p for p in irq_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    except OSError:
        irqs = []
    for irq in irqs:
        path = irq / "smp_affinity_list"
        if path.is_file():
            settings.append(Setting(path, cpulist, _same_cpus(housekeeping, parse_cpulist)))
    return settings
