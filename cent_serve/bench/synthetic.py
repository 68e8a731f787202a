"""Synthetic traces: gamma/Poisson arrivals and length distributions, seeded with PCG64.

Arrivals follow vLLM's benchmark_serving: inter-arrival times are gamma distributed with
shape = burstiness and scale = 1 / (rate * burstiness), so the mean rate is `rate` and the
coefficient of variation of the gaps is 1 / sqrt(burstiness); burstiness 1 is a Poisson process.
The first request arrives at 0. `rate = inf` sends every request at 0.

Every random stream is `numpy.random.Generator(PCG64(SeedSequence([seed, stream])))`, so the
same seed gives the same trace on any machine; arrivals and lengths use separate streams, so
changing the length distribution leaves the arrival times alone.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cent_serve.arguments import check_int, check_real, is_int, wrong
from cent_serve.bench.errors import ParamError
from cent_serve.bench.readers import LengthsOnlyError, read_csv
from cent_serve.bench.request import Request
from cent_serve.bench.traces import TraceOptions, apply_options, load_trace, trace_options

__all__ = ["arrival_times_s", "iter_arrival_times_s", "LengthSampler", "FixedLengths",
           "UniformLengths", "TraceLengths", "synthetic_trace"]

_ARRIVAL_STREAM = 0
_LENGTH_STREAM = 1
_CHUNK = 4096
"""Arrival gaps drawn per numpy call by the unbounded iterator (draws do not depend on it)."""


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))


def _check_process(call: str, rate: float, burstiness: float, seed: int) -> None:
    check_real(call, "rate", rate, 2.0)
    check_real(call, "burstiness", burstiness, 1.0)
    check_int(call, "seed", seed, 0)
    if not rate > 0:  # also refuses NaN
        raise ParamError(f"{{rate}}={rate!r} is invalid: use requests per second > 0 (inf: all at once)")
    if not (math.isfinite(burstiness) and burstiness > 0):
        raise ParamError(f"{{burstiness}}={burstiness!r} is invalid: use a finite value > 0 "
                         "(1 = Poisson, < 1 burstier, > 1 more regular)")


def _gaps_s(rng: np.random.Generator, num: int, rate: float, burstiness: float) -> np.ndarray:
    if math.isinf(rate):
        return np.zeros(num)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num)  # (num,)


def iter_arrival_times_s(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Unbounded arrival times in seconds (0 first); the prefix of length n equals
    `arrival_times_s(n, rate, burstiness, seed)`. Used for traces without timestamps (ShareGPT).
    """
    _check_process("iter_arrival_times_s(rate)", rate, burstiness, seed)  # at the call, not at the first next()
    return _arrivals(rate, burstiness, seed)


def _arrivals(rate: float, burstiness: float, seed: int) -> Iterator[float]:
    rng = _rng(seed, _ARRIVAL_STREAM)
    now_s = 0.0
    yield now_s
    while True:
        for gap_s in _gaps_s(rng, _CHUNK, rate, burstiness).tolist():
            now_s += gap_s
            yield now_s


