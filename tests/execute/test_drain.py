"""Draining a pipe into a bounded capture: splicing away what the capture drops changes nothing
it keeps (head, tail, counts), on real pipes, with and without a concurrent writer."""

from __future__ import annotations

import fcntl
import os
import random
import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from runner_agent.execute.capture import BoundedCapture, drain


def reference(data: bytes, cap: int, name: str = "stdout") -> BoundedCapture:
    capture = BoundedCapture(name, cap)
    capture.feed(data)
    return capture


def assert_same(capture: BoundedCapture, expected: BoundedCapture) -> None:
    assert (capture.total, capture.dropped) == (expected.total, expected.dropped)
    assert capture.text() == expected.text()


def numbered(size: int) -> bytes:
    """Lines that each say where they are, so a lost or reordered byte shows in head or tail."""
    out = bytearray()
    line = 0
    while len(out) < size:
        out += f"{line:09d} {'x' * (line % 50)}\n".encode()
        line += 1
    return bytes(out[:size])


@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=200), st.booleans()), max_size=40),
    st.integers(min_value=2, max_value=300),
)
def test_skipping_what_cannot_be_kept_equals_reading_it(
    chunks: list[tuple[bytes, bool]], cap: int
) -> None:
    data = b"".join(chunk for chunk, _ in chunks)
    capture = BoundedCapture("stdout", cap)
    seen = 0
    for chunk, want_skip in chunks:
        seen += len(chunk)
        # drain's rule: head full, and a whole tail's worth of bytes still follows
        if want_skip and capture.head_full and len(data) - seen >= capture.tail_cap:
            capture.skip(len(chunk))
        else:
            capture.feed(chunk)
    assert_same(capture, reference(data, cap))


def test_skip_before_the_head_is_full_is_refused() -> None:
    capture = BoundedCapture("stdout", 100)
    capture.feed(b"x" * 49)
    with pytest.raises(ValueError, match="head"):
        capture.skip(10)
    assert capture.total == 49


def full_pipe() -> tuple[int, int, bytes]:
    """A pipe holding a whole buffer of numbered lines, write end closed."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # the default buffer still holds more than the capture keeps
    size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    data = numbered(size)
    assert os.write(w, data) == size
    os.close(w)
    return r, w, data


async def test_a_full_pipe_is_spliced_past_the_head_and_tail_unread() -> None:
    r, _, data = full_pipe()
    capture = BoundedCapture("stdout", 4096)
    stream = trio.lowlevel.FdStream(r)
    with trio.fail_after(10):
        await drain(stream, capture, chunk=1024)
    await stream.aclose()
    assert_same(capture, reference(data, 4096))
    # everything but the head, the chunk read with it and the tail went by without a copy
    assert capture.skipped >= len(data) - 4096 - 1024
    assert capture.text().endswith(data[-2048:].decode())


async def test_concurrent_writer_keeps_exact_head_and_tail() -> None:
    data = numbered(8 << 20)
    r, w = os.pipe()
    rng = random.Random(7)

    def write_all() -> None:
        with os.fdopen(w, "wb", buffering=0) as out:
            view = memoryview(data)
            while view:
                step = rng.randint(1, 300_000)
                written = out.write(view[:step])
                assert written is not None
                view = view[written:]

    capture = BoundedCapture("stderr", 64 * 1024)
    stream = trio.lowlevel.FdStream(r)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, write_all)
            await drain(stream, capture)
    await stream.aclose()
    assert_same(capture, reference(data, 64 * 1024, "stderr"))


async def test_a_stream_that_cannot_be_spliced_is_read_in_full() -> None:
    """A socket is not a pipe: splice refuses, the drain falls back to reading everything."""
    data = numbered(300_000)
    a, b = socket.socketpair()
    capture = BoundedCapture("stdout", 1000)
    stream = trio.lowlevel.FdStream(os.dup(b.fileno()))
    b.close()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: (a.sendall(data), a.close()))
            await drain(stream, capture, chunk=4096)
    await stream.aclose()
    assert capture.skipped == 0
    assert_same(capture, reference(data, 1000))
