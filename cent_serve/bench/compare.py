"""`cent bench compare`: one trace on CENT devices and on GPUs, through the same engine.

Both sides replay the same requests in virtual time (`run_in_process`): the same request
lifecycle, metrics and summary; only the hardware differs (the CENT side from the usual
flags, the GPU side `--gpu KIND:N`, batched as vLLM batches: many sequences a step, chunked
prefill in a token budget). Writes compare.json / compare.csv (the side-by-side table),
requests_cent.csv / requests_gpu.csv (each side's requests, as `bench run`'s requests.csv), compare_cdfs.png (TTFT, TPOT and E2E latency of both on one axis each) and, with --rates,
compare_sweep.png (latency against throughput over the rates for both).

Power is the run's energy over its duration (steps only: an idle GPU or device is charged
nothing); tokens per dollar use the CENT artifact's TCO convention (docs/hardware_model.md section 9):
throughput / (device.tco_per_device x devices; 0.73 / 32 each by default) for CENT, / (1.76 x GPUs / 4) for A100s.
"""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cent_serve.bench.plots import (DPI, SLO_OFF_AXIS, fit_title, fmt_in, fmt_ms, latency_unit,
                                    place_rate_labels, plain_axis, share_axis)
from cent_serve.bench.report import (compare_table, kind_notes, price_notes, reasons_text, replay_fixes, short_example,
                                     side_figures, source_text)
from cent_serve.bench.records import BenchResult
from cent_serve.bench.results import write_requests_csv
from cent_serve.bench.runner import run_in_process
from cent_serve.config import CentConfig, config_to_dict
from cent_serve.preflight import check_runnable

KEPT_DICTS = ("failure_reasons", "energy_by_term_j", "energy_share_by_term")
"""The summary's dict fields compare.json keeps (per side and per rate); the per-device ones it drops."""
COLORS = {"CENT": "tab:blue", "GPU": "tab:red"}
LOG_RATIO = 20.0
"""A CDF panel goes to a log axis when one side's median is this many times the other's."""


def _flat(s: dict) -> dict:
    """A side's summary for compare.json: the numbers, the hardware and the failure reasons."""
    return {k: v for k, v in s.items() if not isinstance(v, dict) or k in KEPT_DICTS}


