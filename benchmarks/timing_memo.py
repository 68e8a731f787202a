"""What a timer's per-context memos cost: bytes held per context and time per charge, this checkout
and an older commit in the same run.

A `SystemTimer` of `--model` (default llama3.1-8b, 131,072 tokens of context; 32 devices, pp 32)
is asked for contexts 1..N one at a time, as decoding asks a device for one new context a round
(`SystemTimer.fill_contexts`, which fills `TABLE_AHEAD` past it in the same pass), for each N of
`--contexts`. Printed: the bytes tracemalloc sees the timer hold after the charges (its context
table, `ContextTable`, counted apart: what the devices read), per context, and the CPU microseconds
a charge takes on average (tracemalloc off while timed). With `--against REF` the same runs in a
temporary git worktree of REF, in a process of its own with this checkout's interpreter, and the
old/new ratios follow. Standard library and numpy only.

    .venv/bin/python benchmarks/timing_memo.py [--model llama3.1-8b] [--contexts 32768 131072] [--against COMMIT]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from worktree import REPO, worktree  # benchmarks/worktree.py, beside this script


def _timer(model: str, devices: int):
    from cent_serve.config import CentConfig, ParallelConfig, model_preset
    from cent_serve.timing import SystemTimer

    return SystemTimer.from_config(CentConfig(model=model_preset(model), parallel=ParallelConfig(devices, 0, 1)))


def _charge(timer, n: int) -> None:
    import numpy as np

    for L in range(1, n + 1):  # one new context a round, as a decoding sequence asks for them
        timer.fill_contexts(np.array([L], dtype=np.int64))


def measure(model: str, devices: int, n: int) -> dict:
    """Bytes the timer holds after charging contexts 1..n (the context table apart), and the seconds
    of those charges on a fresh timer without tracemalloc."""
    import numpy as np

    timer = _timer(model, devices)
    timer.fill_contexts(np.array([1], dtype=np.int64))  # build the energy model and the first columns
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _charge(timer, n)
    gc.collect()  # what the charges left in reference cycles is not held
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    table, filled = timer.context_table()
    table_bytes = table.nbytes + filled.nbytes
    fresh = _timer(model, devices)
    fresh.fill_contexts(np.array([1], dtype=np.int64))
    t0 = time.process_time()  # CPU seconds: they move less than wall time with the machine's other work
    _charge(fresh, n)
    seconds = time.process_time() - t0
    return dict(contexts=n, held_bytes=held, table_bytes=table_bytes, memo_bytes=held - table_bytes,
                charge_us=seconds / n * 1e6)


def in_tree(tree: Path, model: str, devices: int, n: int) -> dict:
    """`measure` in a process whose cent_serve is the one in `tree`."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--model", model, "--devices", str(devices),
                          "--contexts", str(n), "--only"], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--against", metavar="REF", help="an older commit to run too, in a temporary worktree")
    ap.add_argument("--only", action="store_true", help=argparse.SUPPRESS)  # one figure, for `in_tree`
    a = ap.parse_args()
    if a.only:
        print(json.dumps(measure(a.model, a.devices, a.contexts[0])))
        return
    results: dict[str, list[dict]] = {}
    if a.against:
        with worktree(a.against) as tree:
            results[a.against] = [in_tree(tree, a.model, a.devices, n) for n in a.contexts]
    results["this checkout"] = [in_tree(REPO, a.model, a.devices, n) for n in a.contexts]
    for name, rows in results.items():
        for r in rows:
            n = r["contexts"]
            print(f"{name:>14}: {n:>7} contexts: memos {r['memo_bytes'] / n:7.1f} B a context "
                  f"({r['memo_bytes'] / 2**20:7.1f} MiB), context table {r['table_bytes'] / n:6.1f} B a context "
                  f"({r['table_bytes'] / 2**20:6.1f} MiB); {r['charge_us']:6.1f} us a charge")
    if a.against:
        for old, new in zip(results[a.against], results["this checkout"]):
            print(f"{old['contexts']:>7} contexts: ratio old/new memo bytes "
                  f"{old['memo_bytes'] / max(new['memo_bytes'], 1):.1f}x, held bytes "
                  f"{old['held_bytes'] / new['held_bytes']:.2f}x, charge time {old['charge_us'] / new['charge_us']:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} (times move with the machine's other work)")


if __name__ == "__main__":
    main()
