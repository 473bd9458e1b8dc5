"""Bounded capture of one output stream: keeps the head and the tail, counts what it dropped.

Memory stays at most ``cap`` bytes however much the benchmark writes; `text` decodes as UTF-8
with replacement and puts a marker where bytes were dropped.

Bytes can also go by unread (`skip`, for a drain that knows they cannot be kept); the counts
stay exact. `runner_agent.execute.pipe_drain` fills a capture from a pipe.
"""

from __future__ import annotations

from collections import deque


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
        self.copied = 0  # handed to `feed`; the rest of `total` went by unread (`skipped`)

    @property
    def dropped(self) -> int:
        return self.total - len(self._head) - min(self._tail_len, self._tail_cap)

    @property
    def skipped(self) -> int:
        """Bytes that went by unread (`skip`)."""
        return self.total - self.copied

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
        self._tail.clear()
        self._tail_len = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.total += len(view)
        self.copied += len(view)
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
