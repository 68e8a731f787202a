"""A token's figures under a pipeline, and the paper's phase averages (docs/hardware_model.md
sections 7 and 8).

Two conventions (`SystemTimer.convention`, `cent simulate --convention`):

- `cent` (the default): the pipeline the devices run. `batch` queries circulate through the
  stations of a replica (each stage's channel group, the embedding and LM-head units, a switch
  port), with hops and the host's sampling in between. A query's time between tokens is the ring
  it goes round (every station and delay once, `SystemTimer.token_s`) or, when the slowest
  station is busy longer with the others' tokens, `batch` times that station: the cycle time of a
  closed ring of deterministic stations (for a timed event graph, the largest ratio of a circuit's
  time to the tokens on it). A stage holding ceil(N/pp) blocks is the bottleneck of an uneven
  split. The emulator's timestamps give the same (tests/executor/test_emulate.py, within 0.01%).
- `artifact`: the CENT artifact's accounting: a perfect pipeline (a token takes the ring's time
  whatever the split) and the tensor-parallel exchanges charged even with tp = 1. It reproduces
  the artifact's published latencies (tests/timing/test_reference_figures.py).

Power is reported as the artifact reports it, under both: a token's energy over one pipeline
step, the PIM time of N/pp blocks (N/pp as a real number), times the share of the stages busy.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from cent_serve.arguments import check_int, wrong
from cent_serve.timing.accelerator import accelerator_parts
from cent_serve.timing.mapping import counted
from cent_serve.timing.token import SystemTimer

@dataclass
class TokenFigures:
    """One context length's figures, as `cent simulate --seqlen` prints them."""

    model: str
    devices: int
    pp: int
    tp: int
    seqlen: int
    mode: str
    parallelism: str
    token_latency_ms: float
    throughput_tok_s: float
    block_pim_ms: float
    block_cxl_ms: float
    block_acc_ms: float
    block_ms: float
    embedding_ms: float
    host_ms: float
    token_energy_mj: float
    power_w: float
    """The artifact's power: a token's energy over its blocks' PIM time (docs/hardware_model.md
    section 7), what the paper reports; switch, accelerator, host time and waits are left out."""
    avg_power_w: float
    """The system's average draw: a token's energy x the throughput (every part of the step
    counts, so a slower switch lowers it where `power_w` stays)."""
    devices_used: int
    channels_per_block: int
    blocks_per_device: int
    batch: int
    """Queries in flight per replica."""
    replicas: int
    """Copies of the mapping on the devices: throughput and power are the whole system's."""
    convention: str
    """`cent` or `artifact` (the module docstring)."""
    bottleneck: bool
    """Whether the slowest station, not the ring, sets the pace (`cent` only)."""
    bottleneck_station: str | None
    """That station (`station_name`: `stage 3 (1 block)`, `the LM-head unit`, ...), None when the ring
    sets the pace."""
    breakdown_cycles: dict[str, float]
    """One block's PIM cycles by operation."""
    accelerator_breakdown_cycles: dict[str, float]
    """One block's accelerator cycles by part (`accelerator_parts`)."""
    embed_lookup_ms: float
    """The embedding of a token (part of embedding_ms)."""
    lm_head_ms: float
    """The final norm and LM head (the rest of embedding_ms)."""
    energy_breakdown_mj: dict[str, float]
    """token_energy_mj by named term (`cent_serve.timing.energy.TERMS`)."""
    moe: dict | None = None
    """A mixture of experts' share of one block for one token (None for a dense model): router_ms,
    experts_ms (k experts on the block's banks; on a tp stage the expected busiest device's
    assignments, `expected_busiest_load` of them), combine_ms (the tp stage's gather of partial
    sums; dispatch costs nothing: the input is on every device already), and router_mj and
    experts_mj of the block's energy; with a shared expert (Qwen 2 MoE) shared_expert_ms and
    shared_expert_mj too."""

    def as_dict(self) -> dict:
        return asdict(self)


def slowest_station(timer: SystemTimer, context: int) -> tuple[str, float]:
    """(the name of the resource busiest with one query's token at `context`, its seconds):
    `stage k (n blocks)`, `the embedding unit`, `the LM-head unit` or `a switch port`
    (`SystemTimer.stations_s`' order)."""
    stations, stages = timer.stations_s(context), timer.mapping.stages
    k = max(range(len(stations)), key=stations.__getitem__)
    name = (f"stage {k} ({counted(len(stages[k].blocks), 'block')})" if k < len(stages) else
            ("the embedding unit", "the LM-head unit", "a switch port")[k - len(stages)])
    return name, stations[k]


