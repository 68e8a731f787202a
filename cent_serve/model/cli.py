"""`cent info` and `cent generate`: the resolved config and the reference model."""
from __future__ import annotations

import argparse
import json
import sys

from cent_serve.cli_common import add_config_args, config_from_args
from cent_serve.config import config_to_dict


DEFAULT_PROMPT = "Hello"
"""cent generate's prompt without --prompt or --prompt-ids."""


def register(sub: argparse._SubParsersAction) -> None:
    info_help = ("the resolved config, parameters, the device, KV room and whether it fits; --presets, --describe: "
                 "every preset, every field")
    p = sub.add_parser("info", help=info_help, description=info_help[0].upper() + info_help[1:] + ".")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--presets", action="store_true",
                   help="list every model preset: family, size, context, and the fewest devices that hold it")
    p.add_argument("--describe", action="store_true",
                   help="print the configuration reference (every field, its type, default and meaning, "
                        "and the model presets) as Markdown: docs/config.md is this output")
    p.set_defaults(func=run_info)

    g = sub.add_parser("generate", help="generate with the single-process reference model",
                       description="Generate tokens with the single-process numpy reference model (real weights "
                                   "or a preset's seeded random ones; no devices, nothing timed).")
    add_config_args(g, served=False)
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompt", help=f"prompt text (tokenized with the model's tokenizer; default {DEFAULT_PROMPT!r})")
    src.add_argument("--prompt-ids", help="prompt token ids, comma separated: 1,2,3")
    g.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (default 16)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: the most likely tokens whose probabilities sum to this, in (0, 1] "
                        "(default 1: all)")
    g.add_argument("--top-k", type=int, default=-1, help="the k most likely tokens (default -1 or 0: all)")
    g.add_argument("--sample-seed", type=int, default=None, help="sampling seed (default: 0)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past </s>")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=run_generate)


