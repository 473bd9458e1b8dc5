"""The individual preflight checks. Each reads the host under the given roots and returns one
``Finding``: what was checked, what was found, why it matters for benchmark noise, the exact fix."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from runner_agent.host.cgroups import REQUIRED_CONTROLLERS, probe_cgroup_v2
from runner_agent.host.cpulist import format_cpulist
from runner_agent.host.knobs import IRQ_STEERING_WHY, Knob, kernel_work_settings
from runner_agent.host.layout import CpuLayout
from runner_agent.host.report import Finding, Status
from runner_agent.host.tuning import RECORD_NAME

GiB = 1024**3
DISK_FAIL_BYTES = 1 * GiB
DISK_WARN_BYTES = 10 * GiB
STEAL_WARN_FRACTION = 0.01
HYPERVISOR_VENDORS = ("QEMU", "KVM", "VMware", "Xen", "innotek", "Virtual Machine", "Amazon EC2", "Google")
GOOD_CLOCKSOURCES = ("tsc", "arch_sys_counter")


@frozen
class HostRoots:
    """Where the host's pseudo-filesystems are (``/sys``, ``/proc``); fake trees in tests."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")


def _summarise(values: list[tuple[str, str]]) -> str:
    """``[(cpu0, a), (cpu1, a), (cpu2, b)]`` → ``cpu0-1: a; cpu2: b``."""
    groups: dict[str, list[int]] = {}
    plain: list[str] = []
    for label, value in values:
        if label.startswith("cpu") and label[3:].isdigit():
            groups.setdefault(value, []).append(int(label[3:]))
        else:
            plain.append(f"{label}={value}")
    parts = [f"cpu{format_cpulist(cpus)}: {value}" for value, cpus in groups.items()]
    return "; ".join(parts + plain)


def check_knob(roots: HostRoots, knob: Knob) -> Finding:
    """A tunable kernel setting: OK when every file already holds a quiet value."""
    settings = knob.settings(roots.sys, roots.proc)
    if not settings:
        return Finding(knob.name, Status.NA, knob.title, "not present on this kernel/platform", knob.why)
    found: list[tuple[str, str]] = []
    bad = False
    for setting in settings:
        label = setting.path.parent.parent.name if knob.name == "governor" else setting.path.name
        try:
            value = setting.read()
        except (OSError, ValueError) as error:
            found.append((label, f"unreadable ({error})"))
            bad = True
            continue
        found.append((label, value))
        bad = bad or not setting.ok(value)
    checked = f"{knob.title} ({', '.join(str(s.path) for s in settings[:2])}{', …' if len(settings) > 2 else ''})"
    return Finding(
        knob.name,
        Status.WARN if bad else Status.OK,
        checked,
        _summarise(found),
        knob.why,
        f"{knob.fix}  (or: runner-agent run --tune)" if bad else "",
    )


def check_irqbalance(roots: HostRoots) -> Finding:
    """irqbalance moves interrupts onto benchmark cores behind our back."""
    running: list[str] = []
    try:
        entries = list(os.scandir(roots.proc))
    except OSError as error:
        return Finding("irqbalance", Status.WARN, "irqbalance (/proc/*/comm)", f"cannot scan {roots.proc}: {error}", "", "")
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue  # the process ended while we looked
        if comm == "irqbalance":
            running.append(entry.name)
    why = "irqbalance re-spreads device interrupts over all CPUs, including benchmark cores"
    if running:
        return Finding(
            "irqbalance",
            Status.WARN,
            "irqbalance daemon (/proc/*/comm)",
            f"running (pid {', '.join(sorted(running, key=int))})",
            why,
            "systemctl disable --now irqbalance (or IRQBALANCE_BANNED_CPULIST=<benchmark cpus>)",
        )
    return Finding("irqbalance", Status.OK, "irqbalance daemon (/proc/*/comm)", "not running", why)


