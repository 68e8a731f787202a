"""The paper's workload as functions of a config: every pipeline stage holds one query, which
processes its prompt token by token and then decodes (docs/hardware_model.md section 7).

`closed_form` evaluates it with the formulas (`cent simulate --prompt P --decode D`; on GPUs,
`--hardware gpu:KIND:N`, a static batch from the GPU model) and `emulate` runs it through the
device and fabric workers (`cent simulate --emulate`). Both return the phases `cent simulate
--json` prints, `prefill`, `decoding` (none when decode is 0) and `end2end`, each a dict of
figures with the cost figures. The commands call these and print; a script calls them with a
config (`cent_serve.config.build_config`) and reads the dicts.
"""
from __future__ import annotations

import dataclasses

from cent_serve.arguments import check_config, check_int
from cent_serve.config import CentConfig
from cent_serve.timing.energy import PAPER_WORKLOAD, cost_figures, paper_gpu_price, paper_workload
from cent_serve.timing.pipeline import PHASES, check_phases


DEFAULT_SEQLEN = 4096
"""The context of `cent simulate`'s one-token form (`--seqlen`, `emulate(seqlen=)`) when none is given."""


def check_workload(prompt: int | None, decode: int | None, seqlen: int | None) -> None:
    """ValueError unless the workload is one of `cent simulate`'s two forms: `prompt` and `decode`
    together (the paper's phases), or neither (one token at `seqlen`, default `DEFAULT_SEQLEN`). The
    closed form's command and `emulate` check it here."""
    if (prompt is None) != (decode is None):
        raise ValueError("--prompt and --decode go together: give both (e.g. --prompt 512 --decode 3584)")
    if prompt is not None and seqlen is not None:
        raise ValueError("--seqlen and --prompt/--decode are two forms: give one of them")


def check_context(cfg: CentConfig, prompt: int, decode: int) -> None:
    """ValueError unless a query of `prompt` + `decode` tokens fits the model's context."""
    total = prompt + decode
    if total > cfg.model.max_seq_len:
        raise ValueError(f"--prompt {prompt} + --decode {decode} = {total} tokens exceed the model's context, "
                         f"model.max_seq_len={cfg.model.max_seq_len}: shorten them, or raise it with "
                         f"--set model.max_seq_len={total}")


def check_seqlen(cfg: CentConfig, seqlen: int) -> None:
    """ValueError unless --seqlen is a context the model serves (past it: how to raise the context, as
    `check_context` says for --prompt and --decode)."""
    if not 1 <= seqlen <= cfg.model.max_seq_len:
        raise ValueError(f"--seqlen {seqlen} is invalid: use 1..model.max_seq_len={cfg.model.max_seq_len}"
                         + (f", or raise the context with --set model.max_seq_len={seqlen}"
                            if seqlen > cfg.model.max_seq_len else ""))


def _with_costs(cfg: CentConfig, mp, phases: dict, prompt: int, decode: int) -> dict:
    """Each phase's row with its cost figures (and, for the paper's own workload on a model its GPUs
    ran, the ratios to them)."""
    against = paper_workload(cfg.model, prompt, decode, cfg.device)
    for phase in PHASES:
        row = phases.get(phase)
        if row is not None:
            row.update(cost_figures(cfg.model, mp.devices_used, mp.num_devices, row["throughput_tok_s"], phase,
                                    row["energy_per_token_mj"], cfg.device, against_paper=against,
                                    tco_per_gpu=paper_gpu_price(cfg.gpu.kind, cfg.gpu.tco_per_gpu)))
    return phases


def closed_form(cfg: CentConfig, prompt: int = PAPER_WORKLOAD[0], decode: int = PAPER_WORKLOAD[1], *,
                gap: int = 128, batch: int | None = None, convention: str = "cent", batch_flag: bool = True) -> dict:
    """The paper's workload from the formulas: {phase: figures} for `prefill`, `decoding` (when decode
    > 0) and `end2end`, and `batch`, the queries in flight in each replica. On CENT, `cent simulate
    --prompt P --decode D --json` without its `convention`, `other_convention`, `workload` and
    `config`; the phases average the context lengths every `gap` tokens; `batch` defaults to one
    query per pipeline stage (the paper's); `convention` `artifact` is the CENT artifact's perfect
    pipeline. On GPUs (`gpu.count` > 0, `--hardware gpu:KIND:N`) a static batch as transformers
    runs it (the largest the GPUs hold, at most 128, unless `batch`; `gap` and `convention` unused).
    Neither reads `scheduler.num_kv_blocks_override` (it caps what a replay's scheduler admits).
    ValueError, one line, for a workload that does not fit the context or the devices (with
    `batch_flag`, a smaller `--batch` among the fixes; False for `cent simulate --sweep` without --batch)."""
    call = "closed_form(cfg, prompt, decode)"
    check_config(call, cfg)
    for name, value, example in (("prompt", prompt, 512), ("decode", decode, 3584), ("gap", gap, 128)):
        check_int(call, name, value, example)
    check_int(call, "batch", batch, 16, optional=True)
    if cfg.on_gpus:
        return _closed_form_gpu(cfg, prompt, decode, batch, batch_flag)
    from cent_serve.preflight import check_devices_hold
    from cent_serve.timing.pipeline import phase_figures, token_figures
    from cent_serve.timing.token import SystemTimer

    check_phases(prompt, decode, gap)
    check_context(cfg, prompt, decode)
    timer = SystemTimer.from_config(cfg, convention)
    given = batch  # None: one query a stage, which the capacity check asks of the mappings its fix names too
    batch = timer.mapping.lanes if batch is None else batch
    token_figures(timer, prompt, batch)  # a batch out of range is refused before the capacity check
    mp = check_devices_hold(cfg, prompt + decode, given, batch_flag=batch_flag,
                            context_flag="a smaller --prompt or --decode")
    phases = _with_costs(cfg, mp, phase_figures(timer, prompt, decode, gap, batch), prompt, decode)
    return dict(phases, batch=batch)


