"""Keeping a terminal message under the server's size limit (measured on ``encode()`` output).

While the message is too big, the biggest text field (an iteration's stdout/stderr, an ``output``
value, the error) is cut to its head and tail around a marker; every cut is logged.
"""

from __future__ import annotations

import json
import logging

import attrs

from runner_agent.protocol import Completed, Failed, IterationOutput, encode

log = logging.getLogger(__name__)

_M = Completed | Failed
MAX_ROUNDS = 200


def message_size(msg: Completed | Failed) -> int:
    return len(encode(msg).encode("utf-8"))


def cut_middle(text: str, keep: int) -> str:
    """``text`` reduced to about ``keep`` characters: head + marker + tail."""
    if len(text) <= keep:
        return text
    head = keep // 2
    tail = keep - head
    dropped = len(text) - head - tail
    marker = f"\n[runner-agent: {dropped} characters truncated to fit the message size limit]\n"
    return text[:head] + marker + (text[len(text) - tail :] if tail else "")


def _encoded_len(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def fit_message(msg: _M, limit: int) -> _M:
    """``msg`` itself if it fits in ``limit`` bytes, else a copy with its largest fields cut."""
    size = message_size(msg)
    if size <= limit:
        return msg
    original = size
    results = [attrs.evolve(r) for r in msg.results]
    error = msg.error if isinstance(msg, Failed) else None
    for _ in range(MAX_ROUNDS):
        over = size - limit
        if over <= 0:
            break
        where, text = _largest(results, error)
        if where is None or not text:
            break
        enc = _encoded_len(text)
        ratio = len(text) / max(enc, 1)
        keep = max(0, int((enc - over - 200) * ratio))
        keep = min(keep, len(text) - 1)
        new = cut_middle(text, keep) if keep > 0 else ""
        if where[0] == "error":
            error = new
        else:
            results[where[1]] = _replace(results[where[1]], where, new)
        candidate = _rebuild(msg, results, error)
        size = message_size(candidate)
    final = _rebuild(msg, results, error)
    log.warning(
        "terminal message for job %s truncated from %d to %d bytes (limit %d)",
        msg.job, original, message_size(final), limit,
    )
    if message_size(final) > limit:
        log.error("terminal message for job %s still exceeds %d bytes after truncation", msg.job, limit)
    return final


_Where = tuple[str, int, str]


def _largest(results: list[IterationOutput], error: str | None) -> tuple[_Where | None, str]:
    best: tuple[_Where | None, str] = (None, "")
    best_len = 0
    if error is not None and len(error) > 64:
        best, best_len = (("error", -1, ""), error), len(error)
    for i, r in enumerate(results):
        for name in ("stdout", "stderr"):
            text = getattr(r, name)
            if text is not None and len(text) > best_len:
                best, best_len = ((name, i, ""), text), len(text)
        for key, value in (r.output or {}).items():
            if len(value) > best_len:
                best, best_len = (("output", i, key), value), len(value)
    return best


def _replace(r: IterationOutput, where: _Where, new: str) -> IterationOutput:
    kind, _, key = where
    if kind == "output":
        output = dict(r.output or {})
        output[key] = new
        return attrs.evolve(r, output=output)
    if kind == "stdout":
        return attrs.evolve(r, stdout=new)
    return attrs.evolve(r, stderr=new)


def _rebuild(msg: _M, results: list[IterationOutput], error: str | None) -> _M:
    if isinstance(msg, Failed):
        return Failed(job=msg.job, results=tuple(results), error=error or "")
    return Completed(job=msg.job, results=tuple(results))
