"""Draining a pipe into a bounded capture: splicing away what the capture drops changes nothing
it keeps (head, tail, counts), on real pipes, with and without a concurrent writer."""

from __future__ import annotations

import fcntl
import os
import random
import socket

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from runner_agent.execute.capture import BoundedCapture
from runner_agent.execute.pipe_drain import PipeDrain, drain


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


def full_pipe(size: int = 1 << 20) -> tuple[int, bytes]:
    """A pipe holding a whole buffer of numbered lines, write end closed."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        pass  # the default buffer still holds far more than the capture keeps
    size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    data = numbered(size)
    assert os.write(w, data) == size
    os.close(w)
    return r, data


async def drain_full_pipe(cap: int, chunk: int) -> tuple[BoundedCapture, bytes]:
    """`full_pipe` drained into a capture of ``cap`` bytes, reading ``chunk`` at a time."""
    r, data = full_pipe()
    capture = BoundedCapture("stdout", cap)
    stream = trio.lowlevel.FdStream(r)
    with trio.fail_after(10):
        await drain(stream, capture, chunk=chunk)
    await stream.aclose()
    return capture, data


async def test_a_full_pipe_is_copied_only_for_its_head_and_tail() -> None:
    capture, data = await drain_full_pipe(4096, chunk=1024)
    assert_same(capture, reference(data, 4096))
    assert capture.copied == 4096  # two 1 KiB reads for the head, the held tail at EOF
    assert capture.skipped == len(data) - 4096
    assert capture.text().endswith(data[-2048:].decode())


class PipeWriter:
    """The write end of a real pipe, written step by step by the test while a drain runs."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        try:
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # the tests' writes fit a default pipe unless they say otherwise
        self.sent = bytearray()

    async def write(self, data: bytes) -> None:
        """Write (the pipe has room) and let the drain handle it before going on."""
        assert os.write(self.write_fd, data) == len(data)
        self.sent += data
        await trio.testing.wait_all_tasks_blocked()

    def close(self) -> None:
        os.close(self.write_fd)


async def stepwise(cap: int, writes: list[bytes], *, cancel: bool = False) -> tuple[BoundedCapture, bytes]:
    """Drain a pipe while ``writes`` arrive one at a time; close it (or cancel the drain)."""
    writer = PipeWriter()
    capture = BoundedCapture("stdout", cap)
    stream = trio.lowlevel.FdStream(writer.read_fd)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, stream, capture)
            await trio.testing.wait_all_tasks_blocked()
            for data in writes:
                await writer.write(data)
            if cancel:
                nursery.cancel_scope.cancel()
            writer.close()
    await stream.aclose()
    return capture, bytes(writer.sent)


@pytest.mark.parametrize(
    "sizes",
    [
        [2048, 100, 900, 1500, 3000, 10, 2047, 2049],  # below, at and above the 2048-byte tail
        [5000, 7000, 1],
        [2048, *([700] * 20)],
    ],
)
async def test_written_in_steps_only_head_and_final_tail_are_copied(sizes: list[int]) -> None:
    stream = numbered(sum(sizes))
    writes, at = [], 0
    for size in sizes:
        writes.append(stream[at : at + size])
        at += size
    capture, sent = await stepwise(4096, writes)
    assert_same(capture, reference(sent, 4096))
    assert capture.copied <= 4096 + max(sizes)  # the read that filled the head, then the tail only


async def test_after_a_burst_the_drain_polls_briefly_then_sleeps_again() -> None:
    writer = PipeWriter()
    if fcntl.fcntl(writer.write_fd, fcntl.F_GETPIPE_SZ) < 1 << 20:
        pytest.skip("this machine refuses 1 MiB pipes")
    capture = BoundedCapture("stdout", 4096)
    stream = trio.lowlevel.FdStream(writer.read_fd)
    pipe = PipeDrain(writer.read_fd, capture)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            await writer.write(numbered(4096))  # the head, read
            await writer.write(numbered(900_000))  # a burst: spliced, then polling...
            assert pipe.bursts == 1  # ...which ended, or wait_all_tasks_blocked would not return
            await writer.write(b"quiet line\n")  # small: no new burst
            writer.close()
    await stream.aclose()
    assert pipe.bursts == 1
    assert_same(capture, reference(bytes(writer.sent), 4096))


async def test_a_cancelled_drain_still_hands_over_the_held_tail() -> None:
    writes = [numbered(3000), b"tail-start " * 20, b"the very end\n"]
    capture, sent = await stepwise(4096, writes, cancel=True)
    assert_same(capture, reference(sent, 4096))
    assert capture.text().endswith("the very end\n")


async def test_many_tiny_writes_use_up_the_hold_pipe_which_is_copied_and_reused() -> None:
    """Each tiny write spliced on its own takes one slot of the hold pipe; when they run out, the
    held bytes are copied into the capture and splicing goes on: same head, tail and counts."""
    writes = [numbered(2048)] + [f"line {i:04d}\n".encode() for i in range(100)]
    writer = PipeWriter()
    capture = BoundedCapture("stdout", 4096)
    stream = trio.lowlevel.FdStream(writer.read_fd)
    pipe = PipeDrain(writer.read_fd, capture)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            for data in writes:
                await writer.write(data)
            writer.close()
    await stream.aclose()
    assert_same(capture, reference(bytes(writer.sent), 4096))
    assert pipe.recycled >= 1
    assert pipe.splicing


@pytest.mark.parametrize(("seed", "cap"), [(0, 64), (1, 4096), (2, 64 * 1024), (3, 64 * 1024), (4, 1 << 20)])
async def test_concurrent_writer_keeps_exact_head_and_tail(seed: int, cap: int) -> None:
    """A real writer thread racing the drain, mixing tiny and large writes."""
    data = numbered(8 << 20)
    r, w = os.pipe()
    rng = random.Random(seed)

    def write_all() -> None:
        with os.fdopen(w, "wb", buffering=0) as out:
            view = memoryview(data)
            while view:
                step = rng.choice([rng.randint(1, 64), rng.randint(1, 300_000)])
                written = out.write(view[:step])
                assert written is not None
                view = view[written:]

    capture = BoundedCapture("stderr", cap)
    stream = trio.lowlevel.FdStream(r)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, write_all)
            await drain(stream, capture)
    await stream.aclose()
    assert_same(capture, reference(data, cap, "stderr"))


async def test_without_dev_null_everything_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "devnull", "/nonexistent/devnull")
    capture, data = await drain_full_pipe(4096, chunk=4096)
    assert_same(capture, reference(data, 4096))
    assert (capture.skipped, capture.copied) == (0, len(data))


async def test_a_socket_and_a_memory_stream_drain_alike() -> None:
    """Not pipes: a socket (splice into the hold pipe works, to /dev/null does not) and a stream
    with no file descriptor at all."""
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
    assert_same(capture, reference(data, 1000))

    send, receive = trio.testing.memory_stream_one_way_pair()
    capture = BoundedCapture("stdout", 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, receive, capture)
        await send.send_all(data)
        await send.aclose()
    assert_same(capture, reference(data, 1000))
