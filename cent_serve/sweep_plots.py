"""The plots of `cent sweep` (matplotlib, written to files)."""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from cent_serve.bench.plots import fit_title

NAME_ALL_POINTS = 12
"""The Pareto plot numbers every point up to this many per model, else only its front."""
LABEL_GAP_PT = 3.0
"""Clear space between a Pareto point's marker and its number (points): at 5 points beside the centre
the digits touched the marker's edge."""


def _given(note: str, how: str = "") -> str:
    """A title's line naming what every point ran (`how`, `sweep.workload_text`) and the settings every
    point shares (`note`, `cli_common.given_overrides`), or "" when neither is given."""
    line = "; ".join(filter(None, [how, f"given: {note}" if note else ""]))
    return f"\n{line}" if line else ""


def _model_names(rows: list[dict]) -> dict[str, str]:
    """Each model as the plots name it, by the value that chose it (`--vary model=`'s preset or checkpoint
    path, else its name): its model name, but as given where two share a name (runs/1/ckpt, runs/2/ckpt)."""
    given = {r.get("model", r["model_name"]): r["model_name"] for r in rows}
    names = list(given.values())
    return {value: value if names.count(name) > 1 else name for value, name in given.items()}


def _label(row: dict, fields: list[str], names: dict[str, str]) -> str:
    """The point's values of `fields`, a model by its name in `names` (`_model_names`)."""
    return ", ".join(f"{f.split('.')[-1]}={names[row[f]] if f == 'model' else row[f]}" for f in fields)


def _save(fig, axes, path: Path, legend_size: int, below: bool = False, legends=None) -> Path:
    """Grid and legend each panel and write the figure. `below` puts each legend under its
    panel (the file grows to hold them) for legends long enough to cover points inside; `legends`: the
    panels that carry one (default every panel; a column of panels drawing the same lines names them once)."""
    place = dict(loc="upper center", bbox_to_anchor=(0.5, -0.13)) if below else {}
    axes = list(axes)  # `axes.flat` is an iterator: read twice below
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes if legends is None else legends:
        ax.legend(fontsize=legend_size, **place)
    if not below:
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight" if below else None)  # "tight": the legends below included
    return path


def pareto_front(rows: list[dict]) -> list[dict]:
    """The points no other point beats on both: higher throughput and lower energy per token
    (ties kept), by throughput."""
    front = [r for r in rows if not any(
        o["throughput_tok_s"] >= r["throughput_tok_s"] and o["energy_per_token_mj"] <= r["energy_per_token_mj"]
        and (o["throughput_tok_s"] > r["throughput_tok_s"] or o["energy_per_token_mj"] < r["energy_per_token_mj"])
        for o in rows)]
    return sorted(front, key=lambda r: r["throughput_tok_s"])


def plot_pareto(rows: list[dict], fields: list[str], path: Path, given: str = "", how: str = "",
                in_step: list[tuple[str, ...]] = ()) -> Path:
    """Throughput against energy per token, one panel per model (each on its own scales: models are
    not compared, and a 70B model's energy would squash a 7B's points; energy from zero, as figures.png's),
    its Pareto front labelled;
    `given`: the settings every point shares, `how`: what the points ran, named in the title; `in_step`:
    the fields varied in step (`sweep_grid.in_step_of`), named so in the title."""
    fig, axes = pareto_figure(rows, fields, given, how, in_step)
    return _save(fig, axes, path, 8, below=True)  # inside, a legend of many points covered some of them


