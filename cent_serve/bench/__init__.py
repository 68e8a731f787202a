"""Load-test inputs for `cent bench`: request traces, synthetic arrivals, prompts.

`load_trace(path)` streams the requests of a Vidur, Azure, BurstGPT, Mooncake or ShareGPT file;
`synthetic_trace(n, rate, ...)` makes one; `synthetic_prompt(n, seed)` builds prompt text of an
exact token length. `sample_trace_path()` is a small trace shipped with the package. A bad
parameter is a `ParamError`: a ValueError naming it, which `render(CLI_FLAGS)` words with the
`cent bench` flags instead.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from cent_serve.bench.errors import CLI_FLAGS, ParamError
from cent_serve.bench.prompts import SyntheticPrompt, synthetic_prompt
from cent_serve.bench.request import Request
from cent_serve.bench.synthetic import (FixedLengths, LengthSampler, TraceLengths,
                                        UniformLengths, arrival_times_s, iter_arrival_times_s,
                                        synthetic_trace)
from cent_serve.bench.traces import FORMATS, SHIPPED_TRACES, TraceOptions, apply_options, detect_format, load_trace

__all__ = ["Request", "TraceOptions", "FORMATS", "detect_format", "load_trace", "apply_options",
           "arrival_times_s", "iter_arrival_times_s", "LengthSampler", "FixedLengths",
           "UniformLengths", "TraceLengths", "synthetic_trace", "SyntheticPrompt",
           "synthetic_prompt", "sample_trace_path", "SAMPLE_TRACE_NUM_REQUESTS", "SHIPPED_TRACES",
           "resolve_trace", "trace_record", "ParamError", "CLI_FLAGS"]

SAMPLE_TRACE_NUM_REQUESTS = 200
"""Rows of the shipped sample trace."""


def sample_trace_path() -> Path:
    """Path of the shipped sample: the first 200 requests of the Azure LLM inference 2023
    conversation trace (Microsoft's Azure Public Dataset, under that repository's license),
    in Vidur's CSV form
    (`arrived_at, num_prefill_tokens, num_decode_tokens`). Installed as package data.
    """
    return Path(str(files("cent_serve.bench") / "data" / "sample_conv.csv"))


def resolve_trace(name_or_path: str, flag: str = "--trace") -> Path:
    """A shipped trace's name (`SHIPPED_TRACES`, with or without `.csv`) or a file path.
    ValueError naming the flag, the value and the choices when it is neither."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        from cent_serve.arguments import wrong
        raise wrong("resolve_trace(name_or_path)", "name_or_path", name_or_path,
                    f"give a trace file's path or a shipped trace's name, one of {', '.join(SHIPPED_TRACES)}")
    stem = name_or_path[:-4] if name_or_path.endswith(".csv") else name_or_path
    path = Path(name_or_path)
    if stem in SHIPPED_TRACES and not path.is_file():
        return Path(str(files("cent_serve.bench") / "data" / f"{stem}.csv"))
    if path.is_dir():
        raise ValueError(f"{flag} {name_or_path!r} is a directory: give the path of a trace file in it")
    if not path.is_file():
        raise ValueError(f"{flag} {name_or_path!r} is neither a file nor a shipped trace: give a path or one of "
                         f"{', '.join(SHIPPED_TRACES)}")
    return path


def trace_record(path: Path) -> str:
    """How a results file records the trace at `path`: a shipped trace by its name (`--trace` takes
    it on any machine; its path is this install's), any other file by its absolute path."""
    stem = path.stem
    if stem in SHIPPED_TRACES and path.resolve() == resolve_trace(stem).resolve():
        return stem
    return str(path.resolve())
