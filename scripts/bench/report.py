"""Builds ``scripts/bench/README.md`` (and one PNG chart per table under ``scripts/bench/charts/``)
from the per-area result files the benchmark scripts write; ``scripts/bench/run_all`` calls it
after running every benchmark. Usable alone: ``.venv/bin/python scripts/bench/report.py``.

Inputs, per area (an area is a benchmark script's stem, e.g. ``pull`` for ``pull.py``, or any
``results-<area>.*`` file): ``results-<area>.json`` if it exists, else ``results-<area>.md``
(included verbatim, without a chart). The JSON shape (all keys but ``tables`` optional)::

    {
      "title": "Image pull",                       # section heading (default: the area)
      "description": "markdown: what is measured, how",
      "machine": "free text about the machine",
      "tables": [
        {
          "name": "cold pull + unpack",            # table title (unique within the area)
          "unit": "ms",                            # unit of every value in the table
          "baseline": "skopeo+umoci",              # the row the ratios are taken against
          "lower_is_better": true,                 # default true
          "target": {"row": "agent", "stat": "median", "op": "<=", "value": 2.0},
          # or several: "targets": [{...}, {"row": "agent", "stat": "ratio", "op": "<=", "value": 1}]
          "rows": [
            {"name": "agent", "samples": [12.1, 11.8, ...]},     # raw samples, or
            {"name": "skopeo+umoci", "median": 30.2, "p95": 33.0, "n": 5}   # summaries
          ]
        }
      ],
      "notes": "markdown shown after the tables"
    }

For each row the README shows median, p95 (nearest-rank over ``samples`` when given), n and
the ratio of its median to the baseline row's median measured in the same run; a ``target``
(``stat`` is ``median``, ``p95`` or ``ratio`` — the row's median over the baseline's, which needs a
``baseline`` —, ``op`` is ``<=``/``>=``/``<``/``>``) adds a met/missed line; ``targets`` (a list)
gives a table several, e.g. one per row.
A malformed file is reported in the README (and on stderr) with the reason, never skipped silently.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import platform
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import evolve, field, frozen

BENCH_DIR = Path(__file__).resolve().parent
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}


class ResultsError(ValueError):
    """A results file does not have the documented shape."""


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (q in [0, 1]); values must be non-empty."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@frozen
class Row:
    name: str
    median: float
    p95: float | None
    n: int | None


@frozen
class Target:
    row: str
    stat: str
    op: str
    value: float

    def met(self, row: Row, ratio: float | None = None) -> bool | None:
        """Whether ``row`` meets the target; ``ratio`` is its median over the baseline's."""
        actual = {"median": row.median, "p95": row.p95, "ratio": ratio}[self.stat]
        return None if actual is None else OPS[self.op](actual, self.value)

    def describe(self, unit: str) -> str:
        if self.stat == "ratio":
            return f"{self.row} median / baseline median {self.op} {fmt(self.value)}"
        return f"{self.row} {self.stat} {self.op} {fmt(self.value)} {unit}".rstrip()


@frozen
class Table:
    name: str
    unit: str
    rows: tuple[Row, ...]
    baseline: str | None = None
    lower_is_better: bool = True
    targets: tuple[Target, ...] = ()

    @property
    def target(self) -> Target | None:
        """The first target (most tables have one)."""
        return self.targets[0] if self.targets else None

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def ratio(self, row: Row) -> float | None:
        base = self.row(self.baseline) if self.baseline else None
        if base is None or base.median == 0:
            return None
        return row.median / base.median


@frozen
class AreaResults:
    area: str
    title: str
    tables: tuple[Table, ...] = ()
    description: str = ""
    machine: str = ""
    notes: str = ""
    markdown: str | None = None  # a .md-only area
    source: str = ""
    errors: tuple[str, ...] = field(factory=tuple)


