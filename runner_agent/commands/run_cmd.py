"""`runner-agent run`: serve Bencher jobs over one long-lived WebSocket until told to stop.

Start-up order: configuration (exit 2 on any error, naming the key) → logging with the key
redacted → transport checks (TLS, ``--insecure``) → key readable and well-formed → sandbox check
(exit 2 with the fix when bwrap does not work and ``--danger-allow-no-sandbox`` is not given) →
outbox and image cache → host session (crash-recovery of tuning, optional ``--tune``, CPU layout,
pinning, cgroups, preflight summary in the log) → optional health endpoint → the agent
(`runner_agent.agent.Agent`).

Exit statuses: 0 clean shutdown (drain, abort-and-deliver, ``--exit-after-jobs``); 1 runtime
failure or a third signal; 2 usage/configuration error; 3 authentication rejected — HTTP 401/403 on
the upgrade, or, with ``--exit-on-auth-failure``, repeated immediate closes after the upgrade (which
is how Bencher answers a wrong key). Without that flag the agent keeps retrying slowly, since a
silent close can also be a rate limit or a server restart.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from typing import Any

import click
import trio

from runner_agent.agent import Agent
from runner_agent.commands.config_cmd import ConfigUsageError, config_from_click, setting_options
from runner_agent.config import Config, ConfigError, read_key
from runner_agent.connection import build_endpoint
from runner_agent.errors import EXIT_FAILURE, EXIT_USAGE, SandboxUnavailableError
from runner_agent.execute import ExecOptions, IterationMetrics, check_sandbox
from runner_agent.jobrunner import OciJobRunner, PreparedJob
from runner_agent.logging_setup import configure_logging
from runner_agent.outbox import Outbox, OutboxError

log = logging.getLogger("runner_agent.run")


@click.command("run")
@setting_options
def run(**params: Any) -> None:
    """Serve Bencher benchmark jobs on this machine until stopped.

    Connects to {host}/v0/runners/{runner}/channel, asks for jobs, runs each one in a bubblewrap
    sandbox, heartbeats while it runs and delivers exactly one result per job — across
    disconnects, server restarts and its own restarts (undelivered results wait in --state-dir).

    Signals: the first SIGTERM/SIGINT drains (finish the job, deliver, exit 0); a second aborts the
    job and reports it failed (exit 0 once delivered; 1 if that is impossible within 30 s — the
    result then waits in --state-dir); a third exits at once (1).

    Exit status: 0 clean shutdown, 1 runtime failure, 2 usage or configuration error,
    3 authentication rejected (HTTP 401/403; with --exit-on-auth-failure also repeated silent
    closes right after connecting, Bencher's answer to a wrong key).

    \b
    Examples:
      runner-agent run --host https://api.bencher.dev --runner my-runner --key-file /etc/runner-agent/key
      BENCHER_RUNNER=my-runner BENCHER_RUNNER_KEY=bencher_runner_... runner-agent run
      runner-agent run --config /etc/runner-agent/config.toml --log-format json
      runner-agent run --host http://127.0.0.1:6610 --runner dev-runner --key-file key --exit-after-jobs 1
    """
    config = config_from_click(params)
    configure_logging(config.log_format, config.log_level,
                      secrets=[config.key] if config.key else ())
    os.environ.pop("BENCHER_RUNNER_KEY", None)  # nothing we spawn may inherit it
    try:
        config.require_runnable()
        endpoint = build_endpoint(config)
        read_key(config)
    except ConfigError as e:
        raise ConfigUsageError(str(e)) from None
    if config.source_of("key").kind == "flag":
        log.warning("the runner key was given with --key: other users can see it in the process "
                    "list; prefer --key-file or BENCHER_RUNNER_KEY")
    options = ExecOptions(
        allow_no_sandbox=config.danger_allow_no_sandbox,
        kill_grace=config.kill_grace,
        max_message_size=config.max_message_size,
        work_dir=config.state_dir / "work",
    )
    try:
        mode = check_sandbox(options)
    except SandboxUnavailableError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if mode == "host":
        log.warning("bubblewrap is not usable: benchmarks run ON THE HOST without isolation "
                    "(--danger-allow-no-sandbox)")
    try:
        outbox = Outbox(config.state_dir)
    except OutboxError as e:
        raise ConfigUsageError(f"state-dir: {e}") from None
    sys.exit(_serve(config, endpoint, outbox, options))


def _serve(config: Config, endpoint: Any, outbox: Outbox, options: ExecOptions) -> int:
    from runner_agent.host.layout import LayoutError
    from runner_agent.host.metrics import iteration_record
    from runner_agent.host.session import host_session
    from runner_agent.oci.cache import ImageCache
    from runner_agent.telemetry import AgentStats

    with ExitStack() as stack:
        try:
            host = stack.enter_context(host_session(
                state_dir=config.state_dir,
                cache_dir=config.cache_dir,
                tune=config.tune,
                tune_skip=config.tune_skip_names,
                benchmark_cpus=config.benchmark_cpus,
                housekeeping_cpus=config.housekeeping_cpus,
                metrics_file=config.metrics_file,
            ))
        except (LayoutError, ValueError) as e:
            raise ConfigUsageError(f"benchmark-cpus/housekeeping-cpus: {e}") from None
        try:
            cache = ImageCache(config.cache_dir, config.cache_max_bytes)
        except OSError as e:
            raise ConfigUsageError(f"cache-dir {config.cache_dir}: {e}") from None
        runner = OciJobRunner(cache, options, host.placer)
        stats = AgentStats(runner=config.runner or "")

        def on_iteration(prepared: PreparedJob, m: IterationMetrics) -> None:
            if host.metrics is None:
                return
            placed = prepared.placed  # host.placement.PlacedJob: its cgroup gives the job's usage
            host.metrics.append(iteration_record(
                str(prepared.job.uuid), m, prepared.plan.cpus,
                placed.cgroup if placed is not None else None,
                host.tuning_state(), datetime.now(UTC),
            ))

        agent = Agent(config, runner, outbox, endpoint=endpoint, stats=stats,
                      on_iteration=on_iteration)
        started = time.monotonic()
        log.info("runner-agent starting: runner %s at %s (sandbox: %s)", config.runner,
                 endpoint.url, options.mode or "auto")
        # Everything loaded so far lives for the whole process: keep it out of the garbage
        # collector's way so a collection never stalls a reply to the server.
        gc.collect()
        gc.freeze()
        try:
            code = trio.run(_main, agent, config, stats)
        except ConfigUsageError:
            raise
        except Exception:
            log.exception("runner-agent failed")
            return EXIT_FAILURE
        log.info("runner-agent exiting after %.0f s with status %d", time.monotonic() - started, code)
        return code
    return EXIT_FAILURE  # pragma: no cover - the with block always returns


async def _main(agent: Agent, config: Config, stats: Any) -> int:
    if not config.health_addr:
        return await agent.run()
    from runner_agent.health import HealthAddrError, HealthServerError, serve_health
    from runner_agent.telemetry import max_silence_for

    async with trio.open_nursery() as nursery:
        try:
            where = await nursery.start(
                partial(serve_health, max_silence_s=max_silence_for(config.poll_timeout)),
                config.health_addr, stats,
            )
        except (HealthAddrError, HealthServerError) as e:
            raise ConfigUsageError(f"health-addr: {e}") from None
        log.info("health endpoint on %s", where)
        code = await agent.run()
        nursery.cancel_scope.cancel()
    return code
