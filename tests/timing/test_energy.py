"""Energy counted from commands (docs/hardware_model.md section 8), checked against counts the CENT
artifact's own DRAM simulator reported, per-command energies by hand, and the artifact's published
rows (every 7B/13B row and phase is also held in test_reference_figures)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cent_serve.config import DeviceConfig, EnergyConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, resolve_mapping, token_figures
from cent_serve.timing.commands import (CMDS, FIELDS, IDX, attention_commands, gemv, partner_commands,
                                        static_commands)
from cent_serve.timing.energy import (OPS, TERMS, block_energy_by_op_j, block_energy_j, command_energies_j,
                                      fabric_energy_j, head_energy_j, token_energy_j, token_energy_terms_j)
from cent_serve.timing.pim import BlockGeometry

DEV = DeviceConfig()
DATA = Path(__file__).resolve().parent.parent / "data"


def make_timer(model: str, devices: int, pp: int, tp: int, convention: str = "cent") -> SystemTimer:
    m = model_preset(model)
    return SystemTimer(m, resolve_mapping(m, ParallelConfig(devices, pp, tp), DEV), DEV, FabricConfig(), convention)


def trace_counts(model: str, g: BlockGeometry, context: int) -> dict[str, float]:
    m = model_preset(model)
    v = sum(static_commands(m, g, DEV).values()) + sum(attention_commands(m, g, DEV, context).values())
    return dict(zip(FIELDS, v.tolist()))


# The command counters of the artifact's DRAM simulator (Ramulator with the AiM controller, at the
# commit the CENT artifact pins) on the device trace the artifact generates for Llama2-7B, pure
# pipeline on 8 devices (4 blocks a device on 8 channels each), context 128; and its count of AiM
# instruction lines. Recorded from a run of the simulator, not from this code.
SIMULATED_7B_PP_L128 = dict(tmod=13792, prea=51232, act16=51488, pre=2064, act=2576, mac16=3178752, ewmul16=19328,
                            af16=2752, wra16=256, wrgb=80384, wrmac16=51776, rdmac16=51776, rdaf16=2752, rdcp=4864,
                            wrcp=4864, wr=29952, rd=6912, lines=5367)


def test_a_device_step_issues_the_commands_the_artifacts_simulator_counted():
    assert trace_counts("llama2-7b", BlockGeometry(cpb=8, tb=4, tp=1), 128) == SIMULATED_7B_PP_L128


def test_gemv_commands_by_hand():
    # 4096 x 4096 over 128 banks (8 channels, one block; the trace's 4 blocks each run it): c = 32
    # outputs a bank, 4 input rows of 64 bursts. Every output opens its weight row in all banks of
    # the 32 channels (closing the last), MACs the row's 64 bursts, writes a bias and reads its sum.
    v = gemv(4096, 4096, 128, DEV)
    got = dict(zip(FIELDS, v.tolist()))
    assert got["mac16"] == 32 * 256 * 32 == 4 * 4096 * 4096 * 2 / 512  # weight bytes / 512 B a step, x 4 blocks
    assert got["act16"] == got["prea"] == got["wrmac16"] == got["rdmac16"] == 32 * 4 * 32
    assert got["wrgb"] == 256 * 32                    # the input into every channel's buffer
    assert got["tmod"] == 2 * 1 * 4 * 32              # one group of 32 outputs: two switches a row
    assert got["lines"] == 4 + 3 * 32 * 4
    # the gate projection's activation lookups: groups of 16, one lookup row per group
    af = dict(zip(FIELDS, gemv(4096, 11008, 128, DEV, af=True).tolist()))
    c = -(-11008 // 128)
    assert af["af16"] == af["rdaf16"] == c * 32 and af["act16"] == (c * 4 + -(-c // 16)) * 32


def test_doubling_banks_per_channel_halves_a_gemvs_outputs_per_bank():
    wide = DeviceConfig(banks_per_channel=32)
    one = dict(zip(FIELDS, gemv(4096, 4096, 128, DEV).tolist()))
    two = dict(zip(FIELDS, gemv(4096, 4096, 256, wide).tolist()))
    assert two["wrmac16"] == one["wrmac16"] / 2 and two["mac16"] == one["mac16"] / 2


def test_tensor_partner_runs_the_weight_gemvs_only():
    m, g = model_preset("llama2-13b"), BlockGeometry(cpb=32, tb=1, tp=20)
    partner = dict(zip(FIELDS, partner_commands(m, g, DEV).tolist()))
    assert partner["ewmul16"] == partner["wra16"] == partner["wr"] == partner["rd"] == 0
    assert partner["mac16"] == sum(static_commands(m, g, DEV)[op][IDX["mac16"]] for op in ("qkvo", "ffn"))


def test_per_command_energies_by_hand():
    """Each command's joules, from the constants: act 66.3 mW x tRC 44.5 ns a bank; bursts rd 438.15 /
    wr 553.15 mW x tBL 1.25 ns; all-bank MAC 16 x 0.1875 x 438.15 mW x tCCD 1 ns; pins 256 bit x 5.5 pJ;
    controller 267.7 (data) and 381.0 mW (any command) / 2 channels, one 0.5 ns cycle; global buffer
    reads 0.2785 and writes 0.3255 mW, instruction buffer reads 70.13 mW, a 0.5 ns cycle each."""
    per = command_energies_j(DEV).sum(axis=0)
    e = dict(zip(FIELDS, (per * 1e9).tolist()))  # nJ
    trx, phy, pins = 267.7082056 / 2 * 0.5e-3, 381.0445262 / 2 * 0.5e-3, 256 * 5.5e-3
    rd, wr = 438.15 * 1.25e-3, 553.15 * 1.25e-3
    assert e["act16"] == pytest.approx(16 * 66.3 * 44.5e-3 + phy)
    assert e["prea"] == e["pre"] == e["tmod"] == pytest.approx(phy)
    assert e["mac16"] == pytest.approx(3 * 438.15e-3 + trx + phy)
    assert e["ewmul16"] == pytest.approx(3 * 438.15e-3 / 4 + trx + phy)
    assert e["af16"] == pytest.approx(16 * rd + trx + phy)
    assert e["wra16"] == pytest.approx(16 * wr + pins + trx + phy)
    assert e["rdmac16"] == e["rd"] == pytest.approx(rd + pins + trx + phy)
    assert e["wrgb"] == pytest.approx(pins + trx + phy + 0.3254884575 * 0.5e-3)  # + a global-buffer write
    # the rest, each once (the total of a token, held to 0.1%, cannot see the small ones: an rdaf16 or an
    # instruction line priced at nothing, or twice, left every test green)
    assert e["act"] == pytest.approx(66.3 * 44.5e-3 + phy)  # one bank
    assert e["wr"] == e["wrmac16"] == pytest.approx(wr + pins + trx + phy)
    assert e["rdaf16"] == pytest.approx(rd + pins + trx + phy)
    assert e["rdcp"] == pytest.approx(rd + trx + phy + 0.3254884575 * 0.5e-3)  # bank -> global buffer: no pins
    assert e["wrcp"] == pytest.approx(wr + trx + phy + 0.2785010052 * 0.5e-3)  # global buffer -> bank
    assert e["lines"] == pytest.approx(70.13266856 * 0.5e-3)  # an instruction-buffer read, at 2 GHz
    assert set(e) == set(CMDS) | {"lines"}


def test_breakdown_names_every_term_and_adds_up():
    for args in (("llama2-7b", 8, 32, 1), ("llama2-13b", 20, 1, 20), ("llama2-70b", 32, 4, 8)):
        t = make_timer(*args)
        f = token_figures(t, 2048)
        assert tuple(f.energy_breakdown_mj) == TERMS and all(v > 0 for v in f.energy_breakdown_mj.values())
        assert sum(f.energy_breakdown_mj.values()) == pytest.approx(f.token_energy_mj)
        assert sum(token_energy_terms_j(t, 2048).values()) == pytest.approx(token_energy_j(t, 2048))


def test_pipeline_breakdown_lands_in_the_published_shares():
    """CENT's published energy breakdown (docs/hardware_model.md section 8): MAC 49-54%, activation
    28-32%, controller about 7.5%, transfers 4-11%, standby about 1%."""
    for model, devices in (("llama2-7b", 8), ("llama2-13b", 20)):
        parts = token_energy_terms_j(make_timer(model, devices, model_preset(model).num_layers, 1, "artifact"), 2048)
        share = {k: v / sum(parts.values()) for k, v in parts.items()}
        assert 0.49 <= share["pim"] <= 0.54, share
        assert 0.28 <= share["activate"] <= 0.32, share
        assert 0.07 <= share["controller"] <= 0.08, share
        assert 0.04 <= share["dq"] + share["read"] + share["write"] <= 0.11, share
        assert 0.005 <= share["active_standby"] + share["precharge_standby"] <= 0.015, share


def test_mappings_rank_by_energy_as_published():
    """Wider tensor parallelism costs more energy per token, in the artifact's order."""
    rows = [r for r in csv.DictReader(open(DATA / "cent_reference_7b_13b.csv")) if r["seqlen"] == "2048"]
    for model in ("llama2-7b", "llama2-13b"):
        mine = [r for r in rows if r["model"] == model]
        published = sorted(mine, key=lambda r: float(r["token_energy_mj"]))
        ours = sorted(mine, key=lambda r: token_energy_j(
            make_timer(model, int(r["devices"]), int(r["pp"]), int(r["tp"])), 2048))
        assert [(r["pp"], r["tp"]) for r in ours] == [(r["pp"], r["tp"]) for r in published]