def arrival_times_s(num_requests: int, rate: float, burstiness: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """`num_requests` arrival times in seconds, the first at 0, mean gap 1 / rate. Shape (n,)."""
    call = "arrival_times_s(num_requests, rate)"
    check_int(call, "num_requests", num_requests, 100)
    _check_process(call, rate, burstiness, seed)
    if num_requests < 0:
        raise ParamError(f"{{num_requests}}={num_requests!r} is invalid: use a count >= 0")
    times = iter_arrival_times_s(rate, burstiness, seed)
    return np.fromiter(times, dtype=np.float64, count=num_requests)


class LengthSampler(Protocol):
    """Draws (prompt lengths, output lengths), two int64 arrays of shape (num_requests,)."""

    def sample(self, num_requests: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class FixedLengths:
    """Every request has the same lengths (vLLM's `random` dataset with range ratio 0)."""

    num_prompt_tokens: int = 128
    """Prompt length of every request."""
    num_output_tokens: int = 128
    """Output length of every request."""

    def __post_init__(self) -> None:
        for name in ("num_prompt_tokens", "num_output_tokens"):
            check_int("FixedLengths(num_prompt_tokens, num_output_tokens)", name, getattr(self, name), 128)
            if getattr(self, name) < 1:
                raise ParamError(f"{{{name}}}={getattr(self, name)!r} is invalid: use a length >= 1")

    def sample(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return (np.full(num_requests, self.num_prompt_tokens, dtype=np.int64),
                np.full(num_requests, self.num_output_tokens, dtype=np.int64))


@dataclass(frozen=True)
class UniformLengths:
    """Lengths uniform over inclusive ranges, prompt and output drawn independently."""

    prompt_range: tuple[int, int] = (64, 512)
    """Lowest and highest prompt length (inclusive)."""
    output_range: tuple[int, int] = (16, 256)
    """Lowest and highest output length (inclusive)."""

    def __post_init__(self) -> None:
        for name in ("prompt_range", "output_range"):
            pair = getattr(self, name)
            if not (isinstance(pair, (tuple, list, np.ndarray)) and len(pair) == 2 and all(map(is_int, pair))):
                raise wrong("UniformLengths(prompt_range, output_range)", name, pair,
                            f"give (low, high), two whole numbers, e.g. {name}={getattr(UniformLengths, name)}")
            low, high = pair
            if not 1 <= low <= high:
                raise ValueError(f"{name}={(low, high)!r} is invalid: use (low, high) with "
                                 "1 <= low <= high")

    def sample(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        prompt = rng.integers(self.prompt_range[0], self.prompt_range[1], size=num_requests,
                              endpoint=True, dtype=np.int64)
        output = rng.integers(self.output_range[0], self.output_range[1], size=num_requests,
                              endpoint=True, dtype=np.int64)
        return prompt, output


@dataclass(frozen=True, eq=False)
class TraceLengths:
    """(prompt, output) pairs drawn with replacement from the rows of a real trace.

    Rows are drawn whole, so the correlation of prompt and output lengths survives.
    """

    prompt_tokens: np.ndarray
    """Prompt length of each source row, shape (rows,)."""
    output_tokens: np.ndarray
    """Output length of each source row, shape (rows,)."""

    def __post_init__(self) -> None:
        if len(self.prompt_tokens) == 0 or len(self.prompt_tokens) != len(self.output_tokens):
            raise ValueError(f"TraceLengths has {len(self.prompt_tokens)} prompt and "
                             f"{len(self.output_tokens)} output lengths: give as many of each, "
                             "at least one")

    @classmethod
    def from_trace(cls, path: str | Path, fmt: str | None = None,
                   options: TraceOptions | None = None, **load_kwargs) -> TraceLengths:
        """The lengths of a trace file read with `load_trace` (clipping options apply), or of a CSV
        that has a format's length columns and no time column (Vidur's length traces, e.g.
        `num_prefill_tokens, num_decode_tokens, num_total_tokens, pd_ratio`): only lengths are taken."""
        try:
            return cls._of(load_trace(path, fmt, options, check_unit=False, **load_kwargs))  # no arrivals used
        except LengthsOnlyError as exc:  # raised at the header, before any row
            lengths_fmt = exc.fmt  # bound here: the lambda may run after `exc` is gone
        return cls._of(apply_options(lambda: read_csv(Path(path), lengths_fmt, lengths_only=True),
                                     options or TraceOptions(), source=str(path)))

    @classmethod
    def _of(cls, requests: Iterable[Request]) -> TraceLengths:
        prompt, output = [], []
        for req in requests:
            prompt.append(req.num_prompt_tokens)
            output.append(req.num_output_tokens)
        return cls(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))

    def sample(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.integers(0, len(self.prompt_tokens), size=num_requests)  # (num_requests,)
        return self.prompt_tokens[rows], self.output_tokens[rows]


def synthetic_trace(num_requests: int, rate: float, *, burstiness: float = 1.0,
                    lengths: LengthSampler | None = None, seed: int = 0,
                    options: TraceOptions | dict | None = None) -> Iterator[Request]:
    """`num_requests` requests with gamma arrivals (`rate` req/s) and lengths from `lengths`
    (default `FixedLengths()`), ids "0".."n-1", no prompt text. `options` apply as to a file.
    """
    call = "synthetic_trace(num_requests, rate)"
    options = trace_options(options, "synthetic_trace(num_requests, rate, options=)")
    check_int(call, "num_requests", num_requests, 100)
    _check_process(call, rate, burstiness, seed)
    if lengths is not None and not callable(getattr(lengths, "sample", None)):
        raise wrong(call, "lengths", lengths, "give a LengthSampler: FixedLengths(128, 128), "
                    "UniformLengths((64, 512), (16, 256)) or TraceLengths.from_trace(path) (cent_serve.bench)")
    if num_requests < 1:
        raise ParamError(f"{{num_requests}}={num_requests!r} is invalid: use a count >= 1")
    lengths = lengths or FixedLengths()
    arrivals = arrival_times_s(num_requests, rate, burstiness, seed)  # (num_requests,)
    prompt, output = lengths.sample(num_requests, _rng(seed, _LENGTH_STREAM))

    def make() -> Iterator[Request]:
        for i, (arrival_s, num_prompt, num_output) in enumerate(
                zip(arrivals.tolist(), prompt.tolist(), output.tolist())):
            yield Request(str(i), arrival_s, num_prompt, num_output, trace_arrival_s=arrival_s)

    return apply_options(make, options, source="the synthetic trace")
