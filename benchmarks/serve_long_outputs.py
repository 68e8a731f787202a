"""How fast a server streams long outputs, and how long /health waits meanwhile: this checkout,
and an older commit in the same run.

The workload: `cent serve --local` (llama2-70b timing-only, 32 devices, pp 80, the virtual clock)
on a free loopback port, `--requests` concurrent completions of `--max-tokens` tokens each
(`ignore_eos`), and /health asked every 0.25 s while they run. Printed: the wall time until every
completion answered, and the longest /health wait. With `--against REF` the same runs in a
temporary git worktree of REF first (with this checkout's interpreter), and the ratios follow.

    .venv/bin/python benchmarks/serve_long_outputs.py [--requests 8] [--max-tokens 4000] [--against COMMIT]
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

REPO = Path(__file__).resolve().parents[1]
SERVE = ["serve", "--local", "--port", "0", "--model", "llama2-70b", "--devices", "32", "--pp", "80",
         "--numerics", "off"]


def _post(url: str, body: dict, errors: list) -> None:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
    except OSError as exc:  # urllib's HTTPError and URLError among them: the run's figures would be wrong
        errors.append(exc)


def run(tree: Path, requests: int, max_tokens: int) -> dict:
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
            body = dict(model="llama2-70b", prompt="CENT", max_tokens=max_tokens, ignore_eos=True)
            errors: list = []
            clients = [threading.Thread(target=_post, args=(url + "/v1/completions", body, errors))
                       for _ in range(requests)]
            t0 = time.monotonic()
            for t in clients:
                t.start()
            waits = []
            while any(t.is_alive() for t in clients):
                h0 = time.monotonic()
                urllib.request.urlopen(url + "/health", timeout=600).read()
                waits.append(time.monotonic() - h0)
                time.sleep(0.25)
            for t in clients:
                t.join()
            if errors:
                raise SystemExit(f"{len(errors)} of {requests} completions failed in {tree}: {errors[0]}")
            return dict(wall_s=time.monotonic() - t0, health_max_s=max(waits, default=0.0), probes=len(waits))
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
    ap.add_argument("--against", metavar="REF", help="an older commit to run first, in a temporary worktree")
    a = ap.parse_args()
    results = {}
    if a.against:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), a.against], check=True)
            try:
                print(f"{a.against}: {a.requests} x {a.max_tokens} tokens ...", flush=True)
                results[a.against] = run(tree, a.requests, a.max_tokens)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    print(f"this checkout: {a.requests} x {a.max_tokens} tokens ...", flush=True)
    results["this checkout"] = run(REPO, a.requests, a.max_tokens)
    for name, r in results.items():
        print(f"{name:>14}: all answered in {r['wall_s']:.2f} s wall; longest /health wait {r['health_max_s'] * 1e3:.0f} ms "
              f"({r['probes']} probes)")
    if a.against:
        old, new = results[a.against], results["this checkout"]
        print(f"ratios old/new: wall {old['wall_s'] / new['wall_s']:.2f}x, longest /health wait "
              f"{old['health_max_s'] / max(new['health_max_s'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
