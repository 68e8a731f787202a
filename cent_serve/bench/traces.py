"""Request traces for `cent bench`: one `Request` record, readers for the common formats, options.

Formats, in the column layout their publishers ship (docs/serving.md):

- `vidur`: CSV `arrived_at, num_prefill_tokens, num_decode_tokens`, seconds. A CSV with a format's
  length columns and no time column (Vidur's length traces) is refused here (`LengthsOnlyError`):
  `TraceLengths.from_trace` takes its lengths for synthetic arrivals.
- `azure`: CSV `TIMESTAMP, ContextTokens, GeneratedTokens`, datetimes such as
  `2023-11-16 18:15:46.6805900` (2023) or `2024-05-10 00:00:00.009930+00:00` (2024): any number
  of fractional digits, a zone or none (read as UTC).
- `burstgpt`: CSV `Timestamp, Model, Request tokens, Response tokens, Total tokens, Log Type`,
  seconds.
- `mooncake`: JSONL `{"timestamp": ms, "input_length", "output_length", "hash_ids"?}` (`hash_ids`
  unused: no prefix cache is modelled). Timestamps that look like seconds are warned about
  (`check_mooncake_unit`).
- `sharegpt`: JSON list of `{"id", "conversations": [{"from", "value"}, ...]}`; no timestamps,
  so arrivals come from a synthetic process (`cent_serve.bench.synthetic`).

The readers (`cent_serve.bench.readers`) stream requests in file order, each `arrival_s` seconds
after the first row, with the file's own lengths (0 allowed). `load_trace` then applies
`TraceOptions` in this order, the only order there is:

1. start offset: drop the first `skip_requests` rows and every request that arrives before
   `start_s`, in seconds after the trace's first request (not on the file's own clock: a file
   whose first row is at 3.0 s starts at 0); the first request kept arrives at 0. Each request
   keeps its time on the trace's own clock in `trace_arrival_s`.
2. `num_requests`: keep at most that many.
3. `time_scale`: multiply every inter-arrival time.
4. `request_rate`: rescale the arrivals so the mean inter-arrival time is 1 / rate. This needs the
   span of the selection, found by a first pass over the source; nothing is held in memory.
5. lengths: prompt and output lengths multiplied by `prompt_scale` and `output_scale` (rounded;
   a length >= 1 stays >= 1), then clipped to at most `max_prompt_tokens` and `max_output_tokens`.

Lengths of 0 are kept (a reader never invents tokens); the engine needs at least one of each,
so the replay (`cent_serve.bench.runner`) sends them as 1 and counts and reports those requests.
A bad option is a `ParamError` (a ValueError naming the parameter; the CLI names the flag).
"""
from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

from cent_serve.arguments import wrong
from cent_serve.bench.errors import ParamError
from cent_serve.bench.readers import (CSV_LAYOUTS, mooncake_rate_per_s, open_text, read_csv, read_mooncake,
                                      read_sharegpt, sniff_csv_format)
from cent_serve.bench.request import Request
from cent_serve.config.checks import _numeric_fields

__all__ = ["Request", "TraceOptions", "FORMATS", "detect_format", "load_trace", "apply_options"]

FORMATS = ("vidur", "azure", "burstgpt", "mooncake", "sharegpt")
"""Trace formats `load_trace` reads (the `fmt` argument)."""

SHIPPED_TRACES = {
    "sample_conv": "the first 200 requests of azure_conv_2023",
    "azure_conv_2023": "Azure LLM inference 2023, conversation: 19,366 requests over ~1 hour",
    "azure_code_2023": "Azure LLM inference 2023, code: 8,819 requests over ~1 hour",
}
"""Traces shipped with the package (Vidur's CSV form of Microsoft's Azure Public Dataset traces,
under that dataset's license), by the name `--trace` takes."""


def _check(ok: bool, name: str, value: object, fix: str) -> None:
    """ParamError `{name}=value is invalid: fix` unless `ok` (`fix` may name parameters as
    `{field}`s, see `ParamError`)."""
    if not ok:
        raise ParamError(f"{{{name}}}={value!r} is invalid: {fix}")


