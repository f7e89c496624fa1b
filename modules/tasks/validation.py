"""Range checks for settings that users and API clients type, shared by every task.

Each failure is an InvalidParameterError that names the setting (`param`), so the
UI shows the message and /v1 names the field without parsing text.
"""

from __future__ import annotations

import math

from modules.errors import InvalidParameterError


def number_in_range(name: str, value: object, low: float, high: float,
                    low_open: bool = False) -> float:
    """`value` as a finite float within [low, high] (or (low, high] when low_open)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidParameterError(name, f"{name} must be a number from {low} to {high}.")
    if number > high or number < low or (low_open and number <= low):
        bound = f"above {low}" if low_open else f"from {low}"
        raise InvalidParameterError(name, f"{name} must be {bound} to {high}, got {value}.")
    return number


def whole_number(name: str, value: object, low: int, high: int) -> int:
    """`value` as an int within [low, high]; 3.0 passes, 3.5 and True do not."""
    number = number_in_range(name, value, low, high)
    if not number.is_integer():
        raise InvalidParameterError(name, f"{name} must be a whole number from {low} to {high}.")
    return int(number)
