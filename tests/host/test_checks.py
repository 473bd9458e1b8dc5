"""Every preflight check's good and bad case on fake trees, and the report's fitness/exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner_agent.host import checks
from runner_agent.host.checks import HostRoots
from runner_agent.host.knobs import KNOBS, knob
from runner_agent.host.layout import choose_layout, parse_kernel_cmdline
from runner_agent.host.preflight import run_preflight
from runner_agent.host.report import EXIT_FIT, EXIT_UNFIT, EXIT_WARNINGS, Fitness, Status
from tests.host.conftest import FakeHost


def roots(host: FakeHost) -> HostRoots:
    return HostRoots(host.sys, host.proc)


def no_sleep(seconds: float) -> None:
    return None


def test_quiet_host_is_fit(quiet_host: FakeHost, tmp_path: Path) -> None:
    report = run_preflight(
        cache_dir=tmp_path, sys_root=quiet_host.sys, proc_root=quiet_host.proc, sleep=no_sleep, check_bwrap=False
    )
    bad = [f for f in report.findings if f.status not in (Status.OK,)]
    assert bad == [] or all(f.name == "disk" for f in bad), bad
    names = {f.name for f in report.findings}
    assert {*(k.name for k in KNOBS), "cstates", "irqbalance", "kernel_isolation", "cpu_layout",
            "cgroup_v2", "virtualisation", "disk", "clocksource"} <= names
    assert report.layout.startswith("CPU layout (isolcpus)")


# (knob, file, bad value, good-but-different value or None)
KNOB_CASES = [
    ("governor", "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "powersave\n", None),
    ("turbo", "sys/devices/system/cpu/intel_pstate/no_turbo", "0\n", None),
    ("smt", "sys/devices/system/cpu/smt/control", "on\n", "notsupported\n"),
    ("aslr", "proc/sys/kernel/randomize_va_space", "2\n", None),
    ("thp", "sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n", None),
    ("swappiness", "proc/sys/vm/swappiness", "60\n", "1\n"),
    ("perf_event_paranoid", "proc/sys/kernel/perf_event_paranoid", "2\n", "1\n"),
    ("nmi_watchdog", "proc/sys/kernel/nmi_watchdog", "1\n", None),
    ("numa_balancing", "proc/sys/kernel/numa_balancing", "1\n", None),
    ("timer_migration", "proc/sys/kernel/timer_migration", "1\n", None),
    ("soft_watchdog", "proc/sys/kernel/soft_watchdog", "1\n", None),
    ("ksm", "sys/kernel/mm/ksm/run", "1\n", None),
]


@pytest.mark.parametrize(("name", "rel", "bad", "other_good"), KNOB_CASES)
def test_knob_good_and_bad(quiet_host: FakeHost, name: str, rel: str, bad: str, other_good: str | None) -> None:
    good = checks.check_knob(roots(quiet_host), knob(name))
    assert good.status is Status.OK and good.fix == ""
    quiet_host.write(rel, bad)
    found = checks.check_knob(roots(quiet_host), knob(name))
    assert found.status is Status.WARN
    shown = "madvise" if name == "thp" else bad.strip()
    assert f"={shown}" in found.found or f": {shown}" in found.found
    assert found.why and found.fix
    if other_good is not None:
        quiet_host.write(rel, other_good)
        assert checks.check_knob(roots(quiet_host), knob(name)).status is Status.OK


def test_governor_summary_groups_cpus(quiet_host: FakeHost) -> None:
    quiet_host.write("sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "schedutil\n")
    quiet_host.write("sys/devices/system/cpu/cpu3/cpufreq/scaling_governor", "schedutil\n")
    found = checks.check_knob(roots(quiet_host), knob("governor"))
    assert found.found == "cpu0-1: performance; cpu2-3: schedutil"


def test_turbo_generic_boost(quiet_host: FakeHost) -> None:
    (quiet_host.sys / "devices/system/cpu/intel_pstate/no_turbo").unlink()
    assert checks.check_knob(roots(quiet_host), knob("turbo")).status is Status.NA
    quiet_host.write("sys/devices/system/cpu/cpufreq/boost", "1\n")
    assert checks.check_knob(roots(quiet_host), knob("turbo")).status is Status.WARN
    quiet_host.write("sys/devices/system/cpu/cpufreq/boost", "0\n")
    assert checks.check_knob(roots(quiet_host), knob("turbo")).status is Status.OK


def test_thp_unparseable_is_a_warning(quiet_host: FakeHost) -> None:
    quiet_host.write("sys/kernel/mm/transparent_hugepage/enabled", "always madvise never\n")
    found = checks.check_knob(roots(quiet_host), knob("thp"))
    assert found.status is Status.WARN and "unreadable" in found.found


def test_cstates(quiet_host: FakeHost) -> None:
    assert checks.check_cstates(roots(quiet_host)).status is Status.OK
    quiet_host.write("sys/devices/system/cpu/cpu0/cpuidle/state1/disable", "0\n")
    found = checks.check_cstates(roots(quiet_host))
    assert found.status is Status.WARN and "C6 (133 µs)" in found.found


def test_irqbalance(quiet_host: FakeHost) -> None:
    assert checks.check_irqbalance(roots(quiet_host)).status is Status.OK
    quiet_host.write("proc/555/comm", "irqbalance\n")
    found = checks.check_irqbalance(roots(quiet_host))
    assert found.status is Status.WARN and "pid 555" in found.found
    assert "irqbalance" in found.fix


def test_isolation_good_and_bad() -> None:
    online = frozenset(range(8))
    good = choose_layout(online, parse_kernel_cmdline("isolcpus=2-7 nohz_full=2-7 rcu_nocbs=2-7"))
    assert checks.check_isolation(good).status is Status.OK
    bad = choose_layout(online, parse_kernel_cmdline("quiet"))
    found = checks.check_isolation(bad)
    assert found.status is Status.WARN
    assert found.fix == "add to the kernel command line: isolcpus=domain,managed_irq,2-7 nohz_full=2-7 rcu_nocbs=2-7"
    partial = choose_layout(online, parse_kernel_cmdline("isolcpus=2-7"))
    assert checks.check_isolation(partial).status is Status.WARN  # no nohz_full: ticks remain
    broken = choose_layout(online, parse_kernel_cmdline("isolcpus=2-7 nohz_full=2-7 rcu_nocbs=x"))
    assert "malformed" in checks.check_isolation(broken).found


def test_layout_check() -> None:
    assert checks.check_layout(choose_layout(frozenset({0, 1}))).status is Status.OK
    assert checks.check_layout(choose_layout(frozenset({0}))).status is Status.WARN


def test_cgroup_check(quiet_host: FakeHost) -> None:
    assert checks.check_cgroup_v2(roots(quiet_host)).status is Status.OK
    (quiet_host.sys / "fs/cgroup/cgroup.controllers").unlink()
    quiet_host.write("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
    found = checks.check_cgroup_v2(roots(quiet_host))
    assert found.status is Status.WARN
    assert "hybrid cgroup layout" in found.found and "hugetlb" in found.found
    assert "falling back" in found.found


def test_virtualisation(quiet_host: FakeHost) -> None:
    ok = checks.check_virtualisation(roots(quiet_host), 0.1, no_sleep)
    assert ok.status is Status.OK and "steal 0.0%" in ok.found
    quiet_host.write("proc/cpuinfo", "flags\t: fpu hypervisor sse2\n")
    assert "hypervisor flag" in checks.check_virtualisation(roots(quiet_host), 0.1, no_sleep).found


def test_virtualisation_dmi(quiet_host: FakeHost) -> None:
    quiet_host.write("sys/devices/virtual/dmi/id/sys_vendor", "QEMU\n")
    found = checks.check_virtualisation(roots(quiet_host), 0.1, no_sleep)
    assert found.status is Status.WARN and "DMI sys_vendor is 'QEMU'" in found.found


def test_steal_time_is_sampled(quiet_host: FakeHost) -> None:
    def sleep_while_stealing(seconds: float) -> None:
        # 100 more jiffies in total, 20 of them stolen
        quiet_host.write("proc/stat", "cpu  160 0 60 1010 5 0 1 20 0 0\n")

    found = checks.check_virtualisation(roots(quiet_host), 1.0, sleep_while_stealing)
    assert found.status is Status.WARN and "steal 20.0% over 1s" in found.found


def test_bwrap_missing(tmp_path: Path) -> None:
    found = checks.check_bwrap(str(tmp_path))
    assert found.status is Status.FAIL and found.fix == "apt-get install bubblewrap"


def test_bwrap_broken(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    found = checks.check_bwrap(f"{tmp_path}:/usr/bin:/bin")
    assert found.status is Status.FAIL
    assert "No permissions to create new namespace" in found.found


def test_bwrap_works_here() -> None:
    found = checks.check_bwrap()
    if found.status is Status.FAIL and "not found" in found.found:
        pytest.skip("bwrap not installed")
    assert found.status is Status.OK, found


def test_disk(tmp_path: Path) -> None:
    found = checks.check_disk(tmp_path / "not" / "yet")
    assert found.status in (Status.OK, Status.WARN, Status.FAIL)
    assert str(tmp_path) in found.found
    assert found.status is not Status.OK or "GiB free" in found.found


def test_disk_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the thresholds themselves, via checks' constants rather than a fake filesystem
    monkeypatch.setattr(checks, "DISK_FAIL_BYTES", 1 << 62)
    assert checks.check_disk(tmp_path).status is Status.FAIL
    monkeypatch.setattr(checks, "DISK_FAIL_BYTES", 0)
    monkeypatch.setattr(checks, "DISK_WARN_BYTES", 1 << 62)
    assert checks.check_disk(tmp_path).status is Status.WARN
    monkeypatch.setattr(checks, "DISK_WARN_BYTES", 0)
    assert checks.check_disk(tmp_path).status is Status.OK


def test_clocksource(quiet_host: FakeHost) -> None:
    assert checks.check_clocksource(roots(quiet_host)).status is Status.OK
    quiet_host.write("sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet\n")
    found = checks.check_clocksource(roots(quiet_host))
    assert found.status is Status.WARN
    assert found.fix.startswith("echo tsc > ")


def test_missing_controls_are_not_applicable(tmp_path: Path) -> None:
    empty = HostRoots(tmp_path / "sys", tmp_path / "proc")
    for k in KNOBS:
        assert checks.check_knob(empty, k).status is Status.NA
    assert checks.check_clocksource(empty).status is Status.NA
    assert checks.check_cstates(empty).status is Status.NA


def test_fitness_and_exit_codes(quiet_host: FakeHost, tmp_path: Path) -> None:
    def run() -> object:
        return run_preflight(
            cache_dir=tmp_path, sys_root=quiet_host.sys, proc_root=quiet_host.proc,
            sleep=no_sleep, check_bwrap=False,
        )

    report = run()
    if report.by_name("disk").status is not Status.OK:  # type: ignore[attr-defined]
        pytest.skip("little free disk here")
    assert report.fitness is Fitness.FIT and report.exit_code == EXIT_FIT  # type: ignore[attr-defined]
    quiet_host.write("proc/sys/vm/swappiness", "60\n")
    warned = run()
    assert warned.exit_code == EXIT_WARNINGS  # type: ignore[attr-defined]
    assert "swappiness=warn" in warned.summary()  # type: ignore[attr-defined]
    failing = run_preflight(
        cache_dir=tmp_path, sys_root=quiet_host.sys, proc_root=quiet_host.proc,
        sleep=no_sleep, bwrap_path=str(tmp_path),
    )
    assert failing.fitness is Fitness.UNFIT and failing.exit_code == EXIT_UNFIT


def test_bad_cpu_flags_become_a_failed_finding(quiet_host: FakeHost, tmp_path: Path) -> None:
    report = run_preflight(
        cache_dir=tmp_path, sys_root=quiet_host.sys, proc_root=quiet_host.proc,
        sleep=no_sleep, check_bwrap=False, benchmark_cpus="9",
    )
    assert report.by_name("cpu_layout").status is Status.FAIL
    assert "not online" in report.by_name("cpu_layout").found


def test_bwrap_timeout_is_a_failure(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)

    def timing_out(*args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(cmd="bwrap", timeout=10)

    found = checks.check_bwrap(str(tmp_path), runner=timing_out)
    assert found.status is Status.FAIL and "could not run" in found.found


def test_irq_affinity(quiet_host: FakeHost) -> None:
    layout = choose_layout(frozenset({0, 1, 2, 3}), parse_kernel_cmdline("isolcpus=1-3"))
    assert checks.check_irq_affinity(roots(quiet_host), layout).status is Status.OK
    quiet_host.write("proc/irq/11/smp_affinity_list", "0-3\n")
    quiet_host.write("sys/devices/virtual/workqueue/cpumask", "f\n")
    found = checks.check_irq_affinity(roots(quiet_host), layout)
    assert found.status is Status.WARN
    assert found.found.startswith("2 of 4 not limited to housekeeping CPUs 0: cpumask=f, 11=0-3")
    assert checks.check_irq_affinity(roots(quiet_host), choose_layout(frozenset({0}))).status is Status.NA


def test_tuning_record(tmp_path: Path) -> None:
    from runner_agent.host.tuning import RECORD_NAME

    assert checks.check_tuning_record(tmp_path).status is Status.OK
    (tmp_path / RECORD_NAME).write_text("{}")
    found = checks.check_tuning_record(tmp_path)
    assert found.status is Status.WARN
    assert found.fix == f"runner-agent check --restore --state-dir {tmp_path}"