def period_s(timer: SystemTimer, context: int, batch: int) -> tuple[float, str | None]:
    """(a query's time between tokens at `context` with `batch` queries in flight, the name of the
    station that sets it, as `slowest_station` words it, or None when a token's trip round the
    ring does) under the timer's convention (the module docstring)."""
    ring = timer.token_s(context)
    if timer.convention == "artifact":
        return ring, None
    name, station = slowest_station(timer, context)
    return (batch * station, name) if batch * station > ring else (ring, None)


def token_figures(timer: SystemTimer, context: int, batch: int | None = None) -> TokenFigures:
    """Latency, throughput, energy and power of one token at `context` (section 7 and 8), with
    `batch` queries in flight per replica (default: the paper's, one per pipeline stage);
    throughput and power scale with the replicas (devices holding more than one copy of the
    mapping run one per copy, as the serving engine does)."""
    from cent_serve.timing.energy import token_energy_terms_j

    if not isinstance(timer, SystemTimer):  # a config: the timer is made of it
        raise wrong("token_figures(timer, context)", "timer", timer, "give a SystemTimer: "
                    "SystemTimer.from_config(cfg) (cent_serve.timing)")
    check_int("token_figures(timer, context)", "context", context, 4096)
    check_int("token_figures(timer, context)", "batch", batch, 1, optional=True)
    mp, m = timer.mapping, timer.model
    batch = mp.lanes if batch is None else batch
    if not 1 <= batch <= mp.lanes:
        raise ValueError(f"--batch {batch} is invalid: use {'1' if mp.lanes == 1 else f'1..{mp.lanes}'} (one query "
                         f"per pipeline stage at most, as the paper runs them; this mapping has {mp.lanes} "
                         f"stage{'' if mp.lanes == 1 else 's'})")
    token_s, station = period_s(timer, context, batch)
    terms = token_energy_terms_j(timer, context)
    energy_j = sum(terms.values())
    block_pim_s = timer.block_pim_s(context) + timer.moe_expected_s
    step_s = m.num_layers / mp.pp * block_pim_s * mp.lanes / batch  # the module docstring
    breakdown = block_parts(timer, context, lambda keys: timer.pim.breakdown(keys).as_dict())
    if timer.moe_per_round:  # the experts' expected cycles, as the closed form charges them
        breakdown["experts"] = timer.moe_expected_s * timer.device.clock_hz
    return TokenFigures(
        model=m.name, devices=mp.num_devices, pp=mp.pp, tp=mp.tp, seqlen=context, mode=mp.mode,
        parallelism=mp.parallelism,
        token_latency_ms=token_s * 1e3, throughput_tok_s=mp.replicas * batch / token_s,
        block_pim_ms=block_pim_s * 1e3, block_cxl_ms=timer.block_cxl_s * 1e3,
        block_acc_ms=timer.block_acc_s(context) * mp.tb * 1e3, block_ms=timer.block_s(context) * 1e3,
        embedding_ms=timer.embedding_s * 1e3, host_ms=timer.host_s * 1e3,
        token_energy_mj=energy_j * 1e3, power_w=mp.replicas * energy_j / step_s,
        avg_power_w=energy_j * mp.replicas * batch / token_s,
        devices_used=mp.devices_used, channels_per_block=mp.channels_per_block,
        blocks_per_device=mp.blocks_per_device, batch=batch, replicas=mp.replicas,
        convention=timer.convention, bottleneck=station is not None, bottleneck_station=station,
        breakdown_cycles=breakdown,
        accelerator_breakdown_cycles=block_parts(timer, context,
                                                 lambda keys: accelerator_parts(timer.cost_model, timer.device, keys)),
        embed_lookup_ms=timer.embed_lookup_s * 1e3, lm_head_ms=timer.lm_head_s * 1e3,
        energy_breakdown_mj={k: v * 1e3 for k, v in terms.items()}, moe=moe_figures(timer, context))


def block_parts(timer: SystemTimer, context: int, parts: Callable[[int], dict[str, float]]) -> dict[str, float]:
    """One block's `parts(keys)` (cycles by part) at `context`; of a model windowing some blocks only,
    a block's mean (`SystemTimer.per_block`)."""
    groups = timer.key_groups(context)
    if len(groups) == 1:
        return parts(groups[0][0])
    each = [(count, parts(keys)) for keys, count in groups]
    return {k: sum(count * p[k] for count, p in each) / timer.model.num_layers for k in each[0][1]}


