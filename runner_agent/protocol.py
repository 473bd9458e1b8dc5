"""The Bencher runner-channel wire protocol (PROTOCOL.md section 2): every message in both
directions as frozen attrs classes, one cattrs converter, ``encode`` to Bencher's exact wire form
and ``decode_*`` that validate at the boundary and raise only :class:`ProtocolError`.

Also owns the close-frame reason parser (section 5) and the runner key format (section 1.4).
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias, TypeVar, get_args, get_origin
from urllib.parse import urlsplit
from uuid import UUID

import attrs
import cattrs
import cattrs.gen
from attrs import field, frozen
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    IterableValidationError,
    IterableValidationNote,
)

__all__ = [
    "RUNNER_KEY_PREFIX",
    "Ack",
    "Architecture",
    "Average",
    "Cancel",
    "Canceled",
    "ClaimedJob",
    "CloseReason",
    "Completed",
    "Failed",
    "Fold",
    "Heartbeat",
    "IterationOutput",
    "JobConfig",
    "NoJob",
    "OperatingSystem",
    "ProtocolError",
    "Ready",
    "RunnerMessage",
    "RunnerMetadata",
    "Running",
    "Sandbox",
    "ServerMessage",
    "Spec",
    "TerminalMessage",
    "Update",
    "UpdateChannel",
    "decode_job",
    "decode_job_config",
    "decode_runner",
    "decode_server",
    "encode",
    "is_valid_runner_key",
    "parse_close_reason",
    "terminal_job",
]


class ProtocolError(ValueError):
    """A frame or object that is not a valid protocol message; the message names the field."""


# --------------------------------------------------------------------------------------------
# Enums (values exactly as on the wire)


class OperatingSystem(enum.StrEnum):
    LINUX = "linux"
    MACOS = "macos"
    WINDOWS = "windows"


class Architecture(enum.StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


class UpdateChannel(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"


class Sandbox(enum.StrEnum):
    FIRECRACKER = "firecracker"


class Average(enum.StrEnum):
    MEAN = "mean"
    MEDIAN = "median"


class Fold(enum.StrEnum):
    MIN = "min"
    MAX = "max"
    MEAN = "mean"
    MEDIAN = "median"


class CloseReason(enum.StrEnum):
    JOB_COMPLETED = "job_completed"
    JOB_FAILED = "job_failed"
    JOB_CANCELED = "job_canceled"
    JOB_CANCELED_BY_RUNNER = "job_canceled_by_runner"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    JOB_TIMEOUT_EXCEEDED = "job_timeout_exceeded"


_ENUMS: Final[tuple[type[enum.StrEnum], ...]] = (
    OperatingSystem,
    Architecture,
    UpdateChannel,
    Sandbox,
    Average,
    Fold,
    CloseReason,
)

# --------------------------------------------------------------------------------------------
# Limits (PROTOCOL.md sections 1.4 and 2 cite the Bencher source of each)

POLL_TIMEOUT_MIN: Final = 1
POLL_TIMEOUT_MAX: Final = 900
I32_MIN: Final = -(2**31)
I32_MAX: Final = 2**31 - 1
I64_MAX: Final = 2**63 - 1
U32_MAX: Final = 2**32 - 1
MAX_ENTRYPOINT_LEN: Final = 64
MAX_CMD_LEN: Final = 64
MAX_ENV_LEN: Final = 255
MAX_FILE_PATHS_LEN: Final = 255

RUNNER_KEY_PREFIX: Final = "bencher_runner_"
_RUNNER_KEY_RE: Final = re.compile(r"bencher_runner_[A-Za-z0-9]{30}")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_JWT_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_RFC3339_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# The forms Rust's ``Uuid::parse_str`` accepts: simple, hyphenated, braced, URN.
_UUID_RE: Final = re.compile(
    r"(?:urn:uuid:)?(?P<h>[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})"
    r"|\{(?P<b>[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}"
    r"|(?P<s>[0-9A-Fa-f]{32})"
)
_URL_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOST_SCHEMES: Final = frozenset({"http", "https", "ws", "wss", "ftp"})


# --------------------------------------------------------------------------------------------
# Field validators (run on construction, so invalid messages can't be built in code either)

_Validator: TypeAlias = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _optional(inner: _Validator) -> _Validator:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(instance, attribute, value)

    return check


def _int_range(low: int, high: int) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _FieldError(attribute.name, f"expected an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise _FieldError(attribute.name, f"must be in {low}..={high}, got {value}")

    return check


def _max_items(limit: int) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if len(value) > limit:
            raise _FieldError(attribute.name, f"has {len(value)} items, at most {limit} allowed")

    return check


def _matches(pattern: re.Pattern[str], what: str) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, str) or pattern.fullmatch(value) is None:
            raise _FieldError(attribute.name, f"must be {what}, got {_describe(value)}")

    return check


def _url(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    problem = _url_problem(value)
    if problem is not None:
        raise _FieldError(attribute.name, f"must be a URL ({problem}), got {_describe(value)}")


def _aware(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise _FieldError(attribute.name, f"must be a timezone-aware datetime, got {value!r}")


def _url_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "not a string"
    if not value or any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        return "empty or contains whitespace/control characters"
    scheme, sep, _rest = value.partition(":")
    if not sep or _URL_SCHEME_RE.fullmatch(scheme) is None:
        return "no scheme"
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return str(exc)
    if parts.scheme.lower() in _HOST_SCHEMES and not parts.hostname:
        return "no host"
    return None


_SHA256_TEXT: Final = "64 lowercase hex characters (SHA-256)"
_DIGEST_TEXT: Final = "an image digest ('sha256:' + 64 or 'sha512:' + 128 lowercase hex)"
_JWT_TEXT: Final = "a JWT (three base64url segments separated by '.')"


class _FieldError(ValueError):
    """A validation failure of one named attribute (turned into a ``ProtocolError``)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


