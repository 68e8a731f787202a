"""How fast an in-process trace replay runs: this checkout, and an older commit in the same run.

The workload is `cent bench run`'s in-process replay of the shipped Azure conversation trace
(its first `--num-requests`, default 1,000, or the whole trace with `--num-requests 0`) on
Llama2-70B timing-only, 32 devices, pp 80 (`--pp` and `--tp` choose another mapping: a
tensor-parallel one, e.g. `--pp 4 --tp 8`, runs about twelve times the rounds for the same
requests; `--model` and `--devices` another model and device count: `--model llama2-7b --devices
128 --pp 1` is 128 one-device replicas, where the per-round work of the replicas that have none
shows). With `--against REF` the same command runs in a temporary git worktree of REF first,
and the script prints the wall-time ratio and whether the simulated results (every requests.csv
column but the error text, and summary.json but its wall time) are the same bit for bit, and
where not, by how much; `--repeat N` runs the pair N times, interleaved (old, new, old, new, ...),
and prints each pair's ratios (wall, and CPU seconds of the replay's process). The machine's load
average is printed with the times: on a shared machine wall times vary with it, and the ratio of
one pair is what compares.

    .venv/bin/python benchmarks/replay_speed.py [--num-requests 1000] [--model llama2-70b] [--devices 32]
        [--pp 80] [--tp 1] [--against COMMIT] [--repeat 1]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["bench", "run", "--numerics", "off", "--no-plots"]
TRACE = "cent_serve/bench/data/azure_conv_2023.csv"


WARM_REQUESTS = 5
"""Requests of an untimed replay first in each tree: numba caches its compiled kernels next to the
sources, so a fresh worktree would otherwise charge compiling them to the older commit's time (an
identical commit timed about 1.7x slower)."""


def replay(tree: Path, num_requests: int, out: Path, mapping: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of the replay run by the code in `tree` (results in
    `out`; `mapping`: the model, device and mapping arguments), after an untimed short one that
    fills the tree's numba cache. The CPU time moves less with the machine's other work."""
    _run(tree, WARM_REQUESTS, out.with_name(out.name + "-warm"), mapping)
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    _run(tree, num_requests, out, mapping)
    r1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    return t1 - t0, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def _run(tree: Path, num_requests: int, out: Path, mapping: list[str]) -> None:
    args = [*COMMAND, *mapping, "--trace", str(tree / TRACE), "--out", str(out)]
    if num_requests:
        args += ["--num-requests", str(num_requests)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-m", "cent_serve.cli", *args], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compare(old: Path, new: Path) -> str:
    """'identical' when every requests.csv cell both have, but the error text, is the same string
    (columns only one has are named); else, per differing column, how many cells differ and the
    largest relative difference."""
    with open(old / "requests.csv") as f, open(new / "requests.csv") as g:
        a, b = list(csv.DictReader(f)), list(csv.DictReader(g))
    if len(a) != len(b):
        return f"DIFFERENT: {len(a)} vs {len(b)} rows"
    columns = [k for k in (a[0] if a else {}) if k in (b[0] if b else {})]
    added = [k for k in (b[0] if b else {}) if k not in columns]
    dropped = [k for k in (a[0] if a else {}) if k not in columns]
    note = "".join(f" (columns {which}: {', '.join(ks)})" for which, ks in (("added", added), ("dropped", dropped))
                   if ks)
    diffs: dict[str, list[float]] = {}
    for r, s in zip(a, b):
        for k in columns:
            if k != "error" and r[k] != s[k]:
                try:
                    x, y = float(r[k]), float(s[k])
                    rel = abs(x - y) / max(abs(x), abs(y))
                except ValueError:
                    rel = float("inf")
                diffs.setdefault(k, []).append(rel)
    if not diffs:
        return "identical" + note
    return "DIFFERENT: " + "; ".join(f"{k} in {len(v)} of {len(a)} rows, at most {max(v):.1e} relative"
                                     for k, v in diffs.items()) + note


def compare_summary(old: Path, new: Path) -> str:
    """'identical' when summary.json's entries, but the wall time, are equal (floats bit for bit);
    else the keys that differ."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (old, new))
    for d in (a, b):
        d.pop("wall_s", None)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return "identical" if not keys else "DIFFERENT: " + ", ".join(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=1000, help="0: the whole trace")
    ap.add_argument("--model", default="llama2-70b", help="a model preset (default llama2-70b)")
    ap.add_argument("--devices", type=int, default=32, help="CENT devices (default 32; more than the mapping uses: "
                                                             "data-parallel replicas)")
    ap.add_argument("--pp", type=int, default=80, help="pipeline stages (default 80)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel devices per stage (default 1)")
    ap.add_argument("--against", help="a git commit to time in the same run (e.g. the pre-redesign one)")
    ap.add_argument("--repeat", type=int, default=1, help="timed pairs, interleaved (default 1)")
    args = ap.parse_args()
    mapping = ["--model", args.model, "--devices", str(args.devices), "--pp", str(args.pp), "--tp", str(args.tp)]
    n = args.num_requests or "all"
    print(f"in-process replay, {args.model} timing-only on {args.devices} devices (pp {args.pp}, tp {args.tp}), "
          f"{n} requests of azure_conv_2023")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "old"
        if args.against:
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for k in range(args.repeat):
                results = {}
                if args.against:
                    results["old"] = (replay(old, args.num_requests, tmp / f"out-old{k}", mapping),
                                      tmp / f"out-old{k}", os.getloadavg()[0])
                results["new"] = (replay(REPO, args.num_requests, tmp / f"out-new{k}", mapping), tmp / f"out-new{k}",
                                  os.getloadavg()[0])
                for name, ((wall, cpu), _, load) in results.items():
                    print(f"  {name:<4} {wall:8.1f} s wall  {cpu:8.1f} s CPU  (load average {load:.2f} after it)")
                if "old" in results:
                    (wo, co), (wn, cn) = results["old"][0], results["new"][0]
                    print(f"  old / new = {wo / wn:.2f}x wall, {co / cn:.2f}x CPU; simulated results "
                          f"{compare(results['old'][1], results['new'][1])}; summary.json (but wall_s) "
                          f"{compare_summary(results['old'][1], results['new'][1])}", flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=True)


if __name__ == "__main__":
    main()
