"""vLLM's bad_words: tokenized as vLLM does (the word, and after a space when that starts a word token), and
a sequence's last token barred where the output ends with the rest of it; with full numerics, the stand-in
sampler and the openai client."""
from __future__ import annotations

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.model import load_weights
from cent_serve.model.sampling import SamplingParams, bad_words_token_ids, banned_ids
from cent_serve.model.tokenizer import ByteTokenizer
from cent_serve.request import RequestParams

TINY = model_preset("tiny")
WEIGHTS = load_weights(TINY)


class WordTokenizer:
    """A word-start tokenizer: " ab" is one token (3), "ab" is one token (2), "a" (1), "b" (5)."""

    VOCAB = {"ab": 2, " ab": 3, "a": 1, "b": 5, " a": 6}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return [self.VOCAB[text]] if text in self.VOCAB else [self.VOCAB[c] for c in text]


def test_bad_words_are_tokenized_as_vllm_does():
    byte = ByteTokenizer()
    a, b, space = byte.encode("ab", add_bos=False) + byte.encode(" ", add_bos=False)
    assert bad_words_token_ids(["  ab"], byte) == ((a, b),)  # " ab" is 3 bytes: not a word-start form
    assert bad_words_token_ids(["ab", "a"], WordTokenizer()) == ((2,), (3,), (1,), (6,))
    with pytest.raises(ValueError, match="bad_words"):
        bad_words_token_ids([" "], byte)


def test_a_sequence_s_last_token_is_barred_after_the_rest_of_it():
    seqs = ((7,), (1, 2, 3), (4, 2))
    assert banned_ids(seqs, []) == [7]
    assert banned_ids(seqs, [9, 1, 2]) == [7, 3]
    assert banned_ids(seqs, [4]) == [7, 2] and banned_ids(seqs, [2]) == [7]


def _run(numerics: str, **knobs) -> str:
    eng = Engine(CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics=numerics),
                 weights=WEIGHTS if numerics == "full" else None)
    req = eng.add_request([1, 72, 73], RequestParams(max_tokens=8, ignore_eos=True, sampling=SamplingParams(**knobs)))
    while eng.has_work():
        eng.step()
    return eng.text(req)


def test_full_numerics_never_write_a_bad_word():
    """A bias makes "A" the model's choice, then "B": a bad "AA" lets "A" follow only a "B"; a bad "A"
    leaves "B" alone."""
    tok = ByteTokenizer()
    bias = ((tok.encode("A", add_bos=False)[0], 50.0), (tok.encode("B", add_bos=False)[0], 40.0))
    greedy = dict(temperature=0.0, logit_bias=bias)
    assert _run("full", **greedy) == "AAAAAAAA"
    words = lambda *w: bad_words_token_ids(w, tok)  # noqa: E731
    assert _run("full", **greedy, bad_words_ids=words("AA")) == "ABABABAB"
    assert _run("full", **greedy, bad_words_ids=words("A")) == "BBBBBBBB"
    sampled = _run("full", temperature=0.9, seed=3, logit_bias=bias, bad_words_ids=words("A", "B"))
    assert len(sampled) >= 4 and "A" not in sampled and "B" not in sampled


def test_the_stand_in_never_draws_a_bad_word_s_last_token_after_the_rest():
    plain = _run("off", seed=6)
    pair = plain[:2]
    got = _run("off", seed=6, bad_words_ids=bad_words_token_ids([plain[0], pair], ByteTokenizer()))
    assert plain[0] not in got and pair not in got


def test_the_openai_client_sends_bad_words_and_a_bad_one_is_a_400_naming_it():
    import openai

    from api.server import Server
    from tests.serving.utils import server_cfg

    with Server(server_cfg(), "local") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)

        def text(**extra) -> str:
            return client.completions.create(model="tiny", prompt="hi", max_tokens=12, seed=5,
                                             extra_body=dict(ignore_eos=True, **extra)).choices[0].text

        plain = text()
        got = text(bad_words=[plain[1], plain[2:4]])
        assert plain[1] not in got and plain[2:4] not in got and got != plain
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=12, seed=5, extra_body=dict(bad_words=[plain[1]]))
        assert plain[1] not in chat.choices[0].message.content
        for bad in ([""], ["x" * 2000], ["a"] * 300):
            with pytest.raises(openai.BadRequestError) as err:
                text(bad_words=bad)
            assert err.value.body["param"] == "bad_words" and "\n" not in err.value.body["message"]


