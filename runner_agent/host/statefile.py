"""Durable JSON files in the state dir: atomic replace with fsync of the file and its directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner_agent.fsutil import atomic_write


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` so that a crash leaves either the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    atomic_write(path, text, mode=0o644)
