"""`cent serve` as a user runs it: a subprocess on a free port, a request, SIGTERM, a clean exit."""
from __future__ import annotations

import dataclasses
import json
import signal
import socket
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.serving.utils import serve_process, stop_serve


def _serve(args: list[str], **env_vars: str):
    proc = serve_process(args, **env_vars)
    return proc, proc.url, proc.port


def _stop(proc, port) -> str:
    """`stop_serve`, and the exit was clean and gave the port back."""
    out = stop_serve(proc)
    assert proc.returncode == 0, out
    with socket.socket() as s:  # the port is free again (for a server: TIME_WAIT is allowed)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    return out


def _complete(url: str, api_key: str = "unused") -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
    r = client.completions.create(model=client.models.list().data[0].id, prompt="CENT", max_tokens=5,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5


def test_serve_local_starts_answers_and_stops_on_sigterm():
    """Also on port 0 (what `cent serve --port 0` does), the port the OS chose, as its log line says
    (`_serve` reads it there), answers: this was test_serve_on_port_0_says_the_port_the_os_chose, a
    second server start for the same check. The same server takes its API key from the environment
    and never prints it (this was test_serve_takes_the_key_from_the_environment_and_never_prints_it,
    a third start); /health needs no key."""
    key = "sk-from-env-5b1d2e8f9a"
    proc, url, port = _serve(["--local"], CENT_API_KEY=key)  # --port 0: _serve reads the port from the log line
    assert port != 0 and httpx.get(url + "/health", timeout=10).status_code == 200
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}-not"}).status_code == 401
    ok = httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": "tiny", "prompt": "CENT", "max_tokens": 2})
    assert ok.status_code == 200
    _complete(url, api_key=key)
    out = _stop(proc, port)
    assert "listening on" in out and "stopped" in out
    assert "listening on http://127.0.0.1:" in out and "API key is required" in out
    assert key not in out


def test_sigterm_aborts_running_generations_at_once_and_the_server_exits():
    """Generations that would run for minutes of wall time (pace x 1e4): SIGTERM is logged when it
    arrives, the stream ends with finish_reason abort and [DONE], a collected request gets 503
    engine_stopped, and the process exits 0 (the guard is _stop's 60 s, not a speed bound)."""
    proc, url, port = _serve(["--local", "--set", "server.clock=paced", "--set", "server.pace_factor=1e4"])
    long = {"model": "tiny", "prompt": "CENT", "max_tokens": 400, "ignore_eos": True}
    got: dict = {}

    def stream():
        with httpx.stream("POST", url + "/v1/completions", json=dict(long, stream=True), timeout=60) as r:
            got["events"] = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]

    def plain():
        got["plain"] = httpx.post(url + "/v1/completions", json=long, timeout=60)

    clients = [threading.Thread(target=stream), threading.Thread(target=plain)]
    for t in clients:
        t.start()
    deadline = time.monotonic() + 60
    while httpx.get(url + "/v1/cent/status", timeout=10).json()["num_running"] < 2:
        assert time.monotonic() < deadline, "the two requests never ran"
        time.sleep(0.05)
    out = _stop(proc, port)
    for t in clients:
        t.join(60)
    events = got["events"]
    assert events[-1] == "[DONE]", events
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "abort", events
    errors = [json.loads(e)["error"] for e in events[:-1] if "error" in json.loads(e)]
    assert [e["cent"]["code"] for e in errors] == ["engine_stopped"] and json.loads(events[-3]).get("error"), events
    plain = got["plain"]
    assert (plain.status_code, plain.json()["error"]["cent"]["code"]) == (503, "engine_stopped"), plain.text
    assert "SIGTERM: aborting the running generations" in out, out
    assert "Traceback" not in out and "CancelledError" not in out, out


@pytest.fixture
def uvicorn_log():
    """uvicorn's error logger, its filters as they were after the test (a second signal adds one)."""
    import logging
    log = logging.getLogger("uvicorn.error")
    before = list(log.filters)
    yield log
    log.filters[:] = before