def test_the_stand_in_draws_as_before_when_the_bad_words_bar_all_its_ids():
    """Single-token bad words over every id the stand-in draws: it keeps drawing them (it has nothing
    else; the docs' "unless that is all of them"), the same draws as without bad words."""
    eng = Engine(CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics="off"))
    every = tuple((int(t),) for t in eng.sampler.stand_in_ids)
    assert _run("off", seed=2, bad_words_ids=every) == _run("off", seed=2)


def test_bad_words_limits_are_256_words_of_1024_characters_past_them_a_one_line_400():
    import httpx

    from api.checks import MAX_BAD_WORDS, MAX_STOP_CHARS
    from api.server import Server

    cfg = CentConfig(model=TINY, parallel=ParallelConfig(4, 0, 1), numerics="off")
    cfg.server.port = 0
    words = [f"w{i}" for i in range(MAX_BAD_WORDS - 1)] + ["x" * MAX_STOP_CHARS]
    with Server(cfg, "local") as s:
        def post(bad_words: list[str]) -> httpx.Response:
            return httpx.post(s.url + "/v1/completions", timeout=60, json=dict(
                model="tiny", prompt=[1, 10], max_tokens=2, bad_words=bad_words))

        assert post(words).status_code == 200
        for over, value in ((words + ["y"], f"{MAX_BAD_WORDS + 1} words"),
                            (words[:-1] + ["x" * (MAX_STOP_CHARS + 1)], f"of {MAX_STOP_CHARS + 1} characters")):
            r = post(over)
            e = r.json()["error"]
            assert r.status_code == 400 and e["param"] == "bad_words" and "\n" not in e["message"], r.text
            assert value in e["message"] and str(MAX_BAD_WORDS) in e["message"], e  # the value, and the fix


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_full_numerics_draw_an_allowed_id_when_the_bad_words_or_min_tokens_would_leave_none(temperature):
    """allowed_token_ids (65,) with the bad word "A" (65), or allowed_token_ids the eos alone before
    min_tokens: masking would leave no logit finite, and the argmax of all -inf was token 0 (not allowed)
    with NaN logprobs. As the stand-in does, a mask that would leave nothing is not applied."""
    for knobs, params in ((dict(allowed_token_ids=(65,), bad_words_ids=((65,),)), {}),
                          (dict(allowed_token_ids=(TINY.eos_token_id,)), dict(min_tokens=3))):
        eng = Engine(CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics="full"), weights=WEIGHTS)
        req = eng.add_request([1, 72, 73], RequestParams(max_tokens=4, ignore_eos="bad_words_ids" in knobs, logprobs=1,
                                                         sampling=SamplingParams(temperature=temperature, seed=1,
                                                                                 **knobs), **params))
        while eng.has_work():
            eng.step()
        assert set(req.output_ids) == set(knobs["allowed_token_ids"]), (knobs, req.output_ids)
        assert all(lp.logprob == lp.logprob for lp in req.logprobs), req.logprobs  # no NaN


@pytest.mark.parametrize("numerics", ["full", "off"])
def test_a_bad_word_is_not_matched_across_the_prompt_s_end(numerics):
    """vLLM matches a bad word's first tokens against the output alone (vllm/v1/sample/ops/bad_words.py):
    a prompt ending in "A" does not bar "B" as the first token under the bad word "AB"; after an output
    "A" it does. Full numerics: a bias makes "B" the greedy choice; off: the stand-in's own draw."""
    tok = ByteTokenizer()
    a, b = tok.encode("AB", add_bos=False)
    eng = Engine(CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics=numerics),
                 weights=WEIGHTS if numerics == "full" else None)
    if numerics == "off":
        first = eng.add_request([1, 72, a], RequestParams(max_tokens=1, sampling=SamplingParams(temperature=0.0)))
        while eng.has_work():
            eng.step()
        b = first.output_ids[0]  # the stand-in's greedy first token after this prompt
    sampling = SamplingParams(temperature=0.0, logit_bias=((b, 50.0),), bad_words_ids=((a, b),))
    req = eng.add_request([1, 72, a], RequestParams(max_tokens=1, sampling=sampling))
    while eng.has_work():
        eng.step()
    assert req.output_ids == [b]
    assert banned_ids(((a, b),), [a]) == [b]  # after an output "A", "B" is barred
