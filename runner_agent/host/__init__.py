"""Host fitness for quiet benchmarks: preflight checks, CPU layout and pinning, per-job cgroups,
optional tuning with guaranteed restore, and the per-iteration metrics file.

Everything that reads the host takes its ``/sys``, ``/proc`` (and ``/etc``) roots as parameters so
tests run against fake trees.
"""
