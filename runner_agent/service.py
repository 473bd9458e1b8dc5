"""The systemd service: render the unit and the key-holding environment file, and install them.

Pure rendering (`render_unit`, `render_env_file`) is separate from writing (`install`), so tests and
``--dry-run`` see exactly the bytes that would be written.

Why the unit looks like it does:
- ``KillMode=mixed`` + ``KillSignal=SIGTERM``: on ``systemctl stop`` only the agent gets SIGTERM,
  which is its *drain* (finish the running job, deliver the result, exit 0); the benchmark's
  processes are the agent's to stop. Whatever is still alive after ``TimeoutStopSec`` gets SIGKILL.
- ``TimeoutStopSec`` = the drain timeout: the longest job you run plus time to deliver its result
  (default 3900 s = a 1 h job + 5 min). Too short and systemd kills a benchmark mid-run.
- ``Restart=always`` with ``RestartSec``; exit status 2 (bad flags/config) is not restarted, since it
  needs an operator (fix it, then ``systemctl restart runner-agent``).
- ``StateDirectory=``/``CacheDirectory=`` create ``/var/lib/runner-agent`` (outbox, dead letters)
  and ``/var/cache/runner-agent`` (images): the agent's defaults when running as root.
- ``Delegate=yes``: the agent makes a cgroup per job (cpuset, memory, pids) below its own;
  systemd hands that subtree to the agent only when delegated, and otherwise owns it.
- The key is only in the environment file (mode 0600, created that way, never world-readable).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from attrs import field, frozen

from runner_agent.errors import AgentError
from runner_agent.fsutil import atomic_write

UNIT_NAME = "runner-agent"
DEFAULT_UNIT_PATH = Path("/etc/systemd/system/runner-agent.service")
DEFAULT_ENV_FILE = Path("/etc/runner-agent/runner-agent.env")
DEFAULT_DRAIN_TIMEOUT_S = 3900
DEFAULT_RESTART_SEC = 10
DEFAULT_LIMIT_NOFILE = 65536
MIN_DRAIN_TIMEOUT_S = 30
MAX_DRAIN_TIMEOUT_S = 7 * 24 * 3600

ENV_FILE_MODE = 0o600
UNIT_FILE_MODE = 0o644

# Characters that need no quoting in an ExecStart= argument.
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9/._+:@=,-]+$")
# Values we put unquoted into the environment file.
_ENV_VALUE = re.compile(r"^[\x21-\x7e]+$")
_ENV_UNSAFE = set("\"'\\$`")


class ServiceError(AgentError):
    """The service files cannot be rendered or installed; the message says why and what to do."""


@frozen
class ServiceSpec:
    """Everything the unit and the environment file are made from."""

    executable: Path
    host: str
    runner: str
    key: str = field(repr=False)
    env_file: Path = DEFAULT_ENV_FILE
    config_file: Path | None = None
    drain_timeout_s: int = DEFAULT_DRAIN_TIMEOUT_S
    restart_sec: int = DEFAULT_RESTART_SEC
    limit_nofile: int = DEFAULT_LIMIT_NOFILE

    def __attrs_post_init__(self) -> None:
        if not self.executable.is_absolute():
            raise ServiceError(f"executable {self.executable} must be an absolute path")
        for what, path in (("env file", self.env_file), ("config file", self.config_file)):
            if path is not None and (not path.is_absolute() or _has_space_or_control(str(path))):
                raise ServiceError(f"{what} {path} must be an absolute path without spaces")
        if not MIN_DRAIN_TIMEOUT_S <= self.drain_timeout_s <= MAX_DRAIN_TIMEOUT_S:
            raise ServiceError(
                f"drain timeout {self.drain_timeout_s} s is out of range "
                f"({MIN_DRAIN_TIMEOUT_S}..{MAX_DRAIN_TIMEOUT_S})"
            )
        if self.restart_sec < 1:
            raise ServiceError(f"restart delay must be at least 1 s, got {self.restart_sec}")
        if self.limit_nofile < 1024:
            raise ServiceError(f"open-file limit must be at least 1024, got {self.limit_nofile}")
        for name, value in (("host", self.host), ("runner", self.runner), ("key", self.key)):
            if not _ENV_VALUE.match(value) or _ENV_UNSAFE & set(value):
                shown = "(hidden)" if name == "key" else repr(value)
                raise ServiceError(
                    f"{name} {shown} cannot go into the environment file: it must be printable "
                    "ASCII without spaces, quotes, backslashes, $ or backticks"
                )


@frozen
class ServiceFiles:
    """The rendered files and where they go (paths already include any ``--root`` prefix)."""

    unit_path: Path
    unit_text: str
    env_path: Path
    env_text: str = field(repr=False)


def _has_space_or_control(text: str) -> bool:
    return any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def systemd_quote(arg: str) -> str:
    """One ExecStart= argument, quoted when needed; ``%`` and ``$`` are escaped for systemd."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
        raise ServiceError(f"argument {arg!r} contains control characters")
    out = (
        arg if _PLAIN_ARG.match(arg) else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )
    return out.replace("%", "%%").replace("$", "$$")


