"""Cancellable worker threads and digest verification (sha256 and sha512)."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import trio

from runner_agent.oci._threads import CancelToken, WorkCancelled, run_sync_cancellable
from runner_agent.oci.digest import DigestVerifier, parse_digest
from runner_agent.oci.errors import DigestMismatchError


async def test_cancel_waits_for_worker_to_stop() -> None:
    started = threading.Event()
    finished: list[str] = []

    def work(token: CancelToken) -> None:
        started.set()
        try:
            while True:
                token.check()
                time.sleep(0.0005)  # a chunk of work between cancellation checks
        except WorkCancelled:
            finished.append("stopped")
            raise

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await run_sync_cancellable(work)

            nursery.start_soon(run)
            await trio.to_thread.run_sync(started.wait)
            scope.cancel()
    assert scope.cancelled_caught
    assert finished == ["stopped"]  # the thread was done before Cancelled reached us


async def test_result_and_errors_pass_through() -> None:
    with trio.fail_after(10):
        assert await run_sync_cancellable(lambda token: 42) == 42
        with pytest.raises(ValueError, match="bad"):
            await run_sync_cancellable(lambda token: (_ for _ in ()).throw(ValueError("bad")))


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_verifier(algorithm: str) -> None:
    data = b"x" * 100_000
    digest = parse_digest(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")
    ok = DigestVerifier(digest, "blob")
    for i in range(0, len(data), 4096):
        ok.update(data[i : i + 4096])
    ok.verify()
    bad = DigestVerifier(digest, "layer 3 of image X")
    bad.update(data[:-1] + b"y")
    with pytest.raises(DigestMismatchError, match=f"digest mismatch for layer 3 of image X: expected {algorithm}:"):
        bad.verify()