# --- parsing (the boundary: every problem is named) ----------------------------------------------


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ResultsError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _text(obj: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ResultsError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ResultsError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def parse_row(obj: object, where: str) -> Row:
    data = _object(obj, where)
    name = _text(data, "name", where)
    if "samples" in data:
        samples = data["samples"]
        if not isinstance(samples, list) or not samples:
            raise ResultsError(f"{where}.samples: expected a non-empty list of numbers")
        values = [_number(v, f"{where}.samples[{i}]") for i, v in enumerate(samples)]
        return Row(name, median(values), nearest_rank(values, 0.95), len(values))
    if "median" not in data:
        raise ResultsError(f"{where}: a row needs 'samples' or 'median'")
    p95 = _number(data["p95"], f"{where}.p95") if data.get("p95") is not None else None
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ResultsError(f"{where}.n: expected a positive integer, got {n!r}")
    return Row(name, _number(data["median"], f"{where}.median"), p95, n)


def parse_target(obj: object, where: str, table: Table) -> Target:
    data = _object(obj, where)
    target = Target(
        row=_text(data, "row", where),
        stat=_text(data, "stat", where, "median"),
        op=_text(data, "op", where, "<="),
        value=_number(data.get("value"), f"{where}.value"),
    )
    if target.stat not in ("median", "p95", "ratio"):
        raise ResultsError(f"{where}.stat: 'median', 'p95' or 'ratio', got {target.stat!r}")
    if target.stat == "ratio" and table.baseline is None:
        raise ResultsError(f"{where}.stat: a 'ratio' target needs the table's 'baseline'")
    if target.op not in OPS:
        raise ResultsError(f"{where}.op: one of {sorted(OPS)}, got {target.op!r}")
    if table.row(target.row) is None:
        raise ResultsError(f"{where}.row: no row named {target.row!r}")
    return target


def parse_table(obj: object, where: str) -> Table:
    data = _object(obj, where)
    rows_obj = data.get("rows")
    if not isinstance(rows_obj, list) or not rows_obj:
        raise ResultsError(f"{where}.rows: expected a non-empty list")
    rows = tuple(parse_row(r, f"{where}.rows[{i}]") for i, r in enumerate(rows_obj))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ResultsError(f"{where}.rows: row names repeat: {names}")
    baseline = data.get("baseline")
    if baseline is not None and baseline not in names:
        raise ResultsError(f"{where}.baseline: no row named {baseline!r} (rows: {names})")
    lower = data.get("lower_is_better", True)
    if not isinstance(lower, bool):
        raise ResultsError(f"{where}.lower_is_better: expected true or false")
    table = Table(_text(data, "name", where), _text(data, "unit", where, ""), rows, baseline, lower)
    targets: list[Target] = []
    if data.get("target") is not None:
        targets.append(parse_target(data["target"], f"{where}.target", table))
    if data.get("targets") is not None:
        listed = data["targets"]
        if not isinstance(listed, list):
            raise ResultsError(f"{where}.targets: expected a list of targets")
        targets += [parse_target(t, f"{where}.targets[{i}]", table) for i, t in enumerate(listed)]
    return evolve(table, targets=tuple(targets))


def parse_results(area: str, obj: object, source: str) -> AreaResults:
    data = _object(obj, source)
    tables_obj = data.get("tables")
    if not isinstance(tables_obj, list):
        raise ResultsError(f"{source}: 'tables' must be a list")
    tables = tuple(parse_table(t, f"{source}: tables[{i}]") for i, t in enumerate(tables_obj))
    return AreaResults(
        area=area,
        title=_text(data, "title", source, area),
        tables=tables,
        description=_text(data, "description", source, ""),
        machine=_text(data, "machine", source, ""),
        notes=_text(data, "notes", source, ""),
        source=source,
    )


def load_area(area: str, bench_dir: Path) -> AreaResults:
    json_path = bench_dir / f"results-{area}.json"
    md_path = bench_dir / f"results-{area}.md"
    if json_path.exists():
        try:
            return parse_results(area, json.loads(json_path.read_text(encoding="utf-8")), json_path.name)
        except (ValueError, OSError) as error:  # JSONDecodeError and ResultsError are ValueErrors
            problem = str(error) if json_path.name in str(error) else f"{json_path.name}: {error}"
            markdown = md_path.read_text(encoding="utf-8") if md_path.exists() else None
            return AreaResults(area, area, markdown=markdown, source=json_path.name, errors=(problem,))
    if md_path.exists():
        return AreaResults(area, area, markdown=md_path.read_text(encoding="utf-8"), source=md_path.name)
    return AreaResults(area, area, errors=(f"no results-{area}.json or results-{area}.md",))


def discover_areas(bench_dir: Path) -> list[str]:
    scripts = {p.stem for p in bench_dir.glob("*.py") if p.stem != "report"}
    results = {
        m.group(1)
        for p in bench_dir.glob("results-*")
        if (m := re.fullmatch(r"results-(.+)\.(json|md)", p.name))
    }
    return sorted(scripts | results)


# --- rendering -----------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "table"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cell(text: str) -> str:
    """Text safe inside a markdown table cell (a ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    unit = f" ({table.unit})" if table.unit else ""
    lines = [
        f"| {cell(table.name)} | median{unit} | p95{unit} | n | ratio vs {cell(table.baseline or '-')} |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in table.rows:
        ratio = table.ratio(row)
        shown = "baseline" if row.name == table.baseline else (f"{ratio:.2f}x" if ratio else "-")
        lines.append(f"| {cell(row.name)} | {fmt(row.median)} | {fmt(row.p95)} | {row.n or '-'} | {shown} |")
    if table.targets:
        lines.append("")
    for target in table.targets:
        target_row = table.row(target.row)
        met = target.met(target_row, table.ratio(target_row)) if target_row is not None else None
        verdict = {True: "**met**", False: "**missed**", None: "not measured"}[met]
        shown = ""
        if target.stat == "ratio" and target_row is not None:
            ratio = table.ratio(target_row)
            shown = f" ({fmt(ratio)})" if ratio is not None else ""
        lines.append(f"Target: {target.describe(table.unit)} — {verdict}{shown}.  ")
    return "\n".join(lines).rstrip()


def draw_chart(table: Table, title: str, path: Path) -> None:
    """A horizontal bar chart of the medians with p95 whiskers; the baseline bar is grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in table.rows]
    medians = [r.median for r in table.rows]
    whiskers = [max(0.0, (r.p95 if r.p95 is not None else r.median) - r.median) for r in table.rows]
    colours = ["#9e9e9e" if n == table.baseline else "#3f6fb5" for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(names) + 1.8))
    ax.barh(names, medians, xerr=[[0.0] * len(names), whiskers], color=colours, capsize=4)
    ax.invert_yaxis()
    ax.set_xlabel(f"median{f' ({table.unit})' if table.unit else ''}; whisker: p95")
    ax.set_title(textwrap.fill(f"{title}: {table.name}", 80), fontsize=10)
    base = table.row(table.baseline) if table.baseline else None
    lines: dict[tuple[float, str], list[str]] = {}  # one dashed line per position, rows joined
    for target in table.targets:
        if target.stat == "ratio" and base is None:
            continue
        at = target.value * base.median if target.stat == "ratio" and base is not None else target.value
        what = (f"median {target.op} {fmt(target.value)}x baseline" if target.stat == "ratio"
                else f"{target.stat} {target.op} {fmt(target.value)}")
        lines.setdefault((at, what), []).append(target.row)
    for at, _ in lines:
        ax.axvline(at, color="#c0392b", linestyle="--", linewidth=1)
    # the targets are named under the axis label rather than in a legend that could hide a bar
    notes = [f"dashed red line: target, {', '.join(rows)}: {what}" for (_, what), rows in lines.items()]
    ax.set_xlabel("\n".join([ax.get_xlabel(), *(textwrap.fill(n, 100) for n in notes)]), fontsize=9)
    right = max([m + w for m, w in zip(medians, whiskers, strict=True)] + [at for at, _ in lines])
    ax.set_xlim(0, right * 1.3 if right > 0 else 1)  # room for the value labels
    for y, (value, name) in enumerate(zip(medians, names, strict=True)):
        ratio = table.ratio(table.rows[y])
        label = fmt(value) + (f"  ({ratio:.2f}x)" if ratio and name != table.baseline else "")
        ax.text(value + whiskers[y], y, " " + label, va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def nest(markdown: str, level: int) -> str:
    """Shift a results .md's headings so its top-level heading sits at ``level``."""
    text = markdown.strip()
    levels = [len(m.group(1)) for m in re.finditer(r"(?m)^(#{1,6}) ", text)]
    if not levels:
        return text
    shift = level - min(levels)
    return re.sub(r"(?m)^(#{1,6}) ", lambda m: "#" * min(6, max(1, len(m.group(1)) + shift)) + " ", text)


def _starts_with_heading(markdown: str | None) -> bool:
    return markdown is not None and markdown.lstrip().startswith("#")


LOG_TAIL_LINES = 80
FENCE = "`" * 3


def run_output(area: str, runs: Sequence[dict[str, Any]]) -> list[str]:
    """The tail of this area's benchmark output from this run_all run, folded away."""
    for run in runs:
        if run.get("script") != f"{area}.py" or not run.get("log"):
            continue
        try:
            lines = Path(str(run["log"])).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as error:
            return [f"> Output of `{area}.py` unreadable: {error}", ""]
        tail = "\n".join(lines[-LOG_TAIL_LINES:]).replace(FENCE, "' ' '")
        return [
            "<details>",
            f"<summary>Output of <code>{area}.py</code> in this run ({run.get('status')}, "
            f"{float(run.get('seconds', 0)):.0f} s; last {LOG_TAIL_LINES} lines)</summary>",
            "",
            FENCE,
            tail,
            FENCE,
            "",
            "</details>",
            "",
        ]
    return []


def render(areas: Sequence[AreaResults], bench_dir: Path, runs: Sequence[dict[str, Any]],
           charts: bool = True) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench/run_all` on {now} ({platform.node() or 'host'}: "
        f"{platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}). "
        "Each table's ratios are against its named baseline, measured in the same run. "
        "Re-run with `scripts/bench/run_all`; the per-area files `results-<area>.json|md` are the "
        "sources of this page.",
        "",
    ]
    if runs:
        out += ["| benchmark | status | seconds |", "|---|---|---:|"]
        out += [f"| `{r['script']}` | {r['status']} | {r['seconds']:.0f} |" for r in runs]
        out.append("")
    for area in areas:
        own_heading = _starts_with_heading(area.markdown) and not area.tables and not area.errors
        if not own_heading:  # a .md-only area brings its own heading
            out += [f"## {area.title}", ""]
        for error in area.errors:
            out += [f"> **Results problem:** {error}", ""]
        if area.description:
            out += [area.description.strip(), ""]
        if area.machine:
            out += [f"Machine: {area.machine.strip()}", ""]
        for table in area.tables:
            out += [f"### {table.name}", "", table_markdown(table), ""]
            if charts:
                chart = bench_dir / "charts" / f"{slug(area.area)}-{slug(table.name)}.png"
                draw_chart(table, area.title, chart)
                out += [f"![{table.name}](charts/{chart.name})", ""]
        if area.notes:
            out += [area.notes.strip(), ""]
        if area.markdown is not None:
            if area.tables or area.errors:
                out.append(f"From `results-{area.area}.md`:")
                out.append("")
            out += [nest(area.markdown, 2 if own_heading else 3), ""]
        out += run_output(area.area, runs)
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write scripts/bench/README.md from results files.")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    parser.add_argument("--runs", type=Path, help="JSON list of {script, status, seconds, log}")
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args(argv)
    bench_dir: Path = args.bench_dir
    runs: list[dict[str, Any]] = []
    if args.runs is not None:
        runs = json.loads(args.runs.read_text(encoding="utf-8"))
    areas = [load_area(a, bench_dir) for a in discover_areas(bench_dir)]
    for area in areas:
        for error in area.errors:
            print(f"report: {error}", file=sys.stderr)
    readme = bench_dir / "README.md"
    readme.write_text(render(areas, bench_dir, runs, charts=not args.no_charts), encoding="utf-8")
    print(f"report: wrote {readme} ({len(areas)} areas, "
          f"{sum(len(a.tables) for a in areas)} tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
