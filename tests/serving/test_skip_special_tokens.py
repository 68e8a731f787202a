"""vLLM's `skip_special_tokens: false` is honoured: the special tokens the model generates (an eos or a
bos under ignore_eos) are written into the output text, as vLLM 0.33 decodes them
(vllm/v1/engine/detokenizer.py); by default they are left out. The tiny model with real numerics
generates them (3 of its 259 ids); the stand-in sampler of timing-only runs never does."""
from __future__ import annotations

import json

import httpx
import pytest

from api.server import Server
from cent_serve.config import CentConfig, ParallelConfig, model_preset

SEEDS = range(40)  # how many seeds to try for an output with a special token (the first has one often)


@pytest.fixture(scope="module")
def server():
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, 0, 1), numerics="full")
    cfg.server.port = 0
    with Server(cfg, "local") as s:
        yield s


def _complete(server, **fields) -> dict:
    sent = dict(model="tiny", prompt="hello", max_tokens=32, ignore_eos=True, temperature=2.0,
                return_token_ids=True, logprobs=0, **fields)
    r = httpx.post(server.url + "/v1/completions", json=sent, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


@pytest.fixture(scope="module")
def with_special(server):
    """(seed, token ids, the special ids' indices) of the first seed whose output has a special token."""
    tok = server.loop.engine.tokenizer
    specials = set(tok.special_names)
    for seed in SEEDS:
        ids = _complete(server, seed=seed)["token_ids"]
        at = [i for i, t in enumerate(ids) if t in specials]
        if at:
            return seed, ids, at
    pytest.fail(f"no seed in {SEEDS} made a special token")


def test_false_writes_the_special_tokens_and_the_default_leaves_them_out(server, with_special):
    tok = server.loop.engine.tokenizer
    seed, ids, at = with_special
    kept, left = _complete(server, seed=seed, skip_special_tokens=False), _complete(server, seed=seed)
    assert kept["token_ids"] == ids == left["token_ids"]
    assert kept["text"] == tok.decode(ids, skip_special_tokens=False) != left["text"] == tok.decode(ids)
    names = [tok.special_names[ids[i]] for i in at]
    assert all(name in kept["text"] for name in names), (names, kept["text"])
    assert _complete(server, seed=seed, skip_special_tokens=True)["text"] == left["text"]
    for i in at:  # a kept special token's text is counted in the offsets, a left-out one's is not
        kept_step = kept["logprobs"]["text_offset"][i + 1] - kept["logprobs"]["text_offset"][i] if i + 1 < len(ids) \
            else len(kept["text"]) - kept["logprobs"]["text_offset"][i]
        left_step = left["logprobs"]["text_offset"][i + 1] - left["logprobs"]["text_offset"][i] if i + 1 < len(ids) \
            else len(left["text"]) - left["logprobs"]["text_offset"][i]
        assert (kept_step, left_step) == (len(tok.special_names[ids[i]]), 0)


def test_a_stream_sends_the_same_text_and_offsets(server, with_special):
    seed, ids, _ = with_special
    whole = _complete(server, seed=seed, skip_special_tokens=False)
    sent = dict(model="tiny", prompt="hello", max_tokens=32, ignore_eos=True, temperature=2.0, seed=seed,
                logprobs=0, skip_special_tokens=False, stream=True)
    r = httpx.post(server.url + "/v1/completions", json=sent, timeout=60)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    choices = [c for e in events for c in e["choices"]]
    assert "".join(c["text"] for c in choices) == whole["text"]
    offsets = [o for c in choices if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert offsets == whole["logprobs"]["text_offset"]


def test_chat_writes_them_too(server, with_special):
    tok = server.loop.engine.tokenizer
    seed = with_special[0]
    sent = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=64, ignore_eos=True,
                temperature=2.0, seed=seed, return_token_ids=True)
    got = {}
    for skip in (False, True):
        r = httpx.post(server.url + "/v1/chat/completions", json=dict(sent, skip_special_tokens=skip), timeout=60)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        got[skip] = (choice["token_ids"], choice["message"]["content"])
    ids = got[False][0]
    assert ids == got[True][0]
    assert got[False][1] == tok.decode(ids, skip_special_tokens=False) and got[True][1] == tok.decode(ids)


def test_stop_strings_see_the_special_tokens_text(server, with_special):
    """With stop strings the engine decodes at each token (its stop-string path): that text keeps the
    special tokens too, so a stop string that never matches changes nothing, a stop token id after a
    special token ends a text that holds it, and a stop string naming the special token stops at it, as
    vLLM 0.33 checks stop strings against the text it detokenizes with the flag."""
    tok = server.loop.engine.tokenizer
    seed, ids, at = with_special
    never = _complete(server, seed=seed, skip_special_tokens=False, stop=["\x00never\x00"])
    assert never["token_ids"] == ids and never["text"] == tok.decode(ids, skip_special_tokens=False)
    j = next((j for j in range(at[0] + 1, len(ids)) if ids[j] not in ids[:j] and ids[j] not in tok.special_names),
             None)
    assert j is not None, ids  # the output ends at the stop id, which is not in its text
    cut = _complete(server, seed=seed, skip_special_tokens=False, stop=["\x00never\x00"], stop_token_ids=[ids[j]])
    assert cut["token_ids"] == ids[:j + 1] and cut["text"] == tok.decode(ids[:j], skip_special_tokens=False)
    name = tok.special_names[ids[at[0]]]
    named = _complete(server, seed=seed, skip_special_tokens=False, stop=[name])
    assert (named["finish_reason"], named["stop_reason"]) == ("stop", name), named
    assert named["text"] == tok.decode(ids[:at[0]], skip_special_tokens=False), named
