"""Exception types shared across the agent, and the process exit codes."""

from __future__ import annotations

# Exit codes (DESIGN.md): 0 clean shutdown, 1 runtime failure, 2 usage/config error (click),
# and a distinct code when the server rejected our credentials.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH_REJECTED = 3


class AgentError(Exception):
    """Base class of the agent's own errors."""


class JobError(AgentError):
    """Something about one job failed; ``str(error)`` becomes the job's readable ``error`` text.

    Raising it fails that job (``failed`` on the wire) and never the agent.
    """


class ImageError(JobError):
    """The job's image could not be pulled, verified or unpacked."""


class SandboxUnavailableError(AgentError):
    """No usable sandbox and host mode was not allowed; the message says how to fix it."""
