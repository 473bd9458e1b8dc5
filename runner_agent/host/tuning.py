"""Optional host tuning (``--tune``, root only): apply the quiet values ``check`` recommends, record
every original value in the state dir *before* changing it, and restore them on exit, on the next
start after a crash, or via ``runner-agent check --restore``.

Theory of operation: ``Tuner.apply`` takes the host-wide lock, restores any leftover record first
(a previous run crashed), then for each knob file that is not already quiet: append
``(path, original, applied)`` to the record, write the record atomically (fsync), and only then
write the new value. ``restore`` writes the originals back in reverse order and deletes the record
only when every one succeeded; failures stay recorded for the next attempt. C-states are held by
keeping ``/dev/cpu_dma_latency`` open with 0, which the kernel releases when the fd closes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Any

from attrs import frozen

from runner_agent.fsutil import remove_durably
from runner_agent.host.knobs import IRQ_STEERING, KNOB_NAMES, KNOBS, Setting, kernel_work_settings
from runner_agent.host.layout import CpuLayout
from runner_agent.host.lock import DEFAULT_LOCK_PATH, HostLock
from runner_agent.host.statefile import write_json_atomic

log = logging.getLogger(__name__)

RECORD_NAME = "tuning-record.json"
RECORD_VERSION = 1
CSTATES = "cstates"
CPUSET_PARTITION = "cpuset_partition"
TUNABLE_NAMES = (*KNOB_NAMES, CSTATES, IRQ_STEERING, CPUSET_PARTITION)


class TuningError(RuntimeError):
    """Tuning cannot be applied or a record cannot be trusted; the message says why."""


CHANGE_KINDS = ("write", "rmdir")


@frozen
class TuningChange:
    """One change for knob ``knob``: ``kind`` "write" set ``path`` from ``original`` to ``applied``
    (undo: write ``original``); "rmdir" created the directory ``path`` (undo: remove it)."""

    knob: str
    path: str
    original: str
    applied: str
    kind: str = "write"

    def to_json(self) -> dict[str, str]:
        return {
            "knob": self.knob,
            "path": self.path,
            "original": self.original,
            "applied": self.applied,
            "kind": self.kind,
        }


@frozen
class TuningNote:
    """A knob that was not changed, and why (already quiet, skipped, absent, or failed)."""

    knob: str
    outcome: str  # "already", "skipped", "absent", "failed"
    detail: str


@frozen
class RestoreResult:
    """The outcome of restoring one recorded change; ``error`` is None on success."""

    change: TuningChange
    error: str | None = None


def _record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_NAME


def _parse_record(path: Path, allowed_roots: tuple[Path, ...]) -> list[TuningChange]:
    """Read and validate a record; paths outside the host roots are refused (never written)."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TuningError(f"tuning record {path} is unreadable: {error}") from error
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        raise TuningError(f"tuning record {path}: unknown format (expected version {RECORD_VERSION})")
    raw = data.get("changes")
    if not isinstance(raw, list):
        raise TuningError(f"tuning record {path}: 'changes' must be a list")
    changes: list[TuningChange] = []
    resolved_roots = [r.resolve() for r in allowed_roots]
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("knob", "path", "original", "applied")
        ):
            raise TuningError(f"tuning record {path}: change #{i} needs string knob/path/original/applied")
        target = Path(item["path"]).resolve()
        if not any(target.is_relative_to(root) for root in resolved_roots):
            raise TuningError(
                f"tuning record {path}: change #{i} names {item['path']}, outside "
                f"{', '.join(map(str, allowed_roots))}; refusing to write it"
            )
        kind = item.get("kind", "write")
        if kind not in CHANGE_KINDS:
            raise TuningError(f"tuning record {path}: change #{i} has unknown kind {kind!r}")
        changes.append(TuningChange(item["knob"], item["path"], item["original"], item["applied"], kind))
    return changes


