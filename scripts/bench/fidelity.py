"""Fidelity benchmark: does running a job through the agent add noise?

Runs one CPU-bound busybox command (``sha256sum`` of a fixed 50 MiB file) N times through
``runner-agent exec`` and N times directly on the host, interleaved (after one uncounted warm-up of
each), and reports each side's median and coefficient of variation (CV) and the CV ratio, plus the
agent process's voluntary context switches per second while the job runs.

- The image is an OCI layout built once with ``runner_agent.oci.build.build_layout`` (busybox plus
  the fixed input at ``/data.bin``); every ``exec`` reuses one ``--cache-dir``, so the rootfs is
  unpacked once (by the warm-up).
- The exec side's per-run time is the iteration's own wall time as the agent measured it (the record
  ``exec --metrics-file`` writes), not the CLI's Python start-up. The direct side's is spawn-to-exit
  of ``/bin/busybox sha256sum`` measured by this (trio) process, unpinned.
- Placement as ``run`` does it: ``host.layout`` picks housekeeping and benchmark CPUs; the job goes
  to a benchmark CPU (``exec --cpus``), the ``exec`` process and this script to the housekeeping
  CPUs.
- Wake-ups: while the job's process (bwrap) is a child of the ``exec`` process — seen by polling
  ``/proc/<pid>/task/*/children`` every 2 ms from the housekeeping CPU — the difference of
  ``voluntary_ctxt_switches`` summed over ``/proc/<pid>/task/*/status`` (every thread of the agent
  process; spawn excluded, the exit notice included). ``exec`` has no server, so no heartbeats.

    .venv/bin/python scripts/bench/fidelity.py [--runs 30] [--mib 50] [--json PATH]

Prints the figures and writes ``results-fidelity.json`` (tables for ``report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from attrs import frozen

from runner_agent.host.cpulist import format_cpulist
from runner_agent.host.layout import CpuLayout, detect_layout, job_cpus, pin_agent
from runner_agent.oci.build import Dir, File, FileSpec, Symlink, build_layout
from runner_agent.oci.image import ImageConfig

BUSYBOX = Path("/bin/busybox")
REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.002


def input_data(mib: int) -> bytes:
    """A deterministic ``mib`` MiB input (each MiB a rotation of 0..255 repeated)."""
    block = bytes(range(256)) * 4096
    return b"".join(block[i % 256 :] + block[: i % 256] for i in range(mib))


def make_layout(dest: Path, data: bytes) -> str:
    files: dict[str, FileSpec] = {
        "bin": Dir(),
        "bin/busybox": BUSYBOX,
        "bin/sh": Symlink("busybox"),
        "bin/sha256sum": Symlink("busybox"),
        "data.bin": File(data),
    }
    config = ImageConfig(entrypoint=None, cmd=("/bin/sha256sum", "/data.bin"), env=("PATH=/bin",),
                         working_dir="/")
    return build_layout(dest, files, config=config, compression="none")


def tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def voluntary_switches(pid: int) -> int:
    total = 0
    for tid in tasks(pid):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def job_child(pid: int) -> int | None:
    """The child of ``pid`` (any of its threads) whose command line names ``/data.bin``."""
    for tid in tasks(pid):
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"/data.bin" in cmdline:
                return int(child)
    return None


def job_running(pid: int, child: int) -> bool:
    """Whether ``child`` is still (unreaped) a child of ``pid``."""
    return os.path.exists(f"/proc/{child}") and job_child(pid) == child


def metrics_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def allowed_cpus(pid: int) -> set[int]:
    cpus: set[int] = set()
    for tid in tasks(pid):
        try:
            cpus |= os.sched_getaffinity(int(tid))
        except OSError:
            continue
    return cpus


@frozen
class ExecRun:
    wall: float  # the agent's own measurement of the iteration
    digest: str
    switches: int  # agent wake-ups while the job ran
    seconds: float
    agent_cpus: frozenset[int]  # CPUs the agent's threads may use while the job runs
    job_cpus: frozenset[int]  # CPUs the agent recorded for the job
    process_s: float  # the whole `runner-agent exec` process, Python start-up included


@frozen
class DirectRun:
    wall: float
    digest: str


async def exec_run(layout: Path, cache: Path, metrics: Path, cpus: frozenset[int],
                   housekeeping: frozenset[int]) -> ExecRun:
    """One ``runner-agent exec`` of the layout (one iteration) on ``cpus``; the agent on ``housekeeping``."""
    before = len(metrics_lines(metrics))
    argv = [sys.executable, "-m", "runner_agent", "exec", str(layout), "--json", "--timeout", "600",
            "--cache-dir", str(cache), "--cpus", format_cpulist(cpus), "--metrics-file", str(metrics)]

    def place() -> None:
        os.sched_setaffinity(0, housekeeping)

    started = time.perf_counter()
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               preexec_fn=place, cwd=REPO)
    assert process.stdout is not None and process.stderr is not None
    out: list[bytes] = []
    err: list[bytes] = []
    window: list[tuple[float, int]] = []  # (time, switches) at job seen / job gone
    agent_cpus: set[int] = set()

    async def read(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
        async for chunk in stream:
            into.append(bytes(chunk))

    async def watch() -> None:
        child: int | None = None
        while child is None:
            if process.returncode is not None:
                return
            child = job_child(process.pid)
            if child is None:
                await trio.sleep(POLL_S)
        window.append((time.perf_counter(), voluntary_switches(process.pid)))
        agent_cpus.update(allowed_cpus(process.pid))
        # another process's /proc entries change without any event to wait on: poll them
        while job_running(process.pid, child):  # noqa: ASYNC110
            await trio.sleep(POLL_S)
        window.append((time.perf_counter(), voluntary_switches(process.pid)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, process.stdout, out)
        nursery.start_soon(read, process.stderr, err)
        nursery.start_soon(watch)
        await process.wait()
    process_s = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"runner-agent exec exited {process.returncode}: {b''.join(err).decode()[-2000:]}")
    if len(window) != 2:
        raise RuntimeError("never saw the job's process; cannot count the agent's wake-ups")
    message = json.loads(b"".join(out))
    records = [json.loads(line) for line in metrics_lines(metrics)[before:]]
    if len(records) != 1 or records[0]["exit"] != 0:
        raise RuntimeError(f"expected one successful iteration record, got {records}")
    (t0, s0), (t1, s1) = window
    return ExecRun(records[0]["wall"], message["results"][0]["stdout"].split()[0], s1 - s0, t1 - t0,
                   frozenset(agent_cpus), frozenset(records[0]["cpus"]), process_s)


async def direct_run(data_file: Path) -> DirectRun:
    chunks: list[bytes] = []
    start = time.perf_counter()
    process = await trio.lowlevel.open_process([str(BUSYBOX), "sha256sum", str(data_file)],
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    async with process.stdout as stdout:
        async for chunk in stdout:
            chunks.append(bytes(chunk))
    await process.wait()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"busybox sha256sum exited {process.returncode}")
    return DirectRun(wall, b"".join(chunks).decode().split()[0])


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def main(runs: int, mib: int, json_path: Path) -> None:
    layout: CpuLayout = detect_layout()
    pinned = pin_agent(layout)
    grant = job_cpus(layout, 1)
    print(layout.describe())
    print(f"script and exec process on CPUs {format_cpulist(pinned)}; job CPUs {format_cpulist(grant.cpus)}")
    load_before = loadavg()
    print(f"load average before: {load_before} ({os.cpu_count()} CPUs online)")
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        base = Path(tmp)
        data = input_data(mib)
        data_file = base / "data.bin"
        data_file.write_bytes(data)
        built = time.perf_counter()
        digest = make_layout(base / "layout", data)
        print(f"layout {digest[:19]}… built in {time.perf_counter() - built:.1f} s")
        cache, metrics = base / "cache", base / "metrics.jsonl"
        hk = frozenset(pinned)
        warm = time.perf_counter()
        await exec_run(base / "layout", cache, metrics, grant.cpus, hk)  # warm-up: pulls and unpacks
        print(f"warm-up exec (unpacks the rootfs into the cache) took {time.perf_counter() - warm:.1f} s")
        await direct_run(data_file)
        agent: list[ExecRun] = []
        host: list[DirectRun] = []
        for _ in range(runs):
            agent.append(await exec_run(base / "layout", cache, metrics, grant.cpus, hk))
            host.append(await direct_run(data_file))
    load_after = loadavg()
    print(f"load average after: {load_after}")
    digests = {r.digest for r in agent} | {r.digest for r in host}
    assert len(digests) == 1, f"outputs differ: {digests}"
    agent_times = [r.wall for r in agent]
    host_times = [r.wall for r in host]
    ratio = cv(agent_times) / cv(host_times)
    switches = sum(r.switches for r in agent)
    seconds = sum(r.seconds for r in agent)
    agent_cpus = frozenset().union(*(r.agent_cpus for r in agent))
    on_bench = agent_cpus & layout.benchmark if layout.has_isolation else frozenset()
    job_cpu_sets = {format_cpulist(r.job_cpus) for r in agent}
    print(f"runs per side: {runs}, input {mib} MiB, sha256 {digests.pop()[:16]}…")
    print(f"runner-agent exec : median {statistics.median(agent_times) * 1000:.1f} ms, "
          f"CV {cv(agent_times):.2%} (job on CPU(s) {', '.join(sorted(job_cpu_sets))})")
    print(f"whole exec process (start-up, sandbox check, cache lease, job): median "
          f"{statistics.median(r.process_s for r in agent) * 1000:.0f} ms")
    print(f"direct            : median {statistics.median(host_times) * 1000:.1f} ms, CV {cv(host_times):.2%}")
    print(f"CV ratio (exec/direct): {ratio:.3f}  (target <= 1.05)")
    print(f"agent voluntary context switches while the job ran: {switches / seconds:.2f}/s, "
          f"{switches / runs:.1f} per run over {seconds / runs * 1000:.0f} ms (no heartbeats in exec; "
          "output drain and exit notice)")
    print(f"agent threads allowed on benchmark CPUs: {format_cpulist(on_bench) or 'none'}")
    print("markdown row: | run | exec median | exec CV | direct median | direct CV | CV ratio | wake-ups |")
    print(f"| ? | {statistics.median(agent_times) * 1000:.1f} ms | {cv(agent_times):.2%} | "
          f"{statistics.median(host_times) * 1000:.1f} ms | {cv(host_times):.2%} | {ratio:.3f} | "
          f"{switches / seconds:.2f} /s, {switches / runs:.1f} per run |")
    placement = (f"housekeeping CPU(s) {format_cpulist(pinned)} (the `exec` process and this script), "
                 f"job on CPU(s) {', '.join(sorted(job_cpu_sets))}")
    write_json(json_path, agent, host, runs, mib, placement,
               f"{os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}; "
               f"load average {load_before} before, {load_after} after the run",
               format_cpulist(on_bench) or "none")


EXEC = "runner-agent exec"
DIRECT = "direct (busybox sha256sum spawned from the bench)"


def write_json(path: Path, agent: list[ExecRun], host: list[DirectRun], runs: int, mib: int,
               placement: str, machine: str, on_bench: str) -> None:
    """The figures of this run for ``report.py`` (shape in its docstring)."""
    agent_times = [r.wall for r in agent]
    host_times = [r.wall for r in host]
    results = {
        "title": "Fidelity: noise added by the agent (fidelity.py)",
        "description": (
            f"One CPU-bound busybox command (`sha256sum` of a fixed {mib} MiB file), {runs} runs "
            f"through `runner-agent exec` and {runs} runs directly on the host, interleaved, after one "
            "uncounted warm-up of each.\n\n"
            "- **Through the agent**: an OCI layout built once (busybox + `/data.bin`, uncompressed "
            "layer), run as `runner-agent exec LAYOUT --cache-dir C --cpus <benchmark CPU> "
            "--metrics-file M --json`: the full path a job takes (sandbox check, image lease from the "
            "cache, plan, bubblewrap sandbox, pinning, output capture). The per-run time is the "
            "iteration's own wall time as the agent measured it (the `wall` of the record "
            "`exec --metrics-file` writes: benchmark process start to exit, bwrap set-up included), "
            "not the CLI's Python start-up.\n"
            "- **Direct** (the baseline): `/bin/busybox sha256sum` on the same file, spawn to exit "
            "measured by the benchmark's trio process, unpinned (what an operator gets without the "
            "agent).\n"
            f"- **Placement** as `run` does it: {placement}.\n"
            "- **Agent wake-ups**: while the job's process (bwrap) is a child of the `exec` process "
            "(polled every 2 ms from the housekeeping CPU), the increase of `voluntary_ctxt_switches` "
            "summed over every thread of the agent process; one sample per run. `exec` has no server, "
            "so no heartbeats."
        ),
        "machine": machine,
        "tables": [
            {
                "name": "iteration time", "unit": "ms", "baseline": DIRECT,
                "rows": [{"name": EXEC, "samples": [round(t * 1000, 3) for t in agent_times]},
                         {"name": DIRECT, "samples": [round(t * 1000, 3) for t in host_times]}],
            },
            {
                "name": "coefficient of variation of the iteration time", "unit": "%", "baseline": DIRECT,
                "target": {"row": EXEC, "stat": "ratio", "op": "<=", "value": 1.05},
                "rows": [{"name": EXEC, "median": round(cv(agent_times) * 100, 3), "n": runs},
                         {"name": DIRECT, "median": round(cv(host_times) * 100, 3), "n": runs}],
            },
            {
                "name": "agent wake-ups while the job runs", "unit": "per second",
                "rows": [{"name": f"{EXEC} (voluntary context switches, all threads)",
                          "samples": [round(r.switches / r.seconds, 3) for r in agent if r.seconds > 0]}],
            },
        ],
        "notes": (
            "The CV table's ratio is the CV ratio the issue sets the target on (exec CV / direct "
            "CV). Both sides' CVs are set by the machine (a shared 2-vCPU VM: steal time, other "
            "processes; on this VM each side's CV is 6-13 %), and the ratio of two CVs from 30 "
            "samples each carries a sampling error of about ±20 % on its own: eight runs on "
            "2026-11-27 gave 0.60 to 1.56 (of the day's changes, the output drain and exec's Ctrl-C "
            "handler are on this path). A quiet bare-metal machine (`runner-agent check` exit 0) "
            "gives a sharper "
            "figure. The exec median includes "
            "bwrap's namespace and mount set-up, and the direct side is free to use either CPU.\n\n"
            f"Agent threads allowed on benchmark CPUs while the job ran: **{on_bench}**. The "
            f"wake-ups ({sum(r.switches for r in agent) / runs:.1f} per run) are output draining and "
            "the exit notice; `run` adds one heartbeat and its ack per second."
        ),
    }
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results-fidelity.json"),
                        help="where to write the results for report.py")
    args = parser.parse_args()
    if args.runs < 2 or args.mib < 1:
        parser.error("--runs must be at least 2 and --mib at least 1")
    trio.run(main, args.runs, args.mib, args.json)