def check_isolation(layout: CpuLayout) -> Finding:
    """Kernel-level isolation of the benchmark cores (``isolcpus``, ``nohz_full``, ``rcu_nocbs``)."""
    kernel = layout.kernel
    bench = format_cpulist(layout.benchmark)
    found = ", ".join(
        f"{name}={format_cpulist(cpus) or '(set)'}"
        for name, cpus, present in (
            ("isolcpus", kernel.isolcpus, bool(kernel.isolcpus)),
            ("nohz_full", kernel.nohz_full, bool(kernel.nohz_full)),
            ("rcu_nocbs", kernel.rcu_nocbs, kernel.rcu_nocbs_present),
        )
        if present
    ) or "none of isolcpus=, nohz_full=, rcu_nocbs="
    if kernel.problems:
        found += "; malformed: " + "; ".join(kernel.problems)
    why = "without them the scheduler, timer ticks and RCU callbacks still run on benchmark cores"
    fix = f"add to the kernel command line: isolcpus=domain,managed_irq,{bench} nohz_full={bench} rcu_nocbs={bench}"
    covered = layout.benchmark <= kernel.isolated and layout.has_isolation
    if covered and not kernel.problems and layout.benchmark <= kernel.nohz_full:
        return Finding("kernel_isolation", Status.OK, "kernel command line (/proc/cmdline)", found, why)
    return Finding("kernel_isolation", Status.WARN, "kernel command line (/proc/cmdline)", found, why, fix)


def check_layout(layout: CpuLayout) -> Finding:
    why = "the agent's heartbeat and I/O must not run on the cores that run the benchmark"
    if layout.has_isolation:
        return Finding("cpu_layout", Status.OK, "CPU layout", layout.describe(), why)
    return Finding(
        "cpu_layout",
        Status.WARN,
        "CPU layout",
        layout.describe(),
        why,
        "use a machine with at least two CPUs, or pass --benchmark-cpus/--housekeeping-cpus",
    )


def check_cgroup_v2(roots: HostRoots, cgroup_root: Path | None = None) -> Finding:
    support = probe_cgroup_v2(cgroup_root or roots.sys / "fs/cgroup", roots.proc)
    why = "per-job cgroups pin the job to its cores (cpuset), cap memory and swap, and measure peak memory"
    checked = f"cgroup v2 with {', '.join(REQUIRED_CONTROLLERS)} delegated to us"
    if support.available:
        return Finding("cgroup_v2", Status.OK, checked, f"usable under {support.parent}", why)
    return Finding(
        "cgroup_v2",
        Status.WARN,
        checked,
        f"unavailable: {support.reason}; falling back to CPU affinity and rlimits",
        why,
        "boot with systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all and run the agent in a unit "
        "with Delegate=yes",
    )


