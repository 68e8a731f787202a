"""The request record every trace reader and synthetic generator yields."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace: when `cent bench` sends it and how long it is.

    Made by the readers in `cent_serve.bench.readers` and by `cent_serve.bench.synthetic`;
    consumed by the load generator. Lengths are token counts of the serving model's tokenizer
    (as the trace states them); `prompt` is the text when the trace has one (ShareGPT), else
    None and the client builds one with `cent_serve.bench.prompts.synthetic_prompt`.
    """

    request_id: str
    """Stable id: the file's own (a CSV's `request_id` column, ShareGPT's `id`), else the 0-based row
    of the source file; unique in a trace (a repeat is `<id>#<index>`)."""
    arrival_s: float
    """Seconds from the trace start: a reader's from the file's first request, the replay's (after
    `TraceOptions`) from the first request kept."""
    num_prompt_tokens: int
    """Prompt length in tokens."""
    num_output_tokens: int
    """Tokens to generate (the client sends it as `max_tokens` with `ignore_eos`)."""
    prompt: str | None = None
    """Prompt text, when the trace carries one."""
    trace_arrival_s: float | None = None
    """The arrival on the trace's own clock, in seconds, kept through selection and scaling so a
    result joins back to its row: the file's value (Vidur, BurstGPT), its milliseconds / 1000
    (Mooncake), seconds since 1970 UTC (Azure), or the generated arrival (ShareGPT, synthetic)."""
