"""A Bencher-compatible runner channel server for local use and the agent's tests
(``runner-agent dev-server``): see :mod:`runner_agent.devserver.server`."""

from runner_agent.devserver.auth import RateLimits, RunnerIdentity, generate_key
from runner_agent.devserver.connection import Channel, ConnState, FrameRecord
from runner_agent.devserver.faults import Faults
from runner_agent.devserver.server import ConnectionAttempt, DevServer, runner_uuid_for
from runner_agent.devserver.settings import DevServerSettings
from runner_agent.devserver.store import JobRecord, JobStatus, TerminalReceipt

__all__ = [
    "Channel",
    "ConnState",
    "ConnectionAttempt",
    "DevServer",
    "DevServerSettings",
    "Faults",
    "FrameRecord",
    "JobRecord",
    "JobStatus",
    "RateLimits",
    "RunnerIdentity",
    "TerminalReceipt",
    "generate_key",
    "runner_uuid_for",
]