def pareto_figure(rows: list[dict], fields: list[str], given: str = "", how: str = "",
                  in_step: list[tuple[str, ...]] = ()):
    """`plot_pareto`'s figure and its panels, before the legends and the file."""
    models: dict[str, list[dict]] = {}
    names = _model_names(rows)
    for r in rows:
        models.setdefault(names[r.get("model", r["model_name"])], []).append(r)
    fig = Figure(figsize=(min(6.5 * len(models), 19), 6))
    axes = fig.subplots(1, len(models), squeeze=False)
    others = [f for f in fields if f != "model"]
    for i, ((model, group), ax) in enumerate(zip(models.items(), axes[0])):
        color = f"C{i % 10}"
        front = pareto_front(group)
        ax.scatter([r["energy_per_token_mj"] for r in group], [r["throughput_tok_s"] for r in group], s=22,
                   color=color, alpha=0.35, label="a point off the front" if len(front) < len(group) else None)
        ax.plot([r["energy_per_token_mj"] for r in front], [r["throughput_tok_s"] for r in front], "o-", color=color,
                label=f"Pareto front: {len(front)} of {len(group)} points")
        # numbered on the plot, named in the legend (close points stay legible): the front, and every point
        # when there are few enough to read
        named = front + [r for r in group if r not in front] if len(group) <= NAME_ALL_POINTS else front
        # points that fall on one spot (a field that moves neither figure) share one label, "1,3,5", below
        # right or above left of it in turn: the label's nearest corner LABEL_GAP_PT clear of the marker
        d = (_marker_reach_pt() + LABEL_GAP_PT) / math.sqrt(2)
        for k, (spot, ks) in enumerate(_spots(named).items()):
            ax.annotate(",".join(map(str, ks)), spot, fontsize=8, fontweight="bold" if ks[0] <= len(front) else "normal",
                        xytext=(d, -d) if k % 2 == 0 else (-d, d), textcoords="offset points",
                        ha="left" if k % 2 == 0 else "right", va="top" if k % 2 == 0 else "bottom")
        for k, r in enumerate(named, 1):
            off = "" if k <= len(front) else " (off the front)"
            ax.plot([], [], " ", label=f"{k}: {_label(r, others, names)}{off}")
        energies = [r["energy_per_token_mj"] for r in group]
        if min(energies) >= 0 and max(energies) > 0:  # as figures.png's energy panels (`FROM_ZERO`): from zero,
            ax.set_xlim(0.0, max(energies) * (1 + ZERO_HEADROOM))  # a 15% spread read as several-fold across the axis
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("energy per token (mJ)")
        ax.set_ylabel("throughput (prompt + generated tokens/s)")
        ax.ticklabel_format(useOffset=False, axis="both")  # values, not an offset and its small differences
    title = (f"CENT design space over {fields_text(fields, in_step)}\n(front: no point of the model is both faster "
             f"and cheaper in energy){_given(given, how)}")  # two lines at least: one panel is narrow
    # from its last line up, above the panels' titles however many lines it has ("tight" bounds keep it)
    fig.suptitle(fit_title(title, fig, 10), fontsize=10, va="bottom", y=0.93)
    return fig, axes[0]


def _marker_reach_pt() -> float:
    """How far a front marker ("o", matplotlib's default size and edge) reaches from its centre (points)."""
    return (rcParams["lines.markersize"] + rcParams["lines.markeredgewidth"]) / 2


SPOT = 0.01
"""Points closer than this share of both axes' spans are one spot on the Pareto plot (one label)."""


def _spots(points: list[dict]) -> dict[tuple[float, float], list[int]]:
    """{a spot's (energy, throughput): the 1-based numbers of `points` at it}: each point joins the
    first spot within SPOT of the spans on both axes, else makes its own."""
    xs, ys = [p["energy_per_token_mj"] for p in points], [p["throughput_tok_s"] for p in points]
    dx, dy = SPOT * ((max(xs) - min(xs)) or 1.0), SPOT * ((max(ys) - min(ys)) or 1.0)
    spots: dict[tuple[float, float], list[int]] = {}
    for k, (x, y) in enumerate(zip(xs, ys), 1):
        at = next((s for s in spots if abs(s[0] - x) <= dx and abs(s[1] - y) <= dy), (x, y))
        spots.setdefault(at, []).append(k)
    return spots


def fields_text(fields: list[str], in_step: list[tuple[str, ...]] = ()) -> str:
    """The varied fields as a title names them, those varied in step together: 'parallel.num_devices and
    parallel.pp in step, device.clock_hz'."""
    out, done = [], set()
    for f in fields:
        group = next((g for g in in_step if f in g), (f,))
        if f not in done:
            out.append(f if len(group) == 1 else f"{' and '.join(group)} in step")
            done.update(group)
    return ", ".join(out)


def _companions(rows: list[dict], x: str, fields: list[str], in_step: list[tuple[str, ...]]) -> list[str]:
    """The fields varied in step with `x` (`in_step`) that move with it, one value for each of x's: the line
    plots draw them on x's axis, not a line each (a field of the group that takes two values at one of x's
    stays a line's label)."""
    group = next((g for g in in_step if x in g), ())
    # a model (a preset or a checkpoint path) is no point on an axis: each stays a line, named in its label
    return [f for f in group if f != x and f != "model" and f in fields
            and all(len({r[f] for r in rows if r[x] == v}) == 1 for v in {r[x] for r in rows})]


def _in_step_text(companions: list[str]) -> str:
    """' (pp in step)' naming the fields that move with the x axis, or ''."""
    return f" ({', '.join(f.split('.')[-1] for f in companions)} in step)" if companions else ""


def x_field(rows: list[dict], fields: list[str]) -> str | None:
    """The varied field the line plots put on the x axis: the device count when it varies, else the
    first varied field with numbers and more than one value; None when there is none."""
    numeric = [f for f in fields if all(_number(r[f]) is not None for r in rows) and len({r[f] for r in rows}) > 1]
    return "parallel.num_devices" if "parallel.num_devices" in numeric else (numeric[0] if numeric else None)