def run_info(args: argparse.Namespace) -> int:
    if args.describe:
        from cent_serve.config_doc import describe_config
        sys.stdout.write(describe_config())
        return 0
    if args.presets:
        from cent_serve.config_doc import preset_rows
        dev = config_from_args(args).device  # the fewest devices of the device --set / --config describe
        rows = preset_rows(dev)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        # the name and family columns as wide as their longest entry plus a space (a preset's name
        # overran a fixed 14 before); each row's figures end under their heading
        name_w = max(len("preset"), *(len(r["preset"]) for r in rows)) + 1
        family_w = max(len("family"), *(len(r["model_type"]) for r in rows)) + 1
        print(f"{'preset':<{name_w}}{'family':<{family_w}}{'params':>9}{'context':>9}{'weights':>11}{'KV/token':>10}"
              f"{'devices, batch @4k':>20}{'devices, 1 query @context':>27}")
        for r in rows:
            print(f"{r['preset']:<{name_w}}{r['model_type']:<{family_w}}{r['params_b']:>8.2f}B{r['context']:>9}"
                  f"{r['weights_gib']:>7.1f} GiB{r['kv_kib_per_token']:>6g} KiB{r['devices_4k'] or '-':>20}"
                  f"{r['devices_context'] or '>1024':>27}")
        print(f"devices, batch @4k: the fewest CENT devices ({dev.capacity_bytes / 2**30:g} GiB) in the paper's "
              "pipeline (a stage per block) holding the weights and the paper's batch, a 4,096-token query per "
              "stage (80 queries for llama2-70b); devices, 1 query @context: the weights and a single query of the "
              "whole context. Timing-only (numerics off) above 1 GiB of float32 weights (about 268M parameters) by "
              "default." + (f" weights, KV/token: as the devices store them, {dev.bytes_per_element} B an element "
                            "(device.bytes_per_element)." if dev.bytes_per_element != 2 else "")
              + (f" KV/token: {dev.kv_element_bytes} B an element (device.kv_bytes_per_element)."
                 if dev.kv_element_bytes != dev.bytes_per_element else ""))
        return 0
    from cent_serve.preflight import check_runnable

    cfg = config_from_args(args)
    m = cfg.model
    executor, cfg.executor = cfg.executor, "ray"
    try:  # the check `cent serve` makes before it starts (Ray, its default executor)
        check_runnable(cfg)
        refusal = None
    except ValueError as exc:
        refusal = str(exc)
    finally:  # the config printed is the one given (executor: local unless set)
        cfg.executor = executor
    experts = None
    if m.is_moe and not cfg.on_gpus:
        from cent_serve.timing.mapping import expert_placement, resolve_mapping
        try:
            experts = expert_placement(m, resolve_mapping(m, cfg.parallel, cfg.device), cfg.device.bytes_per_element)
        except ValueError:  # the mapping itself cannot be made: the refusal says why
            experts = None
    paper_batch = None
    if refusal is None and not cfg.on_gpus:  # cent simulate's question: the paper's batch at a 4096 context
        from cent_serve.preflight import check_devices_hold
        from cent_serve.timing.mapping import resolve_mapping

        lanes, context = resolve_mapping(m, cfg.parallel, cfg.device).lanes, 4096
        try:
            if m.max_seq_len < context:  # cent simulate's default --seqlen refuses it too
                raise ValueError(f"does not fit: the model's context is {m.max_seq_len} (model.max_seq_len), "
                                 f"under {context}: give cent simulate --seqlen {m.max_seq_len} or less")
            # one query a stage, `lanes`, at cent simulate's --seqlen (not model.max_seq_len, which
            # does not move this 4096-token context: the fix names the flag that does)
            check_devices_hold(cfg, context, None, context_flag="cent simulate --seqlen N")
            paper_batch = dict(batch=lanes, context=context, fits=True, why=None)
        except ValueError as exc:
            paper_batch = dict(batch=lanes, context=context, fits=False, why=str(exc))
    kv_room = kv_stored = weights_stored = None
    if refusal is None and not cfg.on_gpus:  # what the scheduler admits against: each replica's KV blocks
        from cent_serve.scheduler import kv_room as replica_kv
        from cent_serve.timing.mapping import device_kv_bytes_per_token, device_weight_bytes, resolve_mapping

        mp = resolve_mapping(m, cfg.parallel, cfg.device)
        room = replica_kv(cfg, mp).capped(cfg.scheduler.num_kv_blocks_override)
        kv_room = dict(blocks=room.num_blocks, block_tokens=cfg.scheduler.kv_block_tokens,
                       tokens=room.num_blocks * cfg.scheduler.kv_block_tokens, replicas=mp.replicas)
        if room.is_hybrid:  # a windowed block keeps a sequence's window only (`cent_serve.kv_room`)
            kv_room.update(window_tokens=room.cap, sequences_at_context=room.most_sequences(m.max_seq_len))
        # what a token's K and V take on a replica's devices (KV heads fewer than tp are held by several)
        kv_stored = sum(device_kv_bytes_per_token(m, mp, d, cfg.device.kv_element_bytes)
                        for d in {d for s in mp.stages for d in s.device_ids})
        # what a replica's devices hold of the weights (a MoE's router on each tp device, a tied table on the
        # first and the last stage: copies_reason)
        weights_stored = sum(device_weight_bytes(m, mp, d, cfg.device.bytes_per_element)
                             for d in {d for s in mp.stages for d in s.device_ids})
    dev = cfg.device  # the device the config makes (CENT only): what a --set device.* changed
    device = None if cfg.on_gpus else dict(capacity_bytes=dev.capacity_bytes,
                                           peak_pim_bytes_per_s=dev.peak_pim_bytes_per_s,
                                           peak_macs_per_s=dev.peak_macs_per_s)
    out = {
        "config": config_to_dict(cfg),
        "device": device,
        "experts": experts,
        "kv_room": kv_room,
        "paper_batch": paper_batch,
        "param_count": m.param_count(),
        "weight_bytes": m.weight_bytes(),
        "kv_bytes_per_token": m.kv_bytes_per_token(),
        "kv_stored_bytes_per_token": kv_stored,  # on a replica's devices, replicated KV heads included
        "weights_stored_bytes": weights_stored,  # on a replica's devices, tp copies included
        "numerics": cfg.resolved_numerics,
        "runnable": refusal is None,
        "refusal": refusal,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_info(cfg, out)
    if refusal is not None:  # the same message `cent serve` would refuse with, and its exit code
        raise ValueError(refusal)
    return 0


def copies_reason(m, pp: int, tp: int) -> str:
    """Why a replica's devices store more weight bytes than the model has (`device_weight_bytes`), in
    the words `cent info` prints: a mixture of experts' router (and a shared expert's gate) whole on
    each of a stage's `tp` devices, and a tied embedding table held twice when the pipeline has `pp` > 1 stages
    (on the first stage for the lookup, on the last as the LM head). "" when neither applies."""
    reasons = []
    if m.is_moe and tp > 1:
        reasons.append(f"the router whole on each of a stage's {tp} devices")
    if m.tie_word_embeddings and pp > 1:
        reasons.append("the tied embedding table on the first stage and again on the last as its LM head")
    return "; ".join(reasons)


def _print_info(cfg, out: dict) -> None:
    m = cfg.model
    width = f"E={m.num_experts} k={m.num_experts_per_tok} F_e={m.expert_size}" if m.is_moe else f"F={m.intermediate_size}"
    print(f"model        {m.name}: D={m.hidden_size} {width} N={m.num_layers} "
          f"H={m.num_heads} Hkv={m.num_kv_heads} head_dim={m.head_dim} vocab={m.vocab_size}")
    active = f"; {m.param_count(active=True):,} active a token" if m.is_moe else ""
    # the hardware's element size sizes what the devices hold; model.weight_dtype only the host copy of
    # full numerics (docs/hardware_model.md section 1)
    size = 2 if cfg.on_gpus else cfg.device.bytes_per_element
    where = "on the GPUs as bfloat16" if cfg.on_gpus else f"on the devices at device.bytes_per_element={size}"
    # the reference model computes in float32 whatever the checkpoint stores (bfloat16, float16)
    host = f"; full numerics' host copy {m.param_count() * 4 / 2**30:.3f} GiB of float32" \
        if cfg.resolved_numerics == "full" else ""
    stored = out.get("weights_stored_bytes")
    copies = (f"; with its copies {stored / 2**30:.3f} GiB stored on a replica's devices "
              f"({copies_reason(m, cfg.parallel.pp or m.num_layers, cfg.parallel.tp)})") \
        if stored and stored > 1.01 * m.param_count() * size else ""  # (norms and the like: within 1%)
    print(f"parameters   {m.param_count():,} ({m.param_count() * size / 2**30:.3f} GiB {where}{copies}{host}){active}")
    kv_size = 2 if cfg.on_gpus else cfg.device.kv_element_bytes  # the KV's own type (device.kv_bytes_per_element)
    logical = m.kv_bytes_per_token() // 2 * kv_size
    stored = out.get("kv_stored_bytes_per_token") or logical
    kv_where = where.split(' at ')[0] + ("" if kv_size == size else
                                         f" at device.kv_bytes_per_element={kv_size} (weights at {size})")
    if stored == logical:
        print(f"kv cache     {logical:,} bytes per token {kv_where}")
    else:  # KV heads fewer than tp are replicated: the KV room below is of what is stored, so say both
        tp, heads = cfg.parallel.tp, m.num_kv_heads
        held = f"each held by {tp // heads} devices" if tp % heads == 0 else "some held by several devices"
        print(f"kv cache     {logical:,} bytes per token of the model, {stored:,} stored on the devices "
              f"(tp={tp} over {heads} KV heads: {held})")
    if cfg.on_gpus:  # the modelled GPUs, not the CENT mapping the parallel section would make
        from cent_serve.gpu.timing import GpuTimer
        k = cfg.gpu.spec  # its figures, as the device line gives a CENT device's
        borrowed = "" if k.calibrated else "; a100-80gb's"
        if cfg.gpu.is_custom:  # the constants gpu.custom gives are its own, the host's times set too; the rest borrowed
            lent = [{"mem_efficiency": "the HBM's", "compute_efficiency": "the peak's"}[key]
                    for key in cfg.gpu.custom.borrowed_efficiencies]
            these = "these" if len(lent) == 2 else "".join(lent)
            host_times = cfg.gpu.borrowed_host_times
            host = ("the host's times" if len(host_times) == 2 else
                    "".join(f"the host's gpu.{key}" for key in host_times))
            if these and host:
                lent_text = f"{these} and {host} are a100-80gb's"
            elif these:
                lent_text = f"{these} {'are' if len(lent) == 2 else 'is'} a100-80gb's, the host's times as given"
            else:
                lent_text = f"these as given, {host} a100-80gb's" if host else "these and the host's times as given"
            borrowed = f"; a kind of one's own (gpu.custom): {lent_text}, not validated"
        share = (" (293 / 400 of the TDP, the A100 SXM4's share)"
                 if cfg.gpu.is_custom and not cfg.gpu.custom.serving_power_w else "")
        print(f"gpu          {k.describe()}; {k.board_power_w * k.power_fraction:.0f} W serving{share}; efficiency "
              f"{k.mem_efficiency:g} of HBM, {k.compute_efficiency:g} of the peak{borrowed}")
        try:
            gt = GpuTimer(cfg)
            fit = gt.kv_room(cfg.scheduler.kv_block_tokens).capped(cfg.scheduler.num_kv_blocks_override)
            # the tokens count each in every layer: with a window on some layers a replica holds more of
            # the sequences' tokens than that (`cent_serve.kv_room`), so it is said, and what fits
            each = " of every layer's KV" if fit.is_hybrid else ""
            room = f"; KV room {gt.kv_tokens():,} tokens{each} a replica" if out["runnable"] else ""
            if room and fit.is_hybrid:  # a windowed layer keeps a sequence's window
                room += (f" (a windowed layer keeps {cfg.kv_tokens_cap:,} tokens of a sequence: "
                         f"{fit.most_sequences(m.max_seq_len):,} of the whole context fit)")
            print(f"hardware     {gt.mapping.describe()}{room}; numerics={cfg.resolved_numerics}")
        except ValueError:  # the layout itself cannot be made: the refusal says why
            print(f"hardware     {cfg.gpu.count} x {cfg.gpu.kind}; numerics={cfg.resolved_numerics}")
    else:
        d = cfg.device
        print(f"device       {d.capacity_bytes / 2**30:g} GiB: {d.num_channels} channels x {d.banks_per_channel} banks "
              f"x {d.rows_per_bank:,} rows x {d.row_elements:,} elements of {d.bytes_per_element} B"
              + (f" (KV: {d.kv_row_elements:,} of {d.kv_element_bytes} B)" if d.kv_bytes_per_element else "") + "; PIM peak "
              f"{d.peak_pim_bytes_per_s / 1e12:.3g} TB/s of weights, {d.peak_macs_per_s / 1e12:.3g} TMAC/s (a column "
              f"command every {d.column_cycles:g} cycles at {d.clock_hz / 1e9:g} GHz)")
        room = out.get("kv_room")
        hybrid = bool(room and room.get("window_tokens"))  # the tokens count each in every block: say so
        window = (f"; a windowed block keeps {room['window_tokens']:,} tokens of a sequence: "
                  f"{room['sequences_at_context']:,} of the whole context fit") if hybrid else ""
        each = " of every block's KV" if hybrid else ""
        replicas = f", {room['replicas']} replicas" if room and room["replicas"] > 1 else ""
        room = (f"; KV room {room['tokens']:,} tokens{each} a replica ({room['blocks']:,} blocks of "
                f"{room['block_tokens']}{window}){replicas}") if room else ""
        print(f"mapping      devices={cfg.parallel.num_devices} pp={cfg.parallel.pp or m.num_layers} "
              f"tp={cfg.parallel.tp}{room}; numerics={cfg.resolved_numerics}")
    ex = out.get("experts")
    if m.is_moe:
        print(f"experts      {m.num_experts} per block, top {m.num_experts_per_tok}, width {m.expert_size} "
              f"({m.expert_param_count() * 2 / 2**20:.1f} MiB each); a token reads "
              f"{m.active_block_param_count() / m.block_param_count():.1%} of a block's weights")
    if ex:
        print(f"placement    {ex['describe']}")
    print(f"runs         {'yes' if out['runnable'] else 'no: ' + out['refusal']}"
          + (" (cent serve: the weights and one sequence of the whole context fit)" if out["runnable"] else ""))
    pb = out.get("paper_batch")
    if pb:  # what cent simulate runs: a query per pipeline stage
        print(f"paper batch  {pb['batch']} queries of {pb['context']} tokens (cent simulate's): "
              + ("fit" if pb["fits"] else "do not fit: " + pb["why"].split("does not fit: ", 1)[-1]))
    # as given, so it reruns as --config on other devices: pp 0 and numerics auto are resolved above
    unresolved = [why for given, why in ((cfg.parallel.pp == 0, "pp 0: one stage a block"),
                                         (cfg.numerics == "auto", "numerics auto: as resolved above")) if given]
    print(f"config       as given{' (' + '; '.join(unresolved) + ')' if unresolved else ''}:")
    print(json.dumps(out["config"], indent=2))


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r} is invalid: write comma-separated integers, e.g. 1,2,3") from None


