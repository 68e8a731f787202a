"""Paper mode through the device and fabric actors (`cent simulate --emulate`).

The paper's workload: batch = pp queries, one per stage, each processing its
prompt token by token and then decoding; every token goes round the whole
loop (embedding, N blocks, LM head, host sampling). Nothing here computes a
latency: every figure is read off the timestamps the devices and the fabric
put on the data, then averaged the way the paper averages
(`cent_serve.timing.token.phase_figures`), so the two can be compared.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cent_serve.config import CentConfig
from cent_serve.messages import Layout, RoundPlan
from cent_serve.timing.pipeline import PHASES, token_figures

log = logging.getLogger("cent.emulate")
PROGRESS_EVERY_S = 5.0
"""Seconds of wall time between progress log lines."""


@dataclass
class Trace:
    """Per query and step: the simulated time its token was sampled."""

    done_s: np.ndarray  # (steps, queries)
    energy_j_at: dict[int, float]  # cumulative device energy after step k
    wall_s: float
    tokens: int
    terms_j_at: dict[int, np.ndarray] = field(default_factory=dict)
    """The same marks' cumulative device energy by term (`energy.TERMS`): the devices' own counts, charged
    where `energy_j_at`'s joules are (`Executor.energy_terms_j`), so they add up to them; empty from an
    executor with no split."""


def _total_energy(executor) -> float:
    return sum(d["energy_j"] for d in executor.stats()["devices"])


def _terms(executor) -> np.ndarray | None:
    """The devices' cumulative joules by term, in `energy.TERMS` order; None from an executor with no
    split (`Executor.energy_terms_j`)."""
    from cent_serve.timing.energy import TERMS

    got = executor.energy_terms_j()
    return None if got is None else np.array([got.get(t, 0.0) for t in TERMS])


def terms_mj(joules: np.ndarray, tokens: int) -> dict[str, float]:
    """{term: mJ a token} of `joules` by term (`energy.TERMS` order) over `tokens` tokens."""
    from cent_serve.timing.energy import TERMS

    return dict(zip(TERMS, (1e3 * joules / tokens).tolist()))


def run_workload(cfg: CentConfig, executor, start: int, steps: int, energy_marks: tuple[int, ...] = (),
                 prompt: int = 0) -> Trace:
    """Every one of the pp queries processes `steps` tokens one at a time from position `start`.

    With full numerics the first `prompt` tokens are a fixed pseudo-random stream and
    decoding feeds back the greedy token; timing-only plans carry no ids.
    """
    mp = executor.timer.mapping
    full = cfg.resolved_numerics == "full"
    rng = np.random.Generator(np.random.PCG64(cfg.scheduler.seed))
    queries = mp.lanes
    layout = Layout(tuple(range(queries)), tuple(((q, 1),) for q in range(queries)))  # constant: sent once
    ready = np.zeros(queries)
    next_ids = [int(t) for t in rng.integers(3, cfg.model.vocab_size, size=queries)]
    done = np.zeros((steps, queries))
    marks: dict[int, float] = {}
    rounds = itertools.count()
    new = {q: start for q in range(queries)}
    t0 = last_log = time.perf_counter()
    if full and start > 0:  # build the context the measured steps attend to
        prefix = [[int(t) for t in rng.integers(3, cfg.model.vocab_size, size=start)] for _ in range(queries)]
        executor.run(RoundPlan(Layout(layout.lanes, tuple(((q, start),) for q in range(queries))), ready,
                               next(rounds), {q: 0 for q in range(queries)}, (),
                               np.array([t for p in prefix for t in p], dtype=np.int64), np.ones(queries, bool)))
        new = {}
    marks[0] = _total_energy(executor)
    terms = {0: _terms(executor)}
    for k in range(steps):
        pos = start + k
        plan = RoundPlan(layout, ready, next(rounds), new)
        if full:
            plan.token_ids, plan.wants_logits = np.array(next_ids, dtype=np.int64), np.ones(queries, bool)
        new = {}
        out = executor.run(plan)
        ready = done[k] = out.sampled_s
        if full:
            for q in range(queries):
                next_ids[q] = (int(rng.integers(3, cfg.model.vocab_size)) if pos + 1 < prompt
                               else int(np.argmax(out.logits[q])))
        if k + 1 in energy_marks:
            marks[k + 1], terms[k + 1] = _total_energy(executor), _terms(executor)
        now = time.perf_counter()
        if now - last_log > PROGRESS_EVERY_S:
            log.info("step %d/%d (context %d), simulated %.3f s, %.0f sim tokens per wall s", k + 1, steps,
                     pos + 1, done[k].max(), (k + 1) * queries / (now - t0))
            last_log = now
    marks[steps], terms[steps] = _total_energy(executor), _terms(executor)
    return Trace(done, marks, time.perf_counter() - t0, steps * queries,
                 {k: v for k, v in terms.items() if v is not None})  # none without a split


def _step_figures(trace: Trace, k: int, queries: int) -> tuple[float, float]:
    """(token latency s, throughput tok/s) of step k from the timestamps."""
    prev = trace.done_s[k - 1] if k > 0 else np.zeros(queries)
    latency = float(np.mean(trace.done_s[k] - prev))
    window = float(trace.done_s[k].max() - (prev.max() if k > 0 else 0.0))
    return latency, queries / window


def emulate_seqlen(cfg: CentConfig, executor, seqlen: int, warmup: int = 2) -> dict:
    """Steady-state figures of the token at context exactly `seqlen`, after `warmup` rounds.

    The PIM cost is a step function of the context (tiles of the attention
    rows), so the measured round is the one whose context equals the closed
    form's; the warm-up rounds stagger the queries over the pipeline first. Throughput and power
    are those of all the mapping's replicas, as in `emulate_phases`.
    """
    mp = executor.timer.mapping
    queries, replicas = mp.lanes, mp.replicas
    steps = min(warmup + 1, seqlen)
    start = seqlen - steps  # the last round's token sits at position seqlen - 1: context seqlen
    trace = run_workload(cfg, executor, start, steps, energy_marks=(steps - 1,))
    lat, thr = _step_figures(trace, steps - 1, queries)
    thr *= replicas  # the replicas run the same rounds side by side (as the closed form counts them)
    energy = (trace.energy_j_at[steps] - trace.energy_j_at[steps - 1]) / queries
    out = token_figures(executor.timer, seqlen).as_dict()
    closed = {k: out[k] for k in ("token_latency_ms", "throughput_tok_s", "token_energy_mj", "power_w",
                                  "avg_power_w", "energy_breakdown_mj")}
    # by term, the devices' own counts over the measured round (the closed form's under closed_form)
    split = terms_mj(trace.terms_j_at[steps] - trace.terms_j_at[steps - 1], queries)
    out.update(token_latency_ms=1e3 * lat, throughput_tok_s=thr, token_energy_mj=1e3 * energy, energy_breakdown_mj=split,
               power_w=energy * thr, avg_power_w=energy * thr, emulated=True, replicas=replicas, closed_form=closed,
               wall_s=trace.wall_s,
               sim_tokens_per_wall_s=trace.tokens / trace.wall_s)
    return out


def emulate_phases(cfg: CentConfig, executor, prompt: int, decode: int, gap: int = 128) -> dict:
    """The whole paper workload; phases averaged over the closed form's context lengths
    (`phase_parts`: L = gap, 2 gap, ..., a short phase at its middle).

    power_w (and avg_power_w, the same here) is measured system power (phase energy / phase
    simulated time); the artifact's closed-form "power" divides by PIM time only, so it reads
    higher by the non-PIM share. The executor runs one replica of the mapping: throughput and
    power are those of all `mapping.replicas`, which run the same rounds side by side (the closed
    form's count); latency and energy per token are one replica's, the same in each.
    """
    from cent_serve.timing.pipeline import phase_figures, phase_mean, phase_parts

    mp = executor.timer.mapping
    queries, replicas = mp.lanes, mp.replicas
    total = prompt + decode
    parts = phase_parts(prompt, decode, gap)
    trace = run_workload(cfg, executor, 0, total, energy_marks=(prompt,), prompt=prompt)
    per_l = {L: _step_figures(trace, L - 1, queries) for L in sorted({L for p in parts.values() for ls, _ in p
                                                                      for L in ls})}
    counts = {"prefill": prompt, "decoding": decode, "end2end": total}
    spans = {"prefill": (0, prompt), "decoding": (prompt, total), "end2end": (0, total)}
    closed = phase_figures(executor.timer, prompt, decode, gap)
    energy_at = trace.energy_j_at
    out: dict = {}
    for phase in PHASES:
        if phase not in parts:
            continue
        lat = phase_mean(parts[phase], lambda L: per_l[L][0], lambda xs: float(np.mean(xs)))
        thr = phase_mean(parts[phase], lambda L: per_l[L][1], lambda xs: float(np.mean(xs)))
        a, b = spans[phase]
        energy_j = energy_at[b] - energy_at[a]
        sim_s = float(trace.done_s[b - 1].max() - (trace.done_s[a - 1].max() if a > 0 else 0.0))
        out[phase] = dict(latency_s=lat * counts[phase], throughput_tok_s=replicas * thr,
                          energy_per_token_mj=1e3 * energy_j / ((b - a) * queries),
                          # the devices' joules by term over the phase's steps (the closed form's beside it)
                          energy_breakdown_mj=terms_mj(trace.terms_j_at[b] - trace.terms_j_at[a], (b - a) * queries),
                          power_w=replicas * energy_j / sim_s, avg_power_w=replicas * energy_j / sim_s,
                          token_latency_ms=1e3 * lat,
                          num_seqlens=len({L for ls, _ in parts[phase] for L in ls}),
                          closed_form={k: closed[phase][k] for k in ("latency_s", "throughput_tok_s",
                                       "energy_per_token_mj", "power_w", "avg_power_w",
                                                                 "token_latency_ms", "energy_breakdown_mj")})
    out["replicas"] = replicas
    out["wall_s"] = trace.wall_s
    out["sim_tokens_per_wall_s"] = trace.tokens / trace.wall_s
    out["simulated_s"] = float(trace.done_s[-1].max())
    return out
