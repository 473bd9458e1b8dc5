"""Running a job: the image pulled and the iterations run in order under the job's deadline
(`JobDeadline`: the timeout counted from the job's arrival, so the pull counts too) and the
driver's cancel, with Bencher's rules for stopping and for the outcome (failure beats
cancellation).

Memory stays bounded however many iterations there are: once the kept text passes twice the
message size limit, the results so far are cut to the limit (the terminal message could never
carry more), with the same rules as the final cut."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from runner_agent.errors import JobError
from runner_agent.execute.budget import fit_message, retained_chars
from runner_agent.execute.control import JobControl
from runner_agent.execute.iteration import Iteration
from runner_agent.execute.options import ExecOptions
from runner_agent.execute.plan import JobPlan, build_plan
from runner_agent.execute.results import (
    IterationMetrics,
    JobOutcome,
    iteration_output,
    metric_output,
)
from runner_agent.oci.cache import ImageCache
from runner_agent.oci.fetch import prepare_image
from runner_agent.oci.image import PreparedImage
from runner_agent.oci.source import ImageSource
from runner_agent.protocol import ClaimedJob, Completed, IterationOutput

log = logging.getLogger(__name__)


async def run_plan(
    plan: JobPlan,
    control: JobControl,
    *,
    on_iteration: Callable[[IterationMetrics], None] | None = None,
) -> JobOutcome:
    """Run ``plan``'s iterations within what is left of the job's deadline (``control``'s, else
    ``plan.timeout`` from now); never raises for benchmark problems (they are the outcome)."""
    results: list[IterationOutput] = []
    metrics: list[IterationMetrics] = []
    error: str | None = None
    retained = 0
    limit = plan.options.max_message_size
    deadline = control.start_deadline(plan.timeout)
    left = deadline.at - trio.current_time()
    if left < plan.timeout:
        log.info("job %s: %.1f s of its %g s timeout left for the iterations", plan.job,
                 max(0.0, left), deadline.timeout)
    with trio.move_on_at(deadline.at) as timeout_scope, control.guard():
        for index in range(plan.iterations):
            await trio.lowlevel.checkpoint()  # out of time or canceled: start no process
            log.info("job %s: iteration %d/%d", plan.job, index + 1, plan.iterations)
            iteration = Iteration(plan, index)
            try:
                done = await iteration.run()
            except JobError as exc:
                if plan.allow_failure:
                    log.warning("iteration %d failed (allow_failure, skipping): %s", index + 1, exc)
                    continue
                error = str(exc)
                break
            finally:
                if iteration.metrics is not None:
                    metrics.append(iteration.metrics)
                    if on_iteration is not None:
                        on_iteration(iteration.metrics)
            output: dict[str, str] | None = None
            if done.files is not None:
                output = {k: v.decode("utf-8", errors="replace") for k, v in done.files.items()}
            if plan.build_time or plan.file_size:
                output = metric_output(
                    done.metrics.wall_s if plan.build_time else None,
                    plan.benchmark_name, plan.file_size, done.file_sizes,
                )
            results.append(iteration_output(done.exit_code, done.stdout, done.stderr, output))
            retained += retained_chars(results[-1])
            if retained > 2 * limit:
                results = list(fit_message(Completed(job=plan.job, results=tuple(results)), limit).results)
                retained = sum(retained_chars(r) for r in results)
            if done.exit_code != 0 and not plan.allow_failure:
                error = f"Benchmark exited with non-zero exit code: {done.exit_code}"
                break
    if timeout_scope.cancelled_caught and error is None:
        error = deadline.error
        log.warning("job %s timed out after %.1f s", plan.job, trio.current_time() - deadline.started)
    if error is not None:
        return JobOutcome("failed", tuple(results), error, tuple(metrics))
    if control.cancel_requested:
        if control.outcome == "failed":
            return JobOutcome("failed", tuple(results), control.reason or "canceled", tuple(metrics))
        return JobOutcome("canceled", tuple(results), None, tuple(metrics))
    return JobOutcome("completed", tuple(results), None, tuple(metrics))


async def execute_job(
    job: ClaimedJob,
    image_source: ImageSource,
    cache: ImageCache,
    options: ExecOptions,
    control: JobControl,
    *,
    on_iteration: Callable[[IterationMetrics], None] | None = None,
) -> JobOutcome:
    """Prepare the image, plan and run the job; image and plan errors become a ``failed`` outcome
    with the readable error. Preparing the image is cancellable through ``control`` too."""
    image = None
    try:
        image = await prepare_in_time(image_source, cache, control, job.config.timeout)
    except JobError as exc:
        return JobOutcome("failed", (), str(exc))
    try:
        if image is None or control.cancel_requested:
            if control.outcome == "failed":
                return JobOutcome("failed", (), control.reason or "canceled")
            return JobOutcome("canceled", (), None)
        try:
            plan = build_plan(job, image, options)
        except JobError as exc:
            return JobOutcome("failed", (), str(exc))
        return await run_plan(plan, control, on_iteration=on_iteration)
    finally:
        if image is not None:
            image.release()


async def prepare_in_time(
    image_source: ImageSource, cache: ImageCache, control: JobControl, job_timeout: float
) -> PreparedImage | None:
    """`prepare_image` under the job's deadline (``control``'s, else ``job_timeout`` seconds
    from now) and its cancel: ``None`` when canceled; `JobError` with the timeout error when out
    of time."""
    deadline = control.start_deadline(job_timeout)
    image: PreparedImage | None = None
    with trio.move_on_at(deadline.at) as timeout_scope, control.guard():
        image = await prepare_image(image_source, cache)
    if timeout_scope.cancelled_caught and not control.cancel_requested:
        log.warning("job timed out after %.1f s while preparing its image",
                    trio.current_time() - deadline.started)
        raise JobError(deadline.error)
    return image
