"""Helpers for execution tests: claimed jobs from dicts, plans on a busybox rootfs, /proc scans."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from runner_agent.execute import ExecOptions, JobPlan, build_plan
from runner_agent.execute.options import SandboxMode
from runner_agent.oci.image import ImageConfig, PreparedImage
from runner_agent.protocol import ClaimedJob, decode_job

ARCH = {"arm64": "aarch64", "amd64": "x86_64"}.get(platform.machine(), platform.machine())
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


def job_dict(config: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "uuid": "550e8400-e29b-41d4-a716-446655440000",
        "spec": {
            "uuid": "00000000-0000-0000-0000-000000000001", "name": "t", "slug": "t",
            "os": "linux", "architecture": ARCH, "sandbox": "firecracker", "cpu": 1,
            "memory": 1 << 30, "disk": 1 << 30, "network": False,
            "created": "2025-01-01T00:00:00Z", "modified": "2025-01-01T00:00:00Z", **spec,
        },
        "config": {
            "registry": "https://registry.example/",
            "project": "11111111-2222-3333-4444-555555555555",
            "digest": "sha256:" + "a" * 64,
            "timeout": 60,
            **(config or {}),
        },
        "oci_token": TOKEN,
        "timeout": 60,
        "created": "2025-01-01T00:00:00Z",
    }


def make_job(config: dict[str, Any] | None = None, **spec: Any) -> ClaimedJob:
    return decode_job(job_dict(config, **spec))


def image(rootfs: Path, **config: Any) -> PreparedImage:
    defaults: dict[str, Any] = {"cmd": ("/bin/sh",), "env": ("PATH=/bin",)}
    defaults.update(config)
    return PreparedImage("sha256:" + "b" * 64, rootfs, ImageConfig(**defaults))


def options(tmp: Path, mode: SandboxMode, **kw: Any) -> ExecOptions:
    return ExecOptions(allow_no_sandbox=True, mode=mode, work_dir=tmp / "work", **kw)


def plan_for(
    rootfs: Path, tmp: Path, mode: SandboxMode, script: str, config: dict[str, Any] | None = None,
    opts: dict[str, Any] | None = None, **spec: Any,
) -> JobPlan:
    cfg = {"entrypoint": ["/bin/sh", "-c"], "cmd": [script], **(config or {})}
    if mode == "host":
        spec.setdefault("sandbox", None)
    return build_plan(make_job(cfg, **spec), image(rootfs), options(tmp, mode, **(opts or {})))


def processes_with(marker: str) -> list[int]:
    """Live or zombie processes whose command line contains ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if marker.encode() in cmdline and int(name) != os.getpid():
            found.append(int(name))
    return found


def sleepers(marker: str) -> list[int]:
    """Processes that are exactly ``sleep <marker>``."""
    want = f"sleep\0{marker}\0".encode()
    found = []
    for pid in processes_with(marker):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read() == want:
                    found.append(pid)
        except OSError:
            continue
    return found
