"""`cent bench sweep` (one trace at several request rates) and `cent bench paper` (the paper's
mappings on one trace, beside the GPU baselines). Both run in-process in virtual time."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, PercentFormatter
from matplotlib.transforms import ScaledTranslation

from cent_serve.bench.plots import (DPI, SLO_OFF_AXIS, fit_title, fmt_in, fmt_ms, latency_unit, place_rate_labels,
                                    plain_axis, widen_if_flat)
from cent_serve.bench.report import (hardware_text, kind_notes, mapping_text, per_token_terms_mj, price_notes,
                                     reasons_text, replay_fixes, source_text, summarize, tco_figures)
from cent_serve.bench.runner import run_in_process
from cent_serve.timing import hardware_timer
from cent_serve.timing.mapping import parallelism
from cent_serve.config import CentConfig, config_to_dict, model_label
from cent_serve.preflight import check_runnable

DISTSERVE_ATTAINMENT = 0.9
"""DistServe's goodput: the highest rate at which this share of requests meets every SLO."""
LEGEND_BELOW_PT = 34
"""How far below its panel a legend under the panel starts (points): past the tick labels and the
axis label, whatever the panel's height."""
LABEL_ZORDER = 4
"""The attainment labels' (over their white boxes); the lines they sit on are drawn below it."""


def run_sweep(cfg: CentConfig, requests_at: Callable[[float], list], rates: list[float], slos: dict[str, float],
              out_dir: Path, plots: bool = True, bench: dict | None = None, given: str = "") -> dict:
    """One in-process replay per rate; writes sweep.json and (`plots`) sweep.png; returns the sweep.
    `bench`: the options that shaped the requests, recorded in sweep.json (read when it is written);
    `given`: what changed the config (`cli_common.given_overrides`), in sweep.json and the titles.
    What cannot run is refused first (`preflight.check_runnable(cfg)`, once: before `requests_at` reads
    the trace and before anything is written; the replays do not check it again).

    A row's `slo_attainment` is the share of all its requests that completed within every SLO,
    so failed requests count as missing them; `failed` and `failure_counts` say how many failed.
    """
    check_runnable(cfg)
    rows, status = [], {}
    for i, rate in enumerate(rates):  # the rates replay one trace: its 0-token warning once
        requests = requests_at(rate)
        if i == 0:  # after the first selection, which fills in `bench`
            print(sweep_title(cfg, rates, bench or {}, given))
        result = run_in_process(cfg, requests, total=len(requests), warn=i == 0, desc=f"rate {rate:g}",
                                checked=True)
        status = result.status
        s = summarize(result, slos)
        priced = tco_figures(cfg, s["total_token_throughput"])  # as bench run's summary.json and bench compare
        row = dict(rate=rate, **{k: v for k, v in s.items() if not isinstance(v, dict)},
                   tokens_per_tco=priced["tokens_per_tco"])
        # summary.json's joules by term and their shares: dicts, or null on GPUs (then already in the row)
        row.update(failure_counts={k: v["count"] for k, v in s["failure_reasons"].items()},
                   energy_by_term_j=s["energy_by_term_j"], energy_share_by_term=s["energy_share_by_term"])
        rows.append(row)
        print(_sweep_line(rate, dict(s, tokens_per_tco=row["tokens_per_tco"]), slos))
    for line in replay_fixes({k for r in rows for k in r["failure_counts"]}):  # what the flags do about them
        print(line)
    for note in price_notes(cfg, priced["tco"]) + kind_notes(cfg) if rows else []:  # one price for every rate
        print(f"note: {note}")
    ok = [r["rate"] for r in rows if slos and r.get("slo_attainment", 0.0) >= DISTSERVE_ATTAINMENT]
    sweep = dict(rates=rates, slos_ms=slos, rows=rows, model=status.get("model", cfg.model.name),
                 model_label=model_label(cfg.model),
                 hardware=cfg.hardware,
                 mapping=status.get("mapping", {}),
                 distserve_goodput_rate=max(ok) if ok else None, attainment_threshold=DISTSERVE_ATTAINMENT,
                 bench=bench, given=given)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    write_config(out_dir, cfg, bench)
    if plots:
        _plot_sweep(out_dir, sweep)
    return sweep


