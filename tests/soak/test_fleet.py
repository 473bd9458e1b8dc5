"""Fleet reconnect storm: 50 agents (in-process ``Agent`` tasks, each its own runner and key, real
sockets on 127.0.0.1) serve one dev server that enforces Bencher Cloud's per-runner connection
limits; the server restarts on the same port; every agent must be serving (polling) again, the
reconnects must spread out (full jitter: no 250 ms bucket holds more than 35% of them, where a
synchronized herd would put ~100% in one), and no runner may hit the rate limit or exceed 16
attempts in a minute. Prints the histogram. Runs in the default suite (~10 s); ``FLEET_AGENTS``
and ``FLEET_SEED`` scale and vary it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

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

AGENTS = int(os.environ.get("FLEET_AGENTS", "50"))
SEED = int(os.environ.get("FLEET_SEED", "20261127"))
BUCKET = 0.25
MAX_BUCKET_SHARE = 0.35
MINUTE_LIMIT = 16


def make_fleet_agent(tmp: Path, port: int, slug: str, key: str, seed: int) -> Agent:
    config = load_config(
        {
            "host": f"http://127.0.0.1:{port}", "runner": slug, "key": key,
            "state_dir": tmp / slug / "state", "cache_dir": tmp / "cache",
            "poll_timeout": 5, "heartbeat_interval": 0.5,
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


async def test_fleet_reconnect_storm(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    keys = {f"fleet-{i}": generate_key() for i in range(AGENTS)}
    runners = [RunnerIdentity.with_key(runner_uuid_for(s), s, k) for s, k in keys.items()]
    settings = DevServerSettings(rate_limits=RateLimits())
    attempts: list[ConnectionAttempt] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = DevServer(runners=runners, settings=settings)
            port = await nursery.start(first.serve)
            for slug, key in keys.items():
                agent = make_fleet_agent(tmp_path, port, slug, key, rng.randrange(2**32))
                nursery.start_soon(agent.run)
            await first.wait_until(lambda: len(polling_runners(first)) == AGENTS)
            restart_at = trio.current_time()
            await first.aclose()  # Close 1001 to all 50 at once
            attempts += first.attempts
            second = DevServer(runners=runners, settings=settings, port=port)
            await nursery.start(second.serve)
            await second.wait_until(lambda: len(polling_runners(second)) == AGENTS)
            attempts += second.attempts
            nursery.cancel_scope.cancel()

    first_back: dict[str, float] = {}
    for attempt in second.attempts:
        if attempt.outcome == "accepted":
            first_back.setdefault(attempt.ref, attempt.at - restart_at)
    delays = sorted(first_back.values())
    print("\n" + histogram(delays))
    per_runner = Counter(a.ref for a in attempts)
    print(f"attempts per runner over the test: max {max(per_runner.values())}, "
          f"total {sum(per_runner.values())}; p50 reconnect {delays[len(delays) // 2]:.3f} s, "
          f"max {delays[-1]:.3f} s")

    assert len(first_back) == AGENTS, "every agent is serving the restarted server"
    assert not [a for a in attempts if a.outcome != "accepted"], "no attempt was rate-limited"
    share = max(Counter(int(d / BUCKET) for d in delays).values()) / AGENTS
    assert share <= MAX_BUCKET_SHARE, f"{share:.0%} of the fleet reconnected in one {BUCKET} s bucket"
    test_span = max(a.at for a in attempts) - min(a.at for a in attempts)
    assert test_span < 60 and max(per_runner.values()) <= MINUTE_LIMIT
