"""The README stays true: its config reference matches the code, its commands exist."""

from __future__ import annotations

from click.testing import CliRunner

from runner_agent.cli import main
from runner_agent.config_reference import END, START, render_into
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"


def test_config_reference_is_current() -> None:
    text = README.read_text()
    assert render_into(text) == text, "README config reference is stale: run scripts/gen_readme.py"


def test_render_replaces_only_the_block() -> None:
    doc = f"intro\n{START}\nSTALE-TABLE\n{END}\noutro\n"
    out = render_into(doc)
    assert out.startswith("intro\n") and out.endswith(f"{END}\noutro\n")
    assert "STALE-TABLE" not in out and "`--poll-timeout`" in out


def test_quickstart_commands_exist() -> None:
    text = README.read_text()
    assert "./scripts/setup && .venv/bin/runner-agent demo" in text
    assert "./scripts/test" in text
    assert (REPO_ROOT / "scripts" / "setup").is_file()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci


def test_every_command_help_has_examples() -> None:
    runner = CliRunner()
    for name, command in main.commands.items():
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        if hasattr(command, "commands"):  # a group: check its subcommands
            for sub in command.commands:
                sub_result = runner.invoke(main, [name, sub, "--help"])
                assert sub_result.exit_code == 0, f"{name} {sub}"
                assert "Example" in sub_result.output, f"`{name} {sub} --help` has no examples"
        else:
            assert "Example" in result.output, f"`{name} --help` has no examples"
