"""Fleet reconnect storm: 50 agents (in-process ``Agent`` tasks, each its own runner and key, real
sockets on 127.0.0.1) serve one dev server that enforces Bencher Cloud's per-runner connection
limits; the server restarts on the same port; every agent must be serving (polling) again, the
reconnects must spread out (full jitter: no 250 ms bucket holds more than 35% of them, where a
synchronized herd would put ~100% in one), and no runner may hit the rate limit or exceed 16
attempts in any minute (256 in any hour). Prints the histogram. The restart is either graceful
(Close 1001 to everyone) or a crash (sockets just die); both run in the default suite (~10 s
each). ``test_fleet_repeated_restarts`` (marker ``soak``) crashes the server four times in a row.
``FLEET_AGENTS`` and ``FLEET_SEED`` scale and vary it.
"""

from __future__ import annotations

import functools
import os
import random
from collections import Counter
from pathlib import Path

import pytest
import trio

from runner_agent.agent import Agent
from runner_agent.backoff import Backoff, BackoffPolicy
from runner_agent.config import load_config
from runner_agent.devserver import (
    ConnState,
    DevServer,
    DevServerSettings,
    RateLimits,
    RunnerIdentity,
    generate_key,
)
from runner_agent.devserver.server import ConnectionAttempt, runner_uuid_for
from runner_agent.execute import ExecOptions
from runner_agent.jobrunner import OciJobRunner
from runner_agent.oci.cache import ImageCache
from runner_agent.outbox import Outbox
from tests.soak.harness import serve_in
from tests.support.rate import max_in_window

AGENTS = int(os.environ.get("FLEET_AGENTS", "50"))
SEED = int(os.environ.get("FLEET_SEED", "20261127"))
BUCKET = 0.25
MAX_BUCKET_SHARE = 0.35
MINUTE_LIMIT = 16
HOUR_LIMIT = 256


def make_fleet_agent(tmp: Path, port: int, slug: str, key: str, seed: int) -> Agent:
    config = load_config(
        {
            "host": f"http://127.0.0.1:{port}", "runner": slug, "key": key,
            "state_dir": tmp / slug / "state", "cache_dir": tmp / "cache",
            "poll_timeout": 1, "heartbeat_interval": 0.5,
        },
        {}, None, default_config_file=None,
    )
    options = ExecOptions(kill_grace=config.kill_grace, max_message_size=config.max_message_size,
                          work_dir=tmp / slug / "work")
    runner = OciJobRunner(ImageCache(config.cache_dir), options)
    backoff = Backoff(BackoffPolicy(), random.Random(seed))
    return Agent(config, runner, Outbox(config.state_dir), backoff=backoff, handle_signals=False)


def histogram(delays: list[float]) -> str:
    buckets = Counter(int(d / BUCKET) for d in delays)
    lines = [f"reconnect time after the restart ({len(delays)} agents, {BUCKET * 1000:.0f} ms buckets)"]
    for index in range(max(buckets, default=0) + 1):
        count = buckets.get(index, 0)
        lines.append(f"{index * BUCKET:5.2f}-{(index + 1) * BUCKET:5.2f} s {count:3d} {'#' * count}")
    return "\n".join(lines)


def polling_runners(server: DevServer) -> set[str]:
    return {c.runner.slug for c in server.connections() if c.state is ConnState.POLLING}


def everyone_polling(server: DevServer) -> bool:
    return len(polling_runners(server)) == AGENTS


def everyone_heard(server: DevServer) -> bool:
    """Every runner sent a second ``ready`` here, so each has had a ``no_job`` frame on its
    connection: the next drop cannot look like a silent rejection of its key."""
    readies = Counter(f.runner for f in server.frames_received("ready"))
    return len(readies) == AGENTS and min(readies.values()) >= 2


