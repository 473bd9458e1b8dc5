"""The job store's status lifecycle (PROTOCOL.md §6, §7 table), background checks and persistence,
plus the OCI token and the auth helpers."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID, uuid4

import pytest

from runner_agent.devserver.auth import (
    AuthError,
    RateLimiter,
    RateLimits,
    authenticate,
    bearer_token,
    generate_key,
    runner_ref_from_path,
)
from runner_agent.devserver.store import InvalidTransitionError, JobStatus, JobStore
from runner_agent.devserver.token import make_oci_token, verify_oci_token
from runner_agent.protocol import is_valid_runner_key

from .conftest import KEY_A, KEY_B, PROJECT, RUNNER_A, RUNNER_B

RUNNER = RUNNER_A.uuid


class FakeWallClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def new_store(tmp_path: Path | None = None, **kwargs: object) -> tuple[JobStore, FakeWallClock]:
    clock = FakeWallClock()
    path = tmp_path / "jobs.json" if tmp_path else None
    return JobStore(wall_clock=clock, persist_path=path, **kwargs), clock  # type: ignore[arg-type]


def add(store: JobStore, timeout: int = 60) -> UUID:
    return store.add(uuid=uuid4(), config={"project": str(PROJECT)}, spec={}, timeout=timeout).uuid


def running_job(store: JobStore, timeout: int = 60) -> UUID:
    job = add(store, timeout)
    assert store.claim(RUNNER) is not None
    assert store.running(job) is False
    return job


def test_claim_is_oldest_first_and_once() -> None:
    store, clock = new_store()
    first = add(store)
    clock.now += 1
    second = add(store)
    claimed = store.claim(RUNNER)
    assert claimed is not None and claimed.uuid == first and claimed.status is JobStatus.CLAIMED
    claimed2 = store.claim(RUNNER)
    assert claimed2 is not None and claimed2.uuid == second
    assert store.claim(RUNNER) is None


@pytest.mark.parametrize(
    ("setup", "event", "expected"),
    [
        ("claimed", "completed", InvalidTransitionError),
        ("claimed", "failed", JobStatus.FAILED),
        ("claimed", "canceled", JobStatus.CANCELED),
        ("running", "completed", JobStatus.PROCESSED),
        ("running", "failed", JobStatus.FAILED),
        ("running", "canceled", JobStatus.CANCELED),
        ("processed", "completed", JobStatus.PROCESSED),
        ("processed", "failed", JobStatus.PROCESSED),
        ("processed", "canceled", InvalidTransitionError),
        ("failed", "completed", JobStatus.PROCESSED),
        ("failed", "failed", JobStatus.FAILED),
        ("failed", "canceled", InvalidTransitionError),
        ("canceled", "completed", JobStatus.CANCELED),
        ("canceled", "failed", JobStatus.CANCELED),
        ("canceled", "canceled", JobStatus.CANCELED),
    ],
)
def test_terminal_transition_table(setup: str, event: str, expected: object) -> None:
    store, _ = new_store()
    job = add(store)
    store.claim(RUNNER)
    if setup != "claimed":
        store.running(job)
    if setup == "processed":
        store.completed(job, [])
    elif setup == "failed":
        store.failed(job, [], "boom")
    elif setup == "canceled":
        store.canceled(job)

    def apply() -> None:
        if event == "completed":
            store.completed(job, [{"exit_code": 0}])
        elif event == "failed":
            store.failed(job, [], "again")
        else:
            store.canceled(job)

    if expected is InvalidTransitionError:
        before = store.get(job).status
        with pytest.raises(InvalidTransitionError):
            apply()
        assert store.get(job).status is before
    else:
        apply()
        assert store.get(job).status is expected


def test_processing_failure_sets_failed_and_a_retry_reprocesses() -> None:
    verdicts = iter(["adapter error", None])
    store, _ = new_store(process_results=lambda results: next(verdicts))
    job = running_job(store)
    store.completed(job, [{"exit_code": 0}])
    record = store.get(job)
    assert record.status is JobStatus.FAILED and record.processing_error == "adapter error"
    store.completed(job, [{"exit_code": 0}])
    assert store.get(job).status is JobStatus.PROCESSED


def test_heartbeat_past_hard_limit_cancels() -> None:
    store, clock = new_store()
    job = running_job(store, timeout=10)
    clock.now += 15
    assert store.heartbeat(job, grace=5) is False  # exactly timeout + grace: not exceeded
    clock.now += 0.5
    assert store.heartbeat(job, grace=5) is True
    assert store.get(job).status is JobStatus.CANCELED


def test_window_expiry_reasons() -> None:
    store, clock = new_store()
    job = running_job(store, timeout=10)
    assert store.window_expired(job, grace=5) == "heartbeat_timeout"
    assert store.get(job).status is JobStatus.FAILED
    late = running_job(store, timeout=10)
    clock.now += 16
    assert store.window_expired(late, grace=5) == "job_timeout_exceeded"
    assert store.get(late).status is JobStatus.CANCELED
    # already terminal: reason heartbeat_timeout, no change
    assert store.window_expired(late, grace=5) == "heartbeat_timeout"
    assert store.get(late).status is JobStatus.CANCELED


def test_background_check_reschedules_then_fails() -> None:
    store, clock = new_store()
    job = running_job(store, timeout=600)
    clock.now += 30
    store.heartbeat(job, grace=60)
    clock.now += 60
    assert store.background_check(job, heartbeat_timeout=90, grace=60) == pytest.approx(30)
    clock.now += 29.5
    assert store.background_check(job, heartbeat_timeout=90, grace=60) == 1.0  # minimum 1 s
    clock.now += 1
    assert store.background_check(job, heartbeat_timeout=90, grace=60) is None
    assert store.get(job).status is JobStatus.FAILED


def test_user_cancel_turns_the_next_reply_into_cancel() -> None:
    store, _ = new_store()
    job = running_job(store)
    store.user_cancel(job)
    assert store.get(job).user_canceled
    assert store.running(job) is True
    assert store.heartbeat(job, grace=60) is True


def test_persistence_round_trip_and_startup_sweep(tmp_path: Path) -> None:
    store, clock = new_store(tmp_path)
    stale = add(store)
    store.claim(RUNNER)
    clock.now += 100
    live = running_job(store)
    pending = add(store)
    reloaded = JobStore(wall_clock=clock, persist_path=tmp_path / "jobs.json")
    reloaded.load()
    assert [r.uuid for r in reloaded.all()] == [stale, live, pending]
    assert reloaded.get(live) == store.get(live)
    assert reloaded.startup_sweep(heartbeat_timeout=90) == [live]
    assert reloaded.get(stale).status is JobStatus.FAILED
    assert reloaded.get(pending).status is JobStatus.PENDING


def test_corrupt_persistence_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text('{"version": 7}')
    store, _ = new_store(tmp_path)
    with pytest.raises(ValueError, match="cannot load job store"):
        store.load()


def test_oci_token_layout_and_signature() -> None:
    token = make_oci_token(runner=RUNNER, project=PROJECT, issued_at=1_800_000_000)
    claims = verify_oci_token(token)
    assert claims == {
        "aud": "oci_runner",
        "exp": 1_800_000_600,
        "iat": 1_800_000_000,
        "iss": "http://localhost:6610/",
        "sub": str(RUNNER),
        "oci": {"repository": str(PROJECT), "actions": ["pull"]},
    }
    assert all(segment and "=" not in segment for segment in token.split("."))
    with pytest.raises(ValueError, match="signature"):
        verify_oci_token(token, secret=b"other")


def test_auth_helpers() -> None:
    assert runner_ref_from_path("/v0/runners/runner-a/channel?x=1") == "runner-a"
    assert runner_ref_from_path("/v0/runners/a/b/channel") is None
    assert is_valid_runner_key(generate_key())
    assert bearer_token([(b"authorization", b"bEaReR  " + KEY_A.encode() + b" ")]) == KEY_A
    with pytest.raises(AuthError, match="Authorization"):
        bearer_token([(b"Authorization", b"Basic abc")])
    runners = [RUNNER_A, RUNNER_B]
    assert authenticate(runners, str(RUNNER_B.uuid), [(b"Authorization", f"Bearer {KEY_B}".encode())]) == RUNNER_B
    with pytest.raises(AuthError, match="Invalid runner key"):
        authenticate(runners, "runner-b", [(b"Authorization", f"Bearer {KEY_A}".encode())])


def test_rate_limiter_sliding_windows() -> None:
    limiter = RateLimiter(RateLimits(minute=2, hour=3, day=4))
    limiter.check(RUNNER, 0)
    limiter.check(RUNNER, 1)
    with pytest.raises(AuthError, match="minute"):
        limiter.check(RUNNER, 2)
    limiter.check(RUNNER, 61)
    with pytest.raises(AuthError, match="hour"):
        limiter.check(RUNNER, 200)
    limiter.check(RUNNER_B.uuid, 200)  # per runner
    limiter.check(RUNNER, 3700)
    with pytest.raises(AuthError, match="day"):
        limiter.check(RUNNER, 7300)
    limiter.check(RUNNER, 86_400 + 2)
