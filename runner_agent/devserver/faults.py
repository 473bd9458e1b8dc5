"""Fault switches the agent's tests flip on a running dev server.

- ``withhold_acks``: acks are not sent at all (the status change still happens);
- ``ack_delay``: every ack is queued and sent this many seconds after it was due, in order, so
  stale ``running``/``heartbeat`` acks pile up behind newer messages;
- ``discard_terminals``: the next N terminal messages are silently swallowed (no state change,
  no ack, no timer reset), as if lost on the way;
- ``update``: the next ``ready`` (in IDLE) is answered with this ``update`` and the connection is
  dropped, as Bencher does when a self-update is due.

Counters record what the switches did so tests can assert on it.
"""

from __future__ import annotations

from runner_agent.protocol import Update


class Faults:
    """Mutable switches shared by all connections of one server."""

    def __init__(self) -> None:
        self.withhold_acks = False
        self.ack_delay = 0.0
        self.discard_terminals = 0
        self.update: Update | None = None
        self.acks_withheld = 0
        self.terminals_discarded = 0

    def pause_acks(self) -> None:
        self.withhold_acks = True

    def resume_acks(self) -> None:
        self.withhold_acks = False

    def delay_acks(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("ack delay must be >= 0")
        self.ack_delay = seconds

    def discard_next_terminal(self, count: int = 1) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        self.discard_terminals += count

    def offer_update(self, update: Update | None) -> None:
        self.update = update

    def take_discard(self) -> bool:
        if self.discard_terminals > 0:
            self.discard_terminals -= 1
            self.terminals_discarded += 1
            return True
        return False
