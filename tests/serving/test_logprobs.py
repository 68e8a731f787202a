"""Log-probabilities: the sampler's distribution written plainly here in float64 and compared with
`logprobs_of`, then the server's `logprobs`, `echo` and `prompt_logprobs` against the reference
model's own logits (full numerics) and the stand-in sampler's uniform distribution (timing-only)."""
from __future__ import annotations

import json
import math

import httpx
import numpy as np
import openai
import pytest

from api.server import Server
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.sampling import SamplingParams, logprobs_of, make_generator, sample, token_logprob
from cent_serve.model.tokenizer import ByteTokenizer

TINY = model_preset("tiny")
PROMPT = [1, 72, 101, 108, 108, 111, 44, 32]


def plain_log_softmax(x) -> list[float]:
    """log p_i = x_i - log(sum_j exp(x_j)), one float at a time."""
    m = max(x)
    total = sum(math.exp(v - m) for v in x)
    return [v - m - math.log(total) for v in x]


def plain_processed(logits, temperature: float, top_k: int, top_p: float) -> list[float]:
    """The distribution `sample` draws from: scale, keep the k largest, then the smallest
    most-likely set whose mass reaches top_p; renormalize; -inf elsewhere."""
    scaled = [v / temperature for v in logits]
    order = sorted(range(len(scaled)), key=lambda i: (-scaled[i], i))
    if top_k > 0:
        order = order[:top_k]
    probs = [math.exp(v) for v in plain_log_softmax([scaled[i] for i in order])]
    kept, mass = [], 0.0
    for i, p in zip(order, probs):
        kept.append(i)
        mass += p
        if mass >= top_p:
            break
    lp = plain_log_softmax([scaled[i] for i in kept])
    out = [-math.inf] * len(logits)
    for i, v in zip(kept, lp):
        out[i] = v
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, -1, 1.0), (0.7, -1, 1.0), (1.3, 5, 1.0),
                                                     (0.9, -1, 0.8), (1.0, 8, 0.6)])
def test_processed_logprobs_are_the_plain_float64_formula(temperature, top_k, top_p):
    logits = np.random.default_rng(1).normal(0, 2, 40).astype(np.float32)
    got = logprobs_of(logits, SamplingParams(temperature, top_p, top_k))
    want = plain_processed([float(v) for v in logits], temperature, top_k, top_p)
    assert np.isneginf(got).tolist() == [math.isinf(v) for v in want]
    finite = ~np.isneginf(got)
    np.testing.assert_allclose(got[finite], np.array(want)[finite], rtol=0, atol=1e-12)
    raw = logprobs_of(logits, SamplingParams(temperature, top_p, top_k), "raw_logprobs")
    np.testing.assert_allclose(raw, plain_log_softmax([float(v) for v in logits]), rtol=0, atol=1e-12)


def test_processed_logprobs_are_what_the_sampler_draws():
    """20,000 draws of `sample` land as often as exp(logprob) says (5 standard errors)."""
    logits = np.random.default_rng(2).normal(0, 1.5, 12)
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=-1)
    p = np.exp(logprobs_of(logits, params))
    rng, n = make_generator(5), 20_000
    counts = np.bincount([sample(logits, params, rng) for _ in range(n)], minlength=12)
    assert counts[p == 0].sum() == 0  # the cut tokens are never drawn
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) <= 5 * se + 1e-12)


def test_token_logprob_ranks_and_top():
    lp = np.log(np.array([0.1, 0.4, 0.1, 0.4]))
    e = token_logprob(lp, 2, 3)
    assert e.rank == 3 and e.logprob == pytest.approx(math.log(0.1))
    assert [i for i, _ in e.top] == [1, 3, 0]  # by logprob, ties by id


def _cfg(numerics: str) -> CentConfig:
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(4, 0, 1), numerics=numerics)
    cfg.server.port = 0
    cfg.scheduler.prefill_chunk_tokens = 3  # the prompt's logits arrive over several rounds
    return cfg


@pytest.fixture(scope="module")
def full():
    with Server(_cfg("full"), "local") as s:
        yield s


