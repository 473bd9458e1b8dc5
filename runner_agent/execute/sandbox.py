"""Sandbox mode: the bubblewrap command line for one iteration, and the start-up sandbox check.

The benchmark sees the per-iteration overlay (see `overlay`) as ``/``, has its own PID, IPC, UTS,
mount and (unless ``spec.network``) network namespaces, a fresh ``/proc`` and ``/dev``, no
capabilities (bwrap run by root would otherwise keep them: mknod and mount of host disks, lifting
the memory rlimit), an environment made only of the plan's variables, a new session, and dies
with the agent.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from runner_agent.errors import SandboxUnavailableError
from runner_agent.execute.child import probe_prefix
from runner_agent.execute.options import ExecOptions, SandboxMode
from runner_agent.execute.overlay import overlay_available

PROBE_PATH = "/.runner-agent/busybox"
FIX_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and run the agent as root "
    "(it mounts a per-iteration overlay), or accept running benchmarks unsandboxed with "
    "--danger-allow-no-sandbox"
)


def bwrap_argv(
    bwrap: str,
    root: Path,
    argv: Sequence[str],
    env: Sequence[tuple[str, str]],
    workdir: str,
    *,
    network: bool,
    probe: tuple[str, int] | None = None,
) -> list[str]:
    """The bwrap invocation running ``argv`` with ``root`` (writable, private) as ``/``.

    ``probe`` (host busybox, fd): the benchmark runs under ``busybox time`` inside the sandbox
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
    for key, value in env:
        cmd += ["--setenv", key, value]
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
