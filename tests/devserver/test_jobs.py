"""Submissions in wire form: bare and wrapped job configs, specs, and the ``job`` frame."""

from __future__ import annotations

import json
from uuid import UUID

import pytest

from runner_agent.devserver.jobs import default_spec, job_frame, parse_submission, to_wire
from runner_agent.protocol import ProtocolError, Sandbox, decode_job

from .conftest import DIGEST, PROJECT, job_config

CONFIG = {"registry": "file:///srv/layout", "project": str(PROJECT), "digest": DIGEST, "timeout": 5}


def test_bare_and_wrapped_submissions() -> None:
    config, spec, timeout = parse_submission(CONFIG)
    assert config.registry == "file:///srv/layout" and spec is None and timeout is None
    _, wire_spec = to_wire(job_config(), default_spec(sandbox=None))
    config, spec, timeout = parse_submission({"config": CONFIG, "spec": wire_spec, "timeout": 7})
    assert spec is not None and spec.sandbox is None and timeout == 7


@pytest.mark.parametrize(
    ("submission", "message"),
    [
        ([], "expected a JSON object"),
        ({**CONFIG, "digest": "sha256:xyz"}, "digest"),
        ({"config": CONFIG, "extra": 1}, "unknown fields"),
        ({"config": CONFIG, "timeout": 0}, "timeout"),
        ({"config": CONFIG, "spec": {"uuid": "nope"}}, "spec"),
    ],
)
def test_invalid_submissions_name_the_problem(submission: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_submission(submission)


def test_job_frame_round_trips_through_the_protocol() -> None:
    config, spec = to_wire(job_config(env={"A": "1"}), default_spec())
    assert spec["sandbox"] == Sandbox.FIRECRACKER.value and spec["fallback"] is None
    job = UUID("3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50")
    text = job_frame(
        uuid=job, config=config, spec=spec, timeout=60, created=1_800_000_000.7, oci_token="a.b.c"
    )
    frame = json.loads(text)
    assert list(frame)[:2] == ["event", "uuid"] and frame["created"] == "2027-01-15T08:00:00Z"
    claimed = decode_job(frame)
    assert claimed.uuid == job and claimed.config.env == {"A": "1"}
