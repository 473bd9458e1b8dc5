"""Execution options: where a benchmark is placed (CPUs, cgroup, memory) and how jobs are run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from attrs import field, frozen

SandboxMode = Literal["sandbox", "host"]
"""``sandbox``: bubblewrap around a per-iteration overlay of the image; ``host``: no isolation."""

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_STREAM_CAP = 1024 * 1024


def _default_work_dir() -> Path:
    return Path(tempfile.gettempdir()) / "runner-agent-exec"


@frozen
class Placement:
    """Where the benchmark runs, decided by the host module.

    ``cpus``: CPU affinity set (else the first ``spec.cpu`` CPUs the agent may use);
    ``cgroup_dir``: an existing cgroup v2 directory the benchmark joins before it executes, whose
    ``cgroup.kill`` ends the kill ladder; ``memory_limit``: bytes, applied as ``RLIMIT_DATA``
    only when there is no cgroup (the cgroup's own ``memory.max`` is the host module's business).
    """

    cpus: frozenset[int] | None = None
    cgroup_dir: Path | None = None
    memory_limit: int | None = None


@frozen
class ExecOptions:
    """How the agent runs jobs (one value per agent; tests and ``exec`` build their own).

    ``mode`` ``None`` means "decide with `check_sandbox`" (bwrap if it works, else host mode if
    allowed). ``stream_cap`` bounds what is kept of each of stdout/stderr (head + tail);
    ``file_read_cap`` bounds what is read of one iteration's ``file_paths`` together.
    """

    allow_no_sandbox: bool = False
    kill_grace: float = 5.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    stream_cap: int = DEFAULT_STREAM_CAP
    work_dir: Path = field(factory=_default_work_dir)
    placement: Placement = Placement()
    mode: SandboxMode | None = None
    bwrap: str = "bwrap"
    file_read_cap: int = DEFAULT_MAX_MESSAGE_SIZE

    def __attrs_post_init__(self) -> None:
        if self.kill_grace < 0:
            raise ValueError(f"kill_grace must be >= 0 seconds, got {self.kill_grace}")
        if self.max_message_size < 1024:
            raise ValueError(f"max_message_size must be >= 1024 bytes, got {self.max_message_size}")
        if self.stream_cap < 64:
            raise ValueError(f"stream_cap must be >= 64 bytes, got {self.stream_cap}")
