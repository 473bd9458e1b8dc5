"""A busybox root filesystem built directly on disk (no OCI involved), for execution tests."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "cat", "echo", "env", "sleep", "true", "false", "mkdir", "printf", "nc", "ls", "kill",
    "setsid", "dd", "head", "yes", "wget", "id", "pwd", "sync",
)


def make_busybox_rootfs(root: Path, files: Mapping[str, bytes] | None = None) -> Path:
    """``root`` with ``/bin/busybox``, its applet symlinks, ``/tmp``, ``/etc`` and ``files``."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/sh\n")
    for rel, data in (files or {}).items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