def test_every_reference_row_to_a_tenth_of_a_percent():
    """The commands are the artifact's, so its energies are met far inside the 5% the issue asks
    (test_reference_figures): 0.1% on every 7B/13B row; power follows the PIM latency's error."""
    rows = list(csv.DictReader(open(DATA / "cent_reference_7b_13b.csv")))
    timers: dict = {}
    for r in rows:
        key = (r["model"], int(r["devices"]), int(r["pp"]), int(r["tp"]))
        t = timers.get(key) or timers.setdefault(key, make_timer(*key, "artifact"))
        got = token_energy_j(t, int(r["seqlen"])) * 1e3
        assert got == pytest.approx(float(r["token_energy_mj"]), rel=1e-3), (key, r["seqlen"])


def test_conventions_differ_by_the_blocks_counted_and_the_head():
    """70B on 32 devices: the artifact counts 27 device steps of 3 blocks (81 block steps) and no
    embedding or LM head; `cent` counts the 80 blocks, each block's V^T append, and the head."""
    art, cent = make_timer("llama2-70b", 32, 80, 1, "artifact"), make_timer("llama2-70b", 32, 80, 1)
    assert token_energy_j(art, 1024) == pytest.approx(81 * block_energy_j(art, 1024))
    assert head_energy_j(art) == 0 and head_energy_j(cent) > 0
    assert token_energy_j(cent, 1024) == pytest.approx(80 * block_energy_j(cent, 1024) + head_energy_j(cent))
    by_op_art, by_op_cent = block_energy_by_op_j(art, 1024), block_energy_by_op_j(cent, 1024)
    assert by_op_cent["kv"] > by_op_art["kv"] and by_op_cent["ffn"] == by_op_art["ffn"]


