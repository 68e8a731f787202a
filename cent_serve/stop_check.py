"""Whether a token the engine just appended stops its request: a stop token (a `stop_token_ids` id, the
eos unless `ignore_eos`) from `min_tokens` on, or past `min_tokens` a stop string ending in the text it
added, as vLLM checks them (vllm/v1/core/sched/utils.py `check_stop`, vllm/v1/engine/detokenizer.py
`check_stop_strings`). The text is decoded at each token only when stop strings need it; the length
limits are the engine's (`Engine._append_token`)."""
from __future__ import annotations

from cent_serve.config import ModelConfig
from cent_serve.model.tokenizer import Tokenizer
from cent_serve.request import Request


def check_stop(req: Request, token: int, model: ModelConfig, tokenizer: Tokenizer) -> bool:
    """Whether `token`, the last of `req`'s output, stops it; sets `req.stop_reason`,
    `ends_with_stop_token` and, with stop strings, `req.text` (cut at the stop string)."""
    p = req.params
    n = len(req.output_ids)
    can_stop = n >= p.min_tokens
    eos = model.is_eos(token)
    if can_stop and ((eos and not p.ignore_eos) or token in p.stop_token_ids):
        req.ends_with_stop_token = True  # eos and stop ids are not part of the text (OpenAI, vLLM) unless
        # include_stop_str_in_output (vLLM's detokenizer decodes the stop token then)
        if token != tokenizer.eos_token_id or token in p.stop_token_ids:
            req.stop_reason = token  # vLLM's stop_reason: a stop id (its extra eos ids are ones), None for the eos
        if p.stop:
            req.text = req.detok.decode(tokenizer, text_ids(req), p.skip_special_tokens)
        return True
    if p.stop:  # text at each token only when stop strings need it
        old, same = req.text, len(req.detok.text)  # the text no later token changes: old's and new's
        req.text = new = req.detok.decode(tokenizer, req.output_ids, p.skip_special_tokens)
        if n > p.min_tokens:  # vLLM searches stop strings past min_tokens only, in the text of the later
            # tokens (vllm/v1/engine/detokenizer.py `BaseIncrementalDetokenizer.update`); stop tokens
            # count from min_tokens on (vllm/v1/core/sched/utils.py `check_stop`).
            # `same`: where the new text parts from the last: the text before it was searched (and maybe
            # streamed) already; past it, a character of several bytes that showed as U+FFFD is
            # now whole without the text growing (the text's length would start past it)
            end = min(len(old), len(new))
            while same < end and old[same] == new[same]:
                same += 1
            # the first stop string of the list that ends in what is new, not the one earliest in
            # the text, as vLLM takes it (vllm/v1/engine/detokenizer.py `check_stop_strings`): a
            # shorter one wholly in old text, held back by min_tokens then, does not stop it now
            hit = next(((i, x) for x in p.stop if (i := new.find(x, max(0, same - len(x) + 1))) >= 0), None)
            if hit is not None:
                cut, req.stop_reason = hit
                req.text = new[:cut + len(hit[1])] if p.include_stop_str_in_output else new[:cut]
                return True
    return False


def output_text(req: Request, tokenizer: Tokenizer) -> str:
    """The request's output text so far (stop strings and stop tokens excluded, unless
    `include_stop_str_in_output`)."""
    if req.params.stop:
        return req.text
    return req.detok.decode(tokenizer, text_ids(req), req.params.skip_special_tokens)


def text_ids(req: Request) -> list[int]:
    """The output ids the text is decoded from: all but a stop token that ended it, unless the
    request includes it (`include_stop_str_in_output`)."""
    if req.ends_with_stop_token and not req.params.include_stop_str_in_output:
        return req.output_ids[:-1]
    return req.output_ids
