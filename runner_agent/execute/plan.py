"""The job plan: what to run (argv, env, working dir), how often, for how long, and where.

`build_plan` turns a claimed job + prepared image into a `JobPlan`, applying Docker's
entrypoint/cmd override rules, merging env (image, then job; nothing from the agent), checking the
spec's OS/architecture against the host and resolving the program inside the image.
Everything wrong with the job raises `JobError` with a readable text.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from uuid import UUID

from attrs import frozen

from runner_agent.errors import JobError
from runner_agent.execute.options import ExecOptions, SandboxMode
from runner_agent.execute.rootpath import DEFAULT_PATH, RootPathError, find_program
from runner_agent.execute.sandbox import check_sandbox
from runner_agent.oci.image import ImageConfig, PreparedImage
from runner_agent.protocol import ClaimedJob

log = logging.getLogger(__name__)

NO_SANDBOX_REFUSED = (
    "Job requires non-sandboxed execution but runner was not started with --danger-allow-no-sandbox"
)
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


@frozen
class JobPlan:
    """Everything needed to run one job's iterations; built once, never changed."""

    job: UUID
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    rootfs: Path
    mode: SandboxMode
    iterations: int
    allow_failure: bool
    timeout: float
    file_paths: tuple[str, ...] | None
    build_time: bool
    file_size: bool
    benchmark_name: str | None
    network: bool
    cpus: frozenset[int]
    memory_limit: int | None
    options: ExecOptions


def resolve_argv(
    image: ImageConfig, entrypoint: Sequence[str] | None, cmd: Sequence[str] | None
) -> tuple[str, ...]:
    """Docker's rules: a job entrypoint replaces the image's and drops the image cmd; a job cmd
    replaces the image cmd. Raises `JobError` when the result is empty."""
    ep = tuple(entrypoint) if entrypoint is not None else tuple(image.entrypoint or ())
    if entrypoint is not None:
        args = tuple(cmd) if cmd is not None else ()
    else:
        args = tuple(cmd) if cmd is not None else tuple(image.cmd or ())
    argv = ep + args
    if not argv:
        raise JobError("OCI image has no CMD or ENTRYPOINT set")
    return argv


def merge_env(
    image_env: Sequence[str], job_env: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    """Image env (``KEY=VALUE`` strings, later wins), then the job's env on top; PATH defaulted.

    Raises `JobError` for malformed entries (no ``=``, empty name, NUL bytes).
    """
    env: dict[str, str] = {}
    for entry in image_env:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise JobError(f"image config env entry {entry!r} is not KEY=VALUE")
        env[key] = value
    for key, value in (job_env or {}).items():
        if not key or "=" in key:
            raise JobError(f"job env name {key!r} is invalid (empty or contains '=')")
        env[key] = value
    for key, value in env.items():
        if "\0" in key or "\0" in value:
            raise JobError(f"env variable {key!r} contains a NUL byte")
    env.setdefault("PATH", DEFAULT_PATH)
    return tuple(env.items())


def host_arch() -> str:
    """This machine's architecture in Bencher's spelling (``x86_64``/``aarch64``)."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def check_host(spec_os: str, spec_arch: str, image: ImageConfig) -> None:
    """Fail the job when the spec (or the image) wants another OS or architecture."""
    here_os = platform.system().lower()
    here_arch = host_arch()
    if spec_os != here_os:
        raise JobError(f"Job spec requires os {spec_os!r} but this runner is {here_os!r}")
    if spec_arch != here_arch:
        raise JobError(
            f"Job spec requires architecture {spec_arch!r} but this runner is {here_arch!r}"
        )
    if image.os is not None and image.os != here_os:
        raise JobError(f"Image is built for os {image.os!r} but this runner is {here_os!r}")
    if image.architecture is not None:
        image_arch = _ARCH_ALIASES.get(image.architecture, image.architecture)
        if image_arch != here_arch:
            raise JobError(
                f"Image is built for architecture {image.architecture!r} "
                f"but this runner is {here_arch!r}"
            )


def benchmark_name(job: ClaimedJob) -> str:
    """Bencher's build-time benchmark name: entrypoint + cmd joined, else image, else project@digest."""
    words = [*(job.config.entrypoint or ()), *(job.config.cmd or ())]
    name = " ".join(words)
    if name:
        return name
    if job.config.image:
        return job.config.image
    return f"{job.config.project}@{job.config.digest}"


def choose_cpus(count: int, placement_cpus: frozenset[int] | None) -> frozenset[int]:
    """The placement's CPUs, else the first ``count`` CPUs this process may run on."""
    if placement_cpus:
        return placement_cpus
    allowed = sorted(os.sched_getaffinity(0))
    if count > len(allowed):
        log.warning("job wants %d CPUs but only %d are available; using all", count, len(allowed))
    return frozenset(allowed[:count])


def choose_mode(job: ClaimedJob, options: ExecOptions) -> SandboxMode:
    """Bencher's rule: no sandbox in the spec needs ``allow_no_sandbox`` and runs in host mode."""
    if job.spec.sandbox is None:
        if not options.allow_no_sandbox:
            raise JobError(NO_SANDBOX_REFUSED)
        return "host"
    return options.mode if options.mode is not None else check_sandbox(options)


def build_plan(job: ClaimedJob, image: PreparedImage, options: ExecOptions) -> JobPlan:
    """The plan for ``job`` on ``image``; raises `JobError` for anything that makes it unrunnable."""
    config = job.config
    check_host(str(job.spec.os), str(job.spec.architecture), image.config)
    mode = choose_mode(job, options)
    argv = resolve_argv(image.config, config.entrypoint, config.cmd)
    env = merge_env(image.config.env, config.env)
    try:
        program = find_program(image.rootfs, argv[0], dict(env))
    except RootPathError as exc:
        raise JobError(f"Config error: {exc}") from None
    workdir = image.config.working_dir or "/"
    if not workdir.startswith("/"):
        workdir = "/" + workdir
    iterations = 1 if config.iter is None else config.iter
    if iterations == 0:
        log.warning("job %s asks for iter=0: no iteration runs (Bencher does the same)", job.uuid)
    placement = options.placement
    memory = None if placement.cgroup_dir is not None else (placement.memory_limit or job.spec.memory)
    return JobPlan(
        job=job.uuid,
        argv=(program, *argv[1:]),
        env=env,
        workdir=workdir,
        rootfs=image.rootfs,
        mode=mode,
        iterations=iterations,
        allow_failure=bool(config.allow_failure),
        timeout=float(config.timeout),
        file_paths=config.file_paths,
        build_time=bool(config.build_time),
        file_size=bool(config.file_size),
        benchmark_name=benchmark_name(job) if config.build_time else None,
        network=job.spec.network,
        cpus=choose_cpus(job.spec.cpu, placement.cpus),
        memory_limit=memory,
        options=options,
    )
