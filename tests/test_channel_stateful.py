"""The channel against a tiny scripted model of Bencher's server over a fake link, driven by
hypothesis through random interleavings of server replies, drops, timeouts, job completions,
shutdowns and process restarts. Invariants: results stay in the outbox until their own ack,
``ready`` never goes out while a result awaits delivery, at most one job runs, the benchmark starts
only after the server acked ``running``, a server cancel is reported as ``canceled``, and ``step``
never raises."""

from __future__ import annotations

import enum
from collections import deque
from uuid import UUID

import attrs
import hypothesis.strategies as st
from attrs import define, field
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runner_agent.channel import (
    AbortJob,
    BadFrame,
    CancelTimer,
    Channel,
    ChannelConfig,
    CloseConnection,
    Connect,
    ConnectFailed,
    ConnectionClosed,
    ConnectionOpened,
    DeadLetter,
    DeleteMessage,
    Effect,
    Event,
    Exit,
    FrameReceived,
    ImageReady,
    JobFinished,
    Log,
    Pending,
    PersistMessage,
    PongReceived,
    PrepareJob,
    Send,
    SendPing,
    SetTimer,
    Shutdown,
    StartBenchmark,
    Started,
    TimerFired,
    TimerName,
)
from runner_agent.protocol import (
    Ack,
    Cancel,
    Canceled,
    ClaimedJob,
    Completed,
    Failed,
    Heartbeat,
    NoJob,
    Ready,
    RunnerMessage,
    Running,
    ServerMessage,
    TerminalMessage,
    Update,
)
from tests.test_channel import BASE_JOB, RESULT

# -- a scripted model of Bencher's server (PROTOCOL.md §3, §7) ------------------------------------


class SState(enum.Enum):
    IDLE = "idle"
    POLLING = "polling"
    EXECUTING = "executing"


class Reply(enum.Enum):
    NORMAL = "normal"
    CANCEL = "cancel"  # reply `cancel` to running/heartbeat
    DISCARD = "discard"  # quirk: a terminal message vanishes without an ack


@attrs.frozen
class Tag:
    """What a server frame answers (known only to the test, never to the channel)."""

    kind: str  # "running" | "heartbeat" | "terminal" | "none"
    job: UUID | None = None


@define
class ServerModel:
    state: SState = SState.IDLE
    current: UUID | None = None
    inbox: deque[RunnerMessage] = field(factory=deque)
    outbox: deque[tuple[ServerMessage, Tag]] = field(factory=deque)
    claimed: list[UUID] = field(factory=list)

    def read(self, reply: Reply) -> None:
        msg = self.inbox.popleft()
        match self.state, msg:
            case SState.IDLE, Ready():
                self.state = SState.POLLING
            case SState.IDLE, Completed() | Failed() | Canceled():
                if reply is not Reply.DISCARD:
                    self.outbox.append((Ack(msg.job), Tag("terminal", msg.job)))
            case SState.IDLE, _:
                pass  # running/heartbeat ignored in IDLE
            case SState.POLLING, _:
                pass  # every text frame is discarded while polling
            case SState.EXECUTING, Running() | Heartbeat():
                kind = "running" if isinstance(msg, Running) else "heartbeat"
                if reply is Reply.CANCEL:
                    self.outbox.append((Cancel(), Tag(kind, self.current)))
                    self.state, self.current = SState.IDLE, None
                else:
                    self.outbox.append((Ack(self.current), Tag(kind, self.current)))
            case SState.EXECUTING, Completed() | Failed() | Canceled():
                assert msg.job == self.current, "a result for another job sent while EXECUTING"
                if reply is Reply.DISCARD:
                    return
                self.outbox.append((Ack(self.current), Tag("terminal", msg.job)))
                self.state, self.current = SState.IDLE, None
            case SState.EXECUTING, Ready():
                raise AssertionError("ready sent while the server executes a job")

    def offer_job(self, job: ClaimedJob) -> None:
        self.outbox.append((job, Tag("none")))
        self.state, self.current = SState.EXECUTING, job.uuid
        self.claimed.append(job.uuid)

    def no_job(self) -> None:
        self.outbox.append((NoJob(), Tag("none")))
        self.state = SState.IDLE


# -- the driver stand-in and the fake link ---------------------------------------------------------


