"""What the engine thread hands a request's stream (`Delta`: its new output since the last one), the
part of an unfinished output that is final (`_stable`), and how a batch of them reaches the event loop
(`_put_all`), for `serving.EngineLoop` and the API."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    """On the event loop: each item into its request's queue, in the order delivered."""
    for q, item in items:
        q.put_nowait(item)


def _stable(text: str, stops: tuple[str, ...], partial: bool) -> str:
    """The part of an unfinished output that is final: no incomplete UTF-8 character at the
    end (`partial`: the tokenizer says the last U+FFFD may still be completed), and no tail that
    may turn out to be the start of a stop string."""
    if partial:  # a byte-fallback tokenizer writes one U+FFFD per byte of the unfinished character
        text = text.rstrip("\ufffd")
    for k in range(min(len(text), max((len(x) for x in stops), default=0)), 0, -1):
        if any(x.startswith(text[-k:]) for x in stops):
            return text[:-k]
    return text


@dataclass
class Delta:
    """New output of one request since the last delta."""

    token_ids: list[int]
    times_s: list[float]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    timing: dict = field(default_factory=dict)
    logprobs: list = field(default_factory=list)
    """`TokenLogprob`s of `token_ids`, when the request asks for them."""
    prompt_logprobs: list | None = None
    """The prompt's log-probabilities, on the first delta with tokens (when asked for)."""
    stop_reason: str | int | None = None
    retry_after_s: float | None = None
    """With `error`: the request failed because no replica can serve soon, retry after this long
    (`Request.retry_after_s`); None: a device fault."""
