"""The per-op API the device and fabric actors charge time with, checked by hand and
against the published per-block figures (docs/hardware_model.md sections 4 and 6)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cent_serve.config import DeviceConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, resolve_mapping
from cent_serve.timing.fabric import broadcast_s, gather_s, point_to_point_s, port_model
from cent_serve.timing.pim import BlockGeometry, block_pim_breakdown

DEV, FAB = DeviceConfig(), FabricConfig()
DATA = Path(__file__).resolve().parent.parent / "data"


def make_timer(model: str, devices: int, pp: int, tp: int, convention: str = "cent") -> SystemTimer:
    m = model_preset(model)
    return SystemTimer(m, resolve_mapping(m, ParallelConfig(devices, pp, tp), DEV), DEV, FAB, convention)


@pytest.mark.parametrize("model, devices, pp, tp, us", [
    ("llama2-7b", 8, 32, 1, 0.322), ("llama2-70b", 32, 80, 1, 1.461), ("llama2-7b", 8, 1, 8, 4.296),
    ("llama2-13b", 20, 1, 20, 9.406), ("llama2-70b", 32, 1, 32, 24.571)])
def test_hop_plus_collectives_is_the_published_block_cxl(model, devices, pp, tp, us):
    t = make_timer(model, devices, pp, tp)
    assert abs((t.hop_s(1) + t.collectives_s(1)) * 1e6 / us - 1) < 0.002


def test_hop_of_several_tokens_by_hand():
    t = make_timer("llama2-7b", 8, 32, 1)  # 18 lanes x 4 GiB/s
    flits = -(-2 * 5 * 4096 // 192)
    assert t.hop_s(5) == pytest.approx(180e-9 + flits * 256 / (18 * 4 * 2**30))


def test_the_pipelines_stations_by_hand():
    """`stations_s`, what sets the cent convention's pace when one is the bottleneck: each stage's
    channel group, busy with its blocks' steps (PIM, and the accelerator x the tb blocks sharing it)
    and the DMA hops between them; the embedding and LM-head units; and a switch port, busy for the
    flits' serialization only (the hop's latency is the wire's, not the port's). 7B on 8 devices:
    32 one-block stages, tb 4, 43 flits of 4096 bf16 values over 18 lanes x 4 GiB/s; 70B as 8
    stages of tp 4: 10 blocks a stage with their exchanges, 9 hops on the stage's devices."""
    L = 2048
    t = make_timer("llama2-7b", 8, 32, 1)
    pim, acc, _ = t.block_cost(L)
    stations = t.stations_s(L)
    assert len(stations) == 32 + 3
    assert stations[:32] == pytest.approx([pim + 4 * acc] * 32, rel=1e-12)
    assert stations[32:34] == [t.embed_lookup_s, t.lm_head_s]
    assert stations[34] == pytest.approx(43 * 256 / (18 * 4 * 2**30), rel=1e-12)
    t = make_timer("llama2-70b", 32, 8, 4)
    pim, acc, _ = t.block_cost(L)
    stations = t.stations_s(L)
    assert len(stations) == 8 + 3 and t.collectives_s(1) > 0
    assert stations[:8] == pytest.approx([10 * (pim + acc + t.collectives_s(1)) + 9 * t.local_hop_s(1)] * 8, rel=1e-12)


def test_embedding_and_lm_head_parts_add_up_to_the_published_embedding():
    """Under the artifact's convention (the embedding charged as a vocab x D GEMV, as it does); the
    cent convention's lookup is one row's bursts (test_families_timing)."""
    rows = list(csv.DictReader(open(DATA / "cent_reference_7b_13b.csv")))
    for r in rows[::32]:
        t = make_timer(r["model"], int(r["devices"]), int(r["pp"]), int(r["tp"]), "artifact")
        assert abs((t.embed_lookup_s + t.lm_head_s) * 1e3 / float(r["embedding_ms"]) - 1) < 0.02
        cent = make_timer(r["model"], int(r["devices"]), int(r["pp"]), int(r["tp"]))
        assert cent.lm_head_s == t.lm_head_s
        assert cent.embed_lookup_s * DEV.clock_hz == cent.model.hidden_size // 16  # one row's bursts


def test_payload_transfers_by_hand():
    port = port_model(FAB, 8)
    bw = 18 * 4 * 2**30
    assert point_to_point_s(1000, port, FAB) == pytest.approx(180e-9 + 6 * 256 / bw)  # ceil(1000/192) = 6
    assert broadcast_s(1000, port, FAB, 7) == point_to_point_s(1000, port, FAB)
    assert gather_s(1000, 4, port, FAB) == pytest.approx(180e-9 + 2 * 3 * 256 / bw)  # ceil(250/192) x 3
    assert gather_s(1000, 1, port, FAB) == pytest.approx(180e-9)


def test_attention_ops_by_hand_across_a_row_boundary():
    """7B in pure pipeline on 8 devices (cpb 8, tb 4, B 128) at L = 1500: rows of 1024 + 476."""
    b = block_pim_breakdown(model_preset("llama2-7b"), BlockGeometry(cpb=8, tb=4, tp=1), DEV, 1500)
    assert b.score == 4 * 12 * 904                                   # rpv cdiv(L, B) 904
    assert b.softmax == (6 * 32 * 64 * 4 + 2 * (98 + 128)) + (6 * 32 * 30 * 4 + 2 * (98 + 60))
    assert b.sv == 4 * ((2 * 64 + 8 * (158 + 128)) + (2 * 30 + 8 * (158 + 60)))
    assert b.total == pytest.approx(sum(b.as_dict().values()))
