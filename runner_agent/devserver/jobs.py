"""Job submissions in wire form: the default spec, config validation, and the ``job`` frame.

The store keeps a job's ``config`` and ``spec`` as the exact JSON Bencher would send (validated
through :mod:`runner_agent.protocol` on the way in), so records persist as plain JSON and the
``job`` frame is rebuilt at claim time with a fresh OCI token.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid5

from runner_agent.execute.plan import host_arch
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
    encode,
)

JsonObject = dict[str, Any]

_SPEC_NAMESPACE = UUID("6c1f0d2a-5b4e-4c3d-8a9b-1e2f3a4b5c6d")
_PLACEHOLDER_TOKEN = "e30.e30.placeholder"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def local_architecture() -> Architecture:
    """This machine's architecture (``x86_64`` when Bencher has no name for it)."""
    try:
        return Architecture(host_arch())
    except ValueError:
        return Architecture.X86_64


def default_spec(sandbox: Sandbox | None = Sandbox.FIRECRACKER) -> Spec:
    """A spec describing this machine (``firecracker`` sandbox, as Bencher's specs have)."""
    arch = local_architecture()
    return Spec(
        uuid=uuid5(_SPEC_NAMESPACE, f"dev-server-{arch.value}"),
        name=f"dev server {arch.value}",
        slug=f"dev-server-{arch.value.replace('_', '-')}",
        os=OperatingSystem.LINUX,
        architecture=arch,
        sandbox=sandbox,
        cpu=2,
        memory=4 * 1024**3,
        disk=10 * 1024**3,
        network=False,
        fallback=None,
        created=_EPOCH,
        modified=_EPOCH,
        archived=None,
    )


def to_wire(config: JobConfig, spec: Spec) -> tuple[JsonObject, JsonObject]:
    """The ``config`` and ``spec`` objects exactly as they appear in a ``job`` frame."""
    frame = json.loads(
        encode(
            ClaimedJob(
                uuid=UUID(int=0),
                spec=spec,
                config=config,
                oci_token=_PLACEHOLDER_TOKEN,
                timeout=config.timeout,
                created=_EPOCH,
            )
        )
    )
    return frame["config"], frame["spec"]


def parse_submission(obj: object) -> tuple[JobConfig, Spec | None, int | None]:
    """A spool/HTTP submission: either a bare ``JsonJobConfig`` object, or
    ``{"config": {...}, "spec": {...}?, "timeout": N?}``. Raises :class:`ProtocolError`."""
    if not isinstance(obj, dict):
        raise ProtocolError("submission: expected a JSON object")
    if "config" not in obj:
        return decode_job_config(obj), None, None
    unknown = set(obj) - {"config", "spec", "timeout"}
    if unknown:
        raise ProtocolError(f"submission: unknown fields {sorted(unknown)}")
    config = decode_job_config(obj["config"])
    spec: Spec | None = None
    if obj.get("spec") is not None:
        spec_obj = obj["spec"]
        if not isinstance(spec_obj, dict):
            raise ProtocolError("spec: expected a JSON object")
        # validate the spec through the same decoder the agent uses
        spec = decode_job(
            {
                "uuid": str(UUID(int=0)),
                "spec": spec_obj,
                "config": obj["config"],
                "oci_token": _PLACEHOLDER_TOKEN,
                "timeout": config.timeout,
                "created": "2026-01-01T00:00:00Z",
            }
        ).spec
    timeout = obj.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 2**31 - 1
    ):
        raise ProtocolError(f"timeout: must be an integer in 1..=2147483647, got {timeout!r}")
    return config, spec, timeout


def rfc3339(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(int(epoch_seconds), tz=UTC)


def job_frame(
    *, uuid: UUID, config: JsonObject, spec: JsonObject, timeout: int, created: float, oci_token: str
) -> str:
    """The ``job`` text frame for a claimed job."""
    claimed = decode_job(
        {
            "uuid": str(uuid),
            "spec": spec,
            "config": config,
            "oci_token": oci_token,
            "timeout": timeout,
            "created": rfc3339(created).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    return encode(claimed)
