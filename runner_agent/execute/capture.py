"""Bounded capture of one output stream: keeps the head and the tail, counts what it dropped.

Memory stays at most ``cap`` bytes however much the benchmark writes; `text` decodes as UTF-8
with replacement and puts a marker where bytes were dropped.
"""

from __future__ import annotations

import trio


class BoundedCapture:
    """Head (first ``cap // 2`` bytes) + tail (last ``cap - cap // 2`` bytes) of a byte stream."""

    def __init__(self, name: str, cap: int) -> None:
        self.name = name
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    @property
    def dropped(self) -> int:
        return self.total - len(self._head) - len(self._tail)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.total += len(view)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += view[:room]
            view = view[room:]
        if not view:
            return
        if len(view) >= self._tail_cap:
            self._tail[:] = view[len(view) - self._tail_cap :]
        else:
            self._tail += view
            excess = len(self._tail) - self._tail_cap
            if excess > 0:
                del self._tail[:excess]

    def text(self) -> str:
        if not self.dropped:
            return (self._head + self._tail).decode("utf-8", errors="replace")
        marker = (
            f"\n[runner-agent: {self.dropped} bytes of {self.name} dropped "
            f"({self.total} written, head and tail kept)]\n"
        )
        head = self._head.decode("utf-8", errors="replace")
        return head + marker + self._tail.decode("utf-8", errors="replace")


async def drain(stream: trio.abc.ReceiveStream, capture: BoundedCapture, chunk: int = 65536) -> None:
    """Read ``stream`` to EOF into ``capture``."""
    while True:
        data = await stream.receive_some(chunk)
        if not data:
            return
        capture.feed(data)
