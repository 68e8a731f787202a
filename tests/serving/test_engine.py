"""The engine: continuous batching in simulated time over the device workers (local executor)."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.generate import generate
from cent_serve.model.sampling import SamplingParams, logprobs_of, token_logprob
from cent_serve.request import RequestParams
from cent_serve.scheduler import QueueFull, kv_room
from tests.serving.utils import run_until_idle as _run
from tests.serving.utils import tiny_engine as _engine

TINY = model_preset("tiny")
WEIGHTS = load_weights(TINY)
GREEDY = SamplingParams(temperature=0.0)


@pytest.mark.parametrize("numerics", ["full", "off"])
@pytest.mark.parametrize("devices, pp, tp", [(8, 0, 1), (8, 2, 4)])
def test_single_request_ttft_tpot_equal_the_timing_model(numerics, devices, pp, tp):
    eng = _engine(devices, pp, tp, numerics)
    P, n = 17, 9
    req = eng.add_request(list(range(3, 3 + P)), RequestParams(max_tokens=n, ignore_eos=True, sampling=GREEDY))
    _run(eng)
    t = req.timing()
    prefill = sum(eng.timer.token_s(L) for L in range(1, P + 1))  # token by token, as the paper
    decode = sum(eng.timer.token_s(L) for L in range(P + 1, P + n)) / (n - 1)
    assert t["ttft_s"] == pytest.approx(prefill, rel=1e-9)
    assert t["tpot_s"] == pytest.approx(decode, rel=1e-9)
    assert len(req.output_ids) == n and req.finish_reason == "length"
    # its energy: the closed form's for each token it ran through the model (its blocks, the head's share)
    from cent_serve.timing.energy import token_energy_j
    assert t["energy_mj"] == pytest.approx(1e3 * sum(token_energy_j(eng.timer, L) for L in range(1, P + n)), rel=1e-9)


def test_chunked_prefill_is_faster_and_gives_the_same_tokens():
    prompt = [1] + list(range(40, 70))
    ref = generate(LlamaModel(TINY, WEIGHTS), prompt, 6, ignore_eos=True).token_ids
    out = {}
    for chunk in (1, 8):
        eng = _engine(prefill_chunk_tokens=chunk)
        req = eng.add_request(prompt, RequestParams(max_tokens=6, ignore_eos=True, sampling=GREEDY))
        _run(eng)
        out[chunk] = req
    assert out[1].output_ids == out[8].output_ids == ref
    assert out[8].timing()["ttft_s"] < out[1].timing()["ttft_s"]


def test_concurrent_requests_equal_the_reference_model():
    ref_model = LlamaModel(TINY, WEIGHTS)
    eng = _engine(devices=8, pp=2, tp=4, max_seqs_per_stage=3)
    prompts = [[1] + [10 + i, 20 + 2 * i, 30] * (1 + i % 3) for i in range(10)]
    reqs = [eng.add_request(p, RequestParams(max_tokens=8, ignore_eos=True, sampling=GREEDY)) for p in prompts]
    _run(eng)
    for p, r in zip(prompts, reqs):
        assert r.output_ids == generate(ref_model, p, 8, ignore_eos=True).token_ids
    # 2 lanes x 3 sequences: at most 6 ran together, the rest queued
    assert max(r.timing()["queue_s"] for r in reqs) > 0
    assert eng.scheduler.kv_usage() == 0.0


def test_preemption_by_recomputation_keeps_the_tokens():
    ref_model = LlamaModel(TINY, WEIGHTS)
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics="full")
    cfg.scheduler.max_seqs_per_stage = 4
    cfg.scheduler.num_kv_blocks_override = 12  # 12 blocks of 16 tokens per replica
    eng = Engine(cfg, weights=WEIGHTS)
    assert kv_room(cfg, eng.timer.mapping).capped(12).num_blocks == eng.scheduler.kv_blocks == 12
    prompts = [[1] + [50 + i] * 20 for i in range(6)]  # 6 x (21 prompt + 30 out) tokens >> 12 x 16
    reqs = [eng.add_request(p, RequestParams(max_tokens=30, ignore_eos=True, sampling=GREEDY)) for p in prompts]
    rounds_victims = []  # per round with preemptions, which requests it preempted
    while eng.has_work():
        before = [r.num_preemptions for r in reqs]
        eng.step()
        if hit := [i for i, r in enumerate(reqs) if r.num_preemptions > before[i]]:
            rounds_victims.append(hit)
    assert eng.scheduler.num_preemptions > 0
    # vLLM's policy (the scheduler's docstring): the most recently admitted sequences make room. All six
    # were admitted at once (2 blocks each, the whole pool): the first round short of blocks evicts the
    # 6th and the 5th, and the first three are never evicted
    assert rounds_victims[0] == [4, 5] and [r.num_preemptions for r in reqs[:3]] == [0, 0, 0], rounds_victims
    for p, r in zip(prompts, reqs):
        assert r.output_ids == generate(ref_model, p, 30, ignore_eos=True).token_ids
    assert eng.scheduler.kv_usage() == 0.0
    eng.step()  # the devices drop the last finished sequences at the next call
    assert all(w.kv.num_free_blocks == w.kv.num_blocks for ex in eng.executors for w in ex.workers.values())


def test_a_prompt_that_can_never_fit_is_refused_and_nothing_changes():
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(8, 0, 1), numerics="off")
    cfg.scheduler.num_kv_blocks_override = 2
    eng = Engine(cfg)
    assert eng.scheduler.kv_blocks == 2
    with pytest.raises(ValueError, match="KV blocks"):
        eng.add_request([5] * (2 * cfg.scheduler.kv_block_tokens), RequestParams(max_tokens=4))
    assert not eng.has_work() and not eng.requests


def test_abort_frees_kv_at_once():
    eng = _engine(numerics="off")
    a = eng.add_request([1, 2, 3] * 30, RequestParams(max_tokens=50, ignore_eos=True))
    b = eng.add_request([1, 5], RequestParams(max_tokens=50, ignore_eos=True))
    for _ in range(5):
        eng.step()
    used = eng.scheduler.kv_usage()
    assert used > 0
    eng.abort(a.request_id)
    assert a.finish_reason == "abort" and eng.scheduler.kv_usage() < used
    _run(eng)
    assert b.finish_reason == "length" and len(b.output_ids) == 50


def test_queue_bound_and_bad_prompts():
    eng = _engine(numerics="off", max_waiting=2)  # 8 lanes: 8 requests take one at the next round, 2 wait
    for _ in range(8 + 2):
        eng.add_request([1, 2], RequestParams())
    with pytest.raises(QueueFull, match="max_waiting"):
        eng.add_request([1, 2], RequestParams())
    with pytest.raises(ValueError, match="empty"):
        eng.add_request([], RequestParams())
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request([1, 10_000], RequestParams())
    with pytest.raises(ValueError, match="context"):
        eng.add_request([1] * TINY.max_seq_len, RequestParams())
    with pytest.raises(ValueError, match="max_tokens=5 does not fit: the prompt leaves 4 tokens"):
        eng.add_request([1] * (TINY.max_seq_len - 4), RequestParams(max_tokens=5))  # as the API refuses it
    assert eng.scheduler.num_waiting == 10 and len(eng.requests) == 10
    eng.step()  # 8 take a lane: 2 wait, the bound again
    assert (eng.scheduler.num_running, eng.scheduler.num_waiting) == (8, 2)
    with pytest.raises(QueueFull, match="max_waiting"):
        eng.add_request([1, 2], RequestParams())


def test_arrivals_from_a_trace_are_respected_in_simulated_time():
    eng = _engine(numerics="off")
    late = eng.add_request([1, 2, 3], RequestParams(max_tokens=4, ignore_eos=True), arrival_s=5.0)
    early = eng.add_request([1, 2, 3], RequestParams(max_tokens=4, ignore_eos=True), arrival_s=1.0)
    _run(eng)
    assert early.scheduled_s == 1.0 and late.scheduled_s == 5.0
    assert early.timing()["ttft_s"] == pytest.approx(late.timing()["ttft_s"], rel=1e-12)


def test_stop_strings_and_eos():
    eng = _engine()
    free = eng.add_request([1, 72, 105], RequestParams(max_tokens=20, ignore_eos=True, sampling=GREEDY))
    _run(eng)
    text = eng.text(free)
    assert len(text) > 3 and free.text == ""  # without stop strings the engine does not decode
    stop = text[2:4]
    eng2 = _engine()
    cut = eng2.add_request([1, 72, 105], RequestParams(max_tokens=20, ignore_eos=True, sampling=GREEDY,
                                                       stop=(stop,)))
    _run(eng2)
    assert cut.finish_reason == "stop" and eng2.text(cut) == text[:text.find(stop)]
    eng3 = _engine()
    first = free.output_ids[0]
    eos = eng3.add_request([1, 72, 105], RequestParams(max_tokens=20, sampling=GREEDY, stop_token_ids=(first,)))
    _run(eng3)
    assert eos.finish_reason == "stop" and eos.output_ids == [first] and eng3.text(eos) == ""


@pytest.mark.parametrize("stop", ["\u02a4", "Y\u02a4", "\u4e2d\u6587"])
def test_a_stop_string_ending_in_a_character_of_several_bytes_stops(stop):
    """A byte-level tokenizer's last byte of a character adds no character to the text (its half
    made one already showed as U+FFFD), so a search window reckoned from the text's length before it
    missed every stop string ending in such a character (audit: "\u02a4" ran to max_tokens)."""
    eng = _engine(numerics="off")
    forced = iter(eng.tokenizer.encode(f"ab{stop}cd", add_bos=False))
    eng.sampler.sample = lambda req, row: next(forced)
    req = eng.add_request([1, 72], RequestParams(max_tokens=20, ignore_eos=True, stop=(stop,)))
    _run(eng)
    assert (req.finish_reason, req.stop_reason, eng.text(req)) == ("stop", stop, "ab")


def test_a_stop_string_in_text_before_min_tokens_does_not_stop_it_later():
    """A stop string wholly in the text made before min_tokens allowed stopping ("a" of "abc") stopped
    the request once min_tokens was reached, whose stream had sent "ab" already (review; vLLM searches
    each stop string in what is new only). A longer one ending in new text still stops it."""
    for stop, want in ((("a", "xyz"), ("length", None, "abcdefgh")), (("a", "cd"), ("stop", "cd", "ab"))):
        assert _forced_abcdefgh(stop, min_tokens=3) == want, stop


def _forced_abcdefgh(stop: tuple, min_tokens: int) -> tuple:
    """(finish_reason, stop_reason, text) of a request whose 8 output tokens are forced to spell
    "abcdefgh" (ignore_eos), with `stop` strings and `min_tokens`."""
    eng = _engine(numerics="off")
    forced = iter(eng.tokenizer.encode("abcdefgh", add_bos=False))
    eng.sampler.sample = lambda req, row: next(forced)
    req = eng.add_request([1, 72], RequestParams(max_tokens=8, ignore_eos=True, stop=stop, min_tokens=min_tokens))
    _run(eng)
    return req.finish_reason, req.stop_reason, eng.text(req)


def test_a_stop_string_the_min_tokens_th_token_completes_does_not_stop_it():
    """vLLM searches stop strings only once the output is longer than min_tokens, in the text of the
    tokens after the first min_tokens (vllm/v1/engine/detokenizer.py `BaseIncrementalDetokenizer.update`:
    `len(self.output_token_ids) > self.min_tokens`, the check offset moved past the text of those); the
    engine searched from the min_tokens-th token on, so "bc" ended by the 3rd token of min_tokens=3
    stopped it at "a". One straddling into that text and ended by the 4th ("cd") still stops it."""
    for stop, want in ((("bc",), ("length", None, "abcdefgh")), (("cd",), ("stop", "cd", "ab"))):
        assert _forced_abcdefgh(stop, min_tokens=3) == want, stop


@pytest.mark.parametrize("include", [False, True])
def test_of_two_stop_strings_in_the_new_text_the_first_listed_stops_it(include):
    """When the new text completes two stop strings ("b" and "ab" at the token "b"), vLLM takes the first
    of the list, not the one that starts earliest (vllm/v1/engine/detokenizer.py `check_stop_strings`
    returns the first listed that it finds); the engine took "ab" and cut the text to ""."""
    for stop, want in ((("b", "ab"), ("b", "a")), (("ab", "b"), ("ab", ""))):
        eng = _engine(numerics="off")
        forced = iter(eng.tokenizer.encode("abcd", add_bos=False))
        eng.sampler.sample = lambda req, row: next(forced)
        req = eng.add_request([1, 72], RequestParams(max_tokens=4, ignore_eos=True, stop=stop,
                                                     include_stop_str_in_output=include))
        _run(eng)
        reason, text = want
        assert (req.finish_reason, req.stop_reason, eng.text(req)) == ("stop", reason, "ab" if include else text)


@pytest.mark.parametrize("ignore_eos", [False, True])
@pytest.mark.parametrize("mode", ["processed_logprobs", "raw_logprobs"])
def test_min_tokens_keeps_the_stop_tokens_from_being_drawn(ignore_eos, mode):
    """Before min_tokens, vLLM masks its stop ids and the eos ids before sampling, greedy too, the eos under
    ignore_eos as well (vllm/sampling_params.py `update_from_generation_config` puts them in
    all_stop_token_ids whatever ignore_eos says, "to support min_tokens processing", and the min-tokens
    processor masks those); the engine drew them and kept them in the output (a `</s>` in the text with
    skip_special_tokens false), and under ignore_eos drew the eos. Raw logprobs are the row's own;
    processed ones see the mask, as vLLM runs its min-tokens processor before it takes them
    (vllm/v1/sample/sampler.py, step 5a before 7): a masked token's is -inf and is no top alternative
    (they were the unmasked row's)."""
    eng = _engine(numerics="off", logprobs_mode=mode)
    eos, stop_id = eng.cfg.model.eos_token_id, 70
    row = np.zeros(eng.cfg.model.vocab_size)
    row[eos], row[stop_id], row[65] = 9.0, 8.0, 7.0  # the eos, then the stop id, then "A" (65) most likely
    masked = row.copy()
    masked[[stop_id, eos]] = -np.inf
    for sampling in (GREEDY, SamplingParams(temperature=0.05, seed=3)):
        p = RequestParams(max_tokens=8, min_tokens=2, stop_token_ids=(stop_id,), ignore_eos=ignore_eos,
                          sampling=sampling, logprobs=1)
        req = eng.add_request([1, 72], p)
        first = eng.sampler.sample(req, row)
        assert first == 65, sampling  # neither the stop id nor the eos, ignore_eos or not
        seen = row if mode == "raw_logprobs" else masked
        assert req.logprobs[-1] == token_logprob(logprobs_of(seen, sampling, mode), first, 1)
        assert req.logprobs[-1].top[0][0] == (eos if mode == "raw_logprobs" else 65)
        req.output_ids.extend([65, 65])  # min_tokens reached: the row as it came
        assert eng.sampler.sample(req, row) == eos
        assert req.logprobs[-1] == token_logprob(logprobs_of(row, sampling, mode), eos, 1)
        eng.abort(req.request_id)


def test_the_stand_in_sampler_draws_no_stop_id_before_min_tokens_either():
    """Timing-only runs follow the same rule: a stop id among the stand-in ids is not drawn before
    min_tokens (it was, and stayed in the output and its text); after it, it may be and stops the
    request. A request without stop ids draws exactly as before (the seeded draws unmoved)."""
    eng = _engine(numerics="off")
    ids = [int(i) for i in eng.sampler.stand_in_ids]
    keep = ids[:2]
    stops = tuple(ids[2:])  # every stand-in id but two
    for seed in range(5):
        p = RequestParams(max_tokens=12, min_tokens=6, stop_token_ids=stops, sampling=SamplingParams(seed=seed))
        req = eng.add_request([1, 72], p)
        _run(eng)
        assert set(req.output_ids[:6]) <= set(keep), req.output_ids
        assert req.finish_reason == "length" or req.output_ids[-1] in stops
    plain = RequestParams(max_tokens=6, min_tokens=6, sampling=SamplingParams(seed=1))
    a, b = _engine(numerics="off"), _engine(numerics="off")
    ra = a.add_request([1, 72], plain)
    rb = b.add_request([1, 72], RequestParams(max_tokens=6, min_tokens=0, sampling=SamplingParams(seed=1)))
    _run(a), _run(b)
    assert ra.output_ids == rb.output_ids


def test_two_runs_are_bit_identical():
    def run():
        eng = _engine(numerics="off", max_seqs_per_stage=2)
        reqs = [eng.add_request([1] * (3 + i), RequestParams(max_tokens=5 + i, ignore_eos=True),
                                arrival_s=0.001 * i) for i in range(12)]
        _run(eng)
        return [(r.output_ids, r.token_times_s, r.energy_j) for r in reqs]
    assert run() == run()


def test_greedy_stand_in_text_depends_on_the_prompt_alone():
    """Timing-only: greedy draws follow the prompt (argmax's would), whatever the seed or the order
    requests arrive in; sampled requests still follow their seeds."""
    eng = _engine(numerics="off")
    greedy = RequestParams(max_tokens=6, ignore_eos=True, sampling=GREEDY)
    seeded = RequestParams(max_tokens=6, ignore_eos=True, sampling=SamplingParams(temperature=0.0, seed=7))
    a, other, b, c = (eng.add_request(p, r) for p, r in
                      [([5, 6, 7], greedy), ([5, 6, 8], greedy), ([5, 6, 7], greedy), ([5, 6, 7], seeded)])
    top1 = eng.add_request([5, 6, 7], RequestParams(max_tokens=6, ignore_eos=True,
                                                    sampling=SamplingParams(temperature=1.0, top_k=1)))
    hot = [eng.add_request([5, 6, 7], RequestParams(max_tokens=6, ignore_eos=True)) for _ in range(2)]
    _run(eng)
    assert a.output_ids == b.output_ids == c.output_ids == top1.output_ids != other.output_ids
    assert hot[0].output_ids != hot[1].output_ids  # temperature 1, no seed: each its own draws


def test_data_parallel_replicas_when_devices_exceed_the_mapping():
    ref_model = LlamaModel(TINY, WEIGHTS)
    one, two = _engine(devices=8, pp=8), _engine(devices=16, pp=8)
    assert (one.num_replicas, two.num_replicas) == (1, 2)
    prompts = [[1, 30 + i, 40] for i in range(16)]
    runs = {}
    for name, eng in (("one", one), ("two", two)):
        runs[name] = [eng.add_request(p, RequestParams(max_tokens=4, ignore_eos=True, sampling=GREEDY))
                      for p in prompts]
        _run(eng)
    assert max(r.timing()["queue_s"] for r in runs["two"]) == 0.0  # 16 lanes: nobody waits
    assert max(r.timing()["queue_s"] for r in runs["one"]) > 0.0  # 8 lanes: half of them wait
    for p, r in zip(prompts, runs["two"]):
        assert r.output_ids == generate(ref_model, p, 4, ignore_eos=True).token_ids
    assert {d["replica"] for d in two.device_stats()} == {0, 1}


def test_a_new_request_takes_the_replica_with_the_most_free_kv_and_usage_counts_both():
    """Between lanes equally empty the scheduler prefers the replica with the most free KV blocks
    (`Scheduler._free_lane`): the second of two requests admitted together goes to the other replica,
    not beside the first (every request above runs on either, so nothing checked the choice). The KV
    usage is over both replicas' blocks."""
    eng = _engine(devices=16, pp=8, numerics="off")
    reqs = [eng.add_request([1] * 40, RequestParams(max_tokens=4, ignore_eos=True)) for _ in range(2)]
    eng.step()
    sched = eng.scheduler
    assert [r.replica for r in reqs] == [0, 1]
    held = sched.blocks_for(41)  # each request's whole prompt and its first token, reserved at admission
    assert sched.free_blocks == [sched.kv_blocks - held] * 2
    assert sched.kv_usage() == pytest.approx(2 * held / (2 * sched.kv_blocks), rel=1e-12)


def test_a_models_extra_eos_ids_stop_as_vllm_does():
    """model.extra_eos_token_ids end a request unless ignore_eos, with stop_reason = the id (vLLM
    adds a model's further eos ids to the request's stop ids); the eos itself leaves it None."""
    eng = _engine(numerics="full")
    free = eng.add_request([1, 7, 9], RequestParams(max_tokens=6, ignore_eos=True, sampling=GREEDY))
    _run(eng)
    third = free.output_ids[2]
    eng.cfg.model.extra_eos_token_ids = (third,)
    stopped = eng.add_request([1, 7, 9], RequestParams(max_tokens=6, sampling=GREEDY))
    ignored = eng.add_request([1, 7, 9], RequestParams(max_tokens=6, ignore_eos=True, sampling=GREEDY))
    _run(eng)
    assert stopped.output_ids == free.output_ids[:3] and stopped.finish_reason == "stop"
    assert stopped.stop_reason == third
    assert ignored.output_ids == free.output_ids and ignored.finish_reason == "length"


def test_extra_eos_ids_are_set_comma_separated_and_checked():
    from cent_serve.config import apply_overrides
    cfg = apply_overrides(CentConfig(model=TINY), ["model.extra_eos_token_ids=5, 9"])
    assert cfg.model.extra_eos_token_ids == (5, 9)
    assert apply_overrides(cfg, ["model.extra_eos_token_ids="]).model.extra_eos_token_ids == ()
    with pytest.raises(ValueError, match=r"model.extra_eos_token_ids='5,x' is invalid: expected integers"):
        apply_overrides(cfg, ["model.extra_eos_token_ids=5,x"])
    with pytest.raises(ValueError, match=r"model.extra_eos_token_ids=.*\b999999\b.*use an id in"):
        apply_overrides(cfg, ["model.extra_eos_token_ids=999999"])


def test_a_prompt_beyond_the_override_is_told_to_raise_it_not_to_use_more_devices():
    """With `scheduler.num_kv_blocks_override` below a prompt's blocks, the refusal said "shorten the
    prompt or use more devices": more devices hold more blocks, but the override caps them still. The
    fix names the override (and more devices too when the devices alone hold too few)."""
    from cent_serve.request import RequestRefused
    from cent_serve.kv_room import KVRoom
    from cent_serve.scheduler import Scheduler

    eng = _engine(numerics="off", num_kv_blocks_override=2)
    assert eng.scheduler.kv_blocks == 2 and eng.scheduler.device_kv.num_blocks > 2
    with pytest.raises(RequestRefused) as err:
        eng.add_request([5] * 40, RequestParams(max_tokens=4))  # 41 tokens: 3 blocks of 16
    msg = str(err.value)
    assert "use more devices" not in msg, msg
    assert msg.endswith(f"a replica holds 2, capped by scheduler.num_kv_blocks_override=2 (its devices hold "
                        f"{eng.scheduler.device_kv.num_blocks}): shorten the prompt, or raise "
                        "scheduler.num_kv_blocks_override to 3 or more, or remove it"), msg

    def refusal(devices: int, override: int | None) -> str:
        s = Scheduler(1, 1, 1, KVRoom.uniform(devices), 16, 8, kv_blocks_override=override)
        with pytest.raises(RequestRefused) as err:
            s.check_fits(100)  # 7 blocks
        return str(err.value)
    assert refusal(4, 2).endswith("shorten the prompt, or raise or remove scheduler.num_kv_blocks_override and "
                                  "use more devices")
    # the devices hold fewer than the override: theirs is the count, and the override would cap more of them
    assert refusal(4, 5).endswith("a replica holds 4, its devices' (scheduler.num_kv_blocks_override=5 would cap more "
                                  "of them): shorten the prompt, or raise or remove scheduler.num_kv_blocks_override "
                                  "and use more devices")
    for override in (None, 7, 50):  # the devices' own count is short: more of them is the fix
        assert refusal(4, override).endswith("a replica holds 4: shorten the prompt or use more devices")
