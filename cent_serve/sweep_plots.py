"""The plots of `cent sweep` (matplotlib, written to files)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _label(row: dict, fields: list[str]) -> str:
    return ", ".join(f"{f.split('.')[-1]}={row[f]}" for f in fields)


def _save(fig, axes, path: Path, legend_size: int) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_front(rows: list[dict]) -> list[dict]:
    """The points no other point beats on both: higher throughput and lower energy per token
    (ties kept), by throughput."""
    front = [r for r in rows if not any(
        o["throughput_tok_s"] >= r["throughput_tok_s"] and o["energy_per_token_mj"] <= r["energy_per_token_mj"]
        and (o["throughput_tok_s"] > r["throughput_tok_s"] or o["energy_per_token_mj"] < r["energy_per_token_mj"])
        for o in rows)]
    return sorted(front, key=lambda r: r["throughput_tok_s"])


def plot_pareto(rows: list[dict], fields: list[str], path: Path) -> Path:
    """Throughput against energy per token, one panel per model (each on its own scales: models are
    not compared, and a 70B model's energy would squash a 7B's points), its Pareto front labelled."""
    fig, axes = pareto_figure(rows, fields)
    return _save(fig, axes, path, 8)


def pareto_figure(rows: list[dict], fields: list[str]):
    """`plot_pareto`'s figure and its panels, before the legends and the file."""
    models: dict[str, list[dict]] = {}
    for r in rows:
        models.setdefault(r["model_name"], []).append(r)
    fig, axes = plt.subplots(1, len(models), figsize=(min(6.5 * len(models), 19), 6), squeeze=False)
    others = [f for f in fields if f != "model"]
    for i, ((model, group), ax) in enumerate(zip(models.items(), axes[0])):
        color = f"C{i % 10}"
        front = pareto_front(group)
        ax.scatter([r["energy_per_token_mj"] for r in group], [r["throughput_tok_s"] for r in group], s=22,
                   color=color, alpha=0.35, label="a point off the front" if len(front) < len(group) else None)
        ax.plot([r["energy_per_token_mj"] for r in front], [r["throughput_tok_s"] for r in front], "o-", color=color,
                label=f"Pareto front: {len(front)} of {len(group)} points")
        for k, r in enumerate(front, 1):  # numbered on the plot, named in the legend: close points stay legible
            ax.annotate(str(k), (r["energy_per_token_mj"], r["throughput_tok_s"]), fontsize=8, fontweight="bold",
                        xytext=(5, -3) if k % 2 else (-11, 3), textcoords="offset points")
            ax.plot([], [], " ", label=f"{k}: {_label(r, others)}")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("energy per token (mJ)")
        ax.set_ylabel("throughput (prompt + generated tokens/s)")
    fig.suptitle(f"CENT design space over {', '.join(fields)}\n(front: no point of the model is both faster "
                 "and cheaper in energy)", fontsize=10)  # two lines: one panel is narrow
    return fig, axes[0]


def plot_tokens_per_dollar(rows: list[dict], fields: list[str], path: Path) -> Path:
    """Tokens per dollar against the devices, one line per combination of the other varied fields."""
    ratio = all(r.get("tokens_per_dollar_ratio") is not None for r in rows)
    key = "tokens_per_dollar_ratio" if ratio else "tok_s_per_usd"
    others = [f for f in fields if f != "parallel.num_devices"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_label(r, others) or "all points", []).append(r)
    fig, ax = plt.subplots(figsize=(9, 6))
    for name, group in groups.items():
        group = sorted(group, key=lambda r: r["devices"])
        ax.plot([r["devices"] for r in group], [r[key] for r in group], "o-", label=name)
    ax.set_xlabel("CENT devices in the system (every replica's)")
    ax.set_ylabel("tokens per dollar vs the paper's GPUs (TCO convention)" if ratio
                  else "tokens/s per device dollar")
    ax.set_title("tokens per dollar against the device count")
    return _save(fig, [ax], path, 7)