def run_generate(args: argparse.Namespace) -> int:
    from cent_serve.model import LlamaModel, SamplingParams, load_tokenizer
    from cent_serve.model.generate import generate

    from cent_serve.config import checkpoint_has_weights
    from cent_serve.config.model import rope_numerics_refusal
    from cent_serve.preflight import check_reference_fits

    cfg = config_from_args(args)  # checked as resolved: the flags, --set and a --config file alike
    if cfg.numerics == "off":
        raise ValueError("numerics='off': cent generate is the reference model's real math and has nothing to do "
                         "without it; leave numerics at full or auto (cent simulate gives the timing)")
    if cfg.on_gpus:
        raise ValueError(f"gpu.count={cfg.gpu.count}: cent generate runs the reference model on this machine, "
                         "whatever the hardware; leave the hardware out (it applies to simulate, serve and bench)")
    if why := rope_numerics_refusal(cfg.model):  # before its weights load (a 128k Phi-3's are 15 GB of float32)
        raise ValueError(why)
    if cfg.model.checkpoint and not checkpoint_has_weights(cfg.model.checkpoint):
        raise ValueError(f"model.checkpoint={cfg.model.checkpoint!r} has no weights (model.safetensors or "
                         "its sharded index): cent generate runs the real math; save the weights beside "
                         "config.json, or time the shape alone with cent simulate or cent serve")
    check_reference_fits(cfg)
    tok = load_tokenizer(cfg.model)
    if args.prompt_ids is not None:
        prompt_ids = _parse_ids(args.prompt_ids)
    else:
        prompt_ids = tok.encode(args.prompt if args.prompt is not None else DEFAULT_PROMPT)
    if args.max_tokens < 1 or len(prompt_ids) + args.max_tokens > cfg.model.max_seq_len:
        raise ValueError(f"--max-tokens {args.max_tokens} is invalid with a prompt of {len(prompt_ids)} tokens in "
                         f"model.max_seq_len={cfg.model.max_seq_len}: use 1..{cfg.model.max_seq_len - len(prompt_ids)}")
    if args.sample_seed is not None and args.sample_seed < 0:
        raise ValueError(f"--sample-seed {args.sample_seed} is invalid: use an integer >= 0")
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            seed=args.sample_seed)
    model = LlamaModel(cfg.model)
    gen = generate(model, prompt_ids, args.max_tokens, params, ignore_eos=args.ignore_eos)
    # the eos that ended it is in token_ids but not the text, as the server (and vLLM) leave it out
    text = tok.decode(gen.token_ids[:-1] if gen.finish_reason == "stop" else gen.token_ids)
    if args.json:
        print(json.dumps({"model": cfg.model.name, "prompt_ids": prompt_ids, "token_ids": gen.token_ids,
                          "text": text, "finish_reason": gen.finish_reason}))
    else:
        prompt_text = args.prompt if args.prompt is not None else tok.decode(prompt_ids)
        sys.stdout.write(f"[{cfg.model.name}, {len(gen.token_ids)} tokens, {gen.finish_reason}]\n")
        sys.stdout.write(f"prompt:       {prompt_text!r}\ncontinuation: {text!r}\n")  # repr: a random model's bytes
    return 0
