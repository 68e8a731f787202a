"""The energy terms a token's total cannot see (docs/hardware_model.md section 8), each against its
formula from the published constants: the SRAM buffers' static power, the accelerator units' and
the device controller's leakage (each ~0.01% of a token: a whole-token check held to 0.1% passes with
any of them wrong), the RISC-V cores, and the CXL links of a mixture of experts on a tensor-parallel
stage. Each term is read from the breakdown and, where it has one constant, also as the change in
the total when that constant is zeroed; the expected joules are computed here, never by the energy
code, from the step times the time model gives (`pim.cycles`, its breakdown, the head's seconds)."""
from __future__ import annotations

import pytest

from cent_serve.config import DeviceConfig, EnergyConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, resolve_mapping
from cent_serve.timing.energy import token_energy_j, token_energy_terms_j

# Published constants (docs/hardware_model.md section 8; the artifact's power calculator, whose
# values EnergyConfig's docstrings quote), restated here so a changed default fails too.
# the global buffer (one a channel), the shared and the instruction buffer
GB_STATIC_MW, SB_STATIC_MW, IB_STATIC_MW = 0.06702101898, 0.6917736525, 18.81731768
RED_LEAK_MW, EXP_LEAK_MW, VEC_LEAK_MW = 0.00562, 0.0128, 0.00654  # reduction tree, exp unit, vector adder: a channel
DEVICE_CONTROLLER_MW = 3.014  # dispatcher, CXL controller, decoder, load/store, accelerator control
RISCV_MW = 3.96  # one RISC-V core, for the cycles it works
PCIE_PJ_PER_BIT = 4.4
CHANNELS, CLOCK_HZ = 32, 2e9  # a device's channels; the PIM clock and the access clock
L = 2048


def make_timer(model: str, devices: int, pp: int, tp: int, convention: str = "cent", *,
               energy: dict | None = None, fabric: dict | None = None, **model_fields) -> SystemTimer:
    m = model_preset(model, **model_fields)
    dev = DeviceConfig(energy=EnergyConfig(**(energy or {})))
    return SystemTimer(m, resolve_mapping(m, ParallelConfig(devices, pp, tp), dev), dev,
                       FabricConfig(**(fabric or {})), convention)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def busy_s(t: SystemTimer) -> float:
    """Device-seconds a token's steps last, from the time model (section 8, "Steps into a token"):
    `artifact`, pure pipeline: cdiv(N, tb) device steps of the block's PIM time T; `cent`, tensor:
    each block's first device over T and its tp - 1 partners over their weight GEMVs (q/k/v/o, the
    MLP's three, a router), plus the embedding lookup and the LM head."""
    m, g = t.model, t.mapping.geometry
    b = t.pim.breakdown(L)
    if t.convention == "artifact":
        assert t.mapping.mode == "pipeline", t.mapping.describe()
        return cdiv(m.num_layers, g.tb) * b.total / CLOCK_HZ
    assert g.tp > 1, t.mapping.describe()
    partner = b.qkvo + b.ffn + b.router
    return m.num_layers * (b.total + (g.tp - 1) * partner) / CLOCK_HZ + t.embed_lookup_s + t.lm_head_s


STATIC_CASES = [("llama2-7b", 8, 32, 1, "artifact"),  # 8 device steps of 4 blocks, no head
                ("llama2-7b", 8, 2, 4, "cent")]  # 32 blocks of 4 devices, and the head


@pytest.mark.parametrize("case", STATIC_CASES, ids=lambda c: f"{c[0]}-pp{c[2]}tp{c[3]}-{c[4]}")
def test_buffer_static_power_and_leakage_over_the_steps_time(case):
    """sram_static = (global buffer x channels + shared + instruction buffer) x time; accelerator_static
    = (reduction + exp + vector leakage) x channels x time; device_controller = 3.014 mW x time."""
    t = make_timer(*case)
    terms, seconds = token_energy_terms_j(t, L), busy_s(t)
    assert terms["sram_static"] == pytest.approx(
        (GB_STATIC_MW * CHANNELS + SB_STATIC_MW + IB_STATIC_MW) * 1e-3 * seconds, rel=1e-9)
    assert terms["accelerator_static"] == pytest.approx(
        (RED_LEAK_MW + EXP_LEAK_MW + VEC_LEAK_MW) * CHANNELS * 1e-3 * seconds, rel=1e-9)
    assert terms["device_controller"] == pytest.approx(DEVICE_CONTROLLER_MW * 1e-3 * seconds, rel=1e-9)


