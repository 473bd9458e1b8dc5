"""Per-job placement: the benchmark CPUs for ``spec.cpu`` plus a cgroup limited to them and
``spec.memory``, handed to the executor as its ``Placement``; ``release`` kills and removes the group."""

from __future__ import annotations

import errno
import logging

import trio
from attrs import frozen

from runner_agent.execute.options import Placement
from runner_agent.host.cgroups import CgroupError, CgroupStats, JobCgroup, JobCgroupManager
from runner_agent.host.cpulist import format_cpulist
from runner_agent.host.layout import CpuGrant, CpuLayout, job_cpus

log = logging.getLogger(__name__)


@frozen
class PlacedJob:
    """What ``JobPlacer.place`` decided for one job."""

    placement: Placement
    grant: CpuGrant
    cgroup: JobCgroup | None


class JobPlacer:
    """Chooses CPUs and a cgroup for each job from the agent's ``CpuLayout``."""

    def __init__(self, layout: CpuLayout, cgroups: JobCgroupManager) -> None:
        self.layout = layout
        self.cgroups = cgroups

    def place(self, job_id: str, cpu: int | None, memory: int | None) -> PlacedJob:
        """CPUs for ``cpu`` (benchmark cores), a cgroup when available, else rlimit fallback.

        Without a cgroup the memory limit travels in ``Placement.memory_limit`` (an rlimit).
        """
        grant = job_cpus(self.layout, cpu)
        if grant.note:
            log.warning("job %s: %s", job_id, grant.note)
        cgroup = self.cgroups.create(job_id, grant.cpus, memory)
        placement = Placement(
            cpus=grant.cpus,
            cgroup_dir=cgroup.path if cgroup is not None else None,
            memory_limit=None if cgroup is not None else memory,
        )
        log.info(
            "job %s: CPUs %s, %s",
            job_id,
            format_cpulist(grant.cpus),
            f"cgroup {cgroup.path}" if cgroup is not None else "no cgroup (affinity + rlimits)",
        )
        return PlacedJob(placement, grant, cgroup)

    async def release(self, placed: PlacedJob, *, busy_limit: float = 10.0) -> CgroupStats | None:
        """Read the group's usage, kill what is left in it and remove it. None without a cgroup.

        Killed processes leave the group asynchronously, so removal is retried while it is busy
        (up to ``busy_limit`` seconds, then ``CgroupError``).
        """
        if placed.cgroup is None:
            return None
        stats: CgroupStats | None = None
        try:
            stats = placed.cgroup.stats()
        except (CgroupError, ValueError) as error:
            log.warning("cannot read usage of %s: %s", placed.cgroup.path, error)
        placed.cgroup.kill()
        delay = 0.001
        with trio.move_on_after(busy_limit) as scope:
            while True:
                try:
                    placed.cgroup.remove()
                    break
                except CgroupError as error:
                    if error.errno != errno.EBUSY:
                        raise
                await trio.sleep(delay)
                delay = min(delay * 2, 0.1)
        if scope.cancelled_caught:
            raise CgroupError(errno.EBUSY, f"cgroup {placed.cgroup.path} still busy after {busy_limit}s")
        return stats
