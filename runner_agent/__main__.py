"""`python -m runner_agent` entry point."""

from runner_agent.cli import main

main()
