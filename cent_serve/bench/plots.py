"""PNG plots of a bench run (matplotlib, headless): latency CDFs, the engine over time,
per-device utilization."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cent_serve.bench.runner import BenchResult  # noqa: E402


def _cdf(ax, values_ms: list[float], title: str) -> None:
    if values_ms:
        x = np.sort(np.asarray(values_ms))
        ax.plot(x, np.arange(1, x.size + 1) / x.size)
    ax.set_title(title)
    ax.set_xlabel("ms (simulated)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)


def plot_latency_cdfs(path: Path, result: BenchResult) -> None:
    ok = [r for r in result.records if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    _cdf(axes[0], [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None], "TTFT")
    _cdf(axes[1], [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None], "TPOT")
    _cdf(axes[2], [r.e2e_s * 1e3 for r in ok if r.e2e_s is not None], "E2E latency")
    fig.suptitle(f"{len(ok)} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeline(path: Path, result: BenchResult) -> None:
    s = result.samples
    t = [x.time_s for x in s]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].step(t, [x.num_waiting for x in s], where="post")
    axes[0].set_ylabel("waiting")
    axes[1].step(t, [x.num_running for x in s], where="post")
    axes[1].set_ylabel("running batch")
    axes[2].step(t, [100 * x.kv_usage for x in s], where="post")
    axes[2].set_ylabel("KV usage %")
    axes[2].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("queue depth, running batch and KV usage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_utilization(path: Path, result: BenchResult) -> None:
    clock = result.clock_s or 1.0
    devs = result.devices
    names = [f"{d.get('replica', 0)}:{d['device_id']}" for d in devs]
    busy = [max(d["busy_s"].values(), default=0.0) / clock for d in devs]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(devs) + 2), 3.5))
    ax.bar(range(len(devs)), [100 * b for b in busy])
    ax.set_xticks(range(len(devs)), names, rotation=90 if len(devs) > 16 else 0, fontsize=7)
    ax.set_ylabel("busiest resource, % of time")
    ax.set_xlabel("replica:device")
    ax.set_ylim(0, 100)
    ax.set_title("per-device utilization (simulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(out_dir: Path, result: BenchResult) -> None:
    plot_latency_cdfs(out_dir / "latency_cdf.png", result)
    plot_timeline(out_dir / "timeline.png", result)
    plot_utilization(out_dir / "utilization.png", result)
