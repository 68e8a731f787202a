"""How long a server's engine thread spends on each streamed token's text (`IncrementalText`, what
`Engine.text` calls for every sequence each round): this checkout, and an older commit in the same
run.

The workload: sequences of `--tokens` ids that timing-only runs draw (`stand_in_ids`) for the
byte tokenizer of the Llama 2 presets, decoded as they grow one token at a time, `--repeats`
times; printed in microseconds per token (the best of the repeats, the least disturbed by the
machine's other work). With `--against REF` the same runs in a temporary git worktree of REF, in
a process of its own with this checkout's interpreter, and the ratio follows.

    .venv/bin/python benchmarks/detok_speed.py [--tokens 4000] [--repeats 5] [--against COMMIT]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from worktree import REPO, worktree  # benchmarks/worktree.py, beside this script


def measure(tokens: int, repeats: int) -> float:
    """Microseconds per token of the checkout on sys.path (the best of `repeats`)."""
    import numpy as np

    from cent_serve.model.tokenizer import ByteTokenizer, IncrementalText

    tok = ByteTokenizer(32000, 1, 2)
    ids = [int(i) for i in np.random.default_rng(0).choice(tok.stand_in_ids(), tokens)]
    best = float("inf")
    for _ in range(repeats):
        inc, grown = IncrementalText(), []
        t0 = time.perf_counter()
        for i in ids:  # the engine's output list grows by a token a round and is decoded each time
            grown.append(i)
            inc.decode(tok, grown)
        best = min(best, time.perf_counter() - t0)
    assert inc.decode(tok, grown) == tok.decode(grown)  # the figure is for the right text
    return best / tokens * 1e6


def in_tree(tree: Path, tokens: int, repeats: int) -> float:
    """`measure` in a process whose cent_serve is the one in `tree`."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--tokens", str(tokens), "--repeats",
                          str(repeats), "--only"], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", metavar="REF", help="an older commit to run too, in a temporary worktree")
    ap.add_argument("--only", action="store_true", help=argparse.SUPPRESS)  # one figure, for `in_tree`
    a = ap.parse_args()
    if a.only:
        print(measure(a.tokens, a.repeats))
        return
    results = {}
    if a.against:
        with worktree(a.against) as tree:
            results[a.against] = in_tree(tree, a.tokens, a.repeats)
    results["this checkout"] = in_tree(REPO, a.tokens, a.repeats)
    for name, us in results.items():
        print(f"{name:>14}: {us:.2f} us a token ({a.tokens} tokens, best of {a.repeats})")
    if a.against:
        print(f"ratio old/new: {results[a.against] / results['this checkout']:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} (wall times move with the machine's other work)")


if __name__ == "__main__":
    main()