MAX_ARRIVAL_S = 1e8
"""Latest arrival a replay takes, in seconds after the first (3.2 years; BurstGPT's 121 days are
1.05e7 s). Simulated time is one float of seconds: at 1e8 s it resolves 15 ns, so a TTFT of a
millisecond keeps its digits; at 1e12 s it resolves 0.1 ms, and a 1.9 ms TTFT read 1.2 ms."""


MOONCAKE_MAX_RATE = 250.0
"""Requests per second above which a Mooncake file's timestamps, read as its milliseconds, are
taken for seconds. Mooncake's published traces run about 1 to tens of requests a second (their
timestamps are integer milliseconds: mooncake_trace.jsonl opens 0, 0, 3052, 3052), so the same
arrivals written in seconds read 1,000 to tens of thousands a second; 250 lies between with
margin both ways (a seconds trace down to 0.25 requests a second is caught)."""


def check_mooncake_unit(path: Path, time_scale: float) -> None:
    """Warn in one line when the first rows of a Mooncake file (`mooncake_rate_per_s`), at `time_scale`,
    would replay faster than `MOONCAKE_MAX_RATE`: timestamps in seconds, read as milliseconds, replay
    every arrival 1000x too early in silence. A warning, not a refusal: a real file of such a rate
    (a stress test) replays as written."""
    import logging

    measured = mooncake_rate_per_s(path)
    if measured is None or measured[1] / time_scale <= MOONCAKE_MAX_RATE:
        return
    rows, rate = measured
    logging.getLogger("cent.bench").warning(
        "%s: its first %d requests arrive at %s requests/s with their timestamps read as milliseconds, as "
        "Mooncake's are (its traces run about 1 to tens a second): if they are seconds, replay them with "
        "time_scale=%g (cent bench: --time-scale %g), or multiply them by 1000", path, rows,
        f"{rate / time_scale:,.0f}", 1000 * time_scale, 1000 * time_scale)


def check_rate_or_time_scale(rate: float | None, time_scale: float) -> None:
    """A rate (a rescaled trace's, or an arrival process's: ShareGPT, synthetic) fixes the mean
    gap whatever the time scale was; taking both would silently drop one of them."""
    _check(rate is None or time_scale == 1.0, "time_scale", time_scale,
           "give either {time_scale} or {request_rate}, not both")


