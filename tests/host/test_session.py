"""host_session on fake trees: recovery first, tuning, layout after tuning, restore on exit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from runner_agent.host.session import host_session
from runner_agent.host.tuning import RECORD_NAME
from tests.host.conftest import FakeHost


def test_session_restores_crash_leftover_and_lays_out(
    quiet_host: FakeHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the package logger itself: other in-process tests may have configured it at WARNING
    caplog.set_level(logging.INFO, logger="runner_agent")
    state = tmp_path / "state"
    state.mkdir()
    swappiness = quiet_host.proc / "sys/vm/swappiness"
    swappiness.write_text("10\n")  # a crashed run changed it from 60
    (state / RECORD_NAME).write_text(json.dumps(
        {"version": 1, "changes": [{"knob": "swappiness", "path": str(swappiness), "original": "60", "applied": "10"}]}
    ))
    with host_session(
        state_dir=state, cache_dir=tmp_path, sys_root=quiet_host.sys, proc_root=quiet_host.proc,
        lock_path=tmp_path / "lock", pin=False, steal_sample_seconds=0, metrics_file=tmp_path / "m.jsonl",
    ) as session:
        assert swappiness.read_text() == "60"
        assert session.layout.benchmark == frozenset({1, 2, 3})  # isolcpus=1-3 on the fake cmdline
        assert session.report.by_name("swappiness").status.value == "warn"
        assert session.tuner is None and session.tuning_state() == {}
        assert session.metrics is not None
        assert session.placer.cgroups.available
    assert "restored" in caplog.text and "preflight:" in caplog.text


def test_session_tune_is_refused_without_root_or_restored_on_exit(quiet_host: FakeHost, tmp_path: Path) -> None:
    (quiet_host.proc / "sys/vm/swappiness").write_text("60\n")
    with host_session(
        state_dir=tmp_path / "s", cache_dir=tmp_path, sys_root=quiet_host.sys, proc_root=quiet_host.proc,
        dev_root=tmp_path / "dev", lock_path=tmp_path / "lock", pin=False, steal_sample_seconds=0, tune=True,
    ) as session:
        if session.tuner is not None:  # root: tuned
            assert (quiet_host.proc / "sys/vm/swappiness").read_text() == "10"
            assert session.tuning_state()["swappiness"] == "10"
    assert (quiet_host.proc / "sys/vm/swappiness").read_text().strip() == "60"
    assert not (tmp_path / "s" / RECORD_NAME).exists()


def test_pinning_refused_by_the_kernel_is_a_warning_not_a_crash(
    quiet_host: FakeHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sysfs lists every online CPU, but a container's cpuset may not allow them all: the kernel
    refuses the affinity (EINVAL) and the agent must run unpinned, saying so."""
    import os

    caplog.set_level(logging.WARNING, logger="runner_agent")
    quiet_host.write("sys/devices/system/cpu/online", "0-1023\n")
    before = os.sched_getaffinity(0)
    try:
        with host_session(
            state_dir=tmp_path / "s", cache_dir=tmp_path, sys_root=quiet_host.sys,
            proc_root=quiet_host.proc, lock_path=tmp_path / "lock", steal_sample_seconds=0,
            housekeeping_cpus="1023", benchmark_cpus="1000-1022",
        ) as session:
            assert session.layout.housekeeping == frozenset({1023})
    finally:
        os.sched_setaffinity(0, before)
    assert "cannot pin the agent to CPUs 1023" in caplog.text
