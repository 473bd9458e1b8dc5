"""Job execution: the plan (argv/env/workdir), sandbox (bubblewrap) and host modes, one iteration
(process group, bounded output, kill ladder, metrics), results and the message budget."""

from runner_agent.execute.control import JobControl
from runner_agent.execute.options import ExecOptions, Placement, SandboxMode
from runner_agent.execute.plan import JobPlan, build_plan, merge_env, resolve_argv
from runner_agent.execute.results import IterationMetrics, JobOutcome
from runner_agent.execute.runner import execute_job, run_plan
from runner_agent.execute.sandbox import check_sandbox

__all__ = [
    "ExecOptions",
    "IterationMetrics",
    "JobControl",
    "JobOutcome",
    "JobPlan",
    "Placement",
    "SandboxMode",
    "build_plan",
    "check_sandbox",
    "execute_job",
    "merge_env",
    "resolve_argv",
    "run_plan",
]
