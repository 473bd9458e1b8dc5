"""`runner-agent install-service`: write the systemd unit and the key's environment file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from runner_agent.config import ConfigError, load_config, read_key
from runner_agent.errors import EXIT_USAGE
from runner_agent.service import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_ENV_FILE,
    DEFAULT_RESTART_SEC,
    DEFAULT_UNIT_PATH,
    ENV_FILE_MODE,
    MAX_DRAIN_TIMEOUT_S,
    MIN_DRAIN_TIMEOUT_S,
    UNIT_FILE_MODE,
    ServiceError,
    ServiceSpec,
    find_executable,
    install,
    render_env_file,
    service_files,
    systemctl_commands,
)

# Only these variables feed install-service (the rest of RUNNER_AGENT_* belongs to `run`).
_ENV_VARS = ("BENCHER_HOST", "BENCHER_RUNNER", "BENCHER_RUNNER_KEY", "RUNNER_AGENT_KEY_FILE")


class InstallUsageError(click.ClickException):
    """Bad input to install-service: exit status 2."""

    exit_code = EXIT_USAGE


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


@click.command("install-service")
@click.option(
    "--host",
    metavar="URL",
    help="Bencher API URL. [env: BENCHER_HOST; default: https://api.bencher.dev]",
)
@click.option("--runner", metavar="ID", help="Runner UUID or slug. [env: BENCHER_RUNNER]")
@click.option(
    "--key",
    metavar="KEY",
    help="Runner key; prefer --key-file (a flag shows in `ps`). [env: BENCHER_RUNNER_KEY]",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="File holding the runner key; its content is copied into the environment file.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="TOML config file the service runs with (`run --config PATH`); must exist and be valid.",
)
@click.option(
    "--executable",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="runner-agent program for ExecStart=. [default: this program, or the one on PATH]",
)
@click.option(
    "--drain-timeout",
    type=click.IntRange(MIN_DRAIN_TIMEOUT_S, MAX_DRAIN_TIMEOUT_S),
    default=DEFAULT_DRAIN_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="TimeoutStopSec=: how long `systemctl stop` waits for the drain (the longest job "
    "you run plus time to deliver its result) before SIGKILL.",
)
@click.option(
    "--restart-sec",
    type=click.IntRange(1, 3600),
    default=DEFAULT_RESTART_SEC,
    show_default=True,
    metavar="SECONDS",
    help="RestartSec=: pause before a restart.",
)
@click.option(
    "--env-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_ENV_FILE,
    show_default=True,
    metavar="PATH",
    help="Where the environment file (mode 0600) goes.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/"),
    show_default=True,
    metavar="DIR",
    help="Install below this directory (for images and tests).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the files (key redacted) instead of writing them."
)
@click.option("--force", is_flag=True, help="Overwrite an existing environment file.")
def install_service(
    host: str | None,
    runner: str | None,
    key: str | None,
    key_file: Path | None,
    config_file: Path | None,
    executable: Path | None,
    drain_timeout: int,
    restart_sec: int,
    env_file: Path,
    root: Path,
    dry_run: bool,
    force: bool,
) -> None:
    """Install runner-agent as a systemd service.

    Writes /etc/systemd/system/runner-agent.service (Restart=always; stop = SIGTERM = drain, with
    TimeoutStopSec = --drain-timeout) and /etc/runner-agent/runner-agent.env holding BENCHER_HOST,
    BENCHER_RUNNER and BENCHER_RUNNER_KEY (created mode 0600), then prints the systemctl commands.

    \b
    Examples:
      runner-agent install-service --runner my-runner --key-file /root/runner.key
      runner-agent install-service --host https://bencher.example.com --runner my-runner \\
          --key-file /root/runner.key --config /etc/runner-agent/config.toml --drain-timeout 7500
      runner-agent install-service --runner my-runner --key-file key --dry-run
    """
    env = {name: os.environ[name] for name in _ENV_VARS if name in os.environ}
    flags: dict[str, object | None] = {
        "host": host,
        "runner": runner,
        "key": key,
        "key_file": key_file,
    }
    try:
        config = load_config(flags, env, None, default_config_file=None)
        if not config.runner:
            raise ConfigError("no runner given: pass --runner ID or set BENCHER_RUNNER")
        if config.key is None and config.key_file is None:
            raise ConfigError(
                "no runner key given: pass --key-file PATH (recommended), "
                "--key KEY or set BENCHER_RUNNER_KEY"
            )
        runner_key = read_key(config)
        service_host = config.host
        if config_file is not None:
            config_file = _absolute(config_file)
            on_disk = root / config_file.relative_to(config_file.anchor)
            if not on_disk.is_file():
                raise ConfigError(f"--config: {on_disk} does not exist; create it first")
            from_file = load_config({}, {}, on_disk, default_config_file=None)
            # BENCHER_HOST in the environment file outranks the config file when the service
            # runs, so it must carry the file's host unless --host/BENCHER_HOST say otherwise.
            # (Only the host: a key-file in the config stays the key's source, re-read at connect.)
            if host is None and "BENCHER_HOST" not in env:
                service_host = from_file.host
    except ConfigError as error:
        raise InstallUsageError(str(error)) from None
    try:
        spec = ServiceSpec(
            executable=_absolute(executable) if executable is not None else find_executable(),
            host=service_host,
            runner=config.runner,
            key=runner_key,
            env_file=_absolute(env_file),
            config_file=config_file,
            drain_timeout_s=drain_timeout,
            restart_sec=restart_sec,
        )
        if executable is not None and not (
            spec.executable.is_file() and os.access(spec.executable, os.X_OK)
        ):
            raise ServiceError(f"--executable {spec.executable} is not an executable file")
        files = service_files(spec, root=root, unit_path=DEFAULT_UNIT_PATH)
        if dry_run:
            click.echo(f"# --- {files.unit_path} (mode {UNIT_FILE_MODE:04o}) ---")
            click.echo(files.unit_text, nl=False)
            click.echo(f"# --- {files.env_path} (mode {ENV_FILE_MODE:04o}; key redacted here) ---")
            click.echo(render_env_file(spec, redact_key=True), nl=False)
            click.echo("# dry run: nothing written. After installing, run:")
            for command in systemctl_commands():
                click.echo(f"#   {command}")
            return
        install(files, force=force)
    except ServiceError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {files.unit_path}")
    click.echo(f"wrote {files.env_path} (mode {ENV_FILE_MODE:04o})")
    click.echo("now run:")
    for command in systemctl_commands():
        click.echo(f"  {command}")
