"""runner_agent.validators: the shared attrs field validators."""

from __future__ import annotations

import math

import pytest
from attrs import field, frozen

from runner_agent.validators import positive


@frozen
class _Tunables:
    interval: float = field(default=1.0, validator=positive("widget"))


def test_positive_accepts_values_above_zero() -> None:
    assert _Tunables(interval=0.001).interval == 0.001


@pytest.mark.parametrize("bad", [0, -1.5, math.nan])
def test_positive_names_owner_field_and_value(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"^widget interval must be > 0, got {bad!r}$"):
        _Tunables(interval=bad)
