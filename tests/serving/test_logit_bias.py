"""OpenAI's logit_bias and vLLM's allowed_token_ids: through the engine (the tiny model, full numerics), the
stand-in sampler and the openai client, against formulas written here."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.sampling import SamplingParams, logprobs_of, restrict_and_bias
from cent_serve.request import RequestParams

TINY = model_preset("tiny")
WEIGHTS = load_weights(TINY)
PROMPT = [1] + [10, 20, 30] * 3


def _engine(numerics="full", **sched) -> Engine:
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics=numerics)
    for k, v in sched.items():
        setattr(cfg.scheduler, k, v)
    return Engine(cfg, weights=WEIGHTS if numerics == "full" else None)


def _run(eng: Engine, prompt=PROMPT, **params):
    req = eng.add_request(prompt, RequestParams(max_tokens=10, ignore_eos=True, **params))
    while eng.has_work():
        eng.step()
    return req.output_ids


def test_a_bias_is_clamped_to_100_and_of_two_keys_of_one_id_the_later_wins_as_in_vllm():
    from api.protocol import CompletionRequest

    req = CompletionRequest(model="tiny", prompt="x", logit_bias={"5": 250.0, "7": -1e9, "6": 1, "06": 2})
    req.check_fields(TINY.vocab_size)
    assert req.to_params(4).sampling.logit_bias == ((5, 100.0), (7, -100.0), (6, 2.0))


def test_allowed_ids_mask_the_rest_then_the_bias_is_added():
    row = np.array([1.0, 2.0, 3.0, 4.0])
    got = restrict_and_bias(row, SamplingParams(allowed_token_ids=(0, 2), logit_bias=((0, 5.0), (1, 100.0))))
    assert got.tolist() == [6.0, -np.inf, 3.0, -np.inf]  # 1's bias cannot bring back a token not allowed
    assert row.tolist() == [1.0, 2.0, 3.0, 4.0]


def _reference(allowed=None, bias=()) -> list[int]:
    """Greedy over the reference model's logits, restricted and biased by hand."""
    ref, out = LlamaModel(TINY, WEIGHTS), []
    cache = ref.new_cache()
    logits = ref.forward(PROMPT, cache)[-1]
    for _ in range(10):
        x = np.array(logits, dtype=np.float64)
        if allowed is not None:
            x[[t for t in range(len(x)) if t not in allowed]] = -np.inf
        for t, b in bias:
            x[t] += b
        out.append(int(np.argmax(x)))
        logits = ref.forward([out[-1]], cache)[-1]
    return out


def test_the_engine_samples_the_restricted_and_biased_logits():
    eng = _engine()
    greedy = SamplingParams(temperature=0.0)
    plain = _run(eng, sampling=greedy)
    allowed = (plain[0], 40, 41, 42)  # the first token stays possible, the rest of the plain output not
    got = _run(eng, sampling=SamplingParams(temperature=0.0, allowed_token_ids=allowed))
    assert got == _reference(allowed=set(allowed)) != plain and set(got) <= set(allowed)
    bias = ((plain[0], -100.0), (50, 3.0))
    got = _run(eng, sampling=SamplingParams(temperature=0.0, logit_bias=bias))
    assert got == _reference(bias=bias) and plain[0] not in got
    assert _run(eng, sampling=SamplingParams(temperature=0.9, seed=2, logit_bias=((7, 100.0),))) == [7] * 10


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_logprobs_are_the_model_s_in_raw_mode_and_the_biased_in_processed(mode):
    eng = _engine(numerics="off", logprobs_mode=mode)
    row = np.zeros(TINY.vocab_size)
    row[[65, 66]] = 5.0, 4.0
    p = RequestParams(max_tokens=8, logprobs=1, sampling=SamplingParams(temperature=0.0, logit_bias=((66, 2.0),)))
    req = eng.add_request([1, 72], p)
    assert eng.sampler.sample(req, row) == 66
    expect = row if mode == "raw_logprobs" else restrict_and_bias(row, p.sampling)
    assert req.logprobs[-1].logprob == pytest.approx(logprobs_of(expect, p.sampling)[66])


