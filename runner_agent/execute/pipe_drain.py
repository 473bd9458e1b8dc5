"""Draining a benchmark's output pipe into a `BoundedCapture` with as little copying as Linux allows.

The head is read normally. After that, at every wake-up the pipe holds what the benchmark wrote
meanwhile (``FIONREAD``), and only the newest ``tail_cap`` bytes of the stream can still end up
in the tail:

- bytes with at least ``tail_cap`` bytes queued behind them are spliced to ``/dev/null``;
- the rest is spliced into a private *hold* pipe that keeps at most ``tail_cap`` bytes (its
  oldest bytes are spliced to ``/dev/null`` to make room);
- at EOF (or when the drain is cancelled) the hold pipe is read once into the capture.

So a chatty benchmark's output is never copied into the agent except the head and the final
tail. After a round that moved a lot, the drain polls the pipe (yielding at each look) for a
fraction of a millisecond before it sleeps again: a firehose then costs no wake-up per pipe-full. When many small pieces use up the hold pipe's slots, what it holds is copied into the
capture and it starts over. Whatever cannot be spliced (no ``/dev/null``, a splice error) falls
back to plain reads for the rest of the stream, with the same head, tail and counts: splicing is
an optimisation, never a change of result.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import termios
import time

import trio

from runner_agent.execute.capture import BoundedCapture

log = logging.getLogger(__name__)

HOLD_PIPE_MIN = 64 * 1024
MOVED, NOTHING, READ = 1, 2, 3  # outcomes of PipeDrain._splice_round
# After a round that moved this much, the writer is a firehose: the drain polls (yielding to the
# other tasks) for up to POLL_WINDOW_S instead of sleeping in epoll, which spares a cross-CPU
# wake-up per pipe-full (the agent runs on housekeeping CPUs, never on the benchmark's).
POLL_AFTER_BYTES = 64 * 1024
POLL_WINDOW_S = 0.0005


def queued(fd: int) -> int:
    """How many bytes wait in the pipe ``fd`` (``FIONREAD``)."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def _splice_exactly(src: int, dst: int, count: int) -> int:
    """Splice up to ``count`` bytes without blocking; returns how many moved (short when
    ``dst`` is full)."""
    moved = 0
    while moved < count:
        try:
            n = os.splice(src, dst, count - moved, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            break
        if n == 0:
            break
        moved += n
    return moved


class _Hold:
    """The private pipe holding the newest bytes of the stream (``held`` of them, never more than
    the capture's ``tail_cap``)."""

    def __init__(self, tail_cap: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.held = 0
        want = HOLD_PIPE_MIN
        while want < 2 * tail_cap:
            want *= 2
        try:
            try:
                fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, want)
            except OSError:
                pass  # e.g. over the unprivileged maximum: see what we have
            self.capacity = fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ)
        except BaseException:
            self.close()
            raise

    def take_all(self) -> bytes:
        """Read what is held (it is all in the pipe; reads do not block)."""
        parts: list[bytes] = []
        while self.held > 0:
            data = os.read(self.read_fd, self.held)
            if not data:
                break
            parts.append(data)
            self.held -= len(data)
        self.held = 0
        return b"".join(parts)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class PipeDrain:
    """One output pipe (``fd``, non-blocking) drained into ``capture``; see the module docstring."""

    def __init__(self, fd: int, capture: BoundedCapture, chunk: int = 1 << 20) -> None:
        self.fd = fd
        self.capture = capture
        self.chunk = chunk
        self.null: int | None = None  # /dev/null, opened by the first splice round
        self.hold: _Hold | None = None
        self.splicing = True
        self.recycled = 0  # times the hold pipe ran out of slots and was copied out
        self.bursts = 0  # times a fast writer switched the drain to polling

    async def run(self) -> None:
        """Until EOF. Cancellable at every wait; what the hold pipe kept reaches the capture in
        every case, in stream order."""
        polling = False
        idle_since: float | None = None
        try:
            while True:
                if polling:  # a fast writer: look again after a yield
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(self.fd)
                if self.splicing and self.capture.head_full:
                    try:
                        outcome, moved = self._splice_round()
                    except OSError as exc:
                        self._stop_splicing(f"splice failed: {exc}")
                    else:
                        if outcome == MOVED:
                            if moved >= POLL_AFTER_BYTES:
                                if not polling:
                                    self.bursts += 1
                                polling, idle_since = True, None
                            continue
                        if outcome == NOTHING and polling:
                            now = time.perf_counter()  # real time: spinning never advances a mock clock
                            idle_since = now if idle_since is None else idle_since
                            if now - idle_since >= POLL_WINDOW_S:
                                polling = False  # the burst is over: sleep until data (or EOF)
                            continue
                polling = False
                try:
                    data = os.read(self.fd, self.chunk)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise trio.BrokenResourceError(f"reading {self.capture.name}: {exc}") from exc
                if not data:
                    return
                self._flush_hold()  # the held bytes came before what was just read
                self.capture.feed(data)
        finally:
            self._release_hold()
            if self.null is not None:
                os.close(self.null)
                self.null = None

    def _splice_round(self) -> tuple[int, int]:
        """Move what the pipe holds now without copying it, and say how many bytes that was:
        `MOVED` when the pipe was emptied that way; `NOTHING` when nothing was queued (EOF, a
        spurious wake-up, or data arriving right now); `READ` when a read must follow because
        splicing just stopped."""
        capture = self.capture
        pending = queued(self.fd)
        if pending == 0:
            return NOTHING, 0
        if self.null is None:  # most benchmarks never fill the head: open it only when needed
            self.null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        total = pending
        tail_cap = capture.tail_cap
        excess = pending - tail_cap
        if excess > 0:
            # a whole tail's worth follows these bytes; the held ones come before them
            if self.hold is not None:
                self._drop_held(self.hold.held)
            moved = _splice_exactly(self.fd, self.null, excess)
            capture.skip(moved)
            pending -= moved
        if self.hold is None:
            self.hold = _Hold(tail_cap)
            if self.hold.capacity < tail_cap:
                self._stop_splicing(f"hold pipe of {self.hold.capacity} bytes < tail {tail_cap}")
                return READ, 0
        hold = self.hold
        # make room: after this round the hold pipe keeps the newest tail_cap bytes at most
        self._drop_held(max(0, hold.held + pending - tail_cap))
        while True:
            moved = _splice_exactly(self.fd, hold.write_fd, pending)
            hold.held += moved
            pending -= moved
            if pending == 0:
                return MOVED, total
            if hold.held == 0:
                self._stop_splicing("the hold pipe takes nothing")
                return READ, 0
            # out of slots (each small piece takes one): copy what it holds, start it over
            self.recycled += 1
            log.debug("%s: hold pipe out of slots, %d held bytes copied", capture.name, hold.held)
            self._flush_hold()

    def _drop_held(self, count: int) -> None:
        """The oldest ``count`` held bytes cannot be in the tail any more: splice them away."""
        if count <= 0 or self.hold is None:
            return
        assert self.null is not None
        moved = _splice_exactly(self.hold.read_fd, self.null, count)
        self.hold.held -= moved
        self.capture.skip(moved)
        if moved < count:
            raise OSError(f"dropped only {moved} of {count} held bytes")

    def _flush_hold(self) -> None:
        """Copy the held bytes into the capture (before anything newer goes there)."""
        if self.hold is not None and self.hold.held:
            self.capture.feed(self.hold.take_all())

    def _release_hold(self) -> None:
        """Hand the held bytes (the newest ones so far) to the capture and close the hold pipe."""
        if self.hold is not None:
            try:
                self._flush_hold()
            finally:
                self.hold.close()
                self.hold = None

    def _stop_splicing(self, reason: str) -> None:
        if self.splicing:
            log.debug("%s: %s; reading the rest in full", self.capture.name, reason)
        self.splicing = False
        self._release_hold()


async def drain(stream: trio.abc.ReceiveStream, capture: BoundedCapture, chunk: int = 1 << 20) -> None:
    """Read ``stream`` to EOF into ``capture``: a pipe (`trio.lowlevel.FdStream`, which made it
    non-blocking) through `PipeDrain`, anything else by plain reads."""
    if isinstance(stream, trio.lowlevel.FdStream):
        await PipeDrain(stream.fileno(), capture, chunk).run()
        return
    while data := await stream.receive_some(chunk):
        capture.feed(data)
