"""The preflight report: one ``Finding`` per check (what, found, why it matters, exact fix), the
overall fitness and its exit code, rendered as text lines or JSON."""

from __future__ import annotations

import enum
from typing import Any

from attrs import frozen

EXIT_FIT = 0
EXIT_WARNINGS = 10
EXIT_UNFIT = 11


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"  # adds noise; benchmarks still run
    FAIL = "fail"  # the machine cannot run jobs properly
    NA = "n/a"  # the control does not exist here; nothing to do


class Fitness(enum.Enum):
    FIT = "fit"
    USABLE = "usable-with-warnings"
    UNFIT = "unfit"

    @property
    def exit_code(self) -> int:
        return {Fitness.FIT: EXIT_FIT, Fitness.USABLE: EXIT_WARNINGS, Fitness.UNFIT: EXIT_UNFIT}[
            self
        ]


@frozen
class Finding:
    """The result of one check. ``fix`` is empty when nothing needs doing."""

    name: str
    status: Status
    checked: str
    found: str
    why: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status.value,
            "checked": self.checked,
            "found": self.found,
            "why": self.why,
            "fix": self.fix,
        }

    def line(self) -> str:
        text = f"[{self.status.value:>4}] {self.name}: {self.found} ({self.checked})"
        if self.why:
            text += f"\n       why: {self.why}"
        if self.fix:
            text += f"\n       fix: {self.fix}"
        return text


@frozen
class Report:
    """All findings of one preflight run plus the CPU layout it chose."""

    findings: tuple[Finding, ...]
    layout: str = ""

    @property
    def fitness(self) -> Fitness:
        statuses = {f.status for f in self.findings}
        if Status.FAIL in statuses:
            return Fitness.UNFIT
        if Status.WARN in statuses:
            return Fitness.USABLE
        return Fitness.FIT

    @property
    def exit_code(self) -> int:
        return self.fitness.exit_code

    def by_name(self, name: str) -> Finding:
        for finding in self.findings:
            if finding.name == name:
                return finding
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "fitness": self.fitness.value,
            "exit_code": self.exit_code,
            "layout": self.layout,
            "checks": [f.to_json() for f in self.findings],
        }

    def text(self) -> str:
        lines = [f.line() for f in self.findings]
        if self.layout:
            lines.append(self.layout)
        lines.append(f"verdict: {self.fitness.value}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for the agent's start-up log."""
        bad = [f"{f.name}={f.status.value}" for f in self.findings if f.status in (Status.WARN, Status.FAIL)]
        return f"preflight: {self.fitness.value}" + (f" ({', '.join(bad)})" if bad else "")
