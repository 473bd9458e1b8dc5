"""`runner-agent demo`: one command that shows the whole loop on this machine."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import click
import trio

from runner_agent.demo import DemoError, run_demo, summary_lines
from runner_agent.errors import EXIT_FAILURE, EXIT_OK
from runner_agent.logging_setup import configure_logging


@click.command("demo")
@click.option("--iterations", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Iterations of the sample benchmark.")
@click.option("--size-mb", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="MiB hashed per iteration.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the image, cache and state here instead of a temporary directory.")
@click.option("--verbose", is_flag=True, help="Also show the agent's own log lines.")
def demo(iterations: int, size_mb: int, work_dir: Path | None, verbose: bool) -> None:
    """Show the whole runner loop on this machine, with no internet and no Bencher account.

    Starts a Bencher-compatible dev server in this process, builds a small OCI image from this
    machine's static busybox, submits a benchmark job with several iterations, runs the real agent
    against it (in the bubblewrap sandbox when it works, else in host mode, saying so) and prints
    a summary: per-iteration times, the benchmark's own metrics and a chart. Nothing is left
    running afterwards.

    \b
    Examples:
      runner-agent demo
      runner-agent demo --iterations 10 --size-mb 16
      runner-agent demo --work-dir /tmp/demo --verbose
    """
    configure_logging("text", "info" if verbose else "warning", secrets=())
    logging.getLogger("runner_agent").setLevel(logging.INFO if verbose else logging.WARNING)

    def progress(line: str) -> None:
        click.echo(line)

    temp = None
    if work_dir is None:
        temp = tempfile.mkdtemp(prefix="runner-agent-demo-")
        work = Path(temp)
    else:
        work = work_dir
        work.mkdir(parents=True, exist_ok=True)
    try:
        click.echo("runner-agent demo: dev server + local OCI image + agent, all on this machine\n")
        try:
            result = trio.run(lambda: run_demo(work, iterations=iterations, size_mb=size_mb,
                                               progress=progress))
        except DemoError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_FAILURE)
        click.echo("")
        for line in summary_lines(result):
            click.echo(line)
        ok = result.status in ("completed", "processed") and result.exit_status == 0
        sys.exit(EXIT_OK if ok else EXIT_FAILURE)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
