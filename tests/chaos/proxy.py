"""A fault-injecting TCP proxy (trio, 127.0.0.1 only) for chaos tests: sits between a client (the
agent) and an upstream server (the dev server) and, on command, on a schedule or at random from a
seed, cuts connections with RST or FIN, black-holes them (stops forwarding, sends no FIN), delays or
throttles the bytes. Every fault injected is counted by kind in :attr:`ChaosProxy.faults`.

The upstream port is fixed for the proxy's lifetime; an upstream that restarts on the same port is
picked up by the next client connection (while it is down, a client is accepted and then cut with a
FIN, which is what a client sees from a closed port behind a load balancer).

Typical use::

    async with trio.open_nursery() as nursery:
        proxy = ChaosProxy(upstream_port=server.port)
        await nursery.start(proxy.serve)
        ... point the client at proxy.port ...
        proxy.cut(FaultKind.RESET)              # every live connection gets an RST
        nursery.start_soon(proxy.run_random, RandomFaults(seed=7, count=20))
"""

from __future__ import annotations

import enum
import math
import random
import socket
import struct
from collections import Counter
from collections.abc import Sequence

import trio
from attrs import field, frozen
from attrs.validators import ge, gt, instance_of

LOOPBACK = "127.0.0.1"
_CHUNK = 65536


class FaultKind(enum.Enum):
    """The kinds of fault the proxy injects."""

    RESET = "reset"  # close both sides with an RST (SO_LINGER 0)
    FIN = "fin"  # close both sides cleanly (FIN), mid-stream
    BLACKHOLE = "blackhole"  # keep the sockets open but forward nothing, either way
    DELAY = "delay"  # deliver every chunk this many seconds late (order kept)
    THROTTLE = "throttle"  # forward at most this many bytes per second per direction


@frozen
class ScheduledFault:
    """One fault at ``at`` seconds after the schedule starts. ``value`` is the delay in seconds
    (DELAY) or the rate in bytes/s (THROTTLE); ``duration`` is how long DELAY/THROTTLE last."""

    at: float = field(validator=ge(0))
    kind: FaultKind = field(validator=instance_of(FaultKind))
    value: float = 0.0
    duration: float = field(default=1.0, validator=ge(0))


def _positive_weights(_inst: object, _attr: object, value: dict[FaultKind, float]) -> None:
    if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")


@frozen
class RandomFaults:
    """A seeded random fault plan: ``count`` faults, each after a pause drawn uniformly from
    ``[min_gap, max_gap]`` seconds, its kind drawn with ``weights``."""

    seed: int
    count: int = field(default=10, validator=ge(0))
    min_gap: float = field(default=0.5, validator=ge(0))
    max_gap: float = field(default=3.0, validator=ge(0))
    weights: dict[FaultKind, float] = field(
        factory=lambda: dict.fromkeys(FaultKind, 1.0), validator=_positive_weights
    )
    max_delay: float = field(default=0.5, validator=ge(0))  # DELAY value drawn in [0, max_delay]
    min_rate: float = field(default=2048.0, validator=gt(0))  # THROTTLE bytes/s in [min, 16*min]
    max_duration: float = field(default=2.0, validator=ge(0))  # DELAY/THROTTLE last [0, max]

    def plan(self) -> list[ScheduledFault]:
        """The deterministic schedule this seed gives."""
        rng = random.Random(self.seed)
        kinds = list(self.weights)
        weights = [self.weights[k] for k in kinds]
        at = 0.0
        out: list[ScheduledFault] = []
        for _ in range(self.count):
            at += rng.uniform(self.min_gap, max(self.min_gap, self.max_gap))
            kind = rng.choices(kinds, weights)[0]
            value = 0.0
            if kind is FaultKind.DELAY:
                value = rng.uniform(0.0, self.max_delay)
            elif kind is FaultKind.THROTTLE:
                value = rng.uniform(self.min_rate, 16 * self.min_rate)
            out.append(ScheduledFault(at, kind, value, rng.uniform(0.0, self.max_duration)))
        return out


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = trio.CancelScope()
        self.blackholed = False
        self.reset = False
        self.ended = 0  # directions that have stopped
        self.downstream_bytes = 0  # forwarded upstream → client


