"""Pure plan rules: Docker argv overrides, env merging, host checks, sandbox choice, iterations."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner_agent.errors import JobError
from runner_agent.execute import merge_env, resolve_argv
from runner_agent.execute.plan import NO_SANDBOX_REFUSED, benchmark_name, build_plan
from runner_agent.execute.rootpath import DEFAULT_PATH, RootPathError, find_program, resolve_in_root
from runner_agent.oci.image import ImageConfig
from tests.execute.jobs import image, make_job, options

IMG = ImageConfig(entrypoint=("/entry",), cmd=("default", "args"))


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "expected"),
    [
        (None, None, ("/entry", "default", "args")),
        (None, ("x",), ("/entry", "x")),
        (("/other",), None, ("/other",)),
        (("/other",), ("y", "z"), ("/other", "y", "z")),
        ((), ("/bin/true",), ("/bin/true",)),
        (None, (), ("/entry",)),
    ],
)
def test_docker_override_rules(
    entrypoint: tuple[str, ...] | None, cmd: tuple[str, ...] | None, expected: tuple[str, ...]
) -> None:
    assert resolve_argv(IMG, entrypoint, cmd) == expected


def test_empty_argv_is_a_job_error() -> None:
    with pytest.raises(JobError, match="no CMD or ENTRYPOINT"):
        resolve_argv(ImageConfig(), None, None)
    with pytest.raises(JobError, match="no CMD or ENTRYPOINT"):
        resolve_argv(IMG, (), None)


def test_env_image_then_job_and_default_path() -> None:
    env = dict(merge_env(("A=1", "B=x=y", "A=2"), {"B": "job", "C": ""}))
    assert env == {"A": "2", "B": "job", "C": "", "PATH": DEFAULT_PATH}
    assert dict(merge_env(("PATH=/opt/bin",), None))["PATH"] == "/opt/bin"


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value"])
def test_malformed_image_env_rejected(bad: str) -> None:
    with pytest.raises(JobError, match="not KEY=VALUE"):
        merge_env((bad,), None)


def test_job_env_with_nul_rejected() -> None:
    with pytest.raises(JobError, match="NUL"):
        merge_env((), {"A": "x\0y"})


def test_plan_env_never_contains_agent_environment(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCHER_RUNNER_KEY", "bencher_runner_" + "k" * 30)
    monkeypatch.setenv("HOME", "/root")
    plan = build_plan(
        make_job({"env": {"J": "1"}}), image(busybox_rootfs), options(tmp_path, "sandbox")
    )
    assert dict(plan.env) == {"PATH": "/bin", "J": "1"}


def test_spec_architecture_mismatch(busybox_rootfs: Path, tmp_path: Path) -> None:
    from tests.execute.jobs import ARCH

    other = "aarch64" if ARCH == "x86_64" else "x86_64"
    with pytest.raises(JobError, match=f"requires architecture '{other}'"):
        build_plan(make_job(architecture=other), image(busybox_rootfs), options(tmp_path, "sandbox"))


def test_spec_os_mismatch(busybox_rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="requires os 'windows'"):
        build_plan(make_job(os="windows"), image(busybox_rootfs), options(tmp_path, "sandbox"))


def test_image_architecture_mismatch(busybox_rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="Image is built for architecture 's390x'"):
        build_plan(make_job(), image(busybox_rootfs, architecture="s390x"), options(tmp_path, "sandbox"))


def test_no_sandbox_spec_refused_unless_allowed(busybox_rootfs: Path, tmp_path: Path) -> None:
    from runner_agent.execute import ExecOptions

    strict = ExecOptions(work_dir=tmp_path, mode="sandbox")
    with pytest.raises(JobError) as err:
        build_plan(make_job(sandbox=None), image(busybox_rootfs), strict)
    assert str(err.value) == NO_SANDBOX_REFUSED
    plan = build_plan(make_job(sandbox=None), image(busybox_rootfs), options(tmp_path, "sandbox"))
    assert plan.mode == "host"


def test_iterations_default_one_and_zero_kept(busybox_rootfs: Path, tmp_path: Path) -> None:
    opts = options(tmp_path, "sandbox")
    assert build_plan(make_job(), image(busybox_rootfs), opts).iterations == 1
    assert build_plan(make_job({"iter": 0}), image(busybox_rootfs), opts).iterations == 0
    assert build_plan(make_job({"iter": 5}), image(busybox_rootfs), opts).iterations == 5


def test_missing_program_is_a_readable_job_error(busybox_rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"Binary not found: cargo\. not found in PATH directories"):
        build_plan(make_job({"cmd": ["cargo", "bench"]}), image(busybox_rootfs), options(tmp_path, "sandbox"))
    plan = build_plan(make_job({"cmd": ["echo", "hi"]}), image(busybox_rootfs), options(tmp_path, "sandbox"))
    assert plan.argv == ("/bin/echo", "hi")


def test_cpus_and_memory(busybox_rootfs: Path, tmp_path: Path) -> None:
    from runner_agent.execute import Placement

    plan = build_plan(make_job(cpu=1, memory=12345), image(busybox_rootfs), options(tmp_path, "sandbox"))
    assert len(plan.cpus) == 1 and plan.memory_limit == 12345
    placed = options(tmp_path, "sandbox", placement=Placement(cpus=frozenset({0}), cgroup_dir=tmp_path))
    plan = build_plan(make_job(cpu=1), image(busybox_rootfs), placed)
    assert plan.cpus == frozenset({0}) and plan.memory_limit is None


def test_benchmark_name_precedence() -> None:
    assert benchmark_name(make_job({"entrypoint": ["a"], "cmd": ["b", "c"]})) == "a b c"
    assert benchmark_name(make_job({"image": "reg/img:v1"})) == "reg/img:v1"
    assert benchmark_name(make_job()) == (
        "11111111-2222-3333-4444-555555555555@sha256:" + "a" * 64
    )


def test_resolution_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "usr" / "bin" / "tool").chmod(0o755)
    (root / "bin").symlink_to("/usr/bin")  # absolute: re-rooted, never the host's /usr/bin
    (root / "up").symlink_to("../../../../etc")
    assert resolve_in_root(root, "/bin/tool") == root / "usr" / "bin" / "tool"
    assert find_program(root, "tool", {"PATH": "/bin"}) == "/bin/tool"
    (root / "etc").mkdir()
    assert resolve_in_root(root, "/up") == root / "etc"  # ".." stops at the root
    (root / "loop").symlink_to("loop")
    with pytest.raises(RootPathError, match="too many levels"):
        resolve_in_root(root, "/loop")
