"""Arguments shared by the `cent` subcommands: which model, which config, which mapping."""
from __future__ import annotations

import argparse
from pathlib import Path

from cent_serve.config import CentConfig, DeviceConfig, ModelConfig, ParallelConfig, build_config


def add_config_args(p: argparse.ArgumentParser, served: bool = True, requests: bool = False) -> None:
    """--config, --model, --seed, --set on a subcommand, and, `served`, what serves it: --numerics, --hardware and
    the mapping flags (`cent generate`, the reference model's math on this machine, takes none of them: it
    would refuse --numerics off and --hardware gpu:..., and reads no mapping); `requests`: it makes
    requests (the bench commands), whose random arrivals and lengths --seed seeds too."""
    p.add_argument("--config", help="YAML config file (fields of cent_serve.config.CentConfig)")
    p.add_argument("--model", help="preset name or Hugging Face checkpoint directory (default: tiny)")
    made = (", and of the requests made: --synthetic arrivals and lengths, a ShareGPT file's Poisson arrivals "
            "(default 0)") if requests else ""
    timed = f" (and of a mixture of experts' timing router, which its simulated times follow{made})" if served else ""
    p.add_argument("--seed", type=int, help=f"seed of the random weights of a preset{timed}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set device.clock_hz=1e9 (repeatable)")
    if not served:
        return
    p.add_argument("--numerics", choices=["full", "off", "auto"],
                   help="full: real weights and math; off: timing only (the same simulated times); auto (the "
                        "default): full for a checkpoint's weights up to 1B parameters and a preset's random "
                        "weights up to 1 GiB of float32 (about 268M parameters), else off")
    p.add_argument("--hardware", default=None, metavar="cent|gpu:KIND:N",
                   help="what serves: 'cent' (the default: emulated CENT devices) or N modelled GPUs, e.g. "
                        "gpu:a100-80gb:4 (kinds: a100-80gb, a100-80gb-pcie, h100-80gb, or your own described in "
                        "gpu.custom; --set gpu.tp=, gpu.pp=)")
    par = ParallelConfig()  # the defaults a flag left out keeps (a --config file's when given)
    p.add_argument("--devices", type=int, help=f"emulated CENT devices (default {par.num_devices})")
    p.add_argument("--pp", type=int, help=f"pipeline stages (default {par.pp}: one per block)")
    p.add_argument("--tp", type=int, help=f"devices per stage (tensor parallel; default {par.tp})")


def config_from_args(args: argparse.Namespace, experts: bool = True, closed_form: bool = False) -> CentConfig:
    """Resolve the config: file, then --model/--seed/mapping flags, then --set overrides
    (`cent_serve.config.build_config`, which scripts call with the same names as keywords). `experts`:
    warn of a mixture of experts' field set on a dense model, by --set or the --config file
    (`warn_experts_given`), and of a grouped-query attention's on a model without (`warn_gqa_given`); cent sweep,
    whose points may vary the model, warns over them instead.
    `closed_form`: the command runs the closed form (`warn_file_model_replaced` suggests what it reads)."""
    cfg = build_config(getattr(args, "model", None), config=getattr(args, "config", None),
                       devices=getattr(args, "devices", None), pp=getattr(args, "pp", None),
                       tp=getattr(args, "tp", None), hardware=getattr(args, "hardware", None),
                       numerics=getattr(args, "numerics", None), seed=getattr(args, "seed", None),
                       overrides=list(getattr(args, "set", []) or []))
    if cfg.on_gpus:
        warn_gpu_run(cfg, args)
    if getattr(args, "model", None) is not None:
        warn_file_model_replaced(args, f"--model {args.model}", "this model", closed_form, cfg.model.is_moe,
                                 cfg.on_gpus)
    if experts:
        warn_experts_given(args, cfg, cfg.model.is_moe)
        warn_gqa_given(args, cfg, cfg.model.num_rep > 1)
    if not cfg.on_gpus:
        sets = [item.split("=", 1)[0].strip() for item in getattr(args, "set", None) or []]
        how = ("--set device.bytes_per_element" if "device.bytes_per_element" in sets
               else f"--config {args.config}" if getattr(args, "config", None) else "the config")
        warn_narrow_dram(how, [cfg.device])
    return cfg


