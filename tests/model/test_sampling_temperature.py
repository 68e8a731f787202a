"""A temperature too small to divide by: greedy, as vLLM's sampler takes it (below 1e-5)."""
import numpy as np
import pytest

from cent_serve.model import sampling
from cent_serve.model.sampling import SamplingParams, logprobs_of, make_generator, sample

LOGITS = np.array([0.1, 30.0, 2.0, -1.0])


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 1e-6])
def test_a_temperature_below_the_epsilon_is_greedy_not_nan(temperature):
    params = SamplingParams(temperature=temperature)
    assert params.is_greedy
    assert {sample(LOGITS, params, make_generator(seed)) for seed in range(16)} == {1}
    lp = logprobs_of(LOGITS, params, "processed_logprobs")
    assert np.isfinite(lp).all()  # greedy reports the model's own logprobs, as at temperature 0
    np.testing.assert_array_equal(lp, logprobs_of(LOGITS, SamplingParams(temperature=0.0), "processed_logprobs"))


def test_a_temperature_at_the_epsilon_still_samples():
    params = SamplingParams(temperature=sampling.SAMPLING_EPS)
    assert not params.is_greedy
    lp = logprobs_of(LOGITS, params, "processed_logprobs")  # the sampler's: scaled by 1e5, still finite
    assert lp[1] == 0.0 and np.isfinite(lp).all() and lp[0] == pytest.approx(-29.9e5)
