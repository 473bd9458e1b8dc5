"""Fake ``/sys`` and ``/proc`` trees for host tests: ``quiet_host`` is a machine every check likes."""

from __future__ import annotations

from pathlib import Path

import pytest
from attrs import frozen


@frozen
class FakeHost:
    sys: Path
    proc: Path

    def write(self, rel: str, text: str) -> Path:
        """Write ``text`` to ``rel`` under the tree (``sys/...`` or ``proc/...``)."""
        root, _, rest = rel.partition("/")
        path = (self.sys if root == "sys" else self.proc) / rest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def read(self, rel: str) -> str:
        root, _, rest = rel.partition("/")
        return ((self.sys if root == "sys" else self.proc) / rest).read_text()


QUIET_FILES = {
    "sys/devices/system/cpu/online": "0-3\n",
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "performance\n",
    "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor": "performance\n",
    "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor": "performance\n",
    "sys/devices/system/cpu/cpu3/cpufreq/scaling_governor": "performance\n",
    "sys/devices/system/cpu/intel_pstate/no_turbo": "1\n",
    "sys/devices/system/cpu/smt/control": "off\n",
    "sys/kernel/mm/transparent_hugepage/enabled": "always madvise [never]\n",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise madvise [never]\n",
    "sys/kernel/mm/ksm/run": "0\n",
    "sys/devices/system/clocksource/clocksource0/current_clocksource": "tsc\n",
    "sys/devices/system/clocksource/clocksource0/available_clocksource": "tsc hpet acpi_pm\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state0/name": "POLL\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state0/latency": "0\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state0/disable": "0\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state1/name": "C6\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state1/latency": "133\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state1/disable": "1\n",
    "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
    "sys/fs/cgroup/cgroup.subtree_control": "",
    "sys/fs/cgroup/cgroup.procs": "",
    "sys/fs/cgroup/runner.service/cgroup.controllers": "cpuset cpu memory pids\n",
    "sys/fs/cgroup/runner.service/cgroup.subtree_control": "",
    "sys/fs/cgroup/runner.service/cgroup.procs": "4242\n4243\n",
    "proc/sys/kernel/randomize_va_space": "0\n",
    "proc/sys/vm/swappiness": "10\n",
    "proc/sys/kernel/perf_event_paranoid": "-1\n",
    "proc/sys/kernel/nmi_watchdog": "0\n",
    "proc/sys/kernel/numa_balancing": "0\n",
    "proc/sys/kernel/timer_migration": "0\n",
    "proc/sys/kernel/soft_watchdog": "0\n",
    "proc/cmdline": "root=/dev/sda1 isolcpus=domain,managed_irq,1-3 nohz_full=1-3 rcu_nocbs=1-3 quiet\n",
    "proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme sse2 avx2\n",
    "proc/stat": "cpu  100 0 50 1000 5 0 1 0 0 0\ncpu0 25 0 12 250 1 0 0 0 0 0\n",
    "proc/self/cgroup": "0::/runner.service\n",
    "proc/irq/default_smp_affinity": "1\n",
    "proc/irq/10/smp_affinity_list": "0\n",
    "proc/irq/11/smp_affinity_list": "0\n",
    "sys/devices/virtual/workqueue/cpumask": "00000000,00000001\n",
    "proc/1/comm": "init\n",
    "proc/77/comm": "sshd\n",
}


def make_quiet_host(base: Path) -> FakeHost:
    host = FakeHost(base / "sys", base / "proc")
    for rel, text in QUIET_FILES.items():
        host.write(rel, text)
    return host


@pytest.fixture
def quiet_host(tmp_path: Path) -> FakeHost:
    return make_quiet_host(tmp_path / "root")
