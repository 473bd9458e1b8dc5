"""One module per `runner-agent` subcommand (registered in `runner_agent.cli`)."""
