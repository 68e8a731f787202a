"""presence/frequency/repetition penalties and min-p: vLLM's semantics, through the engine (the tiny model,
full numerics) and the sampler, checked against formulas written here (a bincount over the whole output)."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.sampling import SamplingParams, TokenCounts, logprobs_of, make_generator, sample
from cent_serve.request import RequestParams
from tests.serving.utils import run_until_idle as _run
from tests.serving.utils import tiny_engine as _engine

TINY = model_preset("tiny")
WEIGHTS = load_weights(TINY)


def _penalized(logits, prompt, output, params: SamplingParams) -> np.ndarray:
    """The penalties as vLLM defines them, recomputed from scratch over the whole output."""
    x = np.array(logits, dtype=np.float64)
    counts = np.bincount(np.asarray(output, dtype=np.int64), minlength=len(x)) if output else np.zeros(len(x))
    seen = (np.bincount(np.asarray(prompt, dtype=np.int64), minlength=len(x)) > 0) | (counts > 0)
    for t in np.flatnonzero(seen):
        x[t] = x[t] / params.repetition_penalty if x[t] > 0 else x[t] * params.repetition_penalty
    return x - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)


def test_penalties_act_as_vllm_defines_them():
    """Repetition over prompt and output (positive divided, negative multiplied); frequency per
    occurrence in the output, presence once; tokens of the prompt alone get neither of those two."""
    row = np.array([2.0, -2.0, 1.0, -1.0, 3.0, 0.5])
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    counts = TokenCounts([0, 1], len(row))  # the prompt holds 0 and 1
    got = counts.penalize(row, p, [2, 3, 3])
    assert got.tolist() == [1.0, -4.0, 0.5 - 0.5 - 0.25, -2.0 - 1.0 - 0.25, 3.0, 0.5]
    assert row.tolist() == [2.0, -2.0, 1.0, -1.0, 3.0, 0.5]  # the model's row is left as it came
    # counted as the output grows: the next call counts the one new token, and agrees with a recount
    got = counts.penalize(row, p, [2, 3, 3, 5])
    assert counts.num_counted == 4 and counts.output_counts.tolist() == [0, 0, 1, 2, 0, 1]
    assert np.allclose(got, _penalized(row, [0, 1], [2, 3, 3, 5], p))


def test_min_p_keeps_the_tokens_at_least_min_p_times_the_top_one_after_the_temperature():
    """vLLM's order: temperature, then min-p, then top-k/top-p over what is left."""
    row = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05]))

    def drawn(params: SamplingParams) -> set[int]:
        rng = make_generator(1)
        return {sample(row, params, rng) for _ in range(400)}

    assert drawn(SamplingParams(min_p=0.5)) == {0, 1}  # 0.15 < 0.5 x 0.4
    assert drawn(SamplingParams(min_p=0.3)) == {0, 1, 2}  # 0.15 >= 0.12
    # temperature 2 flattens: p ~ sqrt(p), 0.05 -> sqrt(0.05 / 0.4) = 0.35 of the top one
    assert drawn(SamplingParams(min_p=0.3, temperature=2.0)) == {0, 1, 2, 3, 4}
    assert drawn(SamplingParams(min_p=0.3, top_k=2)) == {0, 1}
    # top-p over what min-p left, renormalized: 0.4 / 0.85 = 0.47 reaches 0.45 (over all five it would not)
    assert drawn(SamplingParams(min_p=0.3, top_p=0.45)) == {0}
    assert drawn(SamplingParams(top_p=0.45)) == {0, 1}
    lp = logprobs_of(row, SamplingParams(min_p=0.5), "processed_logprobs")
    assert np.isinf(lp[2:]).all() and np.allclose(np.exp(lp[:2]), [0.4 / 0.7, 0.3 / 0.7])
    assert sample(row, SamplingParams(min_p=1.0, temperature=0.5), make_generator(2)) == 0
    assert sample(row, SamplingParams(temperature=0.0, min_p=0.9), make_generator(2)) == 0  # greedy ignores it


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=0.0, frequency_penalty=2.0),
    SamplingParams(temperature=0.0, presence_penalty=2.0, repetition_penalty=1.3),
    SamplingParams(temperature=0.8, seed=7, repetition_penalty=1.5, frequency_penalty=-0.5, min_p=0.05),
])
def test_the_engine_samples_the_reference_model_s_penalized_logits(sampling):
    """Each token is the one the reference model's logits give after the penalties over the prompt and
    the output so far (greedy: their argmax; seeded: the same draw), where the plain request differs."""
    ref = LlamaModel(TINY, WEIGHTS)
    prompt = [1] + [10, 20, 30] * 3
    eng = _engine()
    req = eng.add_request(prompt, RequestParams(max_tokens=12, ignore_eos=True, sampling=sampling))
    plain = eng.add_request(prompt, RequestParams(max_tokens=12, ignore_eos=True,
                                                  sampling=SamplingParams(temperature=sampling.temperature,
                                                                          seed=sampling.seed)))
    _run(eng)
    cache, rng, out = ref.new_cache(), make_generator(sampling.seed or 0), []
    logits = ref.forward(prompt, cache)[-1]
    for _ in range(12):
        tok = sample(_penalized(logits, prompt, out, sampling), SamplingParams(
            temperature=sampling.temperature, min_p=sampling.min_p, seed=sampling.seed), rng)
        out.append(tok)
        logits = ref.forward([tok], cache)[-1]
    assert req.output_ids == out
    assert req.output_ids != plain.output_ids


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_logprobs_are_before_the_penalties_in_raw_mode_and_after_in_processed(mode):
    """vLLM's raw_logprobs (its default) are the model's, before any penalty; processed ones are the
    distribution the token was drawn from, penalties included."""
    eng = _engine(numerics="off", logprobs_mode=mode)
    row = np.zeros(TINY.vocab_size)
    row[[65, 66]] = 5.0, 4.0
    p = RequestParams(max_tokens=8, logprobs=2, sampling=SamplingParams(temperature=0.0, frequency_penalty=2.0))
    req = eng.add_request([1, 72], p)
    req.output_ids.append(65)
    assert eng.sampler.sample(req, row) == 66  # 65's 5 - 2 falls under 66's 4
    got = req.logprobs[-1]
    expect = row if mode == "raw_logprobs" else _penalized(row, [1, 72], [65], p.sampling)
    assert got.token_id == 66 and got.logprob == pytest.approx(logprobs_of(expect, p.sampling)[66])
    assert [t for t, _ in got.top] == ([65, 66] if mode == "raw_logprobs" else [66, 65])


