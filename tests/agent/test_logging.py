"""Log output: text and JSON lines, and the runner key redacted everywhere."""

from __future__ import annotations

import io
import json
import logging

from runner_agent.logging_setup import REDACTED, configure_logging

KEY = "bencher_runner_" + "k" * 30
ODD_SECRET = "not-key-shaped-secret"


def _emit(fmt: str) -> str:
    stream = io.StringIO()
    redactor = configure_logging(fmt, "debug", secrets=[ODD_SECRET], stream=stream)
    log = logging.getLogger("runner_agent.test")
    log.info("connecting with %s", KEY, extra={"fields": {"header": f"Bearer {KEY}", "n": 3}})
    redactor.add_secret("rotated-secret-value")
    log.warning("odd %s and rotated-secret-value", ODD_SECRET)
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("trio_websocket").warning("library says %s", KEY)
    configure_logging("text", "info", stream=io.StringIO())  # detach from the test's stream
    return stream.getvalue()


def test_text_format_redacts_everything() -> None:
    out = _emit("text")
    assert KEY not in out and ODD_SECRET not in out and "rotated-secret-value" not in out
    assert out.count(REDACTED) >= 5
    assert "n=3" in out
    assert "INFO" in out and "library says" in out


def test_json_format_one_object_per_line() -> None:
    out = _emit("json")
    assert KEY not in out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [line["level"] for line in lines] == ["info", "warning", "error", "warning"]
    assert lines[0]["n"] == 3
    assert lines[0]["header"] == f"Bearer {REDACTED}"
    assert "RuntimeError" in lines[2]["exc"]
    assert all(not line.startswith(" ") for line in out.splitlines() if line and line[0] not in "{T ")
