"""Sharded execution through device workers and the fabric equals the reference model."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve import sharding
from cent_serve.model import LlamaModel, layers, load_weights, model_config_from_hf
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


def test_a_round_of_single_tokens_is_projected_in_one_call_a_block_with_the_same_floats(monkeypatch):
    """A round of one token a sequence (decode, or prompts token by token, as a replay feeds them) projected and
    rotated each sequence's q, k, v in a call of its own on every block. A device makes one call a block for
    them all (`layers.project_qkv_rows`), none a sequence, and its tokens and logits are those of the calls a
    sequence (project_qkv on each row), bit for bit."""
    prompts = [[1, 40, 41, 42], [1, 100, 7, 8], [1, 200, 201, 9]]  # as long: every round holds all three
    cfg = CentConfig(model=TINY, parallel=ParallelConfig(2, 2, 1), numerics="full")
    calls = Counter()

    def counted(name, fn):
        def call(*args):
            calls[name] += 1
            return fn(*args)
        return call

    monkeypatch.setattr(sharding, "project_qkv", counted("a sequence", sharding.project_qkv))
    monkeypatch.setattr(layers, "project_qkv_rows", counted("a round", layers.project_qkv_rows))
    got = generate_batch(LocalExecutor(cfg, weights=WEIGHTS), prompts, 6, prefill_chunk=1)
    assert calls == {"a round": (4 + 6 - 1) * TINY.num_layers}

    def a_row_at_a_time(model, h, wq, wk, wv, starts, *rest):
        rows = [layers.project_qkv(model, h[i:i + 1], wq, wk, wv, p, *rest) for i, p in enumerate(starts)]
        return tuple(np.concatenate(t, axis=1) for t in zip(*rows))

    monkeypatch.setattr(layers, "project_qkv_rows", a_row_at_a_time)
    want = generate_batch(LocalExecutor(cfg, weights=WEIGHTS), prompts, 6, prefill_chunk=1)
    assert got.token_ids == want.token_ids
    for g, w in zip(got.logits, want.logits):
        assert len(g) == len(w) == 6 and all(np.array_equal(a, b) for a, b in zip(g, w))


HF = Path(__file__).resolve().parent.parent / "data" / "hf_tiny_llama"
HF_CASES = json.loads((HF / "expected.json").read_text())["cases"]
"""Prompts with transformers' own greedy tokens (32 each) and last-prompt-position logits."""


@pytest.mark.parametrize("devices, pp, tp", [  # 4 heads, 2 layers: tp up to 4, pp up to 2
    (1, 0, 1), (2, 0, 1), (2, 1, 2), (4, 1, 4), (4, 2, 2), (8, 2, 4)])
def test_hugging_face_checkpoint_sharded_gives_transformers_tokens(devices, pp, tp):
    model = model_config_from_hf(HF)
    weights = load_weights(model)
    cfg = CentConfig(model=model, parallel=ParallelConfig(devices, pp, tp), numerics="full")
    prompts = [c["prompt_ids"] for c in HF_CASES]
    got = generate_batch(LocalExecutor(cfg, weights=weights), prompts, 32)
    ref = LlamaModel(model, weights)
    for q, case in enumerate(HF_CASES):
        assert got.token_ids[q] == case["greedy_ids"]
        first = np.asarray(case["last_logits"])  # the logits that chose the first token
        assert np.max(np.abs(got.logits[q][0] - first)) / np.max(np.abs(first)) < 1e-4
        want = generate(ref, case["prompt_ids"], 32, ignore_eos=True)
        for a, b in zip(got.logits[q], want.logits):
            assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-4
