"""The sans-IO channel, one (state, event) pair at a time: Bencher's runner scenarios (PROTOCOL.md §9)
and the weaknesses of Bencher's own runner (§7) that this agent must get right."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar
from uuid import UUID

import attrs
import pytest

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
    LogLevel,
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
    Architecture,
    Cancel,
    Canceled,
    ClaimedJob,
    Completed,
    Failed,
    Heartbeat,
    IterationOutput,
    NoJob,
    OperatingSystem,
    Ready,
    RunnerMessage,
    RunnerMetadata,
    Running,
    ServerMessage,
    TerminalMessage,
    Update,
    decode_server,
    encode,
)
from tests.conftest import fixtures_dir

_E = TypeVar("_E")


def _base_job() -> ClaimedJob:
    msg = decode_server((fixtures_dir() / "job_minimal.json").read_text())
    assert isinstance(msg, ClaimedJob)
    return msg


BASE_JOB = _base_job()


def make_job(n: int) -> ClaimedJob:
    return attrs.evolve(BASE_JOB, uuid=UUID(int=0xB0B0_0000_0000_4000_8000_0000_0000_0000 + n))


JOB1, JOB2 = make_job(1), make_job(2)
RESULT = (IterationOutput(exit_code=0, stdout='{"bench":{"latency":{"value":1.5}}}'),)


def of(effects: Sequence[Effect], kind: type[_E]) -> list[_E]:
    return [e for e in effects if isinstance(e, kind)]


def sends(effects: Sequence[Effect]) -> list[RunnerMessage]:
    return [e.message for e in of(effects, Send)]


class Harness:
    """A driver stand-in: feeds events with a fake clock and keeps every effect."""

    def __init__(self, config: ChannelConfig | None = None) -> None:
        self.ch = Channel(config)
        self.now = 1000.0
        self.log: list[Effect] = []

    def step(self, event: Event) -> list[Effect]:
        effects = self.ch.step(event)
        self.log.extend(effects)
        assert not [
            e for e in effects if isinstance(e, Log) and "internal error" in e.text
        ], effects
        return effects

    def advance(self, dt: float) -> None:
        self.now += dt

    def start(self, pending: Sequence[Pending] = ()) -> list[Effect]:
        return self.step(Started(self.now, tuple(pending)))

    def open(self) -> list[Effect]:
        return self.step(ConnectionOpened(self.now))

    def frame(self, msg: ServerMessage) -> list[Effect]:
        return self.step(FrameReceived(self.now, msg))

    def close(self, code: int | None = None, reason: str = "") -> list[Effect]:
        return self.step(ConnectionClosed(self.now, code, reason))

    def fire(self, name: TimerName) -> list[Effect]:
        deadline = self.ch.timers[name]
        self.now = max(self.now, deadline)
        return self.step(TimerFired(self.now, name))

    def finish(self, msg: TerminalMessage) -> list[Effect]:
        return self.step(JobFinished(self.now, msg))

    def connected_polling(self) -> None:
        self.start()
        assert sends(self.open()) == [Ready(poll_timeout=55)]

    def running_job(self, job: ClaimedJob = JOB1) -> None:
        """Polling → job → running acked → image ready: the benchmark runs."""
        if not self.ch.polling:
            self.connected_polling()
        self.frame(job)
        self.frame(Ack(job.uuid))
        assert of(self.step(ImageReady(self.now, job.uuid)), StartBenchmark) == [
            StartBenchmark(job.uuid)
        ]


# -- connect, ready, poll ---------------------------------------------------------------------


def test_start_connects_and_open_sends_plain_ready_with_poll_timer() -> None:
    h = Harness()
    assert of(h.start(), Connect)
    effects = h.open()
    assert sends(effects) == [Ready(poll_timeout=55)]
    assert encode(Ready(poll_timeout=55)) == '{"event":"ready","poll_timeout":55}'  # no runner
    assert SetTimer(TimerName.POLL, h.now + 55 + 30) in effects
    assert h.ch.server_state == "polling"


def test_runner_metadata_only_when_configured() -> None:
    meta = RunnerMetadata(os=OperatingSystem.LINUX, arch=Architecture.X86_64, version="0.6.12")
    h = Harness(ChannelConfig(poll_timeout=30, runner=meta))
    h.start()
    assert sends(h.open()) == [Ready(poll_timeout=30, runner=meta)]


def test_no_job_asks_again_and_nothing_is_sent_while_polling() -> None:
    h = Harness()
    h.connected_polling()
    assert sends(h.frame(Ack(JOB1.uuid))) == []  # stray ack: logged, nothing sent
    assert sends(h.step(BadFrame(h.now, "bad json", "{"))) == []
    assert sends(h.step(PongReceived(h.now))) == []
    assert sends(h.frame(NoJob())) == [Ready(poll_timeout=55)]


def test_poll_timeout_plus_margin_reconnects() -> None:
    h = Harness(ChannelConfig(poll_timeout=10, poll_margin=30.0))
    h.start()
    h.open()
    assert h.ch.timers[TimerName.POLL] == pytest.approx(h.now + 40)
    effects = h.fire(TimerName.POLL)
    assert of(effects, CloseConnection)
    assert of(h.close(), Connect)
    assert sends(h.open()) == [Ready(poll_timeout=10)]


def test_connect_failure_asks_to_connect_again() -> None:
    h = Harness()
    h.start()
    effects = h.step(ConnectFailed(h.now, "connection refused"))
    assert of(effects, Connect) and not of(effects, Exit)


# -- job, running, heartbeats -----------------------------------------------------------------


def test_job_sends_running_at_once_and_starts_preparing_and_heartbeats() -> None:
    h = Harness(ChannelConfig(heartbeat_interval=0.25))
    h.connected_polling()
    effects = h.frame(JOB1)
    assert sends(effects) == [Running()]
    assert PrepareJob(JOB1) in effects
    assert effects.index(Send(Running())) < effects.index(PrepareJob(JOB1))
    assert SetTimer(TimerName.HEARTBEAT, h.now + 0.25) in effects
    assert CancelTimer(TimerName.POLL) in effects
    assert not of(effects, StartBenchmark)
    # the heartbeat window counts image pulling: heartbeats flow before the image is ready
    t0 = h.now
    for i in range(1, 4):
        assert sends(h.fire(TimerName.HEARTBEAT)) == [Heartbeat()]
        assert h.now == pytest.approx(t0 + 0.25 * i)


def test_benchmark_waits_for_ack_of_running_even_if_image_is_ready() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    assert not of(h.step(ImageReady(h.now, JOB1.uuid)), StartBenchmark)
    assert of(h.frame(Ack(JOB1.uuid)), StartBenchmark) == [StartBenchmark(JOB1.uuid)]


def test_benchmark_waits_for_image_after_ack() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    assert not of(h.frame(Ack(JOB1.uuid)), StartBenchmark)
    assert of(h.step(ImageReady(h.now, JOB1.uuid)), StartBenchmark) == [StartBenchmark(JOB1.uuid)]


def test_happy_path_two_jobs_on_one_connection() -> None:
    # PROTOCOL.md §9: ready → job → running → heartbeats → completed → ack → ready, twice
    h = Harness()
    for job in (JOB1, JOB2):
        h.running_job(job)
        h.fire(TimerName.HEARTBEAT)
        h.frame(Ack(job.uuid))
        effects = h.finish(Completed(job.uuid, RESULT))
        assert sends(effects) == [Completed(job.uuid, RESULT)]
        persist = of(effects, PersistMessage)
        assert persist == [PersistMessage(Completed(job.uuid, RESULT), 1)]
        assert effects.index(persist[0]) < effects.index(Send(Completed(job.uuid, RESULT)))
        assert TimerName.HEARTBEAT not in h.ch.timers
        effects = h.frame(Ack(job.uuid))
        assert of(effects, DeleteMessage) == [DeleteMessage(job.uuid)]
        assert sends(effects) == [Ready(poll_timeout=55)]
    assert not of(h.log, CloseConnection)


def test_no_heartbeat_after_the_job_finished() -> None:
    h = Harness()
    h.running_job()
    h.finish(Completed(JOB1.uuid, RESULT))
    assert TimerName.HEARTBEAT not in h.ch.timers
    assert sends(h.step(TimerFired(h.now + 5, TimerName.HEARTBEAT))) == []


# -- exact ack correlation (Bencher's runner gets this wrong) ----------------------------------


def test_stale_heartbeat_acks_never_count_as_the_terminal_ack() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    h.step(ImageReady(h.now, JOB1.uuid))
    for _ in range(3):
        h.fire(TimerName.HEARTBEAT)  # replies are all delayed
    h.frame(Ack(JOB1.uuid))  # the reply to running
    h.finish(Completed(JOB1.uuid, RESULT))
    for _ in range(3):  # the three heartbeat acks, same uuid as the terminal ack will have
        effects = h.frame(Ack(JOB1.uuid))
        assert not of(effects, DeleteMessage) and sends(effects) == []
    effects = h.frame(Ack(JOB1.uuid))
    assert of(effects, DeleteMessage) == [DeleteMessage(JOB1.uuid)]
    assert sends(effects) == [Ready(poll_timeout=55)]


def test_unexpected_ack_is_logged_and_ignored() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(NoJob())
    effects = h.frame(Ack(JOB2.uuid))
    assert [e for e in of(effects, Log) if "unexpected ack" in e.text]
    assert not of(effects, DeleteMessage)


def test_ack_naming_another_job_is_an_error_log() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    effects = h.frame(Ack(JOB2.uuid))
    assert [e for e in of(effects, Log) if e.level is LogLevel.ERROR and str(JOB2.uuid) in e.text]


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_in_reply_to_running_means_the_job_never_runs_and_is_reported_canceled() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    effects = h.frame(Cancel())
    assert of(effects, AbortJob) == [AbortJob(JOB1.uuid, "canceled by the server", True)]
    assert TimerName.HEARTBEAT not in h.ch.timers
    assert not of(h.step(ImageReady(h.now, JOB1.uuid)), StartBenchmark)
    assert not of(h.log, StartBenchmark)
    # the executor reports how preparation ended; the channel reports `canceled`
    effects = h.finish(Failed(JOB1.uuid, (), "aborted"))
    assert sends(effects) == [Canceled(job=JOB1.uuid)]
    effects = h.frame(Ack(JOB1.uuid))  # the server's IDLE path acks it
    assert of(effects, DeleteMessage) == [DeleteMessage(JOB1.uuid)]
    assert sends(effects) == [Ready(poll_timeout=55)]


def test_cancel_in_reply_to_heartbeat_drops_unanswerable_heartbeats() -> None:
    h = Harness()
    h.running_job()
    h.fire(TimerName.HEARTBEAT)
    h.fire(TimerName.HEARTBEAT)  # sent before we notice the cancel: the server won't answer
    effects = h.frame(Cancel())
    assert of(effects, AbortJob) == [AbortJob(JOB1.uuid, "canceled by the server", True)]
    assert h.ch.server_state == "idle"
    assert list(h.ch.fifo) == []
    assert sends(h.step(TimerFired(h.now + 3, TimerName.HEARTBEAT))) == []
    effects = h.finish(Failed(JOB1.uuid, RESULT, "terminated"))
    assert sends(effects) == [Canceled(job=JOB1.uuid)]
    effects = h.frame(Ack(JOB1.uuid))
    assert of(effects, DeleteMessage) == [DeleteMessage(JOB1.uuid)]


def test_cancel_after_the_terminal_message_was_sent_keeps_waiting_for_its_ack() -> None:
    h = Harness()
    h.running_job()
    h.fire(TimerName.HEARTBEAT)
    h.finish(Completed(JOB1.uuid, RESULT))
    effects = h.frame(Cancel())  # reply to the heartbeat; the job already ended
    assert not of(effects, AbortJob) and not of(effects, DeleteMessage)
    assert sends(effects) == []
    effects = h.frame(Ack(JOB1.uuid))  # IDLE path ack of `completed`
    assert of(effects, DeleteMessage) == [DeleteMessage(JOB1.uuid)]
    assert sends(effects) == [Ready(poll_timeout=55)]


def test_unexpected_cancel_is_logged() -> None:
    h = Harness()
    h.connected_polling()
    effects = h.frame(Cancel())
    assert [e for e in of(effects, Log) if "unexpected cancel" in e.text]
    assert sends(effects) == []


# -- delivery, retries, outbox -----------------------------------------------------------------


def test_terminal_message_silently_dropped_is_resent_until_its_own_ack() -> None:
    h = Harness(ChannelConfig(ack_timeout=10.0))
    h.running_job()
    h.finish(Completed(JOB1.uuid, RESULT))
    effects = h.fire(TimerName.ACK)  # the server never answered
    assert of(effects, CloseConnection)
    assert of(h.close(), Connect)
    effects = h.open()
    assert sends(effects) == [Completed(JOB1.uuid, RESULT)]  # first, before ready
    assert of(effects, PersistMessage) == [PersistMessage(Completed(JOB1.uuid, RESULT), 2)]
    effects = h.frame(Ack(JOB1.uuid))
    assert of(effects, DeleteMessage) == [DeleteMessage(JOB1.uuid)]
    assert sends(effects) == [Ready(poll_timeout=55)]


def test_result_from_before_a_restart_is_delivered_first() -> None:
    old = Failed(JOB2.uuid, RESULT, "Benchmark exited with non-zero exit code: 1")
    h = Harness()
    h.start([Pending(Canceled(job=JOB1.uuid), 3), Pending(old, 0)])
    effects = h.open()
    assert sends(effects) == [Canceled(job=JOB1.uuid)]  # oldest first, one at a time
    assert of(effects, PersistMessage) == [PersistMessage(Canceled(job=JOB1.uuid), 4)]
    effects = h.frame(Ack(JOB1.uuid))
    assert sends(effects) == [old]
    effects = h.frame(Ack(JOB2.uuid))
    assert sends(effects) == [Ready(poll_timeout=55)]
    assert of(h.log, DeleteMessage) == [DeleteMessage(JOB1.uuid), DeleteMessage(JOB2.uuid)]


def test_exhausted_message_goes_to_dead_letter_never_dropped_silently() -> None:
    h = Harness(ChannelConfig(max_attempts=3))
    h.start([Pending(Completed(JOB1.uuid, RESULT), 0)])
    for attempt in range(1, 4):
        effects = h.open()
        assert sends(effects) == [Completed(JOB1.uuid, RESULT)]
        assert of(effects, PersistMessage)[0].attempts == attempt
        h.close()  # e.g. the server drops the connection on this message
    effects = h.open()
    assert of(effects, DeadLetter) == [
        DeadLetter(Completed(JOB1.uuid, RESULT), 3, "not acknowledged after 3 attempts")
    ]
    assert [e for e in of(effects, Log) if e.level is LogLevel.ERROR and "dead-letter" in e.text]
    assert sends(effects) == [Ready(poll_timeout=55)]


def test_finished_while_disconnected_is_persisted_at_once_and_sent_on_connect() -> None:
    h = Harness()
    h.running_job()
    h.close()
    effects = h.finish(Completed(JOB1.uuid, RESULT))
    assert of(effects, PersistMessage) == [PersistMessage(Completed(JOB1.uuid, RESULT), 0)]
    assert sends(effects) == []
    assert sends(h.open()) == [Completed(JOB1.uuid, RESULT)]


def test_unknown_result_is_queued_not_lost() -> None:
    h = Harness()
    h.connected_polling()
    effects = h.finish(Canceled(job=JOB2.uuid))
    assert of(effects, PersistMessage) == [PersistMessage(Canceled(job=JOB2.uuid), 0)]
    assert JOB2.uuid in h.ch.pending


# -- reconnects --------------------------------------------------------------------------------


def test_reconnect_mid_job_is_detached_pings_then_delivers_then_ready() -> None:
    h = Harness(ChannelConfig(ping_interval=20.0))
    h.running_job()
    effects = h.close()  # TCP drop
    assert of(effects, Connect) and not of(effects, AbortJob)
    effects = h.open()
    assert sends(effects) == []  # no ready, no running/heartbeat: the server is IDLE
    assert TimerName.HEARTBEAT not in h.ch.timers
    assert SetTimer(TimerName.PING, h.now + 20.0) in effects
    assert of(h.fire(TimerName.PING), SendPing)
    h.step(PongReceived(h.now))
    assert of(h.fire(TimerName.PING), SendPing)
    effects = h.finish(Completed(JOB1.uuid, RESULT))
    assert sends(effects) == [Completed(JOB1.uuid, RESULT)]
    assert CancelTimer(TimerName.PING) in effects
    effects = h.frame(Ack(JOB1.uuid))  # echoed uuid from the IDLE path
    assert of(effects, DeleteMessage) == [DeleteMessage(JOB1.uuid)]
    assert sends(effects) == [Ready(poll_timeout=55)]


def test_missing_pong_closes_the_connection() -> None:
    h = Harness(ChannelConfig(ping_interval=20.0, ack_timeout=10.0))
    h.running_job()
    h.close()
    h.open()
    h.fire(TimerName.PING)
    assert of(h.fire(TimerName.PING), CloseConnection)


def test_reconnect_before_the_reply_to_running_fails_the_job_without_running_it() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    h.step(ImageReady(h.now, JOB1.uuid))
    effects = h.close()
    (abort,) = of(effects, AbortJob)
    assert abort.job == JOB1.uuid and not abort.canceled_by_server
    h.open()
    effects = h.finish(Completed(JOB1.uuid, ()))  # whatever the executor says, it never ran
    (sent,) = sends(effects)
    assert isinstance(sent, Failed) and sent.job == JOB1.uuid and sent.results == ()
    assert "no reply to running" in sent.error
    assert not of(h.log, StartBenchmark)


@pytest.mark.parametrize(
    ("code", "reason", "shown"),
    [
        (1000, '"heartbeat_timeout"', "heartbeat_timeout"),
        (1000, '"job_timeout_exceeded"', "job_timeout_exceeded"),
        (1001, "server shutting down", "server shutting down"),
    ],
)
def test_close_frames_reconnect_and_the_job_keeps_running(code: int, reason: str, shown: str) -> None:
    h = Harness()
    h.running_job()
    effects = h.close(code, reason)
    assert of(effects, Connect) and not of(effects, AbortJob)
    assert [e for e in of(effects, Log) if str(code) in e.text and shown in e.text]
    assert h.ch.job is not None and h.ch.job.started


def test_missing_reply_to_heartbeat_closes_the_connection() -> None:
    h = Harness(ChannelConfig(ack_timeout=10.0, heartbeat_interval=1.0))
    h.running_job()
    for _ in range(9):
        h.fire(TimerName.HEARTBEAT)
    assert TimerName.ACK in h.ch.timers
    effects = h.fire(TimerName.ACK)
    assert of(effects, CloseConnection)
    assert h.ch.job is not None  # the job survives


# -- update and garbage --------------------------------------------------------------------------


def test_update_is_logged_and_ignored_then_a_drop_reconnects_normally() -> None:
    h = Harness()
    h.connected_polling()
    effects = h.frame(
        Update(version="0.6.12", url="https://example.com/runner", checksum="a" * 64)
    )
    assert sends(effects) == [] and not of(effects, CloseConnection)
    assert [e for e in of(effects, Log) if "update" in e.text and e.level is LogLevel.WARNING]
    assert of(h.close(), Connect)
    assert sends(h.open()) == [Ready(poll_timeout=55)]


def test_garbage_frames_are_survived_in_every_state() -> None:
    h = Harness()
    h.start([Pending(Canceled(job=JOB2.uuid), 0)])
    h.open()  # idle, delivering
    bad = BadFrame(h.now, "unknown event 'surprise'", '{"event":"surprise"}')
    assert sends(h.step(bad)) == []
    assert sends(h.frame(Ack(JOB2.uuid))) == [Ready(poll_timeout=55)]
    assert sends(h.step(bad)) == []  # polling
    h.running_job()
    effects = h.step(bad)  # executing
    assert not of(effects, AbortJob) and sends(effects) == []
    assert sends(h.fire(TimerName.HEARTBEAT)) == [Heartbeat()]
    h.close()
    h.open()
    assert not of(h.step(bad), AbortJob)  # detached
    assert all(not isinstance(e, AbortJob) for e in h.log)


def test_job_while_not_polling_is_refused_without_touching_the_current_job() -> None:
    h = Harness()
    h.running_job()
    effects = h.frame(JOB2)
    assert not of(effects, PrepareJob) and sends(effects) == []
    assert h.ch.job is not None and h.ch.job.uuid == JOB1.uuid


# -- shutdown ----------------------------------------------------------------------------------


def test_drain_while_polling_waits_for_the_answer_then_exits() -> None:
    h = Harness()
    h.connected_polling()
    effects = h.step(Shutdown(h.now, 1))
    assert not of(effects, Exit)
    # the operator is told why the stop waits and how to stop at once
    waiting = [e for e in of(effects, Log) if "outstanding poll" in e.text]
    assert waiting and "up to 85 s" in waiting[0].text and "again" in waiting[0].text
    effects = h.frame(NoJob())
    assert sends(effects) == []
    assert of(effects, CloseConnection)
    assert of(effects, Exit)


def test_drain_while_polling_still_runs_a_job_that_arrives() -> None:
    h = Harness()
    h.connected_polling()
    h.step(Shutdown(h.now, 1))
    assert sends(h.frame(JOB1)) == [Running()]


def test_drain_finishes_the_job_delivers_and_exits_without_ready() -> None:
    h = Harness()
    h.running_job()
    effects = h.step(Shutdown(h.now, 1))
    assert not of(effects, AbortJob) and not of(effects, Exit)
    h.finish(Completed(JOB1.uuid, RESULT))
    effects = h.frame(Ack(JOB1.uuid))
    assert of(effects, DeleteMessage)
    assert of(effects, Exit)
    assert Ready(poll_timeout=55) not in sends(effects)


def test_second_signal_aborts_and_reports_failed_with_partial_results() -> None:
    h = Harness()
    h.running_job()
    h.step(Shutdown(h.now, 1))
    effects = h.step(Shutdown(h.now, 2))
    assert of(effects, AbortJob) == [AbortJob(JOB1.uuid, "runner shutting down", False)]
    partial = Failed(JOB1.uuid, RESULT, "runner shutting down")
    assert sends(h.finish(partial)) == [partial]
    assert of(h.frame(Ack(JOB1.uuid)), Exit)


def test_second_signal_before_start_reports_failed_without_running() -> None:
    h = Harness()
    h.connected_polling()
    h.frame(JOB1)
    h.step(Shutdown(h.now, 2))
    assert not of(h.frame(Ack(JOB1.uuid)), StartBenchmark)
    (sent,) = sends(h.finish(Completed(JOB1.uuid, ())))
    assert sent == Failed(JOB1.uuid, (), "runner shutting down")


def test_abort_while_polling_closes_and_exits() -> None:
    h = Harness()
    h.connected_polling()
    effects = h.step(Shutdown(h.now, 2))
    assert of(effects, CloseConnection)
    assert of(effects, Exit)


def test_shutdown_while_disconnected_exits_or_delivers_first() -> None:
    h = Harness()
    h.start()
    assert of(h.step(Shutdown(h.now, 1)), Exit)

    h = Harness()
    h.start([Pending(Canceled(job=JOB1.uuid), 0)])
    assert not of(h.step(Shutdown(h.now, 1)), Exit)
    assert sends(h.open()) == [Canceled(job=JOB1.uuid)]
    assert of(h.frame(Ack(JOB1.uuid)), Exit)


def test_shutdown_with_a_lost_connection_reconnects_to_deliver() -> None:
    h = Harness()
    h.running_job()
    h.step(Shutdown(h.now, 1))
    h.finish(Completed(JOB1.uuid, RESULT))
    effects = h.close()
    assert of(effects, Connect) and not of(effects, Exit)
    assert sends(h.open()) == [Completed(JOB1.uuid, RESULT)]
    assert of(h.frame(Ack(JOB1.uuid)), Exit)


def test_events_after_exit_are_ignored() -> None:
    h = Harness()
    h.start()
    h.step(Shutdown(h.now, 1))
    effects = h.open()
    assert all(isinstance(e, Log) for e in effects)


# -- never raises --------------------------------------------------------------------------------


def test_nonsense_is_logged_never_raised() -> None:
    h = Harness()
    assert of(h.step(Shutdown(h.now, 7)), Log)
    assert of(h.step(TimerFired(h.now, TimerName.ACK)), Log)  # never armed
    assert of(h.frame(NoJob()), Log)  # while disconnected
    assert of(h.step(ImageReady(h.now, JOB1.uuid)), Log)
    assert of(h.close(), Log)
    h.start()
    h.open()
    assert of(h.step(TimerFired(h.now - 100, TimerName.POLL)), Log)  # early: stale


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="poll_timeout"):
        ChannelConfig(poll_timeout=0)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        ChannelConfig(heartbeat_interval=0)