def _set_rst_on_close(stream: trio.SocketStream) -> None:
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # already closed by the peer
        pass


class ChaosProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` that injects faults."""

    def __init__(self, upstream_port: int, *, port: int = 0, upstream_host: str = LOOPBACK) -> None:
        if upstream_host not in (LOOPBACK, "localhost"):
            raise ValueError("the chaos proxy only talks to loopback")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._requested_port = port
        self._port: int | None = None
        self._links: set[_Link] = set()
        self.delay = 0.0
        self.rate: float | None = None  # bytes per second, None: unthrottled
        self.reset_after: int | None = None  # RST a link once it forwarded this many bytes down
        self.faults: Counter[FaultKind] = Counter()
        self.connections_accepted = 0
        self.upstream_refused = 0
        self.links_cut = 0
        self.bytes_swallowed = 0  # by black-holed links
        self._changed = trio.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not listening yet")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def live(self) -> int:
        """How many client connections are open right now."""
        return len(self._links)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled; reports the listening port to ``nursery.start``."""
        listeners = await trio.open_tcp_listeners(self._requested_port, host=LOOPBACK)
        self._port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self._port)

    async def wait_for_connections(self, count: int) -> None:
        """Wait until at least ``count`` client connections are open."""
        while self.live < count:
            await self._changed.wait()

    async def wait_all_closed(self) -> None:
        """Wait until no client connection is open."""
        while self.live:
            await self._changed.wait()

    async def wait_swallowed(self, nbytes: int) -> None:
        """Wait until black-holed links have swallowed at least ``nbytes``."""
        while self.bytes_swallowed < nbytes:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- forwarding ----------------------------------------------------------------------------

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections_accepted += 1
        try:
            upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError:
            self.upstream_refused += 1
            await trio.aclose_forcefully(client)
            return
        link = _Link(client, upstream)
        self._links.add(link)
        self._notify()
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, client, upstream, nursery, False)
                    nursery.start_soon(self._pump, link, upstream, client, nursery, True)
        finally:
            self._links.discard(link)
            if link.reset:
                _set_rst_on_close(client)
                _set_rst_on_close(upstream)
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(upstream)
            self._notify()

    async def _pump(
        self,
        link: _Link,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        nursery: trio.Nursery,
        downstream: bool,
    ) -> None:
        """Copy one direction; EOF or an error on either side ends the whole link (a black-holed
        link ends only when both directions have ended, since a black hole forwards no FIN)."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def deliver() -> None:
            async for due, data in receive:
                now = trio.current_time()
                if due > now:
                    await trio.sleep(due - now)
                if link.blackholed:
                    continue
                if downstream and self.reset_after is not None:
                    room = self.reset_after - link.downstream_bytes
                    if len(data) >= room:
                        await sink.send_all(data[: max(0, room)])
                        self.faults[FaultKind.RESET] += 1
                        self.links_cut += 1
                        link.reset = True
                        link.scope.cancel()
                        return
                    link.downstream_bytes += len(data)
                rate = self.rate
                if rate is None:
                    await sink.send_all(data)
                    continue
                piece = max(1, int(rate / 20))
                for start in range(0, len(data), piece):
                    chunk = data[start : start + piece]
                    await sink.send_all(chunk)
                    await trio.sleep(len(chunk) / rate)

        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(deliver)
                try:
                    while True:
                        data = await source.receive_some(_CHUNK)
                        if not data:
                            break
                        if link.blackholed:  # a black hole swallows it
                            self.bytes_swallowed += len(data)
                            self._notify()
                        else:
                            send.send_nowait((trio.current_time() + self.delay, data))
                finally:
                    send.close()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # either socket failed: the link is over
        link.ended += 1
        if link.blackholed and link.ended < 2:
            return  # the other direction keeps swallowing until its side gives up too
        nursery.cancel_scope.cancel()

    # --- faults --------------------------------------------------------------------------------

    def cut(self, kind: FaultKind = FaultKind.RESET) -> int:
        """Cut every live connection with an RST (``RESET``) or a FIN (``FIN``); returns how many."""
        if kind not in (FaultKind.RESET, FaultKind.FIN):
            raise ValueError(f"cut() takes RESET or FIN, not {kind}")
        self.faults[kind] += 1
        links = list(self._links)
        for link in links:
            link.reset = kind is FaultKind.RESET
            link.scope.cancel()
        self.links_cut += len(links)
        return len(links)

    def blackhole(self) -> int:
        """Stop forwarding on every live connection (no FIN; the sockets stay open until the
        client or server gives up). New connections are not affected. Returns how many."""
        self.faults[FaultKind.BLACKHOLE] += 1
        links = list(self._links)
        for link in links:
            link.blackholed = True
        return len(links)

    def reset_links_after(self, nbytes: int | None) -> None:
        """From now on, RST every link (each counted as a RESET fault) once it has forwarded
        ``nbytes`` from upstream to the client: ``0`` resets each connection at the first byte
        of its answer, a larger value cuts a response body part-way. None turns it off."""
        if nbytes is not None and nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        self.reset_after = nbytes

    def set_delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late from now on (0 turns it off)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        if seconds > 0:
            self.faults[FaultKind.DELAY] += 1
        self.delay = seconds

    def set_throttle(self, bytes_per_second: float | None) -> None:
        """Forward at most this many bytes per second per direction (None turns it off)."""
        if bytes_per_second is not None:
            if bytes_per_second <= 0:
                raise ValueError("rate must be > 0")
            self.faults[FaultKind.THROTTLE] += 1
        self.rate = bytes_per_second

    def heal(self) -> None:
        """End the chaos: lift every setting and close black-holed links (not counted as a
        fault), so a test can finish on a clean network."""
        self.clear()
        for link in list(self._links):
            if link.blackholed:
                link.scope.cancel()

    def clear(self) -> None:
        """Turn delay, throttling and reset-after off (black-holed links stay dead until cut)."""
        self.delay = 0.0
        self.rate = None
        self.reset_after = None

    async def apply(self, fault: ScheduledFault) -> None:
        """Inject one fault now; DELAY and THROTTLE are lifted after ``fault.duration`` (unless
        a later fault has changed the setting meanwhile)."""
        match fault.kind:
            case FaultKind.RESET | FaultKind.FIN:
                self.cut(fault.kind)
            case FaultKind.BLACKHOLE:
                self.blackhole()
            case FaultKind.DELAY:
                self.set_delay(fault.value)
                await trio.sleep(fault.duration)
                if self.delay == fault.value:
                    self.set_delay(0.0)
            case FaultKind.THROTTLE:
                self.set_throttle(fault.value)
                await trio.sleep(fault.duration)
                if self.rate == fault.value:
                    self.set_throttle(None)

    async def run_schedule(self, schedule: Sequence[ScheduledFault]) -> None:
        """Inject each fault at its time (seconds after this call), in order of time; returns
        when every fault has been injected and lifted."""
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for fault in sorted(schedule, key=lambda f: f.at):
                await trio.sleep_until(start + fault.at)
                nursery.start_soon(self.apply, fault)

    async def run_random(self, plan: RandomFaults) -> None:
        """Inject the seeded random plan."""
        await self.run_schedule(plan.plan())

    def summary(self) -> dict[str, int]:
        """Faults injected by kind (every kind listed) plus connection counters."""
        out = {kind.value: self.faults[kind] for kind in FaultKind}
        out["connections"] = self.connections_accepted
        out["links_cut"] = self.links_cut
        out["upstream_refused"] = self.upstream_refused
        return out