def test_per_op_energy_adds_up_to_the_block():
    for args in (("llama2-70b", 32, 80, 1), ("llama2-13b", 20, 1, 20)):
        t = make_timer(*args)
        by_op = block_energy_by_op_j(t, 3000)
        assert tuple(by_op) == OPS and all(v > 0 for v in by_op.values())
        # what is not a command (standby, leakage, accelerator, links) is about 1% of a block
        assert 0.003 < by_op["background"] / block_energy_j(t, 3000) < 0.03, by_op
        # attention grows with the context, the weights' GEMVs do not
        assert block_energy_by_op_j(t, 4000)["sv"] > by_op["sv"]
        assert block_energy_by_op_j(t, 4000)["ffn"] == by_op["ffn"]


def test_standby_and_leakage_scale_with_the_steps_time():
    """Halving the clock doubles every cycle's time: leakage per token doubles; precharged standby
    stays (a channel's precharged spell after closing its banks is a time, tRP, not cycles) and
    active standby takes the rest; the energy of each command (rows, bursts, MACs, pins,
    controller cycles) stays."""
    m = model_preset("llama2-7b")
    slow_dev = DeviceConfig(clock_hz=1e9)
    fast = SystemTimer(m, resolve_mapping(m, ParallelConfig(8, 32, 1), DEV), DEV, FabricConfig())
    slow = SystemTimer(m, resolve_mapping(m, ParallelConfig(8, 32, 1), slow_dev), slow_dev, FabricConfig())
    a, b = token_energy_terms_j(fast, 1024), token_energy_terms_j(slow, 1024)
    for term in ("sram_static", "accelerator_static", "device_controller"):
        assert b[term] == pytest.approx(2 * a[term]), term
    # precharged spells are times (tRP after each close): the same; the rest of the longer step is active
    assert b["precharge_standby"] == pytest.approx(a["precharge_standby"])
    assert 2 * a["active_standby"] < b["active_standby"] < 2.2 * a["active_standby"]
    for term in ("activate", "read", "write", "pim", "dq", "controller"):
        assert b[term] == pytest.approx(a[term]), term