class Link:
    """One channel, one server model, a fake clock and a model of the driver's side effects."""

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self.ch = Channel(config)
        self.now = 0.0
        self.server = ServerModel()
        self.open = False
        self.wants_connect = False
        self.exited = False
        self.timers: dict[TimerName, float] = {}
        self.outbox: dict[UUID, tuple[TerminalMessage, int]] = {}
        self.dead: set[UUID] = set()
        self.deleted: list[UUID] = []
        self.finished: dict[UUID, TerminalMessage] = {}
        self.driver_job: UUID | None = None
        self.image_ready = False
        self.benchmark_started = False
        self.aborted = False
        self.acked_running: set[UUID] = set()
        self.canceled_while_running: set[UUID] = set()
        self.jobs_served = 0
        self.job_counter = 0
        self.sent: list[RunnerMessage] = []

    # feeding ------------------------------------------------------------------------------------
    def feed(self, event: Event, tag: Tag | None = None) -> None:
        effects = self.ch.step(event)
        errors = [e.text for e in effects if isinstance(e, Log) and "internal error" in e.text]
        assert not errors, errors
        follow_up: list[Event] = []
        for effect in effects:
            self.apply(effect, tag, follow_up)
        for nxt in follow_up:
            self.feed(nxt)

    def apply(self, effect: Effect, tag: Tag | None, follow_up: list[Event]) -> None:
        match effect:
            case Send(message=msg):
                assert self.open, f"send while disconnected: {msg!r}"
                if isinstance(msg, Ready):
                    assert not self.outbox, "ready while a result awaits delivery"
                    assert self.driver_job is None, "ready while a job runs"
                if isinstance(msg, Completed | Failed | Canceled):
                    assert msg.job in self.outbox, "result sent before it was persisted"
                    if msg.job in self.canceled_while_running:
                        assert isinstance(msg, Canceled), "server cancel not reported as canceled"
                self.sent.append(msg)
                self.server.inbox.append(msg)
            case PersistMessage(message=msg, attempts=n):
                self.outbox[msg.job] = (msg, n)
            case DeleteMessage(job=job):
                assert tag == Tag("terminal", job), f"deleted {job} on {tag}, not on its own ack"
                self.outbox.pop(job)
                self.deleted.append(job)
            case DeadLetter(job=job):
                self.outbox.pop(job)
                self.dead.add(job)
            case PrepareJob(job=job):
                assert self.driver_job is None, "two jobs at once"
                self.driver_job = job.uuid
                self.image_ready = self.benchmark_started = self.aborted = False
            case StartBenchmark(job=job):
                assert job == self.driver_job
                assert job in self.acked_running, "benchmark started before running was acked"
                assert not self.benchmark_started
                self.benchmark_started = True
            case AbortJob(job=job):
                assert job == self.driver_job
                self.aborted = True
            case SetTimer(name=name, deadline=deadline):
                self.timers[name] = deadline
            case CancelTimer(name=name):
                self.timers.pop(name, None)
            case Connect():
                assert not self.open
                self.wants_connect = True
            case CloseConnection():
                assert self.open
                self.drop()
                follow_up.append(ConnectionClosed(self.now, 1000, ""))
            case Exit():
                assert not self.outbox, "exit with undelivered results"
                assert self.driver_job is None, "exit with a running job"
                self.exited = True
                self.drop()
            case SendPing() | Log():
                pass

    def drop(self) -> None:
        self.open = False
        self.server = ServerModel(claimed=self.server.claimed)

    # actions --------------------------------------------------------------------------------------
    def start(self) -> None:
        pending = tuple(Pending(msg, n) for msg, n in self.outbox.values())
        self.feed(Started(self.now, pending))

    def connect(self) -> None:
        self.wants_connect = False
        self.open = True
        self.server = ServerModel(claimed=self.server.claimed)
        self.feed(ConnectionOpened(self.now))

    def deliver_to_runner(self) -> None:
        msg, tag = self.server.outbox.popleft()
        if tag.kind == "running" and isinstance(msg, Ack):
            assert tag.job is not None
            self.acked_running.add(tag.job)
        if isinstance(msg, Cancel) and tag.job == self.driver_job and tag.job not in self.finished:
            assert tag.job is not None
            self.canceled_while_running.add(tag.job)
        self.feed(FrameReceived(self.now, msg), tag)

    def current_job(self) -> UUID:
        assert self.driver_job is not None
        return self.driver_job

    def new_job(self) -> ClaimedJob:
        self.job_counter += 1
        return attrs.evolve(BASE_JOB, uuid=UUID(int=(0xC0DE << 96) + self.job_counter))

    def finish_job(self, outcome: str) -> None:
        job = self.driver_job
        assert job is not None
        msg: TerminalMessage
        if outcome == "completed" and self.benchmark_started:
            msg = Completed(job, RESULT)
        elif outcome == "canceled":
            msg = Canceled(job=job)
        else:
            msg = Failed(job, RESULT if self.benchmark_started else (), "it broke")
        self.driver_job = None
        self.finished[job] = msg
        self.jobs_served += 1
        self.feed(JobFinished(self.now, msg))
        assert job in self.outbox or job in self.dead or job in self.deleted

    def quiesce(self, reply: Reply = Reply.NORMAL, limit: int = 200) -> None:
        """Exchange frames until neither side has anything in flight."""
        for _ in range(limit):
            if self.server.inbox:
                self.server.read(reply)
            elif self.server.outbox:
                self.deliver_to_runner()
            else:
                return
        raise AssertionError("link never went quiet")


