"""Benchmark clients, unchanged, against paced servers: each tool's mean TTFT and TPOT against
the server's own simulated figures (its /metrics), and the prompt tokens it meant to send
against the ones the server counted.

For every server (`--servers`, default all three):

- `default`: `cent serve` as `make run` starts it (tiny, full numerics, 8 devices);
- `hf`: the Hugging Face checkpoint in tests/data/hf_tiny_llama (its own tokenizer), full numerics;
- `llama2-70b`: Llama2-70B timing-only on 32 devices (Ray), prompts prefilled 64 tokens a round;

this script exports the server's tokenizer (`cent tokenizer export`), starts `cent serve --clock
paced` on a free loopback port, and runs each tool it finds (vLLM's `vllm bench serve`, guidellm,
NVIDIA's AIPerf) with the tokenizer directory, 16 random prompts of 64 tokens and 32 output tokens
with `ignore_eos`. The tools come from PATH or `--vllm` / `--guidellm` / `--aiperf` (they are large
and live in their own virtual environments; nothing here installs them). In paced mode every wall
second is 1 / pace factor simulated seconds, so a tool's wall figures divided by the factor are
simulated.

    .venv/bin/python benchmarks/clients.py --vllm /path/to/venv/bin/vllm --guidellm /path/to/venv/bin/guidellm \
        --aiperf /path/to/venv/bin/aiperf

Prints one line per (server, tool): requests ok/sent (and as the server counted them); prompt tokens asked for (prompts x input
length), as the tool counted them (AIPerf: the server's usage it read) and as the server did; mean TTFT and TPOT as the tool measured
them (simulated ms) and as the server did, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CENT = str(Path(sys.executable).parent / "cent")
SERVERS = {
    "default": dict(args=[], pace=400.0, model="tiny"),
    "hf": dict(args=["--model", str(ROOT / "tests/data/hf_tiny_llama")], pace=400.0,
               model=str(ROOT / "tests/data/hf_tiny_llama")),
    "llama2-70b": dict(args=["--model", "llama2-70b", "--devices", "32", "--numerics", "off",
                             "--set", "scheduler.prefill_chunk_tokens=64"], pace=10.0, model="llama2-70b"),
}
"""Each server's `cent serve` arguments and a pace factor it keeps up with on 2 cores (the tiny
model's full-numerics rounds take some ms of wall time for ~0.2 ms simulated; 70B's, with 16 requests,
0.13 wall s per simulated s)."""
METRICS = ("vllm:time_to_first_token_seconds", "vllm:request_time_per_output_token_seconds")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def sums(url: str) -> dict[str, float]:
    """The TTFT and TPOT histograms' sums and counts, and the prompt tokens, from /metrics."""
    text, out = get(url + "/metrics"), {}
    for name in [f"{m}_{p}" for m in METRICS for p in ("sum", "count")] + ["vllm:prompt_tokens_total"]:
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def server_means(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in after}
    n = d[f"{METRICS[0]}_count"]
    return dict(requests=int(n), ttft_ms=1e3 * d[f"{METRICS[0]}_sum"] / max(n, 1),
                tpot_ms=1e3 * d[f"{METRICS[1]}_sum"] / max(d[f"{METRICS[1]}_count"], 1),
                prompt_tokens=d["vllm:prompt_tokens_total"])