def test_a_wider_burst_moves_the_same_bytes_for_the_same_energy():
    """Bursts of 32 elements: half the MAC and burst commands, each twice the energy."""
    m = model_preset("llama2-7b")
    wide = DeviceConfig(burst_elements=32)
    a = token_energy_terms_j(make_timer("llama2-7b", 8, 32, 1), 1024)
    b = token_energy_terms_j(SystemTimer(m, resolve_mapping(m, ParallelConfig(8, 32, 1), wide), wide,
                                         FabricConfig()), 1024)
    assert b["pim"] == pytest.approx(a["pim"], rel=0.02)
    assert b["controller"] < 0.6 * a["controller"]  # half the commands, each one controller cycle


def test_no_count_or_term_is_negative_on_odd_shapes():
    """Head sizes, KV heads that do not fill the channels, row sizes, tiny contexts, every kind of
    mapping: command counts and energy terms stay >= 0."""
    from cent_serve.config import model_preset as preset
    models = [preset("tiny"), preset("llama2-7b", hidden_size=1024, head_dim=32, intermediate_size=2752),
              preset("llama2-70b"), preset("llama2-13b")]
    devices = [DeviceConfig(), DeviceConfig(row_elements=4096), DeviceConfig(banks_per_channel=32),
               DeviceConfig(num_channels=16)]
    for m in models:
        for dev in devices:
            for devices_n, pp, tp in ((32, 0, 1), (8, 0, 1), (8, 2, 4), (4, 4, 1), (8, 1, 8)):
                try:
                    mp = resolve_mapping(m, ParallelConfig(devices_n, pp, tp), dev)
                except ValueError:
                    continue
                g = mp.geometry
                for conv in ("cent", "artifact"):
                    t = SystemTimer(m, mp, dev, FabricConfig(), conv)
                    for L in (1, 17, 129, 1500, 4096):
                        counts = sum(static_commands(m, g, dev).values()) + sum(
                            attention_commands(m, g, dev, L).values())
                        assert counts.min() >= 0, (m.name, dev, mp.describe(), L)
                        for op, v in {**static_commands(m, g, dev), **attention_commands(m, g, dev, L)}.items():
                            assert v.min() >= 0, (op, m.name, mp.describe(), L, dict(zip(FIELDS, v)))
                        terms = token_energy_terms_j(t, L)
                        assert min(terms.values()) >= 0, (terms, m.name, mp.describe(), L)


def test_tensor_partners_and_links_under_the_cent_convention():
    """cent: a partner is charged its GEMVs only (no accelerator work); the links carry a block's
    output and, with tp > 1, its four exchanges (q heads + 2 D + F values a partner), 16 bits each."""
    t = make_timer("llama2-7b", 8, 2, 4)
    m = t.model
    terms = token_energy_terms_j(t, 2048)
    values = m.hidden_size + 3 * (m.q_size + 2 * m.hidden_size + m.intermediate_size)
    assert terms["pcie"] == pytest.approx(m.num_layers * values * 16 * 4.4e-12)
    one = make_timer("llama2-7b", 8, 8, 1)  # tensor mode with tp = 1: no exchange, only the output
    assert token_energy_terms_j(one, 2048)["pcie"] == pytest.approx(32 * 4096 * 16 * 4.4e-12)
    # the accelerator's work is the block's, whatever tp: the same in tp 4 and tp 1 (riscv has no other source)
    assert terms["riscv"] == pytest.approx(token_energy_terms_j(one, 2048)["riscv"])


def test_removed_energy_fields_say_what_to_set():
    from cent_serve.config import CentConfig, apply_overrides
    with pytest.raises(ValueError, match="device.energy.mac16_nj.*not a field any more.*mac_bank_read_share"):
        apply_overrides(CentConfig(), ["device.energy.mac16_nj=1.5"])
    with pytest.raises(ValueError, match="device.energy.rd_mw"):
        EnergyConfig(rd_mw=-1.0)


