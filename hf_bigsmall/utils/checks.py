"""Checks of user-given numbers, shared by every config of hf_bigsmall.

A NaN compares false with everything, so `value <= 0` lets it through, and an infinite weight or
temperature trains with a loss of 0 while every parameter becomes NaN: each float setting is
checked to be a finite number before its range is.
"""

from __future__ import annotations

import math


def check_finite(name: str, value, allowed: str) -> float:
    """Return `value` as a float, or raise `ValueError` naming `name` and its `allowed` range.

    Args:
        name: the setting's name, as the user passes it.
        value: what the user passed.
        allowed: the range in words, e.g. `"> 0"` or `"in [0, 1)"`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number {allowed}, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}.")
    return float(value)
