"""Checks every config section runs: a field's value against its fix, numbers against their range."""
from __future__ import annotations

import math
import numbers
from dataclasses import fields
from functools import lru_cache
from typing import Any, get_type_hints


def _check(cond: bool, field_name: str, value: Any, fix: str) -> None:
    """Raise a ValueError that names the field, the value and the fix."""
    if not cond:
        raise ValueError(f"{field_name}={value!r} is invalid: {fix}")


@lru_cache(maxsize=None)
def _numeric_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """Field name -> (int or float, whether None is allowed) of every numeric field of a config
    dataclass (`X | None` included; bools and strings are not numbers)."""
    out, hints = {}, get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        args = getattr(hint, "__args__", ())
        optional = type(None) in args
        kind = next((a for a in args if a is not type(None)), None) if optional and len(args) == 2 else hint
        if kind in (int, float):
            out[f.name] = (kind, optional)
    return out


NUMBER_RANGE = (1e-15, 1e15)
"""Where a non-zero number of the config lies: a product or quotient of a few such stays finite in
float64 (an energy of 1e308 mW, or a clock of 1e-300 Hz, made the figures NaN or inf)."""


def _number_fix(cls: type, name: str, value: Any) -> str | None:
    """The config's one rule for numbers: every numeric field of `cls` is a finite number >= 0, and
    > 0 for the fields in `cls._positive` (counts, sizes, clocks, rates: what is divided by, or what
    0 of makes no device), non-zero ones within `NUMBER_RANGE` (seeds: any size); `X | None` fields may also be None.
    None when `value` obeys it, else the fix to print (`cls._fixes` words a field's own)."""
    kind, optional = _numeric_fields(cls)[name]
    if value is None and optional:
        return None
    integer, positive = kind is int, name in getattr(cls, "_positive", ())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        fix = "expected an integer" if integer else "expected a number"
    elif math.isfinite(value) and (value > 0 if positive else value >= 0):
        if name == "seed" or value <= NUMBER_RANGE[1] and (value == 0 or value >= NUMBER_RANGE[0]):
            return None  # a seed names a stream of numbers: any size
        fix = f"use a value from {NUMBER_RANGE[0]:g} to {NUMBER_RANGE[1]:g} (beyond, the model's figures overflow)"
    else:
        fix = getattr(cls, "_fixes", {}).get(name) or (
            ("use a positive integer" if positive else "use an integer >= 0") if integer else
            ("use a finite positive number" if positive else "use a finite number >= 0"))
    return fix + (", or leave it unset" if optional and not fix.endswith("unset") else "")


def _check_numbers(obj: Any, section: str) -> None:
    """Hold every numeric field of a config section to `_number_fix`'s rule (ValueError naming
    `section.field`, the value and the fix)."""
    for name in _numeric_fields(type(obj)):
        value = getattr(obj, name)
        fix = _number_fix(type(obj), name, value)
        _check(fix is None, f"{section}.{name}", value, fix or "")
