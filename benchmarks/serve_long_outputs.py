"""How fast a server streams long outputs, and how long /health waits meanwhile: this checkout,
and an older commit in the same run.

The workload: `cent serve --local` (llama2-70b timing-only, 32 devices, pp 80, the virtual clock)
on a free loopback port, `--requests` concurrent completions of `--max-tokens` tokens each
(`ignore_eos`), and /health asked every 0.25 s while they run. Printed: the wall time until every
completion answered, the tokens generated per wall second, and the /health waits (median and
longest). `--stream` streams them (server-sent events, one per token); `--for S` keeps every client
busy for S seconds, each sending its completion again as soon as it is answered (a steady load
with bursts of answers and arrivals, where a fixed batch runs out). With `--against REF` the same
runs in a temporary git worktree of REF first (with this checkout's interpreter), and the ratios
follow. The clients run in this process, the server in its own (as a user's would).

    .venv/bin/python benchmarks/serve_long_outputs.py [--requests 8] [--max-tokens 4000] [--stream]
        [--for SECONDS] [--against COMMIT]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from worktree import REPO, worktree  # benchmarks/worktree.py, beside this script
SERVE = ["serve", "--local", "--port", "0", "--model", "llama2-70b", "--devices", "32", "--pp", "80",
         "--numerics", "off"]


def _post(url: str, body: dict, errors: list, until: float) -> None:
    """Send `body` (again and again until `until`, a monotonic time; once if that has passed)."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    while True:
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                r.read()  # the whole answer: a stream's events until the server ends it
        except OSError as exc:  # urllib's HTTPError and URLError among them: the run's figures would be wrong
            errors.append(exc)
            return
        if time.monotonic() >= until:
            return


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=600) as r:
        return json.loads(r.read())


def run(tree: Path, requests: int, max_tokens: int, stream: bool = False, for_s: float = 0.0) -> dict:
    """One server in `tree`, the completions and the health probes; returns the figures."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cent_serve.cli", *SERVE], cwd=tree, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(tree)))
        try:
            deadline = time.monotonic() + 300
            while not (found := re.search(r"listening on (http://127\.0\.0\.1:\d+)", _read(log))):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server in {tree} did not start:\n{_read(log)}")
                time.sleep(0.5)
            url = found.group(1)
            body = dict(model="llama2-70b", prompt="CENT", max_tokens=max_tokens, ignore_eos=True, stream=stream)
            errors: list = []
            t0 = time.monotonic()
            clients = [threading.Thread(target=_post, args=(url + "/v1/completions", body, errors, t0 + for_s))
                       for _ in range(requests)]
            for t in clients:
                t.start()
            waits = []
            while any(t.is_alive() for t in clients):
                h0 = time.monotonic()
                _get(url + "/health")
                waits.append(time.monotonic() - h0)
                time.sleep(0.25)
            for t in clients:
                t.join()
            wall_s = time.monotonic() - t0
            if errors:
                raise SystemExit(f"{len(errors)} completions failed in {tree}: {errors[0]}")
            waits.sort()
            return dict(wall_s=wall_s, tokens=_get(url + "/v1/cent/status")["generation_tokens"],
                        health_p50_s=waits[len(waits) // 2] if waits else 0.0, health_max_s=max(waits, default=0.0),
                        probes=len(waits))
        finally:
            proc.terminate()
            proc.wait(60)


def _read(log) -> str:
    log.seek(0)
    return log.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--stream", action="store_true", help="stream the completions (one event per token)")
    ap.add_argument("--for", dest="for_s", type=float, default=0.0, metavar="SECONDS",
                    help="each client sends again as soon as it is answered, for this long")
    ap.add_argument("--against", metavar="REF", help="an older commit to run first, in a temporary worktree")
    a = ap.parse_args()
    what = (f"{a.requests} clients x {a.max_tokens} tokens{', streamed' if a.stream else ''}"
             f"{f', sent again for {a.for_s:g} s' if a.for_s else ''}")
    results = {}
    if a.against:
        with worktree(a.against) as tree:
            print(f"{a.against}: {what} ...", flush=True)
            results[a.against] = run(tree, a.requests, a.max_tokens, a.stream, a.for_s)
    print(f"this checkout: {what} ...", flush=True)
    results["this checkout"] = run(REPO, a.requests, a.max_tokens, a.stream, a.for_s)
    for name, r in results.items():
        print(f"{name:>14}: all answered in {r['wall_s']:.2f} s wall, {r['tokens'] / r['wall_s']:,.0f} tokens/s; "
              f"/health waited {r['health_p50_s'] * 1e3:.0f} ms (median), {r['health_max_s'] * 1e3:.0f} ms at most "
              f"({r['probes']} probes)")
    if a.against:
        old, new = results[a.against], results["this checkout"]
        rate = lambda r: r["tokens"] / r["wall_s"]  # noqa: E731
        print(f"ratios new/old: tokens per second {rate(new) / rate(old):.2f}x; old/new: longest /health wait "
              f"{old['health_max_s'] / max(new['health_max_s'], 1e-9):.1f}x, median "
              f"{old['health_p50_s'] / max(new['health_p50_s'], 1e-9):.1f}x")
    print(f"load average {os.getloadavg()[0]:.1f} (wall times move with the machine's other work)")


if __name__ == "__main__":
    main()
