"""The signal watcher counts SIGTERM/SIGINT into shutdown levels 1..3 and ignores the rest."""

from __future__ import annotations

import os
import signal

import trio
import trio.testing

from runner_agent.signals import watch_signals


async def test_levels_one_two_three_then_ignored() -> None:
    seen: list[tuple[int, str]] = []
    changed = trio.Event()

    def on_level(level: int, name: str) -> None:
        nonlocal changed
        seen.append((level, name))
        changed.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, on_level)
            for signum, expected in [(signal.SIGTERM, 1), (signal.SIGINT, 2), (signal.SIGTERM, 3)]:
                changed = trio.Event()
                os.kill(os.getpid(), signum)
                await changed.wait()
                assert seen[-1][0] == expected
            os.kill(os.getpid(), signal.SIGTERM)  # a fourth: ignored
            await trio.testing.wait_all_tasks_blocked()  # the watcher has handled it
            nursery.cancel_scope.cancel()
    assert seen == [(1, "SIGTERM"), (2, "SIGINT"), (3, "SIGTERM")]