def test_fabric_energy_by_hand():
    assert fabric_energy_j(1024, DEV) == pytest.approx(1024 * 8 * 4.4e-12)


def test_a_wider_row_costs_more_a_row_opened_and_the_same_a_byte():
    """An activation senses the whole row: doubling the row's elements halves the rows a GEMV opens
    and doubles each one's energy, so the activation energy of a token stays about the same (it
    halved when a row opened cost the same at any width); at the paper's 2 KB row nothing moves."""
    from cent_serve.timing.energy import T

    def activate(dev: DeviceConfig) -> float:
        m = model_preset("llama2-7b")
        t = SystemTimer(m, resolve_mapping(m, ParallelConfig(8, 0, 1), dev), dev, FabricConfig(), "cent")
        return token_energy_terms_j(t, 2048)["activate"]

    base, wide = activate(DeviceConfig()), activate(DeviceConfig(row_elements=2048))
    assert wide == pytest.approx(base, rel=0.1)
    act = command_energies_j(DeviceConfig())[T["activate"], IDX["act"]]
    assert act == pytest.approx(66.3e-3 * 44.5e-9)  # the paper's row: act_mw x tRC, as quoted
    int8 = DeviceConfig(bytes_per_element=1, row_elements=2048, burst_elements=32)
    assert command_energies_j(int8)[T["activate"], IDX["act"]] == pytest.approx(act)  # the same 2 KB row


def test_gemma2_s_accelerator_energy_follows_the_work_its_time_charges():
    """The accelerator's time charges Gemma 2's four norms a block and soft-capping's second exp and add
    pass over every score (`accelerator_parts`); its energy counted two norms and one pass, so gemma-2-9b's
    accelerator drew a plain block's joules for 1.58x the cycles. Norms and score passes: the norms' and
    the exps' accesses of the artifact's counts, each scaled as the time is."""
    import dataclasses

    from cent_serve.timing.energy import T, energy_model

    gemma = model_preset("gemma-2-9b")
    plain = dataclasses.replace(gemma, sandwich_norms=False, attn_logit_softcapping=0.0)
    capped = dataclasses.replace(plain, attn_logit_softcapping=50.0)
    normed = dataclasses.replace(plain, sandwich_norms=True)
    mp = resolve_mapping(gemma, ParallelConfig(42, 0, 1), DEV)

    def acc(m):  # a block's accelerator terms (pure pipeline: its DRAM commands draw none of them)
        terms = energy_model(SystemTimer(m, mp, DEV, FabricConfig())).block(1024)
        return {k: terms[T[k]] for k in ("riscv", "accelerator_dynamic")}

    e, base, cap, norm = acc(gemma), acc(plain), acc(capped), acc(normed)
    e_dev, lanes, d, h = DEV.energy, DEV.acc_simd_lanes, gemma.hidden_size, gemma.num_heads
    exps = 1024 * h / lanes  # softmax's SIMD passes; soft-capping adds as many exp and add passes
    assert cap["accelerator_dynamic"] - base["accelerator_dynamic"] == pytest.approx(
        (e_dev.exp_mw + e_dev.vector_mw) * exps * 1e-3 / e_dev.access_clock_hz, rel=1e-12, abs=0)
    # two more norms: their rsqrt on a RISC-V core and a reduction each, as the two others'
    assert norm["riscv"] - base["riscv"] == pytest.approx(
        e_dev.riscv_core_mw * 1e-3 * 2 * DEV.acc_norm_riscv_cycles / e_dev.access_clock_hz, rel=1e-12, abs=0)
    assert norm["accelerator_dynamic"] - base["accelerator_dynamic"] == pytest.approx(
        (e_dev.reduction_mw * 2 + e_dev.vector_mw * 2 * d / (lanes * DEV.burst_elements)) * 1e-3
        / e_dev.access_clock_hz, rel=1e-12, abs=0)
    for k in e:  # gemma-2-9b draws both: what each adds
        assert e[k] - base[k] == pytest.approx((cap[k] - base[k]) + (norm[k] - base[k]), rel=1e-9, abs=0), k
        assert e[k] > base[k], k
