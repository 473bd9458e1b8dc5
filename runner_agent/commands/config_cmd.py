"""`runner-agent config show`, and the click options generated from `runner_agent.config.SETTINGS`.

`setting_options` adds one flag per setting (plus ``--config``) to a command; `config_from_click`
turns the parsed flags into the effective `Config` (flag > env > file > default), exiting 2 with a
message naming the key on any configuration error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from runner_agent.config import SETTINGS, Config, ConfigError, Setting, load_config, redacted
from runner_agent.config_reference import markdown_reference
from runner_agent.errors import EXIT_USAGE

F = TypeVar("F", bound=Callable[..., Any])


class ConfigUsageError(click.ClickException):
    """A configuration error reported by click with exit status 2."""

    exit_code = EXIT_USAGE

    def format_message(self) -> str:
        return f"configuration error: {self.message}"


def _click_type(setting: Setting) -> Any:
    if setting.type == "int":
        return int
    if setting.type == "float":
        return float
    if setting.type == "choice":
        return click.Choice(setting.choices, case_sensitive=False)
    if setting.type == "path":
        return click.Path(path_type=Path, dir_okay=setting.name.endswith("_dir"))
    return str


def _help(setting: Setting) -> str:
    text = setting.help
    if setting.default is not None and not isinstance(setting.default, bool):
        text += f" [default: {setting.default}]"
    return f"{text} [env: {setting.env_var}]"


def setting_options(func: F) -> F:
    """Decorate a click command with ``--config`` and one option per setting (all defaulting to None)."""
    for setting in reversed(SETTINGS):
        if setting.type == "bool":
            opt = click.option(setting.flag, setting.name, is_flag=True, default=None,
                               help=_help(setting))
        else:
            opt = click.option(setting.flag, setting.name, type=_click_type(setting), default=None,
                               metavar=setting.name.split("_")[-1].upper(), help=_help(setting))
        func = opt(func)
    func = click.option(
        "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help="TOML config file (keys = flag names). Default: /etc/runner-agent/config.toml if it "
        "exists. [env: RUNNER_AGENT_CONFIG]",
    )(func)
    return func


def config_from_click(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build the Config from a command's parsed parameters; config errors exit 2."""
    flags = {s.name: params.get(s.name) for s in SETTINGS}
    try:
        return load_config(flags, os.environ if env is None else env, params.get("config_file"))
    except ConfigError as e:
        raise ConfigUsageError(str(e)) from None


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(key, display value, source) for every setting; the key is redacted."""
    rows = []
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        rows.append((setting.file_key, redacted(value, setting), config.source_of(setting.name).describe()))
    return rows


@click.group("config")
def config_group() -> None:
    """Inspect the agent's configuration.

    \b
    Examples:
      runner-agent config show
      runner-agent config show --config /etc/runner-agent/config.toml --json
    """


@config_group.command("show")
@setting_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def show(as_json: bool, **params: Any) -> None:
    """Print the effective configuration and where each value came from (key redacted).

    Takes the same flags as `runner-agent run`, so you can see what a given command line would use.
    Precedence: flag > environment > config file > default.

    \b
    Examples:
      runner-agent config show
      runner-agent config show --config ./agent.toml --json
      BENCHER_RUNNER=my-runner runner-agent config show --poll-timeout 30
    """
    config = config_from_click(params)
    rows = describe(config)
    if as_json:
        obj = {
            "config_file": str(config.config_file) if config.config_file else None,
            "settings": {k: {"value": v, "source": s} for k, v, s in rows},
        }
        click.echo(json.dumps(obj, indent=2))
        return
    click.echo(f"# config file: {config.config_file or '(none)'}")
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(48, max(len(v) for _, v, _ in rows))
    for key, value, source in rows:
        click.echo(f"{key:<{width}}  {value:<{vwidth}}  ({source})")


@config_group.command("reference")
def reference() -> None:
    """Print the configuration reference (Markdown), generated from the code.

    Precedence: flag > environment > config file > default. The config file is TOML with the keys
    below (``poll-timeout = 30``; ``poll_timeout`` works too).

    \b
    Examples:
      runner-agent config reference > docs/configuration.md
    """
    click.echo(markdown_reference())
