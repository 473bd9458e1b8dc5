"""Tuning on fake trees: apply/restore cycle, record-before-change, crash recovery, skip, lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner_agent.host.lock import HostLock, TuningLockedError
from runner_agent.host.tuning import RECORD_NAME, Tuner, TuningError, recover_after_crash
from tests.host.conftest import FakeHost

NOISY = {
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "schedutil\n",
    "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor": "powersave\n",
    "sys/devices/system/cpu/intel_pstate/no_turbo": "0\n",
    "sys/devices/system/cpu/smt/control": "on\n",
    "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
    "proc/sys/kernel/randomize_va_space": "2\n",
    "proc/sys/vm/swappiness": "60\n",
    "proc/sys/kernel/perf_event_paranoid": "2\n",
    "proc/sys/kernel/nmi_watchdog": "1\n",
}


@pytest.fixture
def noisy(quiet_host: FakeHost) -> FakeHost:
    for rel, text in NOISY.items():
        quiet_host.write(rel, text)
    return quiet_host


def tuner(host: FakeHost, tmp_path: Path, **kw: object) -> Tuner:
    return Tuner(
        host.sys, host.proc, tmp_path / "state", tmp_path / "run" / "tuning.lock",
        dev_root=tmp_path / "dev", require_root=False, **kw,  # type: ignore[arg-type]
    )


def selected(text: str) -> str:
    return text.split("[")[1].split("]")[0] if "[" in text else text.strip()


def test_apply_then_restore_puts_everything_back(noisy: FakeHost, tmp_path: Path) -> None:
    t = tuner(noisy, tmp_path)
    changes = t.apply()
    assert {c.knob for c in changes} == {
        "governor", "turbo", "smt", "thp", "aslr", "swappiness", "perf_event_paranoid", "nmi_watchdog"
    }
    assert noisy.read("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor") == "performance"
    assert noisy.read("sys/devices/system/cpu/intel_pstate/no_turbo") == "1"
    assert noisy.read("sys/kernel/mm/transparent_hugepage/enabled") == "never"
    assert noisy.read("proc/sys/vm/swappiness") == "10"
    assert noisy.read("proc/sys/kernel/perf_event_paranoid") == "-1"
    record = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
    assert len(record["changes"]) == len(changes)
    assert t.state()["aslr"] == "0"
    assert any(n.knob == "cstates" and n.outcome == "absent" for n in t.notes)
    assert any(n.knob == "ksm" and n.outcome == "already" for n in t.notes)

    results = t.restore()
    assert all(r.error is None for r in results)
    for rel, text in NOISY.items():
        assert selected(noisy.read(rel)) == selected(text), rel
    assert not (tmp_path / "state" / RECORD_NAME).exists()
    HostLock(tmp_path / "run" / "tuning.lock").acquire()  # released


def test_failed_write_is_noted_and_dropped_from_record(
    noisy: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runner_agent.host.tuning as tuning

    real_write = tuning._write_value

    def refuse_swappiness(path: Path, value: str) -> None:
        if path.name == "swappiness" and value == "10":
            raise PermissionError(13, "Permission denied")
        real_write(path, value)

    monkeypatch.setattr(tuning, "_write_value", refuse_swappiness)
    t = tuner(noisy, tmp_path)
    t.apply()
    assert any(n.knob == "swappiness" and n.outcome == "failed" and "Permission denied" in n.detail for n in t.notes)
    record = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
    assert "swappiness" not in {c["knob"] for c in record["changes"]}
    t.restore()
    assert noisy.read("proc/sys/vm/swappiness") == "60\n"


def test_record_precedes_write(noisy: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runner_agent.host.tuning as tuning

    seen: list[tuple[str, bool]] = []
    real_write = tuning._write_value

    def spy(path: Path, value: str) -> None:
        data = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
        seen.append((str(path), str(path) in {c["path"] for c in data["changes"]}))
        real_write(path, value)

    monkeypatch.setattr(tuning, "_write_value", spy)
    t = tuner(noisy, tmp_path)
    t.apply()
    assert seen and all(recorded for _, recorded in seen)
    monkeypatch.setattr(tuning, "_write_value", real_write)
    t.restore()


def test_skip(noisy: FakeHost, tmp_path: Path) -> None:
    t = tuner(noisy, tmp_path, skip=["smt", "aslr", "cstates"])
    changes = t.apply()
    assert "smt" not in {c.knob for c in changes} and "aslr" not in {c.knob for c in changes}
    assert noisy.read("sys/devices/system/cpu/smt/control") == "on\n"
    assert {n.knob for n in t.notes if n.outcome == "skipped"} == {"smt", "aslr", "cstates"}
    t.restore()


def test_unknown_skip_name() -> None:
    with pytest.raises(ValueError, match="unknown --tune-skip name"):
        Tuner(Path("/sys"), Path("/proc"), Path("/x"), skip=["turbos"])


def test_needs_root(noisy: FakeHost, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root")
    t = Tuner(noisy.sys, noisy.proc, tmp_path / "s", tmp_path / "l", require_root=True)
    with pytest.raises(TuningError, match="needs root"):
        t.apply()


def _crash_after_apply(host: FakeHost, tmp_path: Path) -> None:
    """Apply tuning in a child process that then dies by SIGKILL (no restore runs)."""
    code = (
        "import os, signal\nfrom pathlib import Path\nfrom runner_agent.host.tuning import Tuner\n"
        f"t = Tuner(Path({str(host.sys)!r}), Path({str(host.proc)!r}), Path({str(tmp_path / 'state')!r}), "
        f"Path({str(tmp_path / 'run' / 'tuning.lock')!r}), dev_root=Path({str(tmp_path / 'dev')!r}), require_root=False)\n"
        "t.apply()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert done.returncode == -9


def test_crash_recovery_via_function(noisy: FakeHost, tmp_path: Path) -> None:
    _crash_after_apply(noisy, tmp_path)
    assert noisy.read("proc/sys/vm/swappiness") == "10"  # left changed by the crash
    results = recover_after_crash(tmp_path / "state", noisy.sys, noisy.proc, tmp_path / "run" / "tuning.lock")
    assert results and all(r.error is None for r in results)
    for rel, text in NOISY.items():
        assert selected(noisy.read(rel)) == selected(text), rel
    assert recover_after_crash(tmp_path / "state", noisy.sys, noisy.proc, tmp_path / "run" / "tuning.lock") == []


def test_next_apply_restores_leftover_first(noisy: FakeHost, tmp_path: Path) -> None:
    _crash_after_apply(noisy, tmp_path)
    t = tuner(noisy, tmp_path)
    changes = t.apply()
    assert len(t.recovered) == len(changes) == len(NOISY)
    originals = {c.path: c.original for c in changes}
    # the originals recorded now are the host's true originals, not the crashed run's values
    assert originals[str(noisy.proc / "sys/vm/swappiness")] == "60"
    t.restore()
    assert noisy.read("proc/sys/vm/swappiness") == "60"


def test_lock_contention(noisy: FakeHost, tmp_path: Path) -> None:
    first = tuner(noisy, tmp_path)
    first.apply()
    try:
        second = tuner(noisy, tmp_path / "other")
        with pytest.raises(TuningLockedError, match=f"pid {os.getpid()}"):
            Tuner(
                noisy.sys, noisy.proc, tmp_path / "other", tmp_path / "run" / "tuning.lock",
                dev_root=tmp_path / "dev", require_root=False,
            ).apply()
        with pytest.raises(TuningLockedError):
            recover_after_crash(tmp_path / "state", noisy.sys, noisy.proc, tmp_path / "run" / "tuning.lock")
        del second
    finally:
        first.restore()


def test_lock_contention_across_processes(tmp_path: Path) -> None:
    lock = tmp_path / "l"
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"import sys\nfrom pathlib import Path\nfrom runner_agent.host.lock import HostLock\n"
         f"HostLock(Path({str(lock)!r})).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"held\n"
        with pytest.raises(TuningLockedError, match=f"pid {child.pid}"):
            HostLock(lock).acquire()
    finally:
        child.communicate(b"", timeout=10)
    HostLock(lock).acquire()  # the dead holder's lock is gone


def test_tampered_record_is_refused(noisy: FakeHost, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / RECORD_NAME).write_text(json.dumps(
        {"version": 1, "changes": [{"knob": "x", "path": "/etc/passwd", "original": "", "applied": ""}]}
    ))
    with pytest.raises(TuningError, match="outside"):
        recover_after_crash(state, noisy.sys, noisy.proc, tmp_path / "lock")
    (state / RECORD_NAME).write_text("{not json")
    with pytest.raises(TuningError, match="unreadable"):
        recover_after_crash(state, noisy.sys, noisy.proc, tmp_path / "lock")
    assert (state / RECORD_NAME).exists()  # kept for the operator


def test_failed_restore_stays_recorded(noisy: FakeHost, tmp_path: Path) -> None:
    t = tuner(noisy, tmp_path)
    t.apply()
    gone = noisy.proc / "sys/kernel/nmi_watchdog"
    gone.unlink()
    gone.mkdir()  # writing the original back now fails
    results = t.restore()
    failed = [r for r in results if r.error is not None]
    assert [r.change.knob for r in failed] == ["nmi_watchdog"]
    record = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
    assert [c["knob"] for c in record["changes"]] == ["nmi_watchdog"]
    gone.rmdir()
    results = recover_after_crash(tmp_path / "state", noisy.sys, noisy.proc, tmp_path / "run" / "tuning.lock")
    assert [r.error for r in results] == [None]
    assert noisy.read("proc/sys/kernel/nmi_watchdog") == "1"


def test_context_manager_restores_on_error(noisy: FakeHost, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), tuner(noisy, tmp_path) as t:
        t.apply()
        raise RuntimeError("boom")
    assert noisy.read("proc/sys/vm/swappiness") == "60"


def test_cstates_hold(noisy: FakeHost, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "cpu_dma_latency").write_bytes(b"")
    t = tuner(noisy, tmp_path)
    t.apply()
    assert t.state()["cstates"] == "held"
    assert (dev / "cpu_dma_latency").read_bytes() == b"\x00\x00\x00\x00"
    t.restore()
    assert "cstates" not in t.state()


def test_irq_steering_apply_and_restore(quiet_host: FakeHost, tmp_path: Path) -> None:
    from runner_agent.host.layout import choose_layout

    quiet_host.write("proc/irq/default_smp_affinity", "f\n")
    quiet_host.write("sys/devices/virtual/workqueue/cpumask", "000f\n")  # padded, differs
    quiet_host.write("proc/irq/10/smp_affinity_list", "0-3\n")
    quiet_host.write("proc/irq/11/smp_affinity_list", "0-1\n")  # already steered: left unwritten
    (quiet_host.proc / "irq/12/smp_affinity_list").mkdir(parents=True)  # not a file: ignored
    layout = choose_layout(frozenset({0, 1, 2, 3}), housekeeping_cpus="0-1")
    t = tuner(quiet_host, tmp_path, skip=["cstates"])
    with pytest.raises(TuningError, match="apply\\(\\) must succeed"):
        t.apply_cpu_scoped(layout)
    t.apply()
    steered = t.apply_cpu_scoped(layout)
    assert {Path(c.path).name for c in steered} == {"default_smp_affinity", "cpumask", "smp_affinity_list"}
    assert quiet_host.read("proc/irq/default_smp_affinity") == "3"
    assert quiet_host.read("sys/devices/virtual/workqueue/cpumask") == "3"
    assert quiet_host.read("proc/irq/10/smp_affinity_list") == "0-1"
    assert quiet_host.read("proc/irq/11/smp_affinity_list") == "0-1\n"
    assert len(steered) == 3
    t.restore()
    assert quiet_host.read("proc/irq/default_smp_affinity") == "f"
    assert quiet_host.read("sys/devices/virtual/workqueue/cpumask") == "000f"
    assert quiet_host.read("proc/irq/10/smp_affinity_list") == "0-3"


def test_irq_steering_leaves_equal_padded_masks(quiet_host: FakeHost, tmp_path: Path) -> None:
    from runner_agent.host.layout import choose_layout

    quiet_host.write("sys/devices/virtual/workqueue/cpumask", "00000000,00000003\n")
    quiet_host.write("proc/irq/10/smp_affinity_list", "0-1\n")
    layout = choose_layout(frozenset({0, 1, 2, 3}), housekeeping_cpus="0-1")
    t = tuner(quiet_host, tmp_path, skip=["cstates"])
    t.apply()
    steered = t.apply_cpu_scoped(layout)
    assert str(quiet_host.sys / "devices/virtual/workqueue/cpumask") not in {c.path for c in steered}
    assert quiet_host.read("sys/devices/virtual/workqueue/cpumask") == "00000000,00000003\n"
    assert quiet_host.read("proc/irq/10/smp_affinity_list") == "0-1\n"
    t.restore()


def test_crash_recovery_removes_a_created_cgroup_with_leftover_empty_children(
    quiet_host: FakeHost, tmp_path: Path
) -> None:
    """A crash mid-job leaves an (empty) job cgroup inside the partition cgroup the tuner made;
    cgroupfs refuses rmdir of a cgroup with children, so recovery removes them first."""
    created = quiet_host.sys / "fs/cgroup/runner-agent-jobs"
    created.parent.mkdir(parents=True, exist_ok=True)
    t = tuner(quiet_host, tmp_path, skip=["cstates"])
    t.apply()
    assert t.record_mkdir("cpuset_partition", created)
    (created / "job-1234").mkdir()  # the crashed agent's job cgroup (cgroupfs dirs list no files to rmdir)
    t._lock.release()  # crash: the record stays
    results = recover_after_crash(tmp_path / "state", quiet_host.sys, quiet_host.proc, tmp_path / "run" / "tuning.lock")
    assert [r.error for r in results if r.change.kind == "rmdir"] == [None]
    assert not created.exists()
    assert not (tmp_path / "state" / RECORD_NAME).exists()


def test_created_dir_holding_a_file_is_not_emptied(quiet_host: FakeHost, tmp_path: Path) -> None:
    """Only directories are removed: anything else inside keeps the change recorded as failed."""
    created = quiet_host.sys / "fs/cgroup/runner-agent-jobs"
    created.parent.mkdir(parents=True, exist_ok=True)
    t = tuner(quiet_host, tmp_path, skip=["cstates"])
    t.apply()
    assert t.record_mkdir("cpuset_partition", created)
    (created / "job-1").mkdir()
    (created / "job-1" / "keep").write_text("data")
    results = t.restore()
    assert [r.change.kind for r in results if r.error is not None] == ["rmdir"]
    assert (created / "job-1" / "keep").read_text() == "data"
    assert (tmp_path / "state" / RECORD_NAME).exists()
