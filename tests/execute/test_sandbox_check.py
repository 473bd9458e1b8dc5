"""Start-up sandbox check and placement (cgroup join + cgroup.kill against a fake cgroup dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from runner_agent.errors import JobError, SandboxUnavailableError
from runner_agent.execute import ExecOptions, JobControl, Placement, check_sandbox, run_plan
from runner_agent.execute.sandbox import bwrap_argv, env_args, env_args_fd
from tests.execute.jobs import plan_for


def test_working_bwrap_gives_sandbox_mode(tmp_path: Path) -> None:
    assert check_sandbox(ExecOptions(work_dir=tmp_path)) == "sandbox"


def test_missing_bwrap_is_refused_with_the_fix(tmp_path: Path) -> None:
    options = ExecOptions(work_dir=tmp_path, bwrap="no-such-bwrap-binary")
    with pytest.raises(SandboxUnavailableError) as err:
        check_sandbox(options)
    text = str(err.value)
    assert "'no-such-bwrap-binary' was not found on PATH" in text
    assert "apt-get install bubblewrap" in text and "--danger-allow-no-sandbox" in text


def test_missing_bwrap_falls_back_to_host_only_when_allowed(tmp_path: Path) -> None:
    options = ExecOptions(work_dir=tmp_path, bwrap="no-such-bwrap-binary", allow_no_sandbox=True)
    assert check_sandbox(options) == "host"
    with pytest.raises(SandboxUnavailableError, match="requires --danger-allow-no-sandbox"):
        check_sandbox(ExecOptions(work_dir=tmp_path, mode="host"))


def test_bwrap_command_line(tmp_path: Path) -> None:
    argv = bwrap_argv("bwrap", tmp_path, ["/bin/sh", "-c", "x"], 7, "/app", network=False)
    assert argv[:4] == ["bwrap", "--bind", str(tmp_path), "/"]
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                 "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--chdir") + 1] == "/app"
    assert argv[argv.index("--args") + 1] == "7" and "--setenv" not in argv
    assert argv.index("--clearenv") < argv.index("--args")  # cleared first, then the plan's env
    assert argv[-4:] == ["--", "/bin/sh", "-c", "x"]
    shared = bwrap_argv("bwrap", tmp_path, ["/bin/true"], None, "/", network=True)
    assert "--share-net" in shared and "--unshare-net" not in shared and "--args" not in shared


def test_env_args_are_setenv_triples_and_refuse_option_injection() -> None:
    data = env_args([("PATH", "/bin"), ("EMPTY", ""), ("S", "a b=c")])
    assert data == b"--setenv\0PATH\0/bin\0--setenv\0EMPTY\0\0--setenv\0S\0a b=c\0"
    for bad in [("K", "x\0--bind\0/\0/host"), ("K\0--bind", "v"), ("", "v"), ("A=B", "v")]:
        with pytest.raises(JobError, match="cannot be passed to bwrap"):
            env_args([bad])
    fd = env_args_fd([("K", "v")])
    try:
        assert os.read(fd, 100) == b"--setenv\0K\0v\0"
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["sandbox", "host"])
async def test_benchmark_joins_the_cgroup_and_cgroup_kill_ends_the_ladder(
    busybox_rootfs: Path, tmp_path: Path, mode: str
) -> None:
    cgroup = tmp_path / "cg"  # a fake cgroup v2 directory (this machine has no usable v2 tree)
    cgroup.mkdir()
    (cgroup / "cgroup.procs").write_text("")
    (cgroup / "cgroup.kill").write_text("")
    plan = plan_for(
        busybox_rootfs, tmp_path, mode, "exit 0",  # type: ignore[arg-type]
        opts={"placement": Placement(cpus=frozenset({0}), cgroup_dir=cgroup)},
    )
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed"
    assert (cgroup / "cgroup.procs").read_text().strip().isdigit()
    assert plan.memory_limit is None  # the cgroup, not an rlimit, limits memory

    slow = plan_for(
        busybox_rootfs, tmp_path, mode, "sleep 30",  # type: ignore[arg-type]
        {"timeout": 1}, opts={"placement": Placement(cgroup_dir=cgroup), "kill_grace": 0.0},
    )
    with trio.fail_after(30):
        outcome = await run_plan(slow, JobControl())
    assert outcome.status == "failed"
    assert (cgroup / "cgroup.kill").read_text() == "1\n"


async def test_bwrap_found_on_the_agents_path_is_the_one_jobs_use(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the check looks bwrap up on the agent's PATH; the iteration must run that same binary
    # (its gate runs with an empty environment, where a bare name is looked up elsewhere)
    bindir = tmp_path / "tools"
    bindir.mkdir()
    real = shutil.which("bwrap")
    assert real is not None
    (bindir / "site-bwrap").symlink_to(real)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    assert check_sandbox(ExecOptions(work_dir=tmp_path / "w", bwrap="site-bwrap")) == "sandbox"
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "echo inside", opts={"bwrap": "site-bwrap"})
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed", outcome.error
    assert outcome.results[0].stdout == "inside\n"