def sweep_title(cfg: CentConfig, rates: list[float], bench: dict, given: str = "") -> str:
    """What the sweep replays, before its first rate: bench run's title line and the rates."""
    mp = hardware_timer(cfg).mapping
    status = dict(hardware=cfg.hardware, mapping=dict(mode=mp.mode, pp=mp.pp, tp=mp.tp, devices_used=mp.devices_used,
                                                      replicas=mp.replicas))
    devices = cfg.gpu.count if cfg.on_gpus else cfg.parallel.num_devices
    source = f"; {source_text(bench)}" if bench.get("trace") else ""
    return (f"{model_label(cfg.model)} on {hardware_text(status, devices)}: {mapping_text(status)}{source}; "
            f"rates {', '.join(f'{r:g}' for r in rates)} req/s" + (f"; given: {given}" if given else ""))


def write_config(out_dir: Path, cfg: CentConfig, bench: dict | None) -> None:
    """config.json beside the results, as `bench run` writes it: the resolved config (every `--set`
    and config file value; `cent ... --config` reads it back) and under `bench` the requests' options."""
    (out_dir / "config.json").write_text(json.dumps(dict(config_to_dict(cfg), bench=bench or {}), indent=2,
                                                    default=str) + "\n")


def _sweep_line(rate: float, s: dict, slos: dict) -> str:
    """The terminal line of one rate (`s`: its summary with its `tokens_per_tco`): done and failed (by
    reason), throughput, p99s, tokens per dollar (the CENT artifact's TCO convention), attainment."""
    reasons = reasons_text(s["failure_reasons"])
    line = (f"rate {rate:>8.3f} req/s: {s['completed']} done, {s['failed']} failed"
            + (f" ({reasons})" if reasons else "")
            + f", output {s['output_throughput']:.1f} tok/s, p99 TTFT {fmt_ms(s['p99_ttft_ms'])}, "
              f"p99 TPOT {fmt_ms(s['p99_tpot_ms'])}")
    if s.get("tokens_per_tco") is not None:  # `tco_figures`: None without a price (a note says why)
        line += f", {s['tokens_per_tco']:,.1f} tok/s per TCO unit"
    if slos:
        line += f", SLO attainment {100 * s['slo_attainment']:.1f}% of all requests"
    return line


def _plot_sweep(out_dir: Path, sweep: dict) -> None:
    """2 x 2: TTFT and TPOT against throughput (each point labelled with its rate), SLO attainment
    against rate, and completed/failed requests per rate."""
    rows = sweep["rows"]
    slos = sweep["slos_ms"]
    fig = Figure(figsize=(13, 9))
    axes = fig.subplots(2, 2)
    thr = [r["output_throughput"] for r in rows]
    labels = {ax: _latency_vs_throughput(ax, rows, thr, metric, name, slos.get(metric))
              for ax, metric, name in ((axes[0, 0], "ttft", "TTFT"), (axes[0, 1], "tpot", "TPOT"))}
    _attainment(axes[1, 0], sweep)
    _outcomes(axes[1, 1], rows)
    slo_text = ", ".join(f"{k} {fmt_ms(v)}" for k, v in slos.items()) or "none (give --goodput)"
    n = rows[0]["completed"] + rows[0]["failed"] if rows else 0
    status = dict(model=sweep["model"], mapping=sweep["mapping"], hardware=sweep.get("hardware", "cent"))
    model = sweep.get("model_label") or sweep["model"]
    given = f"\ngiven: {sweep['given']}" if sweep.get("given") else ""
    fig.suptitle(fit_title(f"{model} on {hardware_text(status, sweep['mapping'].get('devices', '?'))}: "
                      f"{mapping_text(status)}\n{n} requests per rate; SLOs: {slo_text}{given}", fig, 11), fontsize=11)
    fig.tight_layout()
    for ax, points in labels.items():  # once the layout is final: the overlap test is in display space
        place_rate_labels(ax, [("black", points)])
    fig.savefig(out_dir / "sweep.png", dpi=DPI)


def _latency_vs_throughput(ax, rows: list[dict], thr: list[float], metric: str, name: str,
                           slo_ms: float | None) -> list[tuple[float, float, float]]:
    """The panel, and its p99 points to name the rates of ([(x, y, rate)], data coordinates): the
    caller places their labels (`place_rate_labels`) once the figure's layout is final."""
    vals = {p: [r[f"{p}_{metric}_ms"] for r in rows] for p in ("median", "p99")}
    shown = [v for vs in vals.values() for v in vs if v is not None]
    div, unit = latency_unit(shown + ([slo_ms] if slo_ms is not None and shown
                                      and slo_ms <= SLO_OFF_AXIS * max(shown) else []))
    for p, style, label in (("median", "o-", "p50"), ("p99", "s--", "p99")):
        ax.plot(thr, [np.nan if v is None else v / div for v in vals[p]], style, label=f"{name} {label}")
    drawn = slo_ms is not None and shown and slo_ms <= SLO_OFF_AXIS * max(shown)
    if drawn:
        ax.axhline(slo_ms / div, color="tab:red", lw=1.2, label=f"SLO {fmt_in(slo_ms, div, unit)}")
    elif slo_ms is not None:
        ax.plot([], [], " ", label=f"SLO {fmt_in(slo_ms, div, unit)} (above the axis)")
    top = max(shown + ([slo_ms] if drawn else []), default=1.0) / div
    ax.set_ylim(0, 1.35 * top if top > 0 else 1.0)  # headroom: the legend and rate labels sit above the points
    ax.margins(x=0.12)  # room for the rate label of the rightmost point
    if thr:
        widen_if_flat(ax, min(thr), max(thr))  # a saturated sweep: every rate at one throughput
    ax.set_xlabel("output throughput (tok/s, simulated)")
    ax.set_ylabel(f"{name} ({unit}, simulated)")
    ax.set_title(f"{name} vs throughput (completed requests; p99 labelled by request rate)", fontsize=11)
    plain_axis(ax.xaxis)
    plain_axis(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    return [(x, y / div, r["rate"]) for x, y, r in zip(thr, vals["p99"], rows) if y is not None]


def _rate_axis(ax, rates: list[float]) -> None:
    """Ticks at the swept rates; a log axis when they span a factor of 8 or more."""
    if min(rates) > 0 and max(rates) / min(rates) >= 8:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(rates, [f"{r:g}" for r in rates])


def _attainment(ax, sweep: dict) -> None:
    rows = sweep["rows"]
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("requests within every SLO (% of all)")
    ax.grid(alpha=0.3)
    if not sweep["slos_ms"]:
        ax.set_title("SLO attainment: give --goodput ttft:MS tpot:MS")
        return
    att = [100 * r["slo_attainment"] for r in rows]
    ax.plot(sweep["rates"], att, "o-", label="attainment (failed requests miss)")
    for x, y in zip(sweep["rates"], att):  # on white: readable where the goodput or threshold line crosses
        ax.annotate(f"{y:.0f}%", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8,
                    zorder=LABEL_ZORDER, bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1))
    ax.axhline(100 * sweep["attainment_threshold"], ls=":", color="gray",
               label=f"DistServe threshold {100 * sweep['attainment_threshold']:.0f}%")
    g = sweep["distserve_goodput_rate"]
    ax.axvline(g if g is not None else np.nan, ls="--", color="tab:green", zorder=LABEL_ZORDER - 1,
               label=f"goodput {g:g} req/s" if g is not None else "goodput: no rate meets the threshold")
    ax.set_ylim(0, 110)
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    _rate_axis(ax, sweep["rates"])
    ax.set_title("SLO attainment vs rate")
    # under the panel: the points may be anywhere from 0% to 100%, and inside, a legend covered some
    # (at the lowest rate in the lower left); tight_layout makes room for it
    below = ax.transAxes + ScaledTranslation(0, -LEGEND_BELOW_PT / 72, ax.figure.dpi_scale_trans)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncol=2)


def _outcomes(ax, rows: list[dict]) -> None:
    x = np.arange(len(rows))
    done = [r["completed"] for r in rows]
    failed = [r["failed"] for r in rows]
    b1 = ax.bar(x, done, color="tab:blue", label="completed")
    ax.bar_label(b1, label_type="center", fontsize=8, color="white")
    if any(failed):  # no legend entry for a bar no rate has
        b2 = ax.bar(x, failed, bottom=done, color="tab:red", label="failed")
        ax.bar_label(b2, labels=[str(f) if f else "" for f in failed], label_type="center", fontsize=8,
                     color="white")
    ax.set_xticks(x, [f"{r['rate']:g}" for r in rows])
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("requests")
    plain_axis(ax.yaxis, integer=True)
    ax.set_ylim(0, 1.2 * max([d + f for d, f in zip(done, failed)], default=1))
    ax.set_title("completed and failed requests per rate" if any(failed) else
                 "completed requests per rate (none failed)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax.grid(axis="y", alpha=0.3)


def run_paper(cfg: CentConfig, requests: list, mappings: list[tuple[int, int]], out_dir: Path,
              bench: dict | None = None, plots: bool = True, given: str = "") -> list[dict]:
    """The same trace on every mapping; a table (paper.json, paper.csv) and, with `plots`, a plot, with
    the GPU baseline of docs/hardware_model.md section 9 beside the emulated throughput. `bench`: the
    options that shaped the requests, recorded in paper.json; `given`: the settings that changed the
    config (`cli_common.given_overrides`), printed and in the plot's title: a changed device is not
    the paper's, whose GPU ratios these are."""
    from cent_serve.timing.energy import cost_figures, gpu_baseline, paper_gpu_price, term_cells

    if given:
        print(f"given: {given}")

    rows, skipped = [], []
    for pp, tp in mappings:
        c = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, pp=pp, tp=tp))
        try:
            check_runnable(c)
        except ValueError as exc:  # this mapping cannot hold the model: say so, go on with the others
            skipped.append(dict(pp=pp, tp=tp, reason=str(exc)))
            print(f"pp {pp:>3} tp {tp:>2}: skipped: {exc}")
            continue
        res = run_in_process(c, requests, total=len(requests), warn=not rows,  # one 0-token warning
                             desc=f"pp {pp} tp {tp}", checked=True)
        s = summarize(res)
        mp = res.status["mapping"]
        row = dict(pp=pp, tp=tp, parallelism=parallelism(pp, tp), mode=mp["mode"], replicas=mp["replicas"],
                   devices_used=mp["devices_used"],
                   completed=s["completed"], failed=s["failed"],
                   failure_counts={k: v["count"] for k, v in s["failure_reasons"].items()},
                   output_throughput=s["output_throughput"],
                   total_token_throughput=s["total_token_throughput"], median_ttft_ms=s["median_ttft_ms"],
                   p99_ttft_ms=s["p99_ttft_ms"], median_tpot_ms=s["median_tpot_ms"], p99_tpot_ms=s["p99_tpot_ms"],
                   energy_per_token_mj=s["energy_per_token_mj"],
                   **term_cells(per_token_terms_mj(s)),  # energy_<term>_mj: they add up to energy_per_token_mj
                   wall_s=s["wall_s"],
                   lanes=mp["lanes"] * mp["max_seqs_per_stage"])  # the queries it runs at once when full
        row["mean_in_flight"] = mean_in_flight(res.records, row["lanes"])
        priced = tco_figures(c, s["total_token_throughput"])  # every device bought: one price for every mapping
        row["tokens_per_tco"] = priced["tokens_per_tco"]
        # the command's purpose: the paper's baseline beside a trace (its GPUs priced at gpu.tco_per_gpu when set for theirs)
        cost = cost_figures(cfg.model, mp["devices_used"] * mp["replicas"], cfg.parallel.num_devices,
                            s["total_token_throughput"], "end2end", s["energy_per_token_mj"], cfg.device,
                            against_paper=True, tco_per_gpu=paper_gpu_price(cfg.gpu.kind, cfg.gpu.tco_per_gpu))
        row.update({k: cost[k] for k in ("gpu_throughput_tok_s", "throughput_ratio", "tokens_per_dollar_ratio")
                    if k in cost})
        rows.append(row)
        reasons = reasons_text(s["failure_reasons"])
        print(f"pp {pp:>3} tp {tp:>2}: {s['completed']} done, {s['failed']} failed"
              + (f" ({reasons})" if reasons else "") + ", "
              f"{s['total_token_throughput']:>9.1f} tok/s ({row['tokens_per_tco']:,.1f} per TCO unit), "
              f"TTFT p50 {fmt_ms(s['median_ttft_ms'])}, "
              f"TPOT p50 {fmt_ms(s['median_tpot_ms'])}, {row['mean_in_flight']:.3g} of {row['lanes']} "
              f"{'lanes' if mp['max_seqs_per_stage'] == 1 else 'places'} in flight"
              + (f", {row['throughput_ratio']:.2f}x GPU" if "throughput_ratio" in row else ""))
    if not rows:
        raise ValueError(f"no mapping of {cfg.model.name} on {cfg.parallel.num_devices} devices holds the model: "
                         f"{skipped[0]['reason']}")
    if any("throughput_ratio" in r for r in rows):  # say what "x GPU" is against
        print(_paper_baseline_note(gpu_baseline(cfg.model, cfg.device)))
    for note in price_notes(cfg, priced["tco"]):  # per TCO unit: a changed device priced as the paper's
        print(f"note: {note}")
    if any(r["mean_in_flight"] < FULL_LANES * r["lanes"] for r in rows):
        print(LANES_NOTE)
    for line in replay_fixes({k for r in rows for k in r["failure_counts"]}):  # what the flags do about them
        print(line)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, cfg, bench)  # each row's pp and tp are its own (paper.json), the rest is this
    (out_dir / "paper.json").write_text(json.dumps(dict(model=cfg.model.name, devices=cfg.parallel.num_devices,
                                                        gpu_baseline=gpu_baseline(cfg.model, cfg.device),
                                                        rows=rows, skipped=skipped, bench=bench), indent=2) + "\n")
    keys = [k for k, v in rows[0].items() if not isinstance(v, dict)]  # failure_counts: in paper.json
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    (out_dir / "paper.csv").write_text("\n".join(lines) + "\n")
    if plots:
        _plot_paper(out_dir, cfg, rows, gpu_baseline(cfg.model, cfg.device), given)
    return rows


FULL_LANES = 0.75
"""A mapping whose queries in flight average under this share of its lanes ran below its
throughput (`LANES_NOTE`)."""
LANES_NOTE = ("lanes in flight: the queries a mapping ran at once, averaged over the run (places: lanes x "
              "scheduler.max_seqs_per_stage); its throughput is the paper's only with every lane full. A mapping of "
              "many lanes needs as many requests, and a finite trace ends with its last ones running nearly alone at "
              "one query's pace (its TPOT): more --num-requests, or cent simulate for the steady state")


def mean_in_flight(records: list, places: int) -> float:
    """The queries a run held at once, averaged over it (Little's law): each request's time from its
    first step to its end (a failed one's too), summed, over the first step to the last end; at most
    `places` (a request's end counts the host's sampling after its last round, while the next one's
    first round may already run: 1.03 of one lane, read as 1). 0 for a run that held none."""
    held = [(r.scheduled_s, r.finish_s) for r in records if r.scheduled_s is not None and r.finish_s is not None]
    if not held:
        return 0.0
    span = max(end for _, end in held) - min(start for start, _ in held)
    if span <= 0:
        return float(min(places, len(held)))
    return min(float(places), sum(end - start for start, end in held) / span)


def _paper_baseline_note(gpu: dict) -> str:
    """What `bench paper`'s "x GPU" divides by (docs/hardware_model.md section 9)."""
    from cent_serve.timing.energy import PAPER_WORKLOAD
    return (f"x GPU: against {gpu['gpus']} A100-80GB as the CENT artifact measured it ({gpu['end2end']:,.0f} tok/s end "
            f"to end, static batches of {PAPER_WORKLOAD[0]} + {PAPER_WORKLOAD[1]} tokens, transformers' eager "
            "attention), not this trace on GPUs: cent bench compare --gpu KIND:N replays it on modelled GPUs")


def _plot_paper(out_dir: Path, cfg: CentConfig, rows: list[dict], gpu: dict | None, given: str = "") -> None:
    """Throughput per mapping beside the GPU baseline, then TTFT and TPOT p50/p99 per mapping;
    every bar labelled with its value."""
    from cent_serve.timing.energy import PAPER_WORKLOAD
    labels = [f"pp {r['pp']} x tp {r['tp']}\n{r['parallelism']}, {r['devices_used']} used"
              + (f" x {r['replicas']}" if r["replicas"] > 1 else "") for r in rows]
    x = np.arange(len(rows))
    # one panel above the other: every mapping's two-line label gets the panel's full width
    fig = Figure(figsize=(max(9, 1.7 * len(rows) + 3), 12))
    axes = fig.subplots(3, 1, sharex=True)
    bars = axes[0].bar(x, [r["total_token_throughput"] for r in rows], color="tab:blue",
                       label="CENT (emulated, this trace)")
    axes[0].bar_label(bars, labels=[f"{r['total_token_throughput']:,.0f}" + (f"\n{r['throughput_ratio']:.2f}x GPU"
                                    if "throughput_ratio" in r else "") for r in rows], fontsize=8, padding=2,
                       bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1))  # readable over the line
    if gpu:
        axes[0].axhline(gpu["end2end"], color="tab:red", ls="--",
                        label=f"{gpu['gpus']} x A100-80GB as the CENT artifact measured it ({PAPER_WORKLOAD[0]} + "
                              f"{PAPER_WORKLOAD[1]}-token static batches, eager attention): {gpu['end2end']:,.0f}")
    axes[0].set_ylabel("tokens/s (prompt + output, simulated)")
    axes[0].set_title("throughput at this trace's arrivals")
    axes[0].legend(fontsize=8, loc="upper left")
    axes[0].set_ylim(0, 1.25 * max([r["total_token_throughput"] for r in rows] + [gpu["end2end"] if gpu else 0]))
    for ax, metric, name in ((axes[1], "ttft", "TTFT"), (axes[2], "tpot", "TPOT")):
        _latency_bars(ax, rows, x, metric, name)
    axes[-1].set_xticks(x, labels, fontsize=8)
    for ax in axes:
        plain_axis(ax.yaxis)
        ax.grid(axis="y", alpha=0.3)
    n = rows[0]["completed"] + rows[0]["failed"] if rows else 0
    title = (f"{model_label(cfg.model)} on {cfg.parallel.num_devices} CENT devices, the paper's mappings: "
             f"{n} requests each\n{_paper_failures(rows)}" + (f"\ngiven: {given}" if given else ""))
    fig.suptitle(fit_title(title, fig, 11), fontsize=11)
    fig.tight_layout()
    fig.savefig(out_dir / "paper.png", dpi=DPI)


def _paper_failures(rows: list[dict]) -> str:
    """`1 failed on every mapping (context_exceeded 1)`, or the failures mapping by mapping."""
    def text(r: dict) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in r["failure_counts"].items())
        return f"{r['failed']} failed" + (f" ({reasons})" if reasons else "")
    if all(text(r) == text(rows[0]) for r in rows):
        return f"{text(rows[0])} on every mapping" if rows and rows[0]["failed"] else "no request failed"
    return "; ".join(f"pp {r['pp']} x tp {r['tp']}: {text(r)}" for r in rows)


def _latency_bars(ax, rows: list[dict], x: np.ndarray, metric: str, name: str) -> None:
    vals = {p: [r.get(f"{p}_{metric}_ms") for r in rows] for p in ("median", "p99")}
    div, unit = latency_unit([v for vs in vals.values() for v in vs if v is not None])
    for off, (p, label, color) in zip((-0.2, 0.2), (("median", "p50", "tab:blue"), ("p99", "p99", "tab:orange"))):
        heights = [0.0 if v is None else v / div for v in vals[p]]
        bars = ax.bar(x + off, heights, width=0.4, label=label, color=color)
        ax.bar_label(bars, labels=[fmt_in(v, div, unit) for v in vals[p]], fontsize=7, rotation=90, padding=2)
    top = max([v / div for vs in vals.values() for v in vs if v is not None], default=1.0)
    ax.set_ylim(0, 1.3 * top)
    ax.set_ylabel(f"{name} ({unit}, simulated)")
    ax.set_title(f"{name} of the completed requests")
    ax.legend(fontsize=8, loc="upper left")
