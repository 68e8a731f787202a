"""`cent simulate`: the closed-form CENT model from the command line."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys

from cent_serve.cli_common import (add_config_args, config_from_args, given_overrides, numerics_asked,
                                   warn_closed_form_ignores, warn_file_closed_form_ignores)
from cent_serve.config import CentConfig, model_label
from cent_serve.paper import DEFAULT_SEQLEN, check_context, check_seqlen, check_workload, closed_form, emulate
from cent_serve.preflight import check_devices_hold
from cent_serve.timing.fabric import idle_lanes_note
from cent_serve.timing.energy import (GPU_BASELINES, PAPER_WORKLOAD, baseline_changes, paper_gpu_price, paper_workload,
                                      shares_text, tco_note, unpriced_device_changes)
from cent_serve.timing.mapping import counted, resolve_mapping
from cent_serve.timing.pipeline import PHASES, check_phases, mean_rate_note, period_s, phase_figures, token_figures
from cent_serve.timing.token import CONVENTIONS, SystemTimer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="CENT token latency, throughput, energy (closed form)",
                       description="Closed-form CENT model (docs/hardware_model.md): one context length with "
                                   "--seqlen, the paper's phases with --prompt/--decode, or every "
                                   "mapping with --sweep; --hardware gpu:KIND:N models GPUs instead (the "
                                   "--prompt/--decode phases). One workload, no trace: to replay a trace use "
                                   "cent bench run --trace FILE (cent bench compare for CENT vs GPUs).")
    add_config_args(p)
    p.add_argument("--seqlen", type=int, help=f"context length of one token (default {DEFAULT_SEQLEN})")
    p.add_argument("--prompt", type=int, help="prompt tokens of the paper's workload (e.g. 512)")
    p.add_argument("--decode", type=int, help="generated tokens of the paper's workload (e.g. 3584)")
    p.add_argument("--seqlen-gap", type=int, default=None,
                   help="with --prompt/--decode or --sweep: spacing of the context lengths a phase averages (a "
                        "phase shorter than it: its middle one; default 128)")
    p.add_argument("--batch", type=int, help="queries in flight, at most one per pipeline stage (default: one per "
                                             "stage, the paper's); the KV capacity is checked at this batch. On "
                                             "GPUs (--hardware gpu:KIND:N): the static batch, by default the "
                                             "largest that fits, at most 128")
    p.add_argument("--sweep", action="store_true", help="every mapping of the paper for --devices (with --batch B, "
                                                         "B queries in flight in each, as cent sweep --batch B)")
    p.add_argument("--emulate", action="store_true",
                   help="run the workload through the device and fabric actors (Ray) instead of the formulas")
    p.add_argument("--local", action="store_true", help="with --emulate: all devices in this process, no Ray")
    p.add_argument("--ray-address", help="with --emulate: join this Ray cluster (default: RAY_ADDRESS or local)")
    p.add_argument("--convention", choices=CONVENTIONS, default="cent",
                   help="cent: the pipeline the devices run (an uneven split's slowest stage sets the pace); "
                        "artifact: the CENT artifact's perfect pipeline. Both are printed when they differ")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def paper_defaults(args: argparse.Namespace) -> None:
    """`cent simulate --model llama2-7b` alone: 8 devices, pure pipeline, like the paper (not on GPUs)."""
    if args.devices is None and args.config is None and getattr(args, "hardware", None) in (None, "cent"):
        args.devices = {"llama2-7b": 8, "llama2-13b": 20, "llama2-70b": 32}.get(args.model or "", None)
        args.devices_defaulted = args.devices is not None  # not the user's: no warning names it on GPUs


def sweep_mappings(num_devices: int, num_layers: int) -> list[tuple[int, int]]:
    """(pp, tp) of every mapping the paper evaluates: pure pipeline and tp | devices, each once (with
    as many devices as blocks the pure pipeline is pp = devices x tp 1)."""
    out = [(num_layers, 1)]
    for tp in range(num_devices, 0, -1):
        if num_devices % tp == 0 and num_devices // tp <= num_layers and (num_devices // tp, tp) not in out:
            out.append((num_devices // tp, tp))
    return out


def refuse_one_mapping(args: argparse.Namespace, cfg: CentConfig | None, command: str, one: str) -> None:
    """`command` runs every mapping the paper evaluates for --devices: a mapping given (--pp, --tp, or
    parallel.pp / parallel.tp other than the pure pipeline's, by --set or a config file) would be
    dropped without a word, so it is refused; `one`: the command that runs one mapping. The flags are
    checked without `cfg` (before it is built: --tp 8 alone is no mapping at all)."""
    given = [k for k in ("pp", "tp") if getattr(args, k, None) is not None]
    if given:
        flags = " ".join(f"--{k} {getattr(args, k)}" for k in given)
        raise ValueError(f"{flags} is one mapping; {command} runs every mapping the paper evaluates for --devices: "
                         f"drop {' and '.join('--' + k for k in given)}, or run that mapping alone with {one}")
    if cfg is None:
        return
    p = cfg.parallel
    if p.pp not in (0, cfg.model.num_layers) or p.tp != 1:  # the config's own (the pure pipeline: every sweep's first)
        raise ValueError(f"parallel.pp={p.pp} parallel.tp={p.tp} is one mapping; {command} runs every mapping the "
                         f"paper evaluates for --devices: drop them (--set or the config file), or run that mapping "
                         f"alone with {one}")


def _with_mapping(cfg: CentConfig, pp: int, tp: int) -> CentConfig:
    return dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, pp=pp, tp=tp))


def run(args: argparse.Namespace) -> int:
    paper_defaults(args)
    if args.sweep:
        refuse_one_mapping(args, None, "cent simulate --sweep", "cent simulate without --sweep")
    cfg = config_from_args(args, closed_form=not args.emulate)
    if args.batch is not None and args.emulate:
        raise ValueError("--batch goes with the closed form (one mapping, or every mapping with --sweep): --emulate "
                         "runs the paper's batch (one query per pipeline stage); drop --batch or --emulate")
    if args.sweep and args.emulate:  # the sweep ran and --emulate went unread
        raise ValueError("--sweep and --emulate are two runs: every mapping in the closed form, or one mapping "
                         "through the devices: drop one of them")
    if args.local and not args.emulate:  # the GPUs', the sweep's and one mapping's closed form alike
        raise ValueError("--local goes with --emulate (the closed form needs no executor)")
    if args.ray_address and not args.emulate:  # it went unread
        raise ValueError(f"--ray-address {args.ray_address} goes with --emulate (the closed form runs on no cluster): "
                         "add --emulate or drop --ray-address")
    if cfg.on_gpus and not args.emulate:  # the GPU model sums every step of its phases (`emulate` refuses GPUs)
        if args.convention != "cent":
            raise ValueError(f"--convention {args.convention} is how CENT's closed form paces its pipeline: the GPU "
                             "model (--hardware gpu:...) has one pace; drop --convention")
        if args.seqlen_gap is not None:
            raise ValueError(f"--seqlen-gap {args.seqlen_gap} spaces the contexts CENT's closed form averages: the "
                             "GPU model (--hardware gpu:...) times every step of its phases; drop --seqlen-gap")
    if args.seqlen_gap is not None and args.prompt is None and not args.sweep:  # it went unread
        raise ValueError(f"--seqlen-gap {args.seqlen_gap} spaces the context lengths the phases of --prompt and "
                         f"--decode average: the one-token form (--seqlen, default {DEFAULT_SEQLEN}) times one "
                         "context; drop --seqlen-gap, or give --prompt and --decode")
    if args.seqlen_gap is None:
        args.seqlen_gap = 128
    if args.emulate:
        return _run_emulated(cfg, args)  # `emulate` refuses GPUs and checks the workload before it builds an executor
    # the GPUs', the sweep's and the closed form's workload (its phases: `closed_form` checks them)
    check_workload(args.prompt, args.decode, args.seqlen)
    workload = PAPER_WORKLOAD if args.prompt is None else (args.prompt, args.decode)  # the GPUs' and the sweep's
    # on GPUs too: their closed form reads no more of the scheduler than CENT's (`paper.closed_form`)
    gpus = cfg.on_gpus
    warn_closed_form_ignores([item.split("=", 1)[0].strip() for item in args.set], "--set", cfg.model.is_moe, gpus)
    warn_closed_form_ignores(["model.seed"] if args.seed is not None else [], "--seed", cfg.model.is_moe, gpus)
    warn_closed_form_ignores(numerics_asked(args, cfg), "--numerics", cfg.model.is_moe, gpus)
    warn_file_closed_form_ignores(args, cfg, cfg.model.is_moe, file_model=args.model is None, gpus=gpus)
    if cfg.on_gpus:
        return _run_gpu(cfg, args, *workload)
    if args.sweep:
        refuse_one_mapping(args, cfg, "cent simulate --sweep", "cent simulate without --sweep")
        return _run_sweep(cfg, args, *workload)
    timer = SystemTimer.from_config(cfg, args.convention)
    if args.prompt is not None:
        return _run_phases(cfg, args, timer)
    return _run_seqlen(cfg, args, timer)


def _record(cfg: CentConfig, args: argparse.Namespace, **workload) -> dict:
    """What --json adds so a result can be rerun: the workload and the whole config, overrides
    applied (`cent info` and a bench run's config.json write the same config)."""
    from cent_serve.config import config_to_dict

    return dict(workload=workload, config=config_to_dict(cfg))


def _print_overrides(args: argparse.Namespace) -> None:
    """The text output's line of what changed the config from the defaults (the --json `config` has
    all of it): `given: --config FILE --set device.clock_hz=4e9`, nothing when nothing was."""
    given = given_overrides(args)
    if given:
        print("given: " + given)


def _run_gpu(cfg: CentConfig, args: argparse.Namespace, prompt: int, decode: int) -> int:
    """`--hardware gpu:KIND:N`: a static batch as transformers runs it (the artifact's GPU
    measurements), per phase, from the GPU model (docs/gpu_model.md)."""
    from cent_serve.gpu.timing import GpuTimer

    if args.sweep:
        raise ValueError("--sweep runs CENT's mappings: drop it, or drop --hardware gpu:...")
    if args.seqlen is not None:
        raise ValueError("--seqlen is CENT's one-token form: give --prompt and --decode with --hardware gpu:...")
    f = closed_form(cfg, prompt, decode, batch=args.batch)
    batch = f["batch"]
    t = GpuTimer(cfg)
    k = t.mapping.replicas
    if args.json:
        print(json.dumps(dict(f, hardware=cfg.hardware, mapping=t.mapping.describe(), replicas=k,
                              attention_reads=cfg.gpu.attention_reads,
                              **_record(cfg, args, prompt=prompt, decode=decode, batch=batch)), indent=2))
        return 0
    replicas = f" in each of {t.mapping.replicas} replicas" if t.mapping.replicas > 1 else ""
    why = "--batch" if args.batch is not None else "the largest that fits, at most 128, unless --batch"
    print(f"{cfg.model.name} on {t.mapping.describe()}, prompt {prompt}, decode {decode}, a static batch of "
          f"{batch}{replicas} ({why}); attention reads "
          f"{cfg.gpu.attention_reads}" + (f"; throughput and power of all {k} replicas" if k > 1 else ""))
    _print_overrides(args)
    print(f"{'phase':<10}{'latency s':>11}{'tok/s':>11}{'mJ/token':>11}{'power W':>10}")
    for phase in (p for p in PHASES if p in f):
        r = f[phase]
        print(f"{phase:<10}{r['latency_s']:>11.3f}{r['throughput_tok_s']:>11.1f}{r['energy_per_token_mj']:>11.2f}"
              f"{r['power_w']:>10.1f}")
    return 0  # a kind whose constants are borrowed is warned of with the config (`warn_gpu_run`)


def _bottleneck(cent: SystemTimer, context: int, batch: int) -> str | None:
    """Under the cent convention, the station that sets the pace at `context` with `batch` queries
    in flight, worded for `_other`; None when a token's trip round the ring does."""
    period, name = period_s(cent, context, batch)
    if name is None:
        return None
    station, slow, trip = period / batch, period * 1e3, cent.token_s(context) * 1e3
    digits = next((d for d in range(3, 10) if f"{slow:.{d}g}" != f"{trip:.{d}g}"), 10)  # enough to tell them apart
    return (f"under the cent convention {name} is the bottleneck at {context} tokens: {_queries(batch)} x "
            f"{station * 1e3:.{digits}g} ms = {slow:.{digits}g} ms between a query's tokens, longer "
            f"than its trip round the pipeline ({trip:.{digits}g} ms), which is all the artifact charges")


def _other(cfg: CentConfig, args: argparse.Namespace, contexts: tuple[int, ...],
           batch: int) -> tuple[SystemTimer, str]:
    """The timer of the other convention, and why its figures differ at `contexts` (the shortest
    and longest a run sees) with `batch` queries in flight (energy always does)."""
    other = SystemTimer.from_config(cfg, "artifact" if args.convention == "cent" else "cent")
    mp, n = other.mapping, cfg.model.num_layers
    cent = other if other.convention == "cent" else SystemTimer.from_config(cfg, "cent")
    why = next(([b] for c in contexts if (b := _bottleneck(cent, c, batch))), [])
    if mp.mode == "tensor" and n % mp.pp:
        why.append(f"{n % mp.pp} of the {mp.pp} stages hold {-(-n // mp.pp)} blocks, where a perfect pipeline "
                   f"assumes {n / mp.pp:g}: under the cent convention the slowest stage sets the pace")
    if mp.mode == "tensor" and mp.tp == 1:
        why.append("the artifact charges tensor-parallel exchanges with tp = 1, where a block has no partner")
    why.append("the artifact charges the embedding as a vocab x D GEMV, not a row lookup")
    energy = ["leaves the embedding and LM head out"]
    if mp.mode == "pipeline" and mp.tb > 1:
        steps = -(-n // mp.tb)
        if steps * mp.tb != n:
            energy.append(f"counts {steps} device steps of {mp.tb} blocks ({steps * mp.tb} blocks for {n})")
        energy.append("writes one block's V cache and runs one block's accelerator work per device step")
    if mp.mode == "tensor" and mp.tp > 1:
        energy.append("charges every tensor-parallel partner the accelerator work")
    energy.append("counts the links' traffic as its own element count in bits")
    why.append("energy: the artifact " + ", ".join(energy) + " (docs/hardware_model.md section 8)")
    return other, "; ".join(why)


POWER_NOTE = ("power W: the artifact's and the paper's, a token's energy over its blocks' PIM time (switch, "
              "accelerator and host time left out); avg W: energy per token x throughput, the system's average draw")


def _run_phases(cfg: CentConfig, args: argparse.Namespace, timer: SystemTimer) -> int:
    mp = timer.mapping
    total = args.prompt + args.decode
    phases = closed_form(cfg, args.prompt, args.decode, gap=args.seqlen_gap, batch=args.batch,
                         convention=args.convention)
    batch = phases.pop("batch")
    other, why = _other(cfg, args, (args.prompt, total), batch)
    alt = dict(phase_figures(other, args.prompt, args.decode, args.seqlen_gap, batch)["end2end"], phase="end2end")
    if args.json:  # the text shows no tokens per dollar
        _tco_line(cfg, "tokens_per_dollar_ratio" in phases["end2end"], json_out=True)
        print(json.dumps(dict(phases, convention=args.convention,
                              other_convention=dict(alt, convention=other.convention, why=why),
                              **_record(cfg, args, prompt=args.prompt, decode=args.decode,
                                        seqlen_gap=args.seqlen_gap, batch=batch)),
                         indent=2))
        return 0
    print(f"{model_label(cfg.model)} on {counted(mp.num_devices, 'device')} ({mp.describe()}), "
          f"prompt {args.prompt}, decode {args.decode}, {_queries(batch)} in flight"
          + (f" in each of {mp.replicas} replicas (throughput and power: all of them)" if mp.replicas > 1 else "")
          + _idle(cfg, mp))
    _print_overrides(args)
    paper = paper_workload(cfg.model, args.prompt, args.decode, cfg.device)
    print(f"{'phase':<10}{'latency s':>11}{'tok/s':>11}{'mJ/token':>11}{'power W':>10}{'avg W':>10}"
          + (f"{'vs GPU':>8}" if paper else ""))
    for phase in PHASES:
        r = phases.get(phase)
        if r:
            ratio = r.get("throughput_ratio")
            print(f"{phase:<10}{r['latency_s']:>11.3f}{r['throughput_tok_s']:>11.1f}"
                  f"{r['energy_per_token_mj']:>11.2f}{r['power_w']:>10.1f}{r['avg_power_w']:>10.1f}"
                  f"{'' if ratio is None else f'{ratio:>7.2f}x'}")
    print(POWER_NOTE)
    note = mean_rate_note(phases, args.prompt, args.decode, batch * mp.replicas)
    if note:
        print(note)
    print(f"energy by term, end2end: {shares_text(phases['end2end']['energy_breakdown_mj'])} (--json: every term "
          "in mJ a token, each phase)")
    if not paper:
        _no_ratio_note(cfg.model, args.prompt, args.decode, cfg.device)
    print(f"the {other.convention} convention (--convention {other.convention}): end2end {alt['latency_s']:.3f} s, "
          f"{alt['throughput_tok_s']:.1f} tok/s, {alt['energy_per_token_mj']:.2f} mJ/token, {alt['power_w']:.1f} W. "
          f"Why they differ: {why}")
    return 0


def _run_seqlen(cfg: CentConfig, args: argparse.Namespace, timer: SystemTimer) -> int:
    mp = timer.mapping
    seqlen = DEFAULT_SEQLEN if args.seqlen is None else args.seqlen
    check_seqlen(cfg, seqlen)
    batch = mp.lanes if args.batch is None else args.batch
    token_figures(timer, seqlen, batch)  # a --batch out of range is refused before the capacity check
    check_devices_hold(cfg, seqlen, args.batch, batch_flag=True, context_flag="--seqlen N")  # None: one a stage
    fig = token_figures(timer, seqlen, batch).as_dict()
    other, why = _other(cfg, args, (seqlen,), batch)
    alt = token_figures(other, seqlen, batch)
    fig["other_convention"] = dict(convention=other.convention, token_latency_ms=alt.token_latency_ms,
                                   throughput_tok_s=alt.throughput_tok_s, token_energy_mj=alt.token_energy_mj,
                                   power_w=alt.power_w, avg_power_w=alt.avg_power_w,
                                   energy_breakdown_mj=alt.energy_breakdown_mj, why=why)
    if args.json:
        print(json.dumps(dict(fig, **_record(cfg, args, seqlen=seqlen, batch=batch)), indent=2))
        return 0
    print(f"{model_label(cfg.model)} on {counted(mp.num_devices, 'device')}: {mp.describe()}; context {seqlen}, {_queries(batch)} in flight"
          + (f" in each of {mp.replicas} replicas (throughput and power: all of them)" if mp.replicas > 1 else "")
          + _idle(cfg, mp))
    _print_overrides(args)
    for key in ("token_latency_ms", "throughput_tok_s", "block_pim_ms", "block_cxl_ms", "block_acc_ms",
                "embed_lookup_ms", "lm_head_ms",  # apart: --json's embedding_ms (the artifact's name) is both
                "token_energy_mj", "power_w", "avg_power_w", "devices_used", "channels_per_block"):
        print(f"  {key:<20}{fig[key]:>14.6g}")
    if fig["bottleneck_station"]:
        print(f"  bottleneck          {fig['bottleneck_station']}: it sets the pace, not a token's trip round the pipeline")
    print(f"  ({POWER_NOTE})")
    total = sum(fig["breakdown_cycles"].values())
    print("  block PIM cycles by operation:")
    for op, cyc in fig["breakdown_cycles"].items():
        print(f"    {op:<9}{cyc:>12.0f}  {100 * cyc / total:5.1f}%")
    moe = fig.get("moe")
    if moe:
        print(f"  mixture of experts, one block for one token: router {moe['router_ms'] * 1e3:.2f} us, "
              f"experts {moe['experts_ms'] * 1e3:.2f} us ({moe['expected_busiest_load']:.3g} x "
              f"{moe['one_expert_ms'] * 1e3:.2f} us on the busiest banks), combine {moe['combine_ms'] * 1e3:.2f} us; "
              f"energy: router {moe['router_mj'] * 1e3:.2f} uJ, experts {moe['experts_mj'] * 1e3:.2f} uJ")
        if "shared_expert_ms" in moe:
            print(f"  shared expert, every token: {moe['shared_expert_ms'] * 1e3:.2f} us, "
                  f"{moe['shared_expert_mj'] * 1e3:.2f} uJ a block")
    print("  token energy by term (mJ, the whole token; --json for all):")
    for term, mj in sorted(fig["energy_breakdown_mj"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {term:<18}{mj:>10.3f}  {100 * mj / fig['token_energy_mj']:5.1f}%")
    alt = fig["other_convention"]
    print(f"the {alt['convention']} convention (--convention {alt['convention']}): {alt['token_latency_ms']:.4f} "
          f"ms per token, {alt['throughput_tok_s']:.1f} tok/s, {alt['token_energy_mj']:.2f} mJ per token, "
          f"{alt['power_w']:.1f} W. Why they differ: {why}")
    return 0


def _run_sweep(cfg: CentConfig, args: argparse.Namespace, prompt: int, decode: int) -> int:
    """Every mapping of `sweep_mappings` in the closed form: a table, or with --json an object as
    `_run_phases`' (`convention`, `workload`, `config`, the base every point sets parallel.pp / tp of)
    whose `points` are the rows, one a mapping, an `error` where it cannot run. `--batch B`: B queries in
    flight in each replica of every mapping, a row each as `cent simulate --pp P --tp T --batch B` (and
    `cent sweep --batch B`) computes it; a mapping of fewer stages than B is that row's error."""
    if args.seqlen is not None:
        raise ValueError("--seqlen is the one-token form; --sweep runs the paper's phases: give --prompt and "
                         f"--decode, or neither ({PAPER_WORKLOAD[0]} + {PAPER_WORKLOAD[1]})")
    check_phases(prompt, decode, args.seqlen_gap)
    check_context(cfg, prompt, decode)  # every mapping's: refused once, not as a row each
    rows = []
    for pp, tp in sweep_mappings(cfg.parallel.num_devices, cfg.model.num_layers):
        c = _with_mapping(cfg, pp, tp)
        try:
            # a smaller --batch is a fix to name only where the user gave one (the paper's batch is one a stage)
            e2e = closed_form(c, prompt, decode, gap=args.seqlen_gap, convention=args.convention, batch=args.batch,
                              batch_flag=args.batch is not None)["end2end"]
        except ValueError as exc:
            rows.append(dict(pp=pp, tp=tp, error=str(exc)))
            continue
        mp = resolve_mapping(c.model, c.parallel, c.device)
        rows.append(dict(pp=pp, tp=tp, mode=mp.mode, parallelism=mp.parallelism, channels_per_block=mp.channels_per_block,
                         devices_used=mp.devices_used, **e2e))
    has_ratio = any("tokens_per_dollar_ratio" in r for r in rows)
    if args.json:
        _tco_line(cfg, has_ratio, json_out=True)
        batch = {} if args.batch is None else dict(batch=args.batch)
        print(json.dumps(dict(convention=args.convention, points=rows,
                              **_record(cfg, args, prompt=prompt, decode=decode, seqlen_gap=args.seqlen_gap, **batch)),
                         indent=2))
        return 0
    flight = "" if args.batch is None else f", {_queries(args.batch)} in flight in each replica"
    print(f"{model_label(cfg.model)} on {counted(cfg.parallel.num_devices, 'device')}, prompt {prompt} + decode {decode}"
          f"{flight} (end-to-end averages, {args.convention} convention)")
    _print_overrides(args)
    paper = paper_workload(cfg.model, prompt, decode, cfg.device)
    # a column is as wide as its default, or one more than its widest figure: at 1,024 devices tp
    # 1024 and 153,581.38 mJ a token filled theirs and ran into the column before
    fits = [r for r in rows if "error" not in r]
    cells = [(str(r['pp']), str(r['tp']), str(r['channels_per_block']), str(r['devices_used']),
              f"{r['throughput_tok_s']:.1f}", f"{r['token_latency_ms']:.3f}", f"{r['energy_per_token_mj']:.2f}",
              f"{r['tokens_per_joule']:.2f}") for r in fits]
    w = [max([base] + [len(c[k]) + 1 for c in cells])
         for k, base in enumerate((4, 4, 5, 6, 10, 9, 9, 8))]
    print(f"{'pp':>{w[0]}}{'tp':>{w[1]}}{'cpb':>{w[2]}}{'used':>{w[3]}}{'tok/s':>{w[4]}}{'ms/tok':>{w[5]}}"
          f"{'mJ/tok':>{w[6]}}{'tok/J':>{w[7]}}" + (f"{'vs GPU':>8}{'tok/$ vs GPU':>14}" if paper else ""))
    fit_cells = iter(cells)  # the cells of the rows that fit, in their order
    for r in rows:
        if "error" in r:
            print(f"{r['pp']:>{w[0]}}{r['tp']:>{w[1]}}  could not run: {r['error']}")
            continue
        ratio = r.get("throughput_ratio")
        tpd = r.get("tokens_per_dollar_ratio")
        print("".join(f"{c:>{k}}" for c, k in zip(next(fit_cells), w))
              + f"{'' if ratio is None else f' {ratio:>6.2f}x'}"
              + f"{'' if tpd is None else f' {tpd:>12.2f}x'}")
    base = rows and rows[0].get("gpu_throughput_tok_s")
    print("cpb: channels a block's weights span on each of its devices; used: devices one copy of the model takes")
    if base:
        g = cfg.gpu
        price = ("" if g.tco_per_gpu is None
                 else f", priced at gpu.tco_per_gpu={g.tco_per_gpu:g} TCO units each"
                 if paper_gpu_price(g.kind, g.tco_per_gpu) is not None
                 else f", priced at an A100's 1.76 / 4 TCO units each (gpu.tco_per_gpu={g.tco_per_gpu:g} prices "
                      f"gpu.kind={g.kind}, not these)")
        print(f"GPU baseline: {rows[0]['gpus']} x A100-80GB, {base:.0f} tok/s end-to-end{price} "
              "(docs/hardware_model.md section 9)")
        _tco_line(cfg, has_ratio, json_out=False)
    elif not paper:
        _no_ratio_note(cfg.model, prompt, decode, cfg.device)
    if fits:  # cent sweep's energy_<term>_mj columns, as a table prints the split (`shares_text`)
        print("energy by term, end2end (--json: every term in mJ a token, each point's energy_breakdown_mj):")
        pp_w, tp_w = (max(len(str(r[k])) for r in fits) for k in ("pp", "tp"))
        for r in fits:
            print(f"pp {r['pp']:<{pp_w}} tp {r['tp']:<{tp_w}}  {shares_text(r['energy_breakdown_mj'])}")
    return 0


def _tco_line(cfg: CentConfig, has_ratio: bool, json_out: bool) -> None:
    """One line when the output has tokens per dollar against GPUs (`has_ratio`) for a device whose
    price, channels or capacity were changed but whose TCO was not (`unpriced_device_changes`): printed
    under the table, or with `json_out` a warning on stderr (stdout is the JSON)."""
    import logging

    changes = unpriced_device_changes(cfg.device)
    if has_ratio and changes:
        if json_out:
            logging.getLogger("cent").warning(tco_note(changes))
        else:
            print(tco_note(changes))


def _no_ratio_note(model, prompt: int, decode: int, dev=None) -> None:
    """Why a model the paper's GPUs ran gets no ratio to their figures: another workload, or a
    field changed that makes it another model, or 8-bit storage (`baseline_changes`)."""
    base = GPU_BASELINES.get(model.name)
    if base is None:
        return
    changes = baseline_changes(model, dev)
    why = (f"they are for {model.name} as published (bfloat16), and {', '.join(changes)} makes another model"
           if changes else
           f"they are for {PAPER_WORKLOAD[0]} + {PAPER_WORKLOAD[1]} tokens")
    print(f"no ratio to the paper's GPU figures: {why}; for this on GPUs run the same with "
          f"--hardware gpu:a100-80gb:{base['gpus']}")


def _run_emulated(cfg: CentConfig, args: argparse.Namespace) -> int:
    """Paper mode through the actors: the same JSON as the closed form, plus wall figures."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.ray_address:
        cfg.server.ray_address = args.ray_address
    if args.convention != "cent":
        raise ValueError("--convention artifact goes with the closed form: the emulated devices run the pipeline "
                         "as it is (the cent convention); drop --emulate to see the artifact's figures")
    cfg.executor = "local" if args.local else "ray"
    # Ray prints its own warnings to stdout from background threads: keep them off the JSON
    noise = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with noise:
        out = emulate(cfg, args.prompt, args.decode, seqlen=args.seqlen, gap=args.seqlen_gap)
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    context = args.prompt + args.decode if args.prompt is not None else (args.seqlen or DEFAULT_SEQLEN)
    if args.json:
        workload = (dict(prompt=args.prompt, decode=args.decode, seqlen_gap=args.seqlen_gap) if args.prompt is not None
                    else dict(seqlen=context))
        print(json.dumps(dict(out, **_record(cfg, args, **workload)), indent=2))
        return 0
    print(f"emulated {model_label(cfg.model)} on {counted(mp.num_devices, 'device')} ({mp.describe()}), "
          f"{out['executor']} executor, numerics {cfg.resolved_numerics}"
          + (f"; one of the {mp.replicas} replicas emulated, throughput of all of them" if mp.replicas > 1 else "")
          + _idle(cfg, mp))
    _print_overrides(args)
    rows = [(p, out[p]) for p in PHASES if p in out] if args.prompt is not None else [("token", out)]
    print(f"{'':<10}{'tok/s':>11}{'closed form':>13}{'ms/token':>10}{'closed form':>13}")
    for name, r in rows:
        c = r["closed_form"]
        print(f"{name:<10}{r['throughput_tok_s']:>11.1f}{c['throughput_tok_s']:>13.1f}"
              f"{r['token_latency_ms']:>10.3f}{c['token_latency_ms']:>13.3f}")
    name, r = ("token", out) if args.prompt is None else ("end2end", out["end2end"])
    mine, closed = r["energy_breakdown_mj"], r["closed_form"]["energy_breakdown_mj"]
    apart = max(abs(mine[t] - closed[t]) for t in closed) / sum(closed.values())
    print(f"energy by term, {name}, the devices' counts: {shares_text(mine)}; each term within {100 * apart:.2g}% of "
          "the token's energy of the closed form's (--json: every term in mJ a token, both)")
    print(f"wall {out['wall_s']:.2f} s, {out['sim_tokens_per_wall_s']:.0f} simulated tokens per wall second")
    return 0


def _idle(cfg: CentConfig, mp) -> str:
    """The header's note of devices no replica uses that narrow the others' switch ports."""
    return idle_lanes_note(cfg.fabric, mp.num_devices, mp.devices_used * mp.replicas)


def _queries(n: int) -> str:
    return f"{n} quer{'y' if n == 1 else 'ies'}"
