"""Seeded prompts of an exact token length for the byte-level tokenizer.

Traces give lengths, not text; `cent bench` sends a prompt built here for each request. Every
character is a printable ASCII byte (one byte, one token of `ByteTokenizer`), so the text encodes
back to exactly the ids returned, and the same seed gives the same prompt on any machine.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cent_serve.model.tokenizer import ByteTokenizer

__all__ = ["SyntheticPrompt", "synthetic_prompt", "prompt_ids", "PRINTABLE_FIRST", "PRINTABLE_LAST"]

PRINTABLE_FIRST = 0x20
"""Lowest byte drawn: space."""
PRINTABLE_LAST = 0x7E
"""Highest byte drawn: `~` (0x7F is DEL, a control character)."""


@dataclass(frozen=True)
class SyntheticPrompt:
    """A prompt as token ids and as the text that encodes to them."""

    token_ids: list[int]
    """Exactly the requested number of ids (the BOS id first when asked for)."""
    text: str
    """`ByteTokenizer().encode(text, add_bos=...)` gives `token_ids` back."""


def synthetic_prompt(num_tokens: int, seed: int | Sequence[int], *, add_bos: bool = True,
                     bos_token_id: int = 1) -> SyntheticPrompt:
    """A prompt of exactly `num_tokens` ids for `ByteTokenizer`, deterministic in `seed`.

    With `add_bos`, the first id is `bos_token_id` (as `encode(text, add_bos=True)` puts it)
    and `num_tokens - 1` bytes follow. `seed` may be a tuple, e.g. (trace seed, request index),
    to give each request of a trace its own prompt.
    """
    num_bytes = num_tokens - 1 if add_bos else num_tokens
    if num_bytes < 0:
        raise ValueError(f"num_tokens={num_tokens!r} is invalid: use >= {int(add_bos)}"
                         f"{' (the BOS token)' if add_bos else ''}")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seeds)))
    raw = rng.integers(PRINTABLE_FIRST, PRINTABLE_LAST, size=num_bytes, endpoint=True,
                       dtype=np.uint8)  # (num_bytes,)
    byte_ids = (raw.astype(np.int64) + ByteTokenizer.OFFSET).tolist()
    token_ids = [bos_token_id, *byte_ids] if add_bos else byte_ids
    return SyntheticPrompt(token_ids=token_ids, text=raw.tobytes().decode("ascii"))


def prompt_ids(num_tokens: int, seed: int | Sequence[int], start: Sequence[int]) -> list[int]:
    """A trace request's prompt of exactly `num_tokens` ids: `start` (what the server's tokenizer puts
    before a text: a BOS, none, or more), then seeded bytes; with one start id, the ids
    `synthetic_prompt(num_tokens, seed, bos_token_id=start[0])` gives."""
    head = list(start[:num_tokens])
    return head + synthetic_prompt(num_tokens - len(head), seed, add_bos=False).token_ids
