"""Job execution: the plan (argv/env/workdir), sandbox (bubblewrap) and host modes, one iteration
(process group, bounded output, kill ladder, metrics), results and the message budget.

Driver API: `check_sandbox` once at start-up, `JobControl(JobDeadline.starting_now(timeout))`
when the job arrives, `prepare_in_time` + `build_plan` + `run_plan` (or `execute_job`, which does
all three) per job, `JobControl.request_cancel` from any task, and `JobOutcome.to_message` for the
terminal message.

Choices (and where they differ from Bencher's reference runner):
- Writable root: bubblewrap 0.8 has no ``--overlay``, so each iteration gets a kernel overlayfs
  (lower = the shared read-only rootfs, upper = a scratch dir) mounted by the agent (root needed)
  and bound as ``/``; ``file_paths`` are read from it after the iteration, then it is removed.
  ``/tmp`` is part of that private overlay (so files written there can be collected).
- Missing ``file_paths`` are skipped with a warning, and no file at all gives no ``output`` —
  exactly like the reference runner (the server then parses stdout).
- ``iter`` 0 runs nothing and completes (reference: ``iter`` or 1, no minimum).
- A non-zero exit stops the job unless ``allow_failure``; a failure beats a cancellation.
- The timeout covers the whole job, image pull included, counted from the job's arrival (when
  ``running`` is sent; `JobDeadline`), so we fail it before the server's ``timeout + 60 s`` hard
  cancel (the reference times each iteration); its error is
  ``Execution error: Benchmark timeout: job timed out after N s``.
- An iteration killed by cancel/timeout produces no result (as in the reference).
- ``build_time`` is the iteration's wall time (the reference also counts its image pull).
- Metrics: ``busybox time`` (host ``/bin/busybox``; in the sandbox bound read-only at
  ``/.runner-agent/busybox``) runs the benchmark and reports its own peak RSS and CPU times;
  without busybox they come from ``wait4`` (then CPU of sandboxed processes is not counted and
  peak RSS is at least the agent's own size — kernel accounting of spawned processes).

Host mode (only with ``--danger-allow-no-sandbox``, or a spec without sandbox) is not isolation:
the program is resolved inside the image but runs on the host filesystem with the host's
libraries for anything it execs by absolute path, the host network, and the agent's privileges;
only relative writes land in the private overlay (absolute paths hit the host). The environment
is cleared (image + job env only). Escapees are found because the agent becomes a child
subreaper; an unrelated child the agent spawned itself during a host-mode iteration would be
mistaken for an escapee (the agent runs one job at a time and spawns nothing else meanwhile).
"""

from runner_agent.execute.control import JobControl, JobDeadline, timeout_error
from runner_agent.execute.options import ExecOptions, Placement, SandboxMode
from runner_agent.execute.plan import JobPlan, build_plan, merge_env, resolve_argv
from runner_agent.execute.results import IterationMetrics, JobOutcome
from runner_agent.execute.runner import execute_job, prepare_in_time, run_plan
from runner_agent.execute.sandbox import check_sandbox

__all__ = [
    "ExecOptions",
    "IterationMetrics",
    "JobControl",
    "JobDeadline",
    "JobOutcome",
    "JobPlan",
    "Placement",
    "SandboxMode",
    "build_plan",
    "check_sandbox",
    "execute_job",
    "merge_env",
    "prepare_in_time",
    "resolve_argv",
    "run_plan",
    "timeout_error",
]
