"""Errors that name a parameter, worded for Python or for `cent bench`'s flags.

`TraceOptions`, `load_trace`, the readers and the synthetic generators refuse a bad value with a
`ParamError`: `str(exc)` names the Python parameters (`num_requests=-5`, `fmt=`); the CLI
renders the same error with `exc.render(CLI_FLAGS)` (`--num-requests=-5`, `--format`). This
module is the one place that maps parameter names to flags.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

CLI_FLAGS: dict[str, str] = {
    "start_s": "--start-s", "num_requests": "--num-requests", "time_scale": "--time-scale",
    "request_rate": "--rate", "max_prompt_tokens": "--max-prompt-tokens",
    "max_output_tokens": "--max-output-tokens", "prompt_scale": "--prompt-scale",
    "output_scale": "--output-scale", "fmt": "--format", "rate": "--rate",
    "burstiness": "--burstiness", "num_prompt_tokens": "--prompt-len",
    "num_output_tokens": "--output-len", "none": "leave it out",
}
"""Parameter name -> the `cent bench` flag that sets it; `none` is how a flag is left unset."""

PYTHON_ONLY = ("skip_requests", "count_tokens", "arrivals_s")
"""Parameters with no flag: named as they are on the command line too."""

_FIELD = re.compile(r"\{(\w+)(=?)\}")
_KNOWN = frozenset(CLI_FLAGS) | frozenset(PYTHON_ONLY)


class ParamError(ValueError):
    """A ValueError whose message names parameters through fields of `template`:

    - `{name}`: the parameter (Python: `name`; CLI: its flag), e.g. `{num_requests}=-5`;
    - `{name=}`: the parameter as a keyword to pass (Python: `name=`; CLI: its flag);
    - `{none}`: how to leave an optional parameter out (Python: `None`; CLI: `leave it out`).

    Only the names of `CLI_FLAGS` and `PYTHON_ONLY` are fields; other braces stay as written.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render())

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with parameters named by `flags` (name -> flag, e.g. `CLI_FLAGS`;
        names it lacks keep their Python spelling), or as Python names them (None)."""
        def field(m: re.Match) -> str:
            name, keyword = m.group(1), m.group(2)
            if name not in _KNOWN:
                return m.group(0)
            if flags is not None and name in flags:
                return flags[name]
            if name == "none":
                return "None"
            return name + keyword
        return _FIELD.sub(field, self.template)
