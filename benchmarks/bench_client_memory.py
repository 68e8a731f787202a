"""How much memory `cent bench run --url` holds per request of a replay: this checkout, and an
older commit in the same run.

A replay keeps a record per request until the end (summary.json, requests.csv and the plots are
made from them), so the client's peak memory grows with the trace; users replay traces of tens of
thousands of requests. The workload: `cent serve --local` (llama2-70b timing-only, 32 devices,
pp 80, the virtual clock) on a free loopback port, and `cent bench run --url` of the shipped
azure_conv_2023 trace in its own process, once for its first `--base` requests and once for its
first `--requests` (`--time-scale 4` by default, so the server keeps up and nearly every request
completes: a refused request holds almost nothing and would make the figure look small). Printed:
each client's peak resident memory (the kernel's count for that process, whatever Python
allocated it for), and the bytes per request as the slope between the two, which leaves out what
every run holds (the interpreter, the imports, the trace). With `--against REF` the same runs in a
temporary git worktree of REF first (with this checkout's interpreter and the worktree on
PYTHONPATH), and the ratio follows.

The slope is not only what is kept per request (a record: ~0.75 kB and 8 bytes a token, ~2.8 kB
for the trace's ~260 output tokens). Before `http_client.release_free_heap` most of it (~18 of
~27 kB) was free space inside the C heap, which grew with every request (the socket reads' freed
tails, pinned by the records' token times) and stayed resident. What is left beside the records
is the requests in flight at the replay's peak: each holds its connection, stream and body (~30
kB from httpx, httpcore and anyio; ~40 kB while it also held its list of prompt ids), and the
allocator keeps that high-water mark. On the virtual clock a request is in flight while the
engine queues it, so their number is the simulated queue's (at most `scheduler.max_waiting`
waiting, 1024 by default, plus those running): it grows with the trace while the server is
overloaded, then no more. Hence each replay's peak in flight (from requests.csv: the most
requests between their arrival and their finish at once) is printed beside its memory;
`--time-scale 20` keeps it low.

    .venv/bin/python benchmarks/bench_client_memory.py [--requests 2000] [--base 200]
        [--time-scale 4] [--against COMMIT]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worktree import REPO, worktree  # benchmarks/worktree.py, beside this script
SERVE = ["serve", "--local", "--port", "0", "--model", "llama2-70b", "--devices", "32", "--pp", "80",
         "--numerics", "off"]
SERVER_START_TIMEOUT_S = 300.0
"""Longest wait for the server's "listening on" line."""
CLIENT_TIMEOUT_S = 3600.0
"""Longest wait for one replay (5000 requests take about 4 minutes on two busy cores)."""


def _read(log) -> str:
    log.seek(0)
    return log.read()


def _client(tree: Path, url: str, num_requests: int, time_scale: float, out: Path) -> dict:
    """One `cent bench run --url` of `num_requests` in its own process; its peak RSS and summary."""
    cmd = [sys.executable, "-m", "cent_serve.cli", "bench", "run", "--url", url, "--trace", "azure_conv_2023",
           "--num-requests", str(num_requests), "--time-scale", str(time_scale), "--out", str(out), "--no-plots"]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(tree)))
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while True:  # wait4: this child's own resource use (getrusage's RUSAGE_CHILDREN is the max over all)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the replay of {num_requests} requests in {tree} took over {CLIENT_TIMEOUT_S:g} s:\n"
                                 f"{_read(log)[-2000:]}")
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        if proc.returncode != 0:
            raise SystemExit(f"the replay of {num_requests} requests in {tree} exited {proc.returncode}:\n"
                             f"{_read(log)[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return dict(rss_bytes=usage.ru_maxrss * 1024, completed=summary["completed"], failed=summary["failed"],
                output_tokens=summary["total_output_tokens"],  # Linux counts ru_maxrss in KiB
                peak_in_flight=_peak_in_flight(out / "requests.csv"))


def _peak_in_flight(requests_csv: Path) -> int:
    """The most requests between their arrival and their finish at once, in simulated time: on the
    virtual clock, the most the replay's client had in flight (a refused request never was)."""
    events = []
    with open(requests_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["finish_s"]:
                events += [(float(row["arrival_s"]), 1), (float(row["finish_s"]), -1)]
    peak = now = 0
    for _, step in sorted(events):  # at a tie the finish (-1) comes first: it was no longer in flight
        now += step
        peak = max(peak, now)
    return peak


def run(tree: Path, base: int, requests: int, time_scale: float) -> dict:
    """One server in `tree` and the two replays against it; returns the figures."""
    with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "cent_serve.cli", *SERVE], cwd=tree, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(tree)))
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while not (found := re.search(r"listening on (http://127\.0\.0\.1:\d+)", _read(log))):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server in {tree} did not start:\n{_read(log)}")
                time.sleep(0.5)
            url = found.group(1)
            small = _client(tree, url, base, time_scale, Path(tmp) / "base")
            large = _client(tree, url, requests, time_scale, Path(tmp) / "large")
        finally:
            proc.terminate()
            proc.wait(60)
    per_request = (large["rss_bytes"] - small["rss_bytes"]) / (requests - base)
    return dict(base=small, large=large, bytes_per_request=per_request)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests of the larger replay")
    ap.add_argument("--base", type=int, default=200, help="requests of the smaller replay (the slope's start)")
    ap.add_argument("--time-scale", type=float, default=4.0, help="the replays' --time-scale")
    ap.add_argument("--against", metavar="REF", help="an older commit to run first, in a temporary worktree")
    a = ap.parse_args()
    if not 0 < a.base < a.requests:
        raise SystemExit(f"--base {a.base} and --requests {a.requests}: give 0 < --base < --requests (the bytes per "
                         "request are the slope between the two replays)")
    what = f"{a.base} and {a.requests} requests of azure_conv_2023, --time-scale {a.time_scale:g}"
    results = {}
    if a.against:
        with worktree(a.against) as tree:
            print(f"{a.against}: {what} ...", flush=True)
            results[a.against] = run(tree, a.base, a.requests, a.time_scale)
    print(f"this checkout: {what} ...", flush=True)
    results["this checkout"] = run(REPO, a.base, a.requests, a.time_scale)
    for name, r in results.items():
        large = r["large"]
        print(f"{name:>14}: peak RSS {r['base']['rss_bytes'] / 2**20:.1f} MiB ({a.base} requests, "
              f"{r['base']['peak_in_flight']} in flight at most), {large['rss_bytes'] / 2**20:.1f} MiB "
              f"({a.requests}: {large['completed']} completed, "
              f"{large['output_tokens'] / max(1, large['completed']):.0f} output tokens each, "
              f"{large['peak_in_flight']} in flight at most); {r['bytes_per_request'] / 1e3:.1f} kB per request")
    if a.against:
        old, new = results[a.against]["bytes_per_request"], results["this checkout"]["bytes_per_request"]
        print(f"ratio old/new: bytes per request {old / max(new, 1.0):.1f}x")
    print(f"load average {os.getloadavg()[0]:.1f} (the replays' wall times move with the machine's other work; "
          "their memory much less)")


if __name__ == "__main__":
    main()
