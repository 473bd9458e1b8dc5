"""CPU layout: kernel isolation parsing, layout choice, job CPU choice, and real pinning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner_agent.host.layout import (
    CpuLayout,
    KernelIsolation,
    LayoutError,
    choose_layout,
    detect_layout,
    job_cpus,
    parse_kernel_cmdline,
    pin_agent,
)
from tests.host.conftest import FakeHost


def cpus(*ids: int) -> frozenset[int]:
    return frozenset(ids)


def test_isolcpus_with_flags() -> None:
    k = parse_kernel_cmdline("ro isolcpus=domain,managed_irq,2-5 quiet")
    assert k.isolcpus == cpus(2, 3, 4, 5)
    assert k.isolcpus_flags == ("domain", "managed_irq")
    assert k.problems == ()


def test_isolcpus_plain_and_odd_list() -> None:
    k = parse_kernel_cmdline("isolcpus=1-3,8,10-11 nohz_full=1-3 rcu_nocbs")
    assert k.isolcpus == cpus(1, 2, 3, 8, 10, 11)
    assert k.nohz_full == cpus(1, 2, 3)
    assert k.rcu_nocbs_present and k.rcu_nocbs == frozenset()


def test_args_after_double_dash_belong_to_init() -> None:
    k = parse_kernel_cmdline("quiet -- isolcpus=1-3")
    assert k.isolcpus == frozenset()


def test_nohz_full_alone_isolates_and_n_means_last() -> None:
    k = parse_kernel_cmdline("nohz_full=2-N", last_cpu=5)
    assert k.isolated == cpus(2, 3, 4, 5)


def test_malformed_parameters_are_reported_not_dropped() -> None:
    k = parse_kernel_cmdline("isolcpus=bogus,1-2 nohz_full=3-1")
    assert len(k.problems) == 2
    assert "unknown isolcpus flag(s) bogus" in k.problems[0]
    assert "backwards" in k.problems[1]


def test_auto_small_machine_reserves_one_core() -> None:
    layout = choose_layout(cpus(0, 1, 2, 3))
    assert layout.housekeeping == cpus(0)
    assert layout.benchmark == cpus(1, 2, 3)
    assert layout.has_isolation and layout.source == "auto"


def test_auto_large_machine_with_holes_reserves_two_lowest() -> None:
    online = cpus(0, 1, 2, 3, 8, 10, 11, 12)
    layout = choose_layout(online)
    assert layout.housekeeping == cpus(0, 1)
    assert layout.benchmark == cpus(2, 3, 8, 10, 11, 12)


def test_auto_offline_hole_at_zero() -> None:
    layout = choose_layout(cpus(2, 3, 5))
    assert layout.housekeeping == cpus(2)
    assert layout.benchmark == cpus(3, 5)


def test_auto_takes_smt_siblings_of_housekeeping_core() -> None:
    layout = choose_layout(cpus(0, 1, 2, 3), siblings={0: cpus(0, 2)})
    assert layout.housekeeping == cpus(0, 2)
    assert layout.benchmark == cpus(1, 3)


def test_single_cpu_shares() -> None:
    layout = choose_layout(cpus(4))
    assert layout.housekeeping == layout.benchmark == cpus(4)
    assert not layout.has_isolation
    assert "no isolation" in layout.describe()


def test_isolcpus_decides_layout() -> None:
    kernel = parse_kernel_cmdline("isolcpus=domain,managed_irq,2-5")
    layout = choose_layout(cpus(0, 1, 2, 3, 4, 5, 6, 7), kernel)
    assert layout.source == "isolcpus"
    assert layout.benchmark == cpus(2, 3, 4, 5)
    assert layout.housekeeping == cpus(0, 1, 6, 7)


def test_isolcpus_covering_everything_is_ignored() -> None:
    layout = choose_layout(cpus(0, 1), KernelIsolation(isolcpus=cpus(0, 1)))
    assert layout.source == "auto"


def test_flags_override_and_complement() -> None:
    online = cpus(0, 1, 2, 3, 8, 10, 11)
    layout = choose_layout(online, benchmark_cpus="8,10-11")
    assert layout.source == "flags"
    assert layout.housekeeping == cpus(0, 1, 2, 3)
    layout = choose_layout(online, housekeeping_cpus="0", benchmark_cpus="2-3")
    assert layout.housekeeping == cpus(0) and layout.benchmark == cpus(2, 3)


@pytest.mark.parametrize(
    ("bench", "house", "fragment"),
    [
        ("4-5", None, "--benchmark-cpus: CPU\\(s\\) 4-5 are not online"),
        ("0-3", "3", "overlap on 3"),
        ("0-3", None, "none left for housekeeping"),
        (None, "0-3", "none left for benchmarks"),
        ("x", None, "--benchmark-cpus: CPU list"),
    ],
)
def test_flag_errors(bench: str | None, house: str | None, fragment: str) -> None:
    with pytest.raises(LayoutError, match=fragment):
        choose_layout(cpus(0, 1, 2, 3), benchmark_cpus=bench, housekeeping_cpus=house)


def test_detect_on_fake_tree(quiet_host: FakeHost) -> None:
    quiet_host.write("sys/devices/system/cpu/online", "0-3,8,10-11\n")
    quiet_host.write("proc/cmdline", "isolcpus=managed_irq,8,10-11\n")
    layout = detect_layout(quiet_host.sys, quiet_host.proc)
    assert layout.online == cpus(0, 1, 2, 3, 8, 10, 11)
    assert layout.benchmark == cpus(8, 10, 11)
    assert layout.kernel.isolcpus_flags == ("managed_irq",)


def test_job_cpus() -> None:
    layout = choose_layout(cpus(0, 1, 2, 3, 8, 10, 11, 12))
    grant = job_cpus(layout, 3)
    assert grant.cpus == cpus(2, 3, 8) and grant.note is None
    assert job_cpus(layout, None).cpus == layout.benchmark
    big = job_cpus(layout, 64)
    assert big.cpus == layout.benchmark
    assert big.note is not None and "asked for 64 CPUs" in big.note
    with pytest.raises(LayoutError):
        job_cpus(layout, 0)


def test_detect_real_machine() -> None:
    layout = detect_layout()
    assert layout.online <= frozenset(range(os.cpu_count() or 1))
    assert layout.housekeeping and layout.benchmark


def _real_layout() -> CpuLayout:
    layout = detect_layout()
    if not layout.has_isolation:
        pytest.skip("needs at least two online CPUs")
    return layout


def test_pin_agent_pins_a_running_process_and_its_threads() -> None:
    layout = _real_layout()
    code = (
        "import sys, threading\n"
        "t = threading.Thread(target=sys.stdin.read); t.start()\n"
        "print('ready', flush=True); t.join()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        got = pin_agent(layout, pid=child.pid)
        assert got == layout.housekeeping
        tasks = os.listdir(Path("/proc") / str(child.pid) / "task")
        assert len(tasks) >= 2
        for tid in tasks:
            assert os.sched_getaffinity(int(tid)) == set(layout.housekeeping)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def test_job_child_runs_on_benchmark_cores_only() -> None:
    layout = _real_layout()
    grant = job_cpus(layout, 1)
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; sys.stdin.read(); print(os.sched_getaffinity(0))"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, grant.cpus),
    )
    try:
        assert os.sched_getaffinity(child.pid) == set(grant.cpus)
        assert not (os.sched_getaffinity(child.pid) & layout.housekeeping)
    finally:
        out, _ = child.communicate(b"", timeout=10)
    assert out.decode().strip() == repr(set(grant.cpus))
