"""A sliding-window model keeps the KV of its window only: the scheduler's pool and every device's
paged cache stop growing at `CentConfig.kv_tokens_cap`, so a context far beyond the pool is served,
with the reference model's tokens."""
from __future__ import annotations

import dataclasses

import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.model import LlamaModel, load_weights
from cent_serve.model.generate import generate
from cent_serve.model.sampling import SamplingParams
from cent_serve.request import RequestParams, RequestRefused

WINDOWED = dataclasses.replace(model_preset("tiny"), sliding_window=24, model_type="mistral")
WEIGHTS = load_weights(WINDOWED)
PROMPT = [1] + [(7 * i) % 250 + 3 for i in range(150)]


def _engine(model, numerics: str = "full", devices: int = 4, pp: int = 2, tp: int = 2) -> Engine:
    cfg = CentConfig(model=model, parallel=ParallelConfig(devices, pp, tp), numerics=numerics)
    cfg.scheduler.prefill_chunk_tokens = 8
    cfg.scheduler.num_kv_blocks_override = 5  # 80 tokens a replica: less than one prompt
    return Engine(cfg, weights=WEIGHTS if numerics == "full" else None)


def test_a_context_beyond_the_pool_is_served_within_the_window():
    eng = _engine(WINDOWED)
    assert eng.cfg.kv_tokens_cap == 24 + 8 + 16 and eng.scheduler.blocks_for(10_000) == 3
    req = eng.add_request(PROMPT, RequestParams(max_tokens=20, ignore_eos=True, sampling=SamplingParams(temperature=0)))
    peak_blocks = 0
    while eng.has_work():
        eng.step()
        peak_blocks = max(peak_blocks, eng.scheduler.kv_blocks - eng.scheduler.free_blocks[0])
        for d in eng.device_stats():
            assert d["kv_usage"] * d["kv_blocks"] <= 3 + 1e-9, d  # no device holds more than the window's blocks
    assert peak_blocks == 3 and req.finish_reason == "length"
    ref = generate(LlamaModel(WINDOWED, WEIGHTS), PROMPT, 20, ignore_eos=True).token_ids
    assert req.output_ids == ref  # the window's attention, sharded pp 2 x tp 2


def test_without_the_window_the_same_request_does_not_fit():
    eng = _engine(dataclasses.replace(WINDOWED, sliding_window=0, model_type="llama"), numerics="off")
    with pytest.raises(RequestRefused, match="KV blocks"):
        eng.add_request(PROMPT, RequestParams(max_tokens=20, ignore_eos=True))
