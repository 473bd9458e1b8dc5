"""The `runner-agent` command-line interface: one click group; each command lives in its own module."""

from __future__ import annotations

import click

from runner_agent import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="runner-agent")
def main() -> None:
    """Turn this machine into a Bencher benchmark runner.

    \b
    Examples:
      runner-agent demo                      # see the whole loop on this machine
      runner-agent run --host https://api.bencher.dev --runner my-runner --key-file /etc/runner-agent/key
      runner-agent exec ./job.json --json    # run one job locally, print the wire results
      runner-agent check                     # is this machine fit for quiet benchmarks?
    """

from runner_agent.commands.config_cmd import config_group  # noqa: E402

main.add_command(config_group)

from runner_agent.commands.check_cmd import check  # noqa: E402

main.add_command(check)

from runner_agent.commands.install_service_cmd import install_service  # noqa: E402

main.add_command(install_service)

from runner_agent.commands.devserver_cmd import dev_server  # noqa: E402

main.add_command(dev_server)

from runner_agent.commands.run_cmd import run  # noqa: E402

main.add_command(run)

from runner_agent.commands.exec_cmd import exec_  # noqa: E402

main.add_command(exec_)

from runner_agent.commands.demo_cmd import demo  # noqa: E402

main.add_command(demo)