# --------------------------------------------------------------------------------------------
# Shared data


@frozen
class RunnerMetadata:
    """``JsonRunnerMetadata``: what a Bencher runner binary says about itself in ``ready``."""

    os: OperatingSystem
    arch: Architecture
    version: str
    channel: UpdateChannel | None = None
    checksum: str | None = field(
        default=None, validator=_optional(_matches(_SHA256_RE, _SHA256_TEXT))
    )


@frozen
class IterationOutput:
    """``JsonIterationOutput``: one benchmark iteration's exit code and captured output."""

    exit_code: int = field(validator=_int_range(I32_MIN, I32_MAX))
    stdout: str | None = None
    stderr: str | None = None
    output: Mapping[str, str] | None = None


# --------------------------------------------------------------------------------------------
# Runner -> server


@frozen
class Ready:
    """Ask for a job; the server answers ``job``, ``no_job`` or ``update``."""

    poll_timeout: int | None = field(
        default=None, validator=_optional(_int_range(POLL_TIMEOUT_MIN, POLL_TIMEOUT_MAX))
    )
    runner: RunnerMetadata | None = None


@frozen
class Running:
    """The claimed job is being set up / executed (answered by ``ack`` or ``cancel``)."""


@frozen
class Heartbeat:
    """The job is still running (answered by ``ack`` or ``cancel``)."""


@frozen
class Completed:
    """The job ran to completion; its iterations' results."""

    job: UUID
    results: tuple[IterationOutput, ...]


@frozen
class Failed:
    """The job failed; partial results and a readable error."""

    job: UUID
    results: tuple[IterationOutput, ...]
    error: str


@frozen
class Canceled:
    """The job was canceled (by the server's ``cancel``)."""

    job: UUID


RunnerMessage: TypeAlias = Ready | Running | Heartbeat | Completed | Failed | Canceled
TerminalMessage: TypeAlias = Completed | Failed | Canceled


# --------------------------------------------------------------------------------------------
# Server -> runner


@frozen
class Spec:
    """``JsonSpec``: the hardware spec the job was submitted for.

    ``sandbox``, ``fallback`` and ``archived`` are always emitted (``null`` when absent), as Bencher
    does; on input a missing one means ``None``.
    """

    uuid: UUID
    name: str
    slug: str
    os: OperatingSystem
    architecture: Architecture
    sandbox: Sandbox | None
    cpu: int = field(validator=_int_range(1, I32_MAX))
    memory: int = field(validator=_int_range(1, I64_MAX))
    disk: int = field(validator=_int_range(1, I64_MAX))
    network: bool = field()
    fallback: datetime | None = field(validator=_optional(_aware))
    created: datetime = field(validator=_aware)
    modified: datetime = field(validator=_aware)
    archived: datetime | None = field(validator=_optional(_aware))


