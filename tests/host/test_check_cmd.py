"""`runner-agent check`: --json on this real machine (shape), exit codes, --restore, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from runner_agent.cli import main
from runner_agent.host.report import EXIT_FIT, EXIT_UNFIT, EXIT_WARNINGS
from runner_agent.host.tuning import Tuner
from tests.host.conftest import FakeHost

STATUSES = {"ok", "warn", "fail", "n/a"}


def test_check_json_on_this_machine(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runner_agent", "check", "--json", "--steal-sample", "0.2", "--cache-dir", str(tmp_path)],
        capture_output=True, timeout=60, check=False,
    )
    assert done.returncode in (EXIT_FIT, EXIT_WARNINGS, EXIT_UNFIT), done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"fitness", "exit_code", "layout", "checks"}
    assert report["exit_code"] == done.returncode
    assert report["fitness"] in {"fit", "usable-with-warnings", "unfit"}
    names = [c["name"] for c in report["checks"]]
    for required in (
        "governor", "turbo", "smt", "aslr", "thp", "swappiness", "perf_event_paranoid", "nmi_watchdog",
        "irqbalance", "kernel_isolation", "cgroup_v2", "virtualisation", "bwrap", "disk", "clocksource",
    ):
        assert required in names
    for c in report["checks"]:
        assert set(c) == {"name", "status", "checked", "found", "why", "fix"}
        assert c["status"] in STATUSES
        assert all(isinstance(v, str) for v in c.values())
        if c["status"] in ("warn", "fail"):
            assert c["why"] and c["fix"], c


def test_text_report_and_exit_codes_on_fake_tree(quiet_host: FakeHost, tmp_path: Path) -> None:
    args = ["check", "--sys-root", str(quiet_host.sys), "--proc-root", str(quiet_host.proc),
            "--steal-sample", "0", "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert "verdict:" in result.output
    if "[  ok] disk" in result.output and "[  ok] bwrap" in result.output:  # this machine's parts
        assert result.exit_code == EXIT_FIT, result.output
    quiet_host.write("proc/sys/kernel/randomize_va_space", "2\n")
    result = CliRunner().invoke(main, args)
    assert "[warn] aslr: randomize_va_space=2" in result.output
    assert "fix: sysctl -w kernel.randomize_va_space=0" in result.output
    assert result.exit_code in (EXIT_WARNINGS, EXIT_UNFIT)


def test_bad_cpu_flag_is_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--steal-sample", "0", "--benchmark-cpus", "0-3,", "--cache-dir", str(tmp_path)])
    # a malformed list is reported as an unfit layout finding, not a crash
    assert result.exit_code == EXIT_UNFIT
    assert "--benchmark-cpus: CPU list" in result.output
    result = CliRunner().invoke(main, ["check", "--steal-sample", "-1"])
    assert result.exit_code == 2


def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0
    for line in ("0   fit", "10  usable with warnings", "11  unfit", "2   usage error"):
        assert line in result.output


def test_restore(quiet_host: FakeHost, tmp_path: Path) -> None:
    quiet_host.write("proc/sys/vm/swappiness", "60\n")
    state, lock = tmp_path / "state", tmp_path / "lock"
    t = Tuner(quiet_host.sys, quiet_host.proc, state, lock, dev_root=tmp_path / "dev", require_root=False)
    t.apply()
    t._lock.release()  # simulate the crashed agent: lock gone, record and changes left behind
    assert quiet_host.read("proc/sys/vm/swappiness") == "10"
    args = ["check", "--restore", "--state-dir", str(state), "--lock-path", str(lock),
            "--sys-root", str(quiet_host.sys), "--proc-root", str(quiet_host.proc)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [c["knob"] for c in out["restored"]] == ["swappiness"] and out["failed"] == []
    assert quiet_host.read("proc/sys/vm/swappiness") == "60"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "nothing to restore" in result.output


def test_restore_finds_the_state_dir_run_uses(quiet_host: FakeHost, tmp_path: Path) -> None:
    """Without --state-dir, check resolves the state dir as `run` does (env, config file, then the
    default, which for root is /var/lib/runner-agent): otherwise it misses the record run left."""
    quiet_host.write("proc/sys/vm/swappiness", "60\n")
    state, lock = tmp_path / "state", tmp_path / "lock"
    t = Tuner(quiet_host.sys, quiet_host.proc, state, lock, dev_root=tmp_path / "dev", require_root=False)
    t.apply()
    t._lock.release()  # crashed agent
    roots = ["--lock-path", str(lock), "--sys-root", str(quiet_host.sys), "--proc-root", str(quiet_host.proc)]
    result = CliRunner().invoke(
        main, ["check", "--restore", *roots], env={"RUNNER_AGENT_STATE_DIR": str(state), "RUNNER_AGENT_CONFIG": ""}
    )
    assert result.exit_code == 0, result.output
    assert "swappiness" in result.output and "restored" in result.output
    assert quiet_host.read("proc/sys/vm/swappiness") == "60"
    config = tmp_path / "config.toml"
    t = Tuner(quiet_host.sys, quiet_host.proc, state, lock, dev_root=tmp_path / "dev", require_root=False)
    t.apply()
    t._lock.release()
    config.write_text(f'state-dir = "{state}"\n')
    result = CliRunner().invoke(main, ["check", "--restore", "--config", str(config), *roots])
    assert result.exit_code == 0, result.output
    assert quiet_host.read("proc/sys/vm/swappiness") == "60"



def test_cpu_layout_from_the_config_file_as_run_uses_it(quiet_host: FakeHost, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('benchmark-cpus = "1"\n')
    args = ["check", "--json", "--steal-sample", "0", "--sys-root", str(quiet_host.sys),
            "--proc-root", str(quiet_host.proc), "--cache-dir", str(tmp_path)]
    from_file = json.loads(CliRunner().invoke(main, [*args, "--config", str(config)]).output)
    assert from_file["layout"].startswith("CPU layout (flags)")
    assert from_file["layout"].endswith("benchmark 1")
    flag_wins = json.loads(
        CliRunner().invoke(main, [*args, "--config", str(config), "--benchmark-cpus", "0"]).output
    )
    assert flag_wins["layout"].endswith("benchmark 0")
