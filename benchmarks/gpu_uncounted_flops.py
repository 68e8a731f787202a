"""What the GPU model's roofline leaves out of a Gemma 2 step: the FLOPs of the tanh-approximate GELU
(and its product with up), the attention scores' and the logits' soft-capping, and the two extra
RMSNorms a block (docs/gpu_model.md section 2). Their weights are counted; their FLOPs are not, as
Llama's SiLU, norms and softmax are not.

For gemma-2-9b on one A100 (`--hardware gpu:a100-80gb:1`) it prints each step's time from
`GpuTimer.step`, the uncounted FLOPs' time at the model's compute roofline (peak x
compute_efficiency), and how much the step would move with them added: decode steps of a batch of
64 and prefills of 2,048 tokens. `--tanh F` charges a tanh F FLOPs (default 1: one operation, as
every other operation here; the A100 runs it as one MUFU.TANH instruction).

    .venv/bin/python benchmarks/gpu_uncounted_flops.py [--tanh 1]
"""
from __future__ import annotations

import argparse

import numpy as np

from cent_serve.config import build_config
from cent_serve.gpu.timing import GpuTimer

STEPS = (("decode, batch 64 at 2,048 cached", 64, 1, 2048), ("decode, batch 64 at 4,095 cached", 64, 1, 4095),
         ("prefill, 1 x 2,048", 1, 2048, 0), ("prefill, 64 x 2,048", 64, 2048, 0))
"""(label, batch, new tokens a sequence, cached tokens a sequence) of the steps measured."""


def uncounted_flops(t: GpuTimer, tokens: float, attended: float, rows: int, tanh: float) -> float:
    """FLOPs of a step on stage 0 of `t` (the whole model on one GPU) that `GpuTimer.parts` does not
    count: per block and token the GELU of the gate (x^3: 2, x 0.044715, + x, x sqrt(2/pi), + 1,
    x 0.5 x: 2, and the tanh) and its product with up over the MLP's width, two extra RMSNorms
    (square, sum, scale, weight: 4 an element); per scored (token, position) and head the soft-cap
    (cap x tanh(s / cap): 2 and the tanh); the final soft-cap over the vocabulary of each sampled row."""
    m = t.model
    gelu, cap, norm = 8 + tanh + 1, 2 + tanh, 4
    per_block = tokens * (gelu * m.intermediate_size + 2 * norm * m.hidden_size) + attended * m.num_heads * cap
    return t.mapping.stage_layers[0] * per_block + rows * m.vocab_size * cap


def measured(tanh: float = 1.0) -> list[dict]:
    """Per step of `STEPS`, gemma-2-9b on one A100: its `StepParts` (`parts`), the uncounted FLOPs' time
    at the compute roofline (`extra_s`) and the step's time with them added (`with_s`)."""
    t = GpuTimer(build_config("gemma-2-9b", hardware="gpu:a100-80gb:1", numerics="off"))
    assert t.pp == 1, t.mapping
    roofline_flops_s = t.kind.peak_flops * t.kind.compute_efficiency
    out = []
    for label, batch, new, cached in STEPS:
        new_a, cached_a = np.full(batch, new, dtype=float), np.full(batch, cached, dtype=float)
        p = t.step(0, new_a, cached_a, logit_rows=batch)
        attended = t.stage_reads(0, new_a, cached_a)[1]  # a block's pairs scored, as `step` charges them
        extra_s = uncounted_flops(t, batch * new, attended, batch, tanh) / roofline_flops_s
        with_s = float(np.maximum(p.memory_s, p.compute_s + extra_s) + p.overhead_s + p.allreduce_s)
        out.append(dict(label=label, parts=p, extra_s=extra_s, with_s=with_s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tanh", type=float, default=1.0, help="FLOPs a tanh is charged (default 1)")
    for r in measured(ap.parse_args().tanh):
        p, before = r["parts"], float(r["parts"].total_s)
        print(f"{r['label']}: step {before * 1e3:.3f} ms (memory {p.memory_s * 1e3:.3f}, compute "
              f"{p.compute_s * 1e3:.3f}); uncounted {r['extra_s'] * 1e3:.4f} ms of compute, "
              f"{r['extra_s'] / p.compute_s:.3%} of it: the step moves {r['with_s'] / before - 1:.4%}")


if __name__ == "__main__":
    main()
