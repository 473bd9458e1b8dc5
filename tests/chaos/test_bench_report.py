"""``scripts/bench/report.py``: results JSON → README tables (median, p95, ratio vs baseline,
target verdict) and PNG charts; malformed files are reported by name and reason, .md-only areas
are included verbatim."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPORT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "report.py"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module
    spec.loader.exec_module(module)
    return module


GOOD = {
    "title": "Demo area",
    "description": "What is measured.",
    "tables": [
        {
            "name": "latency",
            "unit": "ms",
            "baseline": "plain",
            "target": {"row": "agent", "stat": "median", "op": "<=", "value": 2.5},
            "rows": [
                {"name": "agent", "samples": [1, 2, 3, 4, 100]},
                {"name": "plain", "median": 2.0, "p95": 3.0, "n": 5},
            ],
        }
    ],
    "notes": "Closing words.",
}


def test_stats_and_ratio(report: ModuleType) -> None:
    table = report.parse_results("demo", GOOD, "results-demo.json").tables[0]
    agent, plain = table.rows
    assert (agent.median, agent.p95, agent.n) == (3.0, 100.0, 5)
    assert table.ratio(agent) == 1.5 and table.ratio(plain) == 1.0
    assert table.target.met(agent) is False
    assert report.median([4, 1, 3, 2]) == 2.5
    assert report.nearest_rank(list(range(1, 101)), 0.95) == 95


def test_readme_and_charts(report: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "results-demo.json").write_text(json.dumps(GOOD))
    (tmp_path / "results-old.md").write_text("## Old figures\n\n| a | b |\n")
    (tmp_path / "results-bad.json").write_text('{"tables": [{"name": "x", "rows": [{"name": "a"}]}]}')
    (tmp_path / "demo.py").write_text("")
    (tmp_path / "missing.py").write_text("")
    log = tmp_path / "demo.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps([{"script": "demo.py", "status": "ok", "seconds": 12, "log": str(log)},
                                {"script": "missing.py", "status": "failed (exit 1)", "seconds": 3}]))
    assert report.main(["--bench-dir", str(tmp_path), "--runs", str(runs)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "| `demo.py` | ok | 12 |" in readme and "| `missing.py` | failed (exit 1) | 3 |" in readme
    assert "<summary>Output of <code>demo.py</code> in this run (ok, 12 s; last 80 lines)" in readme
    assert "line 99" in readme and "line 20\n" in readme and "line 19\n" not in readme
    assert "| agent | 3.00 | 100 | 5 | 1.50x |" in readme
    assert "| plain | 2.00 | 3.00 | 5 | baseline |" in readme
    assert "Target: agent median <= 2.50 ms — **missed**." in readme
    assert "![latency](charts/demo-area-latency.png)" not in readme  # chart named by area stem
    assert "![latency](charts/demo-latency.png)" in readme
    assert (tmp_path / "charts" / "demo-latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\n## Old figures\n" in readme  # a .md-only area brings its own top heading
    assert "results-bad.json: tables[0].rows[0]: a row needs 'samples' or 'median'" in readme
    assert "no results-missing.json or results-missing.md" in readme


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"baseline": "nobody"}, "baseline: no row named 'nobody'"),
        ({"rows": []}, "rows: expected a non-empty list"),
        ({"target": {"row": "agent", "op": "~", "value": 1}}, "op: one of"),
        ({"rows": [{"name": "a", "samples": [1, "x"]}]}, "samples[1]: expected a finite number"),
        ({"rows": [{"name": "a", "median": 1}, {"name": "a", "median": 2}]}, "row names repeat"),
    ],
)
def test_malformed_tables_are_named(report: ModuleType, change: dict[str, object], message: str) -> None:
    bad = {"tables": [{**GOOD["tables"][0], "target": None, **change}]}  # type: ignore[dict-item]
    with pytest.raises(report.ResultsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        report.parse_results("demo", bad, "results-demo.json")


def test_ratio_targets_and_several_per_table(report: ModuleType, tmp_path: Path) -> None:
    data = {
        "tables": [{
            "name": "throughput", "unit": "MB/s", "baseline": "cat", "lower_is_better": False,
            "targets": [
                {"row": "host", "stat": "ratio", "op": ">=", "value": 0.5},
                {"row": "sandbox", "stat": "ratio", "op": ">=", "value": 0.5},
                {"row": "host", "stat": "p95", "op": ">=", "value": 100},
            ],
            "rows": [
                {"name": "cat", "samples": [200, 200, 200]},
                {"name": "host", "samples": [120, 110, 130]},
                {"name": "sandbox", "samples": [90, 80, 100]},
            ],
        }],
    }
    table = report.parse_results("demo", data, "results-demo.json").tables[0]
    host, sandbox = table.row("host"), table.row("sandbox")
    verdicts = [t.met(table.row(t.row), table.ratio(table.row(t.row))) for t in table.targets]
    assert verdicts == [True, False, True]
    assert table.target is table.targets[0] and table.ratio(host) == 0.6 and table.ratio(sandbox) == 0.45
    (tmp_path / "results-demo.json").write_text(json.dumps(data))
    assert report.main(["--bench-dir", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "| throughput | median (MB/s) | p95 (MB/s) | n | ratio vs cat |" in readme
    assert "Target: host median / baseline median >= 0.5 — **met** (0.6)." in readme
    assert "Target: sandbox median / baseline median >= 0.5 — **missed** (0.45)." in readme
    assert "Target: host p95 >= 100 MB/s — **met**." in readme
    assert (tmp_path / "charts" / "demo-throughput.png").exists()


def test_ratio_target_needs_a_baseline(report: ModuleType) -> None:
    table = {"name": "t", "rows": [{"name": "a", "median": 1}],
             "targets": [{"row": "a", "stat": "ratio", "value": 1}]}
    with pytest.raises(report.ResultsError, match=r"targets\[0\]\.stat: a 'ratio' target needs"):
        report.parse_results("demo", {"tables": [table]}, "results-demo.json")


def test_pipes_in_names_stay_inside_their_cell(report: ModuleType) -> None:
    table = report.parse_results("demo", {"tables": [{
        "name": "a | b", "baseline": "cat | cat", "rows": [{"name": "cat | cat", "median": 2}]}]},
        "results-demo.json").tables[0]
    lines = report.table_markdown(table).splitlines()
    assert lines[0] == "| a \\| b | median | p95 | n | ratio vs cat \\| cat |"
    assert lines[2] == "| cat \\| cat | 2.00 | - | - | baseline |"