def test_a_signal_takes_no_lock_the_event_loop_may_hold(uvicorn_log):
    """A signal lands on the event loop's thread, maybe inside `inbox.put` with the queue's lock
    held: the handler must not put (a second put by the same thread waits forever, and so did a
    second signal). Here the lock is held while another thread runs the handler, twice."""
    import uvicorn

    from api.server import _Uvicorn
    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    from cent_serve.serving import EngineLoop

    loop = EngineLoop(Engine(CentConfig(numerics="off")))
    server = _Uvicorn(uvicorn.Config(app=None), loop.request_stop)
    with loop.inbox.mutex:  # the interrupted put's lock
        for _ in range(2):
            t = threading.Thread(target=server.handle_exit, args=(signal.SIGTERM, None), daemon=True)
            t.start()
            t.join(10)  # a few microseconds of work; 10 s only so that a hang fails instead of stalling
            assert not t.is_alive(), "the signal handler waits for the inbox's lock"
    assert server.should_exit and server.force_exit and not loop.is_alive()
    loop.start()  # it sees the flag at once: nothing waits, every request left ends as aborted
    loop._thread.join(10)
    assert not loop.is_alive()


def test_a_second_signal_exits_without_a_traceback_of_the_cancelled_lifespan(uvicorn_log):
    """uvicorn logs starlette's lifespan.shutdown.failed text when a forced exit cancels the lifespan
    (seen after SIGINT then SIGTERM 50 ms apart): that report is dropped, others are not."""
    import logging

    import uvicorn

    from api.server import _Uvicorn
    from cent_serve.config import CentConfig
    from cent_serve.engine import Engine
    from cent_serve.serving import EngineLoop

    server = _Uvicorn(uvicorn.Config(app=None), EngineLoop(Engine(CentConfig(numerics="off"))).request_stop)
    uv = uvicorn_log
    cancelled = uv.makeRecord(uv.name, logging.ERROR, __file__, 1, "Traceback (most recent call last):\n  ...\n"
                              "asyncio.exceptions.CancelledError\n", None, None)
    other = uv.makeRecord(uv.name, logging.ERROR, __file__, 1, "Traceback ...\nRuntimeError: boom", None, None)
    server.handle_exit(signal.SIGINT, None)
    assert uv.filter(cancelled) and uv.filter(other)  # one signal: nothing is dropped
    server.handle_exit(signal.SIGTERM, None)
    assert server.force_exit and not uv.filter(cancelled) and uv.filter(other)


def test_a_response_cancelled_at_the_end_of_the_grace_is_one_line(uvicorn_log):
    """A client that stops reading its stream keeps its response open until the graceful shutdown's
    time runs out; uvicorn then cancels it and logged ~60 lines of CancelledError traceback per
    response (server audit). One warning line now; other exceptions keep their traceback."""
    import asyncio
    import logging
    import sys

    import uvicorn

    from api.server import _Uvicorn

    _Uvicorn(uvicorn.Config(app=None), lambda: None)
    uv = uvicorn_log

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return uv.makeRecord(uv.name, logging.ERROR, __file__, 1, "Exception in ASGI application\n", (),
                                 sys.exc_info())

    cancelled, other = record(asyncio.CancelledError("Task cancelled")), record(RuntimeError("boom"))
    assert uv.filter(cancelled) and uv.filter(other)
    assert cancelled.levelno == logging.WARNING and cancelled.exc_info is None
    assert cancelled.getMessage() == ("a response still being written was cancelled at shutdown (its client stopped "
                                      "reading within the 10 s for open responses, or a second signal)")
    assert other.levelno == logging.ERROR and other.exc_info[0] is RuntimeError


@pytest.mark.ray
@pytest.mark.slow
def test_serve_default_on_a_local_ray():
    """What `make run` starts: a local Ray, tiny with full numerics, 8 device actors."""
    proc, url, port = _serve([])
    status = httpx.get(url + "/v1/cent/status").json()
    assert status["mapping"]["devices"] == 8 and status["numerics"] == "full"
    _complete(url)
    out = _stop(proc, port)
    assert "stopped" in out