def _write_value(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _remove_dir(path: Path) -> None:
    """Remove a directory the tuner created, and first any directories left inside it: a crash
    mid-job leaves the job's (empty) cgroup in the partition cgroup, and cgroupfs refuses to remove
    a cgroup with children. Only ``rmdir`` is used, so a non-empty directory (a cgroup with live
    processes, or any file on a normal file system) raises and the change stays recorded."""
    try:
        inner = [Path(top) / name for top, dirs, _ in os.walk(path, topdown=False) for name in dirs]
        for child in inner:
            os.rmdir(child)
        os.rmdir(path)
    except FileNotFoundError:
        return


def _undo(change: TuningChange) -> None:
    if change.kind == "rmdir":
        _remove_dir(Path(change.path))
    else:
        _write_value(Path(change.path), change.original)


def _restore_changes(changes: list[TuningChange]) -> list[RestoreResult]:
    results: list[RestoreResult] = []
    for change in reversed(changes):
        try:
            _undo(change)
        except OSError as error:
            results.append(RestoreResult(change, f"{error.strerror or error}"))
            log.error("tuning: could not restore %s to %r: %s", change.path, change.original, error)
        else:
            results.append(RestoreResult(change))
            log.info("tuning: restored %s to %r", change.path, change.original)
    return results


def _restore_record(state_dir: Path, roots: tuple[Path, ...]) -> list[RestoreResult]:
    """Restore a record if one exists; keep the failures recorded, delete it when all succeeded."""
    path = _record_path(state_dir)
    if not path.exists():
        return []
    changes = _parse_record(path, roots)
    results = _restore_changes(changes)
    failed = [r.change for r in reversed(results) if r.error is not None]
    if failed:
        write_json_atomic(path, _record_json(failed))
    else:
        remove_durably(path)
    return results


def _record_json(changes: list[TuningChange]) -> dict[str, Any]:
    return {"version": RECORD_VERSION, "pid": os.getpid(), "changes": [c.to_json() for c in changes]}


def recover_after_crash(
    state_dir: Path,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    lock_path: Path = DEFAULT_LOCK_PATH,
) -> list[RestoreResult]:
    """Restore whatever a crashed run left recorded in ``state_dir`` (under the host lock).

    Returns one result per recorded change (empty when nothing was left). Raises
    ``TuningLockedError`` when another agent is tuning, ``TuningError`` for an untrustworthy record.
    """
    if not _record_path(state_dir).exists():
        return []
    with HostLock(lock_path):
        return _restore_record(state_dir, (sys_root, proc_root))


class Tuner:
    """Applies the recommended settings and guarantees they are put back.

    Use as a context manager (``with Tuner(...) as tuner: tuner.apply()``) or call ``restore``.
    """

    def __init__(
        self,
        sys_root: Path,
        proc_root: Path,
        state_dir: Path,
        lock_path: Path = DEFAULT_LOCK_PATH,
        skip: Collection[str] = (),
        *,
        dev_root: Path = Path("/dev"),
        require_root: bool = True,
    ) -> None:
        unknown = sorted(set(skip) - set(TUNABLE_NAMES))
        if unknown:
            raise ValueError(
                f"unknown --tune-skip name(s) {', '.join(unknown)} (known: {', '.join(TUNABLE_NAMES)})"
            )
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.state_dir = state_dir
        self.skip = frozenset(skip)
        self.dev_root = dev_root
        self.require_root = require_root
        self.notes: list[TuningNote] = []
        self.recovered: list[RestoreResult] = []
        self._lock = HostLock(lock_path)
        self._changes: list[TuningChange] = []
        self._dma_fd: int | None = None

    @property
    def changes(self) -> tuple[TuningChange, ...]:
        return tuple(self._changes)

    @property
    def active(self) -> bool:
        return bool(self._changes) or self._dma_fd is not None

    def state(self) -> dict[str, str]:
        """Knob → applied value, for the metrics file ("tuning state")."""
        state = {c.knob: c.applied for c in self._changes}
        if self._dma_fd is not None:
            state[CSTATES] = "held"
        return state

    def _save(self) -> None:
        write_json_atomic(_record_path(self.state_dir), _record_json(self._changes))

    def record_write(self, knob: str, path: Path, original: str, applied: str) -> bool:
        """Record ``original`` durably, then write ``applied`` to ``path``.

        On a failed write the record entry is dropped again, a ``failed`` note says why, and the
        result is False. Only while the lock is held (inside ``apply``/``apply_cpu_scoped``).
        """
        if not self._lock.held:
            raise TuningError("tuning changes need the host lock: call apply() first")
        change = TuningChange(knob, str(path), original, applied)
        self._changes.append(change)
        self._save()  # the original is durable before the host changes
        try:
            _write_value(path, applied)
        except OSError as error:
            self._changes.pop()
            self._save()
            self.notes.append(
                TuningNote(knob, "failed", f"cannot write {applied!r} to {path}: {error.strerror or error}")
            )
            log.warning("tuning: %s: cannot write %s: %s", knob, path, error)
            return False
        log.info("tuning: %s: %s %r -> %r", knob, path, original, applied)
        return True

    def record_mkdir(self, knob: str, path: Path) -> bool:
        """Record, then create, the directory ``path`` (restore removes it)."""
        if not self._lock.held:
            raise TuningError("tuning changes need the host lock: call apply() first")
        self._changes.append(TuningChange(knob, str(path), "", "", "rmdir"))
        self._save()
        try:
            path.mkdir()
        except OSError as error:
            self._changes.pop()
            self._save()
            self.notes.append(TuningNote(knob, "failed", f"cannot create {path}: {error.strerror or error}"))
            return False
        return True

    def note(self, knob: str, outcome: str, detail: str) -> None:
        self.notes.append(TuningNote(knob, outcome, detail))

    def _apply_setting(self, name: str, setting: Setting) -> None:
        try:
            current = setting.read()
        except (OSError, ValueError) as error:
            self.notes.append(TuningNote(name, "failed", f"cannot read {setting.path}: {error}"))
            return
        if setting.ok(current):
            self.notes.append(TuningNote(name, "already", f"{setting.path} is {current}"))
            return
        self.record_write(name, setting.path, current, setting.target)

    def _hold_cstates(self) -> None:
        path = self.dev_root / "cpu_dma_latency"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as error:
            self.notes.append(TuningNote(CSTATES, "absent", f"cannot open {path}: {error.strerror or error}"))
            return
        try:
            os.write(fd, struct.pack("=i", 0))
        except OSError as error:
            os.close(fd)
            self.notes.append(TuningNote(CSTATES, "failed", f"cannot write 0 to {path}: {error.strerror or error}"))
            return
        self._dma_fd = fd
        log.info("tuning: cstates: holding %s at 0 µs until exit", path)

    def apply(self) -> list[TuningChange]:
        """Take the lock, recover any leftover record, then tune. Returns the changes made.

        What could not be done is in ``notes``. Raises ``TuningError`` when not root and
        ``TuningLockedError`` when another agent holds the lock.
        """
        if self.require_root and os.geteuid() != 0:
            raise TuningError("--tune needs root (the settings are host-wide kernel files)")
        self._lock.acquire()
        try:
            self.recovered = _restore_record(self.state_dir, (self.sys_root, self.proc_root))
            for result in self.recovered:
                if result.error is not None:
                    raise TuningError(
                        f"a previous run's change to {result.change.path} could not be restored "
                        f"({result.error}); fix it, then run runner-agent check --restore"
                    )
            for knob in KNOBS:
                if knob.name in self.skip:
                    self.notes.append(TuningNote(knob.name, "skipped", "--tune-skip"))
                    continue
                settings = knob.settings(self.sys_root, self.proc_root)
                if not settings:
                    self.notes.append(TuningNote(knob.name, "absent", "not present on this kernel/platform"))
                for setting in settings:
                    self._apply_setting(knob.name, setting)
            if CSTATES in self.skip:
                self.notes.append(TuningNote(CSTATES, "skipped", "--tune-skip"))
            else:
                self._hold_cstates()
        except BaseException:
            self.restore()
            raise
        return list(self._changes)

    def apply_cpu_scoped(self, layout: CpuLayout) -> list[TuningChange]:
        """Steer IRQs and unbound workqueues to ``layout``'s housekeeping cores (after ``apply``,
        and after the layout was detected, since turning SMT off changes the online CPUs).

        Unmovable IRQs (the kernel refuses with EIO) are noted and left alone.
        """
        if not self._lock.held:
            raise TuningError("apply() must succeed before apply_cpu_scoped()")
        before = len(self._changes)
        if IRQ_STEERING in self.skip:
            self.notes.append(TuningNote(IRQ_STEERING, "skipped", "--tune-skip"))
        elif not layout.has_isolation:
            self.notes.append(TuningNote(IRQ_STEERING, "skipped", "no separate housekeeping cores"))
        else:
            settings = kernel_work_settings(self.sys_root, self.proc_root, layout.housekeeping)
            if not settings:
                self.notes.append(TuningNote(IRQ_STEERING, "absent", "no /proc/irq or workqueue cpumask"))
            for setting in settings:
                self._apply_setting(IRQ_STEERING, setting)
        return self._changes[before:]

    def restore(self) -> list[RestoreResult]:
        """Put every original value back, release the C-state hold and the lock."""
        results: list[RestoreResult] = []
        try:
            if self._lock.held:
                results = _restore_record(self.state_dir, (self.sys_root, self.proc_root))
                self._changes = [r.change for r in reversed(results) if r.error is not None]
        finally:
            if self._dma_fd is not None:
                os.close(self._dma_fd)
                self._dma_fd = None
            self._lock.release()
        return results

    def __enter__(self) -> Tuner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
