"""Bounded capture of one output stream: keeps the head and the tail, counts what it dropped.

Memory stays at most ``cap`` bytes however much the benchmark writes; `text` decodes as UTF-8
with replacement and puts a marker where bytes were dropped.

`drain` reads a pipe to EOF into a capture. Once the head is full, bytes that can no longer end
up in the tail (those with at least a tail's worth of bytes queued behind them in the pipe, as
``FIONREAD`` says) are spliced to ``/dev/null`` without being copied into the agent: a chatty
benchmark's pipe empties faster and costs the agent less CPU, with the same head, tail and counts.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import termios
from collections import deque

import trio

log = logging.getLogger(__name__)


class BoundedCapture:
    """Head (first ``cap // 2`` bytes) + tail (last ``cap - cap // 2`` bytes) of a byte stream.

    The tail is a queue of received chunks trimmed from the front a chunk at a time, so feeding
    costs O(chunk) and memory stays under ``cap`` plus one chunk.
    """

    def __init__(self, name: str, cap: int) -> None:
        self.name = name
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.total = 0
        self.skipped = 0

    @property
    def dropped(self) -> int:
        return self.total - len(self._head) - min(self._tail_len, self._tail_cap)

    @property
    def head_full(self) -> bool:
        return len(self._head) >= self._head_cap

    @property
    def tail_cap(self) -> int:
        return self._tail_cap

    def skip(self, count: int) -> None:
        """``count`` bytes of the stream went by unread. Only valid once the head is full and when
        at least ``tail_cap`` more bytes follow them (the caller checked the pipe), so they belong
        to neither the head nor the tail; what the tail held so far precedes them and goes too."""
        if not self.head_full:
            raise ValueError("skip() before the head is full would lose head bytes")
        if count <= 0:
            return
        self.total += count
        self.skipped += count
        self._tail.clear()
        self._tail_len = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.total += len(view)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += view[:room]
            view = view[room:]
        if not view:
            return
        chunk = data if isinstance(data, bytes) and len(view) == len(data) else bytes(view)
        self._tail.append(chunk)
        self._tail_len += len(view)
        while self._tail and self._tail_len - len(self._tail[0]) >= self._tail_cap:
            self._tail_len -= len(self._tail.popleft())

    def _tail_bytes(self) -> bytes:
        joined = b"".join(self._tail)
        return joined[len(joined) - self._tail_cap :] if len(joined) > self._tail_cap else joined

    def text(self) -> str:
        tail = self._tail_bytes()
        if not self.dropped:
            return (bytes(self._head) + tail).decode("utf-8", errors="replace")
        marker = (
            f"\n[runner-agent: {self.dropped} bytes of {self.name} dropped "
            f"({self.total} written, head and tail kept)]\n"
        )
        return self._head.decode("utf-8", errors="replace") + marker + tail.decode("utf-8", errors="replace")


def _queued(fd: int) -> int:
    """How many bytes wait in the pipe ``fd`` (``FIONREAD``)."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


class _Discard:
    """Splices the bytes of a pipe that `capture` will never keep to ``/dev/null``; turns itself
    off for good on the first error (the plain read path then does all the work)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.null: int | None = None
        try:
            self.null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("no %s (%s); output is read in full", os.devnull, exc)

    def __call__(self, capture: BoundedCapture) -> None:
        if self.null is None or not capture.head_full:
            return
        try:
            excess = _queued(self.fd) - capture.tail_cap
            if excess > 0:
                capture.skip(os.splice(self.fd, self.null, excess, flags=os.SPLICE_F_NONBLOCK))
        except BlockingIOError:
            pass
        except OSError as exc:
            log.debug("splicing %s to /dev/null failed (%s); reading all of it", capture.name, exc)
            self.close()

    def close(self) -> None:
        if self.null is not None:
            os.close(self.null)
            self.null = None


async def drain(stream: trio.abc.ReceiveStream, capture: BoundedCapture, chunk: int = 1 << 20) -> None:
    """Read ``stream`` to EOF into ``capture``. For a pipe (`trio.lowlevel.FdStream`, already
    non-blocking) each round waits until it is readable, then splices away what the capture
    would drop anyway (the pipe holds the most it will then), then reads the rest."""
    if not isinstance(stream, trio.lowlevel.FdStream):
        while data := await stream.receive_some(chunk):
            capture.feed(data)
        return
    fd = stream.fileno()
    discard = _Discard(fd)
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            discard(capture)
            try:
                data = os.read(fd, chunk)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"reading {capture.name}: {exc}") from exc
            if not data:
                return
            capture.feed(data)
    finally:
        discard.close()