def moe_figures(timer: SystemTimer, context: int) -> dict | None:
    """`TokenFigures.moe` (None for a dense model)."""
    m = timer.model
    if not m.is_moe:
        return None
    from cent_serve.timing.energy import block_energy_by_op_j
    from cent_serve.timing.fabric import moe_combine_s

    clock = timer.device.clock_hz
    router_s = timer.pim.breakdown(context).router / clock
    if timer.moe_per_round:
        experts_s, load = timer.moe_expected_s, timer.routing.mean_max_load(timer.mapping.tp)
        combine_s = moe_combine_s(m.hidden_size, timer.mapping.tp, timer.port, timer.fabric)
    else:
        experts_s, load, combine_s = timer.pim.breakdown(context).experts / clock, float(m.num_experts_per_tok), 0.0
    by_op = block_energy_by_op_j(timer, context)
    out = dict(num_experts=m.num_experts, top_k=m.num_experts_per_tok, router_ms=router_s * 1e3,
               experts_ms=experts_s * 1e3, one_expert_ms=timer.expert_s * 1e3, expected_busiest_load=load,
               combine_ms=combine_s * 1e3, router_mj=by_op["router"] * 1e3, experts_mj=by_op["experts"] * 1e3)
    if m.shared_expert_intermediate_size:  # Qwen 2 MoE's, every token (its gate is in the router's GEMV)
        out.update(shared_expert_ms=timer.pim.breakdown(context).shared / clock * 1e3,
                   shared_expert_mj=by_op["shared"] * 1e3)
    return out


PHASES = ("prefill", "decoding", "end2end")


def check_phases(prompt: int, decode: int, gap: int | None = 128, gap_flag: str | None = "--seqlen-gap") -> None:
    """ValueError, one line naming the flag, the value and the fix, unless the paper's workload
    can be averaged: prompt >= 1, decode >= 0 (0: the prompt alone, prefill and end2end) and, when
    `gap` is given, a positive gap. `gap_flag`: the flag that sets the gap (None: the command has none)."""
    if prompt < 1:
        raise ValueError(f"--prompt {prompt} is invalid: use at least 1 prompt token (e.g. --prompt 512)")
    if decode < 0:
        raise ValueError(f"--decode {decode} is invalid: use 0 or more generated tokens (e.g. --decode 3584; "
                         "0: the prompt alone)")
    if gap is None:
        return
    if gap < 1:
        raise ValueError(f"{gap_flag or 'the context-length spacing'} {gap} is invalid: use a positive spacing "
                         "(e.g. 128)")


