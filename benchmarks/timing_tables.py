"""How long the closed-form model takes to compute every row of the paper's tables.

Rows: Llama2-7B on 8 devices, 13B on 20, 70B on 32; every mapping the paper
evaluates (pure pipeline and tp for each divisor of the device count); 32
context lengths each (128..4096), with energy. Baseline for the ratio: the
same rows computed with cold caches (a fresh SystemTimer per row).

    python benchmarks/timing_tables.py
"""
from __future__ import annotations

import time

from cent_serve.config import DeviceConfig, FabricConfig, ParallelConfig, model_preset
from cent_serve.timing import SystemTimer, resolve_mapping, token_figures
from cent_serve.simulate_cli import sweep_mappings

SYSTEMS = {"llama2-7b": 8, "llama2-13b": 20, "llama2-70b": 32}
CONTEXTS = range(128, 4097, 128)


def all_rows(fresh_timer_per_row: bool) -> int:
    dev, fab, n = DeviceConfig(), FabricConfig(), 0
    for name, devices in SYSTEMS.items():
        m = model_preset(name)
        for pp, tp in sweep_mappings(devices, m.num_layers):
            mp = resolve_mapping(m, ParallelConfig(devices, pp, tp), dev)
            timer = SystemTimer(m, mp, dev, fab)
            for L in CONTEXTS:
                t = SystemTimer(m, mp, dev, fab) if fresh_timer_per_row else timer
                token_figures(t, L)
                n += 1
    return n


def main() -> None:
    t0 = time.perf_counter()
    rows = all_rows(fresh_timer_per_row=True)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    all_rows(fresh_timer_per_row=False)
    warm = time.perf_counter() - t0
    print(f"{rows} rows (7B, 13B, 70B; every mapping; 32 context lengths; timing + energy)")
    print(f"  one timer per mapping: {warm:.3f} s   (target < 2 s)")
    print(f"  fresh timer per row:   {cold:.3f} s   (baseline; ratio {cold / warm:.1f}x)")


if __name__ == "__main__":
    main()