DEVICE_MW = dict(global_buffer_static_mw=GB_STATIC_MW * CHANNELS, shared_buffer_static_mw=SB_STATIC_MW,
                   instruction_buffer_static_mw=IB_STATIC_MW, reduction_leak_mw=RED_LEAK_MW * CHANNELS,
                   exp_leak_mw=EXP_LEAK_MW * CHANNELS, vector_leak_mw=VEC_LEAK_MW * CHANNELS,
                   device_controller_mw=DEVICE_CONTROLLER_MW)
"""Each static power, as a device draws it (the per-channel ones x 32 channels), mW."""


@pytest.mark.parametrize("case", STATIC_CASES, ids=lambda c: f"{c[0]}-pp{c[2]}tp{c[3]}-{c[4]}")
def test_each_static_power_reaches_the_total_once(case):
    """Zeroing one constant lowers the token's energy by that power x the steps' time, no more, no
    less: each buffer and unit is charged, with its own power, on the right number of channels."""
    base = token_energy_j(make_timer(*case), L)
    seconds = busy_s(make_timer(*case))
    for name, device_mw in DEVICE_MW.items():
        without = token_energy_j(make_timer(*case, energy={name: 0.0}), L)
        assert base - without == pytest.approx(device_mw * 1e-3 * seconds, rel=1e-9), name


def riscv_cycles(h: int, hkv: int, q_size: int, qk_norm: bool = False) -> float:
    """RISC-V cycles of one block's accelerator work, as the artifact's calculator counts them
    (RV_DYN): two RMSNorms' rsqrt (26 each), softmax's division per head with its 16 shared-buffer
    writes and a read (16 + 2 + 1, on one core), the rotary of q and k (3 a value over 8 cores:
    (1 + Hkv / H) H hd x 3 / 8, the artifact's D where H hd = D); Qwen 3's q/k norms one more rsqrt
    per q and k head (project)."""
    return 2 * 26 + h * (16 + 2 + 1) + (1 + hkv / h) * q_size * 3 / 8 + ((h + hkv) * 26 if qk_norm else 0)


RISCV_CASES = [
    # (model, devices, pp, tp, convention, accelerator passes a token, cycles a pass)
    ("llama2-7b", 8, 32, 1, "artifact", 8, riscv_cycles(32, 32, 4096)),  # once a device step: 32 blocks / 4
    ("llama2-7b", 8, 2, 4, "artifact", 32 * 4, riscv_cycles(32, 32, 4096)),  # and on every tp partner's step
    ("llama2-70b", 32, 80, 1, "cent", 80, riscv_cycles(64, 8, 8192)),  # once a block (nrep 8)
    ("qwen3-8b", 8, 2, 4, "cent", 36, riscv_cycles(32, 8, 4096, qk_norm=True)),  # partners: GEMVs only
    # q of 32 x 128 = 4096 values beside D = 2048: the rotary turns q's and k's, not D's
    ("qwen3-30b-a3b", 32, 4, 8, "cent", 48, riscv_cycles(32, 4, 32 * 128, qk_norm=True)),
]


@pytest.mark.parametrize("case", RISCV_CASES, ids=lambda c: f"{c[0]}-pp{c[2]}tp{c[3]}-{c[4]}")
def test_riscv_cores_by_the_artifacts_cycle_counts(case):
    model, devices, pp, tp, convention, passes, cycles = case
    assert riscv_cycles(32, 32, 4096) == 52 + 608 + 3072  # Llama2-7B by hand
    t = make_timer(model, devices, pp, tp, convention)
    want = passes * RISCV_MW * 1e-3 * cycles / CLOCK_HZ
    assert token_energy_terms_j(t, L)["riscv"] == pytest.approx(want, rel=1e-9)
    without = make_timer(model, devices, pp, tp, convention, energy=dict(riscv_core_mw=0.0))
    assert token_energy_j(t, L) - token_energy_j(without, L) == pytest.approx(want, rel=1e-9)


