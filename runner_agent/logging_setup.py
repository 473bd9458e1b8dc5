"""Logging for the agent: text or JSON lines on stderr, with the runner key redacted everywhere.

`configure_logging(log_format, level, secrets=...)` installs one stderr handler on the
``runner_agent`` logger. A `RedactingFilter` on that handler rewrites every record before it is
formatted: any registered secret (the configured key, and every key later read from ``--key-file``
via `add_secret`) and anything shaped like a Bencher runner key (``bencher_runner_`` + 30
alphanumerics) is replaced by ``bencher_runner_<redacted>`` in the message, its arguments, the
exception text and the structured ``fields``.

Structured context: pass ``extra={"fields": {...}}`` to a log call; text format appends them as
``key=value``, JSON format merges them into the object (one JSON object per line, keys ``ts``,
``level``, ``logger``, ``msg`` + fields).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

REDACTED = "bencher_runner_<redacted>"
_KEY_SHAPE = re.compile(r"bencher_runner_[A-Za-z0-9]{30}")
LOGGER_NAME = "runner_agent"


class RedactingFilter(logging.Filter):
    """Replaces secrets in a record (message, args, exception, fields) before any handler formats it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str) -> None:
        if not secret or len(secret) < 4:
            return
        with self._lock:
            if secret not in self._secrets:
                # Longest first so a secret that contains another is replaced whole.
                self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _KEY_SHAPE.sub(REDACTED, text)

    def _redact_value(self, value: object) -> object:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, int | float | bool) or value is None:
            return value
        if isinstance(value, Mapping):
            return {str(k): self._redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact_value(v) for v in value]
        return self.redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = self._redact_value(fields)
        return True


def _fmt_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.123Z INFO  message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping) and fields:
            line += " " + " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items())
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for k, v in fields.items():
                obj.setdefault(str(k), v)
        if record.exc_text:
            obj["exc"] = record.exc_text
        return json.dumps(obj, default=str, separators=(",", ":"))


_installed: tuple[logging.Handler, RedactingFilter] | None = None


def configure_logging(
    log_format: str = "text",
    level: str = "info",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> RedactingFilter:
    """Install (or replace) the agent's stderr handler; returns the filter so secrets can be added."""
    global _installed
    logger = logging.getLogger(LOGGER_NAME)
    root = logging.getLogger()
    if _installed is not None:
        logger.removeHandler(_installed[0])
        root.removeHandler(_installed[0])
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # Libraries (trio-websocket, httpx) log through the root logger: warnings only, same redaction.
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
    _installed = (handler, redactor)
    return redactor


def add_secret(secret: str) -> None:
    """Register one more secret (e.g. a key re-read from --key-file) with the installed filter."""
    if _installed is not None:
        _installed[1].add_secret(secret)