PAPER_ROW_BYTES, PAPER_BURST_BYTES = 2048, 32
"""CENT's GDDR6-AiM row and burst (docs/hardware_model.md section 1): 1024 and 16 bf16 elements."""


def warn_narrow_dram(how: str, devices: list) -> None:
    """One warning when a device (`DeviceConfig`) whose elements are not bf16 keeps rows or bursts of other
    bytes than CENT's (2 KB, 32 B): device.bytes_per_element alone keeps 1024-element rows and 16-element
    bursts, a narrower (or wider) DRAM whose rows and bursts cost that much less (more) energy and whose
    capacity moves with it, not N-bit weights on CENT's DRAM (docs/hardware_model.md section 1, "The data
    type"). `how`: what set it (cent sweep's `--vary device.bytes_per_element`, or the config)."""
    import logging

    odd = sorted({(d.bytes_per_element, d.row_elements * d.bytes_per_element, d.burst_elements * d.bytes_per_element)
                  for d in devices if d.bytes_per_element != 2
                  and (d.row_elements * d.bytes_per_element, d.burst_elements * d.bytes_per_element)
                  != (PAPER_ROW_BYTES, PAPER_BURST_BYTES)})
    if not odd:
        return
    width, row, burst = odd[0]
    # by both sizes: CENT's 2 KB rows with 16 B bursts are a narrower DRAM, not a wider one
    sizes = (row - PAPER_ROW_BYTES, burst - PAPER_BURST_BYTES)
    narrower, wider = all(d <= 0 for d in sizes), all(d >= 0 for d in sizes)
    logging.getLogger("cent").warning(
        "%s: device.bytes_per_element=%d makes rows of %d B and bursts of %d B, a DRAM %s CENT's (2 KB rows, "
        "32 B bursts), whose row activations and bursts cost %s energy and whose capacity moves with them; for "
        "%d-bit weights and KV on CENT's DRAM also set device.row_elements=%d and device.burst_elements=%d "
        "(docs/hardware_model.md section 1, \"The data type\")", how, width, row, burst,
        "narrower than" if narrower else "wider than" if wider else "unlike",
        "less" if narrower else "more" if wider else "other",
        8 * width, PAPER_ROW_BYTES // width, PAPER_BURST_BYTES // width)


def warn_file_model_replaced(args: argparse.Namespace, by: str, target: str, closed_form: bool = False,
                             moe: bool = True, gpus: bool = False) -> None:
    """One warning naming the fields the --config file's model section sets beside the preset or checkpoint
    it names (`files.model_settings`), when `by` (`--model NAME`, cent sweep's `--vary model`) replaces that
    section: the model is chosen whole (docs/config.md's precedence) and takes none of them, while every
    `--set model.F=V` applies to it (`target`: what it applies to). A field a --set or --seed gives is not named.
    The `--set` it suggests is one the command reads: with `closed_form` (cent simulate, cent sweep without
    --trace; `gpus`: on modelled GPUs) a field the closed form does not read (`closed_form_unread`) is said to
    be unread on any model, with where to see it; with `moe` False (no model here has experts) a mixture of
    experts' field (MOE_ONLY) is said to be read by none."""
    import json
    import logging

    from cent_serve.config.files import model_settings

    if not getattr(args, "config", None):
        return
    given = {item.split("=", 1)[0].strip() for item in getattr(args, "set", None) or []}
    given |= {"model.seed"} if getattr(args, "seed", None) is not None else set()
    pairs = {f"model.{k}": f"model.{k}={v if isinstance(v, str) else json.dumps(v)}"
             for k, v in model_settings(args.config).items() if f"model.{k}" not in given}
    if not pairs:
        return

    def them(n: int) -> str:
        return "it" if n == 1 else "them"

    apply, unread, no_experts = [], {}, []
    for path, pair in pairs.items():
        why = closed_form_unread(path, moe, gpus) if closed_form else None
        if why:
            unread.setdefault(why, []).append(pair)
        elif not moe and path in MOE_ONLY:
            no_experts.append(pair)
        else:
            apply.append(pair)
    what = them(len(apply)) if len(apply) == len(pairs) else ", ".join(apply)  # the others: why not, below
    said = [f"to apply {what} to {target}, give " + " ".join(f"--set {p}" for p in apply)] if apply else []
    for (sets, where), names in unread.items():
        it = them(len(names))
        said.append(f"{', '.join(names)}: the closed form does not read {it} on any model ({'it sets' if it == 'it' else 'they set'} "
                    f"{sets}); to see {it}, {where}, with " + " ".join(f"--set {p}" for p in names))
    if no_experts:
        said.append(f"{', '.join(no_experts)}: no model here has experts, so nothing would read {them(len(no_experts))}")
    logging.getLogger("cent").warning(
        "--config %s %s: %s replaces the file's model section (the model chosen whole, as --model chooses it), "
        "so %s not read; %s", args.config, ", ".join(pairs.values()), by,
        "it is" if len(pairs) == 1 else "they are", "; ".join(said))


CENT_ONLY_FIELDS = ("device.", "fabric.", "parallel.", "scheduler.prefill_chunk_tokens", "scheduler.max_seqs_per_stage",
                    "executor")
"""Config fields (a prefix ends in ".") that only the CENT devices read: GPUs batch by `gpu.*`."""
CENT_ONLY_FLAGS = ("devices", "pp", "tp", "ray", "ray_address", "placement")
"""Command-line flags that only the CENT devices read (modelled GPUs run in this process)."""


def warn_gpu_run(cfg: CentConfig, args: argparse.Namespace | None = None) -> None:
    """Warn, once a command, of what a run on modelled GPUs does not read (`args`' CENT-only flags
    and `--set` fields: a flag silently ignored reads as if it shaped the run) and of a kind whose
    efficiency constants are borrowed."""
    import logging


    log = logging.getLogger("cent")
    if args is not None:
        given = [f"--{flag.replace('_', '-')}" + ("" if value is True else f" {value}") for flag in CENT_ONLY_FLAGS
                 if (value := getattr(args, flag, None)) not in (None, False)
                 and not (flag == "devices" and getattr(args, "devices_defaulted", False))]  # the paper's, not given
        given += [f"--set {item.strip()}" for item in getattr(args, "set", None) or []
                  if (path := item.split("=", 1)[0].strip()) and any(
                      path == k or (k.endswith(".") and path.startswith(k)) for k in CENT_ONLY_FIELDS)]
        if given:
            log.warning("%s: CENT's, not read on --hardware %s (the GPUs' mapping is gpu.tp and gpu.pp, their "
                        "batching gpu.max_num_seqs and gpu.max_num_batched_tokens: --set gpu.F=V)",
                        ", ".join(given), cfg.hardware)
    note = cfg.gpu.borrowed_note
    if note:
        log.warning("%s", note)


def check_out_dir(out: str, flag: str = "--out") -> Path:
    """The results directory a command will write, checked before anything runs (a replay's hours
    are not lost to a path it cannot write at the end): not a file, under a directory that exists
    or can be made, writable. Nothing is created here."""
    import os

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {out} is a file: give a directory for the results (made if missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {out} is under {parent}, a file: give a directory for the results")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: {parent} is not writable: give a directory you may write")
    return path


def given_overrides(args: argparse.Namespace, flags: tuple[str, ...] = ()) -> str:
    """What changed the config from the defaults, as a run's text and plots name it: `--config FILE
    --set device.clock_hz=4e9`, with the config flags among `flags` (argparse names, e.g. "devices") given
    between them, in the order they apply (`config_from_args`): a caller whose header does not name the
    devices or mapping (cent sweep's plots) passes them; "" when nothing did."""
    given = ([f"--config {args.config}"] if getattr(args, "config", None) else [])
    given += [f"--{flag} {value}" for flag in flags if (value := getattr(args, flag, None)) is not None
              and not (flag == "devices" and getattr(args, "devices_defaulted", False))]  # the paper's, not given
    return " ".join(given + [f"--set {s.strip()}" for s in getattr(args, "set", None) or []])


SERVED_ONLY = "serve it or replay a trace with full numerics (cent serve, cent bench run)"
REPLAYED = "replay a trace (cent bench run, cent sweep --trace)"
CLOSED_FORM_IGNORES = {
    "scheduler.": ("the serving engine's scheduler", REPLAYED),
    "server.": ("the HTTP server", "serve it (cent serve)"),
    "numerics": ("the numerics of a served model; the closed form computes none and reads no weights", SERVED_ONLY),
    "executor": ("where a served model's devices run", SERVED_ONLY),
    "model.weight_dtype": ("how full numerics store the weights (the devices' element size is "
                           "device.bytes_per_element)", SERVED_ONLY),
    "model.seed": ("the random weights of a served model", SERVED_ONLY),
    "model.rope_": ("the rotary embedding, which the numerics compute and the timing does not price", SERVED_ONLY),
    "model.partial_rotary_factor": ("the rotary embedding, which the numerics compute and the timing does not "
                                    "price", SERVED_ONLY),
    "model.rms_norm_eps": ("the numerics' RMSNorm", SERVED_ONLY),
    "model.norm_offset": ("the numerics' RMSNorm weights (1 + w is added once, on load)", SERVED_ONLY),
    "model.hidden_act": ("the MLP's activation, which the banks' lookup table holds whatever it is", SERVED_ONLY),
    "model.scale_embeddings": ("the embedding rows' values (the scale rides the DMA's row read)", SERVED_ONLY),
    "model.final_logit_softcapping": ("the logits' values (the host's, beside sampling)", SERVED_ONLY),
    "model.query_pre_attn_scalar": ("the constant the attention scores are scaled by", SERVED_ONLY),
    "model.bos_token_id": ("the tokenizer", SERVED_ONLY),
    "model.eos_token_id": ("when a served generation stops", REPLAYED),
    "model.extra_eos_token_ids": ("when a served generation stops", REPLAYED),
    "gpu.": ("the modelled GPUs, not the CENT devices", "give --hardware gpu:KIND:N (cent simulate, cent bench "
             "compare)"),
}
"""Config fields (a prefix ends in "." or "_") the CENT closed form (`cent simulate`, `cent sweep`
without --trace) does not read: what they set instead, and where to see them."""
MOE_ONLY = ("model.expert_skew", "model.num_experts_per_tok", "model.moe_intermediate_size", "model.norm_topk_prob")
"""A mixture of experts' fields (its experts and router): a dense model has none for them to set."""
CLOSED_FORM_CAPACITY_ONLY = {
    "device.rows_per_bank": "it sizes the KV blocks a replay's scheduler admits and preempts by",
    "scheduler.kv_block_tokens": "it is the KV block a replay's scheduler admits and preempts by",
}
"""Config fields the closed form reads only to decide whether the model and its queries (one a lane, at
the whole context) fit the devices (`check_capacity` counts whole KV blocks): no time or energy moves with
them. What they move in a replay. Checked before CLOSED_FORM_IGNORES, whose prefixes may cover them."""


def warn_experts_unread(paths: list[str], how: str, moe: bool) -> None:
    """One warning per field in `paths` among a mixture of experts' (`MOE_ONLY`, `how`: the flag that set it)
    when no model of the run has experts (`moe` False): nothing reads it, closed form, replay or numerics."""
    import logging

    for path in [] if moe else [p for p in paths if p in MOE_ONLY]:
        logging.getLogger("cent").warning(
            "%s %s: no model here has experts, so nothing reads it (it sets a mixture of experts' experts or router); "
            "to see it, run a mixture of experts (e.g. --model mixtral-8x7b)", how, path)


def warn_experts_given(args: argparse.Namespace, cfg: CentConfig, moe: bool, file_model: bool = True) -> None:
    """`warn_experts_unread` of the mixture of experts' fields `args` set: each --set one, and each the --config
    file moved off its default in `cfg` (the config it resolved) and no --set sets. A file's field at its default
    changes nothing and is not warned of: a config.json a dense run wrote holds every field. `file_model` False:
    the file's model section is replaced (`warn_file_model_replaced` names its fields)."""
    sets = [item.split("=", 1)[0].strip() for item in getattr(args, "set", None) or []]
    warn_experts_unread(sets, "--set", moe)
    if getattr(args, "config", None) and file_model:
        dense = ModelConfig()  # a dense preset's or checkpoint's experts' fields are these defaults
        moved = [path for path in MOE_ONLY if path not in sets
                 and getattr(cfg.model, path.split(".")[1]) != getattr(dense, path.split(".")[1])]
        warn_experts_unread(moved, f"--config {args.config}", moe)


GQA_ONLY = ("device.score_rep_head_cycles",)
"""Fields that price the query heads of a grouped-query attention group after its first
(`timing.pim.score_cycles`: num_rep - 1 of them a KV head): a model with a KV head a query head has none."""


def warn_gqa_unread(paths: list[str], how: str, gqa: bool) -> None:
    """One warning per field in `paths` among `GQA_ONLY` (`how`: the flag that set it) when no model of the run
    shares a KV head among query heads (`gqa` False: num_kv_heads == num_heads, llama2-7b): every query head is
    its group's first, priced by device.score_head_cycles, so nothing reads it, closed form, replay or devices."""
    import logging

    for path in [] if gqa else [p for p in paths if p in GQA_ONLY]:
        logging.getLogger("cent").warning(
            "%s %s: no model here has grouped-query attention (each query head has its own KV head), so nothing "
            "reads it (it prices q.K^T for each further query head of a KV head's group; a group's first is "
            "device.score_head_cycles); to see it, run a model with fewer KV heads than query heads (e.g. --model "
            "llama2-70b)", how, path)


def warn_gqa_given(args: argparse.Namespace, cfg: CentConfig, gqa: bool) -> None:
    """`warn_gqa_unread` of the fields `args` set: each --set one, and each the --config file moved off its
    default in `cfg` (the config it resolved) and no --set sets, as `warn_experts_given` does the experts'."""
    sets = [item.split("=", 1)[0].strip() for item in getattr(args, "set", None) or []]
    warn_gqa_unread(sets, "--set", gqa)
    if getattr(args, "config", None):
        default = DeviceConfig()
        moved = [path for path in GQA_ONLY if path not in sets
                 and getattr(cfg.device, path.split(".")[1]) != getattr(default, path.split(".")[1])]
        warn_gqa_unread(moved, f"--config {args.config}", gqa)


def warn_file_closed_form_ignores(args: argparse.Namespace, cfg: CentConfig, moe: bool, file_model: bool = True,
                                  exclude: tuple[str, ...] | list[str] = (), gpus: bool = False) -> None:
    """`warn_closed_form_ignores` of the fields the --config file sets off their defaults, as `warn_experts_given`
    does the experts' (`cfg`: the config resolved): a model field off the preset or checkpoint its model section
    names (`files.model_settings`; none when `file_model` is False: --model or --vary model replaced it), `numerics`
    when it resolves otherwise than `auto` would, any other field off CentConfig's default. A config.json a run
    wrote holds every field: those at their defaults are not named; nor a field a --set, --seed, --numerics or one
    of `exclude` (cent sweep's varied fields) gives, which says so itself. `gpus`: as `warn_closed_form_ignores`'s."""
    import dataclasses

    from cent_serve.config.files import model_settings

    if not getattr(args, "config", None):
        return
    given = {item.split("=", 1)[0].strip() for item in getattr(args, "set", None) or []} | set(exclude)
    given |= {path for path, flag in (("model.seed", "seed"), ("numerics", "numerics"))
              if getattr(args, flag, None) is not None}
    moved = [f"model.{k}" for k in model_settings(args.config)] if file_model else []
    default, ran = dataclasses.asdict(CentConfig()), dataclasses.asdict(cfg)
    for section, value in ran.items():
        if isinstance(value, dict) and section != "model":
            moved += [f"{section}.{k}" for k, v in value.items() if v != default[section][k]]
        elif section == "numerics":  # 'off' for a model auto times anyway changes nothing
            if cfg.resolved_numerics != dataclasses.replace(cfg, numerics="auto").resolved_numerics:
                moved.append(section)
        elif section != "model" and value != default[section]:
            moved.append(section)
    warn_closed_form_ignores([p for p in moved if p not in given], f"--config {args.config}", moe, gpus)


def numerics_asked(args: argparse.Namespace, cfg: CentConfig) -> list[str]:
    """["numerics"] when the --numerics flag asks for numerics computed (`cfg` resolves it full), which the closed
    form never computes, for `warn_closed_form_ignores` to say so; [] without the flag, or when it resolves off:
    timing only, what the closed form runs anyway."""
    return ["numerics"] if getattr(args, "numerics", None) is not None and cfg.resolved_numerics == "full" else []


GPU_CLOSED_FORM_READS = ("scheduler.kv_block_tokens",)
"""Fields of CLOSED_FORM_IGNORES the GPUs' closed form reads: its static batch is the most sequences the GPUs
hold in whole blocks (`GpuTimer.max_batch`)."""


CENT_CLOSED_FORM_GPU_READS = ("gpu.tco_per_gpu",)
"""`gpu.` fields the CENT closed form reads: the price of the paper's GPUs in its tokens per dollar ratio
(`timing.energy.paper_gpu_tco`), while gpu.kind is theirs (`paper_gpu_price`)."""


def on_gpus_unread(path: str) -> bool:
    """Whether the GPUs' closed form leaves `path` unread for a reason `warn_closed_form_ignores` tells: not a
    `gpu.` field (the GPUs' own), nor one of CENT_ONLY_FIELDS (`warn_gpu_run` says so), nor one it reads."""
    return not (path.startswith("gpu.") or path in GPU_CLOSED_FORM_READS
                or any(path == k or (k.endswith(".") and path.startswith(k)) for k in CENT_ONLY_FIELDS))


def closed_form_unread(path: str, moe: bool = False, gpus: bool = False) -> tuple[str, str] | None:
    """(what `path` sets, where to see it) when the closed form does not read it (CLOSED_FORM_IGNORES, except
    model.seed with `moe`, what it reads for capacity (CLOSED_FORM_CAPACITY_ONLY), the GPUs' price its ratio
    reads (CENT_CLOSED_FORM_GPU_READS) and, with `gpus`, what `on_gpus_unread` leaves out), else None."""
    if ((moe and path == "model.seed") or (gpus and not on_gpus_unread(path)) or path in CLOSED_FORM_CAPACITY_ONLY
            or path in CENT_CLOSED_FORM_GPU_READS):
        return None
    hit = next((v for k, v in CLOSED_FORM_IGNORES.items()
                if path == k or (k.endswith((".", "_")) and path.startswith(k))), None)
    if hit and gpus and hit[1] == REPLAYED:  # cent sweep runs CENT's devices alone
        hit = (hit[0], "replay a trace (cent bench run, cent bench compare)")
    return hit


def warn_closed_form_ignores(paths: list[str], how: str, moe: bool = False, gpus: bool = False) -> None:
    """One warning per field in `paths` that the closed form does not read, or reads only for capacity
    (`how`: the flag that set it).
    `moe`: a mixture of experts is among the models, whose time model routes by a draw from model.seed
    (`cent_serve.timing.experts`): the closed form reads the seed then, and its figures move with it.
    `gpus`: the closed form of modelled GPUs (`cent simulate --hardware gpu:KIND:N`): only the fields
    `on_gpus_unread` keeps."""
    import logging

    unread: dict[tuple[str, str], list[str]] = {}  # fields of one reason share a line (a file may set several)
    for path in paths:
        if (moe and path == "model.seed") or (gpus and not on_gpus_unread(path)):
            continue
        hit = closed_form_unread(path, moe, gpus)
        if hit:
            unread.setdefault(hit, []).append(path)
        elif path in CLOSED_FORM_CAPACITY_ONLY:
            logging.getLogger("cent").warning(
                "%s %s: the closed form reads it only for capacity (whether the weights and a query a lane at the "
                "whole context fit), so its time and energy are the same for every value that fits; to see it move "
                "time, %s whose sequences fill the KV cache (%s)", how, path, REPLAYED, CLOSED_FORM_CAPACITY_ONLY[path])
    for (sets, where), names in unread.items():
        it = "it" if len(names) == 1 else "them"
        logging.getLogger("cent").warning(
            "%s %s: the closed form does not read %s (%s %s), so its figures are the same for every value; to see "
            "%s, %s", how, ", ".join(names), it, "it sets" if it == "it" else "they set", sets, it, where)
