"""A mixture of experts' time: the expert terms against a hand derivation, capacity, the time
model's router, and imbalance coming out of the devices' clocks on a tensor-parallel stage."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.executor import LocalExecutor
from cent_serve.executor.generate import generate_batch
from cent_serve.messages import Layout, RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer
from cent_serve.timing.experts import PATTERNS, RoutingTable, hot_order, lane_max_loads
from cent_serve.timing.mapping import device_weight_bytes
from device_worker.worker import DeviceWorker


def timer(model: str = "mixtral-8x7b", devices: int = 32, pp: int = 0, tp: int = 1, **fields) -> SystemTimer:
    m = model_preset(model, **fields)
    return SystemTimer.from_config(CentConfig(model=m, parallel=ParallelConfig(devices, pp, tp)))


# Mixtral-8x7B, one block per device (32 devices, pure pipeline): a block's matrices over its 32
# channels x 16 banks = 512 banks. By hand from the GEMV model (docs/hardware_model.md section 4:
# per input row of 1024 values, 2 x 64 column cycles + 54.5 per group of outputs + per output
# 103 + 2 x 64; the activation variant groups 16 outputs and adds 72.4 per output):
GATE = 4 * (2 * 64 + 54.5 * 2 + 28 * (103 + 128)) + 72.4 * 28  # D 4096 -> F 14336: 28 outputs a bank, 4 rows
UP = 4 * (2 * 64 + 54.5 * 1 + 28 * (103 + 128))  # the same shape, 32 accumulators: one group
DOWN = 14 * (2 * 64 + 54.5 * 1 + 8 * (103 + 128))  # F 14336 -> D 4096: 8 outputs a bank, 14 rows
SILU = 4 * 7 * 128 + 400  # 14336 values over 128 lanes: 112 each, 7 bursts of 4 cycles, + fixed
ROUTER = 4 * (2 * 64 + 54.5 + 1 * (103 + 128))  # D 4096 -> E 8: one output a bank, 4 rows


def test_the_expert_terms_match_a_hand_derivation():
    t = timer()
    b = t.pim.breakdown(1024)
    assert (GATE, UP, DOWN, SILU) == (28847.2, 26602.0, 28427.0, 3984)
    assert b.experts == pytest.approx(2 * (GATE + UP + DOWN + SILU), rel=1e-12)
    assert b.router == ROUTER == 1654.0
    assert b.ffn == 0 and b.act == 0  # no dense MLP
    assert t.expert_s == pytest.approx((GATE + UP + DOWN + SILU) / 2e9, rel=1e-12)


def test_a_tokens_time_grows_with_k_not_with_the_number_of_experts():
    base = timer().pim.breakdown(2048)
    more = timer(num_experts=64).pim.breakdown(2048)  # 8x the experts, still top 2
    assert more.total == base.total  # the router's 64 outputs still fit one per bank
    k4 = timer(num_experts_per_tok=4).pim.breakdown(2048)
    assert k4.experts == pytest.approx(2 * base.experts, rel=1e-12)
    assert k4.total - base.total == pytest.approx(base.experts, rel=1e-12)


def test_weights_capacity_grows_with_the_number_of_experts():
    t8, t16 = timer(), timer(num_experts=16)
    per_expert = 3 * 4096 * 14336 * 2  # gate, up, down in bf16
    router = 8 * 4096 * 2  # 8 more router rows
    assert device_weight_bytes(t16.model, t16.mapping, 5) - device_weight_bytes(t8.model, t8.mapping, 5) == \
        8 * per_expert + router
    # on a tp 8 stage each device holds its 1 (or 2) experts of each of the stage's 8 blocks, and the router
    tp = timer(devices=32, pp=4, tp=8, num_experts=12)
    m = tp.model
    held = [device_weight_bytes(m, tp.mapping, d) for d in range(8)]
    assert held[0] - held[7] == 8 * per_expert  # ranks 0-3 hold 2 experts, 4-7 hold 1


def test_the_time_models_router_is_seeded_uniform_or_skewed_and_distinct():
    m = model_preset("qwen3-30b-a3b")
    r = RoutingTable(m)
    assert np.array_equal(r.patterns, RoutingTable(m).patterns)  # the same on every process
    assert all(len(set(p)) == 8 for p in r.patterns[:500].tolist())  # k distinct experts
    share = np.bincount(r.patterns.ravel(), minlength=128) / r.patterns.size
    assert share.min() > 0.8 / 128 and share.max() < 1.2 / 128  # uniform within 20% per expert
    hot = dataclasses.replace(m, expert_skew=1.0)
    counts = np.bincount(RoutingTable(hot).patterns.ravel(), minlength=128)[hot_order(hot)]  # hottest first
    assert counts[:8].sum() > 3 * counts[-8:].sum()  # the first experts of the seeded order are hot
    assert sorted(hot_order(hot)[:8] % 8) != list(range(8))  # and not one per device of a tp 8 stage
    a = r.experts([7, 9], [100, 0], [2, 3], [0, 1, 47])
    assert a.shape == (5, 3, 8)
    assert np.array_equal(a[1], r.experts([7], [101], [1], [0, 1, 47])[0])  # (seq, position, block) decide
    assert not np.array_equal(a[0], a[1])
    assert r.patterns.shape == (PATTERNS, 8)


def test_lane_max_loads_by_hand():
    # 2 lanes, 1 block, tp 2 (expert e on device e mod 2); lane 0: tokens with experts {0, 2} and {1, 3};
    # lane 1: one token with {0, 1}. Lane 0: device 0 runs 0, 2 (2), device 1 runs 1, 3 (2): max 2.
    experts = np.array([[[0, 2]], [[1, 3]], [[0, 1]]])
    assert lane_max_loads(experts, np.array([0, 0, 1]), 2, 2).tolist() == [2.0, 1.0]
    # lane 0 with {0, 2} and {0, 4}: device 0 runs all four
    experts = np.array([[[0, 2]], [[0, 4]]])
    assert lane_max_loads(experts, np.array([0, 0]), 1, 2).tolist() == [4.0]


def test_a_tp_stage_waits_for_its_busiest_device():
    """One device's round on a tp 4 stage of 16 experts (top 4): what it charges for the lane beyond
    the same round without experts is, per block, the busiest device's assignments (counted here by
    hand from the router's choices) x one expert's time."""
    m = model_preset("qwen3-30b-a3b", num_experts=16, num_experts_per_tok=4, num_layers=4)
    cfg = CentConfig(model=m, parallel=ParallelConfig(8, 2, 4), numerics="off")
    seqs = ((3, 1), (8, 1), (11, 1))
    plan = RoundPlan(Layout((0,), (seqs,)), np.zeros(1), new_seqs={3: 40, 8: 7, 11: 0})

    def charged(worker):
        gen = worker.run(plan, RoundOutput(np.zeros(1), np.zeros(3)))
        try:
            next(gen)
        except StopIteration as stop:
            return float(stop.value.ready_s[0])
        raise AssertionError("a timing-only round has no exchanges")

    with_experts = DeviceWorker(cfg, 0)
    no_experts = DeviceWorker(cfg, 0)
    no_experts.timer.expert_s = 0.0
    chosen = with_experts.timer.routing.experts([3, 8, 11], [40, 7, 0], [1, 1, 1], [0, 1])  # stage 0: blocks 0, 1
    busiest = 0
    for block in range(2):
        per_device = [0, 0, 0, 0]
        for token in range(3):
            for e in chosen[token, block]:
                per_device[e % 4] += 1
        busiest += max(per_device)
    assert busiest > 6  # three tokens of four experts on four devices: some device runs more than two a block
    extra = charged(with_experts) - charged(no_experts)
    assert extra == pytest.approx(busiest * with_experts.timer.expert_s, rel=1e-9)


def test_emulated_experts_match_the_closed_form_when_placement_fixes_the_load():
    """Mixtral on tp 8: one expert per device, two distinct experts per token, so every token's
    busiest device runs exactly one: the emulation equals the closed form. With 16 experts on tp 4
    the load varies token to token: the emulation's mean is the closed form's expectation, within
    the spread of a short run."""
    def run(model, devices, pp, tp, n):
        cfg = CentConfig(model=model, parallel=ParallelConfig(devices, pp, tp), numerics="off")
        ex = LocalExecutor(cfg)
        out = generate_batch(ex, [[1] * 16], n)
        return ex.timer, out.token_times_s[0]

    mix = model_preset("mixtral-8x7b", num_layers=4)
    t, times = run(mix, 8, 1, 8, 40)
    gaps = np.diff(times)
    want = [t.token_s(16 + i) for i in range(1, 40)]
    assert gaps == pytest.approx(want, rel=1e-9)
    q = model_preset("qwen3-30b-a3b", num_experts=16, num_experts_per_tok=4, num_layers=4)
    t, times = run(q, 4, 1, 4, 200)
    gaps = np.diff(times)
    want = np.array([t.token_s(16 + i) for i in range(1, 200)])
    assert gaps.std() > 0.01 * gaps.mean()  # the busiest device differs token to token
    assert gaps.mean() == pytest.approx(want.mean(), rel=0.03)


def test_numerics_do_not_move_a_moe_round_on_a_tp_stage():
    """The experts' time comes from the time model's router with numerics on too: a tiny Mixtral on
    pp 2 x tp 2 gives the same token times with and without the math."""
    from tests.factories import tiny_model_config

    m = tiny_model_config(model_type="mixtral", num_experts=4, num_experts_per_tok=2)
    times = []
    for numerics in ("full", "off"):
        cfg = CentConfig(model=m, parallel=ParallelConfig(4, 2, 2), numerics=numerics)
        times.append(generate_batch(LocalExecutor(cfg), [[1, 5, 9, 20], [1, 7]], 8).token_times_s)
    assert times[0] == times[1]


def test_a_gpu_step_reads_the_experts_its_tokens_chose():
    """On GPUs a step reads each chosen expert once, whatever number of its tokens chose it: one
    token reads k experts, a large batch all of them; FLOPs follow the experts a token uses."""
    from cent_serve.config import GpuConfig
    from cent_serve.gpu.timing import GpuTimer

    m = model_preset("mixtral-8x7b")
    g = GpuTimer(CentConfig(model=m, gpu=GpuConfig(kind="a100-80gb", count=4)))
    dense = (m.attention_param_count() + 8 * 4096) * 2
    expert = m.expert_param_count() * 2
    assert g.read_weight_bytes(1) == pytest.approx(dense + 2 * expert, rel=1e-9)
    assert g.read_weight_bytes(4096) == pytest.approx(dense + 8 * expert, rel=1e-9)
    assert dense + 2 * expert < g.read_weight_bytes(4) < dense + 8 * expert
    assert g.block_params == m.active_block_param_count()


@pytest.mark.parametrize("preset, tp", [("qwen3-30b-a3b", 8)])  # hot ids 0..7 would be one per device
def test_a_hot_expert_workload_loads_the_busiest_device_more(preset, tp):
    """A lane of 64 decoding tokens through 48 blocks: the more skewed the router, the more the
    busiest device of a tp stage runs (the hot experts share devices, as they fall)."""
    loads = []
    for skew in (0.0, 1.0, 2.0):
        r = RoutingTable(dataclasses.replace(model_preset(preset), expert_skew=skew))
        experts = r.experts(list(range(64)), [100] * 64, [1] * 64, list(range(48)))
        loads.append(lane_max_loads(experts, np.zeros(64, dtype=np.int64), 1, tp)[0])
    assert loads[0] < loads[1] < loads[2], loads


# Qwen1.5-MoE-A2.7B (its config.json on the Hugging Face hub), and the same blocks without the shared
# expert (a qwen3_moe-typed config has none)
QWEN15_MOE = dict(model_type="qwen2_moe", hidden_size=2048, intermediate_size=5632, num_layers=24, num_heads=16,
                  num_kv_heads=16, vocab_size=151936, max_seq_len=8192, rope_theta=1e6, rms_norm_eps=1e-6,
                  attention_bias=True, num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
                  shared_expert_intermediate_size=5632, norm_topk_prob=False)
NO_SHARED = dict(QWEN15_MOE, model_type="qwen3_moe", shared_expert_intermediate_size=0)
# One block per device (24 devices, pure pipeline): its 32 channels x 16 banks = 512 banks hold the
# shared expert, D 2048 -> F_s 5632, by hand as above: 11 outputs a bank, 2 input rows of 1024
S_GATE = 2 * (2 * 64 + 54.5 + 11 * (103 + 128)) + 72.4 * 11
S_UP = 2 * (2 * 64 + 54.5 + 11 * (103 + 128))
S_DOWN = 5 * (2 * 64 + 54.5 + 4 * (103 + 128)) + (2 * 32 + 54.5 + 4 * (103 + 64))  # 5632 in: 5 rows + 512 values
S_SILU = 4 * 3 * 128 + 400  # 5632 values over 128 lanes: 44 each, 3 bursts of 4 cycles, + fixed
SHARED_BYTES = (3 * 2048 * 5632 + 2048) * 2  # gate, up, down and the D -> 1 gate, bf16
# A tp 4 stage (32 devices as pp 8 x tp 4): split like a dense MLP over its 4 x 512 = 2048 banks, each
# device its slice: the gate and up 1408 of the 5632 outputs (3 a bank), the down 512 of the 2048 (1 a bank)
T4_GATE = 2 * (2 * 64 + 54.5 + 3 * (103 + 128)) + 72.4 * 3
T4_UP = 2 * (2 * 64 + 54.5 + 3 * (103 + 128))
T4_DOWN = 5 * (2 * 64 + 54.5 + 1 * (103 + 128)) + (2 * 32 + 54.5 + 1 * (103 + 64))  # all 5632 inputs
T4_SILU = 4 * 1 * 128 + 400  # a device's 1408 values over 128 lanes: 11 each, 1 burst of 4 cycles, + fixed


def qwen_timer(fields: dict, devices: int = 24, pp: int = 0, tp: int = 1) -> SystemTimer:
    from cent_serve.config import ModelConfig
    return SystemTimer.from_config(CentConfig(model=ModelConfig(**fields), parallel=ParallelConfig(devices, pp, tp)))


@pytest.mark.parametrize("devices, pp, tp", [(24, 0, 1), (32, 8, 4)])
def test_the_shared_expert_costs_its_gemvs_on_every_token(devices, pp, tp):
    """Qwen 2 MoE's shared expert is a dense SwiGLU every token runs: on its block's device's banks with
    tp 1, split over a tp stage's banks as a dense MLP (each device its slice, `T4_*`); its gate one more
    router output (60 -> 61 still one a bank): a block's PIM time grows by exactly its hand-derived cycles."""
    assert (S_GATE, S_UP, S_DOWN, S_SILU) == (6243.4, 5447.0, 6319.0, 1936)
    assert (T4_GATE, T4_UP, T4_DOWN, T4_SILU) == (1968.2, 1751.0, 2353.0, 912)
    with_, without = qwen_timer(QWEN15_MOE, devices, pp, tp), qwen_timer(NO_SHARED, devices, pp, tp)
    assert with_.mapping.geometry.banks_per_device == 512
    b, plain = with_.pim.breakdown(1024), without.pim.breakdown(1024)
    want = S_GATE + S_UP + S_DOWN + S_SILU if tp == 1 else T4_GATE + T4_UP + T4_DOWN + T4_SILU
    assert b.shared == pytest.approx(want, rel=1e-12)
    assert b.router == plain.router == 2 * (2 * 64 + 54.5 + 1 * (103 + 128)) == 827.0  # D 2048 -> 61 (60) outputs
    assert b.total - plain.total == pytest.approx(b.shared, rel=1e-12)
    assert "shared" in b.as_dict() and "shared" not in plain.as_dict()
    from cent_serve.timing.energy import block_energy_by_op_j
    by_op = block_energy_by_op_j(with_, 1024)
    assert by_op["shared"] > 0 and "shared" not in block_energy_by_op_j(without, 1024)


