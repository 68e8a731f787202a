"""How fast the paper workload runs through the Ray device actors: this checkout, and an older
commit in the same run.

The workload is `cent simulate --model llama2-70b --devices 32 --pp 80 --prompt 512 --decode
3584 --numerics off --emulate --json` (80 queries, 4,096 rounds, 27 device actors): the
figure is its simulated tokens per wall second (wall time of the workload, actor start-up
apart). With `--against REF` the same command runs first in a temporary git worktree of REF;
the script prints both figures, their ratio, and whether the simulated figures (every phase's
latency, throughput, energy and power) are the same bit for bit. `--local` adds this
checkout's in-process executor (`--emulate --local`) as the ceiling. `--decode` shortens the
workload for a quick look.

    .venv/bin/python benchmarks/emulate_speed.py [--against COMMIT] [--local] [--decode 3584]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SIM_TOK_S = 20000.0
"""The round-message issue's target for the Ray executor on a 2-core machine."""


def emulate(tree: Path, decode: int, local: bool) -> dict:
    """The JSON `cent simulate --emulate` prints, run by the code in `tree`, and the command's wall."""
    args = ["simulate", "--model", "llama2-70b", "--devices", "32", "--pp", "80", "--prompt", "512", "--decode",
            str(decode), "--numerics", "off", "--emulate", "--json", *(["--local"] if local else [])]
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cent_serve.cli", *args], cwd=tree, env=env, check=True,
                          capture_output=True, text=True)
    out = json.loads(proc.stdout)
    out["command_wall_s"] = time.perf_counter() - t0
    return out


def figures(out: dict) -> dict:
    """The simulated figures of every phase (what must not move)."""
    return {phase: {k: v for k, v in out[phase].items() if k != "closed_form"}
            for phase in ("prefill", "decoding", "end2end") if phase in out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="a git commit to time in the same run (e.g. the pre-redesign one)")
    ap.add_argument("--local", action="store_true", help="also this checkout's in-process executor")
    ap.add_argument("--decode", type=int, default=3584, help="generated tokens per query (the paper: 3584)")
    args = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            old = Path(tmp) / "old"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                runs[f"{args.against[:8]} (ray)"] = emulate(old, args.decode, False)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=True)
    runs["this checkout (ray)"] = emulate(REPO, args.decode, False)
    if args.local:
        runs["this checkout (in-process)"] = emulate(REPO, args.decode, True)
    print(f"Llama2-70B timing-only on 32 devices (pp 80), 80 queries x (512 + {args.decode}) tokens through the "
          "emulated devices")
    for name, out in runs.items():
        print(f"  {name:<28} {out['sim_tokens_per_wall_s']:9.0f} simulated tokens per wall second "
              f"(workload {out['wall_s']:.1f} s, command {out['command_wall_s']:.1f} s)")
    new = runs["this checkout (ray)"]
    if args.against:
        old = runs[f"{args.against[:8]} (ray)"]
        same = figures(old) == figures(new)
        print(f"  ray, new / old = {new['sim_tokens_per_wall_s'] / old['sim_tokens_per_wall_s']:.2f}x; simulated "
              f"figures {'identical' if same else 'DIFFERENT'}")
        if not same:
            print(json.dumps({"old": figures(old), "new": figures(new)}, indent=1))
    if args.local:
        print(f"  ray / in-process = {new['sim_tokens_per_wall_s'] / runs['this checkout (in-process)']['sim_tokens_per_wall_s']:.2f}")
    print(f"  target {TARGET_SIM_TOK_S:.0f}: {'met' if new['sim_tokens_per_wall_s'] >= TARGET_SIM_TOK_S else 'NOT met'}"
          " (by this run)")


if __name__ == "__main__":
    main()
