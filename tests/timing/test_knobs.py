"""Every hardware field drives the model, in the direction and by the amount a hand derivation
says (docs/hardware_model.md sections 1, 4, 5, 6); derived quantities come from the fields."""
from __future__ import annotations

import dataclasses

import pytest

from cent_serve.config import CentConfig, DeviceConfig, FabricConfig, ParallelConfig, apply_overrides, model_preset
from cent_serve.timing import SystemTimer
from cent_serve.timing.accelerator import accelerator_cycles
from cent_serve.timing.pim import (BlockGeometry, gemv_cycles, lm_head_cycles, norm_cycles, score_slot_cycles,
                                   score_v_cycles, softmax_cycles)

L = 2048


def _timer(model="llama2-7b", devices=8, pp=0, tp=1, **overrides) -> SystemTimer:
    cfg = apply_overrides(CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, pp, tp),
                                     numerics="off"), [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    return SystemTimer.from_config(cfg)


def test_derived_quantities_come_from_the_geometry():
    dev = DeviceConfig()
    assert dev.capacity_bytes == 32 * 16 * 16384 * 1024 * 2 == 16 * 2**30
    assert dev.row_column_ops == 64 and dev.dma_line_cycles == 1.0
    assert dev.peak_pim_bytes_per_s == 32 * 16 * 32 * 2e9 / 2  # 16.4 TB/s: 512 GB/s a channel
    bigger = dataclasses.replace(dev, rows_per_bank=32768, banks_per_channel=32)
    assert bigger.capacity_bytes == 4 * dev.capacity_bytes
    assert dataclasses.replace(dev, row_elements=2048).row_column_ops == 128


def test_the_peak_rate_follows_the_column_interval():
    """A column command every column_cycles: 1 cycle streams twice the bytes a second of the default 2
    (the knob README and section 4 offer for "twice the DRAM's column rate"), 4 half; so does the clock."""
    dev = DeviceConfig()
    assert dataclasses.replace(dev, column_cycles=1.0).peak_pim_bytes_per_s == 2 * dev.peak_pim_bytes_per_s
    assert dataclasses.replace(dev, column_cycles=4.0).peak_pim_bytes_per_s == dev.peak_pim_bytes_per_s / 2
    assert dataclasses.replace(dev, clock_hz=4e9).peak_pim_bytes_per_s == 2 * dev.peak_pim_bytes_per_s


def test_the_clocks_scale_their_own_work_only():
    base, fast_pim, fast_acc = _timer(), _timer(device__clock_hz=4e9), _timer(device__acc_clock_hz=4e9)
    assert fast_pim.block_pim_s(L) == base.block_pim_s(L) / 2  # PIM time halves ...
    assert fast_pim.hop_s(1) == base.hop_s(1) and fast_pim.block_acc_s(L) == base.block_acc_s(L)  # ... not CXL
    assert fast_acc.block_acc_s(L) == base.block_acc_s(L) / 2 and fast_acc.block_pim_s(L) == base.block_pim_s(L)


def test_banks_per_channel_split_a_matrix_over_more_banks():
    """gemv(4096 -> 4096) over 8 channels: 128 banks give c = 32 outputs per bank and input row,
    30,298 cycles (published); 256 banks give c = 16: 4 rows x (2 x 64 + 54.5 + 16 (103 + 128))."""
    dev = DeviceConfig()
    assert gemv_cycles(4096, 4096, 128, dev) == 30298
    assert gemv_cycles(4096, 4096, 256, dataclasses.replace(dev, banks_per_channel=32)) == 4 * (128 + 54.5 + 16 * 231)
    base, more = _timer(), _timer(device__banks_per_channel=32)
    assert more.mapping.geometry.banks == 2 * base.mapping.geometry.banks == 2 * 16 * 8
    assert 0.4 < more.pim.breakdown(L).qkvo / base.pim.breakdown(L).qkvo < 0.6  # outputs per bank halve


def test_a_longer_row_streams_more_columns_per_row_switch():
    """row 2048: gemv(4096 -> 4096, B = 128) is 2 rows x (2 x 128 + 54.5 + 32 (103 + 256))."""
    dev = dataclasses.replace(DeviceConfig(), row_elements=2048)
    assert gemv_cycles(4096, 4096, 128, dev) == 2 * (256 + 54.5 + 32 * 359)


def test_a_wider_burst_halves_the_column_commands():
    """burst 32: gemv(4096 -> 4096, B = 128) is 4 rows x (2 x 32 + 54.5 + 32 (103 + 64))."""
    dev = dataclasses.replace(DeviceConfig(), burst_elements=32)
    assert gemv_cycles(4096, 4096, 128, dev) == 4 * (64 + 54.5 + 32 * 167)


def test_the_column_interval_times_the_streamed_columns_only():
    """A column command every cycle instead of 2 (tCCD_L 0.5 ns at 2 GHz): gemv(4096 -> 4096,
    B = 128) is 4 rows x (64 + 54.5 + 32 (103 + 64)); score, softmax and score x V lose one cycle
    a column they stream, their fixed cycles stay, and so does rotary's elementwise product (D / 16
    columns for q, D / 16 for k); the norms, KV append and SiLU do not stream columns."""
    dev, fast = DeviceConfig(), DeviceConfig(column_cycles=1.0)
    assert gemv_cycles(4096, 4096, 128, fast) == 4 * (64 + 54.5 + 32 * 167) == 21850
    m, g = model_preset("llama2-7b"), BlockGeometry(cpb=8, tb=4, tp=1)
    # one key's 4096 values into the buffer (256 bursts), then 32 heads x 8 MAC columns
    assert score_slot_cycles(m, dev, True) - score_slot_cycles(m, fast, True) == 256 + 32 * 8
    # 2048 keys: 2 rows of 64 columns; per row 2 head groups x 64, and 1 + 8 V^T rows x 64 per head
    nhpb = 1  # 32 heads over 4 bank groups x 8 channels
    assert softmax_cycles(m, g, dev, L) - softmax_cycles(m, g, fast, L) == 2 * 2 * nhpb * 64
    assert score_v_cycles(m, g, dev, L) - score_v_cycles(m, g, fast, L) == 4 * 1 * 2 * (64 + 8 * 64)
    base, quick = _timer().pim.breakdown(L), _timer(device__column_cycles=1.0).pim.breakdown(L)
    for op in ("norm", "kv", "act"):
        assert getattr(quick, op) == getattr(base, op)
    for op in ("qkvo", "ffn", "score", "softmax", "sv"):
        assert getattr(quick, op) < getattr(base, op)
    assert base.rotary - quick.rotary == 4096 / 16 + 4096 / 16  # llama2-7b: no GQA, q and k alike


def test_the_lm_heads_norm_pass_goes_through_the_dma_engine_too():
    """The final RMSNorm's scale pass moves its bursts through the DMA engine, as a block's norms
    do: at 64 B a cycle it takes half its cycles (it took the same before)."""
    m, g = model_preset("llama2-7b"), BlockGeometry(cpb=8, tb=4, tp=1)
    dev, wide = DeviceConfig(), DeviceConfig(dma_bytes_per_cycle=64.0)
    gemv, fixed = gemv_cycles(4096, 32000, g.banks, dev), 850
    assert lm_head_cycles(m, g, wide) - gemv - fixed == (lm_head_cycles(m, g, dev) - gemv - fixed) / 2 > 0


def test_fewer_accumulator_registers_mean_more_mode_switch_groups():
    """16 registers: c = 32 outputs take 2 groups: 4 rows x (128 + 2 x 54.5 + 32 x 231)."""
    dev = dataclasses.replace(DeviceConfig(), accumulator_registers=16)
    assert gemv_cycles(4096, 4096, 128, dev) == 4 * (128 + 109 + 32 * 231)


def test_a_wider_dma_engine_halves_the_dma_bound_terms():
    """RMSNorm at 64 B per cycle: its DMA lines cost half a cycle each, its fixed 850 does not."""
    m, g = model_preset("llama2-7b"), BlockGeometry(cpb=8, tb=4, tp=1)
    dev, wide = DeviceConfig(), DeviceConfig(dma_bytes_per_cycle=64.0)
    assert norm_cycles(m, g, wide) - 2 * 850 == (norm_cycles(m, g, dev) - 2 * 850) / 2
    assert _timer(device__dma_bytes_per_cycle=64.0).block_pim_s(L) < _timer().block_pim_s(L)


def test_the_accelerator_units_are_the_channels_and_their_lanes():
    """Softmax's passes over the context: L H / (lanes x units) of (44 + 66) cycles at 32 units;
    64 channels: half the passes, each (64 + 11 + 1) + (128 + 1 + 1) = 206 cycles."""
    m = model_preset("llama2-7b")
    dev = DeviceConfig()
    base = accelerator_cycles(m, dev, L)
    assert base - accelerator_cycles(m, dev, L - 1) == 32 / (16 * 32) * 110  # one more token of 32 heads
    wide = dataclasses.replace(dev, num_channels=64)
    assert accelerator_cycles(m, wide, L) - accelerator_cycles(m, wide, L - 1) == 32 / (16 * 64) * 206
    lanes = dataclasses.replace(dev, acc_simd_lanes=32)
    assert accelerator_cycles(m, lanes, L) - accelerator_cycles(m, lanes, L - 1) == 32 / (32 * 32) * 110


def test_more_channels_give_a_pipeline_block_more_channels():
    base, more = _timer(), _timer(device__num_channels=64)
    assert (base.mapping.channels_per_block, more.mapping.channels_per_block) == (8, 16)
    assert more.block_pim_s(L) < base.block_pim_s(L)


@pytest.mark.parametrize("field, value, factor", [("switch_lanes", 72, 2.0), ("lane_gbps", 16.0, 0.5),
                                                 ("multicast", False, 0.5)])
def test_the_switch_lanes_and_their_rate_set_the_serialization_not_the_latency(field, value, factor):
    base, other = _timer(), _timer(**{f"fabric__{field}": value})
    latency = FabricConfig().hop_latency_s
    assert other.hop_s(1) - latency == pytest.approx(factor * (base.hop_s(1) - latency), rel=1e-12)


def test_without_multicast_a_payload_for_k_devices_is_k_sends():
    """70B as one stage of tp 32 with multicast off: each broadcast of the block (4 Eb + Fb to the
    31 others, the output hop to the next stage's 32 or, on the same devices, to the 31 others) is
    sent once a receiver at the whole lane bandwidth; the
    gathers are point to point either way, and only their bandwidth doubles. Multicast off made
    tensor parallelism faster (13.4 us a block against 24.6) before."""
    from cent_serve.timing.fabric import flits_for_values

    on, off = _timer("llama2-70b", 32, 1, 32), _timer("llama2-70b", 32, 1, 32, fabric__multicast="false")
    lat, d, f = FabricConfig().hop_latency_s, 8192, 28672
    ser_on, ser_off = (t.port.serialize_s(1) for t in (on, off))
    assert ser_off == ser_on / 2
    gather_d, gather_f = (-(-2 * n // (32 * 192)) * 31 for n in (d, f))
    want = {t: 5 * (lat + gather_d * ser) + lat + gather_f * ser
            + 4 * (lat + k * flits_for_values(d, FabricConfig()) * ser)
            + lat + k * flits_for_values(f, FabricConfig()) * ser
            for t, ser, k in ((on, ser_on, 1), (off, ser_off, 31))}
    for t in (on, off):
        assert t.collectives_s(1) == pytest.approx(want[t], rel=1e-12)
    assert off.hop_s(1) == pytest.approx(lat + 32 * flits_for_values(d, FabricConfig()) * ser_off, rel=1e-12)
    # the next block on the same 32 devices: the sender holds the output, the 31 others get it
    assert off.local_hop_s(1) == pytest.approx(lat + 31 * flits_for_values(d, FabricConfig()) * ser_off, rel=1e-12)
    assert off.token_cost(L).hops_s == pytest.approx(80 * off.local_hop_s(1), rel=1e-12)  # one stage: no crossing
    assert off.collectives_s(1) + off.hop_s(1) > 5 * (on.collectives_s(1) + on.hop_s(1))
    # one device a stage: one receiver, so only the bandwidth moves
    assert _timer(fabric__multicast="false").hop_s(1) - lat == pytest.approx((_timer().hop_s(1) - lat) / 2, rel=1e-12)


@pytest.mark.parametrize("width", [1, 4])
def test_the_activation_width_sizes_every_payload_on_the_switch_and_nothing_on_the_devices(width):
    """fabric.activation_bytes: 70B as 4 stages of tp 8. The output hop carries ceil(w D / 192) flits
    (bf16: 86 for D 8192; 8-bit 43; float32 171), the exchanges' broadcasts and gathers their
    w-byte payloads (a gather ceil(w n / 8 / 192) x 7 flits), the links' energy w bytes a value;
    the latencies, the PIM and accelerator time and an on-device DMA hop do not move."""
    from cent_serve.timing.energy import token_energy_terms_j

    base, other = _timer("llama2-70b", 32, 4, 8), _timer("llama2-70b", 32, 4, 8, fabric__activation_bytes=width)
    lat, ser, d, f = FabricConfig().hop_latency_s, base.port.serialize_s(1), 8192, 28672
    assert other.port == base.port
    assert other.hop_s(1) == pytest.approx(lat + -(-width * d // 192) * ser, rel=1e-12)
    eb, fb = (lat + -(-width * n // 192) * ser for n in (d, f))
    eg, fg = (lat + -(-width * n // (8 * 192)) * 7 * ser for n in (d, f))
    assert other.collectives_s(1) == pytest.approx(4 * eb + 5 * eg + fb + fg, rel=1e-12)
    assert other.block_pim_s(L) == base.block_pim_s(L) and other.block_acc_s(L) == base.block_acc_s(L)
    e_base, e_other = token_energy_terms_j(base, L), token_energy_terms_j(other, L)
    assert e_other["pcie"] == pytest.approx(width / 2 * e_base["pcie"], rel=1e-12)
    assert {k: v for k, v in e_other.items() if k != "pcie"} == {k: v for k, v in e_base.items() if k != "pcie"}
    dma = dict(fabric__charge_local_hops="false")
    assert (_timer("llama2-70b", 32, **dma, fabric__activation_bytes=width).local_hop_s(1)
            == _timer("llama2-70b", 32, **dma).local_hop_s(1) == 8192 * 2 / 32 / 2e9)


def test_the_activation_width_is_a_whole_number_of_bytes():
    with pytest.raises(ValueError, match=r"fabric.activation_bytes.*use 1 \(8-bit\), 2"):
        _timer(fabric__activation_bytes=3)


def test_local_hops_cost_the_dma_engine_when_not_charged_as_switch_hops():
    """70B on 32 devices: 27 units, so 26 hops cross the switch and 54 stay on a device, each
    8192 x 2 B / 32 B per cycle = 512 cycles (0.256 us) instead of a 1.461 us hop."""
    base, local = _timer("llama2-70b", 32), _timer("llama2-70b", 32, fabric__charge_local_hops="false")
    assert local.local_hop_s(1) == 512 / 2e9 and base.local_hop_s(1) == base.hop_s(1)
    assert local.token_cost(L).hops_s == pytest.approx(26 * base.hop_s(1) + 54 * 512 / 2e9, rel=1e-12)
    assert base.token_cost(L).hops_s == 80 * base.hop_s(1)


def test_local_hops_off_the_switch_use_no_link_energy():
    """70B on 32 devices (pipeline, tp 1): with local hops on the DMA engine only the 26 hops that
    cross the switch carry the block's output (8192 bf16 values) over the links, not all 80."""
    from cent_serve.timing.energy import token_energy_terms_j

    base, local = _timer("llama2-70b", 32), _timer("llama2-70b", 32, fabric__charge_local_hops="false")
    link = 8192 * 2 * 8 * base.device.energy.pcie_pj_per_bit * 1e-12
    assert token_energy_terms_j(base, L)["pcie"] == pytest.approx(80 * link, rel=1e-12)
    assert token_energy_terms_j(local, L)["pcie"] == pytest.approx(26 * link, rel=1e-12)


def test_the_reported_block_cxl_follows_local_hops_not_charged_as_switch_hops():
    """`cent simulate` prints block_cxl_ms and block_ms: with local hops on the DMA engine they are a
    block's mean share of the token's hops, so N x block_ms + embedding + host is still the token
    latency (7B on 8 devices: 8 units, 7 hops cross the switch, 25 stay on a device, 4096 x 2 B / 32 B
    per cycle = 256 cycles each)."""
    from cent_serve.timing.pipeline import token_figures

    base, local = _timer("llama2-7b", 8), _timer("llama2-7b", 8, fabric__charge_local_hops="false")
    fb, fl = token_figures(base, L), token_figures(local, L)
    assert fb.block_cxl_ms == base.hop_s(1) * 1e3
    assert fl.block_cxl_ms == pytest.approx((7 * base.hop_s(1) + 25 * 256 / 2e9) / 32 * 1e3, rel=1e-12)
    assert fl.block_cxl_ms < fb.block_cxl_ms
    for f in (fb, fl):
        assert not f.bottleneck
        assert 32 * f.block_ms + f.embedding_ms + f.host_ms == pytest.approx(f.token_latency_ms, rel=1e-12)


def test_a_removed_field_says_what_to_set_instead():
    with pytest.raises(ValueError, match="derived .*rows_per_bank"):
        apply_overrides(CentConfig(), ["device.capacity_bytes=1"])


def test_the_data_type_width_counts_the_weights_and_kv_cache_too():
    """device.bytes_per_element is the width of what the banks hold: halving it halves the capacity
    and the weight and KV bytes alike (the same KV blocks fit), and with the rows and bursts holding
    twice the elements (8-bit data on the same DRAM) twice the tokens fit and a token runs faster."""
    from cent_serve.scheduler import kv_room
    from cent_serve.timing.mapping import resolve_mapping

    def blocks_and_token(*sets):
        cfg = apply_overrides(CentConfig(model=model_preset("llama2-7b"), parallel=ParallelConfig(4, 0, 1),
                                         numerics="off"), list(sets))
        mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
        return kv_room(cfg, mp).num_blocks, SystemTimer.from_config(cfg).block_pim_s(L)

    bf16_blocks, bf16_s = blocks_and_token()
    half_blocks, _ = blocks_and_token("device.bytes_per_element=1")
    int8_blocks, int8_s = blocks_and_token("device.bytes_per_element=1", "device.row_elements=2048",
                                           "device.burst_elements=32")
    assert half_blocks == bf16_blocks  # capacity, weights and KV all halve
    assert int8_blocks >= 2 * bf16_blocks
    assert int8_s < 0.6 * bf16_s  # half the rows stream


def test_cent_info_says_what_the_device_set_is(capsys):
    """"What if the DRAM were HBM-like?": after --set device.num_channels=64 cent info printed the model,
    the mapping and the config but nothing of the device it made: its capacity and PIM peak (section 1:
    16 GiB, 16.4 TB/s of weights, 8.2 TMAC/s) were left for the reader to derive. A line says them."""
    import json
    from cent_serve.cli import main

    assert main(["info", "--model", "llama2-7b", "--devices", "8", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["device"]
    assert base == dict(capacity_bytes=16 * 2**30, peak_pim_bytes_per_s=32 * 16 * 32 * 2e9 / 2,
                        peak_macs_per_s=32 * 16 * 16 * 2e9 / 2)
    assert main(["info", "--model", "llama2-7b", "--devices", "8", "--json", "--set", "device.num_channels=64",
                 "--set", "device.column_cycles=1"]) == 0
    hbm = json.loads(capsys.readouterr().out)["device"]
    assert hbm == dict(capacity_bytes=32 * 2**30, peak_pim_bytes_per_s=4 * base["peak_pim_bytes_per_s"],
                       peak_macs_per_s=4 * base["peak_macs_per_s"])
    assert main(["info", "--model", "llama2-7b", "--devices", "8"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("device "))
    assert line == ("device       16 GiB: 32 channels x 16 banks x 16,384 rows x 1,024 elements of 2 B; PIM peak "
                    "16.4 TB/s of weights, 8.19 TMAC/s (a column command every 2 cycles at 2 GHz)"), line
    assert main(["info", "--model", "llama2-7b", "--hardware", "gpu:a100-80gb:1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] is None  # no CENT device on GPUs
