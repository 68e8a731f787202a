"""Timing that follows the model (head size, GQA, sliding window, vocabulary, q/k norms, biases),
each term against a hand derivation; the presets of the families run."""
from __future__ import annotations

import dataclasses

import pytest

from cent_serve.config import MODEL_PRESETS, CentConfig, DeviceConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, resolve_mapping, token_figures
from cent_serve.timing.accelerator import accelerator_parts
from cent_serve.timing.pim import BlockGeometry, score_cycles, score_v_cycles

DEV = DeviceConfig()


def timer(model, devices: int, pp: int = 0, tp: int = 1, convention: str = "cent") -> SystemTimer:
    m = model_preset(model) if isinstance(model, str) else model
    return SystemTimer(m, resolve_mapping(m, ParallelConfig(devices, pp, tp), DEV), DEV, FabricConfig(), convention)


def test_sliding_window_attends_to_the_window_only():
    """Mistral 7B (window 4096): score, softmax and score x V at 32,768 tokens cost what they cost at
    4,096; below the window they grow with the context as for any model."""
    t = timer("mistral-7b", 8)
    at = {L: t.pim.breakdown(L) for L in (2048, 4096, 32768)}
    for op in ("score", "softmax", "sv"):
        assert getattr(at[32768], op) == getattr(at[4096], op) > getattr(at[2048], op)
    assert token_figures(t, 32768, batch=1).token_energy_mj == token_figures(t, 4096, batch=1).token_energy_mj
    full = timer(dataclasses.replace(model_preset("mistral-7b"), sliding_window=0), 8)
    assert full.pim.breakdown(32768).sv > at[32768].sv  # without the window: the whole context


def test_embedding_is_a_row_lookup_and_the_head_a_gemv_over_the_vocabulary():
    """Llama 3.1 8B on 8 devices (4 blocks a device, 8 channels: B = 128 banks). The lookup reads
    the token's row: cdiv(4096, 16) = 256 bursts through the DMA, one a cycle. The LM head: a
    4096 -> 128256 GEMV: c = cdiv(128256, 128) = 1002 outputs a bank, 4 input rows of 64 bursts,
    groups of 32 outputs (32 groups): per row 2 x 64 + 54.5 x 32 + 1002 x (103 + 2 x 64); plus the
    final norm's scale pass 2 x cdiv(128, 16) x 32 x 4 and 850."""
    t = timer("llama3.1-8b", 8)
    assert t.embed_lookup_s * DEV.clock_hz == 256
    per_row = 2 * 64 + 54.5 * 32 + 1002 * (103 + 2 * 64)
    assert t.lm_head_s * DEV.clock_hz == pytest.approx(4 * per_row + 2 * 8 * 32 * 4 + 850)
    # the artifact's convention charges the embedding as a vocab x D GEMV, as its figures do
    art = timer("llama3.1-8b", 8, convention="artifact")
    assert art.embed_lookup_s > 1000 * t.embed_lookup_s and art.lm_head_s == t.lm_head_s