def moe_tp_link_values(d: int, q_size: int, tp: int, hop_share: float = 1.0) -> float:
    """Values a mixture-of-experts block on a tp stage puts on the links for one token (sections 8
    and 10): its output hop (D, the share of hops that cross the switch), every device receiving
    the others' slices of the attention heads (H hd) and of o_proj (D), and the combine, the tp - 1
    other devices' partial sums of their experts (D each) gathered at the first; no dispatch (the
    o_proj all-gather already put the input on every device) and no SiLU x up exchange."""
    return hop_share * d + (tp - 1) * q_size + (tp - 1) * d + (tp - 1) * d


MOE_CASES = [
    # (model, devices, pp, tp, fabric, values a block, bits a value); 4 blocks, 2 a stage
    ("mixtral-8x7b", 8, 2, 4, {}, moe_tp_link_values(4096, 4096, 4), 16),
    # Qwen3-30B-A3B: 32 heads of 128 = 4096 values against D = 2048
    ("qwen3-30b-a3b", 16, 2, 8, {}, moe_tp_link_values(2048, 4096, 8), 16),
    # 8-bit activations on the wire
    ("mixtral-8x7b", 8, 2, 4, dict(activation_bytes=1), moe_tp_link_values(4096, 4096, 4), 8),
    # only the hop between the 2 stages crosses the switch: 1 of the 4 blocks' outputs
    ("mixtral-8x7b", 8, 2, 4, dict(charge_local_hops=False), moe_tp_link_values(4096, 4096, 4, hop_share=1 / 4), 16),
]


@pytest.mark.parametrize("case", MOE_CASES, ids=["mixtral-tp4", "qwen3-moe-tp8", "8-bit-wire", "local-hops-free"])
def test_moe_tensor_parallel_link_energy_is_the_bytes_that_cross(case):
    model, devices, pp, tp, fabric, values, bits = case
    t = make_timer(model, devices, pp, tp, fabric=fabric, num_layers=4)
    assert t.model.is_moe and t.mapping.geometry.tp == tp
    want = 4 * values * bits * PCIE_PJ_PER_BIT * 1e-12
    assert token_energy_terms_j(t, L)["pcie"] == pytest.approx(want, rel=1e-9)
    without = make_timer(model, devices, pp, tp, fabric=fabric, energy=dict(pcie_pj_per_bit=0.0), num_layers=4)
    assert token_energy_j(t, L) - token_energy_j(without, L) == pytest.approx(want, rel=1e-9)


def test_moe_tp_block_has_no_silu_exchange_its_dense_twin_has():
    """Mixtral's dimensions with a dense MLP (Mistral-7B): the links carry (tp - 1) F values more a block, the SiLU x
    up all-gather; the combine's (tp - 1) D replaces the down gather's, so nothing else moves."""
    moe, dense = make_timer("mixtral-8x7b", 8, 2, 4, num_layers=4), make_timer("mistral-7b", 8, 2, 4, num_layers=4)
    assert dense.model.intermediate_size == moe.model.intermediate_size == 14336
    extra = token_energy_terms_j(dense, L)["pcie"] - token_energy_terms_j(moe, L)["pcie"]
    assert extra == pytest.approx(4 * 3 * 14336 * 16 * PCIE_PJ_PER_BIT * 1e-12, rel=1e-9)


def test_moe_tp_standby_and_leakage_cover_the_experts_time():
    """On a tp stage a token's k experts run outside the block's PIM time (the round's routing sets
    which device the stage waits for), yet they keep the devices busy k x one expert's cycles whatever
    the routing: Mixtral's expert on a device's 512 banks is 87,860.2 cycles (gate 28,847.2 + up
    26,602 + down 28,427 + SiLU x up 3,984, derived in test_moe_timing). The static powers are
    charged over that time too, as with tp = 1, where the block's time holds the experts."""
    t = make_timer("mixtral-8x7b", 8, 2, 4, num_layers=4)
    b = t.pim.breakdown(L)
    assert b.experts == 0 and b.ffn == 0  # on a tp stage the block's time leaves the experts out
    seconds = 4 * (b.total + 3 * (b.qkvo + b.router) + 2 * 87860.2) / CLOCK_HZ + t.embed_lookup_s + t.lm_head_s
    terms = token_energy_terms_j(t, L)
    assert terms["device_controller"] == pytest.approx(DEVICE_CONTROLLER_MW * 1e-3 * seconds, rel=1e-9)
    assert terms["sram_static"] == pytest.approx(
        (GB_STATIC_MW * CHANNELS + SB_STATIC_MW + IB_STATIC_MW) * 1e-3 * seconds, rel=1e-9)