class Serve:
    """`cent serve ... --clock paced` in a subprocess, until `stop`."""

    def __init__(self, args: list[str], pace: float, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen([CENT, "serve", *args, "--clock", "paced", "--pace-factor", str(pace),
                                      "--port", "0"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while True:  # the server takes a free port itself and its log names it
            found = re.search(r"listening on (http://127\.0\.0\.1:(\d+))/v1", log.read_text())
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: see {log}")
            time.sleep(1)
        if json.loads(get(self.url + "/health"))["status"] != "ok":
            raise SystemExit(f"the server at {self.url} is not healthy: see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_vllm(exe: str, url: str, model: str, tok: Path, out: Path, a) -> dict:
    cmd = [exe, "bench", "serve", "--backend", "openai", "--base-url", url, "--model", model, "--tokenizer", str(tok),
           "--dataset-name", "random", "--random-input-len", str(a.input_len), "--random-output-len",
           str(a.output_len), "--num-prompts", str(a.num_prompts), "--ignore-eos", "--save-result",
           "--result-dir", str(out), "--result-filename", "vllm.json"]
    _run(cmd, out / "vllm.log")
    r = json.loads((out / "vllm.json").read_text())
    return dict(ok=r["completed"], sent=a.num_prompts, asked=a.num_prompts * a.input_len,
                prompt_tokens=r["total_input_tokens"],
                ttft_ms=r["mean_ttft_ms"], tpot_ms=r["mean_tpot_ms"])


def run_guidellm(exe: str, url: str, model: str, tok: Path, out: Path, a) -> dict:
    cmd = [exe, "run", "--backend", f"kind=openai_http,target={url},model={model},request_format=/v1/completions",
           "--tokenizer", f"kind=hf_auto,model={tok}",
           "--data", f"kind=synthetic_text,prompt_tokens={a.input_len},output_tokens={a.output_len}",
           "--profile", f"kind=concurrent,streams={a.num_prompts}",
           "--constraint", f"kind=max_requests,count={a.num_prompts}",
           "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-console-interactive"]
    _run(cmd, out / "guidellm.log")
    m = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["metrics"]
    # guidellm's ITL is the mean gap between tokens after the first (with equal lengths, the mean of vLLM's
    # and this server's per-request TPOT); its own "TPOT" divides the whole latency by the tokens
    return dict(ok=m["request_totals"]["successful"], sent=m["request_totals"]["total"],
                asked=a.num_prompts * a.input_len, prompt_tokens=m["prompt_token_count"]["successful"]["total_sum"],
                ttft_ms=m["time_to_first_token_ms"]["successful"]["mean"],
                tpot_ms=m["inter_token_latency_ms"]["successful"]["mean"])


def run_aiperf(exe: str, url: str, model: str, tok: Path, out: Path, a) -> dict:
    cmd = [exe, "profile", "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming",
           "--tokenizer", str(tok), "--synthetic-input-tokens-mean", str(a.input_len),
           "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", str(a.output_len),
           "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
           "--concurrency", str(a.num_prompts),
           "--request-count", str(a.num_prompts), "--ui-type", "none", "--output-artifact-dir", str(out / "aiperf")]
    _run(cmd, out / "aiperf.log", offline=False)  # AIPerf 0.13 offline looks even a local directory up in the hub cache
    m = json.loads(next((out / "aiperf").rglob("profile_export_aiperf.json")).read_text())
    # AIPerf's ITL is (latency - TTFT) / (output tokens - 1) per request: this server's TPOT, once the tokens
    # are the server's (--use-server-token-count). Counted by AIPerf's tokenizer from the text, a full-numerics
    # model's random tokens re-encode to other lengths (its ITL was 0.56 of the server's TPOT on `default`)
    return dict(ok=int(m["request_count"]["avg"]), sent=a.num_prompts,  # request_count: the successful ones
                # with --use-server-token-count its ISL is the server's usage, not a count of its own
                asked=a.num_prompts * a.input_len, prompt_tokens=m["total_isl"]["avg"],
                ttft_ms=m["time_to_first_token"]["avg"], tpot_ms=m["inter_token_latency"]["avg"])


def _run(cmd: list[str], log: Path, offline: bool = True) -> None:
    print("  $", " ".join(cmd), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1") if offline else {k: v for k, v in os.environ.items()
                                                               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    with log.open("w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code:
        raise SystemExit(f"exit code {code}: see {log}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS))
    p.add_argument("--vllm", default=shutil.which("vllm"), help="the `vllm` executable (default: on PATH)")
    p.add_argument("--guidellm", default=shutil.which("guidellm"), help="the `guidellm` executable")
    p.add_argument("--aiperf", default=shutil.which("aiperf"), help="the `aiperf` executable")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--out", default=None, help="directory for logs and results (default: a temporary one)")
    a = p.parse_args()
    tools = [(name, fn, exe) for name, fn, exe in (("vllm", run_vllm, a.vllm), ("guidellm", run_guidellm, a.guidellm),
                                                   ("aiperf", run_aiperf, a.aiperf)) if exe]
    if not tools:
        raise SystemExit("no benchmark tool found: pass --vllm, --guidellm and/or --aiperf")
    out_root = Path(a.out or tempfile.mkdtemp(prefix="cent-clients-"))
    rows = []
    for name in a.servers.split(","):
        spec = SERVERS[name]
        out = out_root / name
        out.mkdir(parents=True, exist_ok=True)
        subprocess.check_call([CENT, "tokenizer", "export", str(out / "tokenizer"), "--model", spec["model"]],
                              stdout=subprocess.DEVNULL)
        print(f"{name}: starting `cent serve {' '.join(spec['args'])}` paced x{spec['pace']:g}", flush=True)
        server = Serve(spec["args"], spec["pace"], out / "server.log")
        try:
            served = json.loads(get(server.url + "/v1/models"))["data"][0]["id"]
            for tool, fn, exe in tools:
                before = sums(server.url)
                t0 = time.perf_counter()
                got = fn(exe, server.url, served, out / "tokenizer", out, a)
                srv = server_means(before, sums(server.url))
                scale = spec["pace"]  # wall ms -> simulated ms
                rows.append((name, tool, got, srv, scale, time.perf_counter() - t0))
                print("  " + _line(*rows[-1]), flush=True)
        finally:
            server.stop()
    print(f"\nresults and logs: {out_root}")
    print(f"{'server':11s} {'tool':8s} {'ok (server)':>12s} {'prompt asked/tool/server':>24s}  {'TTFT ms tool/server':>21s}"
          f"{'ratio':>7s}  {'TPOT ms tool/server':>21s}{'ratio':>7s}   (simulated ms)")
    for row in rows:
        print(_line(*row))


def _line(name, tool, got, srv, scale, wall_s) -> str:
    ttft, tpot = got["ttft_ms"] / scale, got["tpot_ms"] / scale
    tokens = f"{got['asked']}/{int(got['prompt_tokens'])}/{int(srv['prompt_tokens'])}"
    return (f"{name:11s} {tool:8s} {got['ok']:>3d}/{got['sent']:<3d}({srv['requests']:>3d}){tokens:>18s}  "
            f"{ttft:>10.4f}/{srv['ttft_ms']:<10.4f}{ttft / srv['ttft_ms']:>7.4f}  {tpot:>10.4f}/{srv['tpot_ms']:<10.4f}"
            f"{tpot / srv['tpot_ms']:>7.4f}  ({wall_s:.0f} s)")


if __name__ == "__main__":
    main()
