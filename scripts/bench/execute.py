"""Benchmarks of job execution (figures → scripts/bench/results-execute.md).

1. start latency: ``run_plan`` called → the benchmark's first sign of life (it connects to a
   loopback listener, so the figure includes busybox ``nc`` starting and connecting), cached
   rootfs, host and sandbox mode, p50/p99;
2. cancel latency: ``request_cancel`` → ``run_plan`` returned, i.e. the whole process tree is
   gone (checked), for a SIGTERM-obeying ``sleep``, host and sandbox mode, p50/p99;
3. output drain throughput: a benchmark ``cat``s a file to stdout, drained by the agent (bounded
   capture), vs ``cat file > /dev/null`` and ``cat file | cat > /dev/null`` on the same file.

Usage: .venv/bin/python scripts/bench/execute.py [--runs 50] [--drain-mb 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runner_agent.execute import JobControl, build_plan, run_plan
from runner_agent.execute.options import ExecOptions, SandboxMode
from runner_agent.execute.proctree import scan
from tests.execute.jobs import image, make_job
from tests.support.rootfs import make_busybox_rootfs

MODES: tuple[SandboxMode, ...] = ("host", "sandbox")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def plan(rootfs: Path, work: Path, mode: SandboxMode, argv: list[str], **spec: Any) -> Any:
    if mode == "host":
        spec["sandbox"] = None
    job = make_job({"entrypoint": argv[:1], "cmd": argv[1:], "timeout": 600}, **spec)
    opts = ExecOptions(allow_no_sandbox=True, mode=mode, work_dir=work, kill_grace=5.0)
    return build_plan(job, image(rootfs), opts)


async def start_latency(rootfs: Path, work: Path, mode: SandboxMode, runs: int) -> list[float]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    p = plan(rootfs, work, mode, ["/bin/nc", "127.0.0.1", str(port)], network=True)
    out: list[float] = []
    for _ in range(runs):
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            nursery.start_soon(run_plan, p, JobControl())
            conn = await listener.accept()
            out.append(time.perf_counter() - t0)
            await conn.aclose()
    await listener.aclose()
    return out


async def cancel_latency(rootfs: Path, work: Path, mode: SandboxMode, runs: int) -> list[float]:
    marker = "86420"
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    script = f"echo up | nc 127.0.0.1 {port}; exec sleep {marker}"
    p = plan(rootfs, work, mode, ["/bin/sh", "-c", script], network=True)
    out: list[float] = []
    for _ in range(runs):
        control = JobControl()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_plan, p, control)
            conn = await listener.accept()
            await conn.receive_some()
            await conn.aclose()
            t0 = time.perf_counter()
            control.request_cancel("bench")
        out.append(time.perf_counter() - t0)
        assert not any(_in_tree(pid, marker) for pid in scan()), "tree survived"
    await listener.aclose()
    return out


def _in_tree(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def write_file(path: Path, mb: int) -> None:
    block = bytes(range(256)) * 4096
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(block)


async def drain(rootfs: Path, work: Path, mode: SandboxMode, mb: int) -> float:
    p = plan(rootfs, work, mode, ["/bin/cat", "big"])
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        outcome = await run_plan(p, JobControl())
        elapsed = time.perf_counter() - t0
        assert outcome.metrics[0].stdout_bytes == mb * 1024 * 1024
        best = max(best, mb / elapsed)
    return best


def shell_rate(command: str, mb: int) -> float:
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", command], check=True)
        best = max(best, mb / (time.perf_counter() - t0))
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--drain-mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rootfs = make_busybox_rootfs(base / "rootfs")
        big = rootfs / "big"
        write_file(big, args.drain_mb)
        work = base / "work"
        print(f"runs={args.runs}, drain file {args.drain_mb} MiB")
        for mode in MODES:
            starts = await start_latency(rootfs, work, mode, args.runs)
            print(f"start  {mode:7s}: p50 {pct(starts, 0.5) * 1e3:6.2f} ms  p99 {pct(starts, 0.99) * 1e3:6.2f} ms")
        for mode in MODES:
            cancels = await cancel_latency(rootfs, work, mode, max(10, args.runs // 2))
            print(f"cancel {mode:7s}: p50 {pct(cancels, 0.5) * 1e3:6.2f} ms  p99 {pct(cancels, 0.99) * 1e3:6.2f} ms")
        cat_null = shell_rate(f"cat {big} > /dev/null", args.drain_mb)
        cat_pipe = shell_rate(f"cat {big} | cat > /dev/null", args.drain_mb)
        print(f"drain  cat > /dev/null        : {cat_null:8.0f} MiB/s")
        print(f"drain  cat | cat > /dev/null  : {cat_pipe:8.0f} MiB/s")
        for mode in MODES:
            rate = await drain(rootfs, work, mode, args.drain_mb)
            print(f"drain  agent {mode:7s}         : {rate:8.0f} MiB/s  ({rate / cat_null:.0%} of cat > /dev/null, {rate / cat_pipe:.0%} of cat | cat)")
        print(f"(statistics: {statistics.__name__} module; python {sys.version.split()[0]})")


if __name__ == "__main__":
    trio.run(main)
