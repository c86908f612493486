"""How the library refuses a value: one form for every ValueError a user sees, naming the valid
range or choices and quoting what came (cut short: a caller may send megabytes).

    number          a finite float in [low, high]
    exact_integer   an int in [low, high] (not a float, not a bool): what a Request holds
    integer         the same, but an integral float (a slider's 25.0) counts
    choice          one of a tuple of names
"""
from __future__ import annotations

import math
from typing import Sequence

SHOWN_CHARS = 60  # a rejected value is quoted back at most this long


def shown(value) -> str:
    """repr(value), cut to SHOWN_CHARS, for error messages."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def finite_number(value) -> bool:
    """An int or float (not a bool) that is finite as a float: raw JSON may carry NaN, Infinity
    or an integer of hundreds of digits, which math.isfinite cannot convert."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def number(value, name: str, low: float, high: float) -> float:
    """A finite float in [low, high]."""
    if not finite_number(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {shown(value)}")
    return float(value)


def exact_integer(value, name: str, low: int, high: int) -> int:
    """An int (not a float, not a bool) in [low, high]."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {shown(value)}")
    return value


def integer(value, name: str, low: int, high: int) -> int:
    """An integer in [low, high]; a float with an integral value (a slider's 25.0) counts."""
    if not finite_number(value) or value != int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {shown(value)}")
    return int(value)


def choice(value, name: str, choices: Sequence[str]) -> str:
    """One of choices, exactly (case counts)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {shown(value)}")
    return value
