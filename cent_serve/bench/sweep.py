"""`cent bench sweep` (one trace at several request rates) and `cent bench paper` (the paper's
mappings on one trace, beside the GPU baselines). Both run in-process in virtual time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cent_serve.bench.report import summarize  # noqa: E402
from cent_serve.bench.runner import run_in_process  # noqa: E402
from cent_serve.config import CentConfig, ParallelConfig  # noqa: E402

DISTSERVE_ATTAINMENT = 0.9
"""DistServe's goodput: the highest rate at which this share of requests meets every SLO."""


def run_sweep(cfg: CentConfig, requests_at: Callable[[float], list], rates: list[float], slos: dict[str, float],
              out_dir: Path, executor_kind: str = "local") -> dict:
    """One in-process replay per rate; writes sweep.json and two plots; returns the sweep."""
    rows = []
    for rate in rates:
        s = summarize(run_in_process(cfg, requests_at(rate), executor_kind, progress=False), slos)
        rows.append(dict(rate=rate, **{k: v for k, v in s.items() if not isinstance(v, dict)}))
        print(f"rate {rate:>8.3f} req/s: {s['completed']} done, output {s['output_throughput']:.1f} tok/s, "
              f"p99 TTFT {s['p99_ttft_ms'] or 0:.1f} ms, p99 TPOT {s['p99_tpot_ms'] or 0:.3f} ms"
              + (f", SLO attainment {100 * s['slo_attainment']:.1f}%" if slos else ""))
    ok = [r["rate"] for r in rows if slos and r.get("slo_attainment", 0.0) >= DISTSERVE_ATTAINMENT]
    sweep = dict(rates=rates, slos_ms=slos, rows=rows,
                 distserve_goodput_rate=max(ok) if ok else None, attainment_threshold=DISTSERVE_ATTAINMENT)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    _plot_sweep(out_dir, sweep)
    return sweep


def _plot_sweep(out_dir: Path, sweep: dict) -> None:
    rows = sweep["rows"]
    thr = [r["output_throughput"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("median_ttft_ms", "TTFT p50"), ("p99_ttft_ms", "TTFT p99")):
        axes[0].plot(thr, [r[key] for r in rows], "o-", label=label)
    axes[0].set_xlabel("output throughput (tok/s, simulated)")
    axes[0].set_ylabel("TTFT (ms)")
    ax2 = axes[0].twinx()
    ax2.plot(thr, [r["p99_tpot_ms"] or 0 for r in rows], "s--", color="tab:red", label="TPOT p99")
    ax2.set_ylabel("TPOT (ms)", color="tab:red")
    axes[0].legend(loc="upper left")
    axes[0].set_title("latency vs throughput")
    axes[0].grid(alpha=0.3)
    if sweep["slos_ms"]:
        axes[1].plot(sweep["rates"], [100 * r["slo_attainment"] for r in rows], "o-")
        axes[1].axhline(100 * sweep["attainment_threshold"], ls=":", color="gray")
        g = sweep["distserve_goodput_rate"]
        if g is not None:
            axes[1].axvline(g, ls="--", color="tab:green", label=f"goodput {g:g} req/s")
            axes[1].legend()
        axes[1].set_ylim(0, 105)
        axes[1].set_title(f"SLO attainment ({sweep['slos_ms']})")
    else:
        axes[1].set_title("SLO attainment: give --goodput ttft:MS tpot:MS")
    axes[1].set_xlabel("request rate (req/s)")
    axes[1].set_ylabel("% of requests meeting the SLOs")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "sweep.png", dpi=110)
    plt.close(fig)


def run_paper(cfg: CentConfig, requests: list, mappings: list[tuple[int, int]], out_dir: Path,
              executor_kind: str = "local") -> list[dict]:
    """The same trace on every mapping; a table (paper.json, paper.csv) and a plot, with the
    GPU baseline of CENT_MODEL.md section 9 beside the emulated throughput."""
    from cent_serve.timing.energy import GPU_BASELINES, cost_figures

    rows = []
    for pp, tp in mappings:
        c = CentConfig(model=cfg.model, device=cfg.device, fabric=cfg.fabric,
                       parallel=ParallelConfig(cfg.parallel.num_devices, pp, tp), scheduler=cfg.scheduler,
                       server=cfg.server, numerics=cfg.numerics)
        res = run_in_process(c, requests, executor_kind, progress=False)
        s = summarize(res)
        mp = res.status["mapping"]
        row = dict(pp=pp, tp=tp, mode=mp["mode"], replicas=mp["replicas"], devices_used=mp["devices_used"],
                   completed=s["completed"], output_throughput=s["output_throughput"],
                   total_token_throughput=s["total_token_throughput"], median_ttft_ms=s["median_ttft_ms"],
                   p99_ttft_ms=s["p99_ttft_ms"], median_tpot_ms=s["median_tpot_ms"], p99_tpot_ms=s["p99_tpot_ms"],
                   energy_per_token_mj=s["energy_per_token_mj"], wall_s=s["wall_s"])
        cost = cost_figures(cfg.model.name, mp["devices_used"] * mp["replicas"], cfg.parallel.num_devices,
                            s["total_token_throughput"], "end2end", s["energy_per_token_mj"], cfg.device)
        row.update({k: cost[k] for k in ("gpu_throughput_tok_s", "throughput_ratio", "tokens_per_dollar_ratio")
                    if k in cost})
        rows.append(row)
        print(f"pp {pp:>3} tp {tp:>2}: {s['total_token_throughput']:>9.1f} tok/s, TTFT p50 "
              f"{s['median_ttft_ms'] or 0:.1f} ms, TPOT p50 {s['median_tpot_ms'] or 0:.3f} ms"
              + (f", {row['throughput_ratio']:.2f}x GPU" if "throughput_ratio" in row else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "paper.json").write_text(json.dumps(dict(model=cfg.model.name, devices=cfg.parallel.num_devices,
                                                        gpu_baseline=GPU_BASELINES.get(cfg.model.name),
                                                        rows=rows), indent=2) + "\n")
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    (out_dir / "paper.csv").write_text("\n".join(lines) + "\n")
    _plot_paper(out_dir, cfg, rows, GPU_BASELINES.get(cfg.model.name))
    return rows


def _plot_paper(out_dir: Path, cfg: CentConfig, rows: list[dict], gpu: dict | None) -> None:
    labels = [f"pp{r['pp']}\ntp{r['tp']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) + 4), 4))
    axes[0].bar(labels, [r["total_token_throughput"] for r in rows], label="CENT (emulated, this trace)")
    if gpu:
        axes[0].axhline(gpu["end2end"], color="tab:red", ls="--", label=f"{gpu['gpus']} GPU baseline (paper)")
    axes[0].set_ylabel("tokens/s (prompt + output, simulated)")
    axes[0].set_title(f"{cfg.model.name} on {cfg.parallel.num_devices} devices")
    axes[0].legend(fontsize=8)
    x = range(len(rows))
    axes[1].bar([i - 0.2 for i in x], [r["median_ttft_ms"] for r in rows], width=0.4, label="TTFT p50")
    axes[1].bar([i + 0.2 for i in x], [r["median_tpot_ms"] or 0 for r in rows], width=0.4, label="TPOT p50")
    axes[1].set_xticks(list(x), labels)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ms (simulated)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("latency")
    fig.tight_layout()
    fig.savefig(out_dir / "paper.png", dpi=110)
    plt.close(fig)
