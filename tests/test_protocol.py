"""Wire-protocol tests against the shared Bencher wire samples and hand-picked edge cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from runner_agent.protocol import (
    RUNNER_KEY_PREFIX,
    Ack,
    Architecture,
    Cancel,
    Canceled,
    ClaimedJob,
    CloseReason,
    Completed,
    Failed,
    Heartbeat,
    IterationOutput,
    JobConfig,
    NoJob,
    OperatingSystem,
    ProtocolError,
    Ready,
    RunnerMetadata,
    Running,
    Sandbox,
    Update,
    UpdateChannel,
    decode_job,
    decode_job_config,
    decode_runner,
    decode_server,
    encode,
    is_valid_runner_key,
    parse_close_reason,
    terminal_job,
)

JOB = UUID("3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50")
SHA = "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _job_full(fixtures: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures / "job_full.json").read_text())
    return data


# ---------------------------------------------------------------------------- shared fixtures


def test_runner_fixture_lines_round_trip_to_exact_text(fixtures: Path) -> None:
    lines = _lines(fixtures / "runner_messages.jsonl")
    assert len(lines) == 8
    for line in lines:
        assert encode(decode_runner(line)) == line


def test_runner_fixture_lines_decode_to_expected_values(fixtures: Path) -> None:
    decoded = [decode_runner(line) for line in _lines(fixtures / "runner_messages.jsonl")]
    assert decoded == [
        Ready(),
        Ready(55, RunnerMetadata(OperatingSystem.LINUX, Architecture.X86_64, "0.6.12")),
        Ready(
            55,
            RunnerMetadata(
                OperatingSystem.LINUX, Architecture.AARCH64, "0.6.12", UpdateChannel.CANARY, SHA
            ),
        ),
        Running(),
        Heartbeat(),
        Completed(
            JOB,
            (
                IterationOutput(
                    0,
                    stdout="ok\n",
                    output={"/output/results.json": '{"bench":{"latency":{"value":1.5}}}'},
                ),
            ),
        ),
        Failed(
            JOB,
            (IterationOutput(137, stderr="killed\n"),),
            "Benchmark exited with non-zero exit code: 137",
        ),
        Canceled(JOB),
    ]


def test_server_fixture_lines_round_trip(fixtures: Path) -> None:
    lines = _lines(fixtures / "server_messages.jsonl")
    decoded = [decode_server(line) for line in lines]
    assert decoded[:4] == [Ack(JOB), Ack(), NoJob(), Cancel()]
    update = decoded[4]
    assert isinstance(update, Update)
    assert update.version == "0.6.12" and update.checksum == SHA
    for line, message in zip(lines, decoded, strict=True):
        assert json.loads(encode(message)) == json.loads(line)
        assert encode(message) == line


def test_job_full_round_trips(fixtures: Path) -> None:
    text = (fixtures / "job_full.json").read_text()
    job = decode_server(text)
    assert isinstance(job, ClaimedJob)
    assert job.uuid == JOB
    assert job.spec.sandbox is Sandbox.FIRECRACKER
    assert job.spec.fallback is None and job.spec.archived is None
    assert job.spec.created == datetime(2026, 8, 1, 12, tzinfo=UTC)
    assert job.config.entrypoint == ("/bin/sh", "-c")
    assert job.config.env == {"RUST_LOG": "info"}
    assert job.config.backdate == datetime(2026, 8, 20, tzinfo=UTC)
    encoded = encode(job)
    assert json.loads(encoded) == json.loads(text)
    # Same key order as the sample, compact separators, event first.
    assert encoded == json.dumps(json.loads(text), separators=(",", ":"))


def test_job_minimal_round_trips_with_spec_nulls_filled(fixtures: Path) -> None:
    text = (fixtures / "job_minimal.json").read_text()
    job = decode_server(text)
    assert isinstance(job, ClaimedJob)
    assert job.spec.sandbox is None
    assert job.config.image is None and job.config.cmd is None and job.config.iter is None
    # The sample omits spec.sandbox/fallback/archived; Bencher's JsonSpec has no
    # skip_serializing_if, so the server (and our encode) always writes them, as null here.
    expected = json.loads(text)
    for name in ("sandbox", "fallback", "archived"):
        assert name not in expected["spec"]
        expected["spec"][name] = None
    assert json.loads(encode(job)) == expected
    # The config's absent optional fields stay absent (skip_serializing_if = is_none).
    assert list(json.loads(encode(job))["config"]) == [
        "registry",
        "project",
        "digest",
        "timeout",
    ]


def test_job_decoders_accept_parsed_objects(fixtures: Path) -> None:
    data = _job_full(fixtures)
    job = decode_job(data)
    assert decode_server(json.dumps(data)) == job
    without_event = {k: v for k, v in data.items() if k != "event"}
    assert decode_job(without_event) == job
    assert decode_job_config(data["config"]) == job.config


def test_every_invalid_server_sample_raises(fixtures: Path) -> None:
    entries = _lines(fixtures / "server_messages_invalid.jsonl")
    assert len(entries) == 10
    for entry in entries:
        frame = json.loads(entry)
        assert isinstance(frame, str)
        with pytest.raises(ProtocolError):
            decode_server(frame)


# ---------------------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ('{"event":"Job"}', "unknown server event 'Job'"),
        ('{"event":"ready"}', "unknown server event 'ready'"),
        ('{"event":5}', "event: expected a string"),
        ('{"job":"x"}', "no 'event' field"),
        ("[]", "must be a JSON object"),
        ("{", "invalid JSON"),
        ('{"event":"ack","job":"not-a-uuid"}', "ack.job: expected a UUID"),
        ('{"event":"ack","job":7}', "ack.job: expected a string"),
        ('{"event":"ack","job":"x","job":"y"}', "duplicate field 'job'"),
        ('{"event":"no_job","x":NaN}', "NaN is not valid JSON"),
        (
            '{"event":"update","version":"1","url":"notaurl","checksum":"' + SHA + '"}',
            "update.url: must be a URL",
        ),
        (
            '{"event":"update","version":"1","url":"https://x.test/a","checksum":"'
            + SHA.upper()
            + '"}',
            "update.checksum: must be 64 lowercase hex",
        ),
        (
            '{"event":"update","version":null,"url":"https://x.test/","checksum":"' + SHA + '"}',
            "update.version: expected a string, got null",
        ),
    ],
)
def test_server_errors_name_the_problem(frame: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_server(frame)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ('{"event":"ready","poll_timeout":0}', "ready.poll_timeout: must be in 1..=900, got 0"),
        ('{"event":"ready","poll_timeout":901}', "ready.poll_timeout: must be in 1..=900"),
        ('{"event":"ready","poll_timeout":-1}', "ready.poll_timeout: must be in 1..=900"),
        ('{"event":"ready","poll_timeout":true}', "poll_timeout: expected an integer, got boolean"),
        ('{"event":"ready","poll_timeout":5.0}', "poll_timeout: expected an integer, got number"),
        ('{"event":"ready","poll_timeout":"5"}', "poll_timeout: expected an integer, got string"),
        (
            '{"event":"ready","runner":{"os":"Linux","arch":"x86_64","version":"1"}}',
            "ready.runner.os: expected one of linux, macos, windows, got string 'Linux'",
        ),
        (
            '{"event":"ready","runner":{"os":"linux","arch":"arm64","version":"1"}}',
            "ready.runner.arch: expected one of x86_64, aarch64",
        ),
        (
            '{"event":"ready","runner":{"os":"linux","arch":"x86_64","version":"1","checksum":"ab"}}',
            "ready.runner.checksum: must be 64 lowercase hex",
        ),
        ('{"event":"canceled"}', "canceled.job: required field missing"),
        ('{"event":"completed","job":"' + str(JOB) + '"}', "completed.results: required field"),
        (
            '{"event":"completed","job":"' + str(JOB) + '","results":{}}',
            "completed.results: expected an array",
        ),
        (
            '{"event":"completed","job":"' + str(JOB) + '","results":[{"exit_code":2147483648}]}',
            "completed.results[0].exit_code: must be in -2147483648..=2147483647",
        ),
        (
            '{"event":"completed","job":"'
            + str(JOB)
            + '","results":[{"exit_code":0},{"exit_code":0,"output":{"a":1}}]}',
            'completed.results[1].output["a"]: expected a string, got number 1',
        ),
        ('{"event":"failed","job":"' + str(JOB) + '","results":[]}', "failed.error: required"),
    ],
)
def test_runner_errors_name_the_problem(frame: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_runner(frame)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("uuid",), "nope", "job.uuid: expected a UUID"),
        (("timeout",), 0, "job.timeout: must be in 1..=2147483647"),
        (("oci_token",), "not a jwt", "job.oci_token: must be a JWT"),
        (("created",), "2026-08-22T15:06:40", "job.created: expected an RFC 3339"),
        (("created",), "2026-08-22", "job.created: expected an RFC 3339"),
        (("created",), "2026-02-30T00:00:00Z", "job.created: expected a valid RFC 3339"),
        (("spec", "os"), "darwin", "job.spec.os: expected one of"),
        (("spec", "architecture"), "X86_64", "job.spec.architecture: expected one of"),
        (("spec", "sandbox"), "docker", "job.spec.sandbox: expected one of firecracker"),
        (("spec", "cpu"), 0, "job.spec.cpu: must be in 1..="),
        (("spec", "memory"), 2**63, "job.spec.memory: must be in 1..="),
        (("spec", "network"), 0, "job.spec.network: expected a boolean"),
        (("config", "digest"), "sha256:abc", "job.config.digest: must be an image digest"),
        (("config", "digest"), "sha512:" + SHA, "job.config.digest: must be an image digest"),
        (("config", "project"), None, "job.config.project: expected a string, got null"),
        (("config", "registry"), "registry.bencher.dev", "job.config.registry: must be a URL"),
        (("config", "entrypoint"), ["x"] * 65, "job.config.entrypoint: has 65 items, at most 64"),
        (("config", "cmd"), ["x"] * 65, "job.config.cmd: has 65 items, at most 64"),
        (("config", "cmd"), "cargo bench", "job.config.cmd: expected an array"),
        (("config", "env"), {str(i): "v" for i in range(256)}, "job.config.env: has 256 items"),
        (("config", "env"), ["A=1"], "job.config.env: expected an object"),
        (("config", "file_paths"), ["/a"] * 256, "job.config.file_paths: has 256 items"),
        (("config", "iter"), -1, "job.config.iter: must be in 0..=4294967295"),
        (("config", "iter"), 2**32, "job.config.iter: must be in 0..=4294967295"),
        (("config", "average"), "mode", "job.config.average: expected one of mean, median"),
        (("config", "fold"), "sum", "job.config.fold: expected one of min, max, mean, median"),
        (("config", "timeout"), 2**31, "job.config.timeout: must be in 1..=2147483647"),
        (("config", "allow_failure"), "yes", "job.config.allow_failure: expected a boolean"),
    ],
)
def test_job_errors_name_the_field(
    fixtures: Path, path: tuple[str, ...], value: object, needle: str
) -> None:
    data = _job_full(fixtures)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProtocolError) as info:
        decode_job(data)
    assert needle in str(info.value)
    with pytest.raises(ProtocolError):
        decode_server(json.dumps(data))


def test_collection_caps_are_inclusive(fixtures: Path) -> None:
    data = _job_full(fixtures)
    data["config"].update(
        entrypoint=["e"] * 64,
        cmd=["c"] * 64,
        env={str(i): "v" for i in range(255)},
        file_paths=["/f"] * 255,
    )
    config = decode_job(data).config
    assert config.entrypoint is not None and len(config.entrypoint) == 64
    assert config.env is not None and len(config.env) == 255


def test_null_is_accepted_for_every_optional_field(fixtures: Path) -> None:
    data = _job_full(fixtures)
    optional = [
        "image", "entrypoint", "cmd", "env", "file_paths", "build_time", "file_size",
        "average", "iter", "fold", "allow_failure", "backdate",
    ]  # fmt: skip
    for name in optional:
        data["config"][name] = None
    data["spec"]["sandbox"] = None
    config = decode_job(data).config
    assert config == JobConfig(config.registry, config.project, config.digest, timeout=3600)
    assert decode_runner('{"event":"ready","poll_timeout":null,"runner":null}') == Ready()
    assert decode_server('{"event":"ack","job":null}') == Ack()
    meta = '{"os":"macos","arch":"aarch64","version":"1","channel":null,"checksum":null}'
    assert decode_runner('{"event":"ready","runner":' + meta + "}") == Ready(
        runner=RunnerMetadata(OperatingSystem.MACOS, Architecture.AARCH64, "1")
    )
    out = '{"exit_code":1,"stdout":null,"stderr":null,"output":null}'
    assert decode_runner(
        '{"event":"failed","job":"' + str(JOB) + '","results":[' + out + '],"error":"e"}'
    ) == Failed(JOB, (IterationOutput(1),), "e")


def test_unknown_fields_are_ignored(fixtures: Path) -> None:
    data = _job_full(fixtures)
    data["future"] = {"x": 1}
    data["spec"]["gpu"] = 1
    data["config"]["priority"] = "high"
    assert decode_job(data) == decode_job(_job_full(fixtures))
    assert decode_server('{"event":"no_job","extra":[1,2]}') == NoJob()
    assert decode_runner('{"event":"running","job":"x"}') == Running()


def test_bytes_frames_are_decoded_as_utf8() -> None:
    assert decode_server(b'{"event":"cancel"}') == Cancel()
    with pytest.raises(ProtocolError, match="invalid JSON"):
        decode_server(b'{"event":"\xff"}')
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_server("[" * 100_000)


def test_decode_job_rejects_another_event(fixtures: Path) -> None:
    data = _job_full(fixtures)
    data["event"] = "ack"
    with pytest.raises(ProtocolError, match="event: expected 'job'"):
        decode_job(data)


# ---------------------------------------------------------------------------- datetimes


@pytest.mark.parametrize(
    ("text", "expected", "encoded"),
    [
        ("2026-08-01T12:00:00Z", datetime(2026, 8, 1, 12, tzinfo=UTC), "2026-08-01T12:00:00Z"),
        ("2026-08-01t12:00:00z", datetime(2026, 8, 1, 12, tzinfo=UTC), "2026-08-01T12:00:00Z"),
        (
            "2026-08-01T14:00:00+02:00",
            datetime(2026, 8, 1, 12, tzinfo=UTC),
            "2026-08-01T12:00:00Z",
        ),
        (
            "2026-08-01T12:00:00.5Z",
            datetime(2026, 8, 1, 12, 0, 0, 500_000, tzinfo=UTC),
            "2026-08-01T12:00:00.500Z",
        ),
        (
            "2026-08-01T12:00:00.123456789Z",
            datetime(2026, 8, 1, 12, 0, 0, 123_456, tzinfo=UTC),
            "2026-08-01T12:00:00.123456Z",
        ),
    ],
)
def test_datetimes_parse_as_rfc3339_and_encode_in_utc(
    fixtures: Path, text: str, expected: datetime, encoded: str
) -> None:
    data = _job_full(fixtures)
    data["created"] = text
    job = decode_job(data)
    assert job.created == expected
    assert job.created.utcoffset() == timedelta(0)
    assert json.loads(encode(job))["created"] == encoded


def test_encode_converts_other_timezones_to_utc(fixtures: Path) -> None:
    job = decode_job(_job_full(fixtures))
    plus_two = timezone(timedelta(hours=2))
    shifted = ClaimedJob(
        job.uuid, job.spec, job.config, job.oci_token, job.timeout,
        datetime(2026, 8, 22, 17, 6, 40, tzinfo=plus_two),
    )  # fmt: skip
    assert json.loads(encode(shifted))["created"] == "2026-08-22T15:06:40Z"


# ---------------------------------------------------------------------------- construction


def test_constructors_validate_like_the_decoder() -> None:
    with pytest.raises(ValueError, match="poll_timeout"):
        Ready(poll_timeout=0)
    with pytest.raises(ValueError, match="exit_code"):
        IterationOutput(2**31)
    with pytest.raises(ValueError, match="checksum"):
        Update("1", "https://x.test/", "ABC")
    with pytest.raises(ValueError, match="url"):
        Update("1", "nope", SHA)
    with pytest.raises(ValueError, match="digest"):
        JobConfig("https://r.test/", JOB, "sha256:xyz")
    with pytest.raises(ValueError, match="timezone-aware"):
        JobConfig("https://r.test/", JOB, "sha256:" + SHA, backdate=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="registry"):
        JobConfig("https://", JOB, "sha256:" + SHA)


def test_encode_refuses_text_that_is_not_unicode() -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        encode(Failed(JOB, (IterationOutput(1, stdout="bad \udcff byte"),), "e"))


def test_error_list_is_capped() -> None:
    results = ",".join('{"exit_code":"x"}' for _ in range(50))
    with pytest.raises(ProtocolError) as info:
        decode_runner('{"event":"completed","job":"' + str(JOB) + '","results":[' + results + "]}")
    message = str(info.value)
    assert message.startswith("completed.results[0].exit_code: expected an integer")
    assert message.endswith("... and 45 more")


def test_encode_sorts_output_keys_and_omits_absent_fields() -> None:
    message = Completed(JOB, (IterationOutput(0, output={"b": "2", "a": "1"}),))
    assert encode(message) == (
        '{"event":"completed","job":"' + str(JOB) + '","results":'
        '[{"exit_code":0,"output":{"a":"1","b":"2"}}]}'
    )
    assert encode(Ready(poll_timeout=30)) == '{"event":"ready","poll_timeout":30}'
    assert (
        encode(Completed(JOB, ())) == '{"event":"completed","job":"' + str(JOB) + '","results":[]}'
    )


def test_encode_keeps_non_ascii_text_unescaped() -> None:
    message = Failed(JOB, (), 'héllo \u2603 "quoted"\n\x01')
    text = encode(message)
    assert '"error":"héllo \u2603 \\"quoted\\"\\n\\u0001"' in text
    assert decode_runner(text) == message


def test_terminal_job() -> None:
    assert terminal_job(Completed(JOB, ())) == JOB
    assert terminal_job(Failed(JOB, (), "x")) == JOB
    assert terminal_job(Canceled(JOB)) == JOB


# ---------------------------------------------------------------------------- close reasons


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ('"job_completed"', CloseReason.JOB_COMPLETED),
        ('"job_failed"', CloseReason.JOB_FAILED),
        ('"job_canceled"', CloseReason.JOB_CANCELED),
        ('"job_canceled_by_runner"', CloseReason.JOB_CANCELED_BY_RUNNER),
        ('"heartbeat_timeout"', CloseReason.HEARTBEAT_TIMEOUT),
        ('"job_timeout_exceeded"', CloseReason.JOB_TIMEOUT_EXCEEDED),
        ('"something_new"', "something_new"),
        ("server shutting down", "server shutting down"),
        ("heartbeat_timeout", "heartbeat_timeout"),
        ("42", "42"),
        ('{"a":1}', '{"a":1}'),
        ('"', '"'),
        ("", None),
    ],
)
def test_parse_close_reason(reason: str, expected: CloseReason | str | None) -> None:
    parsed = parse_close_reason(reason)
    assert parsed == expected
    assert type(parsed) is type(expected)


# ---------------------------------------------------------------------------- runner keys


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        (RUNNER_KEY_PREFIX + "a" * 30, True),
        ("bencher_runner_AbC123xyz0AbC123xyz0AbC123xyz0", True),
        (RUNNER_KEY_PREFIX + "a" * 29, False),
        (RUNNER_KEY_PREFIX + "a" * 31, False),
        (RUNNER_KEY_PREFIX + "a" * 29 + "-", False),
        (RUNNER_KEY_PREFIX + "a" * 29 + "é", False),
        (RUNNER_KEY_PREFIX + "a" * 29 + "\u0663", False),  # Unicode digit, not ASCII
        ("BENCHER_RUNNER_" + "a" * 30, False),
        ("bencher_runner_" + "0" * 64, False),  # the pre-May-2026 64-hex format
        (" " + RUNNER_KEY_PREFIX + "a" * 30, False),
        (RUNNER_KEY_PREFIX + "a" * 30 + "\n", False),
        ("", False),
    ],
)
def test_runner_key_format(key: str, valid: bool) -> None:
    assert is_valid_runner_key(key) is valid
