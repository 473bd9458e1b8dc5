"""Running blocking work (hashing, decompressing, unpacking) in a worker thread, cancellably:
a trio cancel sets a token that the work checks, and we wait for the thread to stop before
re-raising so it never touches files after the caller has cleaned up."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class WorkCancelled(Exception):
    """Raised inside worker code when the trio side was cancelled."""


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise WorkCancelled("cancelled")


async def run_sync_cancellable(fn: Callable[[CancelToken], T]) -> T:
    """Run ``fn(token)`` in a thread. On cancellation the token is set and, shielded, we wait for
    ``fn`` to return (it must check the token often) before letting ``Cancelled`` propagate."""
    token = CancelToken()
    finished = threading.Event()

    def work() -> T:
        try:
            return fn(token)
        finally:
            finished.set()

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        token.cancel()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(finished.wait)
        raise