def phase_seqlens(prompt: int, decode: int, gap: int = 128) -> dict[str, list[int]]:
    """The context lengths L each phase averages over. The paper's: L = gap, 2 gap, ..., prompt +
    decode; prefill takes L <= prompt, decoding prompt < L, end2end all (weighted by `phase_parts`).
    A phase that no multiple of the gap falls in (none in 1..prompt, or in prompt + 1..prompt +
    decode) is taken at its middle context length, (prompt + 1) // 2 or prompt + (decode + 1) // 2,
    rather than left out. decode 0: no decoding phase."""
    check_phases(prompt, decode, gap)
    total = prompt + decode
    every = list(range(gap, total + 1, gap))
    out = {"prefill": [L for L in every if L <= prompt] or [(prompt + 1) // 2]}
    if decode:
        out["decoding"] = [L for L in every if L > prompt] or [prompt + (decode + 1) // 2]
    out["end2end"] = sorted(set(every) | set(out["prefill"]) | set(out.get("decoding", [])))
    return out


def phase_parts(prompt: int, decode: int, gap: int = 128) -> dict[str, list[tuple[list[int], float]]]:
    """How each phase averages its context lengths (`phase_seqlens`): parts of (lengths, share),
    a part's figure the plain mean over its lengths, the phase's the parts' figures by share. One
    part of share 1, but end2end is the two phases by their token counts, so its latency is theirs
    added. The artifact's plain mean over all the lengths is the same where the phases' lengths
    already weigh their tokens (a gap that divides the prompt and the decode: the paper's
    workloads), and is then kept as it sums; elsewhere it is not (200 prompt tokens and 50
    generated taken at one length each had equal weight, and a gap past both phases gave an
    end2end latency shorter than the phases')."""
    lengths = phase_seqlens(prompt, decode, gap)
    out = {phase: [(ls, 1.0)] for phase, ls in lengths.items()}
    pre, dec = lengths["prefill"], lengths.get("decoding", [])
    if decode and prompt * len(dec) != decode * len(pre):  # else the lengths weigh their tokens already:
        total = prompt + decode                            # one part, the artifact's sums float for float
        out["end2end"] = [(pre, prompt / total), (dec, decode / total)]
    return out


def phase_mean(parts: list[tuple[list[int], float]], value: Callable[[int], float],
               mean: Callable[[list[float]], float] = lambda xs: sum(xs) / len(xs)) -> float:
    """A phase's figure: `value(L)` averaged (`mean`) over each part's lengths, the parts weighted by
    share (one part: its mean as it is)."""
    if len(parts) == 1:
        return mean([value(L) for L in parts[0][0]])
    return sum(share * mean([value(L) for L in ls]) for ls, share in parts)


def phase_figures(timer: SystemTimer, prompt: int, decode: int, gap: int = 128,
                  batch: int | None = None) -> dict[str, dict]:
    """Each phase's figures averaged over its context lengths (`phase_parts`): throughput,
    energy and both powers are means over the L in a phase; latency = mean token time x the
    phase's token count. `batch`: as in `token_figures`."""
    parts = phase_parts(prompt, decode, gap)
    total = prompt + decode
    rows = {L: token_figures(timer, L, batch) for L in sorted({L for p in parts.values() for ls, _ in p for L in ls})}
    counts = {"prefill": prompt, "decoding": decode, "end2end": total}
    out: dict[str, dict] = {}
    for phase in PHASES:
        if phase not in parts:
            continue
        mean = lambda key: phase_mean(parts[phase], lambda L: getattr(rows[L], key))  # noqa: E731
        breakdown = rows[parts[phase][0][0][0]].energy_breakdown_mj
        out[phase] = dict(latency_s=mean("token_latency_ms") * counts[phase] / 1000,
                          throughput_tok_s=mean("throughput_tok_s"),
                          energy_per_token_mj=mean("token_energy_mj"), power_w=mean("power_w"),
                          avg_power_w=mean("avg_power_w"),
                          token_latency_ms=mean("token_latency_ms"),
                          num_seqlens=len({L for ls, _ in parts[phase] for L in ls}),
                          energy_breakdown_mj={k: phase_mean(parts[phase], lambda L: rows[L].energy_breakdown_mj[k])
                                               for k in breakdown})
    return out


MEAN_RATE_NOTE_FRACTION = 0.10
"""How far a phase's tok/s (the artifact's mean of each context's throughput) may lie above its tokens
over its latency before `cent simulate` and `cent sweep` print the latter beside it (the paper's workload
on its mappings: at most 8.7%, Llama2-70B as tp 32 end to end (Llama 3.1 8B as tp 8: 8.9%), 1.5% for
70B's pipeline on 32 devices; a 128k context on Llama 3.1 70B: 61%)."""


def tokens_over_latency(phases: dict[str, dict], prompt: int, decode: int, queries: int) -> dict[str, float]:
    """{phase: tok/s as the phase's tokens of `queries` queries (every replica's) over its latency}: the
    rate a clock on the wall would read. `phase_figures`' `throughput_tok_s` is instead the mean over the
    phase's context lengths of each one's throughput (the artifact's `process_throughputs`), which is at
    least this (the mean of B / t is at least B over the mean of t) and, where a token's time grows far
    along the phase (long contexts), well above it."""
    counts = {"prefill": prompt, "decoding": decode, "end2end": prompt + decode}
    return {p: queries * counts[p] / r["latency_s"] for p, r in phases.items() if p in counts and r["latency_s"] > 0}


def mean_rate_note(phases: dict[str, dict], prompt: int, decode: int, queries: int) -> str | None:
    """One line giving each phase's tokens over its latency (`tokens_over_latency`) when some phase's tok/s
    lies more than MEAN_RATE_NOTE_FRACTION above it, else None."""
    done = tokens_over_latency(phases, prompt, decode, queries)
    over = max(phases[p]["throughput_tok_s"] / rate - 1 for p, rate in done.items())
    if over <= MEAN_RATE_NOTE_FRACTION:
        return None
    return ("tok/s is the artifact's mean of each context length's throughput (docs/hardware_model.md section 7), "
            "which weighs a long context's slow tokens as much as the fast ones; the phase's tokens over its latency: "
            + ", ".join(f"{p} {rate:.1f}" for p, rate in done.items())
            + f" tok/s (the mean is up to {100 * over:.0f}% above)")
