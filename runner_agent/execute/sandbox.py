"""Sandbox mode: the bubblewrap command line for one iteration, and the start-up sandbox check.

The benchmark sees the per-iteration overlay (see `overlay`) as ``/``, has its own PID, IPC, UTS,
mount and (unless ``spec.network``) network namespaces, a fresh ``/proc`` and ``/dev``, no
capabilities (bwrap run by root would otherwise keep them: mknod and mount of host disks, lifting
the memory rlimit), an environment made only of the plan's variables, a new session, and dies
with the agent.

The environment reaches bwrap as ``--setenv`` pairs read from a memfd (``--args FD``), never on its
command line: ``/proc/<pid>/cmdline`` is readable by every local user, and a job's env can hold a
project's secrets. The fd is readable only by the agent's user (and bwrap closes it after reading).
bwrap itself runs with an empty process environment: the job's variables must not steer the
host-side gate or bwrap (``LD_PRELOAD`` naming a library inside the unpacked image, run as root).
``--clearenv`` keeps only ``PWD``, which bwrap sets to the working dir inside the sandbox.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from runner_agent.errors import JobError, SandboxUnavailableError
from runner_agent.execute.child import probe_prefix
from runner_agent.execute.options import ExecOptions, SandboxMode
from runner_agent.execute.overlay import overlay_available

PROBE_PATH = "/.runner-agent/busybox"
FIX_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and run the agent as root "
    "(it mounts a per-iteration overlay), or accept running benchmarks unsandboxed with "
    "--danger-allow-no-sandbox"
)


def env_args(env: Sequence[tuple[str, str]]) -> bytes:
    """``env`` as bwrap ``--args`` data: NUL-terminated ``--setenv KEY VALUE`` arguments.

    A NUL inside a name or value would split it into further bwrap options, so it is refused
    (the plan already rejects it; this is the last line before bwrap).
    """
    parts: list[str] = []
    for key, value in env:
        if "\0" in key or "\0" in value or not key or "=" in key:
            raise JobError(f"Execution error: env variable {key!r} cannot be passed to bwrap")
        parts += ["--setenv", key, value]
    return b"".join(part.encode("utf-8", "surrogateescape") + b"\0" for part in parts)


def env_args_fd(env: Sequence[tuple[str, str]]) -> int:
    """A close-on-exec memfd holding `env_args` of ``env``, positioned at its start; the caller
    passes it to bwrap (``pass_fds``) and closes its own copy."""
    fd = os.memfd_create("runner-agent-env", os.MFD_CLOEXEC)
    try:
        data = memoryview(env_args(env))
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def bwrap_argv(
    bwrap: str,
    root: Path,
    argv: Sequence[str],
    env_fd: int | None,
    workdir: str,
    *,
    network: bool,
    probe: tuple[str, int] | None = None,
) -> list[str]:
    """The bwrap invocation running ``argv`` with ``root`` (writable, private) as ``/``.

    ``env_fd`` (from `env_args_fd`, inherited by bwrap) carries the benchmark's environment;
    ``None`` runs it with an empty one. ``probe`` (host busybox, fd): the benchmark runs under ``busybox time`` inside the sandbox
    (bound read-only at `PROBE_PATH`), which reports its peak RSS and CPU times into ``fd`` —
    bwrap's own init does not pass its children's resource usage on.
    """
    cmd = [bwrap, "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev"]
    if probe is not None:
        cmd += ["--ro-bind", probe[0], PROBE_PATH]
        argv = [*probe_prefix(PROBE_PATH, probe[1]), *argv]
    cmd += ["--perms", "1777", "--dir", "/tmp"]
    cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    cmd += ["--share-net"] if network else ["--unshare-net"]
    cmd += ["--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv"]
    if env_fd is not None:
        cmd += ["--args", str(env_fd)]
    if workdir != "/":
        cmd += ["--dir", workdir]
    cmd += ["--chdir", workdir, "--", *argv]
    return cmd


def probe_bwrap(bwrap: str, work_dir: Path) -> str | None:
    """``None`` if bwrap + overlay can run a sandbox here, else why not."""
    path = shutil.which(bwrap)
    if path is None:
        return f"{bwrap!r} was not found on PATH"
    reason = overlay_available(work_dir)
    if reason is not None:
        return f"cannot mount the per-iteration overlay ({reason})"
    cmd = [path, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all",
           "--die-with-parent", "--new-session", "--", "true"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"running {path} failed: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        return f"{path} cannot create namespaces here (exit {done.returncode}: {err})"
    return None


@functools.lru_cache(maxsize=8)
def _cached_probe(bwrap: str, work_dir: Path) -> str | None:
    return probe_bwrap(bwrap, work_dir)


def check_sandbox(options: ExecOptions) -> SandboxMode:
    """The mode jobs will run in: ``sandbox`` when bwrap works, ``host`` when it does not but
    host mode is allowed; otherwise raises `SandboxUnavailableError` saying how to fix it.
    An explicit ``options.mode`` is verified, not guessed."""
    if options.mode == "host":
        if not options.allow_no_sandbox:
            raise SandboxUnavailableError("host mode requires --danger-allow-no-sandbox")
        return "host"
    reason = _cached_probe(options.bwrap, options.work_dir)
    if reason is None:
        return "sandbox"
    if options.allow_no_sandbox and options.mode is None:
        return "host"
    raise SandboxUnavailableError(f"No working sandbox: {reason}. Fix: {FIX_HINT}")
