"""How fast the Ray executor runs rounds, against baselines run in the same process.

(a) Timing-only Llama2-70B on 32 devices, pp 80: the paper workload of `cent simulate
    --emulate` (`run_workload`: 80 queries, one token each per round), a slice of
    `--steps` rounds from position `--start` (default 0..300; `--steps 4096` is the
    whole prompt 512 + decode 3584). Figures: simulated tokens per wall second (baseline:
    the LocalExecutor on the same rounds), and the messages and bytes a round moves on
    the links once the batch is laid out.
(b) The tiny model with full numerics on 8 devices, batch 8 (`generate_batch`, 8 prompts),
    pipeline (pp 8) and hybrid (pp 2 x tp 4). Figure: generated tokens per wall second;
    baselines: the LocalExecutor and the single-process reference model (`generate`, one
    prompt after the other: it has no batching) producing the same tokens.

Wall time counts every round, the first ones included; actor start-up (and weight
loading) is reported apart. Simulated results are checked equal between executors.

    .venv/bin/python benchmarks/actors_speed.py [--steps 300] [--start 0] [--tokens 32]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.emulate import run_workload
from cent_serve.executor import make_executor
from cent_serve.executor.generate import generate_batch
from cent_serve.model.generate import generate
from cent_serve.model.reference import LlamaModel
from cent_serve.model.hf_checkpoint import load_weights

TARGET_70B_SIM_TOK_S = 20000.0
"""The round-message issue's target for (a) on a 2-core machine (docs/architecture.md, "Where the
emulation's time goes"; `benchmarks/emulate_speed.py` times the whole workload)."""
TARGET_TINY_TOK_S = 200.0
"""Issue target for (b), pipeline, on a 2-core machine."""


def _timed(make):
    t0 = time.perf_counter()
    ex = make()
    return ex, time.perf_counter() - t0


def bench_70b(steps: int, start: int) -> dict:
    cfg = CentConfig(model=model_preset("llama2-70b"), parallel=ParallelConfig(32, 80, 1), numerics="off")
    out = {}
    done = {}
    for kind in ("local", "ray"):
        ex, startup_s = _timed(lambda: make_executor(cfg, kind))
        try:
            first = run_workload(cfg, ex, start, 1)  # lays the batch out on the devices
            links = ex.stats().get("links")
            tr = run_workload(cfg, ex, start + 1, steps)
            if links is not None:
                after = ex.stats()["links"]
                out["link_messages_per_round"] = (after["messages"] - links["messages"]) / steps
                out["link_bytes_per_round"] = (after["bytes"] - links["bytes"]) / steps
        finally:
            ex.shutdown()
        done[kind] = np.concatenate([first.done_s, tr.done_s])
        out[kind] = dict(startup_s=startup_s, wall_s=tr.wall_s, sim_tok_s=tr.tokens / tr.wall_s,
                         ms_per_round=1e3 * tr.wall_s / steps)
    out["identical"] = bool(np.array_equal(done["local"], done["ray"]))
    return out


def _prompts(n: int, vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [[int(t) for t in rng.integers(3, vocab, size=8 + 3 * q)] for q in range(n)]


def bench_tiny(pp: int, tp: int, max_tokens: int, reference: dict) -> dict:
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(8, pp, tp), numerics="full")
    prompts = _prompts(8, cfg.model.vocab_size)
    out = {}
    gens = {}
    for kind in ("local", "ray"):
        ex, startup_s = _timed(lambda: make_executor(cfg, kind))
        try:
            t0 = time.perf_counter()
            gens[kind] = generate_batch(ex, prompts, max_tokens)
            wall_s = time.perf_counter() - t0
        finally:
            ex.shutdown()
        n = sum(len(t) for t in gens[kind].token_ids)
        out[kind] = dict(startup_s=startup_s, wall_s=wall_s, tok_s=n / wall_s)
    if "tok_s" not in reference:
        model = LlamaModel(cfg.model, load_weights(cfg.model))
        t0 = time.perf_counter()
        ref_ids = [generate(model, p, max_tokens, ignore_eos=True).token_ids for p in prompts]
        reference.update(tok_s=sum(len(t) for t in ref_ids) / (time.perf_counter() - t0), ids=ref_ids)
    out["reference_tok_s"] = reference["tok_s"]
    out["same_tokens"] = gens["local"].token_ids == gens["ray"].token_ids == reference["ids"]
    out["identical_times"] = gens["local"].token_times_s == gens["ray"].token_times_s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="rounds of the 70B workload")
    ap.add_argument("--start", type=int, default=0, help="position of the first 70B round")
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt (tiny)")
    args = ap.parse_args()

    a = bench_70b(args.steps, args.start)
    print(f"(a) llama2-70b, 32 devices, pp 80, timing-only, {args.steps} rounds x 80 queries "
          f"from position {args.start}")
    for kind in ("local", "ray"):
        r = a[kind]
        print(f"    {kind:5s}: {r['sim_tok_s']:8.0f} sim tok/s  ({r['ms_per_round']:.1f} ms/round, "
              f"{r['wall_s']:.1f} s; start-up {r['startup_s']:.1f} s)")
    print(f"    links at steady decoding: {a['link_messages_per_round']:.0f} messages, "
          f"{a['link_bytes_per_round']:.0f} bytes per round (host and devices, frames with their headers)")
    print(f"    ray / local = {a['ray']['sim_tok_s'] / a['local']['sim_tok_s']:.2f}; "
          f"target {TARGET_70B_SIM_TOK_S:.0f}: {'met' if a['ray']['sim_tok_s'] >= TARGET_70B_SIM_TOK_S else 'NOT met'}; "
          f"simulated times identical: {a['identical']}")

    reference: dict = {}
    for name, pp, tp in (("pipeline pp 8", 0, 1), ("hybrid pp 2 x tp 4", 2, 4)):
        b = bench_tiny(pp, tp, args.tokens, reference)
        print(f"(b) tiny, full numerics, 8 devices, {name}, batch 8, {args.tokens} tokens each")
        for kind in ("local", "ray"):
            r = b[kind]
            print(f"    {kind:5s}: {r['tok_s']:8.1f} tok/s  ({r['wall_s']:.2f} s; start-up {r['startup_s']:.1f} s)")
        print(f"    reference model (one process, one prompt at a time): {b['reference_tok_s']:.1f} tok/s")
        print(f"    ray / reference = {b['ray']['tok_s'] / b['reference_tok_s']:.2f}; "
              f"ray / local = {b['ray']['tok_s'] / b['local']['tok_s']:.2f}"
              + (f"; target {TARGET_TINY_TOK_S:.0f}: "
                 f"{'met' if b['ray']['tok_s'] >= TARGET_TINY_TOK_S else 'NOT met'}" if tp == 1 else ""))
        print(f"    same tokens as the reference: {b['same_tokens']}; "
              f"simulated times identical: {b['identical_times']}")


if __name__ == "__main__":
    main()