@frozen
class JobConfig:
    """``JsonJobConfig``: what to run and how. Fields in wire order."""

    registry: str = field(validator=_url)
    project: UUID
    digest: str = field(validator=_matches(_DIGEST_RE, _DIGEST_TEXT))
    image: str | None = None
    entrypoint: tuple[str, ...] | None = field(
        default=None, validator=_optional(_max_items(MAX_ENTRYPOINT_LEN))
    )
    cmd: tuple[str, ...] | None = field(default=None, validator=_optional(_max_items(MAX_CMD_LEN)))
    env: Mapping[str, str] | None = field(
        default=None, validator=_optional(_max_items(MAX_ENV_LEN))
    )
    # Required on the wire; the default (Bencher Plus' default job timeout) only exists so the
    # fields can stay in wire order. It is always encoded.
    timeout: int = field(default=3600, validator=_int_range(1, I32_MAX))
    file_paths: tuple[str, ...] | None = field(
        default=None, validator=_optional(_max_items(MAX_FILE_PATHS_LEN))
    )
    build_time: bool | None = None
    file_size: bool | None = None
    average: Average | None = None
    iter: int | None = field(default=None, validator=_optional(_int_range(0, U32_MAX)))
    fold: Fold | None = None
    allow_failure: bool | None = None
    backdate: datetime | None = field(default=None, validator=_optional(_aware))


@frozen
class ClaimedJob:
    """The ``job`` message (``JsonClaimedJob`` flattened next to ``event``)."""

    uuid: UUID
    spec: Spec
    config: JobConfig
    oci_token: str = field(validator=_matches(_JWT_RE, _JWT_TEXT))
    timeout: int = field(validator=_int_range(1, I32_MAX))
    created: datetime = field(validator=_aware)


@frozen
class Ack:
    """Acknowledges ``running``/``heartbeat``/terminal messages; ``job`` is the server's current job."""

    job: UUID | None = None


@frozen
class NoJob:
    """The poll deadline passed without a job."""


@frozen
class Cancel:
    """Cancel the current job (only ever a reply to ``running`` or ``heartbeat``)."""


@frozen
class Update:
    """A self-update offer for Bencher's runner binary (this agent never downloads it)."""

    version: str
    url: str = field(validator=_url)
    checksum: str = field(validator=_matches(_SHA256_RE, _SHA256_TEXT))


ServerMessage: TypeAlias = Ack | ClaimedJob | NoJob | Cancel | Update

_RUNNER_EVENTS: Final[dict[str, type[Any]]] = {
    "ready": Ready,
    "running": Running,
    "heartbeat": Heartbeat,
    "completed": Completed,
    "failed": Failed,
    "canceled": Canceled,
}
_SERVER_EVENTS: Final[dict[str, type[Any]]] = {
    "ack": Ack,
    "job": ClaimedJob,
    "no_job": NoJob,
    "cancel": Cancel,
    "update": Update,
}
_EVENT_OF: Final[dict[type[Any], str]] = {
    cls: event for table in (_RUNNER_EVENTS, _SERVER_EVENTS) for event, cls in table.items()
}

# Optional fields Bencher always serializes (as null): Spec has no skip_serializing_if.
_ALWAYS_EMIT: Final[dict[type[Any], frozenset[str]]] = {
    Spec: frozenset({"sandbox", "fallback", "archived"}),
}


def terminal_job(msg: TerminalMessage) -> UUID:
    """The job a terminal message is about."""
    return msg.job


# --------------------------------------------------------------------------------------------
# Scalar conversion (strict: JSON types must match exactly, no coercion)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _structure_str(value: object, _type: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string contains an unpaired surrogate") from None
    return value


