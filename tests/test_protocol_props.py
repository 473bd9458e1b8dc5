"""Property tests for the wire protocol: round-trips of arbitrary valid messages of every kind,
and arbitrary text / JSON / mutated messages fed to the decoders (only ProtocolError may escape)."""

from __future__ import annotations

import json
import re
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from runner_agent.protocol import (
    Ack,
    Architecture,
    Average,
    Cancel,
    Canceled,
    ClaimedJob,
    Completed,
    Failed,
    Fold,
    Heartbeat,
    IterationOutput,
    JobConfig,
    NoJob,
    OperatingSystem,
    ProtocolError,
    Ready,
    RunnerMessage,
    RunnerMetadata,
    Running,
    Sandbox,
    ServerMessage,
    Spec,
    Update,
    UpdateChannel,
    decode_job,
    decode_job_config,
    decode_runner,
    decode_server,
    encode,
)

HEX = "0123456789abcdef"
B64URL = string.ascii_letters + string.digits + "-_"

sha256s = st.text(HEX, min_size=64, max_size=64)
digests = st.one_of(
    sha256s.map("sha256:".__add__),
    st.text(HEX, min_size=128, max_size=128).map("sha512:".__add__),
)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}", fullmatch=True)
urls = st.builds(
    "{}://{}{}/{}".format,
    st.sampled_from(["http", "https"]),
    hosts,
    st.sampled_from(["", ":5000", ":443"]),
    st.text(string.ascii_letters + string.digits + "/-_.", max_size=30),
)
jwts = st.lists(st.text(B64URL, min_size=1, max_size=40), min_size=3, max_size=3).map(".".join)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
datetimes = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=offsets
)
i32 = st.integers(-(2**31), 2**31 - 1)
positive_i32 = st.integers(1, 2**31 - 1)
positive_i64 = st.integers(1, 2**63 - 1)
texts = st.text()


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


metadata = st.builds(
    RunnerMetadata,
    st.sampled_from(OperatingSystem),
    st.sampled_from(Architecture),
    texts,
    opt(st.sampled_from(UpdateChannel)),
    opt(sha256s),
)
outputs = st.builds(
    IterationOutput,
    i32,
    opt(texts),
    opt(texts),
    opt(st.dictionaries(texts, texts, max_size=4)),
)
results = st.lists(outputs, max_size=4).map(tuple)

runner_messages: st.SearchStrategy[RunnerMessage] = st.one_of(
    st.builds(Ready, opt(st.integers(1, 900)), opt(metadata)),
    st.builds(Running),
    st.builds(Heartbeat),
    st.builds(Completed, st.uuids(), results),
    st.builds(Failed, st.uuids(), results, texts),
    st.builds(Canceled, st.uuids()),
)

specs = st.builds(
    Spec,
    st.uuids(),
    texts,
    texts,
    st.sampled_from(OperatingSystem),
    st.sampled_from(Architecture),
    opt(st.sampled_from(Sandbox)),
    positive_i32,
    positive_i64,
    positive_i64,
    st.booleans(),
    opt(datetimes),
    datetimes,
    datetimes,
    opt(datetimes),
)
str_tuples = st.lists(texts, max_size=64).map(tuple)
configs = st.builds(
    JobConfig,
    registry=urls,
    project=st.uuids(),
    digest=digests,
    image=opt(texts),
    entrypoint=opt(str_tuples),
    cmd=opt(str_tuples),
    env=opt(st.dictionaries(texts, texts, max_size=8)),
    timeout=positive_i32,
    file_paths=opt(st.lists(texts, max_size=10).map(tuple)),
    build_time=opt(st.booleans()),
    file_size=opt(st.booleans()),
    average=opt(st.sampled_from(Average)),
    iter=opt(st.integers(0, 2**32 - 1)),
    fold=opt(st.sampled_from(Fold)),
    allow_failure=opt(st.booleans()),
    backdate=opt(datetimes),
)
jobs = st.builds(ClaimedJob, st.uuids(), specs, configs, jwts, positive_i32, datetimes)

server_messages: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(Ack, opt(st.uuids())),
    jobs,
    st.builds(NoJob),
    st.builds(Cancel),
    st.builds(Update, texts, urls, sha256s),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(runner_messages)
