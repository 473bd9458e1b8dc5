"""``runner-agent dev-server``: run the Bencher-compatible dev server (:mod:`runner_agent.devserver`)
on this machine, with a spool directory for submitting jobs and an optional persistence file."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import click
import trio

from runner_agent.devserver import DevServer, DevServerSettings, RateLimits, RunnerIdentity
from runner_agent.devserver.auth import generate_key
from runner_agent.devserver.server import runner_uuid_for
from runner_agent.protocol import is_valid_runner_key

_EPILOG = """\b
Examples:
  runner-agent dev-server --spool ./spool          # key is generated and printed
  runner-agent dev-server --port 6610 --runner bench-1 \\
      --key bencher_runner_0123456789abcdefghijABCDEFGHIJ --persist ./jobs.json
  runner-agent run --host http://127.0.0.1:6610 --runner bench-1 --key …

\b
Submitting jobs (--spool DIR):
  DIR/incoming/NAME.json   drop a JsonJobConfig object, or {"config": {...}, "spec": {...},
                           "timeout": N}; write it under another name, then rename to *.json.
                           "registry" may be http(s)://HOST:PORT/ or file:///path/to/oci-layout
                           ("digest" names the manifest).
  DIR/jobs/UUID.json       status, timestamps, results, error and terminal messages, kept current.
  DIR/rejected/NAME        files that did not validate, with NAME.error.txt saying why.
"""


def _slug(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value or len(value) > 64 or not all(c.isalnum() or c == "-" for c in value):
        raise click.BadParameter("use 1-64 letters, digits and '-'")
    return value.lower()


def _key(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not is_valid_runner_key(value):
        raise click.BadParameter("must be 'bencher_runner_' followed by 30 letters or digits")
    return value


@click.command("dev-server", epilog=_EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=6610, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--runner", "runner_slug", default="dev-runner", show_default=True, callback=_slug,
              help="The runner's slug; its UUID is derived from it and printed.")
@click.option("--key", callback=_key, help="The runner key (default: generate one and print it).")
@click.option("--spool", type=click.Path(path_type=Path, file_okay=False),
              help="Spool directory for job submission and results (see below).")
@click.option("--persist", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep jobs in this JSON file so a restarted server still has them.")
@click.option("--heartbeat-timeout", type=click.FloatRange(1, 900), default=90, show_default=True,
              help="Seconds (Bencher's heartbeat_timeout).")
@click.option("--grace", type=click.FloatRange(1, 900), default=60, show_default=True,
              help="Job timeout grace period in seconds.")
@click.option("--max-message-size", type=click.IntRange(1024), default=1 << 22, show_default=True,
              help="Largest accepted message in bytes.")
@click.option("--rate-limit/--no-rate-limit", default=False, show_default=True,
              help="Limit connections per runner as Bencher Cloud does (16/min, 256/h, 4096/day).")
def dev_server(
    host: str,
    port: int,
    runner_slug: str,
    key: str | None,
    spool: Path | None,
    persist: Path | None,
    heartbeat_timeout: float,
    grace: float,
    max_message_size: int,
    rate_limit: bool,
) -> None:
    """Run a local Bencher-compatible runner channel server to try the agent against."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    generated = key is None
    runner_key = key or generate_key()
    runner = RunnerIdentity.with_key(runner_uuid_for(runner_slug), runner_slug, runner_key)
    settings = DevServerSettings(
        heartbeat_timeout=heartbeat_timeout,
        grace=grace,
        max_message_size=max_message_size,
        rate_limits=RateLimits() if rate_limit else None,
    )
    server = DevServer(
        runners=[runner], host=host, port=port, settings=settings,
        persist_path=persist, spool_dir=spool,
    )

    async def main() -> str | None:
        """Serve until SIGINT/SIGTERM; returns why the server could not start, if it could not."""
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(server.serve)
            except OSError as error:  # raised before serving, so not inside an exception group
                return f"cannot serve on {host}:{port}: {error}"
            except ValueError as error:  # a corrupt --persist file
                return str(error)
            click.echo(f"dev server: {server.url}")
            click.echo(f"runner: {runner.slug} ({runner.uuid})")
            if generated:
                click.echo(f"key: {runner_key}")
            if spool is not None:
                click.echo(f"spool: drop jobs into {spool / 'incoming'}, results in {spool / 'jobs'}")
            click.echo(
                f"try: runner-agent run --host {server.url} --runner {runner.slug} "
                f"--key {'<the key>' if not generated else runner_key}"
            )
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    click.echo("shutting down")
                    server.shutdown()
                    break
        return None

    failure = trio.run(main)
    if failure is not None:
        raise click.ClickException(failure)
