"""CPU list parsing and formatting, including odd lists and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner_agent.host.cpulist import CpuListError, format_cpulist, parse_cpulist


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("0", {0}),
        ("5\n", {5}),
        ("", set()),
        (" \n", set()),
        ("0,2,4", {0, 2, 4}),
        ("0-7:2/4", {0, 1, 4, 5}),
        ("2-N", {2, 3, 4, 5}),
    ],
)
def test_parse(text: str, expected: set[int]) -> None:
    assert parse_cpulist(text, last=5) == frozenset(expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("3-1", "backwards"),
        ("a", "not a CPU number"),
        ("1,,2", "empty element"),
        ("0-7:3/2", "out of range"),
        ("0-7:2", "used/group"),
        ("4:1/2", "needs a range"),
        ("-1", "not a CPU number"),
    ],
)
def test_parse_errors_are_specific(text: str, fragment: str) -> None:
    with pytest.raises(CpuListError, match=fragment):
        parse_cpulist(text)


def test_last_cpu_needs_context() -> None:
    with pytest.raises(CpuListError, match="'N'"):
        parse_cpulist("0-N")


def test_format() -> None:
    assert format_cpulist({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
    assert format_cpulist([7]) == "7"
    assert format_cpulist([]) == ""


@given(st.frozensets(st.integers(min_value=0, max_value=300)))
def test_roundtrip(cpus: frozenset[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == cpus


def test_cpumask() -> None:
    from runner_agent.host.cpulist import format_cpumask, parse_cpumask

    assert parse_cpumask("ff\n") == frozenset(range(8))
    assert parse_cpumask("00000000,00000003") == {0, 1}
    assert parse_cpumask("1,00000000") == {32}
    assert format_cpumask({0, 1}) == "3"
    assert format_cpumask({32, 0}) == "1,00000001"
    with pytest.raises(CpuListError, match="not hexadecimal"):
        parse_cpumask("zz")
    with pytest.raises(CpuListError, match="wider than 32 bits"):
        parse_cpumask("123456789")


@given(st.frozensets(st.integers(min_value=0, max_value=300)))
def test_cpumask_roundtrip(cpus: frozenset[int]) -> None:
    from runner_agent.host.cpulist import format_cpumask, parse_cpumask

    assert parse_cpumask(format_cpumask(cpus)) == cpus