def _number(value) -> float | None:
    """A varied value as a number (`--vary` values are kept as given, e.g. "2e9"), else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _lines(ax, rows: list[dict], fields: list[str], x: str, key: str, in_step: list[tuple[str, ...]] = (),
           from_zero: bool = False) -> None:
    """`key` against `x`, one line per combination of the other varied fields (those varied in step with
    x and moving with it, `_companions`, on x's axis: its label names them). `from_zero`: a linear y axis
    starts at zero (`FROM_ZERO`); a log one is left as it is."""
    companions = _companions(rows, x, fields, in_step)
    others = [f for f in fields if f != x and f not in companions]
    groups: dict[str, list[dict]] = {}
    names = _model_names(rows) if "model" in others else {}
    for r in rows:
        groups.setdefault(_label(r, others, names) or "all points", []).append(r)
    for name, group in groups.items():
        group = sorted((r for r in group if r.get(key) is not None), key=lambda r: _number(r[x]))
        ax.plot([_number(r[x]) for r in group], [r[key] for r in group], "o-", label=name)
    values = sorted({_number(r[x]) for r in rows})
    if values[0] > 0 and values[-1] / values[0] >= 4:  # a doubling series reads evenly on a log axis
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    elif all(v.is_integer() for v in values):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if companions:  # each x tick says the values that move with it: 32 / tp=1, not "tp in step" alone
        ax.set_xticks(values, [f"{v:g}\n" + ", ".join(
            f"{f.split('.')[-1]}={next(r[f] for r in rows if _number(r[x]) == v)}" for f in companions)
            for v in values])
        ax.minorticks_off()
    ax.ticklabel_format(useOffset=False, axis="y")
    ys = [r[key] for r in rows if r.get(key) is not None]
    mid = (max(ys) + min(ys)) / 2 if ys else 0.0
    models = {r.get("model", r.get("model_name")) for r in rows}
    if len(models) > 1 and ys and min(ys) > 0 and max(ys) >= LOG_SPAN * min(ys):
        # models sharing a panel: a 70B's figures dwarf a 7B's on a linear axis (its lines drawn flat at
        # the bottom); on a log axis each line keeps its shape, and equal ratios are equal heights
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
    elif from_zero and ys and min(ys) >= 0 and max(ys) > 0:
        # a 4% change drawn across the whole axis read as a steep trend: measured from zero it looks 4%
        ax.set_ylim(0.0, max(ys) * (1 + ZERO_HEADROOM))
    elif ys and mid and max(ys) - min(ys) < FLAT_SHARE * abs(mid):
        # a spread under 1% drawn across the whole axis reads as a steep trend: show it as the flat line it is
        ax.set_ylim(mid - FLAT_SHARE * abs(mid), mid + FLAT_SHARE * abs(mid))
    ax.set_xlabel(axis_label(x) + _in_step_text(companions))


def _ylabel(ax, label: str) -> None:
    """Label a panel's y axis, saying so when `_lines` gave it a log scale (its ticks read 1, 2, 5, 10)."""
    ax.set_ylabel(f"{label}, log axis" if label and ax.get_yscale() == "log" else label)


FLAT_SHARE = 0.01
"""A figure whose points differ by less than this share of their value is drawn on an axis this wide."""
LOG_SPAN = 10.0
"""A panel whose lines hold several models and whose values span this factor or more has a log axis."""
FROM_ZERO = ("energy_per_token_mj",)
"""`plot_figures`' panels whose linear y axis starts at zero: a share of an energy is what a reader compares
(the Pareto plot's energy axis starts there too)."""
ZERO_HEADROOM = 0.05
"""A panel from zero reaches this share above its highest point (matplotlib's default margin)."""

UNITS = {"_hz": "Hz", "_ns": "ns", "_s": "s", "_mw": "mW", "_usd": "$", "_gbps": "GiB/s a lane", "_cycles": "cycles",
         "_pj_per_bit": "pJ/bit", "_bytes": "bytes", "bytes_per_element": "bytes", "_bytes_per_cycle": "bytes a cycle",
         "_cycles_per_burst": "cycles a burst"}
"""Config fields' units by the end of their name (docs/config.md gives each field's)."""


def axis_label(field: str) -> str:
    """A varied field with its unit, e.g. `fabric.lane_gbps (GiB/s a lane)`."""
    unit = next((u for end, u in UNITS.items() if field.endswith(end)), None)
    return f"{field} ({unit})" if unit else field


def plot_tokens_per_dollar(rows: list[dict], fields: list[str], path: Path, given: str = "", how: str = "",
                           in_step: list[tuple[str, ...]] = ()) -> Path:
    """Tokens per dollar against the devices (or the varied field, `x_field`), one line per combination
    of the other varied fields: against the paper's GPUs in the artifact's TCO convention
    (`device.tco_per_device` a device), or per device dollar (`device.unit_cost_usd`) when the model has
    no GPU figure or the price is varied and the TCO is not (the ratio would price every point's device
    alike); `given`, `how` and `in_step` as `plot_pareto`'s."""
    ratio = (all(r.get("tokens_per_dollar_ratio") is not None for r in rows)
             and ("device.unit_cost_usd" not in fields or "device.tco_per_device" in fields))
    key = "tokens_per_dollar_ratio" if ratio else "tok_s_per_usd"
    x = x_field(rows, fields) or "devices"  # every row has its device count
    fig = Figure(figsize=(9, 6))
    ax = fig.subplots()
    _lines(ax, rows, fields, x, key, in_step)
    if x in ("parallel.num_devices", "devices"):
        ax.set_xlabel("CENT devices in the system (every replica's)" + _in_step_text(_companions(rows, x, fields,
                                                                                                   in_step)))
    _ylabel(ax, "tokens per dollar vs the paper's GPUs (TCO: device.tco_per_device)" if ratio
            else "tokens/s per device dollar (device.unit_cost_usd)")
    ax.set_title(fit_title(f"tokens per dollar against {ax.get_xlabel()}{_given(given, how)}", fig, 12))
    # the panel's lines hold every combination of models and fields: a long legend inside hid a point
    return _save(fig, [ax], path, 7, below=len(ax.get_lines()) >= LEGEND_BELOW_LINES)


LEGEND_BELOW_LINES = 5
"""A tokens-per-dollar panel of this many lines or more has its legend below it: inside, the place
matplotlib finds with the least overlap still covered a point (three models by three tp values)."""


def plot_figures(rows: list[dict], fields: list[str], path: Path, trace: bool, how: str,
                 given: str = "", in_step: list[tuple[str, ...]] = ()) -> Path | None:
    """Throughput, latency, energy per token and average power against the varied field (`x_field`),
    one line per combination of the others; None when no varied field has numbers. Several models, each
    over more than one x: a column of the four panels a model, each on its own scales (a 70B model's
    figures squashed a 7B's lines flat on shared axes), its lines named once atop it; models that share
    panels (a model in step with x) get a log axis where their values span `LOG_SPAN`; energy per token's
    linear axes start at zero (`FROM_ZERO`). `how`: what the
    points ran, for the title (`sweep.workload_text`); `given` and `in_step` as `plot_pareto`'s."""
    x = x_field(rows, fields)
    if x is None:
        return None
    panels = [("throughput_tok_s", "throughput (prompt + generated tok/s)"),
              ("tpot_p50_ms", "TPOT p50 (ms)") if trace else ("token_latency_ms", "time between a query's tokens (ms)"),
              ("energy_per_token_mj", "energy per token (mJ)"),
              ("avg_power_w", "average power (W):\nenergy per token x throughput")]  # two lines: a short panel's
    names = _model_names(rows)
    models: dict[str, list[dict]] = {}
    for r in rows:
        models.setdefault(names[r.get("model", r["model_name"])], []).append(r)
    title = (f"{', '.join(models)}: the figures against {x}"  # as the columns: the order of --vary model, their names
             f"{_in_step_text(_companions(rows, x, fields, in_step))} ({how}){_given(given)}")
    if len(models) > 1 and all(len({r[x] for r in group}) > 1 for group in models.values()):
        own = [f for f in fields if f != "model"]  # each column is one model: its lines are the other fields'
        fig = Figure(figsize=(min(5.5 * len(models), 22), 13))
        axes = fig.subplots(len(panels), len(models), squeeze=False)
        for j, (model, group) in enumerate(models.items()):
            for i, (key, label) in enumerate(panels):
                _lines(axes[i, j], group, own, x, key, in_step, from_zero=key in FROM_ZERO)
                _ylabel(axes[i, j], label if j == 0 else "")
                if i < len(panels) - 1:  # the column's x is the bottom panel's label
                    axes[i, j].set_xlabel("")
            axes[0, j].set_title(model, fontsize=11, fontweight="bold")
        fig.suptitle(fit_title(title, fig, 11), fontsize=11)
        return _save(fig, axes.flat, path, 7, legends=axes[0])
    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 2)
    for ax, (key, label) in zip(axes.flat, panels):
        _lines(ax, rows, fields, x, key, in_step, from_zero=key in FROM_ZERO)
        _ylabel(ax, label)
    fig.suptitle(fit_title(title, fig, 11), fontsize=11)
    return _save(fig, axes.flat, path, 7)
