"""Factories and probes for tests against a real server (local executor, free loopback port),
`cent serve` started as a user starts it (`serve_process`), and fakes for driving a handler's
generation path without one."""
from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from cent_serve.config import CentConfig, ParallelConfig, model_preset

HANG_GUARD_S = 60.0
"""Longest wait for a state the server reaches on its own (a request started, the queues empty, a
count reached). Not a performance bound: a guard so that a hang fails the test instead of stalling
it, some 10-50x what a loaded 2-core machine needs, so load alone cannot trip it."""
IDLE_TIMEOUT_S = HANG_GUARD_S
"""Longest wait for a server to finish (or abort) every request."""
SERVE_START_TIMEOUT_S = 600.0
"""A hang guard for `cent serve` to log its listening line: ~5 s with `--local` (mostly imports),
~20 s with a local Ray on a loaded machine, and over 180 s once (joining a test head at a whole-suite
run's start, three workers' clusters starting at once beside two busy processes on two cores)."""
REPO = Path(__file__).resolve().parents[2]


def serve_process(args: list[str], **env_vars: str) -> subprocess.Popen:
    """`cent serve --port 0 ARGS` in a subprocess, once it answers /health. The port is the one its
    log names, taken by the server itself: a port picked here and passed in could be taken by another
    process before the server binds it. The process gets `url`, `port` and `log` (the lines of its
    stdout and stderr so far: a thread reads them as they come, so a server that logs much never
    blocks on a full pipe); `stop_serve` ends it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_vars)
    proc = subprocess.Popen([sys.executable, "-m", "cent_serve.cli", "serve", "--port", "0", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(SERVE_START_TIMEOUT_S, proc.kill)  # a server that hangs before its log line
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:  # ends when the process does (or the watchdog kills it)
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        watchdog.cancel()
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", "".join(lines))
    if not found:
        proc.kill()
        raise AssertionError(f"cent serve did not come up:\n{''.join(lines)}{proc.stdout.read()}")
    proc.port = int(found.group(1))
    proc.url = f"http://127.0.0.1:{proc.port}"
    proc.log = lines
    proc.reader = threading.Thread(target=_read_on, args=(proc.stdout, lines), daemon=True)
    proc.reader.start()
    try:
        assert httpx.get(proc.url + "/health", timeout=30).status_code == 200
    except BaseException:
        proc.kill()
        raise
    return proc


def _read_on(stream, lines: list[str]) -> None:
    for line in stream:  # until the process ends
        lines.append(line)


def stop_serve(proc: subprocess.Popen, timeout_s: float = 60.0, hang_fails: bool = True) -> str:
    """SIGTERM, then the process's whole log once it exits (killed after `timeout_s`, a hang guard:
    a clean stop takes about a second; `hang_fails` False: killed quietly, for a server whose stop
    is not what the test checks)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        if hang_fails:
            raise
    finally:
        proc.reader.join(10)
    return "".join(proc.log)


def templated_tiny_llama_cfg(where: Path, chat_template: str) -> CentConfig:
    """The tests' HF tiny Llama checkpoint copied to `where` with `chat_template` as its own, served
    timing-only on one device, port 0 (tests of what a request's chat reaches the template as)."""
    from cent_serve.model import model_config_from_hf

    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "hf_tiny_llama", where)
    conf = json.loads((where / "tokenizer_config.json").read_text())
    (where / "tokenizer_config.json").write_text(json.dumps(dict(conf, chat_template=chat_template)))
    cfg = CentConfig(model=model_config_from_hf(where), parallel=ParallelConfig(1, 1, 1), numerics="off")
    cfg.server.port = 0
    return cfg


def server_cfg(numerics: str = "off", devices: int = 8, pp: int = 0, max_waiting: int = 1024,
               **server) -> CentConfig:
    """The tiny model on `devices` devices in a pipeline of `pp` stages (0 = one per block: 8
    lanes; `devices=1, pp=1` = a single lane), port 0 = a free port. `numerics="off"` uses the
    stand-in sampler: the fastest engine, for tests of the HTTP layer."""
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, 1), numerics=numerics)
    cfg.scheduler.max_waiting = max_waiting
    cfg.server.port = 0
    for k, v in server.items():
        setattr(cfg.server, k, v)
    return cfg


def body(**fields) -> dict:
    """A valid completion request (a short one unless overridden)."""
    return dict({"model": "tiny", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}, **fields)


def status(url: str, headers: dict | None = None) -> dict:
    return httpx.get(url + "/v1/cent/status", headers=headers, timeout=10).json()


