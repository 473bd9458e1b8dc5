"""Keeping a terminal message under the server's size limit (measured on ``encode()`` output).

When the message is too big, text is cut in the order that loses the least for Bencher
(PROTOCOL.md §2.1: the server parses each iteration's ``output`` values, or its ``stdout`` when
there is no ``output``, and never ``stderr``):

1. ``stderr`` of every iteration;
2. ``stdout`` of iterations that have ``output`` (the server ignores it then);
3. the parsed text: ``stdout`` without ``output``, and ``output`` values;
4. the ``error`` text, never below `MIN_ERROR_CHARS`.

Within one class the cut is shared fairly ("water-filling"): one size cap is chosen so that the
fields above it, cut down to it, free enough room; every cut field keeps its head and tail around
a marker saying how much was dropped. Small fields (under two marker sizes) are only touched when
cutting every bigger field was not enough. Every truncation is logged.
"""

from __future__ import annotations

import json
import logging

import attrs
from attrs import frozen

from runner_agent.protocol import Completed, Failed, IterationOutput, encode

log = logging.getLogger(__name__)

_M = Completed | Failed
MIN_ERROR_CHARS = 512
MARKER_SLACK = 120  # bytes a marker may add to one cut field
SHORT_MARKER = "[truncated]"
ROUNDS_PER_CLASS = 6


def retained_chars(result: IterationOutput) -> int:
    """Characters of text one iteration's output holds (what grows with the benchmark's output)."""
    texts = [result.stdout or "", result.stderr or "", *(result.output or {}).values()]
    return sum(len(t) for t in texts)


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


@frozen
class _Field:
    """One cuttable text: where it lives, its text and its encoded size."""

    kind: str  # "stdout" | "stderr" | "output" | "error"
    index: int  # iteration index (-1 for the error)
    key: str  # output key ("" otherwise)
    text: str
    encoded: int


def _classes(results: list[IterationOutput], error: str | None) -> list[list[_Field]]:
    stderr: list[_Field] = []
    ignored_stdout: list[_Field] = []
    parsed: list[_Field] = []
    err: list[_Field] = []
    for i, r in enumerate(results):
        if r.stderr:
            stderr.append(_Field("stderr", i, "", r.stderr, _encoded_len(r.stderr)))
        if r.stdout:
            target = ignored_stdout if r.output is not None else parsed
            target.append(_Field("stdout", i, "", r.stdout, _encoded_len(r.stdout)))
        for key, value in (r.output or {}).items():
            if value:
                parsed.append(_Field("output", i, key, value, _encoded_len(value)))
    if error is not None and len(error) > MIN_ERROR_CHARS:
        err.append(_Field("error", -1, "", error, _encoded_len(error)))
    return [stderr, ignored_stdout, parsed, err]


def _water_level(sizes: list[int], need: int) -> int:
    """The largest cap C with sum(max(0, s - C)) >= need (0 if even cutting all falls short)."""
    lo, hi = 0, max(sizes)
    if sum(sizes) < need:
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(max(0, s - mid) for s in sizes) >= need:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_to(field: _Field, cap: int) -> str:
    """The field's text cut to about ``cap`` encoded bytes (head + marker + tail)."""
    if cap >= field.encoded:
        return field.text
    if field.kind == "error":
        cap = max(cap, MIN_ERROR_CHARS)
    if cap < 2 * MARKER_SLACK:
        return SHORT_MARKER if cap >= len(SHORT_MARKER) + 2 else ""
    chars = int((cap - MARKER_SLACK) * len(field.text) / max(field.encoded, 1))
    return cut_middle(field.text, max(chars, 0))


def _apply(results: list[IterationOutput], error: str | None, field: _Field, new: str
           ) -> str | None:
    if field.kind == "error":
        return new
    r = results[field.index]
    if field.kind == "output":
        output = dict(r.output or {})
        output[field.key] = new
        results[field.index] = attrs.evolve(r, output=output)
    elif field.kind == "stdout":
        results[field.index] = attrs.evolve(r, stdout=new)
    else:
        results[field.index] = attrs.evolve(r, stderr=new)
    return error


def fit_message(msg: _M, limit: int) -> _M:
    """``msg`` itself if it fits in ``limit`` bytes, else a copy with text cut as described above."""
    original = message_size(msg)
    if original <= limit:
        return msg
    results = list(msg.results)
    error = msg.error if isinstance(msg, Failed) else None
    size = original
    # First pass: only fields big enough to give room while keeping a useful head and tail; the
    # second pass (rarely needed: many small fields, tiny limit) may cut anything.
    passes = [(min_size, class_index) for min_size in (2 * MARKER_SLACK, 0) for class_index in range(4)]
    for min_size, class_index in passes:
        for _ in range(ROUNDS_PER_CLASS):
            over = size - limit
            if over <= 0:
                break
            fields = [f for f in _classes(results, error)[class_index] if f.encoded > min_size]
            if not fields:
                break
            cap = _water_level([f.encoded for f in fields], over + MARKER_SLACK * len(fields))
            cut = [f for f in fields if f.encoded > cap]
            if not cut:
                break
            for f in cut:
                error = _apply(results, error, f, _cut_to(f, cap))
            size = message_size(_rebuild(msg, results, error))
        if size <= limit:
            break
    final = _rebuild(msg, results, error)
    log.warning("terminal message for job %s truncated from %d to %d bytes (limit %d)",
                msg.job, original, message_size(final), limit)
    if message_size(final) > limit:
        log.error("terminal message for job %s still exceeds %d bytes after truncation", msg.job, limit)
    return final


def _rebuild(msg: _M, results: list[IterationOutput], error: str | None) -> _M:
    if isinstance(msg, Failed):
        return Failed(job=msg.job, results=tuple(results), error=error or "")
    return Completed(job=msg.job, results=tuple(results))
