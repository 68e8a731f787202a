"""The timing model against the CENT artifact's published figures (tests/data/*.csv,
copied from shared/reference) and the check values of docs/hardware_model.md, under the
artifact's convention (`cent_serve.timing.pipeline`)."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import pytest

from cent_serve.config import DeviceConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, phase_figures, resolve_mapping, token_figures

DATA = Path(__file__).resolve().parent.parent / "data"
ROWS = list(csv.DictReader(open(DATA / "cent_reference_7b_13b.csv")))
PHASE_ROWS = list(csv.DictReader(open(DATA / "cent_phases_7b_13b.csv")))


@lru_cache(maxsize=None)
def timer(model: str, devices: int, pp: int, tp: int) -> SystemTimer:
    """The artifact's accounting (`--convention artifact`): its perfect pipeline, and exchanges
    charged with tp = 1, as its published rows are."""
    m, dev = model_preset(model), DeviceConfig()
    return SystemTimer(m, resolve_mapping(m, ParallelConfig(devices, pp, tp), dev), dev, FabricConfig(), "artifact")


def rel(a: float, b: float) -> float:
    return abs(a / b - 1)


def test_reference_tables_are_complete():
    assert len(ROWS) == 384 and len(PHASE_ROWS) == 36


@pytest.mark.parametrize("mapping", sorted({(r["model"], r["devices"], r["pp"], r["tp"]) for r in ROWS}))
def test_every_reference_row_within_2_percent(mapping):
    """token latency, block PIM, CXL, accelerator and embedding times: all 32 context lengths."""
    model, devices, pp, tp = mapping
    t = timer(model, int(devices), int(pp), int(tp))
    rows = [r for r in ROWS if (r["model"], r["devices"], r["pp"], r["tp"]) == mapping]
    assert len(rows) == 32
    for r in rows:
        f = token_figures(t, int(r["seqlen"]))
        assert f.channels_per_block == int(r["channels_per_block"])
        for col in ("token_latency_ms", "block_pim_ms", "block_cxl_ms", "block_acc_ms", "embedding_ms",
                    "throughput_tok_s"):
            assert rel(getattr(f, col), float(r[col])) < 0.02, (col, r["seqlen"], getattr(f, col), r[col])
        # energy and power: the 5% the design-space issue asks on every row (measured: energy 0.003%,
        # power 1.6% at worst, 7B tp 8, where the PIM latency is off by as much)
        for col in ("token_energy_mj", "power_w"):
            assert rel(getattr(f, col), float(r[col])) < 0.05, (col, r["seqlen"], getattr(f, col), r[col])


@pytest.mark.parametrize("row", PHASE_ROWS, ids=lambda r: f"{r['model']}-pp{r['pp']}-tp{r['tp']}-{r['phase']}")
def test_every_phase_row(row):
    """latency and throughput within 2%; energy per token and power within 5%."""
    t = timer(row["model"], int(row["devices"]), int(row["pp"]), int(row["tp"]))
    got = phase_figures(t, prompt=512, decode=int(row["seqlen"]) - 512)[row["phase"]]
    assert rel(got["latency_s"], float(row["latency_s"])) < 0.02
    assert rel(got["throughput_tok_s"], float(row["throughput_tok_s"])) < 0.02
    assert rel(got["energy_per_token_mj"], float(row["energy_per_token_mj"])) < 0.05
    assert rel(got["power_w"], float(row["power_w"])) < 0.05
