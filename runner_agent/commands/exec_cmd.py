"""``runner-agent exec``: run one job locally, without a server, and print its results (optionally
pinned to ``--cpus``, with ``--metrics-file`` records like ``run`` writes)."""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import attrs
import click
import platformdirs
import trio

from runner_agent.errors import EXIT_FAILURE, EXIT_OK, SandboxUnavailableError
from runner_agent.execute import ExecOptions, JobControl, JobOutcome, check_sandbox, execute_job
from runner_agent.execute.local import (
    LocalJobError,
    Overrides,
    apply_overrides,
    parse_env,
    resolve_source,
)
from runner_agent.execute.options import DEFAULT_MAX_MESSAGE_SIZE, Placement
from runner_agent.execute.plan import choose_cpus
from runner_agent.execute.results import IterationMetrics
from runner_agent.host.cpulist import CpuListError, parse_cpulist
from runner_agent.host.metrics import MetricsFile, iteration_record
from runner_agent.logging_setup import configure_logging
from runner_agent.oci.cache import ImageCache
from runner_agent.protocol import encode

EXIT_INTERRUPTED = 130  # the shell's convention for "ended by SIGINT"


async def _cancel_on_signal(
    control: JobControl, grace: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Ctrl-C (SIGINT) or SIGTERM cancels the job the orderly way, at a point where the executor
    expects it: SIGTERM to the benchmark, ``--kill-grace``, then SIGKILL until no process of the
    job is left. Later signals only say so: interrupting the kill ladder could leave the
    benchmark's processes behind (in host mode nothing else would end them)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if control.cancel_requested:
                click.echo(f"Stopping: the job's processes get SIGKILL at the latest {grace:g} s "
                           "after the first signal.", err=True)
            control.request_cancel(f"interrupted ({signal.Signals(signum).name})")


def _default_cache() -> Path:
    return Path(platformdirs.user_cache_dir("runner-agent")) / "images"


def _online_cpus() -> frozenset[int]:
    return parse_cpulist(Path("/sys/devices/system/cpu/online").read_text().strip())


def _preview(text: str | None, width: int = 40) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.replace("\0", "\\0")
    return line if len(line) <= width else line[: width - 1] + "…"


def render_table(outcome: JobOutcome) -> str:
    """The human summary: one row per iteration, then the status (and error)."""
    rows = [("iter", "exit", "wall s", "user s", "sys s", "peak RSS KiB", "output")]
    for i, m in enumerate(outcome.metrics):
        result = outcome.results[i] if i < len(outcome.results) else None
        shown = ""
        if result is not None:
            values = list((result.output or {}).values())
            shown = _preview(values[0] if values else result.stdout)
        exit_text = str(m.exit_code) if m.exit_code is not None else f"sig {m.signal}"
        rows.append((
            str(m.iteration + 1), exit_text, f"{m.wall_s:.3f}", f"{m.user_s:.3f}",
            f"{m.sys_s:.3f}", str(m.max_rss_kb), shown,
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in rows]
    lines.append(f"status: {outcome.status}")
    if outcome.error:
        lines.append(f"error: {outcome.error}")
    return "\n".join(lines)


EPILOG = """\b
SOURCE is one of:
  a job JSON file     the `job` message from a Bencher server, or just its `config` object
  an image reference  host:port/repository@sha256:… (or :tag)
  an OCI layout dir   a directory with oci-layout, index.json and blobs/

\b
Examples:
  runner-agent exec job.json --json
  runner-agent exec 127.0.0.1:5000/bench@sha256:4f1c… --iter 5 -- /bin/sh -c 'echo {}'
  runner-agent exec ./layout --env RUST_LOG=info --network --timeout 60
  runner-agent exec ./layout --danger-allow-no-sandbox     # no bwrap: run on the host
  runner-agent exec ./layout --cpus 3 --metrics-file m.jsonl   # pinned; per-iteration JSON lines

Ctrl-C or SIGTERM stops the job the orderly way (SIGTERM, --kill-grace, then SIGKILL until
none of its processes is left); signalling again does not skip that.

Exit status: 0 when the job completed, 1 when it failed or could not run, 2 for usage errors,
130 when interrupted (Ctrl-C or SIGTERM).
"""


@click.command("exec", epilog=EPILOG)
@click.argument("source")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.option("--json", "as_json", is_flag=True, help="Print the terminal message's wire form.")
@click.option("--iter", "iterations", type=click.IntRange(0, 2**32 - 1), help="Iterations (job's `iter`).")
@click.option("--timeout", type=click.IntRange(1, 2**31 - 1), help="Whole-job timeout in seconds.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Extra environment (repeatable).")
@click.option("--network", is_flag=True, help="Give the benchmark network access.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Image cache directory.")
@click.option("--danger-allow-no-sandbox", "no_sandbox", is_flag=True,
              help="Allow running the benchmark on the host without bubblewrap.")
@click.option("--kill-grace", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL on cancel/timeout.")
@click.option("--max-message-size", type=click.IntRange(1024), default=DEFAULT_MAX_MESSAGE_SIZE,
              show_default=True, help="Byte limit of the terminal message.")
@click.option("--cpus", "cpu_list", metavar="LIST",
              help="Pin the benchmark to these CPUs, e.g. 2-3 (default: the first spec.cpu CPUs "
              "this process may use).")
@click.option("--metrics-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Append one JSON line per iteration as measured by the agent (wall, user, sys, "
              "peak RSS, exit, CPUs): the record `run --metrics-file` writes.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress and per-iteration metrics.")
def exec_(
    source: str, cmd: tuple[str, ...], as_json: bool, iterations: int | None, timeout: int | None,
    env: tuple[str, ...], network: bool, cache_dir: Path | None, no_sandbox: bool,
    kill_grace: float, max_message_size: int, cpu_list: str | None, metrics_file: Path | None,
    verbose: bool,
) -> None:
    """Run one benchmark job locally (no server) and print its results.

    Anything after `--` replaces the job's cmd.
    """
    configure_logging("text", "info" if verbose else "warning")
    try:
        job, image_source = resolve_source(source, network=network, no_sandbox=no_sandbox)
        over = Overrides(iterations=iterations, timeout=timeout, env=parse_env(env),
                         network=network, cmd=cmd or None)
        job = apply_overrides(job, over)
    except LocalJobError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        cpus = parse_cpulist(cpu_list) if cpu_list is not None else None
    except CpuListError as exc:
        raise click.BadParameter(str(exc), param_hint="--cpus") from None
    if cpus is not None and not cpus <= _online_cpus():
        raise click.BadParameter(
            f"CPU(s) {sorted(cpus - _online_cpus())} are not online", param_hint="--cpus")
    options = ExecOptions(
        allow_no_sandbox=no_sandbox, kill_grace=kill_grace, max_message_size=max_message_size,
        placement=Placement(cpus=cpus),
    )
    try:
        options = attrs.evolve(options, mode=check_sandbox(options))
    except SandboxUnavailableError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    cache = ImageCache(cache_dir or _default_cache())

    on_iteration = None
    if metrics_file is not None:
        try:  # fail now, not after the first iteration
            metrics_file.parent.mkdir(parents=True, exist_ok=True)
            metrics_file.open("a").close()
        except OSError as exc:
            raise click.BadParameter(f"{metrics_file}: {exc.strerror or exc}",
                                     param_hint="--metrics-file") from None
        metrics, job_cpus = MetricsFile(metrics_file), choose_cpus(job.spec.cpu, cpus)

        def on_iteration(m: IterationMetrics) -> None:
            metrics.append(iteration_record(str(job.uuid), m, job_cpus, None, {}, datetime.now(UTC)))

    control = JobControl()

    async def run() -> JobOutcome:
        async with trio.open_nursery() as nursery:
            await nursery.start(_cancel_on_signal, control, kill_grace)
            outcome = await execute_job(job, image_source, cache, options, control,
                                        on_iteration=on_iteration)
            nursery.cancel_scope.cancel()
        return outcome

    outcome: JobOutcome | None = None
    try:
        outcome = trio.run(run)
    except* KeyboardInterrupt:  # bare or in a nursery's group; the job's processes are gone by now
        pass
    if outcome is None or (control.cancel_requested and outcome.status == "canceled"):
        click.echo("Interrupted: the job was stopped and its processes killed.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        click.echo(encode(outcome.to_message(job.uuid, max_message_size)))
    else:
        click.echo(render_table(outcome))
    sys.exit(EXIT_OK if outcome.status == "completed" else EXIT_FAILURE)