async def run_fleet(tmp: Path, restarts: int, crash: bool) -> tuple[list[list[float]], list[ConnectionAttempt]]:
    """Start the fleet, restart the server ``restarts`` times (each once every agent is polling
    again); returns, per restart, each agent's time to its first accepted connection, and every
    connection attempt the servers saw."""
    rng = random.Random(SEED)
    keys = {f"fleet-{i}": generate_key() for i in range(AGENTS)}
    runners = [RunnerIdentity.with_key(runner_uuid_for(s), s, k) for s, k in keys.items()]
    settings = DevServerSettings(rate_limits=RateLimits())
    attempts: list[ConnectionAttempt] = []
    rounds: list[list[float]] = []
    port = 0
    async with trio.open_nursery() as nursery:

        async def start_server() -> tuple[DevServer, trio.CancelScope, trio.Event]:
            server = DevServer(runners=runners, settings=settings, port=port)
            return (server, *await serve_in(nursery, server))

        server, scope, done = await start_server()
        port = server.port
        for slug, key in keys.items():
            agent = make_fleet_agent(tmp, port, slug, key, rng.randrange(2**32))
            nursery.start_soon(agent.run)
        for _ in range(restarts):
            await server.wait_until(functools.partial(everyone_heard, server))
            restart_at = trio.current_time()
            if crash:
                scope.cancel()  # every socket just dies, no Close frame
                await done.wait()
            else:
                await server.aclose()  # Close 1001 to the whole fleet at once
            attempts += server.attempts
            server, scope, done = await start_server()
            await server.wait_until(functools.partial(everyone_polling, server))
            first_back: dict[str, float] = {}
            for attempt in server.attempts:
                if attempt.outcome == "accepted":
                    first_back.setdefault(attempt.ref, attempt.at - restart_at)
            assert len(first_back) == AGENTS, "every agent is serving the restarted server"
            rounds.append(sorted(first_back.values()))
        attempts += server.attempts
        nursery.cancel_scope.cancel()
    return rounds, attempts


def check_fleet(rounds: list[list[float]], attempts: list[ConnectionAttempt]) -> None:
    for index, delays in enumerate(rounds, 1):
        print(f"\nrestart {index}: " + histogram(delays))
        print(f"restart {index}: p50 {delays[len(delays) // 2]:.2f} s, max {delays[-1]:.2f} s")
        share = max(Counter(int(d / BUCKET) for d in delays).values()) / AGENTS
        assert share <= MAX_BUCKET_SHARE, f"{share:.0%} of the fleet reconnected in one {BUCKET} s bucket"
    per_runner: dict[str, list[float]] = {}
    for attempt in attempts:
        per_runner.setdefault(attempt.ref, []).append(attempt.at)
    worst_minute = max(max_in_window(t, 60.0) for t in per_runner.values())
    worst_hour = max(max_in_window(t, 3600.0) for t in per_runner.values())
    print(f"attempts per runner: most in any minute {worst_minute}, in any hour {worst_hour}; "
          f"total {len(attempts)}")
    assert not [a for a in attempts if a.outcome != "accepted"], "no attempt was rate-limited"
    assert worst_minute <= MINUTE_LIMIT and worst_hour <= HOUR_LIMIT


@pytest.mark.parametrize("crash", [False, True], ids=["graceful-1001", "crash"])
async def test_fleet_reconnect_storm(tmp_path: Path, crash: bool) -> None:
    with trio.fail_after(60):
        rounds, attempts = await run_fleet(tmp_path, restarts=1, crash=crash)
    check_fleet(rounds, attempts)


@pytest.mark.soak
async def test_fleet_repeated_restarts(tmp_path: Path) -> None:
    """Four crashes in a row, each once every agent has heard from the new server: the backoff
    grows, the spread widens, and no runner goes over Bencher Cloud's budget. (Crashing again
    before the agents have received a frame makes every agent count the drops as silent key
    rejections after three rounds and back off 5-10 minutes: see the chaos report.)"""
    with trio.fail_after(240):
        rounds, attempts = await run_fleet(tmp_path, restarts=4, crash=True)
    check_fleet(rounds, attempts)
