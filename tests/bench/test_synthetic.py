"""Synthetic arrivals and lengths: rates and dispersion against the gamma formulas, seeding."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cent_serve.bench import (FixedLengths, TraceLengths, TraceOptions, UniformLengths,
                              arrival_times_s, iter_arrival_times_s, load_trace,
                              sample_trace_path, synthetic_trace)

NUM_SAMPLES = 20_000


def gaps_s(rate: float, burstiness: float, seed: int = 7) -> np.ndarray:
    return np.diff(arrival_times_s(NUM_SAMPLES + 1, rate, burstiness, seed))  # (NUM_SAMPLES,)


def test_poisson_mean_rate_and_unit_cv():
    gaps = gaps_s(rate=5.0, burstiness=1.0)
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.03)  # SE of the mean: 0.7 %
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_rate_and_cv_follow_burstiness(burstiness):
    gaps = gaps_s(rate=20.0, burstiness=burstiness)
    assert 1 / gaps.mean() == pytest.approx(20.0, rel=0.05)  # SE of the mean: CV / sqrt(n)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.07)


def test_same_seed_same_trace_anywhere():
    a = list(synthetic_trace(50, 3.0, burstiness=0.5, lengths=UniformLengths(), seed=11))
    assert a == list(synthetic_trace(50, 3.0, burstiness=0.5, lengths=UniformLengths(), seed=11))
    assert a != list(synthetic_trace(50, 3.0, burstiness=0.5, lengths=UniformLengths(), seed=12))
    # The documented stream: PCG64(SeedSequence([seed, 0])), gamma gaps, first arrival at 0.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0, 0])))
    expected = np.concatenate([[0.0], np.cumsum(rng.gamma(0.5, 1 / (2.0 * 0.5), size=9))])
    assert arrival_times_s(10, rate=2.0, burstiness=0.5, seed=0).tolist() == expected.tolist()
    # Pinned draws: a change here means traces differ across numpy versions or machines.
    assert arrival_times_s(3, rate=1.0, seed=0).tolist() == pytest.approx(
        [0.0, 0.6799319039689096, 1.6995290054347743], rel=1e-12)


def test_unbounded_iterator_matches_the_array_across_chunks():
    head = [t for _, t in zip(range(5000), iter_arrival_times_s(2.0, 0.5, seed=4))]
    assert head == arrival_times_s(5000, 2.0, 0.5, seed=4).tolist()
    assert np.all(np.diff(head) >= 0) and head[0] == 0.0


def test_infinite_rate_sends_everything_at_once():
    assert arrival_times_s(4, math.inf).tolist() == [0.0] * 4


@pytest.mark.parametrize("rate, burstiness", [(0.0, 1.0), (float("nan"), 1.0), (1.0, 0.0),
                                              (1.0, math.inf)])
def test_bad_process_parameters(rate, burstiness):
    with pytest.raises(ValueError, match="rate=|burstiness="):
        arrival_times_s(3, rate, burstiness)


def test_uniform_lengths_cover_inclusive_ranges():
    reqs = list(synthetic_trace(2000, 10.0, lengths=UniformLengths((3, 5), (1, 2)), seed=1))
    assert {r.num_prompt_tokens for r in reqs} == {3, 4, 5}
    assert {r.num_output_tokens for r in reqs} == {1, 2}
    with pytest.raises(ValueError, match="prompt_range"):
        UniformLengths((5, 3), (1, 2))


def test_trace_lengths_draw_whole_rows_and_leave_arrivals_alone():
    source = list(load_trace(sample_trace_path()))
    pairs = {(r.num_prompt_tokens, r.num_output_tokens) for r in source}
    lengths = TraceLengths.from_trace(sample_trace_path())
    reqs = list(synthetic_trace(500, 4.0, lengths=lengths, seed=2))
    drawn = {(r.num_prompt_tokens, r.num_output_tokens) for r in reqs}
    assert drawn <= pairs and len(drawn) > 100  # whole rows, and many of them
    fixed = list(synthetic_trace(500, 4.0, lengths=FixedLengths(7, 9), seed=2))
    assert [r.arrival_s for r in fixed] == [r.arrival_s for r in reqs]
    assert {(r.num_prompt_tokens, r.num_output_tokens) for r in fixed} == {(7, 9)}


def test_trace_lengths_read_a_csv_of_lengths_only(tmp_path):
    """Vidur's length traces (`num_prefill_tokens, num_decode_tokens, num_total_tokens, pd_ratio`, no
    arrival column) give lengths; `load_trace` still refuses them, naming what they lack."""
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n100,20,120,5.0\n30,3,33,10\n")
    lengths = TraceLengths.from_trace(path, options=TraceOptions(max_prompt_tokens=64))
    assert lengths.prompt_tokens.tolist() == [64, 30] and lengths.output_tokens.tolist() == [20, 3]
    assert TraceLengths.from_trace(path, "vidur").prompt_tokens.tolist() == [100, 30]
    with pytest.raises(ValueError, match="lengths only .*no arrival column 'arrived_at'"):
        list(load_trace(path))


def test_options_apply_to_synthetic_traces():
    reqs = list(synthetic_trace(100, 1.0, lengths=FixedLengths(300, 50), seed=5,
                                options=TraceOptions(skip_requests=10, num_requests=20,
                                                     request_rate=8.0, max_prompt_tokens=256)))
    assert [r.request_id for r in reqs] == [str(i) for i in range(10, 30)]
    assert 19 / reqs[-1].arrival_s == pytest.approx(8.0, rel=1e-12)
    assert {r.num_prompt_tokens for r in reqs} == {256}