def test_timing_only_draws_are_unchanged_by_the_penalties_and_min_p():
    """With numerics off there are no logits: the stand-in's uniform draws are what they were (min-p
    over a uniform distribution keeps every token; the penalties have nothing to act on)."""
    def run(**knobs) -> list[int]:
        eng = _engine(numerics="off")
        req = eng.add_request([1, 72, 73], RequestParams(max_tokens=10, ignore_eos=True,
                                                        sampling=SamplingParams(seed=5, **knobs)))
        _run(eng)
        return req.output_ids

    assert run() == run(presence_penalty=2.0, frequency_penalty=-2.0, repetition_penalty=1.7, min_p=1.0)


@pytest.mark.parametrize("field, value, fix", [
    ("presence_penalty", 2.5, "[-2, 2]"), ("frequency_penalty", -3.0, "[-2, 2]"),
    ("repetition_penalty", 0.0, "> 0"), ("repetition_penalty", float("inf"), "> 0"),
    ("min_p", 1.5, "[0, 1]"), ("min_p", float("nan"), "[0, 1]"),
])
def test_out_of_range_values_are_refused_naming_the_field(field, value, fix):
    with pytest.raises(ValueError) as err:
        SamplingParams(**{field: value})
    assert str(err.value).startswith(f"{field}=") and fix in str(err.value) and "\n" not in str(err.value)


def _reference_greedy(prompt: list[int], n: int, sampling: SamplingParams) -> list[int]:
    ref, out = LlamaModel(TINY, WEIGHTS), []
    cache = ref.new_cache()
    logits = ref.forward(prompt, cache)[-1]
    for _ in range(n):
        out.append(int(np.argmax(_penalized(logits, prompt, out, sampling))))
        logits = ref.forward([out[-1]], cache)[-1]
    return out


