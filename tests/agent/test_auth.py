"""A rejected key against the dev server (accept, then close without a frame, like Bencher),
simulated for hours on trio's MockClock: slow backoff, Bencher Cloud's limits kept, clear logs."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from runner_agent.backoff import Backoff, BackoffPolicy
from runner_agent.errors import EXIT_AUTH_REJECTED
from tests.agent.conftest import harness
from tests.support.rate import max_in_window

WRONG_KEY = "bencher_runner_" + "w" * 30
HOURS = 6


async def test_bad_key_backs_off_and_stays_under_rate_limits(
    tmp_path: Path, busybox_oci: tuple[Path, str], autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runner_agent")
    with trio.fail_after(HOURS * 3600 + 600):
        async with harness(tmp_path, busybox_oci) as h:
            agent = h.agent({"backoff": Backoff(BackoffPolicy(), random.Random(7))}, key=WRONG_KEY)
            async with h.running(agent):
                await trio.sleep(HOURS * 3600)
                agent.request_shutdown(1)
            attempts = [a.at for a in h.server.attempts]
            outcomes = {a.outcome for a in h.server.attempts}
    assert outcomes == {"auth_failed"}
    assert max_in_window(attempts, 60) <= 16
    assert max_in_window(attempts, 3600) <= 256
    assert len(attempts) <= HOURS * 3600 / 300 + 5  # minutes apart once auth is suspected
    assert any("authentication probably rejected" in r.getMessage() for r in caplog.records)
    assert WRONG_KEY not in caplog.text


async def test_bad_key_with_exit_on_auth_failure_exits_3(
    tmp_path: Path, busybox_oci: tuple[Path, str], autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(3600):
        async with harness(tmp_path, busybox_oci) as h:
            agent = h.agent({"backoff": Backoff(BackoffPolicy(), random.Random(3))}, key=WRONG_KEY,
                            exit_on_auth_failure=True)
            code = await agent.run()
            attempts = h.server.connection_attempts()
    assert code == EXIT_AUTH_REJECTED
    assert attempts == BackoffPolicy().auth_suspect_after