def test_serve_on_modelled_gpus_answers_with_gpu_timing():
    """`cent serve --hardware gpu:KIND:N`: the same API; status, metrics and the timing say GPUs."""
    proc, url, port = _serve(["--hardware", "gpu:a100-80gb:2"])
    try:
        _complete(url)
        st = httpx.get(url + "/v1/cent/status", timeout=10).json()
        assert st["hardware"] == "gpu:a100-80gb:2" and st["mapping"]["mode"] == "gpu"
        assert len(st["devices"]) == 2 and all(d["busy_s"]["gpu"] > 0 for d in st["devices"])
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200
    finally:
        out = _stop(proc, port)
    assert "modelled a100-80gb GPUs" in out
    assert "1 replica x 2 GPUs used = 2 in use" in out  # not "devices"


@pytest.mark.parametrize("count, gone", [(0, "engine thread and device actors are gone"),
                                         (1, "engine thread is gone (modelled GPUs: no device actors)")])
def test_a_failed_startup_exits_3_through_the_teardown(monkeypatch, caplog, count, gone):
    """The app's lifespan failing at startup: uvicorn's exit code 3 (uvicorn.run's, whichever way the
    installed uvicorn reports it), and the engine and devices are still torn down; on modelled GPUs
    the last line names no device actors (there are none)."""
    import contextlib
    import logging

    import api.server as srv
    from tests.serving.utils import server_cfg

    build = srv.build

    def failing_build(cfg):
        app, loop = build(cfg)

        @contextlib.asynccontextmanager
        async def lifespan(_app):
            raise RuntimeError("startup fails here")
            yield

        app.router.lifespan_context = lifespan
        return app, loop

    monkeypatch.setattr(srv, "build", failing_build)
    cfg = server_cfg()
    cfg.gpu = dataclasses.replace(cfg.gpu, kind="a100-80gb", count=count)
    cfg.server.port = 0
    caplog.set_level(logging.INFO, logger="cent.server")
    with pytest.raises(SystemExit) as exc:
        srv.run_server(cfg)
    assert exc.value.code == 3
    assert f"stopped: {gone}" in caplog.text


def test_a_startup_uvicorn_returns_from_exits_3_too(monkeypatch):
    """Older uvicorn (0.29, which pyproject allows) returns from Server.run(sockets) after a failed
    startup instead of exiting 3 itself: cent serve exits 3 then as well (it exited 0)."""
    import uvicorn

    import api.server as srv
    from tests.serving.utils import server_cfg

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # never started
    cfg = server_cfg()
    cfg.server.port = 0
    callers = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(SystemExit) as exc:
        srv.run_server(cfg)
    assert exc.value.code == 3
    # the caller's handlers are back (review): exit_now left in place made the next Ctrl-C of a library
    # caller, or of pytest, kill every process it had started and exit without a word
    assert [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)] == callers