def run_compare(cent_cfg: CentConfig, gpu_cfg: CentConfig, requests: list, slos: dict, out_dir: Path,
                rates_requests: dict[float, list] | None = None, detailed: bool = False, plots: bool = True,
                bench: dict | None = None, checked: bool = False, given: str = "") -> dict:
    """Replay `requests` on both; with `rates_requests` ({rate: requests}) also a rate sweep; `detailed`
    adds each request's inter-token latencies to requests_*.csv; `plots` False skips the PNGs; `bench`
    (what shaped the requests: the trace and its options) is written into compare.json as it is. What
    cannot run on either side is refused first (`preflight.check_runnable` of each config, once): no
    side's replay begins, and nothing is written, before both are known to run. `checked`: the caller
    ran both checks already (`cent bench compare`, before it read its trace), so they are not run again.
    `given`: what changed the config (`cli_common.given_overrides`), in compare.json, the table's header
    and the plots' titles, as bench run's."""
    if not checked:
        check_runnable(cent_cfg)
        check_runnable(gpu_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, sides = {}, {}
    for name, cfg in (("CENT", cent_cfg), ("GPU", gpu_cfg)):
        print(f"replaying {len(requests)} requests on {name} ({cfg.hardware})")
        results[name] = run_in_process(cfg, copy.deepcopy(requests), total=len(requests),
                                       warn=name == "CENT", checked=True)  # one trace: its 0-token warning once
        sides[name] = side_figures(cfg, results[name], slos)
    table = compare_table(sides["CENT"], sides["GPU"])
    sweep = None
    if rates_requests:
        sweep = {name: [] for name in sides}
        for rate, reqs in rates_requests.items():
            for name, cfg in (("CENT", cent_cfg), ("GPU", gpu_cfg)):
                res = run_in_process(cfg, copy.deepcopy(reqs), total=len(reqs), warn=False,
                                     desc=f"rate {rate:g} {name}", checked=True)
                s = side_figures(cfg, res, slos)
                sweep[name].append(dict(rate=rate, **_flat(s)))
                reasons = reasons_text(s["failure_reasons"])
                print(f"  rate {rate:g} req/s {name}: {s['output_throughput']:.1f} output tok/s, TPOT p50 "
                      f"{fmt_ms(s['median_tpot_ms'])}, E2E p99 {fmt_ms(s['p99_e2el_ms'])}"
                      + (f", {s['failed']} failed ({reasons})" if reasons else ""))
    out = dict(model=cent_cfg.model.name, requests=len(requests), bench=bench, given=given, slos_ms=slos,
               cent=_flat(sides["CENT"]), gpu=_flat(sides["GPU"]),
               table=table, notes=compare_notes(results, sides, cent_cfg, gpu_cfg, swept=bool(rates_requests)),
               sweep={k.lower(): v for k, v in sweep.items()} if sweep else None,
               config=dict(cent=config_to_dict(cent_cfg), gpu=config_to_dict(gpu_cfg)))  # each side's, resolved
    (out_dir / "compare.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    with open(out_dir / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["metric", "unit", "cent", "gpu", "cent_over_gpu", "better"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    for name, res in results.items():  # each side's requests, as bench run's requests.csv
        write_requests_csv(out_dir / f"requests_{name.lower()}.csv", res.records, detailed)
    if plots:
        plot_cdfs(out_dir / "compare_cdfs.png", results, sides, cent_cfg.model.name, slos, given)
    if plots and sweep:
        plot_sweep(out_dir / "compare_sweep.png", sweep, sides, cent_cfg.model.name, given)
    return out


KEPT_PACE = 1.25
"""A side whose run ends within this many times the last arrival's time (and refused no request for a
full queue) kept the trace's pace: its throughput is the trace's, not what the hardware could do
(`compare_notes`)."""
QUEUED = 0.1
"""A request queued when it waited for its first step more than this share of its time in the system; a
side whose completed requests queued at most this share of the time, ending within `UNQUEUED_PACE`
times the last arrival's time, kept the trace's pace too (`compare_notes`: GPUs that take each request
as it comes and end one long request after the last arrival)."""
UNQUEUED_PACE = 2.0
"""How long after the trace's span a side that queued no request may end and have kept its pace: past
it, the run is more the hardware's work than the arrivals' (a burst at one instant has a span of 0)."""
SLOW_PREFILL = 5.0
"""CENT's TTFT p50 this many times the GPUs' or more is explained (`compare_notes`)."""


def compare_notes(results: dict[str, BenchResult], sides: dict, cent_cfg: CentConfig, gpu_cfg: CentConfig,
                  swept: bool = False) -> list[str]:
    """What a reader of the table would ask, answered from the runs: a side that kept the trace's pace
    (its throughput and tokens per dollar follow the arrivals, not its capacity), CENT's token-by-token
    prefill behind a TTFT far above the GPUs', and a GPU kind without a cost. `swept`: the run has
    --rates (the note points at its sweep rather than suggesting the flag). A side that completed
    nothing, or whose last completion comes before the last arrival (the later requests failed), kept
    no pace: its duration (first arrival to last finish) says nothing of the trace's; nor did one that
    refused a request for a full queue (overloaded, `_kept_pace`)."""
    notes = []
    arrivals = [r.arrival_s for r in results["CENT"].records]
    last = max(arrivals, default=0.0)
    span = last - min(arrivals, default=0.0)  # from the first arrival, as `summarize`'s duration counts
    paced = [name for name in ("CENT", "GPU") if _kept_pace(results[name], sides[name], span)]
    if paced:
        who = " and ".join({"CENT": "CENT", "GPU": "the GPUs"}[n] for n in paced)
        ends = " and ".join(f"{sides[n]['duration'] - span:.3g} s" for n in paced)
        notes.append(f"{who} kept the trace's pace (the run{'s' * (len(paced) > 1)} end{'' if len(paced) > 1 else 's'} "
                     f"{ends} after the last arrival, at {last:.3g} s): the throughput and tokens per dollar of "
                     f"{who} are the trace's, not what the hardware can do; "
                     + ("the --rates sweep (compare.json's sweep) replays both at other loads" if swept else
                        "--rates R1,R2,... replays both at higher loads"))
    ttft = sides["CENT"].get("median_ttft_ms"), sides["GPU"].get("median_ttft_ms")
    if cent_cfg.scheduler.prefill_chunk_tokens == 1 and None not in ttft and ttft[0] > SLOW_PREFILL * ttft[1]:
        notes.append("CENT prefills a prompt a token at a time round its pipeline, as the paper does "
                     "(scheduler.prefill_chunk_tokens 1), where a GPU step takes a chunk of up to "
                     f"{gpu_cfg.gpu.num_batched_tokens:,} prompt tokens: its TTFT grows with the prompts and the queue")
    for name, cfg in (("CENT", cent_cfg), ("GPU", gpu_cfg)):
        notes += price_notes(cfg, sides[name].get("tco"))
    return notes + kind_notes(gpu_cfg)


def _kept_pace(result: BenchResult, side: dict, span: float) -> bool:
    """Whether a side's throughput is the trace's: it completed requests, refused none for a full
    queue (overload, however soon after the last arrival a long trace's run ends: the whole
    azure_conv_2023 on 4 A100s refused 3,580 and ended within 1.09x its span), and ended within
    `KEPT_PACE` times the trace's span, or within `UNQUEUED_PACE` times it with few requests queued or
    failed (`QUEUED` of them at most: a side that refused most of its requests did not keep the pace)."""
    duration = side["duration"]
    if not (span > 0 and side["completed"] > 0 and span <= duration):
        return False
    if any(r.failure_reason == "queue_full" for r in result.records):
        return False
    if duration <= KEPT_PACE * span:
        return True
    done = [r for r in result.records if r.ok and r.scheduled_s is not None]
    queued = sum(r.scheduled_s - r.arrival_s > QUEUED * (r.finish_s - r.arrival_s) for r in done)
    failed = len(result.records) - sum(r.ok for r in result.records)  # refusals may be overload's: not kept
    return (duration <= UNQUEUED_PACE * span and bool(done) and queued <= QUEUED * len(done)
            and failed <= QUEUED * len(result.records))


def print_compare(out: dict) -> None:
    shaped = out.get("bench") or {}
    if "arrivals" in shaped:  # generated arrivals: the source names them and their rate
        at = ""
    elif shaped.get("rate"):
        at = f" arriving at {shaped['rate']:g} req/s (--rate)"
    elif shaped.get("time_scale", 1.0) != 1.0:
        at = f" at the trace's arrival times x {shaped['time_scale']:g} (--time-scale)"
    else:
        at = " at the trace's own arrival times" if out.get("sweep") else ""
    if out.get("sweep"):
        at += " (the rates above are the sweep's)"
    source = f" of {source_text(shaped)}" if shaped.get("trace") else ""
    given = f"; given: {out['given']}" if out.get("given") else ""
    print(f"{out['model']}, {out['requests']} requests{source}{at}: CENT = {out['cent']['hardware']}; "
          f"GPU = {out['gpu']['hardware']}{given}")
    # goodput is counted against --goodput's SLOs: without them the row is nulls (compare.json keeps it)
    table = [r for r in out["table"] if out.get("slos_ms") or r["metric"] != "request goodput"]
    labels = [f"{r['metric']} ({r['unit']})" if r["unit"] else r["metric"] for r in table]
    width = max(map(len, labels), default=0) + 2
    print(f"{'':<{width}}{'CENT':>14}{'GPU':>14}{'CENT/GPU':>13}")

    def figure(v) -> str:  # four significant digits (a ratio of 0.0034 is not 0.00); from 1,000 on, whole
        if v is None:       # numbers with separators (not 1.063e+04, and 4,627 beside 11,415)
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1e3 else f"{v:.4g}"

    for label, r in zip(labels, table):
        ratio = "-" if r["cent_over_gpu"] is None else figure(r["cent_over_gpu"]) + "x"
        print(f"{label:<{width}}{figure(r['cent']):>14}{figure(r['gpu']):>14}{ratio:>13}")  # 0.0008108x fits
    for side in ("cent", "gpu"):  # why requests failed, per side (compare.json keeps the whole messages)
        for reason, f in out[side].get("failure_reasons", {}).items():
            print(f"  {side.upper():<6}{reason:<22}{f['count']:>6}   e.g. {short_example(f['example'])}")
    for line in replay_fixes({**out["cent"].get("failure_reasons", {}), **out["gpu"].get("failure_reasons", {})}):
        print(f"  {line}")
    from cent_serve.bench.report import terms_text
    print(f"energy by term: CENT {terms_text(out['cent'])}; GPU: "
          + ("n/a (the GPU model charges one power over a step's time)" if out["gpu"].get("energy_share_by_term")
             is None else terms_text(out["gpu"])))
    for note in out.get("notes") or ():
        print(f"note: {note}")
    print("(simulated time; energy per token: over prompt and output tokens; power = the steps' energy over the "
          "run; tokens per dollar in the CENT artifact's TCO units)")


def plot_cdfs(path: Path, results: dict[str, BenchResult], sides: dict, model: str, slos: dict,
              given: str = "") -> None:
    fig = Figure(figsize=(15, 5.6))
    axes = fig.subplots(1, 3)
    for ax, (metric, name, get) in zip(axes, (
            ("ttft", "time to first token", lambda r: r.ttft_s),
            ("tpot", "time per output token", lambda r: r.tpot_s),
            ("e2el", "end-to-end latency", lambda r: r.e2e_s))):
        vals = {k: np.sort([get(r) * 1e3 for r in res.records if r.ok and get(r) is not None])
                for k, res in results.items()}
        top = max((v[-1] for v in vals.values() if len(v)), default=1.0)
        slo = slos.get(metric)
        draw_slo = slo is not None and slo <= SLO_OFF_AXIS * top  # as the single-run CDFs: far beyond, only named
        top = max(top, slo) if draw_slo else top
        div, unit = latency_unit([top])
        for k, x in vals.items():
            if not len(x):
                continue
            ax.step(np.r_[x[0], x] / div, np.r_[0.0, np.arange(1, x.size + 1) / x.size], where="post",
                    color=COLORS[k], lw=1.8,
                    label=f"{k}: p50 {fmt_in(np.percentile(x, 50), div, unit)}, p99 {fmt_in(np.percentile(x, 99), div, unit)}")
        if draw_slo:
            ax.axvline(slo / div, color="black", ls=":", lw=1.2, label=f"SLO {fmt_in(slo, div, unit)}")
        elif slo is not None:
            ax.plot([], [], " ", label=f"SLO {fmt_in(slo, div, unit)} (right of the axis)")
        p50s = [np.percentile(x, 50) for x in vals.values() if len(x)]
        if len(p50s) == 2 and min(p50s) > 0 and max(p50s) / min(p50s) >= LOG_RATIO:
            ax.set_xscale("log")  # one side 20x the other: on a linear axis it would be a line at 0
            ax.set_xlabel(f"{metric.upper()} ({unit}, simulated, log scale)")
        else:
            ax.set_xlim(0, 1.05 * top / div)
            ax.set_xlabel(f"{metric.upper()} ({unit}, simulated)")
        ax.set_title(name)
        share_axis(ax)
        if ax.get_xscale() == "linear":
            plain_axis(ax.xaxis)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # below the panel: a CDF's curves may cross any corner of it (CENT's TTFT ran under a
            # lower-right legend, "best" laid it over the TPOT curves)
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        else:  # no side completed a request: nothing to draw (a legend would warn that it is empty)
            ax.text(0.5, 0.5, "no completed requests", transform=ax.transAxes, ha="center", va="center",
                    color="gray")
    fig.suptitle(fit_title(f"{_sides_title(model, sides, fig)}\n"
                           f"CENT {sides['CENT']['completed']} completed, {sides['CENT']['failed']} failed; "
                           f"GPU {sides['GPU']['completed']} completed, {sides['GPU']['failed']} failed"
                           + (f"\ngiven: {given}" if given else ""), fig, 11), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def _sides_title(model: str, sides: dict, fig: Figure) -> str:
    """`model: CENT's hardware vs the GPUs'` on one line where it fits, else with `vs` beginning a second
    line: broken only where it reached the width, compare_sweep.png's title read 'pp 1 x' over a lone
    'tp 4', the GPUs' mapping cut in two."""
    cent, gpu = sides["CENT"]["hardware"], sides["GPU"]["hardware"]
    one = f"{model}: {cent} vs {gpu}"
    return one if "\n" not in fit_title(one, fig, 11) else f"{model}: {cent}\nvs {gpu}"


def plot_sweep(path: Path, sweep: dict, sides: dict, model: str, given: str = "") -> None:
    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 2)
    labels = {}
    for ax, (metric, name) in zip(axes, (("tpot", "TPOT"), ("e2el", "E2E latency"))):
        shown = [r[f"{p}_{metric}_ms"] for rows in sweep.values() for r in rows for p in ("median", "p99")
                 if r.get(f"{p}_{metric}_ms") is not None]
        div, unit = latency_unit(shown or [1.0])
        for k, rows in sweep.items():
            thr = [r["output_throughput"] for r in rows]
            for p, style in (("median", "o-"), ("p99", "s--")):
                ax.plot(thr, [np.nan if r.get(f"{p}_{metric}_ms") is None else r[f"{p}_{metric}_ms"] / div
                              for r in rows], style, color=COLORS[k], label=f"{k} {name} {'p50' if p == 'median' else p}")
            labels.setdefault(ax, []).append((COLORS[k], [(x, r[f"p99_{metric}_ms"] / div, r["rate"])
                                                          for r, x in zip(rows, thr)
                                                          if r.get(f"p99_{metric}_ms") is not None]))
        ax.set_xlabel("output throughput (tok/s, simulated)")
        ax.set_ylabel(f"{name} ({unit}, simulated)")
        ax.set_title(f"{name} against throughput, one point per request rate")
        ax.set_ylim(0, 1.25 * max(shown or [1.0]) / div)  # headroom for the rate labels
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + 0.06 * (hi - lo))  # and room on the right for the rightmost point's label
        plain_axis(ax.xaxis)
        plain_axis(ax.yaxis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(fit_title(_sides_title(model, sides, fig)
                           + (f"\ngiven: {given}" if given else ""), fig, 11), fontsize=11)
    fig.tight_layout()
    for ax, points in labels.items():  # once the layout is final: the overlap test is in display space
        place_rate_labels(ax, points)
    fig.savefig(path, dpi=DPI)