def test_runner_messages_round_trip(message: RunnerMessage) -> None:
    text = encode(message)
    decoded = decode_runner(text)
    assert decoded == message
    assert encode(decoded) == text
    assert next(iter(json.loads(text))) == "event"


@settings(max_examples=200, deadline=None)
@given(server_messages)
def test_server_messages_round_trip(message: ServerMessage) -> None:
    text = encode(message)
    decoded = decode_server(text)
    assert decoded == message
    assert encode(decoded) == text
    assert next(iter(json.loads(text))) == "event"


@settings(deadline=None)
@given(jobs)
def test_job_objects_round_trip_without_event(job: ClaimedJob) -> None:
    obj = json.loads(encode(job))
    del obj["event"]
    assert decode_job(obj) == job
    assert decode_job_config(obj["config"]) == job.config
    # Spec's optional fields are always on the wire (null when absent), others never as null.
    spec = obj["spec"]
    assert {"sandbox", "fallback", "archived"} <= set(spec)
    assert None not in obj["config"].values()


def _only_protocol_errors(frame: str | bytes) -> None:
    for decode in (decode_server, decode_runner):
        try:
            decode(frame)
        except ProtocolError:
            pass


@settings(max_examples=300)
@given(st.text() | st.binary())
def test_arbitrary_frames_raise_only_protocol_error(frame: str | bytes) -> None:
    _only_protocol_errors(frame)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_raises_only_protocol_error(value: Any) -> None:
    _only_protocol_errors(json.dumps(value))
    _only_protocol_errors(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return found
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A valid message of either direction with one value replaced, one key dropped, or a
    random key added somewhere: close to valid, so the decoders' deep paths get exercised."""
    message = draw(st.one_of(runner_messages, server_messages))
    obj = json.loads(encode(message))
    paths = _paths(obj)
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    if paths and action != "add":
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        else:
            del parent[path[-1]]
    else:
        containers = [()] + [p for p in paths if isinstance(_get(obj, p), dict)]
        target = _get(obj, draw(st.sampled_from(containers)))
        target[draw(texts)] = draw(json_values)
    return json.dumps(obj)


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@settings(max_examples=300, deadline=None)
@given(mutated_frames())
def test_mutated_messages_raise_only_protocol_error(frame: str) -> None:
    _only_protocol_errors(frame)


BASE_JOB = ClaimedJob(
    uuid=UUID("550e8400-e29b-41d4-a716-446655440000"),
    spec=Spec(
        UUID("00000000-0000-0000-0000-000000000001"), "spec", "spec", OperatingSystem.LINUX,
        Architecture.X86_64, None, 1, 1, 1, False, None,
        datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), None,
    ),
    config=JobConfig(
        "https://registry.test/", UUID(int=7), "sha256:" + "0" * 64, timeout=60
    ),
    oci_token="a.b.c",
    timeout=60,
    created=datetime(2026, 1, 1, tzinfo=UTC),
)  # fmt: skip
RFC3339_UTC = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3}|\.[0-9]{6})?Z"
)


@settings(max_examples=300)
@given(st.text(string.digits + "-:.+TtZz ", max_size=40), st.sampled_from(["created", "backdate"]))
def test_arbitrary_datetime_text_raises_only_protocol_error(text: str, name: str) -> None:
    obj = json.loads(encode(BASE_JOB))
    if name == "created":
        obj["created"] = text
    else:
        obj["config"]["backdate"] = text
    try:
        decoded = decode_server(json.dumps(obj))
    except ProtocolError:
        return
    assert isinstance(decoded, ClaimedJob)
    moment = decoded.created if name == "created" else decoded.config.backdate
    assert moment is not None and moment.utcoffset() == timedelta(0)


@given(datetimes)
def test_datetimes_encode_as_utc_rfc3339(moment: datetime) -> None:
    job = attrs.evolve(BASE_JOB, created=moment)
    created = json.loads(encode(job))["created"]
    assert RFC3339_UTC.fullmatch(created)
    assert datetime.fromisoformat(created) == moment.astimezone(UTC)
    assert decode_server(encode(job)) == job
