"""`runner-agent demo`: the whole loop on this machine, with nothing from the internet.

It starts the dev server in-process, builds a small OCI image layout from this machine's static
busybox plus a benchmark script, submits one job with several iterations, runs the real agent
(`runner_agent.agent.Agent`, sandboxed when bubblewrap works, else host mode) until it has served
that job, and returns what the server received so the command can print a summary.

The benchmark hashes ``size_mb`` MiB of zeros with busybox ``sha256sum`` and reports its latency
(microsecond clock from ``adjtimex``) and throughput as Bencher Metric Format JSON on stdout,
exactly as a real Bencher job would.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from attrs import frozen

from runner_agent.agent import Agent
from runner_agent.config import Config
from runner_agent.devserver import DevServer
from runner_agent.devserver.store import JobStatus
from runner_agent.errors import AgentError, SandboxUnavailableError
from runner_agent.execute import ExecOptions, IterationMetrics, check_sandbox
from runner_agent.jobrunner import OciJobRunner, PreparedJob
from runner_agent.oci.build import File, FileSpec, Symlink, build_layout
from runner_agent.oci.cache import ImageCache
from runner_agent.oci.image import ImageConfig
from runner_agent.outbox import Outbox
from runner_agent.protocol import IterationOutput, JobConfig

log = logging.getLogger("runner_agent.demo")

# Passed inline (`sh -c`) rather than as a file in the image, so that host mode, which runs the
# image's programs on the host where image paths mean nothing, runs the same script.
BENCH_SCRIPT = """\
# runner-agent demo benchmark: hash DEMO_MB MiB of zeros, report Bencher Metric Format JSON.
set -e
now_us() {
  t=$(adjtimex 2>/dev/null | awk '/time.tv_sec/ {s=$2} /time.tv_usec/ {u=$2} END {if (s) printf "%d%06d", s, u}')
  if [ -z "$t" ]; then t=$(awk '{printf "%d", $1 * 1000000}' /proc/uptime); fi
  echo "$t"
}
mb=${DEMO_MB:-32}
start=$(now_us)
head -c $((mb * 1048576)) /dev/zero | sha256sum >/dev/null
end=$(now_us)
awk -v s="$start" -v e="$end" -v mb="$mb" 'BEGIN {
  us = e - s; if (us < 1) us = 1
  printf "{\\"sha256/%dMiB\\":{\\"latency\\":{\\"value\\":%.0f},\\"throughput\\":{\\"value\\":%.2f}}}\\n", mb, us * 1000, mb / (us / 1e6)
}'
"""

APPLETS = ("sh", "awk", "head", "sha256sum", "adjtimex", "cat", "echo", "ls")

PT_INTERP = 3


class DemoError(AgentError):
    """The demo cannot run on this machine; the message says how to fix it."""


def find_static_busybox() -> Path:
    """A statically linked busybox (Debian ``busybox-static``): it runs inside an empty rootfs."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and Path(candidate).is_file() and is_static_elf(Path(candidate)):
            return Path(candidate)
    raise DemoError(
        "the demo image needs a statically linked busybox and none was found; "
        "install it with: sudo apt-get install busybox-static"
    )


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF executable with no program interpreter."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", table, i * phentsize)
        if p_type == PT_INTERP:
            return False
    return True


def build_demo_image(layout: Path, busybox: Path) -> str:
    """Write the demo's OCI image layout; returns its manifest digest."""
    files: dict[str, FileSpec] = {
        "bin/busybox": File(busybox.read_bytes(), 0o755),
    }
    for applet in APPLETS:
        files[f"bin/{applet}"] = Symlink("busybox")
    config = ImageConfig(
        entrypoint=("/bin/sh", "-c"),
        cmd=(BENCH_SCRIPT,),
        env=("PATH=/bin",),
        working_dir="/",
    )
    return build_layout(layout, files, config=config)


@frozen
class DemoIteration:
    """One iteration as the demo reports it: agent-side metrics and the benchmark's own output."""

    metrics: IterationMetrics
    output: IterationOutput | None
    bmf: dict[str, Any] | None


@frozen
class DemoResult:
    job: uuid.UUID
    status: str
    error: str | None
    mode: str
    exit_status: int
    iterations: tuple[DemoIteration, ...]


def parse_bmf(text: str | None) -> dict[str, Any] | None:
    """The benchmark's Bencher Metric Format object from its stdout, or None."""
    if not text:
        return None
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def choose_mode(work_dir: Path) -> tuple[str, str | None]:
    """("sandbox", None) when bubblewrap works, else ("host", why)."""
    try:
        mode = check_sandbox(ExecOptions(allow_no_sandbox=False, work_dir=work_dir))
    except SandboxUnavailableError as e:
        return "host", str(e)
    return str(mode), None


