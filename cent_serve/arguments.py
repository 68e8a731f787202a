"""An argument of the wrong kind given to a public function, refused in one line.

docs/python_api.md's contract: a mistake is a ValueError of one line naming the value and the fix.
A script that passes a string for a count, a dict for a `TraceOptions` or a list for a
`BenchResult` got Python's own error from deep inside (`'<' not supported between instances of 'str'
and 'int'`, `'dict' object has no attribute 'time_scale'`). The public functions check their
arguments' kinds here, once a call where a script calls in (about 0.6 us a check: `token_figures`,
which `phase_figures` calls per context length, pays it there too):
`wrong(call, name, value, fix)` is the error, `"{call}: {name} is {what it is}: {fix}"`.
"""
from __future__ import annotations

import numbers
from typing import Any

SHORT = 40
"""Characters of a value's repr an error quotes (longer ones are cut with ...)."""


def described(value: Any) -> str:
    """A value as an error names it: its type and a short repr, e.g. "a str ('azure_conv_2023')",
    "a list of 200 items (the first a Request)", "a CentConfig" (a repr longer than `SHORT` left out), "None"."""
    if value is None:
        return "None"
    from cent_serve.timing.mapping import counted

    kind = type(value).__name__
    if isinstance(value, (list, tuple)) and value:
        return f"{_a(kind)} of {counted(len(value), 'item')} (the first {_a(type(value[0]).__name__)})"
    text = repr(value)
    if len(text) > SHORT:  # a long string is cut; an object's long repr (a config's) says nothing its type does not
        if not isinstance(value, str):
            return _a(kind)
        text = text[:SHORT - 3] + "..."
    return f"{_a(kind)} ({text})"


def _a(noun: str) -> str:
    """`a str`, `an int`."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def wrong(call: str, name: str, value: Any, fix: str) -> ValueError:
    """The one-line error for argument `name` of `call` (e.g. "run_in_process(cfg, requests)")."""
    return ValueError(f"{call}: {name} is {described(value)}: {fix}")


def is_int(value: Any) -> bool:
    """A whole number (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(call: str, name: str, value: Any, example: int, optional: bool = False) -> None:
    """ValueError unless `value` is a whole number (or, `optional`, None); ranges are the caller's."""
    if not (is_int(value) or optional and value is None):
        none = f", or {name}=None" if optional else ""
        raise wrong(call, name, value, f"give a whole number, e.g. {name}={example}{none}")


def check_real(call: str, name: str, value: Any, example: float) -> None:
    """ValueError unless `value` is a real number (numpy's too), not a bool; ranges are the caller's."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise wrong(call, name, value, f"give a number, e.g. {name}={example}")


def check_config(call: str, cfg: Any, name: str = "cfg") -> None:
    """ValueError unless `cfg` is a `CentConfig`; a model's name is told to build one first (not
    built here: `build_config`'s other choices, devices and numerics, would be guessed)."""
    from cent_serve.config import CentConfig

    if isinstance(cfg, CentConfig):
        return
    if isinstance(cfg, str) and len(cfg) <= SHORT:
        fix = f"build one first: build_config({cfg!r}, devices=N) (cent_serve.config)"
    else:
        fix = "give a CentConfig: cent_serve.config.build_config(model, devices=N, ...)"
    raise wrong(call, name, cfg, fix)
