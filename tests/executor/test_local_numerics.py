"""Sharded execution through device workers and the fabric equals the reference model."""
from __future__ import annotations

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.generate import generate

TINY = model_preset("tiny")
WEIGHTS = load_weights(TINY)
REF = LlamaModel(TINY, WEIGHTS)
PROMPTS = [[1, 40, 41, 42, 43], [1, 100, 7], [1, 200, 201, 9, 9, 9, 80]]
MAPPINGS = [  # (devices, pp, tp): pipeline, tensor and hybrid on 1, 2, 4 and 8 devices
    (1, 0, 1), (1, 1, 1), (2, 0, 1), (2, 1, 2), (2, 2, 1), (4, 0, 1), (4, 1, 4), (4, 2, 2),
    (8, 0, 1), (8, 1, 8), (8, 2, 4), (8, 4, 2)]


@pytest.fixture(scope="module")
def reference():
    return [generate(REF, p, 32, ignore_eos=True) for p in PROMPTS]


@pytest.mark.parametrize("devices, pp, tp", MAPPINGS)
def test_greedy_tokens_and_logits_equal_reference(devices, pp, tp, reference):
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(devices, pp, tp), numerics="full")
    ex = LocalExecutor(cfg, weights=WEIGHTS)
    got = generate_batch(ex, PROMPTS, 32)
    for q, ref in enumerate(reference):
        assert got.token_ids[q] == ref.token_ids
        for a, b in zip(got.logits[q], ref.logits):
            assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-4


def test_chunked_prefill_matches_too(reference):
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(8, 2, 4), numerics="full")
    got = generate_batch(LocalExecutor(cfg, weights=WEIGHTS), PROMPTS, 8, prefill_chunk=2)
    assert [t for t in got.token_ids] == [r.token_ids[:8] for r in reference]