def test_a_tp_stage_holds_the_shared_expert_once():
    """A device's weight bytes: one block per device holds the shared expert and its gate; on a tp 4
    stage each device holds a quarter of its gate, up and down (split as a dense MLP) and the whole
    D -> 1 gate (with the router), so the stage holds the expert once."""
    for devices, pp, tp, blocks in ((24, 0, 1, 1), (32, 8, 4, 3)):
        a, b = qwen_timer(QWEN15_MOE, devices, pp, tp), qwen_timer(NO_SHARED, devices, pp, tp)
        for d in range(tp):
            assert device_weight_bytes(a.model, a.mapping, d + tp) - device_weight_bytes(b.model, b.mapping, d + tp) \
                == blocks * (SHARED_BYTES if tp == 1 else (3 * 2048 * 5632 // 4 + 2048) * 2)
        from cent_serve.timing.mapping import expert_placement
        assert expert_placement(a.model, a.mapping)["describe"].endswith(
            "a shared expert of width 5632 (66 MiB) that every token runs, "
            + ("whole on the block's device" if tp == 1 else
               "split over the stage's 4 devices as a dense MLP (its gate on every device, as the router)"))


def test_a_gpu_step_reads_and_multiplies_the_shared_expert_for_every_token():
    """On GPUs the shared expert's weights are read every step (every token runs it), and each token
    does its 2 FLOPs a weight."""
    from cent_serve.config import GpuConfig, ModelConfig
    from cent_serve.gpu.timing import GpuTimer

    def gpu(fields):
        return GpuTimer(CentConfig(model=ModelConfig(**fields), gpu=GpuConfig(kind="a100-80gb", count=4)))

    a, b = gpu(QWEN15_MOE), gpu(NO_SHARED)
    for tokens in (1, 64, 4096):
        assert a.read_weight_bytes(tokens) - b.read_weight_bytes(tokens) == pytest.approx(SHARED_BYTES, rel=1e-12)
    assert a.block_params - b.block_params == SHARED_BYTES // 2
    assert a.block_weight_bytes - b.block_weight_bytes == SHARED_BYTES
    one, plain = a.parts(0, 4096.0, 4096.0, 4096.0), b.parts(0, 4096.0, 4096.0, 4096.0)  # compute-bound
    k = a.kind
    assert one.compute_s - plain.compute_s == pytest.approx(
        24 * 2 * (SHARED_BYTES // 2) * 4096 / 4 / (k.peak_flops * k.compute_efficiency), rel=1e-9)
    assert one.memory_s - plain.memory_s == pytest.approx(
        24 * SHARED_BYTES / 4 / (k.hbm_bytes_per_s * k.mem_efficiency), rel=1e-9)
    with pytest.raises(ValueError, match="gpu.tp=4 .* does not divide the shared expert's width of 5630 .*: use "
                                         "--hardware gpu:a100-80gb:2"):
        gpu(dict(QWEN15_MOE, shared_expert_intermediate_size=5630))  # vLLM splits it over tp as any MLP


def test_a_tp_stage_spends_its_slices_of_the_shared_expert_s_energy():
    """On a tp 4 stage every device runs its slice of the shared expert (its partners' traces hold theirs:
    `commands.partner_commands`), so the block's shared-expert energy is nearer one whole copy's (that of a
    block alone on a device of the same 512 banks) than 4 copies': more than one, as a dense MLP's split
    costs (each device streams the whole input into its own channels' buffers, 3 outputs a bank on 2048
    banks are 6144 rows for 5632, four SiLU x up passes), 1.35 x here."""
    from cent_serve.timing.energy import block_energy_by_op_j
    one = block_energy_by_op_j(qwen_timer(QWEN15_MOE, 24, 0, 1), 1024)["shared"]
    four = block_energy_by_op_j(qwen_timer(QWEN15_MOE, 32, 8, 4), 1024)["shared"]
    assert 1.3 * one < four < 1.4 * one, four / one


def test_a_tp_stage_all_gathers_the_shared_expert_s_slices():
    """Split over a tp 4 stage, the shared expert adds the dense MLP's SiLU x up all-gather at F_s 5632
    (docs/hardware_model.md section 6): a broadcast of flits(5632) = ceil(2 x 5632 / 192) = 59 flits and
    a gather of ceil(2 x 5632 / 4 / 192) x 3 = 45, each t(f) = 180 ns + f x 256 B / (4 GiB/s x 4 lanes)
    (32 devices: 144 // 32 lanes); its down slices ride in the combine's partial sums (no more bytes).
    The links carry 3 x 5632 more values a block at 16 bits and 4.4 pJ a bit (section 8); under the
    `artifact` convention 2 x 5632 more values on every device's step of a block (10 D + 2 F_s), as bits."""
    from cent_serve.timing.energy import token_energy_terms_j
    with_, without = qwen_timer(QWEN15_MOE, 32, 8, 4), qwen_timer(NO_SHARED, 32, 8, 4)
    artifact = [SystemTimer(w.model, w.mapping, w.device, w.fabric, "artifact") for w in (with_, without)]
    pcie = token_energy_terms_j(artifact[0], 1024)["pcie"] - token_energy_terms_j(artifact[1], 1024)["pcie"]
    assert pcie == pytest.approx(24 * 4 * 2 * 5632 * 4.4e-12, rel=1e-9)  # 24 blocks x 4 devices' steps
    t = lambda flits: 180e-9 + flits * 256 / (4 * 2**30 * 4)  # noqa: E731
    assert with_.collectives_s(1) - without.collectives_s(1) == pytest.approx(t(59) + t(45), rel=1e-9)
    assert with_.collectives_s(8) - without.collectives_s(8) == pytest.approx(t(470) + t(3 * 118), rel=1e-9)  # 8 tokens
    pcie = token_energy_terms_j(with_, 1024)["pcie"] - token_energy_terms_j(without, 1024)["pcie"]
    assert pcie == pytest.approx(24 * 3 * 5632 * 16 * 4.4e-12, rel=1e-9)


@pytest.mark.parametrize("devices, pp, convention, latency_ms, energy_mj", [
    (24, 0, "cent", 1.675992, 29.318749614057513), (24, 0, "artifact", 1.2695708587402346, 26.508084143112807),
    (8, 8, "cent", 1.1839038029134117, 29.318749614057513), (8, 8, "artifact", 1.3119476645670574, 26.510030562312807)])
def test_tp_1_figures_are_exactly_those_of_the_whole_shared_expert(devices, pp, convention, latency_ms, energy_mj):
    """tp 1 (pure pipeline, or stages of one device whose exchanges the artifact still charges) holds the
    shared expert whole on one device: a token's figures at L = 1024 are, float for float, those from
    before the split over tp stages (pinned from that code)."""
    from cent_serve.config import ModelConfig
    from cent_serve.timing.pipeline import token_figures
    t = SystemTimer.from_config(CentConfig(model=ModelConfig(**QWEN15_MOE), parallel=ParallelConfig(devices, pp, 1)),
                                convention=convention)
    f = token_figures(t, 1024)
    assert (f.token_latency_ms, f.token_energy_mj) == (latency_ms, energy_mj)


def test_cent_info_stores_the_shared_expert_once_a_tp_stage(tmp_path, capsys):
    """cent info's parameters are the model's; on a tp 4 stage its devices also hold 3 more copies of each
    block's router and of the shared expert's D -> 1 gate (`device_weight_bytes`), not of the shared
    expert, split over them: 24 blocks x 3 x their bytes, under 1% of the model (no copies said)."""
    import json
    from cent_serve.cli import main
    from cent_serve.model.hf_config_writer import hf_config_dict
    from cent_serve.config import ModelConfig
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(ModelConfig(**QWEN15_MOE))))
    stored = {}
    for devices, pp, tp in ((24, 0, 1), (32, 8, 4)):
        assert main(["info", "--model", str(tmp_path), "--numerics", "off", "--devices", str(devices), "--pp", str(pp),
                     "--tp", str(tp), "--json"]) == 0
        stored[tp] = json.loads(capsys.readouterr().out)["weights_stored_bytes"]
    assert stored[4] - stored[1] == 3 * 24 * (60 * 2048 + 2048) * 2
    assert main(["info", "--model", str(tmp_path), "--numerics", "off", "--devices", "32", "--pp", "8", "--tp", "4"]) == 0
    assert "copies" not in capsys.readouterr().out
    assert main(["info", "--model", str(tmp_path), "--numerics", "off", "--devices", "24"]) == 0
    assert "copies" not in capsys.readouterr().out  # one device a block: the model's bytes, no copies


def test_the_shared_expert_s_gate_is_one_more_router_output():
    """The gate's D -> 1 logit rides in the router's GEMV (`pim.router_outputs`): with 512 experts on
    512 banks the 513th output takes a second one a bank, c 1 -> 2 (D 2048: 2 rows of 1024)."""
    wide = dict(QWEN15_MOE, num_experts=512)
    b = qwen_timer(wide).pim.breakdown(1024)
    plain = qwen_timer(dict(wide, model_type="qwen3_moe", shared_expert_intermediate_size=0)).pim.breakdown(1024)
    assert (plain.router, b.router) == (2 * (2 * 64 + 54.5 + 1 * (103 + 128)), 2 * (2 * 64 + 54.5 + 2 * (103 + 128)))
