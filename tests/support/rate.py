"""Counting connection attempts against Bencher's sliding-window rate limits (PROTOCOL.md §1.5)."""

from __future__ import annotations

from collections.abc import Iterable


def max_in_window(times: Iterable[float], window: float, *, slack: float = 0.0) -> int:
    """The most attempts inside any half-open window of ``window`` seconds (times in any order).
    ``slack``: an attempt this close to ``window`` after another counts as outside its window
    (float rounding, for a guard that waits exactly until the oldest attempt leaves)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window - slack:
            start += 1
        best = max(best, end - start + 1)
    return best
