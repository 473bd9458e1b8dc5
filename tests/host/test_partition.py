"""The cpuset partition on a fake cgroup v2 root: applied through the tuner's record, verified by
read-back, restored (including removing the cgroup it created), and skipped cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import runner_agent.host.tuning as tuning
from runner_agent.host.cgroups import JobCgroupManager
from runner_agent.host.layout import choose_layout
from runner_agent.host.partition import apply_cpuset_partition
from runner_agent.host.tuning import RECORD_NAME, Tuner, recover_after_crash
from tests.host.conftest import FakeHost

LAYOUT = choose_layout(frozenset(range(8)))  # housekeeping 0-1, benchmark 2-7


@pytest.fixture
def fake_rmdir(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake tree's control files are plain files; a real cgroupfs rmdir removes them with the dir
    monkeypatch.setattr(tuning, "_remove_dir", lambda path: shutil.rmtree(path, ignore_errors=False) if path.exists() else None)


def started_tuner(host: FakeHost, tmp_path: Path) -> Tuner:
    t = Tuner(host.sys, host.proc, tmp_path / "state", tmp_path / "lock", skip=["cstates"],
              dev_root=tmp_path / "dev", require_root=False)
    t.apply()
    return t


def test_isolated_partition_and_restore(quiet_host: FakeHost, tmp_path: Path, fake_rmdir: None) -> None:
    root = quiet_host.sys / "fs/cgroup"
    quiet_host.write("sys/fs/cgroup/cgroup.subtree_control", "memory\n")
    quiet_host.write("sys/fs/cgroup/cpuset.mems.effective", "0-1\n")
    t = started_tuner(quiet_host, tmp_path)
    result = apply_cpuset_partition(t, LAYOUT, root)
    assert result.level == "isolated" and result.path == root / "runner-agent-jobs"
    assert (result.path / "cpuset.cpus").read_text() == "2-7"
    assert (result.path / "cpuset.mems").read_text() == "0-1"
    assert (result.path / "cpuset.cpus.partition").read_text() == "isolated"
    record = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
    kinds = [(c["knob"], c["kind"]) for c in record["changes"] if c["knob"] == "cpuset_partition"]
    assert ("cpuset_partition", "rmdir") in kinds

    (result.path / "cgroup.controllers").write_text("cpuset memory pids\n")  # as the kernel would
    (result.path / "cgroup.subtree_control").write_text("")
    mgr = JobCgroupManager(root, quiet_host.proc, parent=result.path)
    group = mgr.create("j", frozenset({2, 3}), 1 << 30)
    assert group is not None and group.path.parent == result.path
    shutil.rmtree(group.path)

    t.restore()
    assert not result.path.exists()
    assert (root / "cgroup.subtree_control").read_text() == "-cpuset"  # last undo written: +cpuset → -cpuset
    assert not (tmp_path / "state" / RECORD_NAME).exists()


def test_rejected_modes_fall_back(quiet_host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_rmdir: None) -> None:
    root = quiet_host.sys / "fs/cgroup"
    quiet_host.write("sys/fs/cgroup/cpuset.mems.effective", "0\n")
    real_write = tuning._write_value

    def kernel_rejects_isolated(path: Path, value: str) -> None:
        real_write(path, value)
        if path.name == "cpuset.cpus.partition" and value == "isolated":
            real_write(path, "isolated invalid (Cpu list in cpuset.cpus not exclusive)")

    monkeypatch.setattr(tuning, "_write_value", kernel_rejects_isolated)
    t = started_tuner(quiet_host, tmp_path)
    result = apply_cpuset_partition(t, LAYOUT, root)
    assert result.level == "root"
    assert any("kernel rejected partition mode 'isolated'" in n.detail for n in t.notes)
    t.restore()
    assert not (root / "runner-agent-jobs").exists()


def test_crash_leftover_partition_is_restored(quiet_host: FakeHost, tmp_path: Path, fake_rmdir: None) -> None:
    root = quiet_host.sys / "fs/cgroup"
    quiet_host.write("sys/fs/cgroup/cpuset.mems.effective", "0\n")
    t = started_tuner(quiet_host, tmp_path)
    apply_cpuset_partition(t, LAYOUT, root)
    t._lock.release()  # the agent "crashed": record and changes left behind
    results = recover_after_crash(tmp_path / "state", quiet_host.sys, quiet_host.proc, tmp_path / "lock")
    assert results and all(r.error is None for r in results)
    assert not (root / "runner-agent-jobs").exists()


def test_no_cgroup_v2_or_no_isolation_is_noted(quiet_host: FakeHost, tmp_path: Path) -> None:
    t = started_tuner(quiet_host, tmp_path)
    assert apply_cpuset_partition(t, LAYOUT, tmp_path / "nothing").path is None
    assert apply_cpuset_partition(t, choose_layout(frozenset({0})), quiet_host.sys / "fs/cgroup").path is None
    assert [n.outcome for n in t.notes if n.knob == "cpuset_partition"] == ["absent", "skipped"]
    t.restore()


def test_this_machine_has_no_v2_cpuset(tmp_path: Path) -> None:
    t = Tuner(Path("/sys"), Path("/proc"), tmp_path / "s", tmp_path / "l", require_root=False)
    t._lock.acquire()  # no apply(): nothing on this real machine is changed by this test
    try:
        result = apply_cpuset_partition(t, choose_layout(frozenset({0, 1})), Path("/sys/fs/cgroup"))
        if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
            pytest.skip("this machine has a cgroup v2 root")
        assert result.path is None and t.changes == ()
    finally:
        t.restore()
