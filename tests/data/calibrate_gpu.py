"""Set the GPU model's calibrated constants from the CENT artifact's Llama2-7B measurements on one
A100-80GB (tests/data/gpu_a100/), and print them with what each was set from.

Three 7B figures set three constants, in turn until they agree (one GPU: no link in them):
- `compute_efficiency` from the prefill throughput (12497 tok/s: the batch's prompts in one
  compute-bound step);
- `mem_efficiency` from the decoding throughput (960 tok/s at the largest batch that fits);
- `gpu.layer_overhead_s` from the latency of one query at batch 1 (42.969 s for 512 + 3584),
  where the step is the weights' bytes plus the host's time per layer.
The power fraction is the 7B rows' power over the board's (292 W). The 13B and 70B figures are
not read here: tests/gpu/test_gpu_reference.py holds the model to them.

Run: PYTHONPATH=. python tests/data/calibrate_gpu.py [--kind a100-80gb]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

from cent_serve.config import CentConfig, GpuConfig, model_preset
from cent_serve.gpu.kinds import gpu_kind
from cent_serve.gpu.timing import GpuTimer

HERE = Path(__file__).parent / "gpu_a100"
PROMPT, DECODE, MAX_BATCH = 512, 3584, 128


def rows(name: str) -> list[dict]:
    with open(HERE / name) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def timer(kind: str, mem: float, comp: float, overhead: float, attention: str, share: float = 0.9) -> GpuTimer:
    cfg = CentConfig(model=model_preset("llama2-7b"),
                     gpu=GpuConfig(kind=kind, count=1, layer_overhead_s=overhead, attention_reads=attention,
                                   memory_utilization=share))
    t = GpuTimer(cfg)
    t.kind = dataclasses.replace(t.kind, mem_efficiency=mem, compute_efficiency=comp)
    return t


def batch_of(t: GpuTimer) -> int:
    return min(MAX_BATCH, t.max_batch(PROMPT + DECODE))


def solve(f, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target, f increasing."""
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def calibrate(kind: str = "a100-80gb", attention: str = "query_heads", share: float = 0.9, hi: float = 1.0) -> dict:
    """The constants from the 7B rows, its batch the largest whose KV fits in `share` of the GPU
    (`gpu.memory_utilization`); an efficiency is searched in (0.05, `hi`]: one that comes out at `hi`
    means the 7B figure needs more than that share of the datasheet peak on this kind."""
    phases = {r["phase"]: r for r in rows("phases.csv") if r["model"] == "llama2-7b"}
    latency1 = float(next(r for r in rows("latency_batch1.csv") if r["model"] == "llama2-7b")["latency_s"])
    prefill, decoding = float(phases["prefill"]["throughput_tok_s"]), float(phases["decoding"]["throughput_tok_s"])
    mem, comp, over = 0.9, 0.5, 100e-6
    for _ in range(30):
        def prefill_tok_s(c: float) -> float:
            t = timer(kind, mem, c, over, attention, share)
            b = batch_of(t)
            return b * PROMPT / t.static_batch(b, PROMPT, 1)["prefill_s"]

        def decode_tok_s(e: float) -> float:
            t = timer(kind, e, comp, over, attention, share)
            b = batch_of(t)
            return b * DECODE / t.static_batch(b, PROMPT, DECODE)["decode_s"]

        def minus_latency(o: float) -> float:  # increasing in -o
            r = timer(kind, mem, comp, -o, attention, share).static_batch(1, PROMPT, DECODE)
            return -(r["prefill_s"] + r["decode_s"])

        comp = solve(prefill_tok_s, prefill, 0.05, hi)
        mem = solve(decode_tok_s, decoding, 0.05, hi)
        over = -solve(minus_latency, -latency1, -1e-3, 0.0)
    power = float(phases["end2end"]["power_w"])
    return dict(kind=kind, mem_efficiency=mem, compute_efficiency=comp, layer_overhead_s=over,
                power_fraction=power / gpu_kind(kind).board_power_w,
                batch=batch_of(timer(kind, mem, comp, over, attention, share)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="a100-80gb")
    ap.add_argument("--attention", default="query_heads", help="gpu.attention_reads of the measured stack")
    c = calibrate(ap.parse_args().kind, ap.parse_args().attention)
    print(f"{c['kind']} (7B at batch {c['batch']}): mem_efficiency {c['mem_efficiency']:.4f}, "
          f"compute_efficiency {c['compute_efficiency']:.4f}, layer_overhead_s {c['layer_overhead_s'] * 1e6:.1f} us, "
          f"power_fraction {c['power_fraction']:.4f}")


if __name__ == "__main__":
    main()