@pytest.fixture(scope="module")
def reference():
    return LlamaModel(TINY, load_weights(TINY))


def _ref_logprobs(reference, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) raw log-probabilities of the reference model, float64, plainly."""
    logits = reference.forward(np.array(ids), reference.new_cache())
    return np.array([plain_log_softmax([float(v) for v in row]) for row in logits])


def test_completion_logprobs_and_echo_are_the_reference_model_s(full, reference):
    """Greedy: every generated token's logprob, rank-1 top and the echoed prompt's logprobs are
    the reference model's log-softmax at that position (float32 devices: 1e-4)."""
    r = httpx.post(full.url + "/v1/completions", json=dict(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, ignore_eos=True, logprobs=3, echo=True,
        return_token_ids=True), timeout=60).json()
    c = r["choices"][0]
    out = c["token_ids"]
    lp = _ref_logprobs(reference, PROMPT + out)
    ids = PROMPT + out
    got = c["logprobs"]
    assert len(got["tokens"]) == len(ids) and got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
    want = [lp[i - 1][ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(got["token_logprobs"][1:], want, atol=1e-4)
    tok = ByteTokenizer()
    for i in range(len(PROMPT), len(ids)):  # greedy: the token is the most likely one
        top = got["top_logprobs"][i]
        assert len(top) == 3 and tok.token_bytes(ids[i]).decode("utf-8", "replace") in top
        assert max(top.values()) == pytest.approx(got["token_logprobs"][i], abs=1e-6)
    assert got["text_offset"][1] == 0 and got["text_offset"][-1] == len(c["text"]) - len(
        tok.decode([ids[-1]]))


def test_prompt_logprobs_of_vllm_and_sampled_logprobs_with_temperature(full, reference):
    """`prompt_logprobs` (vLLM's shape) and sampled tokens' logprobs after temperature and top-k
    (processed_logprobs): the plain formula on the reference model's logits."""
    t, k = 0.8, 20
    r = httpx.post(full.url + "/v1/completions", json=dict(
        model="tiny", prompt=PROMPT, max_tokens=4, temperature=t, top_k=k, seed=3, ignore_eos=True, logprobs=2,
        prompt_logprobs=1, return_token_ids=True), timeout=60).json()
    c = r["choices"][0]
    ids = PROMPT + c["token_ids"]
    logits = reference.forward(np.array(ids), reference.new_cache())
    pl = c["prompt_logprobs"]
    assert pl[0] is None and len(pl) == len(PROMPT)
    for i in range(1, len(PROMPT)):
        want = plain_processed([float(v) for v in logits[i - 1]], t, k, 1.0)
        entry = pl[i][str(PROMPT[i])]
        assert entry["logprob"] == pytest.approx(max(want[PROMPT[i]], -9999.0), abs=1e-4)
        assert entry["decoded_token"] == ByteTokenizer().token_bytes(PROMPT[i]).decode("utf-8", "replace")
    for j, tid in enumerate(c["token_ids"]):
        want = plain_processed([float(v) for v in logits[len(PROMPT) + j - 1]], t, k, 1.0)
        assert c["logprobs"]["token_logprobs"][j] == pytest.approx(want[tid], abs=1e-4)


def test_chat_logprobs_have_openai_s_chat_shape(full):
    client = openai.OpenAI(base_url=full.url + "/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2 and isinstance(e.bytes, list)
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob and e.logprob <= e.top_logprobs[0].logprob
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                            logprobs=True, stream=True, extra_body={"ignore_eos": True})
    streamed = [e for ch in stream for c in ch.choices if c.logprobs for e in c.logprobs.content]
    assert len(streamed) == 4 and all(e.top_logprobs == [] for e in streamed)


def test_timing_only_logprobs_are_the_stand_in_sampler_s_uniform_distribution():
    with Server(_cfg("off"), "local") as s:
        r = httpx.post(s.url + "/v1/completions", json=dict(
            model="tiny", prompt="hello", max_tokens=5, ignore_eos=True, logprobs=2, echo=True), timeout=60).json()
    got = r["choices"][0]["logprobs"]
    k = len(ByteTokenizer().stand_in_ids())
    assert k == 94
    assert got["token_logprobs"][-5:] == [pytest.approx(-math.log(k))] * 5
    assert got["tokens"][:6] == ["<s>", "h", "e", "l", "l", "o"]  # the echoed prompt, then the output
    assert all(len(t) == 1 and not t.isspace() for t in got["tokens"][6:])  # one visible character each


@pytest.mark.parametrize("body,param", [
    ({"logprobs": 21}, "logprobs"), ({"logprobs": True}, "logprobs"), ({"prompt_logprobs": -1}, "prompt_logprobs")])
def test_bad_logprob_counts_are_400_naming_the_field(full, body, param):
    r = httpx.post(full.url + "/v1/completions", json=dict(model="tiny", prompt="hi", max_tokens=1, **body))
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_chat_top_logprobs_needs_logprobs(full):
    r = httpx.post(full.url + "/v1/chat/completions", json=dict(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1, top_logprobs=2))
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_prompt_logprobs_on_a_tensor_parallel_mapping(reference):
    """pp 2 x tp 2: the LM head's vocabulary is split over the stage's devices and gathered, for
    every prompt position as for the last."""
    cfg = _cfg("full")
    cfg.parallel = ParallelConfig(4, 2, 2)
    with Server(cfg, "local") as s:
        r = httpx.post(s.url + "/v1/completions", json=dict(
            model="tiny", prompt=PROMPT, max_tokens=2, temperature=0, ignore_eos=True, logprobs=1, echo=True,
            return_token_ids=True), timeout=60).json()
    c = r["choices"][0]
    ids = PROMPT + c["token_ids"]
    lp = _ref_logprobs(reference, ids)
    np.testing.assert_allclose(c["logprobs"]["token_logprobs"][1:], [lp[i - 1][ids[i]] for i in range(1, len(ids))],
                               atol=1e-4)


def test_echo_with_no_tokens_scores_the_prompt(full, reference):
    """OpenAI's legacy echo with max_tokens=0 (prompt scoring, which vLLM answers): the prompt back with the reference model's log-probabilities of its tokens,
    nothing generated, the same streamed; 0 without echo is still refused, naming echo."""
    req = dict(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
    r = httpx.post(full.url + "/v1/completions", json=req, timeout=60).json()
    c = r["choices"][0]
    tok = ByteTokenizer()
    assert c["text"] == tok.decode(PROMPT[1:]) and c["finish_reason"] == "length"
    assert r["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 0, "total_tokens": len(PROMPT),
                          "prompt_tokens_details": None, "completion_tokens_details": None}
    lp = _ref_logprobs(reference, PROMPT)
    got = c["logprobs"]
    assert len(got["tokens"]) == len(PROMPT) and got["token_logprobs"][0] is None
    np.testing.assert_allclose(got["token_logprobs"][1:], [lp[i - 1][PROMPT[i]] for i in range(1, len(PROMPT))],
                               atol=1e-4)
    chunks = []
    with httpx.stream("POST", full.url + "/v1/completions", json=dict(req, stream=True), timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    assert len(chunks) == 1 and chunks[0]["choices"][0]["text"] == c["text"]
    assert chunks[0]["choices"][0]["logprobs"] == got and chunks[0]["choices"][0]["finish_reason"] == "length"
    client = openai.OpenAI(base_url=full.url + "/v1", api_key="none")
    # the same sampling as `req` (temperature 0): at the default temperature the processed log-probabilities
    # are summed over the sampler's candidates in their order, which may differ from greedy's in the last bit
    scored = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0, temperature=0)
    assert scored.choices[0].logprobs.token_logprobs == got["token_logprobs"]
    bad = httpx.post(full.url + "/v1/completions", json=dict(req, echo=False), timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    assert "0 with echo" in bad.json()["error"]["message"]
    bad = httpx.post(full.url + "/v1/completions", json=dict(req, min_tokens=2), timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "min_tokens"
    assert "use 0" in bad.json()["error"]["message"]