@dataclass(frozen=True)
class TraceOptions:
    """What part of a trace to replay and how; applied in the order of the module docstring."""

    start_s: float = 0.0
    """Drop requests that arrive less than this many seconds after the trace's first request."""
    skip_requests: int = 0
    """Drop the first this many rows of the trace."""
    num_requests: int | None = None
    """Keep at most this many requests after the start offset (None: all)."""
    time_scale: float = 1.0
    """Multiply every inter-arrival time by this (2.0 replays at half the rate)."""
    request_rate: float | None = None
    """Rescale arrivals so the mean rate is this many requests per second (None: keep)."""
    prompt_scale: float = 1.0
    """Multiply every prompt length by this (rounded; a length >= 1 stays >= 1, 0 stays 0)."""
    output_scale: float = 1.0
    """Multiply every output length by this (rounded as `prompt_scale`)."""
    max_prompt_tokens: int | None = None
    """Clip prompt lengths to at most this many tokens (None: no cap)."""
    max_output_tokens: int | None = None
    """Clip output lengths to at most this many tokens (None: no cap)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # the kind first: a str's comparison raised Python's TypeError
            value, (kind, optional) = getattr(self, f.name), _KINDS[f.name]
            integer = kind is int
            number = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
            _check(number or optional and value is None, f.name, value,
                   f"give {'a whole number' if integer else 'a number'} (not a {type(value).__name__}): {_FIXES[f.name]}")
        _check(math.isfinite(self.start_s) and self.start_s >= 0, "start_s", self.start_s, _FIXES["start_s"])
        _check(self.skip_requests >= 0, "skip_requests", self.skip_requests, _FIXES["skip_requests"])
        _check(self.num_requests is None or self.num_requests >= 1, "num_requests",
               self.num_requests, _FIXES["num_requests"])
        _check(math.isfinite(self.time_scale) and self.time_scale > 0, "time_scale",
               self.time_scale, _FIXES["time_scale"])
        _check(self.request_rate is None or (math.isfinite(self.request_rate)
                                             and self.request_rate > 0),
               "request_rate", self.request_rate, _FIXES["request_rate"])
        check_rate_or_time_scale(self.request_rate, self.time_scale)
        for name in ("prompt_scale", "output_scale"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, name, value, _FIXES[name])
        for name in ("max_prompt_tokens", "max_output_tokens"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, value, _FIXES[name])


_FIXES = {
    "start_s": "use a number of seconds >= 0", "skip_requests": "use a count >= 0",
    "num_requests": "use a count >= 1, or {none} for the whole trace", "time_scale": "use a finite factor > 0",
    "request_rate": "use a finite rate > 0 in requests/s, or {none} to keep the trace's arrivals",
    "prompt_scale": "use a finite factor > 0", "output_scale": "use a finite factor > 0",
    "max_prompt_tokens": "use a cap >= 1, or {none} for no cap", "max_output_tokens": "use a cap >= 1, or {none} for no cap",
}
"""Each `TraceOptions` field's fix, for a value of the wrong kind or out of range."""
_KINDS = _numeric_fields(TraceOptions)
"""Each `TraceOptions` field: (int or float, None allowed), from its annotation as the config's."""


def trace_options(options: TraceOptions | dict | None, call: str = "load_trace(path, options=)") -> TraceOptions:
    """`options` as a `TraceOptions`: None is the default one, a dict of its fields is made into one
    (`{"num_requests": 200}`: what the dict says, nothing guessed); anything else, or a dict with a key
    that is no field, a ValueError naming it."""
    if options is None:
        return TraceOptions()
    if isinstance(options, TraceOptions):
        return options
    if isinstance(options, dict):
        unknown = [k for k in options if k not in _KINDS]
        if unknown:
            raise wrong(call, "options", options, f"{unknown[0]!r} is no field of TraceOptions, whose fields are "
                        f"{', '.join(_KINDS)}")
        return TraceOptions(**options)
    raise wrong(call, "options", options, "give TraceOptions(...), e.g. options=TraceOptions(num_requests=200) "
                "(or a dict of its fields)")


def detect_format(path: str | Path) -> str:
    """The trace format of `path`: `.jsonl` is mooncake; JSON (a `.json` file, or any other whose
    first character opens an array or an object) is sharegpt (one JSON array) or, when its first line
    is a whole object, mooncake's lines under another name; else the CSV header. A `.gz` after the
    suffix is looked through (`trace.jsonl.gz` is a `.jsonl`), and a gzip'd file is read as text
    whatever its name, so `trace.gz` and `trace.txt` are known by what they hold.

    Raises ValueError when the header matches no known layout, or the file is not UTF-8 text.
    """
    path = Path(path)
    name = path.name.lower()
    suffix = Path(name.removesuffix(".gz")).suffix
    if suffix == ".jsonl":
        return "mooncake"
    if suffix == ".json" or _first_character(path) in ("[", "{"):  # a CSV header opens neither
        with open_text(path) as f:
            first = next((line for line in f if line.strip()), "")
        try:  # a line that is a whole JSON object: Mooncake's lines (a ShareGPT dump spans many)
            return "mooncake" if isinstance(json.loads(first), dict) else "sharegpt"
        except ValueError:
            return "sharegpt"
    return sniff_csv_format(path)


def _first_character(path: Path, limit: int = 1 << 16) -> str:
    """The first character of `path`'s text that is not white space ('' if none in `limit`)."""
    with open_text(path) as f:
        return f.read(limit).lstrip()[:1]


