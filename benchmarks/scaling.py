"""Scaling study: Llama2-70B timing-only on 8..128 emulated devices, pipeline and hybrid.

For each device count and mapping, the paper workload runs through the device and fabric
workers (`cent_serve.emulate.emulate_seqlen`: pp queries, one token each per round, at a
context of --seqlen). Two figures per row:

- simulated throughput (tok/s), beside the closed-form model's: they should agree;
- wall-clock cost per simulated token (ms): the emulator's own scaling, and its ratio to the
  smallest system that fits, measured in the same process after a run that is not measured (the
  first run in a process pays the kernels' loading and the executor's first start: it made a
  16-device baseline 18x slower than the same configuration run again).

Writes scaling.json and scaling.png to --out.

    .venv/bin/python benchmarks/scaling.py [--ray] [--seqlen 1024] [--devices 8,16] [--out bench-scaling]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.emulate import emulate_seqlen
from cent_serve.executor import make_executor
from cent_serve.timing.mapping import check_capacity, resolve_mapping

DEVICES = (8, 16, 32, 64, 128)
HYBRID_TP = 8
"""Hybrid mappings: tp 8 (one Llama2-70B KV-head group per device), pp = devices / 8."""


def _counts(text: str) -> tuple[int, ...]:
    """--devices: positive whole numbers separated by commas."""
    try:
        counts = tuple(int(d) for d in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: give device counts separated by commas, e.g. 8,16")
    return counts


def mappings(devices: int) -> list[tuple[str, int, int]]:
    return [("pipeline", 0, 1), (f"hybrid tp{HYBRID_TP}", devices // HYBRID_TP, HYBRID_TP)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ray", action="store_true", help="device actors on a local Ray (default: in-process)")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3, help="rounds before the measured one")
    ap.add_argument("--devices", type=_counts, default=DEVICES,
                    help=f"device counts, comma-separated (default: {','.join(map(str, DEVICES))})")
    ap.add_argument("--out", default="bench-scaling")
    args = ap.parse_args()
    model = model_preset("llama2-70b")
    counts = sorted(set(args.devices))
    configs = [(devices, name, CentConfig(model=model, parallel=ParallelConfig(devices, pp, tp), numerics="off"))
               for devices in counts for name, pp, tp in mappings(devices)]
    _warm_up(configs, args)
    rows = []
    for devices, name, cfg in configs:
        mp = resolve_mapping(model, cfg.parallel, cfg.device)
        if (why := _does_not_fit(cfg, args.seqlen)) is not None:
            print(f"{devices:>4} devices {name:<12} does not fit: {why}")
            rows.append(dict(devices=devices, mapping=name, fits=False, reason=why))
            continue
        t0 = time.perf_counter()
        ex = make_executor(cfg, "ray" if args.ray else "local")
        startup = time.perf_counter() - t0
        try:
            out = emulate_seqlen(cfg, ex, args.seqlen, warmup=args.warmup)
        finally:
            ex.shutdown()
        sim_tokens = (args.warmup + 1) * mp.lanes
        row = dict(devices=devices, mapping=name, pp=mp.pp, tp=mp.tp, fits=True,
                   sim_tok_s=out["throughput_tok_s"], closed_form_tok_s=out["closed_form"]["throughput_tok_s"],
                   wall_ms_per_sim_token=1e3 * out["wall_s"] / sim_tokens, startup_s=startup)
        rows.append(row)
        print(f"{devices:>4} devices {name:<12} pp {mp.pp:>3} tp {mp.tp}: {row['sim_tok_s']:>9.1f} sim tok/s "
              f"(closed form {row['closed_form_tok_s']:>9.1f}), {row['wall_ms_per_sim_token']:.3f} wall ms "
              f"per sim token, start-up {startup:.1f} s")
    fitted = [r for r in rows if r["fits"]]
    base = fitted[0]["wall_ms_per_sim_token"] if fitted else 1.0
    for r in fitted:
        r["wall_cost_ratio_vs_smallest"] = r["wall_ms_per_sim_token"] / base
    if fitted:
        print(f"wall cost per simulated token against {fitted[0]['devices']} devices {fitted[0]['mapping']} "
              "(same process, after the warm-up):")
        for r in fitted:
            print(f"{r['devices']:>4} devices {r['mapping']:<12} {r['wall_cost_ratio_vs_smallest']:>7.2f}x")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling.json").write_text(json.dumps(dict(seqlen=args.seqlen, executor="ray" if args.ray else "local",
                                                          rows=rows), indent=2) + "\n")
    _plot(out_dir / "scaling.png", fitted)
    print(f"results in {out_dir}/")


def _does_not_fit(cfg: CentConfig, seqlen: int) -> str | None:
    """Why the devices cannot hold a query a stage at `seqlen`, or None."""
    try:
        check_capacity(cfg.model, resolve_mapping(cfg.model, cfg.parallel, cfg.device), cfg.device, seqlen)
    except ValueError as exc:
        return str(exc)
    return None


def _warm_up(configs: list, args: argparse.Namespace) -> None:
    """One run of the first configuration that fits, not measured: the kernels' loading and the
    executor's first start land here, not on the baseline of the ratios."""
    for _, _, cfg in configs:
        if _does_not_fit(cfg, args.seqlen) is not None:
            continue
        print(f"warming up on {cfg.parallel.num_devices} devices (not measured) ...", flush=True)
        ex = make_executor(cfg, "ray" if args.ray else "local")
        try:
            emulate_seqlen(cfg, ex, args.seqlen, warmup=0)
        finally:
            ex.shutdown()
        return


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted({r["mapping"] for r in rows}):
        rs = [r for r in rows if r["mapping"] == name]
        d = [r["devices"] for r in rs]
        axes[0].plot(d, [r["sim_tok_s"] for r in rs], "o-", label=f"{name} (emulated)")
        axes[0].plot(d, [r["closed_form_tok_s"] for r in rs], "x:", label=f"{name} (closed form)")
        axes[1].plot(d, [r["wall_ms_per_sim_token"] for r in rs], "o-", label=name)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("emulated CENT devices")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("simulated tokens/s")
    axes[0].set_title("Llama2-70B throughput (simulated)")
    axes[1].set_ylabel("wall ms per simulated token")
    axes[1].set_title("emulator cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