def wait_idle(url: str, headers: dict | None = None, timeout_s: float = IDLE_TIMEOUT_S) -> dict:
    """Wait until nothing runs or waits; returns the status."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = status(url, headers)
        if st["num_running"] == st["num_waiting"] == 0:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"the server is still busy after {timeout_s} s: {st}")
        time.sleep(0.05)


def wait_for(probe, what: str, timeout_s: float = HANG_GUARD_S):
    """Poll `probe()` until it returns something truthy (returned); AssertionError naming `what`
    (and the last value) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout_s} s (last: {value!r})")
        time.sleep(0.02)


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([^{\s]+)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def outcomes(url: str, headers: dict | None = None) -> dict[tuple[str, str], float]:
    """`cent:requests_total` as {(outcome, reason): count}, the pairs counted at least once."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    out = {}
    for outcome, reason in re.findall(r'^cent:requests_total\{[^}]*outcome="(\w+)",reason="(\w+)"', text, re.M):
        if count := metric(text, "cent:requests_total", outcome=outcome, reason=reason):  # every pair exists, at 0
            out[(outcome, reason)] = count
    return out


async def read_stream(r: httpx.Response, on_token=None) -> dict:
    """A streamed completion's outcome from its server-sent events: {"tokens" (the usage's),
    "error" (an error event's message), "code" (its code), "finish", "done" ([DONE] seen), "token_ids"
    (the chunks' ids in order, with `return_token_ids`)}; `on_token()` at each choice chunk."""
    out = {"tokens": 0, "error": None, "code": None, "finish": None, "done": False, "token_ids": []}
    async for line in r.aiter_lines():
        if line == "data: [DONE]":
            out["done"] = True
        elif line.startswith("data: "):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out["error"], out["code"] = chunk["error"]["message"], chunk["error"]["cent"]["code"]
            if chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                out["finish"] = c.get("finish_reason") or out["finish"]
                out["token_ids"] += c.get("token_ids") or []
                if on_token is not None:
                    on_token()
    return out


# ---- fakes for driving a handler's generation path without a server (tests/serving/test_disconnect.py,
# test_stream_writes.py)

FAIL_AFTER_S = 10.0
"""Only the old behaviour waits: a failing bound, not a timing (the abort itself takes no wait)."""


class FakeCtx:
    """The API context a handler is given: records aborts; the virtual clock (nothing to pace)."""

    def __init__(self) -> None:
        self.aborted: list = []

    def abort_all(self, reqs) -> None:
        self.aborted += reqs

    def due_in(self, delta) -> float:
        return 0.0

    async def pace(self, delta) -> None:
        pass


class FakeParams:
    logprobs = None


class FakeReq:
    params = FakeParams()


class FakeMetrics:
    def __init__(self) -> None:
        self.counted: list = []

    def count_request(self, outcome: str, reason: str) -> None:
        self.counted.append((outcome, reason))

    def observe_prompts(self, n: int, generated: list[int]) -> None:
        pass


class FakeStreamRaw:
    """`event_stream` reads nothing of its request but counts its outcome (`record`)."""

    def __init__(self) -> None:
        self.scope = {"path": "/v1/completions", "method": "POST"}
        self.metrics = FakeMetrics()
        self.app = type("App", (), {"state": type("State", (), {"metrics": self.metrics})})()


# ---- replicas whose devices a test breaks and whose re-creation it decides (tests/serving/test_no_replica.py,
# tests/bench/test_bench_http.py)

OK = "ok"
"""A `Rebuild` outcome: the re-creation gives a working executor."""


class Breakable:
    """A replica's executor (a `LocalExecutor`) whose devices die when `broken` is set: its next
    round raises, as a lost actor's does."""

    def __init__(self, cfg) -> None:
        from cent_serve.executor import LocalExecutor  # here: the server probes above import no engine

        self.inner = LocalExecutor(cfg)
        self.broken = False

    def submit(self, plan):
        if self.broken:
            raise RuntimeError("the device actor died")
        return self.inner.submit(plan)

    def stats(self) -> dict:
        return self.inner.stats()

    def energy_terms_j(self) -> dict[str, float]:
        return self.inner.energy_terms_j()

    def shutdown(self) -> None:
        self.inner.shutdown()


class Rebuild:
    """The engine's `remake`: each re-creation (on its own thread) takes the next outcome the test
    puts into `plan`, waiting for it: `OK` (a working executor, kept in `made`) or an exception,
    raised as a failed re-creation raises. `calls` counts the re-creations started."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.plan: queue.Queue = queue.Queue()
        self.calls = 0
        self.made: list[Breakable] = []

    def __call__(self) -> Breakable:
        from cent_serve.executor.base import check_start

        self.calls += 1
        while True:  # as a start-up does, it gives up once the server stops (a retry nobody waits for)
            try:
                outcome = self.plan.get(timeout=0.02)
                break
            except queue.Empty:
                check_start()
        if outcome is not OK:
            raise outcome
        self.made.append(Breakable(self.cfg))
        return self.made[-1]


def breakable_replicas(num_replicas: int, retry_s: float = 3600.0):
    """(server config, devices, re-creation, engine): `num_replicas` replicas of one device and lane
    each, none started yet; a failed re-creation is retried every `retry_s` (`server.replica_retry_s`)."""
    from cent_serve.engine import Engine

    cfg = server_cfg(devices=num_replicas, pp=1, replica_retry_s=retry_s)
    devices = [Breakable(cfg) for _ in range(num_replicas)]
    rebuild = Rebuild(cfg)
    eng = Engine(cfg, executors=devices, remake=rebuild)
    return cfg, devices, rebuild, eng


@functools.cache
def tiny_weights():
    """The tiny preset's seeded weights, loaded once per process."""
    from cent_serve.model import load_weights
    return load_weights(model_preset("tiny"))


def tiny_engine(devices=8, pp=0, tp=1, numerics="full", **sched):
    """An Engine of the tiny preset on the local executor (`sched`: scheduler fields to set)."""
    from cent_serve.engine import Engine

    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(devices, pp, tp), numerics=numerics)
    for k, v in sched.items():
        setattr(cfg.scheduler, k, v)
    return Engine(cfg, weights=tiny_weights() if numerics == "full" else None)


def run_until_idle(eng) -> None:
    """Step `eng` until it has no work."""
    while eng.has_work():
        eng.step()