def read_cpu_times(proc_root: Path) -> tuple[int, int]:
    """(total jiffies, steal jiffies) from the aggregate ``cpu`` line of ``/proc/stat``."""
    for line in (proc_root / "stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            numbers = [int(f) for f in fields[1:]]
            steal = numbers[7] if len(numbers) > 7 else 0
            # guest time is already included in user/nice
            return sum(numbers[:8]), steal
    raise ValueError(f"{proc_root}/stat has no aggregate 'cpu' line")


def check_virtualisation(
    roots: HostRoots, sample_seconds: float, sleep: Callable[[float], None]
) -> Finding:
    """Hypervisor flag / DMI vendor, and steal time sampled over ``sample_seconds``."""
    reasons: list[str] = []
    try:
        for line in (roots.proc / "cpuinfo").read_text().splitlines():
            if line.startswith("flags") and "hypervisor" in line.split():
                reasons.append("cpuinfo has the hypervisor flag")
                break
    except OSError:
        pass
    for name in ("sys_vendor", "product_name"):
        try:
            value = (roots.sys / "devices/virtual/dmi/id" / name).read_text().strip()
        except OSError:
            continue
        if any(v in value for v in HYPERVISOR_VENDORS):
            reasons.append(f"DMI {name} is {value!r}")
    steal_text = "steal not sampled"
    steal_fraction = 0.0
    try:
        total0, steal0 = read_cpu_times(roots.proc)
        sleep(sample_seconds)
        total1, steal1 = read_cpu_times(roots.proc)
        elapsed = total1 - total0
        steal_fraction = (steal1 - steal0) / elapsed if elapsed > 0 else 0.0
        steal_text = f"steal {steal_fraction:.1%} over {sample_seconds:g}s"
    except (OSError, ValueError) as error:
        steal_text = f"steal unreadable ({error})"
    why = "a hypervisor can deschedule our vCPUs (steal time) and shares caches with other guests"
    checked = "virtualisation (/proc/cpuinfo hypervisor flag, DMI, steal time in /proc/stat)"
    if reasons or steal_fraction >= STEAL_WARN_FRACTION:
        return Finding(
            "virtualisation",
            Status.WARN,
            checked,
            f"virtualised host: {'; '.join(reasons) or 'steal time seen'}; {steal_text}",
            why,
            "use bare metal, or dedicated (pinned, not overcommitted) vCPUs",
        )
    return Finding("virtualisation", Status.OK, checked, f"bare metal; {steal_text}", why)


def check_bwrap(
    path: str | None = None, *, timeout: float = 10.0, runner: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
) -> Finding:
    """bubblewrap must exist and actually start a sandbox (a trial run of ``true``)."""
    why = "jobs run in a bubblewrap sandbox; without it the agent refuses jobs (or runs them unsandboxed)"
    checked = "bubblewrap sandbox (trial run)"
    binary = shutil.which("bwrap", path=path)
    if binary is None:
        return Finding("bwrap", Status.FAIL, checked, "bwrap not found on PATH", why, "apt-get install bubblewrap")
    true_bin = shutil.which("true", path=path) or "/bin/true"
    argv = [binary, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all", "--die-with-parent", true_bin]
    try:
        done = runner(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Finding("bwrap", Status.FAIL, checked, f"{binary} could not run: {error}", why, "check that bwrap is executable and user namespaces are allowed")
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[:300]
        return Finding(
            "bwrap",
            Status.FAIL,
            checked,
            f"{binary} failed with exit {done.returncode}: {err}",
            why,
            "allow unprivileged user namespaces (sysctl -w kernel.unprivileged_userns_clone=1 / "
            "kernel.apparmor_restrict_unprivileged_userns=0) or run the agent as root",
        )
    return Finding("bwrap", Status.OK, checked, f"{binary} works", why)


def check_disk(cache_dir: Path) -> Finding:
    """Free space where images are cached."""
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    why = "image layers are unpacked in the cache dir; a full disk fails jobs and slows I/O"
    checked = f"free disk in the cache dir {cache_dir}"
    try:
        free = shutil.disk_usage(probe).free
    except OSError as error:
        return Finding("disk", Status.FAIL, checked, f"cannot stat {probe}: {error}", why, f"create {cache_dir} or pass --cache-dir")
    found = f"{free / GiB:.1f} GiB free on {probe}"
    if free < DISK_FAIL_BYTES:
        return Finding("disk", Status.FAIL, checked, found, why, f"free space under {probe} (at least {DISK_WARN_BYTES // GiB} GiB) or pass --cache-dir")
    if free < DISK_WARN_BYTES:
        return Finding("disk", Status.WARN, checked, found, why, f"free space under {probe} (at least {DISK_WARN_BYTES // GiB} GiB) or pass --cache-dir")
    return Finding("disk", Status.OK, checked, found, why)


def check_clocksource(roots: HostRoots) -> Finding:
    base = roots.sys / "devices/system/clocksource/clocksource0"
    checked = f"clock source ({base}/current_clocksource)"
    why = "a slow or paravirtual clock source (hpet, acpi_pm, kvm-clock) makes every timer read costly and jittery"
    try:
        current = (base / "current_clocksource").read_text().strip()
    except OSError:
        return Finding("clocksource", Status.NA, checked, "not available", why)
    try:
        available = (base / "available_clocksource").read_text().split()
    except OSError:
        available = []
    if current in GOOD_CLOCKSOURCES:
        return Finding("clocksource", Status.OK, checked, current, why)
    better = [c for c in GOOD_CLOCKSOURCES if c in available]
    fix = (
        f"echo {better[0]} > {base}/current_clocksource (and boot with clocksource={better[0]})"
        if better
        else "use a machine with a stable TSC (clocksource=tsc tsc=reliable)"
    )
    return Finding("clocksource", Status.WARN, checked, f"{current} (available: {' '.join(available) or '?'})", why, fix)


def check_cstates(roots: HostRoots) -> Finding:
    """Deep idle states add wake-up latency to a benchmark that blocks or sleeps."""
    base = roots.sys / "devices/system/cpu/cpu0/cpuidle"
    checked = f"CPU idle states ({base})"
    why = "waking from a deep C-state takes tens to hundreds of microseconds, adding latency noise"
    try:
        states = sorted(p for p in base.iterdir() if p.name.startswith("state"))
    except OSError:
        return Finding("cstates", Status.NA, checked, "no cpuidle states exposed", why)
    deep: list[str] = []
    for state in states:
        try:
            name = (state / "name").read_text().strip()
            latency = int((state / "latency").read_text().strip())
            disabled = (state / "disable").read_text().strip() == "1"
        except (OSError, ValueError):
            continue
        if latency > 1 and not disabled:
            deep.append(f"{name} ({latency} µs)")
    if deep:
        return Finding(
            "cstates",
            Status.WARN,
            checked,
            "deep idle states enabled: " + ", ".join(deep),
            why,
            "runner-agent run --tune (holds /dev/cpu_dma_latency at 0 while running) or boot with "
            "intel_idle.max_cstate=1 processor.max_cstate=1",
        )
    return Finding("cstates", Status.OK, checked, "no deep idle state enabled", why)


def check_irq_affinity(roots: HostRoots, layout: CpuLayout) -> Finding:
    """Device IRQs and unbound workqueues should stay off the benchmark cores."""
    checked = "IRQ and workqueue affinity (/proc/irq, /sys/devices/virtual/workqueue/cpumask)"
    if not layout.has_isolation:
        return Finding("irq_affinity", Status.NA, checked, "no separate benchmark cores", IRQ_STEERING_WHY)
    settings = kernel_work_settings(roots.sys, roots.proc, layout.housekeeping)
    if not settings:
        return Finding("irq_affinity", Status.NA, checked, "not exposed here", IRQ_STEERING_WHY)
    loose: list[str] = []
    for setting in settings:
        try:
            value = setting.read()
        except OSError:
            continue
        if not setting.ok(value):
            label = setting.path.parent.name if setting.path.name == "smp_affinity_list" else setting.path.name
            loose.append(f"{label}={value}")
    bench = format_cpulist(layout.benchmark)
    if loose:
        shown = ", ".join(loose[:8]) + (f" (+{len(loose) - 8} more)" if len(loose) > 8 else "")
        return Finding(
            "irq_affinity",
            Status.WARN,
            checked,
            f"{len(loose)} of {len(settings)} not limited to housekeeping CPUs "
            f"{format_cpulist(layout.housekeeping)}: {shown}",
            IRQ_STEERING_WHY,
            f"runner-agent run --tune (steers them), or write {format_cpulist(layout.housekeeping)} to "
            f"/proc/irq/*/smp_affinity_list and stop irqbalance; benchmark CPUs are {bench}",
        )
    return Finding("irq_affinity", Status.OK, checked, f"all {len(settings)} on housekeeping CPUs", IRQ_STEERING_WHY)


def check_tuning_record(state_dir: Path) -> Finding:
    """A tuning record left in the state dir means a crashed agent left host settings changed."""
    path = state_dir / RECORD_NAME
    checked = f"leftover tuning record ({path})"
    why = "a crashed `run --tune` left kernel settings changed; they are restored on the next start"
    if not path.exists():
        return Finding("tuning_record", Status.OK, checked, "none", why)
    return Finding(
        "tuning_record",
        Status.WARN,
        checked,
        "present: host settings are still tuned by a previous run",
        why,
        f"runner-agent check --restore --state-dir {state_dir}",
    )
