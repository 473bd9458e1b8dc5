"""Fidelity benchmark: does running a job the agent's way add noise?

Runs one CPU-bound busybox command (``sha256sum`` of a fixed 50 MB file) N times sandboxed the way
the agent runs jobs and N times directly on the host, interleaved, and reports each side's median
and coefficient of variation (CV), the CV ratio, and the driver's voluntary context switches per
second while jobs run (from ``/proc/self/task/*/status``).

``runner-agent exec`` does not exist yet, so the sandboxed side uses the executor's own bwrap
command line (``runner_agent.execute.sandbox.bwrap_argv``) on a busybox rootfs, placed on the
benchmark cores by ``runner_agent.host`` (layout, job CPUs, pinning); the driver is a trio process
pinned to the housekeeping cores that heartbeats every second and drains output, like the agent.

    .venv/bin/python scripts/bench/fidelity.py [--runs 30] [--mib 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import trio
from attrs import frozen

from runner_agent.execute.sandbox import bwrap_argv
from runner_agent.host.cpulist import format_cpulist
from runner_agent.host.layout import detect_layout, job_cpus, pin_agent

BUSYBOX = Path("/bin/busybox")
HEARTBEAT_INTERVAL = 1.0


def make_rootfs(base: Path, mib: int) -> Path:
    """A minimal busybox rootfs holding a deterministic ``/data.bin`` of ``mib`` MiB."""
    root = base / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "sha256sum"):
        (root / "bin" / applet).symlink_to("busybox")
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(root / "data.bin", "wb") as f:
        for i in range(mib):
            f.write(block[i % 256 :] + block[: i % 256])
    return root


def voluntary_switches() -> int:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            text = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def driver_cpus() -> set[int]:
    cpus: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            cpus |= os.sched_getaffinity(int(tid))
        except OSError:
            continue
    return cpus


@frozen
class Run:
    wall: float
    digest: str
    steady_switches: int  # driver wake-ups between "started" and "exit noticed"
    steady_seconds: float


async def timed_run(argv: list[str], cpus: frozenset[int] | None) -> Run:
    """Run ``argv`` once (on ``cpus``), draining its output as the agent does."""

    def place() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    chunks: list[bytes] = []
    start = time.perf_counter()
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=place
    )
    started, switches0 = time.perf_counter(), voluntary_switches()
    assert process.stdout is not None
    stdout = process.stdout
    try:
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                async for chunk in stdout:
                    chunks.append(chunk)

            nursery.start_soon(drain)
            await process.wait()
            switches1, exited = voluntary_switches(), time.perf_counter()
    finally:
        await stdout.aclose()
        if process.returncode is None:
            process.kill()
            await process.wait()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {process.returncode}")
    return Run(wall, b"".join(chunks).decode().split()[0], switches1 - switches0, exited - started)


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


async def main(runs: int, mib: int) -> None:
    layout = detect_layout()
    pinned = pin_agent(layout)
    grant = job_cpus(layout, 1)
    print(layout.describe())
    print(f"driver pinned to {format_cpulist(pinned)}; job CPUs {format_cpulist(grant.cpus)}")
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        root = make_rootfs(Path(tmp), mib)
        sandboxed = bwrap_argv(
            shutil.which("bwrap") or "bwrap",
            root,
            ["/bin/sha256sum", "/data.bin"],
            [("PATH", "/bin")],
            "/",
            network=False,
        )
        direct = [str(BUSYBOX), "sha256sum", str(root / "data.bin")]
        beats = 0

        async def heartbeat() -> None:
            nonlocal beats
            while True:
                await trio.sleep(HEARTBEAT_INTERVAL)
                beats += 1

        agent: list[Run] = []
        host: list[Run] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            await timed_run(sandboxed, grant.cpus)  # warm-up, not counted
            await timed_run(direct, None)
            for _ in range(runs):
                agent.append(await timed_run(sandboxed, grant.cpus))
                host.append(await timed_run(direct, None))
            nursery.cancel_scope.cancel()
        digests = {r.digest for r in agent + host}
        assert len(digests) == 1, f"outputs differ: {digests}"
        on_bench = driver_cpus() & layout.benchmark if layout.has_isolation else set()
        agent_times = [r.wall for r in agent]
        host_times = [r.wall for r in host]
        ratio = cv(agent_times) / cv(host_times)
        steady = sum(r.steady_switches for r in agent) / sum(r.steady_seconds for r in agent)
        print(f"runs per side: {runs}, input {mib} MiB, sha256 {digests.pop()[:16]}…")
        print(f"agent way : median {statistics.median(agent_times) * 1000:.1f} ms, CV {cv(agent_times):.2%}")
        print(f"direct    : median {statistics.median(host_times) * 1000:.1f} ms, CV {cv(host_times):.2%}")
        print(f"CV ratio (agent/direct): {ratio:.3f}  (target <= 1.05)")
        print(
            f"driver voluntary context switches while the job ran: {steady:.2f}/s, "
            f"{sum(r.steady_switches for r in agent) / runs:.1f} per run "
            f"(heartbeat {1 / HEARTBEAT_INTERVAL:.0f}/s, {beats} beats in all; plus exit notice and "
            "output drain; process spawn and reap excluded)"
        )
        print(f"driver threads allowed on benchmark CPUs: {format_cpulist(on_bench) or 'none'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mib", type=int, default=50)
    args = parser.parse_args()
    trio.run(main, args.runs, args.mib)
