"""Range checks for settings that users and API clients type, shared by every task.

Each failure is an InvalidParameterError that names the setting (`param`), so the
UI shows the message and /v1 names the field without parsing text.
"""

from __future__ import annotations

import math
import numbers

from modules.errors import InvalidParameterError
from modules.messages import message


def is_number(value: object) -> bool:
    """A finite real number already (no text, no bool): for checks with their own message."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: object) -> bool:
    """A finite number with no fractional part (3 and 3.0, not 3.5, "3" or True)."""
    return is_number(value) and float(value).is_integer()


def number_in_range(name: str, value: object, low: float, high: float,
                    low_open: bool = False) -> float:
    """`value` as a finite float within [low, high] (or (low, high] when low_open)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidParameterError(name, message("errors.not_a_number", name=name, low=low, high=high))
    if number > high or number < low or (low_open and number <= low):
        key = "errors.above_to" if low_open else "errors.from_to"
        raise InvalidParameterError(name, message(key, name=name, low=low, high=high, value=value))
    return number


def whole_number(name: str, value: object, low: int, high: int) -> int:
    """`value` as an int within [low, high]; 3.0 passes, 3.5 and True do not."""
    number = number_in_range(name, value, low, high)
    if not number.is_integer():
        raise InvalidParameterError(name, message("errors.not_whole", name=name, low=low, high=high))
    return int(number)
