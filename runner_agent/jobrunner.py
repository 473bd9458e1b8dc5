"""How the agent turns a claimed job into a result: image → plan (prepare), then iterations (run).

The driver needs the two halves separately: the image is pulled while the server's reply to
``running`` is awaited, and the benchmark may only start after that reply was an ``ack``
(PROTOCOL.md §9 item 4). `OciJobRunner` is the real implementation on `runner_agent.oci` and
`runner_agent.execute`; the `JobRunner` protocol is the seam the driver is written against.

Image source of a job (``config.registry``):
- ``file:///path/to/layout`` → a local OCI image layout (dev server, demo), ``digest`` names the
  manifest;
- anything else → the registry, repository = the project UUID, pulled by ``digest`` with the job's
  ``oci_token`` as bearer token (PROTOCOL.md §2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import attrs
import trio
from attrs import frozen

from runner_agent.errors import JobError
from runner_agent.execute import (
    ExecOptions,
    IterationMetrics,
    JobControl,
    JobOutcome,
    JobPlan,
    build_plan,
    prepare_in_time,
    run_plan,
)
from runner_agent.oci.image import PreparedImage
from runner_agent.protocol import ClaimedJob

log = logging.getLogger("runner_agent.job")

OnIteration = Callable[[IterationMetrics], None]


@frozen
class PreparedJob:
    """A job ready to run: its plan, plus what must be released afterwards."""

    job: ClaimedJob
    plan: JobPlan
    image: PreparedImage | None = None
    placed: Any = None  # runner_agent.host.placement.PlacedJob when a placer is used


class JobRunner(Protocol):
    """The driver's view of job execution."""

    async def prepare(self, job: ClaimedJob, control: JobControl) -> PreparedJob:
        """Pull/unpack the image and build the plan within the job's deadline (``control``'s;
        the driver starts it when the job arrives); raises `JobError` with a readable reason
        (the timeout error when out of time)."""
        ...

    async def run(self, prepared: PreparedJob, control: JobControl,
                  on_iteration: OnIteration | None = None) -> JobOutcome:
        """Run the iterations; benchmark problems are the outcome, never exceptions."""
        ...

    async def release(self, prepared: PreparedJob) -> None:
        """Give back what `prepare` took (cache lease, cgroup); must not raise."""
        ...


def image_source(job: ClaimedJob) -> Any:
    """The `runner_agent.oci` source for a job (see the module docstring)."""
    from runner_agent.oci.source import LayoutSource, RegistrySource

    config = job.config
    parts = urlsplit(config.registry)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise JobError(f"registry {config.registry!r}: a file:// layout must be on this machine")
        return LayoutSource(Path(unquote(parts.path)), config.digest)
    return RegistrySource(config.registry, str(config.project), config.digest, job.oci_token)


class OciJobRunner:
    """Real execution: `prepare_in_time` (`runner_agent.oci.prepare_image` under the job's
    deadline) + `build_plan` + `run_plan` (the iterations get what is left of it)."""

    def __init__(self, cache: Any, options: ExecOptions, placer: Any = None) -> None:
        self.cache = cache
        self.options = options
        self.placer = placer

    async def prepare(self, job: ClaimedJob, control: JobControl) -> PreparedJob:
        source = image_source(job)
        image: PreparedImage | None = None
        placed = None
        try:
            image = await prepare_in_time(source, self.cache, control, job.config.timeout)
            if image is None or control.cancel_requested:
                raise JobError(control.reason or "canceled while preparing the image")
            options = self.options
            if self.placer is not None:
                placed = self.placer.place(str(job.uuid), job.spec.cpu, job.spec.memory)
                options = attrs.evolve(options, placement=placed.placement)
            plan = build_plan(job, image, options)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release(PreparedJob(job, None, image, placed))  # type: ignore[arg-type]
            raise
        return PreparedJob(job, plan, image, placed)

    async def run(self, prepared: PreparedJob, control: JobControl,
                  on_iteration: OnIteration | None = None) -> JobOutcome:
        return await run_plan(prepared.plan, control, on_iteration=on_iteration)

    async def release(self, prepared: PreparedJob) -> None:
        if prepared.image is not None:
            prepared.image.release()
        if prepared.placed is not None and self.placer is not None:
            try:
                await self.placer.release(prepared.placed)
            except Exception as e:  # never let clean-up hide the job's result
                log.warning("job %s: releasing its placement failed: %s", prepared.job.uuid, e)
