"""`device.kv_bytes_per_element`: the KV cache's own element size beside the weights'
(docs/hardware_model.md section 1, "The KV cache's own type"). Figures by hand from the formulas of
docs/hardware_model.md sections 3, 4 and 8 for Llama2-70B on 32 devices in the paper's pipeline:
80 one-block stages, 3 blocks a device (cpb 10, tb 3, B 160 banks), Hkv 8, nrep 8, hd 128."""
from __future__ import annotations

import pytest

from cent_serve.config import CentConfig, DeviceConfig, FabricConfig, ParallelConfig, apply_overrides, model_preset
from cent_serve.scheduler import kv_room
from cent_serve.timing import SystemTimer, resolve_mapping
from cent_serve.timing.commands import IDX, attention_commands, static_commands
from cent_serve.timing.energy import block_energy_by_op_j
from cent_serve.timing.mapping import CapacityError, check_capacity, device_kv_blocks
from cent_serve.timing.pim import BlockGeometry, block_pim_breakdown

M70 = model_preset("llama2-70b")
BF16, INT8_KV = DeviceConfig(), DeviceConfig(kv_bytes_per_element=1)
G70 = BlockGeometry(cpb=10, tb=3, tp=1)  # 70B on 32 devices, a stage a block


def _cfg(kv: int | None) -> CentConfig:
    cfg = CentConfig(model=M70, parallel=ParallelConfig(32, 80, 1))
    return apply_overrides(cfg, [f"device.kv_bytes_per_element={'null' if kv is None else kv}"])


def test_unset_is_the_weights_element_and_moves_nothing():
    """null (the default) and the weights' own size give the same cycles and counts, float for float."""
    assert DeviceConfig().kv_bytes_per_element is None and BF16.kv_element_bytes == 2
    same = DeviceConfig(kv_bytes_per_element=2)
    for context in (300, 1024, 4097):
        assert block_pim_breakdown(M70, G70, BF16, context) == block_pim_breakdown(M70, G70, same, context)
        for op, v in attention_commands(M70, G70, BF16, context).items():
            assert (v == attention_commands(M70, G70, same, context)[op]).all(), op
    assert list(device_kv_blocks(M70, resolve_mapping(M70, ParallelConfig(32, 80, 1), BF16), BF16, 16)) == \
        list(device_kv_blocks(M70, resolve_mapping(M70, ParallelConfig(32, 80, 1), same), same, 16))