def test_timing_only_draws_keep_to_the_allowed_ids_and_ignore_the_bias():
    """The stand-in draws among its ids that are allowed (or the allowed ids, when none of its own is);
    a bias has no logits to act on: the seeded draws are the plain ones."""
    eng = _engine(numerics="off")
    ids = [int(i) for i in eng.sampler.stand_in_ids]
    for seed in range(3):
        out = _run(eng, sampling=SamplingParams(seed=seed, allowed_token_ids=(ids[3], ids[9], 2)))
        assert set(out) <= {ids[3], ids[9]} and len(set(out)) == 2
    assert set(_run(eng, sampling=SamplingParams(seed=1, allowed_token_ids=(2,)))) == {2}  # not a stand-in id
    plain = _run(eng, sampling=SamplingParams(seed=4))
    assert _run(eng, sampling=SamplingParams(seed=4, logit_bias=((ids[0], 100.0),))) == plain


def test_the_openai_client_sends_logit_bias_and_gets_a_400_for_an_id_outside_the_vocabulary():
    import openai

    from api.server import Server

    cfg = CentConfig(model=TINY, parallel=ParallelConfig(4, 0, 1), numerics="full")
    cfg.server.port = 0
    with Server(cfg, "local") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)

        def ids(**knobs) -> list[int]:
            r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0, **knobs,
                                          extra_body=dict(ignore_eos=True, return_token_ids=True))
            return r.choices[0].model_extra["token_ids"]

        first = _reference()[0]
        assert ids(logit_bias={"50": 3, str(first): -100}) == _reference(bias=((50, 3.0), (first, -100.0)))
        assert set(ids(logit_bias={"44": 100})) == {44}
        with pytest.raises(openai.BadRequestError) as err:
            ids(logit_bias={str(TINY.vocab_size): 1})
        e = err.value.body
        assert e["param"] == "logit_bias" and "[0, " in e["message"] and "\n" not in e["message"], e


def test_a_non_finite_bias_is_clamped_as_vllm_clamps_it_and_an_allowed_id_past_the_vocabulary_is_a_400():
    """JSON's NaN and Infinity reach the server as Python reads them, and vLLM clamps them as any bias
    (vllm/sampling_params.py `from_optional`: min(100, max(-100, bias))): Infinity is 100, -Infinity
    and NaN -100 (Python's max keeps -100 against a NaN); they were a 400 here. allowed_token_ids' last
    valid id is vocab_size - 1, past it a one-line 400 naming the field."""
    import httpx

    from api.protocol import CompletionRequest
    from api.server import Server

    body = CompletionRequest(model="tiny", prompt=[1], logit_bias={"5": float("nan"), "6": float("inf"),
                                                                   "7": float("-inf"), "8": 1e300})
    body.check_fields(TINY.vocab_size)
    assert body.logit_bias_pairs() == ((5, -100.0), (6, 100.0), (7, -100.0), (8, 100.0))
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(4, 0, 1), numerics="off")
    cfg.server.port = 0
    with Server(cfg, "local") as s:
        def post(fields: str) -> httpx.Response:
            return httpx.post(s.url + "/v1/completions", headers={"content-type": "application/json"}, timeout=60,
                              content='{"model": "tiny", "prompt": [1, 10], "max_tokens": 2, ' + fields + "}")

        for fields in ('"allowed_token_ids": [%d]' % (TINY.vocab_size - 1), '"logit_bias": {"5": NaN}',
                       '"logit_bias": {"5": Infinity}', '"logit_bias": {"5": -Infinity}'):
            assert post(fields).status_code == 200, fields
        r = post('"allowed_token_ids": [%d]' % TINY.vocab_size)
        e = r.json()["error"]
        assert r.status_code == 400 and e["param"] == "allowed_token_ids" and "\n" not in e["message"], r.text