def _port_taken(port: int) -> bool:
    """Whether another process binding the port (no address reuse, as an outgoing connection's or a
    port-0 server's bind is) would be refused."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_the_listen_port_is_held_while_the_devices_start(monkeypatch):
    """A local Ray takes ~17 s to start its actors, and its processes open connections meanwhile: a
    port bound only once the devices were up was taken in between, once in CI ('server.port=41093 is
    in use' after 'ready in 16.8 s'). The port is bound before Ray and the devices start, from
    `cent serve`'s check on, and in the in-process Server."""
    import argparse

    import api.server as srv
    import cent_serve.serve_cli as serve_cli
    from tests.serving.utils import server_cfg

    seen = {}
    build = srv.build

    def build_checking(cfg, engine=None):
        seen["held"] = _port_taken(seen["port"])
        return build(cfg, engine)

    monkeypatch.setattr(srv, "build", build_checking)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        seen["port"] = s.getsockname()[1]
    cfg = server_cfg(port=seen["port"])
    with srv.Server(cfg, "local") as server:
        assert seen.pop("held"), "the in-process server's port was free while its devices started"
        assert server.port == seen["port"]
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert not _port_taken(seen["port"])  # given back when the server stops

    got = {}

    def run_server(cfg, sock=None):  # what cent serve passes: a socket bound before the checks and Ray
        got["port"] = sock.getsockname()[1]
        sock.close()

    monkeypatch.setattr(srv, "run_server", run_server)
    monkeypatch.setattr(serve_cli, "check_runnable", lambda cfg: got.setdefault("held", _port_taken(seen["port"])))
    args = argparse.ArgumentParser()
    sub = args.add_subparsers()
    serve_cli.register(sub)
    ns = args.parse_args(["serve", "--local", "--numerics", "off", "--port", str(seen["port"])])
    assert serve_cli.run_serve(ns) == 0
    assert got == dict(held=True, port=seen["port"])


def test_run_server_holds_its_port_from_before_the_devices_start(monkeypatch):
    """run_server called without a socket (as a caller of the library may) binds before `build`."""
    import uvicorn

    import api.server as srv
    from tests.serving.utils import server_cfg

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    build, held = srv.build, []
    monkeypatch.setattr(srv, "build", lambda cfg, engine=None: held.append(_port_taken(port)) or build(cfg, engine))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # returns at once, never started
    with pytest.raises(SystemExit):
        srv.run_server(server_cfg(port=port))
    assert held == [True] and not _port_taken(port)


def test_the_switch_interval_is_back_once_every_server_stopped(monkeypatch):
    """A server's process switches threads every 0.2 ms while it runs (GIL_SWITCH_S); whatever was set
    before is back once the last server stops, in whichever order they stop, and after a startup
    that failed (run_server left 1 ms for the rest of the process)."""
    import sys

    import uvicorn

    import api.server as srv
    from tests.serving.utils import server_cfg

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    try:
        a = srv.Server(server_cfg(), "local").start()
        b = srv.Server(server_cfg(), "local").start()
        assert sys.getswitchinterval() == pytest.approx(srv.GIL_SWITCH_S)  # kept in whole microseconds
        a.stop()
        assert sys.getswitchinterval() == pytest.approx(srv.GIL_SWITCH_S)  # b still serves
        b.stop()
        assert sys.getswitchinterval() == 0.004
        monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # never started
        with pytest.raises(SystemExit):
            srv.run_server(server_cfg())
        assert sys.getswitchinterval() == 0.004
    finally:
        sys.setswitchinterval(before)


def test_a_second_server_that_listens_first_is_named_by_port():
    """Two servers told one port both bind it (address reuse, neither listening yet): the one that
    listens second gets the port's one-line error, not a bare 'Address already in use'."""
    from cent_serve.preflight import bind_listen_socket, start_listening

    first = bind_listen_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = bind_listen_socket("127.0.0.1", port)
    try:
        second.listen()
        with pytest.raises(ValueError, match=f"server.port={port} is in use on 127.0.0.1: another server took it"):
            start_listening(first, "127.0.0.1", port)
    finally:
        first.close()
        second.close()


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_while_the_devices_start_ends_as_ctrl_c_does():
    """A SIGTERM while the device actors start (a pod deleted during start-up) met Ray's core's handler:
    a C++ stack dump and an abort, its half-started workers left behind. It ends as Ctrl-C does. Two
    device actors, not the default 8: the signal is sent as they begin to start, whatever their number."""
    import subprocess

    from tests.serving.utils import REPO

    proc = subprocess.Popen([sys.executable, "-m", "cent_serve.cli", "serve", "--port", "0", "--devices", "2",
                             "--numerics", "off"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "cent.server: started a local Ray" in line:  # the device actors start next
                proc.send_signal(signal.SIGTERM)
                break
        out = "".join(lines) + proc.stdout.read()
        proc.wait(120)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 130 and "cent serve: error: interrupted" in out, out
    assert "SIGTERM received" not in out and "listening on" not in out, out


SECOND_SIGNAL_EXIT_S = 60.0
"""A hang guard for the exit after a second signal (it takes well under a second: nothing is waited for)."""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("first_after, second_after", [
    ("cent.server: started a local Ray", "cent serve: error: interrupted"),  # the start-up undone, Ray shutting down
    ("listening on", "aborting the running generations"),                   # serving: the shutdown begun
])
def test_a_second_ctrl_c_exits_at_once_in_one_line_leaving_no_process(first_after, second_after):
    """Ctrl-C stops the server; a second one, while it stops, exits at once, as uvicorn and vLLM do:
    one line, no traceback, exit code 130, and none of the processes it started (the local Ray's, the
    device actors) left. It was swallowed while the devices and Ray stopped (the process went on and
    exited 0), and during the atexit ray.shutdown of an interrupted start-up it printed a
    KeyboardInterrupt traceback, the process died of SIGSEGV and Ray's agents outlived it."""
    import subprocess

    from tests.processes import kill_marked, marked_pids, new_marker
    from tests.serving.utils import REPO

    marker = new_marker()  # in every process the server starts, whoever their parent is by then
    env = dict(__import__("os").environ, PYTHONUNBUFFERED="1", **marker)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "cent_serve.cli", "serve", "--port", "0", "--devices", "2",
                             "--numerics", "off"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    # a hang guard for the start-up and both signals; the server's children too, or one holding the pipe
    # would keep readlines() below waiting after the server died (review)
    watchdog = threading.Timer(300, lambda: (proc.kill(), kill_marked(marker)))
    watchdog.start()
    lines: list[str] = []
    try:
        for wait_for in (first_after, second_after):
            for line in proc.stdout:
                lines.append(line)
                if wait_for in line:
                    break
            if wait_for == "listening on":  # serving once it answers (uvicorn has its signal handlers)
                url = line.split("listening on ", 1)[1].split("/v1", 1)[0]
                while httpx.get(url + "/health", timeout=30).status_code != 200:
                    time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        lines += proc.stdout.readlines()
        proc.wait(SECOND_SIGNAL_EXIT_S)
        waited_s = time.monotonic() - sent
        deadline = time.monotonic() + 10  # SIGKILLed: gone once the kernel has reaped them
        while marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = marked_pids(marker)
    finally:
        watchdog.cancel()
        proc.kill()
        kill_marked(marker)
    out = "".join(lines)
    assert "Traceback" not in out and proc.returncode == 130, out
    assert [x for x in lines if "SIGINT again: exiting now" in x], out
    assert left == [], (left, out)
    assert waited_s < SECOND_SIGNAL_EXIT_S, out


@pytest.mark.parametrize("extra, warned", [(["--ray-address", "10.0.0.1:6379", "--placement", "pack"], True),
                                           ([], False)])
def test_local_warns_of_the_ray_flags_it_does_not_read(monkeypatch, caplog, extra, warned):
    """`cent serve --local --ray-address 10.0.0.1:6379` served from this process without a word: the
    address (and --placement) silently dropped, read as if the devices ran on that cluster. One warning
    names them and the fix; --local alone says nothing."""
    import argparse

    import api.server as srv
    from cent_serve import serve_cli

    monkeypatch.setattr(srv, "run_server", lambda cfg, sock=None: sock.close())
    monkeypatch.setattr(serve_cli, "check_runnable", lambda cfg: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["serve", "--local", "--numerics", "off", "--port", str(port), *extra])
    with caplog.at_level("WARNING", logger="cent"):
        assert serve_cli.run_serve(ns) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "cent"]
    if warned:
        assert lines == ["--ray-address 10.0.0.1:6379 --placement pack: not read with --local (the devices run in "
                         "this process, no Ray): drop --local to run them on the cluster"], lines
    else:
        assert lines == [], lines