def test_the_attention_ops_by_hand():
    """8-bit KV beside bf16 weights: a burst holds 32 keys, so q.K^T's and score x V's MAC columns
    and the K append's DMA lines halve; the per-head, per-row and per-group cycles do not.

    q.K^T a slot: the query's 1024 bf16 values into the buffer (2 x 64) + per KV head its MAC
    columns (2 x 128/16 = 16 bf16, 2 x 128/32 = 8 int8) and 81 (first head of the group) or 70
    cycles: bf16 904 + 7 x 816, int8 (128 + 8 x 89) + 7 (128 + 8 x 78) = 840 + 7 x 752.
    score x V at L = 4096 (four 1024-token score rows, 8 V^T rows a bank, cdiv(8, 10) = 1 head
    group, nrep 8): 8 x 4 [2 x 64 + 8 (158 + 2 x 64)] bf16, 8 x 4 [2 x 64 + 8 (158 + 2 x 32)] int8.
    KV append: cdiv(1024, 16) or cdiv(1024, 32) DMA lines x tb 3, + 1008 x cdiv(8, 10)."""
    L = 4096
    slots = -(-L // 160)
    bf16, int8 = block_pim_breakdown(M70, G70, BF16, L), block_pim_breakdown(M70, G70, INT8_KV, L)
    assert bf16.score == slots * (904 + 7 * 816)
    assert int8.score == slots * (840 + 7 * 752)
    assert bf16.sv == 8 * 4 * (128 + 8 * (158 + 128)) == 77_312
    assert int8.sv == 8 * 4 * (128 + 8 * (158 + 64)) == 60_928
    assert bf16.kv == 64 * 3 + 1008 and int8.kv == 32 * 3 + 1008
    # the MAC columns per context token halve: q.K^T's 8 heads x 8 query heads x 16 cycles a key slot
    # (160 keys), score x V's 8 x 8 x 128 cycles a 1024-token row
    assert bf16.score - int8.score == slots * 8 * 8 * (16 - 8)
    assert bf16.sv - int8.sv == 4 * 8 * 8 * (128 - 64)
    # the weights' GEMVs, the norms, rotary, softmax (bf16 scores) and SiLU do not move
    for op in ("qkvo", "ffn", "norm", "rotary", "softmax", "act"):
        assert getattr(int8, op) == getattr(bf16, op), op


def test_the_commands_and_the_energy_follow_the_kv_bursts():
    """The MAC steps over K and V halve, the query's and the scores' bursts into the buffer do not, the
    K append's DMA bursts halve; a 32 B burst's and a MAC step's energy stay, so the block's attention
    energy drops and its weights' energy does not (docs/hardware_model.md section 8)."""
    L = 4096
    bf16, int8 = attention_commands(M70, G70, BF16, L), attention_commands(M70, G70, INT8_KV, L)
    for op in ("score", "sv"):
        assert int8[op][IDX["mac16"]] * 2 == bf16[op][IDX["mac16"]] > 0, op
        assert int8[op][IDX["wrgb"]] == bf16[op][IDX["wrgb"]] > 0, op
    # 70B's K is 1024 values: one bf16 row, half an int8 row: still one row opened a slot
    assert int8["score"][IDX["act16"]] == bf16["score"][IDX["act16"]]
    assert (int8["softmax"] == bf16["softmax"]).all()
    kv16, kv8 = static_commands(M70, G70, BF16)["kv"], static_commands(M70, G70, INT8_KV)["kv"]
    assert kv16[IDX["wr"]] == 64 * 3 and kv8[IDX["wr"]] == 32 * 3
    fab = FabricConfig()
    mp = resolve_mapping(M70, ParallelConfig(32, 80, 1), BF16)
    e16 = block_energy_by_op_j(SystemTimer(M70, mp, BF16, fab), L)
    e8 = block_energy_by_op_j(SystemTimer(M70, mp, INT8_KV, fab), L)
    assert e8["score"] < e16["score"] and e8["sv"] < e16["sv"] and e8["kv"] < e16["kv"]
    assert e8["qkvo"] == e16["qkvo"] and e8["ffn"] == e16["ffn"]


def _device0_blocks(kv_bytes: int) -> int:
    """Device 0's KV blocks of 16 tokens by hand: 16 GiB less 3 blocks' and the embedding's bf16
    weights, over 16 tokens x K and V of 8 heads x 128 x 3 blocks."""
    d, f, hd, h, hkv = 8192, 28672, 128, 64, 8
    block = d * hd * h + 2 * d * hd * hkv + hd * h * d + 3 * d * f + 2 * d
    weights = 2 * (3 * block + 32000 * d)
    return (2**34 - weights) // (16 * 2 * hkv * hd * 3 * kv_bytes)


def test_8_bit_kv_doubles_the_tokens_that_fit_in_one_count():
    """The paged caches, the scheduler's room and the preflight agree: device 0's count by hand, the
    replica's room twice the bf16 one (up to a block), and the largest batch at 4,096 tokens is what
    check_capacity passes and one more is what it refuses."""
    counts = {}
    for kv in (None, 1):
        cfg = _cfg(kv)
        mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
        per_device = {d: blocks for d, _, _, blocks in device_kv_blocks(cfg.model, mp, cfg.device, 16)}
        assert per_device[0] == _device0_blocks(cfg.device.kv_element_bytes)
        room = kv_room(cfg, mp)
        assert room.num_blocks == min(per_device.values())
        most = room.most_sequences(4096)
        check_capacity(cfg.model, mp, cfg.device, 4096, batch=most)
        with pytest.raises(CapacityError) as refused:
            check_capacity(cfg.model, mp, cfg.device, 4096, batch=most + 1)
        assert refused.value.max_batch == most
        counts[kv] = room.num_blocks, most
    assert 2 * counts[None][0] <= counts[1][0] <= 2 * counts[None][0] + 1
    assert counts[None][1] == counts[None][0] // 256 and counts[1][1] == counts[1][0] // 256
    assert counts[1][1] in (2 * counts[None][1], 2 * counts[None][1] + 1)


@pytest.mark.parametrize("value, words", [
    ("3", "device.kv_bytes_per_element=3 is invalid: use 1 (int8), 2 (bfloat16) or 4 (float32), or leave it unset"),
    ("0", "device.kv_bytes_per_element=0 is invalid"),
    ("x", "device.kv_bytes_per_element='x' is invalid"),
])
def test_invalid_values_are_refused_by_name(value, words):
    with pytest.raises(ValueError) as refused:
        apply_overrides(CentConfig(), [f"device.kv_bytes_per_element={value}"])
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_a_wider_kv_element_than_a_burst_holds_whole_is_refused():
    """8-bit weights in 1-element bursts cannot hold a 2-byte KV element: the error says what to change."""
    with pytest.raises(ValueError, match=r"device.kv_bytes_per_element=2 is invalid: a burst of "
                                         r"device.burst_elements=1 x bytes_per_element=1 B"):
        DeviceConfig(bytes_per_element=1, burst_elements=1, row_elements=1024, kv_bytes_per_element=2)
    wide = DeviceConfig(bytes_per_element=1, row_elements=2048, burst_elements=32, kv_bytes_per_element=2)
    assert (wide.kv_burst_elements, wide.kv_row_elements) == (16, 1024)  # bf16 KV beside 8-bit weights


def test_cent_info_says_the_kv_element_and_its_room(capsys):
    from cent_serve.cli import main

    assert main(["info", "--model", "llama2-70b", "--devices", "32", "--set", "device.kv_bytes_per_element=1"]) == 0
    out = capsys.readouterr().out
    assert "kv cache     163,840 bytes per token on the devices at device.kv_bytes_per_element=1 (weights at 2)" in out
    assert "(KV: 2,048 of 1 B)" in out and "117,204 blocks of 16" in out


def test_a_sweep_varies_the_kv_element(tmp_path):
    """Both points run; the 8-bit KV one is faster and cheaper a token, and has no ratio to the paper's
    bf16 GPUs (the KV they ran was bf16), as the bf16 point has."""
    import csv

    from cent_serve.cli import main

    assert main(["sweep", "--model", "llama2-70b", "--devices", "32", "--vary", "device.kv_bytes_per_element=1,2",
                 "--out", str(tmp_path), "--no-plots"]) == 0
    rows = {r["device.kv_bytes_per_element"]: r for r in csv.DictReader(open(tmp_path / "sweep.csv"))}
    assert set(rows) == {"1", "2"} and not rows["1"]["error"] and not rows["2"]["error"]
    assert float(rows["1"]["throughput_tok_s"]) > float(rows["2"]["throughput_tok_s"])
    assert float(rows["1"]["energy_per_token_mj"]) < float(rows["2"]["energy_per_token_mj"])
    assert rows["2"]["throughput_ratio"] and not rows["1"]["throughput_ratio"]


def test_each_devices_paged_cache_holds_the_blocks_the_scheduler_counts():
    """The devices' own paged caches (`DeviceWorker.kv`) hold what `device_kv_blocks` counts for them, the
    count the scheduler's room and check_capacity read, at 8-bit KV as at the weights' width: a worker sizing
    its cache at device.bytes_per_element would hold half the blocks the scheduler admits against."""
    from cent_serve.executor import LocalExecutor

    for kv in (None, 1):
        cfg = apply_overrides(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(8, 0, 1)),
                              ["numerics=off", f"device.kv_bytes_per_element={'null' if kv is None else kv}"])
        ex = LocalExecutor(cfg)
        counted = {d: blocks for d, _, _, blocks in
                   device_kv_blocks(cfg.model, ex.timer.mapping, cfg.device, cfg.scheduler.kv_block_tokens)}
        assert {d: w.kv.num_blocks for d, w in ex.workers.items()} == counted
        # by hand, device 1 (4 of 7B's 32 blocks, no embedding): 16 GiB less their bf16 weights, over 16
        # tokens x K and V of 32 heads x 128 x 4 blocks at the KV element
        d, f = 4096, 11008
        weights = 2 * 4 * (4 * d * d + 3 * d * f + 2 * d)
        assert counted[1] == (2**34 - weights) // (16 * 2 * 4096 * 4 * cfg.device.kv_element_bytes)