def _closed_form_gpu(cfg: CentConfig, prompt: int, decode: int, batch: int | None, batch_flag: bool) -> dict:
    """`closed_form` on GPUs: a static batch as transformers runs it (the artifact's GPU measurements),
    per phase, from the GPU model (docs/gpu_model.md); throughput and power of every replica."""
    from cent_serve.gpu.timing import GpuTimer
    from cent_serve.preflight import check_gpus_hold

    check_phases(prompt, decode, gap=None)  # the static batch is timed whole: no context lengths to average
    if batch is not None and batch < 1:
        raise ValueError(f"--batch {batch} is invalid: use a positive number of sequences (e.g. --batch 16)")
    check_context(cfg, prompt, decode)
    # the static batch meets no scheduler: `scheduler.num_kv_blocks_override`, which caps what the scheduler
    # admits, is not read here, as CENT's closed form does not (cent simulate warns of it on both); a replay
    # (the engine and `check_runnable`) still caps by it
    cfg = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, num_kv_blocks_override=None))
    total = prompt + decode
    t = GpuTimer(cfg)
    batch = min(128, t.max_batch(total)) if batch is None else batch
    check_gpus_hold(cfg, total, max(1, batch), context_flag="a smaller --prompt or --decode",
                    batch_flag="--batch" if batch_flag else None)
    f = t.phase_figures(batch, prompt, decode)
    tco, k = t.tco(), t.mapping.replicas
    for phase in (p for p in PHASES if p in f):  # every replica runs the batch: throughput and power of all of them
        r = f[phase]
        r.update(throughput_tok_s=k * r["throughput_tok_s"], power_w=k * r["power_w"], avg_power_w=k * r["avg_power_w"])
        r["tokens_per_tco"] = None if tco is None else r["throughput_tok_s"] / tco
    return f


def emulate(cfg: CentConfig, prompt: int | None = None, decode: int | None = None, *, seqlen: int | None = None,
            gap: int = 128) -> dict:
    """The paper's workload run through the device and fabric workers (`cent simulate --emulate`;
    `cfg.executor` `local`, the default: all in this process, or `ray`: a Ray actor each, Ray
    started and stopped here unless it is running). With `prompt` and `decode`, {phase: figures}
    as `closed_form`'s, each with the closed form's beside it under `closed_form`; with `seqlen`
    (default `DEFAULT_SEQLEN`) one token at that context. Also `wall_s`, `sim_tokens_per_wall_s`,
    `executor`, `numerics` and `convention`. Every figure is read off the simulated timestamps
    the devices put on the data; `power_w` is measured (energy over simulated time). CENT's alone:
    a GPU config (`gpu.count` > 0) is refused before anything starts (its figures: `closed_form`)."""
    from cent_serve.emulate import emulate_phases, emulate_seqlen
    from cent_serve.executor import make_executor
    from cent_serve.preflight import check_runnable

    call = "emulate(cfg, prompt, decode, seqlen=)"
    check_config(call, cfg)
    for name, value, example in (("prompt", prompt, 512), ("decode", decode, 3584), ("seqlen", seqlen, 4096)):
        check_int(call, name, value, example, optional=True)
    check_int(call, "gap", gap, 128)
    if cfg.on_gpus:  # the GPU model is formulas only: no device or fabric worker to run them through
        raise ValueError(f"--emulate runs CENT's device and fabric workers, which --hardware {cfg.hardware} has "
                         "none of: drop --hardware to emulate CENT devices, or drop --emulate for the GPU model's "
                         "closed form (paper.closed_form)")
    check_workload(prompt, decode, seqlen)
    if prompt is not None:
        check_phases(prompt, decode, gap)
        check_context(cfg, prompt, decode)
        context = prompt + decode
    else:
        context = DEFAULT_SEQLEN if seqlen is None else seqlen
        check_seqlen(cfg, context)
    mp = check_runnable(cfg, context, None)  # the paper's batch: one query a stage
    own_ray = False
    if cfg.executor == "ray":
        import ray
        own_ray = not ray.is_initialized()  # somebody else's Ray: leave it running
    try:
        executor = make_executor(cfg)
        try:
            if prompt is not None:
                out = _with_costs(cfg, mp, emulate_phases(cfg, executor, prompt, decode, gap), prompt, decode)
            else:
                out = emulate_seqlen(cfg, executor, context)
        finally:
            executor.shutdown()
    finally:
        if own_ray:
            import ray
            ray.shutdown()  # ours: stopped before the caller prints, so no late Ray line follows it
    return dict(out, executor=cfg.executor, numerics=cfg.resolved_numerics, convention="cent")