def test_score_and_score_v_follow_the_head_size():
    """64-wide heads (Llama 3.2 1B: 32 heads, 8 KV heads, hd 64): per bank-slot the key's 512 values
    (32 bursts, 2 cycles each), then per KV head its 4 MAC columns (2 cycles each) and 81 cycles
    (70 for the further heads of a group, nrep = 4); score x V: a head's 64 dimensions over 16 banks
    are 4 V^T rows a bank."""
    m = model_preset("llama3.2-1b")
    g = BlockGeometry(cpb=16, tb=2, tp=1)
    first, rep = 2 * 32 + 8 * (2 * 4 + 81), 2 * 32 + 8 * (2 * 4 + 70)
    assert score_cycles(m, g, DEV, 1000) == pytest.approx(cdiv_(1000, 256) * (first + 3 * rep))
    # score x V at 1000 tokens (one row of 1000: 63 bursts): per KV-head slot cdiv(8, 16) = 1 and query head
    op = -(-1000 // 16)
    assert score_v_cycles(m, g, DEV, 1000) == pytest.approx(1 * 4 * (2 * op + 4 * (158 + 2 * op)))
    # the 128-wide heads of Llama 2 keep the artifact's figures: 904 and 816 cycles a key row
    m7 = model_preset("llama2-7b")
    assert score_cycles(m7, BlockGeometry(cpb=8, tb=4, tp=1), DEV, 1500) == 4 * 12 * 904


def test_rotary_follows_q_and_k_not_the_hidden_size():
    """The in-DRAM rotary passes go over q's H hd values and k's Hkv hd, which is D only where H hd =
    D: Qwen3-30B-A3B's q is 32 x 128 = 4096 values beside D = 2048. On a device's 32 channels (512
    banks, a quarter of them 128 lanes): q 32 values a lane over 128 lanes, k 4; their DMA passes
    2 (cdiv(64, 16) + cdiv(8, 16)) x 128 lanes x 1 cycle, then per vector 98 fixed cycles and 2 a
    burst of its elements (4096 / 16 and 512 / 16). Llama 2 keeps the artifact's count (H hd = D)."""
    from cent_serve.timing.pim import rotary_cycles
    g = BlockGeometry(cpb=32, tb=1, tp=8)
    assert rotary_cycles(model_preset("qwen3-30b-a3b"), g, DEV) == 2 * (4 + 1) * 128 + (98 + 2 * 256) + (98 + 2 * 32)
    # llama2-7b, D = H hd = 4096, nrep 1: the same q, and a k as large as q
    assert rotary_cycles(model_preset("llama2-7b"), g, DEV) == 2 * (4 + 4) * 128 + 2 * (98 + 2 * 256)
    # the DMA writes its energy counts are the same passes' bursts (docs/hardware_model.md section 8)
    from cent_serve.timing.commands import IDX, static_commands
    assert static_commands(model_preset("qwen3-30b-a3b"), g, DEV)["rotary"][IDX["wr"]] == 2 * (4 + 1) * 128
    assert static_commands(model_preset("llama2-7b"), g, DEV)["rotary"][IDX["wr"]] == 2 * (4 + 4) * 128


def cdiv_(a: int, b: int) -> int:
    return -(-a // b)


def test_qk_norm_is_accelerator_work_and_biases_cost_no_time():
    """Qwen 3: (H + Hkv) = 40 heads of 128 normed: 40 x 128 / (16 x 16 x 32) add passes of 66 cycles
    and 40 rsqrts of 26 RISC-V cycles over 8 cores. Qwen 2.5's q/k/v biases are the GEMV
    accumulators' starting value (written per output anyway): the same cycles without them."""
    parts = accelerator_parts(model_preset("qwen3-8b"), DEV, 4096)
    assert parts["qk_norm"] == pytest.approx(40 * 128 / (16 * 16 * 32) * 66 + 40 * 26 / 8)
    assert accelerator_parts(model_preset("llama3.1-8b"), DEV, 4096)["qk_norm"] == 0
    # and its energy: 40 more rsqrts on the RISC-V cores (3.96 mW for 26 cycles at 2 GHz each)
    from cent_serve.timing.energy import token_energy_terms_j
    qwen3 = model_preset("qwen3-8b")
    plain = dataclasses.replace(qwen3, qk_norm=False)
    more = token_energy_terms_j(timer(qwen3, 8), 4096)["riscv"] - token_energy_terms_j(timer(plain, 8), 4096)["riscv"]
    assert more == pytest.approx(36 * 40 * 26 * 3.96e-3 / 2e9)
    q = model_preset("qwen2.5-7b")
    flat = dataclasses.replace(q, attention_bias=False)
    assert timer(q, 8).pim.breakdown(1024) == timer(flat, 8).pim.breakdown(1024)
    assert q.block_param_count() - flat.block_param_count() == q.q_size + 2 * q.kv_size


def test_llama2_figures_do_not_move_under_the_artifact_convention():
    """The 70B row the hardware model documents (section 4): 1.853 M cycles a block at 4096."""
    t = timer("llama2-70b", 32, convention="artifact")
    assert t.pim.cycles(4096) == pytest.approx(1.853e6, rel=1e-3)


@pytest.mark.parametrize("name", [n for n in MODEL_PRESETS if n not in ("tiny",)])
def test_every_preset_simulates(name):
    from cent_serve.preflight import fewest_devices

    devices = fewest_devices(CentConfig(model=model_preset(name), device=DEV), 4096)
    assert devices is not None
    f = token_figures(timer(name, devices), 4096)
    assert f.token_latency_ms > 0 and f.token_energy_mj > 0 and f.throughput_tok_s > 0


def test_cli_lists_every_preset_with_what_holds_it(capsys):
    from cent_serve.cli import main
    import json

    assert main(["info", "--presets", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(MODEL_PRESETS)
    # Llama2-70B: 128.5 GiB of weights need at least 9 devices of 16 GiB; with 80 queries of 4,096
    # tokens (KV 320 KiB a token) the paper's 32 devices are more than enough
    assert rows["llama2-70b"]["devices_4k"] <= 32 and rows["llama2-70b"]["devices_context"] >= 9
    assert rows["qwen3-8b"]["model_type"] == "qwen3" and rows["qwen3-8b"]["context"] == 40960


def test_cli_presets_columns_say_what_each_count_holds(capsys):
    """'devices @4k' (16 for llama2-70b) beside '@context' (9) read as a contradiction: one counts the
    paper's batch of 4k queries, the other a single query of the whole context."""
    from cent_serve.cli import main

    assert main(["info", "--presets"]) == 0
    header, *rows, note = capsys.readouterr().out.splitlines()
    assert header.endswith("devices, batch @4k  devices, 1 query @context")
    assert note.startswith("devices, batch @4k: the fewest CENT devices") and "devices, 1 query @context: " in note
    seventy = next(r for r in rows if r.startswith("llama2-70b ")).split()
    assert seventy[-2:] == ["16", "9"]


def test_cli_presets_count_devices_of_the_device_set(capsys):
    # "What if the device held 4x the rows?": the fewest devices must follow --set device.*, not
    # stay those of the default 16 GiB device.
    from cent_serve.cli import main
    import json

    assert main(["info", "--presets", "--json"]) == 0
    base = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["info", "--presets", "--json", "--set", "device.rows_per_bank=65536"]) == 0
    big = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    # 70B: 128.5 GiB of weights need 9 devices of 16 GiB, but 3 of 64 GiB
    assert base["llama2-70b"]["devices_context"] >= 9
    assert big["llama2-70b"]["devices_context"] < base["llama2-70b"]["devices_context"]
    assert big["llama2-70b"]["devices_context"] == 3
    assert main(["info", "--presets", "--set", "device.rows_per_bank=65536"]) == 0
    assert "(64 GiB)" in capsys.readouterr().out


def test_cli_presets_sizes_follow_the_device_element_width(capsys):
    """"What if the weights were 8-bit?": with --set device.bytes_per_element=1 (and row_elements=2048,
    burst_elements=32: the same DRAM) the table counted the devices at 1 byte an element (llama2-70b: 8
    instead of 16) but still printed the bf16 weights (128.5 GiB) and KV cache (320 KiB a token) beside
    them: every size of a row is what the devices store."""
    from cent_serve.cli import main
    import json

    assert main(["info", "--presets", "--json"]) == 0
    base = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["info", "--presets", "--json", "--set", "device.bytes_per_element=1"]) == 0
    narrow = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    m = model_preset("llama2-70b")
    assert narrow["llama2-70b"]["weights_gib"] == pytest.approx(m.param_count() / 2**30)
    assert narrow["llama2-70b"]["kv_kib_per_token"] == 2 * m.num_layers * m.num_kv_heads * m.head_dim / 1024  # 160
    assert base["llama2-70b"]["weights_gib"] == pytest.approx(2 * m.param_count() / 2**30)
    assert base["llama2-70b"]["kv_kib_per_token"] == 320
    assert main(["info", "--presets", "--set", "device.bytes_per_element=1"]) == 0
    seventy = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("llama2-70b ")).split()
    assert seventy[4:8] == ["64.2", "GiB", "160", "KiB"], seventy


def test_cent_info_says_a_tied_table_is_what_its_copies_store(capsys):
    """Llama 3.2 1B ties its LM head to its embedding; in a pipeline of 16 stages the first holds the
    table for the lookup and the last again as the LM head (`device_weight_bytes`): one more
    vocab x D table. cent info said the copies were "the router and a shared expert", which a dense
    model has none of."""
    import json
    from cent_serve.cli import main
    m = model_preset("llama3.2-1b")
    assert main(["info", "--model", "llama3.2-1b", "--numerics", "off", "--devices", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # (the final norm's D weights are not in device_weight_bytes: 4 kB of 525 MB)
    assert out["weights_stored_bytes"] - 2 * m.param_count() == pytest.approx(2 * m.vocab_size * m.hidden_size, rel=1e-4)
    assert main(["info", "--model", "llama3.2-1b", "--numerics", "off", "--devices", "16"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("parameters"))
    assert (f"with its copies {out['weights_stored_bytes'] / 2**30:.3f} GiB stored on a replica's devices (the tied "
            "embedding table on the first stage and again on the last as its LM head)") in line, line
    assert "router" not in line
    assert main(["info", "--model", "llama3.2-1b", "--numerics", "off", "--devices", "1", "--pp", "1"]) == 0
    assert "copies" not in capsys.readouterr().out  # one stage: the table once, the lookup and the head alike


def test_cli_presets_table_keeps_every_column_apart_and_aligned(capsys):
    """`qwen1.5-moe-a2.7b` (17 characters) overran a 14-wide name column and ran into its family
    ('qwen1.5-moe-a2.7bqwen2_moe'), shifting its row: every name and family is its own word and every
    row's columns end where the header's do."""
    from cent_serve.cli import main

    assert main(["info", "--presets"]) == 0
    header, *rows, _note = capsys.readouterr().out.splitlines()
    assert len(rows) == len(MODEL_PRESETS)
    for row in rows:
        name, family = row.split()[:2]
        assert name in MODEL_PRESETS and family == model_preset(name).model_type, row
        assert len(row) == len(header), (row, header)


def test_a_two_stage_pipeline_charges_each_block_its_own_window():
    """Two blocks of Llama 2 7B dims, one a stage (pure pipeline on 2 devices, 32 channels a block:
    B = 512 banks), block 0 windowed (512) and block 1 not (`model.layer_types`), at a context of 2000
    past the window. Block 0 attends to 512 keys, block 1 to 2000: q.K^T takes cdiv(512, 512) = 1 and
    cdiv(2000, 512) = 4 bank-slots of keys, a slot 2 x 256 (the key's 4096 values, 2 cycles a burst) +
    32 KV heads x (2 x 8 + 81) cycles (nrep 1). Each stage's time is its own block's step, as a
    one-block model's at its keys; the token is both; the full block's stage (1) is the slowest
    station, the one that sets the period when the stations, not the ring, do."""
    from cent_serve.timing.pipeline import period_s, slowest_station

    base = dataclasses.replace(model_preset("llama2-7b"), num_layers=2)
    mixed = dataclasses.replace(base, sliding_window=512, layer_types=("sliding_attention", "full_attention"))
    t = timer(mixed, 2)
    slot = 2 * 256 + 32 * (2 * 8 + 81)
    assert [g for g in t.key_groups(2000)] == [(512, 1), (2000, 1)]
    assert t.pim.breakdown(512).score == 1 * slot and t.pim.breakdown(2000).score == 4 * slot
    one = dataclasses.replace(base, num_layers=1)  # a block of its own, no window: its step at each context
    alone = timer(one, 1)
    stage0, stage1, *_ = t.stations_s(2000)
    assert stage0 == alone.stations_s(512)[0] and stage1 == alone.stations_s(2000)[0]
    assert stage1 - stage0 > 3 * slot / DEV.clock_hz  # at least q.K^T's three more slots
    clock = DEV.clock_hz
    assert t.token_cost(2000).pim_s == alone.pim.cycles(512) / clock + alone.pim.cycles(2000) / clock
    assert slowest_station(t, 2000) == ("stage 1 (1 block)", stage1)
    assert period_s(t, 2000, 2)[0] == max(t.token_s(2000), 2 * stage1)
    # windowed on every block, or on none: the token costs what the two contexts' blocks do
    every = timer(dataclasses.replace(mixed, layer_types=()), 2).token_cost(2000)
    none = timer(base, 2).token_cost(2000)
    assert every.pim_s < t.token_cost(2000).pim_s < none.pim_s
    assert every.energy_j < t.token_cost(2000).energy_j < none.energy_j
    # within the window both blocks see every key
    assert timer(mixed, 2).token_cost(400).pim_s == timer(base, 2).token_cost(400).pim_s


def test_layer_types_of_one_kind_time_as_the_window_on_every_block_or_on_none():
    """`model.layer_types` all full_attention under a window is no window (and all sliding_attention
    the window on every block): the table's costs follow the blocks' kind, not the window's field."""
    mistral = model_preset("mistral-7b")
    full = dataclasses.replace(mistral, layer_types=("full_attention",) * 32)
    none = dataclasses.replace(mistral, sliding_window=0)
    assert timer(full, 8).token_cost(32768) == timer(none, 8).token_cost(32768)
    every = dataclasses.replace(mistral, layer_types=("sliding_attention",) * 32)
    assert timer(every, 8).token_cost(32768) == timer(mistral, 8).token_cost(32768)


def test_gemma2_s_two_more_norms_issue_the_ffn_norm_s_commands_twice_more():
    """The energy's DRAM commands of gemma-2-9b's norms (2 channels a block, one block a device): its
    norms of the attention's and the MLP's outputs each issue the FFN norm's: square-sum writes of
    2 cdiv(224, 16) 16 + 2 cdiv(448, 16) 8 = 896 bursts, cdiv(224, 16) = 14 MAC steps and 2 x 28
    elementwise products on each of the 2 channels, and its rows (16 + 4 banks opened and closed a
    channel) apiece; attention's commands
    (soft-capping is the accelerator's) are those of the same model without the Gemma 2 features."""
    import dataclasses

    from cent_serve.timing.commands import IDX, attention_commands, static_commands
    from cent_serve.timing.pim import BlockGeometry

    m = model_preset("gemma-2-9b")
    plain = dataclasses.replace(m, sandwich_norms=False, attn_logit_softcapping=0.0)
    g = BlockGeometry(cpb=2, tb=1, tp=1)
    more = static_commands(m, g, DEV)["norm"] - static_commands(plain, g, DEV)["norm"]
    assert (more[IDX["wr"]], more[IDX["mac16"]], more[IDX["ewmul16"]]) == (2 * 896, 2 * 14 * 2, 2 * 2 * 28 * 2)
    assert (more[IDX["act"]], more[IDX["pre"]]) == (2 * 20 * 2, 2 * 20 * 2)
    for op, cmds in attention_commands(m, g, DEV, 1000).items():
        assert (cmds == attention_commands(plain, g, DEV, 1000)[op]).all(), op
