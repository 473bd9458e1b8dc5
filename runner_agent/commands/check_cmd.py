"""``runner-agent check``: the preflight report (text or ``--json``) with fitness exit codes, and
``--restore`` to put back host tuning a crashed agent left behind."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from runner_agent.config import DEFAULT_CONFIG_FILE, Config, ConfigError, load_config
from runner_agent.host.layout import LayoutError
from runner_agent.host.lock import DEFAULT_LOCK_PATH, TuningLockedError
from runner_agent.host.preflight import run_preflight
from runner_agent.host.report import EXIT_FIT, EXIT_UNFIT, EXIT_WARNINGS
from runner_agent.host.tuning import TuningError, recover_after_crash

EXIT_RESTORE_FAILED = 1


@click.command(
    "check",
    epilog=(
        "\b\n"
        f"Exit status:\n"
        f"  {EXIT_FIT}   fit: nothing adds benchmark noise\n"
        f"  {EXIT_WARNINGS}  usable with warnings: jobs run, numbers may be noisier (see the fixes)\n"
        f"  {EXIT_UNFIT}  unfit: jobs cannot run properly here (e.g. no working sandbox, disk full)\n"
        "  2   usage error (bad flag)\n"
        f"  With --restore: 0 restored (or nothing to restore), {EXIT_RESTORE_FAILED} a value "
        "could not be restored."
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    show_default="as `run`: env, config file, else /var/cache/runner-agent for root",
    help="Where images are cached (its free space is checked).",
)
@click.option("--benchmark-cpus", metavar="CPULIST", help="CPUs for jobs, e.g. 2-7,10.")
@click.option("--housekeeping-cpus", metavar="CPULIST", help="CPUs for the agent itself, e.g. 0-1.")
@click.option(
    "--steal-sample",
    type=click.FloatRange(0, 60),
    default=0.5,
    show_default=True,
    help="Seconds to sample hypervisor steal time.",
)
@click.option(
    "--restore",
    is_flag=True,
    help="Restore host settings recorded by a crashed `run --tune` (needs --state-dir), then exit.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    show_default="as `run`: env, config file, else /var/lib/runner-agent for root",
    help="The agent's state dir (holds the tuning record).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The agent's TOML config file (default: $RUNNER_AGENT_CONFIG, else "
    f"{DEFAULT_CONFIG_FILE} when it exists); its state-dir, cache-dir, benchmark-cpus "
    "and housekeeping-cpus are used.",
)
@click.option(
    "--lock-path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_LOCK_PATH,
    show_default=True,
    help="Host-wide tuning lock file.",
)
@click.option("--sys-root", type=click.Path(path_type=Path), default=Path("/sys"), hidden=True)
@click.option("--proc-root", type=click.Path(path_type=Path), default=Path("/proc"), hidden=True)
def check(
    as_json: bool,
    cache_dir: Path | None,
    benchmark_cpus: str | None,
    housekeeping_cpus: str | None,
    steal_sample: float,
    restore: bool,
    state_dir: Path | None,
    config_file: Path | None,
    lock_path: Path,
    sys_root: Path,
    proc_root: Path,
) -> None:
    """Is this machine fit to produce quiet benchmark numbers?

    Each line says what was checked, what was found, why it matters for benchmark noise and the
    exact fix.

    \b
    Examples:
      runner-agent check
      runner-agent check --json | jq '.checks[] | select(.status != "ok")'
      runner-agent check --benchmark-cpus 2-7 --housekeeping-cpus 0-1
      runner-agent check --restore --state-dir /var/lib/runner-agent   # undo a crashed agent's tuning
    """
    try:
        # the CPU flags stay out: a malformed list is reported as a layout finding, below
        config = run_settings({"state_dir": state_dir, "cache_dir": cache_dir}, config_file, os.environ)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    if restore:
        _restore(config.state_dir, sys_root, proc_root, lock_path, as_json)
        return
    try:
        report = run_preflight(
            cache_dir=config.cache_dir,
            sys_root=sys_root,
            proc_root=proc_root,
            benchmark_cpus=config.benchmark_cpus if benchmark_cpus is None else benchmark_cpus,
            housekeeping_cpus=(
                config.housekeeping_cpus if housekeeping_cpus is None else housekeeping_cpus
            ),
            steal_sample_seconds=steal_sample,
            state_dir=config.state_dir,
        )
    except LayoutError as error:
        raise click.UsageError(str(error)) from error
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(report.text())
    sys.exit(report.exit_code)


def run_settings(
    flags: Mapping[str, object | None],
    config_file: Path | None,
    env: Mapping[str, str],
    *,
    default_config_file: Path | None = DEFAULT_CONFIG_FILE,
) -> Config:
    """The settings `run` would use (flag > env > config file > default; root gets /var/lib and
    /var/cache), so `check` finds the tuning record, the cache and the CPU layout `run` uses.

    The implicit default config file is skipped when this user cannot read it (a service's
    root-only file, with `check` run as an ordinary user): it is not this user's `run` config.
    """
    if default_config_file is not None and not os.access(default_config_file, os.R_OK):
        default_config_file = None
    return load_config(flags, env, config_file, default_config_file=default_config_file)


def _restore(state_dir: Path, sys_root: Path, proc_root: Path, lock_path: Path, as_json: bool) -> None:
    try:
        results = recover_after_crash(state_dir, sys_root, proc_root, lock_path)
    except (TuningError, TuningLockedError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_RESTORE_FAILED)
    failed = [r for r in results if r.error is not None]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "restored": [r.change.to_json() for r in results if r.error is None],
                    "failed": [{**r.change.to_json(), "error": r.error} for r in failed],
                },
                indent=1,
            )
        )
    elif not results:
        click.echo(f"nothing to restore (no tuning record in {state_dir})")
    else:
        for r in results:
            status = f"FAILED: {r.error}" if r.error else "restored"
            click.echo(f"{r.change.knob}: {r.change.path} -> {r.change.original!r} {status}")
    sys.exit(EXIT_RESTORE_FAILED if failed else 0)