def _structure_int(value: object, _type: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {_describe(value)}")
    return value


def _structure_bool(value: object, _type: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean, got {_describe(value)}")
    return value


def _structure_uuid(value: object, _type: object) -> UUID:
    text = _structure_str(value, str)
    match = _UUID_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a UUID, got {_describe(value)}")
    return uuid.UUID(match.group("h") or match.group("b") or match.group("s"))


def _structure_datetime(value: object, _type: object) -> datetime:
    text = _structure_str(value, str)
    if _RFC3339_RE.fullmatch(text) is None:
        raise ValueError(f"expected an RFC 3339 date-time with a timezone, got {_describe(value)}")
    normalized = text.upper().replace(" ", "T")
    if normalized.endswith("Z"):
        normalized = normalized[:-1] + "+00:00"
    # Python keeps microseconds only: truncate nanosecond fractions (chrono would keep them).
    match = re.search(r"\.([0-9]+)", normalized)
    if match is not None and len(match.group(1)) > 6:
        normalized = normalized[: match.start(1) + 6] + normalized[match.end(1) :]
    try:
        return datetime.fromisoformat(normalized).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"expected a valid RFC 3339 date-time, got {_describe(value)}") from None


def _structure_enum(value: object, type_: type[enum.StrEnum]) -> enum.StrEnum:
    text = _structure_str(value, str)
    try:
        return type_(text)
    except ValueError:
        allowed = ", ".join(member.value for member in type_)
        raise ValueError(f"expected one of {allowed}, got {_describe(value)}") from None


def _format_datetime(value: datetime) -> str:
    """RFC 3339 in UTC as chrono writes it (``AutoSi``: 0, 3, 6 fraction digits; ``Z``)."""
    utc = value.astimezone(UTC)
    base = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    micro = utc.microsecond
    if micro == 0:
        fraction = ""
    elif micro % 1000 == 0:
        fraction = f".{micro // 1000:03d}"
    else:
        fraction = f".{micro:06d}"
    return f"{base}{fraction}Z"


def _is_tuple(type_: Any) -> bool:
    return get_origin(type_) is tuple


def _is_mapping(type_: Any) -> bool:
    return get_origin(type_) is Mapping


# --------------------------------------------------------------------------------------------
# The converter


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(UUID, _structure_uuid)
    conv.register_structure_hook(datetime, _structure_datetime)
    # Each enum explicitly: a StrEnum is a str, so the str hook would otherwise claim it.
    for enum_type in _ENUMS:
        conv.register_structure_hook(enum_type, _structure_enum)
    conv.register_unstructure_hook(UUID, str)
    conv.register_unstructure_hook(datetime, _format_datetime)

    def structure_items(
        pairs: list[tuple[int | str, object]], item_type: Any, type_: Any
    ) -> list[Any]:
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in pairs:
            try:
                items.append(conv.structure(item, item_type))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(f"Structuring {type_!r} @ {index!r}", index, item_type),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_!r}", errors, type_)
        return items

    def structure_tuple(value: object, type_: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {_describe(value)}")
        return tuple(structure_items(list(enumerate(value)), get_args(type_)[0], type_))

    def structure_mapping(value: object, type_: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, got {_describe(value)}")
        key_type, value_type = get_args(type_)
        for key in value:
            conv.structure(key, key_type)  # a JSON key is a str; this rejects lone surrogates
        values = structure_items(list(value.items()), value_type, type_)
        return dict(zip(value, values, strict=True))

    conv.register_structure_hook_func(_is_tuple, structure_tuple)
    conv.register_structure_hook_func(_is_mapping, structure_mapping)

    def attrs_hook(cls: type[Any]) -> Callable[[object, Any], Any]:
        generated = cattrs.gen.make_dict_structure_fn(cls, conv)
        filled = dict.fromkeys(_ALWAYS_EMIT.get(cls, ()))

        def structure_object(value: object, _type: Any) -> Any:
            if not isinstance(value, dict):
                raise ValueError(f"expected an object, got {_describe(value)}")
            return generated(filled | value if filled else value, cls)

        return structure_object

    conv.register_structure_hook_factory(attrs.has, attrs_hook)
    return conv


_converter: Final = _make_converter()


def _unstructure(value: Any) -> Any:
    """Plain JSON data in Bencher's form: attrs fields in order, ``None`` omitted (except
    the fields Bencher always emits), ``output`` maps sorted by key (BTreeMap)."""
    if attrs.has(type(value)):
        keep = _ALWAYS_EMIT.get(type(value), frozenset())
        out: dict[str, Any] = {}
        for attribute in attrs.fields(type(value)):
            item = getattr(value, attribute.name)
            if item is None and attribute.name not in keep:
                continue
            out[attribute.name] = _unstructure(item)
        if isinstance(value, IterationOutput) and value.output is not None:
            out["output"] = dict(sorted(out["output"].items()))
        return out
    if isinstance(value, enum.StrEnum):
        return value.value
    if isinstance(value, UUID | datetime):
        return _converter.unstructure(value)
    if isinstance(value, tuple | list):
        return [_unstructure(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _unstructure(item) for key, item in value.items()}
    return value


def encode(msg: RunnerMessage | ServerMessage) -> str:
    """The message as compact JSON text exactly as Bencher serializes it (``event`` first)."""
    event = _EVENT_OF.get(type(msg))
    if event is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    body = {"event": event, **_unstructure(msg)}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate (e.g. from surrogateescape-decoded output) cannot go in a Text frame,
        # and Bencher's serde_json rejects an escaped one; refuse loudly instead of sending junk.
        raise ValueError(
            f"{event} message contains text that is not valid Unicode: {exc.reason}"
        ) from None
    return text


# --------------------------------------------------------------------------------------------
# Decoding


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _parse_json(text: str | bytes) -> object:
    try:
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8")
        if not isinstance(text, str):
            raise ProtocolError(f"frame must be text, got {type(text).__name__}")
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"invalid JSON: {exc}") from None


def _path_join(path: str, part: str | int, *, key: bool = False) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}[{json.dumps(part)}]" if key else f"{path}.{part}"


def _collect(exc: BaseException, path: str, out: list[str]) -> None:
    if isinstance(exc, BaseValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = _path_join(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    index = note.index
                    sub_path = _path_join(
                        path, index if isinstance(index, int) else str(index), key=True
                    )
            _collect(sub, sub_path, out)
        return
    if isinstance(exc, _FieldError):
        out.append(f"{_path_join(path, exc.name)}: {exc.problem}")
    elif isinstance(exc, KeyError):
        out.append(f"{path}: required field missing")
    elif isinstance(exc, ValueError | TypeError):
        out.append(f"{path}: {exc}")
    else:
        out.append(f"{path}: {type(exc).__name__}: {exc}")


_T = TypeVar("_T")
_MAX_PROBLEMS: Final = 5


def _structure(obj: object, cls: type[_T], root: str) -> _T:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{root}: expected a JSON object, got {_describe(obj)}")
    try:
        return _converter.structure(obj, cls)
    except Exception as exc:  # the boundary: whatever cattrs/attrs raised becomes ProtocolError
        problems: list[str] = []
        _collect(exc, root, problems)
        if len(problems) > _MAX_PROBLEMS:
            extra = len(problems) - _MAX_PROBLEMS
            problems = [*problems[:_MAX_PROBLEMS], f"... and {extra} more"]
        raise ProtocolError("; ".join(problems) or f"{root}: invalid") from None


def _decode_tagged(text: str | bytes, table: Mapping[str, type[Any]], side: str) -> Any:
    obj = _parse_json(text)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{side} message must be a JSON object, got {_describe(obj)}")
    if "event" not in obj:
        raise ProtocolError(f"{side} message has no 'event' field")
    event = obj["event"]
    if not isinstance(event, str):
        raise ProtocolError(f"event: expected a string, got {_describe(event)}")
    cls = table.get(event)
    if cls is None:
        known = ", ".join(table)
        raise ProtocolError(
            f"event: unknown {side} event {event!r} (case-sensitive; expected one of {known})"
        )
    return _structure(obj, cls, event)


def decode_server(text: str | bytes) -> ServerMessage:
    """Parse one server -> runner frame. Raises only ``ProtocolError``."""
    message: ServerMessage = _decode_tagged(text, _SERVER_EVENTS, "server")
    return message


def decode_runner(text: str | bytes) -> RunnerMessage:
    """Parse one runner -> server frame. Raises only ``ProtocolError``."""
    message: RunnerMessage = _decode_tagged(text, _RUNNER_EVENTS, "runner")
    return message


def decode_job(obj: Mapping[str, Any]) -> ClaimedJob:
    """A parsed ``JsonClaimedJob`` object; an ``event`` field is optional but must be ``job``."""
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"job: expected a JSON object, got {_describe(obj)}")
    if "event" in obj and obj["event"] != "job":
        raise ProtocolError(f"event: expected 'job', got {_describe(obj['event'])}")
    return _structure(dict(obj), ClaimedJob, "job")


def decode_job_config(obj: Mapping[str, Any]) -> JobConfig:
    """A parsed ``JsonJobConfig`` object."""
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"config: expected a JSON object, got {_describe(obj)}")
    return _structure(dict(obj), JobConfig, "config")


# --------------------------------------------------------------------------------------------
# Close reasons and runner keys


def parse_close_reason(reason: str) -> CloseReason | str | None:
    """A Close frame's reason: a JSON string naming a known ``CloseReason`` becomes that member,
    any other JSON string its value, anything else the plain text; an empty reason is ``None``."""
    if reason == "":
        return None
    try:
        value = json.loads(reason)
    except (ValueError, RecursionError):
        return reason
    if not isinstance(value, str):
        return reason
    try:
        return CloseReason(value)
    except ValueError:
        return value


def is_valid_runner_key(key: str) -> bool:
    """``bencher_runner_`` followed by exactly 30 ASCII alphanumerics (PROTOCOL.md 1.4)."""
    return isinstance(key, str) and _RUNNER_KEY_RE.fullmatch(key) is not None