# -- scripted two-peer scenarios -------------------------------------------------------------------


def test_two_peers_serve_two_jobs_then_drain() -> None:
    link = Link(ChannelConfig(heartbeat_interval=0.5))
    link.start()
    link.connect()
    for _ in range(2):
        link.quiesce()
        assert link.server.state is SState.POLLING
        link.server.offer_job(link.new_job())
        link.quiesce()
        link.feed(ImageReady(link.now, link.current_job()))
        assert link.benchmark_started
        for _ in range(3):
            link.now = link.timers[TimerName.HEARTBEAT]
            link.feed(TimerFired(link.now, TimerName.HEARTBEAT))
        link.finish_job("completed")
        link.quiesce()
    assert link.outbox == {}
    assert link.deleted == link.server.claimed
    link.feed(Shutdown(link.now, 1))
    link.quiesce()
    link.server.no_job()
    link.quiesce()
    assert link.exited


def test_two_peers_discarded_result_and_a_restart_still_deliver() -> None:
    link = Link(ChannelConfig(ack_timeout=5.0))
    link.start()
    link.connect()
    link.quiesce()
    link.server.offer_job(link.new_job())
    link.quiesce()
    link.feed(ImageReady(link.now, link.current_job()))
    link.finish_job("completed")
    link.quiesce(Reply.DISCARD)  # the server swallows the result
    (job,) = link.outbox
    # the process dies before the ack timeout; the next start delivers from the outbox
    link.ch = Channel(link.config)
    link.drop()
    link.start()
    link.connect()
    link.quiesce()
    assert link.deleted == [job]
    assert link.server.state is SState.POLLING
    assert [type(m).__name__ for m in link.sent].count("Completed") == 2


# -- the random walk -------------------------------------------------------------------------------


RARE = st.integers(0, 3)  # disruptive rules act only when this draws 0, so runs get somewhere


class ChannelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.link = Link(
            ChannelConfig(heartbeat_interval=1.0, ack_timeout=10.0, max_attempts=4, ping_interval=5.0)
        )
        self.link.start()
        self.link.connect()

    @property
    def alive(self) -> bool:
        return not self.link.exited

    @precondition(lambda self: self.alive and self.link.wants_connect)
    @rule(ok=st.booleans())
    def connect(self, ok: bool) -> None:
        if ok:
            self.link.connect()
        else:
            self.link.wants_connect = False
            self.link.feed(ConnectFailed(self.link.now, "refused"))

    @precondition(lambda self: self.alive and self.link.open)
    @rule(code=st.sampled_from([None, 1000, 1001]), rare=RARE)
    def drop(self, code: int | None, rare: int) -> None:
        if rare:
            return
        self.link.drop()
        reason = {None: "", 1000: '"heartbeat_timeout"', 1001: "server shutting down"}[code]
        self.link.feed(ConnectionClosed(self.link.now, code, reason))

    @precondition(lambda self: self.alive and self.link.open and bool(self.link.server.inbox))
    @rule(reply=st.sampled_from(Reply))
    def server_reads(self, reply: Reply) -> None:
        self.link.server.read(reply)

    @precondition(lambda self: self.alive and self.link.open and bool(self.link.server.outbox))
    @rule()
    def runner_reads(self) -> None:
        self.link.deliver_to_runner()

    @precondition(
        lambda self: self.alive and self.link.open and self.link.server.state is SState.POLLING
    )
    @rule(job=st.booleans())
    def server_answers_poll(self, job: bool) -> None:
        if job:
            self.link.server.offer_job(self.link.new_job())
        else:
            self.link.server.no_job()

    @precondition(lambda self: self.alive and self.link.open)
    @rule(kind=st.sampled_from(["garbage", "update", "rogue_job"]))
    def server_misbehaves(self, kind: str) -> None:
        if kind == "garbage":
            self.link.feed(BadFrame(self.link.now, "not JSON", "\x00{"))
        elif kind == "update":
            msg = Update(version="9.9.9", url="https://example.com/r", checksum="b" * 64)
            self.link.server.outbox.append((msg, Tag("none")))
        elif self.link.server.state is SState.EXECUTING:
            # a second `job` while one executes: the channel is certainly not polling then
            self.link.server.outbox.append((self.link.new_job(), Tag("none")))

    @precondition(lambda self: self.alive and bool(self.link.timers))
    @rule(data=st.data())
    def timer_fires(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.link.timers)))
        deadline = self.link.timers.pop(name)
        self.link.now = max(self.link.now, deadline)
        self.link.feed(TimerFired(self.link.now, name))

    @precondition(lambda self: self.alive)
    @rule(dt=st.floats(min_value=0.0, max_value=3.0))
    def time_passes(self, dt: float) -> None:
        self.link.now += dt

    @precondition(lambda self: self.alive and self.link.open)
    @rule()
    def pong(self) -> None:
        self.link.feed(PongReceived(self.link.now))

    @precondition(
        lambda self: self.alive and self.link.driver_job is not None and not self.link.image_ready
    )
    @rule()
    def image_ready(self) -> None:
        self.link.image_ready = True
        self.link.feed(ImageReady(self.link.now, self.link.current_job()))

    @precondition(lambda self: self.alive and self.link.driver_job is not None)
    @rule(outcome=st.sampled_from(["completed", "failed", "canceled"]))
    def job_finishes(self, outcome: str) -> None:
        self.link.finish_job(outcome)

    @precondition(lambda self: self.alive)
    @rule(level=st.sampled_from([1, 2]), rare=st.integers(0, 9))
    def signal(self, level: int, rare: int) -> None:
        if rare:
            return
        self.link.feed(Shutdown(self.link.now, level))

    @precondition(
        lambda self: self.alive and self.link.open and self.link.server.state is SState.POLLING
    )
    @rule()
    def serve_a_job(self) -> None:
        self.link.quiesce()
        self.link.server.offer_job(self.link.new_job())
        self.link.quiesce()
        if self.link.driver_job is not None:
            self.image_ready()

    @precondition(lambda self: self.alive and bool(self.link.server.inbox or self.link.server.outbox))
    @rule(reply=st.sampled_from(Reply))
    def exchange_until_quiet(self, reply: Reply) -> None:
        self.link.quiesce(reply)

    @precondition(lambda self: self.alive)
    @rule(rare=RARE)
    def process_restarts(self, rare: int) -> None:
        if rare:
            return
        # a crash: memory is gone, the running job dies with the process, the outbox survives
        self.link.ch = Channel(self.link.config)
        self.link.drop()
        self.link.driver_job = None
        self.link.wants_connect = False
        self.link.timers.clear()
        self.link.start()

    @precondition(lambda self: not self.alive)
    @rule()
    def events_after_exit_do_nothing(self) -> None:
        for event in (ConnectionOpened(self.link.now), Shutdown(self.link.now, 2)):
            assert all(isinstance(e, Log) for e in self.link.ch.step(event))

    @invariant()
    def results_stay_until_their_own_ack(self) -> None:
        for job in self.link.finished:
            delivered = job in self.link.deleted or job in self.link.dead
            assert delivered or job in self.link.outbox, f"result of {job} lost"

    @invariant()
    def channel_holds_at_most_one_job(self) -> None:
        job = self.link.ch.job
        assert job is None or job.uuid == self.link.driver_job


ChannelMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestChannelMachine = ChannelMachine.TestCase