def exec_start(spec: ServiceSpec) -> str:
    """The ExecStart= command line: ``<executable> run [--config PATH]``."""
    args = [str(spec.executable), "run"]
    if spec.config_file is not None:
        args += ["--config", str(spec.config_file)]
    return " ".join(systemd_quote(a) for a in args)


def render_unit(spec: ServiceSpec) -> str:
    """The text of ``runner-agent.service``."""
    return f"""\
# runner-agent: Bencher benchmark runner. Written by `runner-agent install-service`.
# Stop = drain: SIGTERM lets the running job finish and deliver its result, so TimeoutStopSec
# must cover the longest job plus delivery. Logs: journalctl -u {UNIT_NAME}
[Unit]
Description=Bencher benchmark runner agent (runner-agent)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={exec_start(spec)}
EnvironmentFile={spec.env_file}
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec={spec.restart_sec}
RestartPreventExitStatus=2
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={spec.drain_timeout_s}
Delegate=yes
StateDirectory={UNIT_NAME}
StateDirectoryMode=0700
CacheDirectory={UNIT_NAME}
CacheDirectoryMode=0700
LimitNOFILE={spec.limit_nofile}

[Install]
WantedBy=multi-user.target
"""


def render_env_file(spec: ServiceSpec, *, redact_key: bool = False) -> str:
    """The environment file; ``redact_key`` replaces the key (for printing)."""
    key = f"<redacted: {len(spec.key)} characters>" if redact_key else spec.key
    return f"""\
# runner-agent service environment. Written by `runner-agent install-service`.
# Holds the runner key: keep it mode 0600, owned by root.
BENCHER_HOST={spec.host}
BENCHER_RUNNER={spec.runner}
BENCHER_RUNNER_KEY={key}
"""


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to(path.anchor)


def service_files(
    spec: ServiceSpec, *, root: Path = Path("/"), unit_path: Path = DEFAULT_UNIT_PATH
) -> ServiceFiles:
    """Render both files and place them under ``root``."""
    return ServiceFiles(
        unit_path=_under(root, unit_path),
        unit_text=render_unit(spec),
        env_path=_under(root, spec.env_file),
        env_text=render_env_file(spec),
    )


def systemctl_commands() -> list[str]:
    """What the operator runs after installing."""
    return [
        f"systemctl daemon-reload && systemctl enable --now {UNIT_NAME}",
        f"systemctl status {UNIT_NAME}",
        f"journalctl -u {UNIT_NAME} -f",
    ]


def _write_atomically(path: Path, text: str, mode: int, *, replace: bool) -> None:
    """Write durably via a temp file created 0600 in the same folder (see :func:`atomic_write`).

    ``replace=False`` links the new file into place, which fails if ``path`` exists (no race).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, text, mode=mode, exclusive=not replace)
    except FileExistsError:
        if replace:
            raise
        raise ServiceError(f"{path} already exists; pass --force to overwrite it") from None


def install(files: ServiceFiles, *, force: bool = False) -> None:
    """Write the environment file (0600) and the unit (0644).

    Without ``force`` an existing environment file is never touched, and nothing is written.
    """
    if files.env_path.exists() and not force:
        raise ServiceError(f"{files.env_path} already exists; pass --force to overwrite it")
    try:
        _write_atomically(files.env_path, files.env_text, ENV_FILE_MODE, replace=force)
        _write_atomically(files.unit_path, files.unit_text, UNIT_FILE_MODE, replace=True)
    except PermissionError as error:
        raise ServiceError(
            f"cannot write {error.filename}: permission denied; run as root (sudo) "
            "or use --dry-run to see the files"
        ) from None
    except OSError as error:
        raise ServiceError(f"cannot write {error.filename}: {error.strerror or error}") from None


def find_executable() -> Path:
    """The absolute path of the running ``runner-agent`` program (symlinks kept, e.g. pipx's)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "runner-agent" and argv0.exists():
        return Path(os.path.abspath(argv0))
    found = shutil.which("runner-agent")
    if found is not None:
        return Path(os.path.abspath(found))
    raise ServiceError("cannot find the runner-agent executable on PATH; pass --executable PATH")
