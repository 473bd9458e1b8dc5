"""The signal watcher: SIGTERM/SIGINT counted into shutdown levels 1 (drain), 2 (abort), 3 (exit now).

`watch_signals(on_level)` runs in the agent's root nursery (``await nursery.start(watch_signals, cb)``
so the handlers are installed before the agent connects). Each SIGTERM or SIGINT raises the level by
one and calls ``on_level(level, signal_name)``:

1. drain: stop asking for jobs, let the running job finish and deliver its result, exit 0;
2. abort: kill the running job (kill ladder), report it ``failed`` with the reason, deliver, exit;
3. exit at once: the outbox keeps any undelivered result for the next start.

Signals after the third are ignored (the callback has already ended the process tree).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_LEVEL = 3


async def watch_signals(
    on_level: Callable[[int, str], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Translate shutdown signals into levels 1..3 until cancelled."""
    level = 0
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            if level >= MAX_LEVEL:
                continue
            level += 1
            on_level(level, signal.Signals(signum).name)
