"""Soak: ≥ 200 jobs of mixed kinds through the chaos proxy with random faults, two dev-server
restarts and two agent restarts; invariants checked at the end and a summary table printed.

How to run (marker ``soak``; the default run excludes it)::

    scripts/test -m soak -s tests/soak/test_soak.py            # CI-sized: 200 jobs, a few minutes
    SOAK_SEED=7 SOAK_JOBS=500 scripts/test -m soak -s tests/soak/test_soak.py

Environment: ``SOAK_SEED`` (default: random, printed; every random choice — job mix, fault kinds
and values — follows from it), ``SOAK_JOBS`` (default 200), ``SOAK_FAULTS`` (network faults
injected, default 12), ``SOAK_BUDGET`` (seconds before the run fails, default 900).

The pieces are all real: a ``runner-agent run`` subprocess (restarted with SIGTERM = drain, and
with SIGKILL mid-job), the dev server in this process with a persistence file (restarted on the
same port once gracefully with Close 1001 and once as a crash, both while a job runs), the chaos
TCP proxy between them, bwrap-sandboxed busybox jobs. Faults are spread over the run by progress
(fault *i* of *F* fires once i/(F+1) of the jobs have finished), so a seed gives the same plan on
a fast or a slow machine.

The agent's real reconnect policy applies (full-jitter backoff that resets only after a minute of
health, Bencher Cloud's connection budget), so the number of network faults per agent process is
kept moderate; each agent restart starts a fresh policy.

Invariants: every job ends in exactly one terminal state, claimed once, with at most one kind of
terminal message from the agent; every result holds its own job's marker; no job's benchmark
started twice (counted in the agent's own log across all its processes); no ``soakjob-`` process
is left on the machine; each agent process's RSS did not grow (last quarter vs second quarter of
its samples, ≤ 16 MiB); the outbox and dead-letter folders end empty; clean exits (0) on SIGTERM.
Jobs that should succeed must be ``processed``, with two allowed exceptions, both counted in the
summary: the job the SIGKILLed agent was running (no terminal message ever; the server fails it
by heartbeat timeout, or cancels it when it is already past its timeout + grace — at most one),
and jobs whose connection was cut between ``running`` and its ack (the agent must not start them, PROTOCOL.md §9 item 4, and reports them ``failed``).
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest
import trio

from runner_agent.devserver import DevServer, DevServerSettings, generate_key
from runner_agent.devserver.store import JobRecord, JobStatus
from tests.agent.conftest import job_config
from tests.chaos.agentproc import AgentProcess, agent_command, rss_kib
from tests.chaos.proxy import ChaosProxy, FaultKind, RandomFaults
from tests.soak.harness import (
    MARKER,
    TERMINAL,
    Kind,
    ServerHost,
    make_jobs,
    marker,
    memory_growth_kib,
    parse_ts,
    percentile,
    processes_with,
    table,
)

pytestmark = pytest.mark.soak

SEED = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(2**31))
JOBS = int(os.environ.get("SOAK_JOBS", "200"))
FAULTS = int(os.environ.get("SOAK_FAULTS", "12"))
BUDGET = float(os.environ.get("SOAK_BUDGET", "900"))
MAX_GROWTH_KIB = 16 * 1024
UNCONFIRMED = "connection lost before the server confirmed the job"
FAULT_WEIGHTS = {
    FaultKind.RESET: 3.0,
    FaultKind.FIN: 2.0,
    FaultKind.BLACKHOLE: 1.0,
    FaultKind.DELAY: 2.0,
    FaultKind.THROTTLE: 2.0,
}


def diagnose(problems: list[str], records: list[JobRecord], agents: list[AgentProcess]) -> str:
    """History, terminal messages and agent log lines of the first jobs named in ``problems``."""
    out = ["diagnostics:"]
    named = [r for r in records if any(str(r.uuid) in p for p in problems)][:5]
    for record in named:
        out.append(f"job {record.uuid}: {record.status.value} error={record.error!r}")
        out += [f"  history: {h.status.value} at {h.at:.3f} ({h.cause})" for h in record.history]
        out += [f"  terminal: {m.event} via {m.path} -> {m.outcome} at {m.at:.3f}"
                for m in record.terminal_messages]
        for index, agent in enumerate(agents):
            for rec in agent.records():
                if str(record.uuid) in str(rec.get("msg", "")):
                    out.append(f"  agent{index} {rec.get('ts')} {str(rec.get('msg'))[:160]}")
    return "\n".join(out)


def finished(server: DevServer) -> int:
    return sum(1 for r in server.store.all() if r.status in TERMINAL)


def some_job_running(server: DevServer) -> bool:
    records = server.store.all()
    return any(r.status is JobStatus.RUNNING for r in records) or all(
        r.status in TERMINAL for r in records
    )


async def test_soak(tmp_path: Path, soak_image: tuple[Path, str]) -> None:
    print(f"\nsoak: SOAK_SEED={SEED} SOAK_JOBS={JOBS} SOAK_FAULTS={FAULTS}")
    rng = random.Random(SEED)
    jobs = make_jobs(rng, JOBS)
    kinds = {j.uuid: j.kind for j in jobs}
    key = generate_key()
    host = ServerHost(tmp_path, DevServerSettings(heartbeat_timeout=5.0, grace=2.0), key)
    state, cache = tmp_path / "state", tmp_path / "cache"
    log_path = tmp_path / "agent.log"
    agents: list[AgentProcess] = []
    rss: list[list[int]] = []
    exits: dict[str, int] = {}
    plan = RandomFaults(seed=SEED, count=FAULTS, weights=FAULT_WEIGHTS, max_delay=0.3,
                        min_rate=65536.0, max_duration=3.0).plan()
    started_at = trio.current_time()

    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            server = await host.start(nursery)
            for job in jobs:
                server.submit_job(job_config(soak_image, job.script, timeout=job.timeout), uuid=job.uuid)
            proxy = ChaosProxy(host.port)
            await nursery.start(proxy.serve)

            async def start_agent() -> AgentProcess:
                agent = AgentProcess(
                    agent_command(proxy.url, host.runner.slug, state, cache),
                    {"BENCHER_RUNNER_KEY": key}, log_path,
                )
                agents.append(agent)
                rss.append([])
                await nursery.start(agent.run)
                return agent

            async def sample_rss() -> None:
                while True:
                    agent = agents[-1]
                    if agent.process is not None and not agent.exited.is_set():
                        value = rss_kib(agent.pid)
                        if value is not None:
                            rss[-1].append(value)
                    await trio.sleep(0.5)

            async def cancel_when_running(uuid: UUID) -> None:
                def ready(s: DevServer) -> bool:
                    return s.store.get(uuid).status in {JobStatus.RUNNING, *TERMINAL}

                await host.wait_until(ready)
                if host.current.job_status(uuid) is JobStatus.RUNNING:
                    host.current.cancel_job(uuid)

            async def at_progress(fraction: float) -> None:
                await host.wait_until(lambda s: finished(s) >= fraction * JOBS)

            async def network_faults() -> None:
                async with trio.open_nursery() as faults:
                    for i, fault in enumerate(plan):
                        await at_progress((i + 1) / (len(plan) + 1))
                        faults.start_soon(proxy.apply, fault)

            async def restarts() -> None:
                await at_progress(0.15)
                await host.wait_until(some_job_running)
                await host.restart(nursery, crash=False)
                await at_progress(0.30)
                agents[-1].send_signal(signal.SIGTERM)  # drain: finish the job, deliver, exit 0
                exits["sigterm"] = await agents[-1].wait()
                await start_agent()
                await at_progress(0.50)
                await host.wait_until(some_job_running)
                await host.restart(nursery, crash=True)
                await at_progress(0.65)
                await host.wait_until(some_job_running)
                agents[-1].send_signal(signal.SIGKILL)
                exits["sigkill"] = await agents[-1].wait()
                await start_agent()

            await start_agent()
            nursery.start_soon(sample_rss)
            for job in jobs:
                if job.kind is Kind.CANCELED:
                    nursery.start_soon(cancel_when_running, job.uuid)
            async with trio.open_nursery() as chaos:
                chaos.start_soon(network_faults)
                chaos.start_soon(restarts)
                await host.wait_until(lambda s: finished(s) == JOBS)
            proxy.heal()
            agents[-1].send_signal(signal.SIGTERM)
            exits["final"] = await agents[-1].wait()
            records = {r.uuid: r for r in host.records()}
            await host.stop()
            nursery.cancel_scope.cancel()

    elapsed = trio.current_time() - started_at
    lines = [line for agent in agents for line in agent.lines]
    records_list = [records[j.uuid] for j in jobs]

    # --- summary -------------------------------------------------------------------------------
    by_kind: dict[Kind, Counter[str]] = {k: Counter() for k in Kind}
    for record in records_list:
        by_kind[kinds[record.uuid]][record.status.value] += 1
    finished_at: dict[str, float] = {}
    for agent in agents:
        for rec in agent.records():
            msg = str(rec.get("msg", ""))
            if msg.startswith("job ") and " finished: " in msg:
                finished_at.setdefault(msg.split()[1].rstrip(":"), parse_ts(str(rec["ts"])))
    deliveries = []
    for record in records_list:
        acked = [m.at for m in record.terminal_messages if m.outcome == "acked"]
        if acked and str(record.uuid) in finished_at:
            deliveries.append(max(0.0, acked[0] - finished_at[str(record.uuid)]))
    redeliveries = sum(max(0, len(r.terminal_messages) - 1) for r in records_list)
    connects = sum(1 for line in lines if "connected to ws://" in line)
    faults = proxy.summary()
    rows: list[tuple[str, object]] = [
        ("seed", SEED),
        ("jobs", JOBS),
        *[(f"  {k.value}", dict(sorted(c.items()))) for k, c in by_kind.items()],
        ("duration (s)", round(elapsed, 1)),
        *[(f"fault: {k.value}", faults[k.value]) for k in FaultKind],
        ("fault: dev-server restart (graceful 1001)", host.graceful_restarts),
        ("fault: dev-server restart (crash)", host.crash_restarts),
        ("fault: agent restart (SIGTERM drain)", 1),
        ("fault: agent restart (SIGKILL)", 1),
        ("proxy connections / links cut / refused", f"{faults['connections']} / {faults['links_cut']} / {faults['upstream_refused']}"),
        ("agent connections (reconnects)", f"{connects} ({connects - len(agents)})"),
        ("terminal messages re-sent (redeliveries)", redeliveries),
        ("time to deliver p50 / max (s)", f"{percentile(deliveries, 0.5):.3f} / {max(deliveries, default=0):.3f}"),
        ("agent exits", exits),
        ("agent RSS KiB first→last per process", [(s[0], s[-1]) if s else None for s in rss]),
        ("agent RSS growth KiB per process", [memory_growth_kib(s) for s in rss]),
    ]

    # --- invariants ----------------------------------------------------------------------------
    problems: list[str] = []
    # the driver logs "job <uuid>: benchmark starting (N iteration(s))" once per execution
    starts = Counter(
        str(rec["msg"]).split()[1].rstrip(":")
        for agent in agents for rec in agent.records()
        if rec.get("logger") == "runner_agent.agent"
        and ": benchmark starting (" in str(rec.get("msg", ""))
    )
    lost_to_kill = 0
    unconfirmed = 0
    # jobs the agent aborted because the connection died before the server's reply to `running`
    # (the server may have failed them first, by heartbeat timeout, so its error can differ)
    unconfirmed_jobs = {
        str(rec["msg"]).split()[1].rstrip(":")
        for agent in agents for rec in agent.records()
        if f"aborting ({UNCONFIRMED}" in str(rec.get("msg", ""))
    }
    for record in records_list:
        uuid, kind = record.uuid, kinds[record.uuid]
        events = {m.event for m in record.terminal_messages}
        claims = sum(1 for h in record.history if h.status is JobStatus.CLAIMED)
        if record.status not in TERMINAL:
            problems.append(f"{uuid} ({kind.value}): not terminal: {record.status.value}")
        if len(events) > 1:
            problems.append(f"{uuid} ({kind.value}): contradictory terminal messages {events}")
        if claims != 1:
            problems.append(f"{uuid} ({kind.value}): claimed {claims} times")
        if starts[str(uuid)] > 1:
            problems.append(f"{uuid} ({kind.value}): benchmark started {starts[str(uuid)]} times")
        for result in record.results or []:
            if not str(result.get("stdout") or "").startswith(marker(uuid) + "\n"):
                problems.append(f"{uuid} ({kind.value}): result of another job: {str(result)[:200]}")
        if not record.terminal_messages:
            lost_to_kill += 1  # the agent never reported it: only the SIGKILLed job may be so
            # The server's background task ends it (PROTOCOL.md §3.5): failed after the heartbeat
            # timeout, or canceled when it is already past timeout + grace (short-timeout jobs).
            timed_out = bool(record.history) and "timeout exceeded" in record.history[-1].cause
            if not (record.status is JobStatus.FAILED
                    or (record.status is JobStatus.CANCELED and timed_out)):
                problems.append(f"{uuid}: no terminal message yet {record.status.value}")
            continue
        if kind in (Kind.QUICK, Kind.SLOW, Kind.CHATTY) and record.status is not JobStatus.PROCESSED:
            if record.status is JobStatus.FAILED and starts[str(uuid)] == 0 \
                    and events == {"failed"} and str(uuid) in unconfirmed_jobs:
                unconfirmed += 1  # cut between `running` and its ack: must not run (§9 item 4)
            else:
                problems.append(f"{uuid} ({kind.value}): {record.status.value}: {record.error}")
        if kind in (Kind.CANCELED, Kind.TIMEOUT) and record.status is JobStatus.PROCESSED:
            problems.append(f"{uuid} ({kind.value}): processed although it could not finish")
    if lost_to_kill > 1:
        problems.append(f"{lost_to_kill} jobs never reported by the agent (only the SIGKILLed one may be)")
    leftovers = processes_with(MARKER)
    if leftovers:
        problems.append(f"benchmark processes left behind: {leftovers}")
    for index, samples in enumerate(rss):
        growth = memory_growth_kib(samples)
        if growth > MAX_GROWTH_KIB:
            problems.append(f"agent process {index}: RSS grew by {growth} KiB")
    outbox_left = sorted(p.name for p in (state / "outbox").glob("*.json"))
    dead = sorted(p.name for p in (state / "dead-letter").glob("*")) if (state / "dead-letter").exists() else []
    if outbox_left or dead:
        problems.append(f"outbox not empty: {outbox_left}; dead letters: {dead}")
    if exits.get("sigterm") != 0 or exits.get("final") != 0:
        problems.append(f"SIGTERM exits were not clean: {exits}")
    rows += [
        ("jobs failed unstarted (cut before the running ack)", unconfirmed),
        ("jobs lost with the SIGKILLed agent (server timed them out)", lost_to_kill),
        ("leftover benchmark processes", len(leftovers)),
        ("outbox / dead-letter files at the end", f"{len(outbox_left)} / {len(dead)}"),
    ]
    print(table(rows, f"soak summary (seed {SEED})"))
    if problems:
        print(diagnose(problems, records_list, agents))
    assert not problems, "\n".join(problems)
