"""Log-probabilities in the shapes clients read: OpenAI's completions shape (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`), OpenAI's chat shape (`content`: token, logprob,
bytes, top_logprobs), and vLLM's `prompt_logprobs` (per position, token id -> logprob, rank,
decoded_token). The engine records `TokenLogprob`s (cent_serve/model/sampling.py); this module
only writes them out. Zero probability is written as -9999.0, as vLLM writes it."""
from __future__ import annotations

from cent_serve.model.sampling import MIN_LOGPROB, TokenLogprob
from cent_serve.model.tokenizer import Tokenizer


def _lp(value: float) -> float:
    return max(value, MIN_LOGPROB)


def piece(tok: Tokenizer, token_id: int) -> str:
    """One token as text (a fragment of a character shows as U+FFFD)."""
    return tok.token_bytes(token_id).decode("utf-8", errors="replace")


def text_lengths(tok: Tokenizer, token_ids: list[int], output_from: int = 0,
                 skip_special_tokens: bool = True) -> list[int]:
    """Each token's characters in the text: an echoed prompt's (before `output_from`) without special
    tokens' text, as the echo writes it; the output's with it unless `skip_special_tokens`."""
    return [len(tok.decode([tid], i < output_from or skip_special_tokens)) for i, tid in enumerate(token_ids)]


def completion_logprobs(tok: Tokenizer, entries: list[TokenLogprob | None], token_ids: list[int],
                        offset: int = 0, output_from: int = 0, skip_special_tokens: bool = True) -> dict:
    """OpenAI's completions `logprobs` of `token_ids` (an entry None: the prompt's first token,
    which has none). `top_logprobs` holds the most likely tokens and the token itself, as vLLM
    writes it; `text_offset` counts characters from `offset`."""
    tokens, values, tops, offsets = [], [], [], []
    lengths = text_lengths(tok, token_ids, output_from, skip_special_tokens)
    for tid, e, length in zip(token_ids, entries, lengths):
        text = piece(tok, tid)
        tokens.append(text)
        offsets.append(offset)
        offset += length  # a special token is in the text only when kept (`text_lengths`)
        if e is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(_lp(e.logprob))
        top = {piece(tok, i): _lp(v) for i, v in e.top}
        top.setdefault(text, _lp(e.logprob))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tok: Tokenizer, entries: list[TokenLogprob]) -> dict:
    """OpenAI's chat `logprobs`: `content`, one object per token with its `top_logprobs`."""
    def one(tid: int, value: float) -> dict:
        raw = tok.token_bytes(tid)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": _lp(value), "bytes": list(raw)}

    return {"content": [dict(one(e.token_id, e.logprob), top_logprobs=[one(i, v) for i, v in e.top])
                        for e in entries]}


def prompt_logprobs(tok: Tokenizer, entries: list[TokenLogprob | None] | None) -> list | None:
    """vLLM's `prompt_logprobs`: None for the first token, then {token id: {logprob, rank,
    decoded_token}} with the prompt's token and the most likely ones."""
    if entries is None:
        return None
    out = []
    for e in entries:
        if e is None:
            out.append(None)
            continue
        d = {str(i): {"logprob": _lp(v), "rank": 1 + sum(w > v for _, w in e.top), "decoded_token": piece(tok, i)}
             for i, v in e.top}  # rank: 1 + how many are more likely (ties share a rank)
        d[str(e.token_id)] = {"logprob": _lp(e.logprob), "rank": e.rank, "decoded_token": piece(tok, e.token_id)}
        out.append(d)
    return out
