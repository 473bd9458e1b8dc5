"""Bounded capture, Bencher's BMF metric output and the message budget (pure)."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_agent.execute.budget import cut_middle, fit_message, message_size
from runner_agent.execute.capture import BoundedCapture
from runner_agent.execute.results import (
    METRIC_OUTPUT_KEY,
    JobOutcome,
    exit_code_of,
    iteration_output,
    metric_output,
)
from runner_agent.protocol import Canceled, Completed, Failed, IterationOutput, encode

JOB = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(min_value=2, max_value=200))
def test_capture_keeps_head_and_tail_exactly(chunks: list[bytes], cap: int) -> None:
    capture = BoundedCapture("stdout", cap)
    for chunk in chunks:
        capture.feed(chunk)
    data = b"".join(chunks)
    assert capture.total == len(data)
    head, tail = cap // 2, cap - cap // 2
    if len(data) <= cap:
        assert capture.dropped == 0
        assert capture.text() == data.decode("utf-8", errors="replace")
    else:
        assert capture.dropped == len(data) - cap
        text = capture.text()
        assert text.startswith(data[:head].decode("utf-8", errors="replace"))
        assert text.endswith(data[-tail:].decode("utf-8", errors="replace"))
        assert f"{capture.dropped} bytes of stdout dropped" in text


def test_capture_decodes_invalid_utf8_with_replacement() -> None:
    capture = BoundedCapture("stderr", 100)
    capture.feed(b"ok \xff\xfe end")
    assert capture.text() == "ok \ufffd\ufffd end"


def test_exit_code_convention() -> None:
    assert exit_code_of(3, None) == 3
    assert exit_code_of(None, 9) == 137


def test_build_time_and_file_size_bmf() -> None:
    out = metric_output(1.23456, "sh -c bench", True, {"/output/a.bin": 10, "/b/c.json": 3})
    assert out is not None and list(out) == [METRIC_OUTPUT_KEY]
    assert json.loads(out[METRIC_OUTPUT_KEY]) == {
        "sh -c bench": {"build-time": {"value": 1.23, "lower_value": None, "upper_value": None}},
        "a.bin": {"file-size": {"value": 10.0, "lower_value": None, "upper_value": None}},
        "c.json": {"file-size": {"value": 3.0, "lower_value": None, "upper_value": None}},
    }
    assert metric_output(None, None, True, None) is None


def test_iteration_output_omits_empty_streams_and_sorts_output() -> None:
    out = iteration_output(0, "", "err", {"/z": "1", "/a": "2"})
    assert out.stdout is None and out.stderr == "err"
    assert list(out.output or {}) == ["/a", "/z"]


def test_canceled_message_carries_only_the_job() -> None:
    outcome = JobOutcome("canceled", (IterationOutput(exit_code=0, stdout="x"),), None)
    assert outcome.to_message(JOB, 4096) == Canceled(job=JOB)


def test_message_within_budget_is_untouched() -> None:
    outcome = JobOutcome("completed", (IterationOutput(exit_code=0, stdout="small"),), None)
    assert outcome.to_message(JOB, 4096) == Completed(job=JOB, results=outcome.results)


@given(
    st.lists(
        st.tuples(st.text(max_size=3000), st.text(max_size=3000), st.text(max_size=2000)),
        min_size=1, max_size=6,
    ),
    st.integers(min_value=2048, max_value=8192),
)
def test_budget_always_fits_and_keeps_every_iteration(
    streams: list[tuple[str, str, str]], limit: int
) -> None:
    results = tuple(
        IterationOutput(exit_code=i, stdout=o, stderr=e, output={"/f": f})
        for i, (o, e, f) in enumerate(streams)
    )
    msg = JobOutcome("failed", results, "Benchmark exited with non-zero exit code: 1").to_message(JOB, limit)
    assert isinstance(msg, Failed)
    assert message_size(msg) <= limit
    assert [r.exit_code for r in msg.results] == list(range(len(streams)))
    assert msg.error == "Benchmark exited with non-zero exit code: 1"


def test_truncation_keeps_head_and_tail_of_the_biggest_field() -> None:
    big = "H" * 1000 + "m" * 100_000 + "T" * 1000
    msg = fit_message(Completed(job=JOB, results=(IterationOutput(exit_code=0, stdout=big, stderr="keep"),)), 20_000)
    assert len(encode(msg).encode()) <= 20_000
    out = msg.results[0].stdout or ""
    assert out.startswith("H" * 1000) and out.endswith("T" * 1000)
    assert "characters truncated to fit the message size limit" in out
    assert msg.results[0].stderr == "keep"


def test_cut_middle() -> None:
    assert cut_middle("abcdef", 10) == "abcdef"
    cut = cut_middle("a" * 50 + "b" * 50, 20)
    assert cut.startswith("a" * 10) and cut.endswith("b" * 10) and "80 characters" in cut


def test_probe_output_parsing() -> None:
    from runner_agent.execute.child import Usage, parse_probe

    assert parse_probe("6336 0.73 0.01\n") == Usage(6336, 0.73, 0.01, 0, None)
    assert parse_probe("Command exited with non-zero status 3\n10 0.00 0.00\n") == Usage(10, 0.0, 0.0, 3, None)
    assert parse_probe("Command terminated by signal 9\n10 0.00 0.00\n") == Usage(10, 0.0, 0.0, None, 9)
    assert parse_probe("") is None and parse_probe("garbage\n") is None


def test_truncation_shares_the_cut_across_iterations() -> None:
    # three 2 MB stdouts under a 4 MiB limit: every iteration keeps its head and tail,
    # none is emptied to make room for the others
    big = [f"H{i}" * 1000 + "m" * 2_000_000 + f"T{i}" * 1000 for i in range(3)]
    msg = fit_message(Completed(job=JOB, results=tuple(
        IterationOutput(exit_code=0, stdout=b) for b in big)), 4 * 1024 * 1024)
    assert message_size(msg) <= 4 * 1024 * 1024
    sizes = [len(r.stdout or "") for r in msg.results]
    assert max(sizes) - min(sizes) < 1000, sizes  # a fair share each
    for i, r in enumerate(msg.results):
        out = r.stdout or ""
        assert out.startswith(f"H{i}" * 1000) and out.endswith(f"T{i}" * 1000)
        assert "characters truncated" in out


def test_truncation_cuts_what_bencher_ignores_first() -> None:
    # stderr is never parsed and stdout is ignored when `output` exists: those go before the
    # output file the server turns into results
    bmf = '{"bench":{"latency":{"value":1}}}' + " " * 30_000
    r = IterationOutput(exit_code=0, stdout="s" * 30_000, stderr="e" * 30_000,
                        output={"/out/r.json": bmf})
    msg = fit_message(Completed(job=JOB, results=(r,)), 45_000)
    assert message_size(msg) <= 45_000
    kept = msg.results[0]
    assert kept.output == {"/out/r.json": bmf}  # untouched
    assert len(kept.stderr or "") < 1000  # stderr gave first and most
    assert "characters truncated" in (kept.stdout or "") + (kept.stderr or "")


def test_shared_rootfs_warning_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    from runner_agent.execute import iteration

    caplog.set_level(logging.DEBUG, logger="runner_agent")
    iteration._shared_rootfs_warned = False
    for _ in range(3):
        iteration._warn_shared_rootfs_once("mount not permitted")
    levels = [r.levelno for r in caplog.records if "private overlay" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