def test_the_openai_client_sends_the_penalties_and_min_p_and_gets_400s_naming_the_field():
    """OpenAI's presence/frequency penalties as the client's own arguments, vLLM's repetition_penalty and
    min_p in `extra_body` (as vLLM documents them); a value out of range is a one-line 400 naming it."""
    import openai

    from api.server import Server

    cfg = CentConfig(model=TINY, parallel=ParallelConfig(4, 0, 1), numerics="full")
    cfg.server.port = 0
    prompt = [1] + [10, 20, 30] * 3
    sampling = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=1.5, repetition_penalty=1.3)
    with Server(cfg, "local") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)

        def ids(extra_body: dict | None = None, **knobs) -> list[int]:
            r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, **knobs,
                                          extra_body=dict(extra_body or {}, ignore_eos=True, return_token_ids=True))
            return r.choices[0].model_extra["token_ids"]

        got = ids(presence_penalty=0.5, frequency_penalty=1.5, extra_body=dict(repetition_penalty=1.3, min_p=0.2))
        assert got == _reference_greedy(prompt, 10, sampling) != ids()
        for knobs, field in ((dict(presence_penalty=2.5), "presence_penalty"),
                             (dict(frequency_penalty=-3), "frequency_penalty"),
                             (dict(extra_body=dict(repetition_penalty=0)), "repetition_penalty"),
                             (dict(extra_body=dict(min_p=-0.1)), "min_p")):
            with pytest.raises(openai.BadRequestError) as err:
                ids(**knobs)
            e = err.value.body
            assert e["param"] == field and e["message"].startswith(field + "=") and "\n" not in e["message"], e


def test_a_repetition_penalty_alone_changes_the_engine_s_draw():
    """repetition_penalty is a penalty on its own (no presence or frequency one with it): the prompt's
    token 65, top at 3.0, divided by 2 falls under 66's 2.0 (with full numerics the engine samples the
    row it is given; a row of zeros elsewhere)."""
    eng = _engine(numerics="off")
    row = np.zeros(TINY.vocab_size)
    row[[65, 66]] = 3.0, 2.0
    req = eng.add_request([1, 65], RequestParams(max_tokens=4, sampling=SamplingParams(temperature=0.0,
                                                                                      repetition_penalty=2.0)))
    assert eng.sampler.sample(req, row) == 66


def test_the_logit_bias_is_added_before_the_penalties():
    """vLLM's order (vllm/v1/sample/sampler.py: logits processors, logit_bias among them, then
    apply_penalties): 65's 4.0 + 4.0 bias, then / 2 for being in the prompt, is 4.0 < 66's 5.0; the
    penalty first would give 4.0 / 2 + 4.0 = 6.0 and draw 65."""
    eng = _engine(numerics="off")
    row = np.zeros(TINY.vocab_size)
    row[[65, 66]] = 4.0, 5.0
    req = eng.add_request([1, 65], RequestParams(max_tokens=4, sampling=SamplingParams(
        temperature=0.0, repetition_penalty=2.0, logit_bias=((65, 4.0),))))
    assert eng.sampler.sample(req, row) == 66


def test_the_counts_are_kept_across_steps_and_a_preemption_counts_nothing_twice():
    """One TokenCounts a request, made at its first draw and brought up to date with each new token
    (not rebuilt from the whole output each step); a preempted request, recomputed from its prompt and
    output, goes on with the same counts and the same tokens as one never preempted."""
    sampling = SamplingParams(temperature=0.0, frequency_penalty=2.0, repetition_penalty=1.3)
    prompt = [1] + [10, 20, 30] * 3
    made = []
    real_init = TokenCounts.__init__

    def counting_init(self, *args, **kwargs):
        made.append(self)
        real_init(self, *args, **kwargs)

    TokenCounts.__init__ = counting_init
    try:
        plain = _engine()
        whole = plain.add_request(prompt, RequestParams(max_tokens=10, ignore_eos=True, sampling=sampling))
        _run(plain)
        assert len(made) == 1 and made[0].num_counted == len(whole.output_ids) - 1
        eng = _engine()
        req = eng.add_request(prompt, RequestParams(max_tokens=10, ignore_eos=True, sampling=sampling))
        while len(req.output_ids) < 4:
            eng.step()
        eng.scheduler._preempt(req)
        _run(eng)
    finally:
        TokenCounts.__init__ = real_init
    assert req.num_preemptions == 1 and req.output_ids == whole.output_ids
    assert len(made) == 2 and req.token_counts is made[1]
    assert made[1].output_counts.tolist() == np.bincount(req.output_ids[:-1], minlength=TINY.vocab_size).tolist()
