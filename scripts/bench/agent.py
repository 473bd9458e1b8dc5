"""Benchmarks of `runner-agent run` against the dev server on loopback (figures → results-agent.md).

The dev server runs in this process; the agent is a real `runner-agent run` subprocess (sandbox
mode, default heartbeat interval 1 s), so its CPU time and memory are its own. Latencies are taken
from the dev server's frame log (trio clock, loopback):

1. ``job`` frame → ``running`` frame (p50/p99 over the trivial jobs back to back, and over jobs
   submitted one at a time once the previous one's sandbox is gone);
2. trivial-job throughput (``/bin/true`` in the sandbox, 1 iteration) vs spawning the same command
   in a plain loop on the host and through bubblewrap;
3. ``cancel`` frame → ``canceled`` frame (a SIGTERM-obeying ``sleep``);
4. the agent's own CPU time per second of a quiet running job (heartbeats + draining);
5. the agent's idle RSS (connected, polling).

Usage: .venv/bin/python scripts/bench/agent.py [--jobs 100] [--spaced 30] [--cancels 20]
       [--quiet-seconds 10] [-- extra runner-agent run flags]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID, uuid4

import trio

from runner_agent.devserver.connection import ConnState
from runner_agent.devserver.server import DevServer
from runner_agent.devserver.settings import DevServerSettings
from runner_agent.devserver.store import JobStatus
from runner_agent.oci.build import Dir, File, Symlink, build_layout
from runner_agent.oci.image import ImageConfig
from runner_agent.protocol import JobConfig

TERMINAL = {JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELED}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def busybox_layout(dest: Path) -> str:
    files: dict[str, object] = {
        "bin": Dir(), "bin/busybox": Path("/bin/busybox"), "tmp": Dir(0o1777),
        "etc": Dir(), "etc/passwd": File(b"root:x:0:0:root:/root:/bin/sh\n"),
    }
    for applet in ("sh", "true", "sleep", "echo"):
        files[f"bin/{applet}"] = Symlink("busybox")
    config = ImageConfig(cmd=("/bin/sh",), env=("PATH=/bin",), working_dir="/")
    return build_layout(dest, files, config=config)  # type: ignore[arg-type]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime of the agent itself


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def spawn_rate(argv: list[str], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return n / (time.perf_counter() - start)


class Bench:
    def __init__(self, server: DevServer, layout: Path, digest: str) -> None:
        self.server = server
        self.layout = layout
        self.digest = digest

    def submit(self, script: str, timeout: int = 300) -> UUID:
        return self.server.submit_job(JobConfig(
            registry=f"file://{self.layout}", project=uuid4(), digest=self.digest,
            entrypoint=("/bin/sh", "-c"), cmd=(script,), timeout=timeout, iter=1,
        ))

    async def wait_done(self, jobs: list[UUID]) -> None:
        # Jobs are claimed oldest first; an O(1) check keeps the server's loop (which records the
        # frame times) free of work that would inflate the latencies measured.
        for job in jobs:
            await self.server.wait_for_status(job, TERMINAL)


def delays(frames: list, first: str, first_dir: str, second: str) -> list[float]:
    out: list[float] = []
    pending: dict[int, float] = {}
    for f in frames:
        text = f.text.replace(" ", "")
        if f.direction == first_dir and f'"event":"{first}"' in text:
            pending[f.conn_id] = f.at
        elif f.direction != first_dir and f'"event":"{second}"' in text and f.conn_id in pending:
            out.append(f.at - pending.pop(f.conn_id))
    return out


async def run(args: argparse.Namespace) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    layout = tmp / "layout"
    digest = busybox_layout(layout)
    results: dict[str, float] = {}
    settings = DevServerSettings(heartbeat_timeout=90, frame_log_size=1_000_000)
    async with DevServer.start(settings=settings) as server:
        bench = Bench(server, layout, digest)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHER_", "RUNNER_AGENT_"))}
        env["BENCHER_RUNNER_KEY"] = server.key or ""
        log = (tmp / "agent.log").open("wb")
        argv = [sys.executable, "-m", "runner_agent", "run", "--host", server.url,
                "--runner", server.runner.slug, "--state-dir", str(tmp / "state"),
                "--cache-dir", str(tmp / "cache"), "--poll-timeout", "30", *args.agent_args]
        proc = await trio.lowlevel.open_process(argv, env=env, stdout=log, stderr=log)
        try:
            with trio.fail_after(600):
                # 5. idle RSS: connected and polling, nothing else going on
                await server.wait_for_connection(ConnState.POLLING)
                await trio.sleep(2)
                results["idle_rss_mib"] = rss_kib(proc.pid) / 1024

                # warm the image cache once (pull + unpack are the OCI benchmark's business)
                await bench.wait_done([bench.submit("true")])

                # 1 + 2. trivial jobs
                jobs = [bench.submit("true") for _ in range(args.jobs)]
                start = trio.current_time()
                await bench.wait_done(jobs)
                elapsed = trio.current_time() - start
                results["jobs_per_s"] = args.jobs / elapsed
                lat = delays(list(server.frames), "job", "out", "running")[1:]
                results["job_to_running_p50_ms"] = percentile(lat, 0.5) * 1000
                results["job_to_running_p99_ms"] = percentile(lat, 0.99) * 1000
                results["job_to_running_n"] = len(lat)

                # 1b. the same with each job submitted 0.3 s after the previous one finished, so
                # the previous sandbox's teardown (kernel namespace clean-up on the other core) is over
                before = len(server.frames)
                for _ in range(args.spaced):
                    spaced = bench.submit("true")
                    await bench.wait_done([spaced])
                    await trio.sleep(0.3)
                lat = delays(list(server.frames)[before:], "job", "out", "running")
                results["spaced_job_to_running_p50_ms"] = percentile(lat, 0.5) * 1000
                results["spaced_job_to_running_p99_ms"] = percentile(lat, 0.99) * 1000

                # 3. cancel → canceled
                for _ in range(args.cancels):
                    job = bench.submit("sleep 1000")
                    await server.wait_for_status(job, {JobStatus.RUNNING})
                    seen = len(server.frames_received("heartbeat"))
                    await server.wait_until(lambda s=seen: len(server.frames_received("heartbeat")) > s)
                    server.cancel_job(job)
                    await bench.wait_done([job])
                    await server.wait_until(lambda j=job: bool(server.job(j).terminal_messages))
                cancel = delays(list(server.frames), "cancel", "out", "canceled")
                results["cancel_to_canceled_p50_ms"] = percentile(cancel, 0.5) * 1000
                results["cancel_to_canceled_p99_ms"] = percentile(cancel, 0.99) * 1000
                results["cancel_n"] = len(cancel)

                # 4. CPU of the agent during a quiet job
                job = bench.submit(f"sleep {args.quiet_seconds + 4}")
                await server.wait_for_status(job, {JobStatus.RUNNING})
                await trio.sleep(1)
                c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                await trio.sleep(args.quiet_seconds)
                c1, t1 = cpu_seconds(proc.pid), time.monotonic()
                results["quiet_job_cpu_pct"] = (c1 - c0) / (t1 - t0) * 100
                await bench.wait_done([job])
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(60):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
            log.close()
    results["host_spawn_per_s"] = spawn_rate(["/bin/busybox", "true"], args.jobs)
    rootfs = next((tmp / "cache" / "rootfs").iterdir()) / "fs"
    results["bwrap_spawn_per_s"] = spawn_rate(
        ["bwrap", "--tmpfs", "/", "--ro-bind", str(rootfs / "bin"), "/bin", "--proc", "/proc",
         "--dev", "/dev", "--unshare-all", "--die-with-parent", "--clearenv", "/bin/true"], args.jobs)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def processing_cost(n: int = 2000) -> float:
    """Median µs the agent's own code spends on a `job` frame: decode, channel step, encode."""
    from runner_agent import channel as ch
    from runner_agent.devserver.jobs import default_spec
    from runner_agent.protocol import ClaimedJob, decode_server, encode

    config = JobConfig(registry="file:///x", project=uuid4(), digest="sha256:" + "a" * 64,
                       entrypoint=("/bin/sh", "-c"), cmd=("true",), timeout=60, iter=1)
    text = encode(ClaimedJob(uuid=uuid4(), spec=default_spec(), config=config,
                             oci_token="e30.e30.x", timeout=60, created=default_spec().created))
    samples = []
    for _ in range(n):
        channel = ch.Channel()
        channel.step(ch.Started(0.0))
        channel.step(ch.ConnectionOpened(0.0))
        t0 = time.perf_counter()
        effects = channel.step(ch.FrameReceived(0.0, decode_server(text)))
        sent = [encode(e.message) for e in effects if isinstance(e, ch.Send)]
        samples.append(time.perf_counter() - t0)
        assert sent == ['{"event":"running"}']
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--spaced", type=int, default=30)
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    parser.add_argument("agent_args", nargs="*", help="extra `runner-agent run` flags (after --)")
    args = parser.parse_args()
    results = trio.run(run, args)
    results["job_frame_processing_us"] = processing_cost()
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")


if __name__ == "__main__":
    main()
