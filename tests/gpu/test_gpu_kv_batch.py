"""The GPU side's "largest batch that fits" (`GpuTimer.max_batch`, cent simulate --hardware gpu's
static batch when --batch is not given) counts as the scheduler admits and the preflight checks
(`KVRoom`): whole KV blocks per stage, a windowed layer keeping min(window, sequence) of a
sequence's tokens. It divided every layer's KV tokens by the sequence's length: a window counted as
the whole sequence (fewer than fit), and tokens not rounded to blocks (more than the check then
allowed, so the default batch was refused)."""
from __future__ import annotations

import dataclasses

import pytest

from cent_serve.config import CentConfig, model_preset
from cent_serve.gpu.timing import GpuTimer
from cent_serve.kv_room import Row
from cent_serve.paper import closed_form
from cent_serve.preflight import check_gpus_hold

S, F = "sliding_attention", "full_attention"
TINY = model_preset("tiny")
GEMMA3_LIKE = dataclasses.replace(TINY, sliding_window=16, layer_types=(S,) * 5 + (F,) + (S,) * 2,
                                  model_type="gemma3_text")


def _cfg(model, count: int, pp: int, share: float) -> CentConfig:
    cfg = CentConfig(model=model, numerics="off")
    cfg.gpu.count, cfg.gpu.pp, cfg.gpu.memory_utilization, cfg.gpu.max_num_batched_tokens = count, pp, share, 16
    return cfg


def _holds(cfg: CentConfig, context: int, batch: int) -> bool:
    try:
        check_gpus_hold(cfg, context, batch)
    except ValueError:
        return False
    return True


def test_a_windowed_layer_counts_its_window_not_the_whole_sequence():
    cfg = _cfg(GEMMA3_LIKE, 2, 2, 8e-5)  # stage 0: 4 windowed layers; stage 1: 3 windowed, 1 full
    t = GpuTimer(cfg)
    assert t.kv_room(16).rows == (Row(1, 3, 44), Row(0, 1, 44))
    # 160 tokens: 10 blocks of keys, a windowed layer 3 (16 + 16 + 16 tokens): stage 1 takes (10 + 9) / 4 = 5
    assert t.max_batch(160) == 44 // 5 == 8 > t.kv_tokens() // 160
    assert _holds(cfg, 160, 8) and not _holds(cfg, 160, 9)


@pytest.mark.parametrize("tokens", [17, 40, 160])
def test_the_largest_batch_is_what_the_check_and_the_scheduler_let_in(tokens):
    """No window, sequences not a whole number of blocks: the largest batch passes the check, one
    more does not, and it is the scheduler's own count (`KVRoom.most_sequences`)."""
    cfg = _cfg(TINY, 1, 1, 1.56e-4)
    t = GpuTimer(cfg)
    n = t.max_batch(tokens)
    assert n == t.kv_room(16).most_sequences(tokens) >= 1
    assert _holds(cfg, tokens, n) and not _holds(cfg, tokens, n + 1)


def test_simulate_on_gpus_runs_its_default_batch():
    """cent simulate --hardware gpu without --batch takes the largest that fits: it was refused by
    its own check when the sequences were not a whole number of blocks."""
    cfg = _cfg(TINY, 1, 1, 1.56e-4)
    out = closed_form(cfg, 12, 5)  # 17 tokens: 2 blocks of 16 each
    assert out["batch"] == GpuTimer(cfg).max_batch(17) > 0


def test_the_override_caps_the_largest_batch_as_it_caps_admission():
    cfg = _cfg(TINY, 1, 1, 1.56e-4)
    cfg.scheduler.num_kv_blocks_override = 6
    assert GpuTimer(cfg).max_batch(40) == 6 // 3 == 2
    assert _holds(cfg, 40, 2) and not _holds(cfg, 40, 3)
