"""Few KV heads (MQA, GQA with Hkv < cpb): docs/hardware_model.md section 4, "Few KV heads".

A KV head's V^T sits whole on one channel and score x V runs its group's query heads one after the
other, each instruction reaching every channel of the device step (the artifact's intra-device
layout): fewer KV heads than channels cost more `sv` time and energy, not less. These pin the rule
and the section's numbers, and that the paper's 70B is charged by the same rule.
"""
from __future__ import annotations

import pytest

from cent_serve.config import CentConfig, DeviceConfig, ModelConfig, ParallelConfig, model_preset
from cent_serve.timing.commands import IDX, attention_commands, kv_channels
from cent_serve.timing.energy import block_energy_by_op_j, token_energy_j
from cent_serve.timing.pim import context_rows, v_rows
from cent_serve.timing.token import SystemTimer

DEV = DeviceConfig()


def _timer(hkv: int) -> SystemTimer:
    m = ModelConfig(name="kv-heads", hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=16,
                    num_kv_heads=hkv, head_dim=256, vocab_size=32000)
    return SystemTimer.from_config(CentConfig(model=m, parallel=ParallelConfig(8, 0, 1)))


# Hkv: (sv cycles at 4096, token ms at 4096, token mJ at 2048, sv uJ a block at 2048), as the docs quote them
DOC = {1: (301056, 6.58, 33.0, 782), 2: (150528, 4.96, 24.6, 391), 4: (75264, 4.18, 20.7, 196),
       8: (37632, 3.86, 19.5, 98), 16: (37632, 4.08, 21.7, 98)}


def test_the_docs_quote_these_numbers():
    """The figures below are the section's: the test fails when the two drift apart."""
    from pathlib import Path

    text = " ".join((Path(__file__).parents[2] / "docs" / "hardware_model.md").read_text().split())
    cols = list(zip(*(DOC[h] for h in sorted(DOC))))
    sv, ms, mj, uj = (" / ".join(f.format(v) for v in col) for f, col in zip(("{:,}", "{:.2f}", "{:.1f}", "{}"), cols))
    assert f"`sv` {sv} cycles at L = 4096 and a token {ms} ms" in text
    assert f"at L = 2048, {mj} mJ, `sv` {uj} uJ a block" in text


@pytest.mark.parametrize("hkv", sorted(DOC))
def test_the_sections_example(hkv):
    t = _timer(hkv)
    assert (t.mapping.channels_per_block, t.mapping.tb) == (10, 3)
    sv, ms, mj, uj = DOC[hkv]
    assert t.pim.breakdown(4096).sv == sv
    assert round(t.token_s(4096) * 1e3, 2) == ms
    assert round(token_energy_j(t, 2048) * 1e3, 1) == mj
    assert round(block_energy_by_op_j(t, 2048)["sv"] * 1e6) == uj


def test_sv_serialises_a_groups_query_heads_on_its_channel():
    # hd 256 on 16 banks: 16 V^T rows a bank; a full 1024-token row costs 2 x 64 + 16 (158 + 128)
    assert v_rows(_timer(1).model, DEV) == 16
    per_row = 2 * 64 + 16 * (158 + 2 * 64)
    for hkv in (1, 2, 4, 8, 16):
        t = _timer(hkv)
        nhb = -(-hkv // 10)
        assert t.pim.breakdown(4096).sv == nhb * (16 // hkv) * 4 * per_row


@pytest.mark.parametrize("hkv", [1, 2, 4, 8, 16])
def test_sv_commands_reach_every_channel_of_the_step_not_only_the_kv_channels(hkv):
    t = _timer(hkv)
    g, m = t.mapping.geometry, t.model
    per, chans = kv_channels(m, g)
    assert (per, chans) == (-(-hkv // 10), -(-hkv // -(-hkv // 10)))  # V^T on chans of the 10 channels
    sv = attention_commands(m, g, DEV, 2048)["sv"]
    s16 = sum(-(-n // 16) for n in context_rows(2048, 1024))
    assert sv[IDX["mac16"]] == 16 * per * (16 // hkv) * s16 * g.tb * g.cpb  # x Cb = 30, not x tb chans


def test_the_paper_70b_is_charged_by_the_same_rule():
    """8 KV heads: on 10 channels in pure pipeline (2 without V), on 32 with tp (24 without V); each
    channel holding one runs its 8 query heads one after the other, and the commands reach all Cb."""
    m = model_preset("llama2-70b")
    for parallel, cpb, tb in ((ParallelConfig(32, 80, 1), 10, 3), (ParallelConfig(32, 1, 32), 32, 1)):
        t = SystemTimer.from_config(CentConfig(model=m, parallel=parallel))
        g = t.mapping.geometry
        assert (g.cpb, g.tb, kv_channels(m, g)) == (cpb, tb, (1, 8))
        per_row = 2 * 64 + 8 * (158 + 2 * 64)
        assert t.pim.breakdown(4096).sv == 8 * 4 * per_row
        sv = attention_commands(m, g, DEV, 4096)["sv"]
        assert sv[IDX["mac16"]] == 8 * 8 * 4 * 64 * cpb * tb
