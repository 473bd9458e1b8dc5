from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from runner_agent import __version__
from runner_agent.cli import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_examples() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output


def test_console_script_module_entry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runner_agent", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout
