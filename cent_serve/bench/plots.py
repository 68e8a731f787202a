"""PNG plots of a bench run (matplotlib, headless): latency CDFs, the engine over time,
per-device utilization; and the helpers `cent bench sweep`, `paper` and `compare` share (axes,
rate labels that cover no other).

Every figure's title names the model, the devices and the mapping, and how many requests
completed and failed. Axes are plain numbers (never an offset such as `1e-10+2.377e-1`), with few
enough ticks not to overlap; latencies are in ms or s, whichever reads better for the data.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter, ScalarFormatter

from cent_serve.bench.report import run_title
from cent_serve.bench.records import BenchResult
from cent_serve.executor.base import busy_fraction

SECONDS_FROM_MS = 5000.0
"""Latency axes switch from ms to s when the largest value shown reaches this many ms."""
MAX_TICKS = 6
"""Tick labels per axis at most: wide numbers on narrow panels must not overlap."""
DPI = 110
SLO_OFF_AXIS = 2.0
"""An SLO beyond this multiple of the largest value is named in the legend, not drawn (it would
squash the data into the left edge)."""


# ------------------------------------------------------------------ shared helpers

def latency_unit(values_ms: list[float]) -> tuple[float, str]:
    """(divisor from ms, unit name) for an axis showing `values_ms`: s for long latencies."""
    top = max((abs(v) for v in values_ms), default=0.0)
    return (1e3, "s") if top >= SECONDS_FROM_MS else (1.0, "ms")


def fmt_ms(value_ms: float | None) -> str:
    """A latency for a label: `255 ms`, `0.317 ms`, `1.82 s`, `175 s`."""
    if value_ms is None:
        return "-"
    if abs(value_ms) >= 1e3:
        return f"{value_ms / 1e3:.3g} s"
    return f"{value_ms:.3g} ms"


def fmt_in(value_ms: float | None, div: float, unit: str) -> str:
    """A latency in an axis's unit (`latency_unit`), so labels read like the axis: `1,822 ms`."""
    if value_ms is None:
        return "-"
    v = value_ms / div
    return f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:.3g} {unit}"


def plain_axis(axis, integer: bool = False) -> None:
    """Plain tick labels (no offset, no scientific notation) and at most MAX_TICKS of them."""
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    axis.set_major_locator(MaxNLocator(nbins=MAX_TICKS, integer=integer, min_n_ticks=2))


def widen_if_flat(ax, lo: float, hi: float, which: str = "x") -> None:
    """Give an axis a visible span when the data are (nearly) one value: matplotlib would zoom
    into a span of ~1e-10 and label it with an offset."""
    if hi - lo > 1e-6 * max(abs(hi), abs(lo), 1e-12):
        return
    pad = 0.1 * abs(hi) if hi else 1.0
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo - pad, hi + pad)


RATE_LABEL_POINTS = 7
"""Font size of the rate labels beside the p99 points of sweep.png and compare_sweep.png."""
RATE_LABEL_STYLES = (dict(xytext=(3, 5)),  # beside the point, above right
                     dict(xytext=(0, 7), rotation=90, ha="center", va="bottom"))  # upright above it
"""How a series' rate labels are set, tried in order until none covers another label."""


def place_rate_labels(ax, series: list[tuple[str, list[tuple[float, float, float]]]]) -> None:
    """Name the rate of each point, per series (color, [(x, y, rate)], data coordinates), with
    no two labels overlapping: each beside its point; when a series' labels would cover each
    other (or another series'), upright above their points; when even those would, one label
    listing the series' rates from left to right. Call once the limits and layout are final."""

    def boxes(labels: list[tuple[float, float, str]], style: dict) -> list:
        out = []
        for x, y, text in labels:
            probe = ax.annotate(text, (x, y), textcoords="offset points", fontsize=RATE_LABEL_POINTS, **style)
            out.append(probe.get_window_extent().padded(1.5))  # measured as savefig draws a PNG (Agg)
            probe.remove()
        return out

    def clear(new: list, placed: list) -> bool:
        return not any(a.overlaps(b) for i, a in enumerate(new) for b in new[i + 1:] + placed)

    placed: list = []
    for color, points in series:
        labels = [(x, y, f"{rate:g}/s") for x, y, rate in points]
        for style in RATE_LABEL_STYLES:
            new = boxes(labels, style)
            if clear(new, placed):
                break
        else:  # too crowded for a label each: one for the series, at its rightmost point
            ordered = sorted(points)
            x, y, _ = ordered[-1]
            labels = [(x, y, ", ".join(f"{r:g}" for _, _, r in ordered) + " req/s, left to right")]
            style = RATE_LABEL_STYLES[0]
            new = boxes(labels, style)
            if new[0].x1 > ax.get_window_extent().x1:  # past the axes' right edge: end at the point
                style = dict(xytext=(-3, 5), ha="right")
                new = boxes(labels, style)
        placed += new
        for x, y, text in labels:
            ax.annotate(text, (x, y), textcoords="offset points", fontsize=RATE_LABEL_POINTS, color=color,
                        annotation_clip=False, **style)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def _clock(result: BenchResult) -> str:
    """What the times are: simulated, unless the server gave none (a non-cent server)."""
    return "simulated" if result.status else "wall clock"


# ------------------------------------------------------------------ latency CDFs

def share_axis(ax) -> None:
    """A latency CDF's y axis, bench run's and bench compare's alike: the share of completed
    requests, 0% to 100%."""
    ax.set_ylabel("share of completed requests")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(0, 1.02)


def _cdf(ax, name: str, short: str, values_ms: list[float], slo_ms: float | None, clock: str) -> None:
    """One CDF panel: the curve, p50 and p99 lines, the SLO line and the share within it."""
    ax.set_title(name)
    share_axis(ax)
    ax.grid(alpha=0.3)
    if not values_ms:
        ax.text(0.5, 0.5, "no completed requests", ha="center", va="center", transform=ax.transAxes)
        return
    x = np.sort(np.asarray(values_ms, dtype=float))  # (n,)
    draw_slo = slo_ms is not None and slo_ms <= SLO_OFF_AXIS * x[-1]
    div, unit = latency_unit([x[-1]] + ([slo_ms] if draw_slo else []))
    # a step per request from (first, 0): one request still draws a visible line
    ax.step(np.r_[x[0], x] / div, np.r_[0.0, np.arange(1, x.size + 1) / x.size], where="post",
            color="tab:blue", lw=1.8)
    p50, p99 = np.percentile(x, 50), np.percentile(x, 99)
    ax.axvline(p50 / div, color="tab:gray", ls="--", lw=1, label=f"p50 {fmt_in(p50, div, unit)}")
    ax.axvline(p99 / div, color="tab:orange", ls="--", lw=1, label=f"p99 {fmt_in(p99, div, unit)}")
    if slo_ms is not None:
        within = float(np.mean(x <= slo_ms))
        label = f"SLO {fmt_in(slo_ms, div, unit)}: {100 * within:.0f}% of completed within"
        if draw_slo:
            ax.axvline(slo_ms / div, color="tab:red", lw=1.5, label=label)
        else:
            ax.plot([], [], " ", label=label + " (right of the axis)")
    hi = max(x[-1], slo_ms if draw_slo else x[-1]) / div
    ax.set_xlim(min(0.0, x[0] / div), 1.05 * hi if hi > 0 else 1.0)  # from 0: latencies read against 0
    plain_axis(ax.xaxis)
    ax.set_xlabel(f"{short} ({unit}, {clock})")
    ax.legend(loc="best", fontsize=8, framealpha=0.9)


def plot_latency_cdfs(path: Path, result: BenchResult, summary: dict) -> None:
    """TTFT, TPOT and E2E latency CDFs of the completed requests."""
    ok = [r for r in result.records if r.ok]
    slos = summary.get("goodput_slos_ms") or {}
    clock = _clock(result)
    fig = Figure(figsize=(14, 4.6))
    axes = fig.subplots(1, 3)
    _cdf(axes[0], "time to first token", "TTFT", [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None],
         slos.get("ttft"), clock)
    _cdf(axes[1], "time per output token", "TPOT", [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None],
         slos.get("tpot"), clock)
    _cdf(axes[2], "end-to-end latency", "E2E latency", [r.e2e_s * 1e3 for r in ok if r.e2e_s is not None],
         slos.get("e2el"), clock)
    fig.suptitle(fit_title(run_title(result.status, summary), fig, 11), fontsize=11)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------ the engine over time

FAILURE_MARKERS_MAX = 200
"""timeline.png marks each failed request at its arrival up to this many; more (14,709 of the whole
azure_conv_2023 on llama2-70b merged into one red band) are drawn as a rate, failures a second by reason,
in a row of their own (`failure_rates`)."""
FAILURE_BINS = 120
"""The failure-rate row's bins over the run."""
FAILURE_COLORS = {"queue_full": "tab:red", "context_exceeded": "tab:orange", "device_fault": "tab:brown"}
"""A failure reason's color in timeline.png (others: tab:gray)."""


def failure_rates(records: list, span_s: float, bins: int = FAILURE_BINS
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """(bin edges in s, {reason: failed requests a second in each bin}, {reason: failed requests}) of the
    failed `records` by their arrival, over 0..`span_s` (widened to the last failure), the reasons most
    frequent first in both."""
    failed = [(r.arrival_s, r.reason) for r in records if not r.ok]
    top = max([span_s] + [t for t, _ in failed])
    edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
    width = edges[1] - edges[0]
    counts = dict(Counter(reason for _, reason in failed).most_common())
    rates = {}
    for reason in counts:
        n, _ = np.histogram([t for t, why in failed if why == reason], bins=edges)
        rates[reason] = n / width
    return edges, rates, counts


def plot_timeline(path: Path, result: BenchResult, summary: dict) -> None:
    """Waiting requests (with failed requests marked at their arrival, or above FAILURE_MARKERS_MAX of
    them a row of their rate by reason), running sequences and KV usage over the run. The legends sit
    right of the axes, off the data."""
    s = result.samples
    t = [x.time_s for x in s]
    failed_at = sorted(r.arrival_s for r in result.records if not r.ok)
    as_rate = len(failed_at) > FAILURE_MARKERS_MAX
    fig = Figure(figsize=(11, 9.0 if as_rate else 7.5))
    grid = fig.add_gridspec(4 if as_rate else 3, 1, height_ratios=[3, 2, 3, 3] if as_rate else [1, 1, 1])
    rows = [0, 2, 3] if as_rate else [0, 1, 2]  # the failure rate under the waiting requests
    axes = [fig.add_subplot(grid[rows[0]])]
    axes += [fig.add_subplot(grid[r], sharex=axes[0]) for r in rows[1:]]  # fig.axes: waiting, running, KV, rate
    waiting = [x.num_waiting for x in s]
    axes[0].step(t, waiting, where="post", color="tab:blue", label="waiting")
    if failed_at and not as_rate:
        axes[0].plot(failed_at, [0] * len(failed_at), "|", color="tab:red", ms=14, mew=1.5,
                     label=f"failed request,\nat its arrival ({len(failed_at)})")
    if not any(waiting):
        axes[0].text(0.5, 0.55, "no request waited: the queue was empty after every round",
                     ha="center", va="center", transform=axes[0].transAxes, fontsize=9, color="tab:gray")
    if failed_at and not as_rate:  # else the axis's label names its one line
        _legend_outside(axes[0])
    axes[0].set_ylabel("waiting requests")
    axes[0].set_ylim(-0.05 * max(1, max(waiting, default=0)), 1.1 * max(1, max(waiting, default=0)))
    if as_rate:
        ax = fig.add_subplot(grid[1], sharex=axes[0])
        edges, rates, counts = failure_rates(result.records, max(t, default=0.0))
        bottom = np.zeros(len(edges) - 1)
        for reason, rate in rates.items():
            ax.bar(edges[:-1], rate, width=edges[1] - edges[0], bottom=bottom, align="edge", linewidth=0,
                   color=FAILURE_COLORS.get(reason, "tab:gray"), label=f"{reason} ({counts[reason]:,})")
            bottom += rate
        ax.set_ylabel("failed requests/s\n(at arrival)")
        ax.set_ylim(0, 1.1 * max(float(bottom.max(initial=0.0)), 1e-9))
        ax.set_title(f"{len(failed_at):,} failed in all; their rate in bins of {edges[1] - edges[0]:.3g} s",
                     fontsize=9, loc="right")
        _legend_outside(ax)
        ax.grid(alpha=0.3)
        plain_axis(ax.yaxis)
        axes.append(ax)
    running = [x.num_running for x in s]
    axes[1].step(t, running, where="post", color="tab:green")
    axes[1].set_ylabel("running sequences")
    axes[1].set_ylim(0, 1.1 * max(1, max(running, default=0)))
    kv = [x.kv_usage for x in s]
    peak = max(kv, default=0.0)
    axes[2].step(t, kv, where="post", color="tab:purple")
    axes[2].set_ylabel("KV cache in use")
    # a peak under 0.001% (none, or a few tokens in a large cache) on the whole 0-100% axis: ticks 4
    # decimals cannot tell apart read "0%, 0%, 0%"
    shown = peak if peak >= 1e-5 else 1.0
    axes[2].set_ylim(0, shown * 1.15 if shown < 1.0 else 1.0)
    axes[2].yaxis.set_major_formatter(PercentFormatter(1.0, decimals=_percent_decimals(shown)))
    axes[2].yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))  # ticks the decimals can show
    peak_text = (f"{100 * peak:.{_percent_decimals(peak)}f}%" if peak == 0 or peak >= 1e-5
                 else f"{100 * peak:.1g}%")
    axes[2].set_title(f"peak {peak_text} of the KV blocks", fontsize=9, loc="right")
    axes[2].set_xlabel(f"time from the first arrival (s, {_clock(result)})")
    for ax, integer in zip(axes, (True, True, False)):
        ax.grid(alpha=0.3)
        if integer:
            plain_axis(ax.yaxis, integer=True)
    for ax in axes:
        if ax is not axes[2]:  # the times are read on the bottom row's axis
            ax.tick_params(labelbottom=False)
    plain_axis(axes[2].xaxis)
    fig.suptitle(fit_title(run_title(result.status, summary), fig, 11), fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _legend_outside(ax) -> None:
    """The axes' legend right of it, beside its top: on the data it covered the waiting line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def _percent_decimals(peak: float) -> int:
    """Decimals that show a peak of `peak` (a fraction) with two significant digits, and so ticks of
    1, 2 or 5 in the next digit (`MaxNLocator(steps=[1, 2, 5, 10])`) however small: capped at 4, the
    experts' busy panel of a peak of 0.0002% read its ticks every 0.00005% as "0.0001%" twice."""
    pct = 100 * peak
    if pct <= 0 or pct >= 10:
        return 0
    return int(np.ceil(-np.log10(pct))) + 1


# ------------------------------------------------------------------ utilization

UTILIZATION_TOP = 112.0
"""utilization.png's y-axis top, in percent: an upright label over a full bar fits below it."""
UTILIZATION_TOP_MANY = 130.0
"""The same with many devices, whose labels are turned upright (taller)."""


def plot_utilization(path: Path, result: BenchResult, summary: dict) -> None:
    """Each device's busiest resource (PIM channel group, accelerator, DMA, ...) as a share of the
    run, one labelled bar per device."""
    clock = result.clock_s or 1.0
    devs = result.devices
    replicas = len({d.get("replica", 0) for d in devs})
    names = [f"{d.get('replica', 0)}:{d['device_id']}" if replicas > 1 else str(d["device_id"]) for d in devs]
    busy = [100 * busy_fraction(d, clock) for d in devs]
    fig = Figure(figsize=(min(22, max(7, 0.32 * len(devs) + 2)), 4.4))
    ax = fig.subplots()
    bars = ax.bar(range(len(devs)), busy, color="tab:blue")
    many = len(devs) > 12
    ax.bar_label(bars, labels=[f"{b:.1f}%" for b in busy], fontsize=7 if many else 8,
                 rotation=90 if many else 0, padding=2)
    step = max(1, int(np.ceil(len(devs) / 40)))  # at most ~40 tick labels
    ax.set_xticks(range(0, len(devs), step), names[::step], fontsize=8)
    ax.set_xlim(-0.7, len(devs) - 0.3)
    unit = "GPU" if (result.status.get("mapping") or {}).get("mode") == "gpu" else "device"
    ax.set_xlabel(f"replica:{unit}" if replicas > 1 else unit)
    ax.set_ylabel("busiest resource, % of the run")
    # room above 100% for a full bar's label (turned, it is about a fifth of the axes' height), which
    # sat over the title at 99.9% (4 A100s on the whole azure_conv_2023); the ticks stop at 100%
    ax.set_ylim(0, UTILIZATION_TOP_MANY if many else UTILIZATION_TOP)
    ax.set_yticks(range(0, 101, 20))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}%"))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(fit_title(f"{run_title(result.status, summary)}\n{_utilization_note(result, devs, clock)}", fig, 10),
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _utilization_note(result: BenchResult, devs: list[dict], clock: float) -> str:
    """Which resource was busiest on most devices, over how long, and the devices not shown."""
    kinds = Counter(_resource_kind(max(d["busy_s"], key=d["busy_s"].get)) for d in devs if d["busy_s"])
    busiest = ", ".join(f"{k} on {n} device{'s' if n != 1 else ''}" for k, n in kinds.most_common())
    note = f"utilization over {clock:.4g} s ({_clock(result)}); busiest resource: {busiest or 'none'}"
    mp = result.status.get("mapping") or {}
    idle = mp.get("devices", 0) - mp.get("devices_used", 0) * mp.get("replicas", 1)
    if idle > 0:
        note += f"; {idle} device(s) hold no stage (not shown)"
    return note


