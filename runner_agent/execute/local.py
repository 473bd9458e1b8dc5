"""Jobs for ``runner-agent exec``: a claimed job (and where its image is) from a job JSON file,
an image reference or a local OCI layout directory, with the command line's overrides applied."""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from attrs import frozen

from runner_agent.errors import ImageError
from runner_agent.execute.plan import host_arch
from runner_agent.oci.source import ImageSource, LayoutSource, RegistrySource, parse_image_reference
from runner_agent.protocol import (
    Architecture,
    ClaimedJob,
    JobConfig,
    OperatingSystem,
    ProtocolError,
    Sandbox,
    Spec,
    decode_job,
    decode_job_config,
)

PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
LOCAL_TOKEN = "local.exec.token"


class LocalJobError(ValueError):
    """The SOURCE or an override is unusable; the message names what is wrong."""


@frozen
class Overrides:
    """Command-line overrides of the job (``None``/empty: keep the job's value)."""

    iterations: int | None = None
    timeout: int | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    network: bool = False
    cmd: tuple[str, ...] | None = None


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def local_spec(*, network: bool, no_sandbox: bool) -> Spec:
    """A spec describing this machine: all CPUs we may use, all memory, the host's arch."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    now = _now()
    return Spec(
        uuid=uuid.uuid4(), name="local", slug="local",
        os=OperatingSystem(platform.system().lower()), architecture=Architecture(host_arch()),
        sandbox=None if no_sandbox else Sandbox("firecracker"),
        cpu=len(os.sched_getaffinity(0)), memory=memory, disk=1 << 40, network=network,
        fallback=None, created=now, modified=now, archived=None,
    )


def _claimed(config: JobConfig, spec: Spec, token: str = LOCAL_TOKEN) -> ClaimedJob:
    return ClaimedJob(
        uuid=uuid.uuid4(), spec=spec, config=config, oci_token=token, timeout=config.timeout,
        created=_now(),
    )


def _config_for_image(digest: str | None) -> JobConfig:
    return JobConfig(
        registry="https://localhost/", project=uuid.UUID(int=0),
        digest=digest if digest and digest.startswith("sha256:") else PLACEHOLDER_DIGEST,
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalJobError(f"cannot read job file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise LocalJobError(f"job file {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LocalJobError(f"job file {path} must hold a JSON object (a job or its config)")
    return doc


def job_from_file(path: Path, *, network: bool, no_sandbox: bool) -> tuple[ClaimedJob, ImageSource]:
    """A ``job`` message (``event`` optional) or a bare ``config`` object."""
    doc = _load_json(path)
    try:
        if "config" in doc and "spec" in doc:
            job = decode_job({k: v for k, v in doc.items() if k != "event"})
        else:
            config = decode_job_config(doc)
            job = _claimed(config, local_spec(network=network, no_sandbox=no_sandbox))
    except ProtocolError as exc:
        raise LocalJobError(f"job file {path}: {exc}") from None
    config = job.config
    source = RegistrySource(
        registry=config.registry, repository=str(config.project), digest=config.digest,
        token=job.oci_token if job.oci_token != LOCAL_TOKEN else None,
    )
    return job, source


def resolve_source(
    source: str, *, network: bool, no_sandbox: bool
) -> tuple[ClaimedJob, ImageSource]:
    """SOURCE as a job file, an OCI layout directory or an image reference."""
    path = Path(source)
    if path.is_dir():
        if not (path / "oci-layout").is_file():
            raise LocalJobError(f"{path} is a directory but not an OCI image layout (no oci-layout)")
        config = _config_for_image(None)
        return _claimed(config, local_spec(network=network, no_sandbox=no_sandbox)), LayoutSource(path)
    if path.is_file():
        return job_from_file(path, network=network, no_sandbox=no_sandbox)
    try:
        ref = parse_image_reference(source)
    except ImageError as exc:
        raise LocalJobError(f"SOURCE {source!r} is no file, directory or image reference: {exc}") from None
    config = _config_for_image(ref.digest if ref.is_digest else None)
    config = attrs.evolve(config, image=source)
    return _claimed(config, local_spec(network=network, no_sandbox=no_sandbox)), ref


def apply_overrides(job: ClaimedJob, over: Overrides) -> ClaimedJob:
    """The job with the command line's overrides (validated like the wire values)."""
    config = job.config
    changes: dict[str, Any] = {}
    if over.iterations is not None:
        changes["iter"] = over.iterations
    if over.timeout is not None:
        changes["timeout"] = over.timeout
    if over.env:
        changes["env"] = {**(config.env or {}), **over.env}
    if over.cmd is not None:
        changes["cmd"] = over.cmd
    try:
        config = attrs.evolve(config, **changes)
    except (TypeError, ValueError) as exc:
        raise LocalJobError(str(exc)) from None
    spec = job.spec
    if over.network:
        spec = attrs.evolve(spec, network=True)
    return attrs.evolve(job, config=config, spec=spec, timeout=config.timeout)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``K=V`` strings to a dict; raises `LocalJobError` naming the bad one."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LocalJobError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env
