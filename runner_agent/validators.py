"""attrs field validators shared by the tunables classes (backoff policy, channel config)."""

from __future__ import annotations

from collections.abc import Callable

FieldValidator = Callable[[object, object, float], None]


def positive(owner: str) -> FieldValidator:
    """A validator that rejects values not ``> 0`` with ``"<owner> <field> must be > 0, got <value>"``."""

    def check(_instance: object, attribute: object, value: float) -> None:
        if not value > 0:
            name = getattr(attribute, "name", "value")
            raise ValueError(f"{owner} {name} must be > 0, got {value!r}")

    return check