def load_trace(path: str | Path, fmt: str | None = None, options: TraceOptions | dict | None = None, *,
               count_tokens: Callable[[str], int] | None = None,
               arrivals_s: Callable[[], Iterable[float]] | None = None,
               span_progress: Callable[[Iterable[Request]], Iterable[Request]] | None = None,
               check_unit: bool = True) -> Iterator[Request]:
    """Stream the requests of a trace file with `options` applied.

    `fmt` is one of FORMATS (None: `detect_format`); the file may be gzip'd. ShareGPT needs `count_tokens` (text ->
    token count; `cent bench` passes `lambda s: len(tok.encode(s))`, a BOS included in both the
    prompt's and the answer's count, as vLLM's benchmark counts ShareGPT with the HF tokenizer's
    default, so one file gives vLLM's request lengths) and `arrivals_s`, a factory
    of arrival times in seconds (e.g. `lambda: iter_arrival_times_s(rate=4.0, seed=0)`); a
    factory because a rate override reads the source twice. The format and the path are checked
    here; bad rows raise ValueError when iteration reaches them. `span_progress` wraps the rows of a
    rate override's first pass (e.g. in a progress bar), which runs here, before anything is yielded.
    A Mooncake file replayed at its own pace (no `request_rate`) has its first rows read here too, to
    warn when its timestamps look like seconds (`check_mooncake_unit`); `check_unit` False skips
    that where only the lengths are used (`TraceLengths.from_trace`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise wrong("load_trace(path)", "path", path, "give a trace file's path, or resolve_trace(NAME) for a "
                    "trace shipped with the package")
    options = trace_options(options)
    path = Path(path)
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a file"
        shipped = path.name.removesuffix(".csv") if not path.is_dir() and str(path) == path.name else None
        fix = (f"load the shipped trace by its name with load_trace(resolve_trace({shipped!r}))"
               if shipped in SHIPPED_TRACES else "give the path of a trace file")
        raise ValueError(f"trace {str(path)!r} is {kind}: {fix}")
    fmt = fmt or detect_format(path)
    _check(fmt in FORMATS, "fmt", fmt, f"use one of {', '.join(FORMATS)}, or {{none}} to detect it")
    if fmt in CSV_LAYOUTS:
        def make() -> Iterator[Request]:
            return read_csv(path, fmt)
    elif fmt == "mooncake":
        if check_unit and options.request_rate is None:  # a rate replaces the file's pace whatever its unit
            check_mooncake_unit(path, options.time_scale)

        def make() -> Iterator[Request]:
            return read_mooncake(path)
    else:
        if count_tokens is None or arrivals_s is None:
            raise ValueError(f"fmt='sharegpt' ({path}) has no token counts or timestamps: pass "
                             "count_tokens=<text -> int> and arrivals_s=<factory of arrival times>")

        def make() -> Iterator[Request]:
            return read_sharegpt(path, count_tokens, arrivals_s())
    return apply_options(make, options, source=str(path), span_progress=span_progress)


def apply_options(make_requests: Callable[[], Iterable[Request]],
                  options: TraceOptions | dict, *, source: str = "the trace",
                  span_progress: Callable[[Iterable[Request]], Iterable[Request]] | None = None) -> Iterator[Request]:
    """Apply `options` to the requests `make_requests()` yields (file order, arrivals sorted).

    `make_requests` is called once, or twice with a rate override (span first, then requests; the
    first pass's rows go through `span_progress` when given). `source` names the requests in errors
    (`load_trace` passes the file's path). `options` may be a dict of its fields (`trace_options`).
    """
    options = trace_options(options, "apply_options(make_requests, options)")
    factor = options.time_scale
    if options.request_rate is not None:
        num_kept, span_s, seen = 0, 0.0, [0]
        rows = make_requests() if span_progress is None else span_progress(make_requests())
        for num_kept, (arrival_s, _) in enumerate(_select(rows, options, source, seen), start=1):
            span_s = arrival_s
        if num_kept < 2 or span_s <= 0:
            raise ParamError(f"{{request_rate}}={options.request_rate!r} cannot be applied: "
                             f"{_too_few(options, source, num_kept, seen[0])}; rescaling needs at "
                             "least two requests at different times")
        factor = (num_kept - 1) / (span_s * options.request_rate)
    return _transform(make_requests(), options, factor, source)


def _too_few(options: TraceOptions, source: str, num_kept: int, num_seen: int) -> str:
    """Why a selection of `num_kept` requests (of `num_seen` read) cannot be rescaled."""
    if num_kept >= 2:
        return f"the {num_kept} requests selected all arrive at the same time"
    if options.num_requests is not None and num_kept == options.num_requests:
        return f"{{num_requests}}={options.num_requests!r} selects {num_kept} request"
    dropping = [f"{{{name}}}={getattr(options, name)!r}" for name in ("start_s", "skip_requests")
                if getattr(options, name)]
    if num_seen > num_kept and dropping:
        return f"{' and '.join(dropping)} leave{'s' * (len(dropping) == 1)} {num_kept} of {num_seen} requests"
    return f"{source} has {'only 1 request' if num_kept else 'no requests'}"


def _select(requests: Iterable[Request], options: TraceOptions, source: str,
            seen: list[int] | None = None) -> Iterator[tuple[float, Request]]:
    """Steps 1-2: (arrival from the first kept request, request) for the rows kept; `seen[0]`
    counts the rows read. A `start_s` past the last request is a ParamError naming the span."""
    start_s: float | None = None
    num_kept = 0
    last_s = None
    for row, req in enumerate(requests):
        if seen is not None:
            seen[0] = row + 1
        last_s = req.arrival_s
        if row < options.skip_requests or req.arrival_s < options.start_s:
            continue
        if options.num_requests is not None and num_kept >= options.num_requests:
            return
        if start_s is None:
            start_s = req.arrival_s
        num_kept += 1
        yield req.arrival_s - start_s, req
    if start_s is None and last_s is not None and last_s < options.start_s:
        raise ParamError(f"{{start_s}}={options.start_s!r} is past the end of {source}: its requests arrive "
                         f"0 to {last_s:g} s after its first one ({{start_s}} counts from there, not on the "
                         "trace's own clock): use a smaller {start_s}")


def _transform(requests: Iterable[Request], options: TraceOptions,
               factor: float, source: str) -> Iterator[Request]:
    """Steps 3-5: arrivals times `factor`, lengths scaled and capped (0 stays 0: see the module docstring);
    `trace_arrival_s` kept."""
    max_prompt = options.max_prompt_tokens or math.inf
    max_output = options.max_output_tokens or math.inf
    for arrival_s, req in _select(requests, options, source):
        if arrival_s * factor > MAX_ARRIVAL_S:
            compress = "raise {request_rate}" if options.request_rate is not None else \
                "compress the arrivals with {time_scale}"
            raise ParamError(f"{source}: request {req.request_id!r} arrives {arrival_s * factor:g} s after the first "
                             f"one, past the {MAX_ARRIVAL_S:g} s within which a replay's latencies keep their "
                             f"digits (simulated time is one float of seconds): {compress} or select fewer "
                             "requests with {num_requests} or {start_s}")
        yield replace(req, arrival_s=arrival_s * factor,
                      num_prompt_tokens=int(min(_scaled(req.num_prompt_tokens, options.prompt_scale), max_prompt)),
                      num_output_tokens=int(min(_scaled(req.num_output_tokens, options.output_scale), max_output)))


def _scaled(num_tokens: int, scale: float) -> int:
    """A length times `scale`, rounded half to even; a request's tokens never scale away to 0 (nor
    does an empty one gain any)."""
    if scale == 1.0 or num_tokens == 0:
        return num_tokens
    return max(1, round(num_tokens * scale))