def _resource_kind(name: str) -> str:
    """`group3` -> `PIM channels`: a device keeps one busy clock per channel group."""
    return "PIM channels" if name.startswith("group") else name


# ------------------------------------------------------------------ experts

def plot_experts(path: Path, result: BenchResult, summary: dict) -> None:
    """A mixture of experts' load: each expert's share of the routed tokens (over all blocks) against
    an even share, and where the hardware says one expert's time, its banks' busy fraction."""
    ex = result.status["experts"]
    tokens = np.asarray(ex["tokens"], dtype=np.float64)
    n = tokens.shape[0]
    share = 100 * tokens / tokens.sum() if tokens.sum() else tokens
    busy = ex.get("busy_fraction")
    fig = Figure(figsize=(min(22, max(7, 0.12 * n + 3)), 6.4 if busy else 3.8))
    axes = fig.subplots(2 if busy else 1, 1, sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.bar(range(n), share, color="tab:blue", width=0.8)
    ax.axhline(100 / n, color="black", lw=1, ls="--", label=f"even share ({100 / n:.3g}%)")
    ax.set_ylabel("routed tokens, % of all")
    ax.set_ylim(0, 1.25 * max(share.max(initial=0.0), 100 / n))  # room above the bars for the legend
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if busy:
        ax2 = axes[1, 0]
        pct = 100 * np.asarray(busy)
        ax2.bar(range(n), pct, color="tab:orange", width=0.8)
        ax2.set_ylabel("expert banks busy, % of the run")
        # no bank busy (every request failed before its first token): 0 to 1%, not matplotlib's -0.05 to 0.05
        # printed "-0%, 0%, 0%"
        shown = max(pct) / 100 or 0.01
        if not max(pct):
            ax2.set_ylim(0, 100 * shown)
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.{_percent_decimals(shown)}f}%"))
        ax2.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))  # not 0.025%: "0.03%, 0.05%, 0.08%"
        ax2.grid(axis="y", alpha=0.3)
    last = axes[-1, 0]
    step = max(1, int(np.ceil(n / 40)))
    last.set_xticks(range(0, n, step), [str(e) for e in range(0, n, step)], fontsize=8)
    last.set_xlim(-0.7, n - 0.3)
    last.set_xlabel("expert")
    note = (f"top {ex['top_k']} of {n} experts, {int(tokens.sum()):,} token-expert assignments over all blocks;\n"
            f"busiest expert {ex['imbalance']:.2f}x the mean\n(the time model's router, docs/hardware_model.md "
            "section 10)")  # a line each: a figure of 8 experts is 7 inches wide
    axes[0, 0].set_title(fit_title(f"{run_title(result.status, summary)}\n{note}", fig, 10), fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def fit_title(title: str, fig: Figure, fontsize: float, share: float = 0.85) -> str:
    """`title` with each line broken at spaces to `share` of the figure's width, measured in the
    font (a changed preset's label made a 7-inch figure's title run off both edges; an axes' title
    is centred on the axes, which the y label pushes right, hence less than the whole width); never
    between a flag and its value (`given: --set device.clock_hz=4e9` reads as one setting). Every
    title of bench's plots and of cent sweep's (`sweep_plots`) goes through it."""
    font, widest = FontProperties(size=fontsize), share * fig.get_figwidth() * 72  # points

    def width(text: str) -> float:
        return _TEXT.get_text_width_height_descent(text, font, ismath=False)[0]

    lines = []
    for line in title.split("\n"):
        words, now = [], ""
        for word in line.split(" "):  # "--set" and the value after it are one word
            if words and words[-1].startswith("--") and " " not in words[-1] and not word.startswith("--"):
                words[-1] += f" {word}"
            else:
                words.append(word)
        for word in words:
            if now and width(f"{now} {word}") > widest:
                lines.append(now)
                now = word
            else:
                now = f"{now} {word}" if now else word
        lines.append(now)
    return "\n".join(lines)


_TEXT = TextToPath()
"""Measures a title's lines in points (`fit_title`)."""


def plot_all(out_dir: Path, result: BenchResult, summary: dict) -> list[Path]:
    """latency_cdf.png, timeline.png and utilization.png in `out_dir`, and experts.png for a mixture
    of experts. `summary` is `summarize`'s (with the run's `model` and `devices`): titles and SLO
    lines come from it."""
    plots = [(plot_latency_cdfs, "latency_cdf.png"), (plot_timeline, "timeline.png"),
             (plot_utilization, "utilization.png")]
    if (result.status or {}).get("experts"):
        plots.append((plot_experts, "experts.png"))
    paths = []
    for fn, name in plots:
        fn(out_dir / name, result, summary)
        paths.append(out_dir / name)
    return paths