async def run_demo(
    work: Path,
    *,
    iterations: int,
    size_mb: int,
    progress: Callable[[str], None],
    heartbeat_interval: float = 1.0,
) -> DemoResult:
    """Serve one demo job end to end in this process and return what the server recorded."""
    busybox = find_static_busybox()
    mode, why = choose_mode(work / "state" / "work")
    if why is not None:
        progress(f"bubblewrap is not usable here ({why}).")
        progress("The demo runs the benchmark in host mode instead: no isolation, like "
                 "`runner-agent run --danger-allow-no-sandbox`. To sandbox it, fix what the line "
                 "above says (as root with bubblewrap installed, the sandbox is used).")
    layout = work / "image"
    digest = build_demo_image(layout, busybox)
    progress(f"built OCI image layout {layout} ({digest[:19]}…) from {busybox}")

    metrics: list[IterationMetrics] = []

    def on_iteration(prepared: PreparedJob, m: IterationMetrics) -> None:
        metrics.append(m)
        outcome = "ok" if m.exit_code == 0 else f"exit {m.exit_code} signal {m.signal}"
        progress(f"  iteration {m.iteration + 1}/{iterations}: {m.wall_s * 1000:8.1f} ms wall "
                 f"({outcome})")

    async with DevServer.start() as server:
        progress(f"dev server listening on {server.url} (runner {server.runner.slug})")
        config = JobConfig(
            registry=layout.resolve().as_uri(),
            project=uuid.uuid4(),
            digest=digest,
            image="runner-agent-demo:latest",
            env={"DEMO_MB": str(size_mb)},
            timeout=300,
            iter=iterations,
        )
        job = server.submit_job(config)
        progress(f"submitted job {job}: {iterations} iterations of sha256 over {size_mb} MiB")
        agent_config = Config(
            host=server.url,
            runner=server.runner.slug,
            key=server.key,
            state_dir=work / "state",
            cache_dir=work / "cache",
            exit_after_jobs=1,
            danger_allow_no_sandbox=(mode == "host"),
            heartbeat_interval=heartbeat_interval,
        )
        options = ExecOptions(allow_no_sandbox=(mode == "host"), work_dir=work / "state" / "work")
        runner = OciJobRunner(ImageCache(work / "cache"), options)
        agent = Agent(agent_config, runner, Outbox(agent_config.state_dir),
                      handle_signals=False, on_iteration=on_iteration)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report_status, server, job, progress)
            code = await agent.run()
            with trio.move_on_after(10):
                await server.wait_for_status(job, [s for s in JobStatus if s.has_run])
            nursery.cancel_scope.cancel()
        record = server.job(job)

    outputs = [_iteration_output(r) for r in record.results or []]
    rows = []
    for i, m in enumerate(metrics):
        out = outputs[i] if i < len(outputs) else None
        rows.append(DemoIteration(m, out, parse_bmf(out.stdout if out else None)))
    return DemoResult(job, record.status.value, record.error, mode, code, tuple(rows))


def _iteration_output(raw: dict[str, Any]) -> IterationOutput:
    return IterationOutput(
        exit_code=int(raw.get("exit_code", -1)),
        stdout=raw.get("stdout"),
        stderr=raw.get("stderr"),
        output=raw.get("output"),
    )


async def _report_status(server: DevServer, job: uuid.UUID, progress: Callable[[str], None]) -> None:
    seen = JobStatus.PENDING
    while not seen.has_run:
        record = await server.wait_for_status(job, [s for s in JobStatus if s != seen])
        seen = record.status
        note = {
            JobStatus.CLAIMED: "claimed by the agent (job frame sent; agent answers `running`)",
            JobStatus.RUNNING: "running (server acked `running`; image ready, benchmark starts)",
        }.get(seen, seen.value)
        progress(f"server: job {note}")


def summary_lines(result: DemoResult, width: int = 40) -> list[str]:
    """The closing summary: a per-iteration table, the benchmark's metrics and a bar chart."""
    lines = [f"job {result.job}: {result.status} (benchmark ran in {result.mode} mode)"]
    if result.error:
        lines.append(f"error: {result.error}")
    if not result.iterations:
        return lines
    lines.append("")
    lines.append(f"{'iter':>4}  {'wall ms':>9}  {'user ms':>8}  {'sys ms':>7}  {'peak RSS':>9}  "
                 f"{'exit':>4}  benchmark metrics")
    for row in result.iterations:
        m = row.metrics
        lines.append(
            f"{m.iteration + 1:>4}  {m.wall_s * 1000:>9.1f}  {m.user_s * 1000:>8.1f}  "
            f"{m.sys_s * 1000:>7.1f}  {m.max_rss_kb:>6} kB  {m.exit_code if m.exit_code is not None else '-':>4}  "
            f"{_bmf_text(row.bmf)}"
        )
    walls = [r.metrics.wall_s * 1000 for r in result.iterations]
    lines.append("")
    lines.append(f"wall time: min {min(walls):.1f} ms, median {statistics.median(walls):.1f} ms, "
                 f"max {max(walls):.1f} ms, CV {_cv(walls) * 100:.1f}%")
    lines.append("")
    lines.append("iteration wall times:")
    top = max(walls) or 1.0
    for i, w in enumerate(walls):
        bar = "█" * max(1, round(w / top * width))
        lines.append(f"  {i + 1:>3} │{bar:<{width}}│ {w:.1f} ms")
    return lines


def _bmf_text(bmf: dict[str, Any] | None) -> str:
    if not bmf:
        return "-"
    parts = []
    for bench, measures in bmf.items():
        if not isinstance(measures, dict):
            continue
        for measure, value in measures.items():
            v = value.get("value") if isinstance(value, dict) else None
            if isinstance(v, int | float):
                shown = f"{v / 1e6:.1f} ms" if measure == "latency" else f"{v:.1f}"
                unit = " MiB/s" if measure == "throughput" else ""
                parts.append(f"{bench} {measure}={shown}{unit}")
    return ", ".join(parts) or "-"


def _cv(values: list[float]) -> float:
    """Coefficient of variation (sample standard deviation / mean); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else 0.0


__all__ = ["DemoError", "DemoResult", "build_demo_image", "run_demo", "summary_lines"]
