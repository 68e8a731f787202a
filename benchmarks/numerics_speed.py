"""Wall time per token-round with full numerics: this checkout, and an older commit in the same run.

The default model (tiny) with full numerics on 8 devices in a pipeline (pp 8), two workloads:

- `replay`: `--num-requests` requests of `--prompt-len` + `--output-len` tokens, Poisson arrivals at
  `--rate` a second, through the engine in this process as `cent bench run --synthetic poisson` replays
  them (the prompt token by token: a round per prompt token), each asking its tokens' logprobs;
- `generate`: one sequence of `--gen-prompt-len` + `--gen-output-len` tokens through the local executor,
  a token a round (`generate_batch(..., prefill_chunk=1)`), its logits kept.

A round is one `Engine.step` (one executor round). Each workload runs in a fresh process per tree,
after an untimed short one in that process (imports, weights, numba's cache). With `--against REF`
the trees alternate (REF, this checkout, REF, ...) `--repeat` times, so both see the same machine
load; the script prints each run's wall and CPU milliseconds per round (the CPU time of the
workload's process moves less with other processes' load), the ratios of each pair, the load
average, and whether the outputs are the same bit for bit: a digest of every token id, logprob
(and its top alternatives), logits row, token time, finish time and energy.

    .venv/bin/python benchmarks/numerics_speed.py [--against 2efdc35] [--repeat 3] [--num-requests 20]
        [--prompt-len 1500] [--output-len 50] [--gen-prompt-len 1500] [--gen-output-len 200]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from worktree import worktree

REPO = Path(__file__).resolve().parents[1]
RATE = 10.0
"""Requests a second of the replay's Poisson arrivals (about 7 sequences running at once)."""
WARM_TOKENS = 20
"""Prompt and output tokens of the untimed warm-up in each process."""


def _digest(h, *values) -> None:
    for v in values:
        h.update(repr(v).encode())


def replay(num_requests: int, prompt_len: int, output_len: int) -> dict:
    """The replay workload in this process (the code on PYTHONPATH): rounds, wall seconds, digest."""
    from cent_serve.bench.prompts import prompt_ids
    from cent_serve.bench.synthetic import FixedLengths, synthetic_trace
    from cent_serve.config.overrides import build_config
    from cent_serve.engine import Engine
    from cent_serve.request import RequestParams

    cfg = build_config(numerics="full")
    engine = Engine(cfg)
    pending = list(synthetic_trace(num_requests, RATE, lengths=FixedLengths(prompt_len, output_len)))[::-1]
    params = RequestParams(max_tokens=output_len, ignore_eos=True, logprobs=1)
    reqs, rounds = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    while pending or engine.has_work():  # run_in_process's loop: arrivals join at round boundaries
        horizon = engine.now_s
        if not engine.scheduler.num_running and pending:
            horizon = max(horizon, pending[-1].arrival_s)
        while pending and pending[-1].arrival_s <= horizon:
            tr = pending.pop()
            ids = prompt_ids(tr.num_prompt_tokens, (cfg.scheduler.seed, len(reqs)), engine.tokenizer.start_ids)
            reqs.append(engine.add_request(ids, params, arrival_s=tr.arrival_s))
        engine.step()
        rounds += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    h = hashlib.sha256()
    for r in reqs:
        _digest(h, r.output_ids, r.logprobs, r.token_times_s, r.finish_s, r.energy_j)
    _digest(h, engine.now_s, [d["energy_j"] for d in engine.device_stats()])
    engine.shutdown()
    return dict(rounds=rounds, wall_s=wall, cpu_s=cpu, digest=h.hexdigest()[:16])


def generate(prompt_len: int, output_len: int) -> dict:
    """The generate workload in this process: rounds, wall seconds, digest."""
    import numpy as np

    from cent_serve.bench.prompts import prompt_ids
    from cent_serve.config.overrides import build_config
    from cent_serve.executor.generate import generate_batch
    from cent_serve.executor.local import LocalExecutor

    cfg = build_config(numerics="full")
    ex = LocalExecutor(cfg)
    prompt = prompt_ids(prompt_len, (0, 0), [cfg.model.bos_token_id])
    t0, c0 = time.perf_counter(), time.process_time()
    out = generate_batch(ex, [prompt], output_len, prefill_chunk=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    h = hashlib.sha256()
    _digest(h, out.token_ids, out.token_times_s, [d["energy_j"] for d in ex.stats()["devices"]])
    for row in out.logits[0]:
        h.update(np.ascontiguousarray(row).tobytes())
    return dict(rounds=prompt_len + output_len - 1, wall_s=wall, cpu_s=cpu, digest=h.hexdigest()[:16])


def child(args: argparse.Namespace) -> None:
    """Run one workload (after the warm-up) and print its figures as JSON."""
    if args.child == "replay":
        replay(2, WARM_TOKENS, WARM_TOKENS)
        out = replay(args.num_requests, args.prompt_len, args.output_len)
    else:
        generate(WARM_TOKENS, WARM_TOKENS)
        out = generate(args.gen_prompt_len, args.gen_output_len)
    print(json.dumps(out))


def run(tree: Path, workload: str, args: argparse.Namespace) -> dict:
    """One workload run by the code in `tree`, in a fresh process."""
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
             ("num_requests", "prompt_len", "output_len", "gen_prompt_len", "gen_output_len")]
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", workload, *flags], cwd=tree,
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="a git commit to time in the same run (e.g. 2efdc35)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tree per workload, interleaved (default 1)")
    ap.add_argument("--workloads", default="replay,generate", help="comma-separated: replay, generate")
    ap.add_argument("--num-requests", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=1500)
    ap.add_argument("--output-len", type=int, default=50)
    ap.add_argument("--gen-prompt-len", type=int, default=1500)
    ap.add_argument("--gen-output-len", type=int, default=200)
    ap.add_argument("--child", choices=("replay", "generate"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    workloads = args.workloads.split(",")
    print(f"tiny, full numerics, 8 devices (pp 8); replay: {args.num_requests} x ({args.prompt_len} + "
          f"{args.output_len}) tokens at {RATE:g} req/s; generate: 1 x ({args.gen_prompt_len} + "
          f"{args.gen_output_len}) tokens")
    with worktree(args.against) if args.against else contextlib.nullcontext() as old:
        trees = ([(args.against[:8], old)] if old else []) + [("this checkout", REPO)]
        for workload in workloads:
            digests = set()
            for i in range(args.repeat):
                ms, cpu = {}, {}
                for name, tree in trees:
                    load = os.getloadavg()[0]
                    out = run(tree, workload, args)
                    ms[name], cpu[name] = (1e3 * out[k] / out["rounds"] for k in ("wall_s", "cpu_s"))
                    digests.add(out["digest"])
                    print(f"  {workload:<8} {name:<14} {ms[name]:7.3f} wall ms per round, {cpu[name]:7.3f} CPU ms "
                          f"({out['rounds']} rounds, {out['wall_s']:.1f} s; load {load:.2f} before) digest "
                          f"{out['digest']}", flush=True)
                if old:
                    new_, old_ = "this checkout", args.against[:8]
                    print(f"  {workload:<8} pair {i + 1}: new / old = {ms[new_] / ms[old_]:.3f} wall, "
                          f"{cpu[new_] / cpu[old_]:.3f} CPU")
            runs = args.repeat * (2 if old else 1)
            if runs > 1:  # one run compares nothing
                print(f"  {workload}: outputs {'identical' if len(digests) == 1 else 'DIFFERENT'} in all {runs} runs")


if __name__ == "__main__":
    main()
