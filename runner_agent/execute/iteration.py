"""One iteration: a private root, the gated child, concurrent bounded draining, file collection.

On cancellation (job cancel or timeout) or any other exception (KeyboardInterrupt) the kill
ladder runs shielded, so the process tree is gone before the exception propagates; ``metrics``
is set in every case once the root exited.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from attrs import frozen

from runner_agent.errors import JobError
from runner_agent.execute.capture import BoundedCapture
from runner_agent.execute.child import Child, probe_prefix, rss_probe
from runner_agent.execute.overlay import OverlayError, Scratch
from runner_agent.execute.pipe_drain import drain
from runner_agent.execute.plan import JobPlan
from runner_agent.execute.results import IterationMetrics, exit_code_of
from runner_agent.execute.rootpath import RootPathError, resolve_in_root
from runner_agent.execute.sandbox import bwrap_argv, env_args_fd

log = logging.getLogger(__name__)
_shared_rootfs_warned = False


def _warn_shared_rootfs_once(reason: str) -> None:
    """Host mode without overlay rights is a property of the machine, not of one iteration: say it
    once per process (at WARNING), then only at DEBUG."""
    global _shared_rootfs_warned
    level = logging.DEBUG if _shared_rootfs_warned else logging.WARNING
    _shared_rootfs_warned = True
    log.log(level, "host mode without a private overlay (%s): benchmarks run in the shared, "
            "cached rootfs and can change it for later jobs", reason)

DRAIN_GUARD_S = 5.0


@frozen
class IterationResult:
    """What one finished iteration produced (before conversion to Bencher's wire form)."""

    exit_code: int
    stdout: str
    stderr: str
    files: dict[str, bytes] | None
    file_sizes: dict[str, int] | None
    metrics: IterationMetrics


@asynccontextmanager
async def iteration_root(plan: JobPlan) -> AsyncIterator[Path]:
    """The root the iteration runs in: a private overlay (always in sandbox mode; in host mode
    when the kernel lets us), else the shared rootfs itself (host mode only). The overlay is
    removed in a worker thread (unmounting takes milliseconds), even when cancelled."""
    scratch: Scratch | None = None
    try:
        scratch = Scratch(plan.rootfs, plan.options.work_dir)
    except OverlayError as exc:
        if plan.mode == "sandbox":
            raise JobError(f"Execution error: cannot create the iteration's root: {exc}") from exc
        _warn_shared_rootfs_once(str(exc))
    except OSError as exc:
        raise JobError(f"Execution error: cannot create the iteration's root: {exc}") from exc
    try:
        yield scratch.merged if scratch is not None else plan.rootfs
    finally:
        if scratch is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(scratch.remove)


def collect_files(
    root: Path, paths: tuple[str, ...] | None, cap: int
) -> tuple[dict[str, bytes] | None, dict[str, int] | None]:
    """Bencher's rule: read each path (inside the root); a missing or unreadable file is skipped
    with a warning; no file at all gives ``None``. At most ``cap`` bytes are read in all, each
    path getting an equal share (the terminal message could not carry more; 255 paths must not
    mean 255 x ``cap`` in memory). Only regular files are read (opened non-blocking: a FIFO the
    benchmark left must not stall the agent)."""
    if paths is None:
        return None, None
    cap = max(1, cap // max(1, len(paths)))
    files: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    for path in paths:
        try:
            host = resolve_in_root(root, path)
            fd = os.open(host, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as fh:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise RootPathError(f"{path} is not a regular file")
                size = info.st_size
                data = fh.read(cap)
        except (RootPathError, OSError) as exc:
            log.warning("output file %s not collected: %s", path, exc)
            continue
        if size > cap:
            marker = f"\n[runner-agent: file truncated, {size - cap} of {size} bytes not read]\n"
            data += marker.encode()
        files[path] = data
        sizes[path] = size
    if not files:
        return None, None
    return files, sizes


def host_program(root: Path, program: str) -> Path:
    """The host path of the in-image ``program``: its directory resolved inside the root, its
    own name kept when it is a relative symlink (multi-call binaries like busybox dispatch on
    it); an absolute symlink is resolved inside the root too."""
    parent, _, name = program.rpartition("/")
    candidate = resolve_in_root(root, parent or "/") / name
    if candidate.is_symlink() and os.readlink(candidate).startswith("/"):
        return resolve_in_root(root, program)
    return candidate


class Iteration:
    """Runs iteration ``index`` of ``plan``; read ``metrics`` after `run` (also when cancelled)."""

    def __init__(self, plan: JobPlan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.metrics: IterationMetrics | None = None

    def _command(
        self, root: Path, probe: str | None, env_fd: int | None
    ) -> tuple[Callable[[int | None], list[str]], dict[str, str], Path]:
        """The command builder, the gate's process environment and its working dir. Sandbox:
        bwrap with an empty environment, the plan's env read from ``env_fd``; host: the plan's
        env is the process environment (never on a command line either way)."""
        plan = self.plan
        if plan.mode == "sandbox":
            # the binary the start-up check found on the agent's PATH (the gate has no PATH)
            bwrap = shutil.which(plan.options.bwrap) or plan.options.bwrap

            def sandboxed(fd: int | None) -> list[str]:
                return bwrap_argv(
                    bwrap, root, plan.argv, env_fd, plan.workdir,
                    network=plan.network,
                    probe=(probe, fd) if probe is not None and fd is not None else None,
                )

            return sandboxed, {}, Path("/")
        program = host_program(root, plan.argv[0])
        try:
            cwd = resolve_in_root(root, plan.workdir)
        except RootPathError:
            log.warning("working dir %s not in the image; using its root", plan.workdir)
            cwd = root

        def on_host(fd: int | None) -> list[str]:
            prefix = probe_prefix(probe, fd) if probe is not None and fd is not None else []
            return [*prefix, str(program), *plan.argv[1:]]

        return on_host, dict(plan.env), cwd

    async def run(self) -> IterationResult:
        plan = self.plan
        async with iteration_root(plan) as root:
            probe = rss_probe()
            sandboxed = plan.mode == "sandbox"
            env_fd = env_args_fd(plan.env) if sandboxed else None
            try:
                build, env, cwd = self._command(root, probe, env_fd)
            except BaseException:
                if env_fd is not None:
                    os.close(env_fd)
                raise
            child = Child(
                build, env, cwd,
                adopt_orphans=not sandboxed,
                # sandbox: bwrap, its init (and the probe); host: the probe
                spare_depth=(2 if probe else 1) if sandboxed else (0 if probe else -1),
                probe=probe is not None,
                inherit_fds=() if env_fd is None else (env_fd,),
            )
            try:
                out = BoundedCapture("stdout", plan.options.stream_cap)
                err = BoundedCapture("stderr", plan.options.stream_cap)
                child.place(plan.cpus, plan.options.placement.cgroup_dir, plan.memory_limit)
                await self._supervise(child, out, err)
            finally:
                child.close()
                await child.stdout.aclose()
                await child.stderr.aclose()
            files, sizes = collect_files(root, plan.file_paths, plan.options.file_read_cap)
        metrics = self.metrics
        assert metrics is not None
        return IterationResult(
            exit_code=exit_code_of(metrics.exit_code, metrics.signal),
            stdout=out.text(),
            stderr=err.text(),
            files=files,
            file_sizes=sizes,
            metrics=metrics,
        )

    async def _supervise(self, child: Child, out: BoundedCapture, err: BoundedCapture) -> None:
        """Release the child, wait for it and drain both pipes to EOF (bounded by the drain
        guard). The metrics are recorded once the drains ended, so the byte counts include what
        was still in the pipes when the process exited."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, child.stdout, out)
                nursery.start_soon(drain, child.stderr, err)
                try:
                    child.release()
                    await child.wait()
                    await child.kill_rest()  # leftovers of a finished benchmark (host mode)
                except BaseException:  # cancel, timeout, KeyboardInterrupt, a failing drain...
                    with trio.CancelScope(shield=True):
                        await child.terminate(self.plan.options.kill_grace)
                    raise
                nursery.cancel_scope.deadline = trio.current_time() + DRAIN_GUARD_S
        finally:
            if child.status is not None:
                self._record(child, out, err)

    def _record(self, child: Child, out: BoundedCapture, err: BoundedCapture) -> None:
        status = child.status or 0
        usage = child.rusage
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        max_rss = usage.ru_maxrss if usage else 0
        user_s = usage.ru_utime if usage else 0.0
        sys_s = usage.ru_stime if usage else 0.0
        if child.usage is not None:  # the probe saw the benchmark itself
            probed = child.usage
            exit_code, sig, max_rss = probed.exit_code, probed.signal, probed.max_rss_kb
            user_s, sys_s = probed.user_s, probed.sys_s
        self.metrics = IterationMetrics(
            iteration=self.index,
            wall_s=max(0.0, child.exited - child.started),
            user_s=user_s,
            sys_s=sys_s,
            max_rss_kb=max_rss,
            exit_code=exit_code,
            signal=sig,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            dropped_bytes=out.dropped + err.dropped,
            killed=child.killed,
        )
        log.info(
            "iteration %d: exit=%s signal=%s wall=%.3fs user=%.3fs sys=%.3fs max_rss=%dKiB "
            "stdout=%dB stderr=%dB dropped=%dB%s",
            self.index, self.metrics.exit_code, self.metrics.signal, self.metrics.wall_s,
            self.metrics.user_s, self.metrics.sys_s, self.metrics.max_rss_kb,
            out.total, err.total, self.metrics.dropped_bytes, " (killed)" if child.killed else "",
        )