def test_a_key_of_several_rows_opens_half_the_rows_at_8_bit():
    """Llama2-7B's K is 4,096 values a token: four 2 KB rows of bf16 keys, two of 8-bit ones. On 32 devices
    (a block a device on all 32 channels, B 512 banks) at L 4096 q.K^T has 8 slots, each reaching the 32
    channels (csum 256 channel-slots): 4 x 256 all-bank activations over bf16 K, 2 x 256 over 8-bit K; the
    K append opens 4 rows or 2 and writes 256 bursts or 128. The 70B figures above cannot tell
    `kv_row_elements` from `row_elements` (its 1,024-value K is one row either way)."""
    m7, g7, L = model_preset("llama2-7b"), BlockGeometry(cpb=32, tb=1, tp=1), 4096
    bf16, int8 = attention_commands(m7, g7, BF16, L), attention_commands(m7, g7, INT8_KV, L)
    assert bf16["score"][IDX["act16"]] == 4 * 256 and int8["score"][IDX["act16"]] == 2 * 256
    # the query's 4,096 bf16 values still fill four buffer rows: the instruction lines do not move
    assert int8["score"][IDX["lines"]] == bf16["score"][IDX["lines"]]
    kv16, kv8 = static_commands(m7, g7, BF16)["kv"], static_commands(m7, g7, INT8_KV)["kv"]
    assert (kv16[IDX["act"]], kv16[IDX["pre"]], kv16[IDX["wr"]]) == (4, 4, 256)
    assert (kv8[IDX["act"]], kv8[IDX["pre"]], kv8[IDX["wr"]]) == (2, 2, 128)
