"""Assemble and run a server: engine (and its devices) + engine thread + FastAPI app + uvicorn.

`run_server` is what `cent serve` calls (blocks until Ctrl-C / SIGTERM, which abort the
running generations at once, then stops the engine thread and the device actors; a second signal
exits at once: `api/shutdown.py`). `Server` runs the same in a background thread for tests and
notebooks, on a free loopback port.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time

import uvicorn

from api.app import create_app
from api.metrics import Metrics
from api.shutdown import current_handlers, exit_now, on_signals, restore, stop_and_reap, stop_starting
from cent_serve.config import CentConfig
from cent_serve.engine import Engine
from cent_serve.executor.watch import ClusterLost
from cent_serve.replicas import EXIT_JOIN_S
from cent_serve.preflight import bind_listen_socket, start_listening
from cent_serve.serving import EngineLoop
from cent_serve.stats_log import StatsLog, engine_reader

log = logging.getLogger("cent.server")
STARTUP_TIMEOUT_S = 60.0
"""Longest wait for uvicorn to bind in `Server.start`."""
SHUTDOWN_GRACE_S = 10.0
"""uvicorn's `timeout_graceful_shutdown`: the longest wait, once the engine has stopped, for the
responses still being written (each ends at once: its generations were aborted); a backstop, after
which uvicorn cancels what is left."""

GIL_SWITCH_S = 0.0002
"""The interpreter's thread switch interval while a server runs (CPython's default is 5 ms). The
event loop answers HTTP beside an engine thread that computes without pause on the virtual clock:
each socket call gives the GIL up, and getting it back waits up to an interval. At 5 ms a /health
took up to 14 s behind 8 sequences of 4,000 tokens (llama2-70b timing-only, --local); at 1 ms,
with 24 clients streaming such requests again and again, /health still took up to 3.5 s and a
status read 6.7 s; at 0.2 ms 0.7-0.9 s and 1.5 s at most, and 1.45x the tokens per second (the
event loop keeps up with the streams; the engine thread gives the GIL up only while another thread
asks, so it runs as fast alone). `benchmarks/serve_long_outputs.py --stream --for S` measures it."""


_gil = {"servers": 0, "before": 0.0}
_gil_lock = threading.Lock()


def responsive_gil() -> None:
    """A server starts: the switch interval is GIL_SWITCH_S at most until the last one stops
    (`release_gil`)."""
    with _gil_lock:
        if _gil["servers"] == 0:
            _gil["before"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_gil["before"], GIL_SWITCH_S))
        _gil["servers"] += 1


def release_gil() -> None:
    """A server stopped: the interval found before the first is back once none runs."""
    with _gil_lock:
        _gil["servers"] -= 1
        if _gil["servers"] == 0:
            sys.setswitchinterval(_gil["before"])


def _not_cancelled(record: logging.LogRecord) -> bool:
    """Drops uvicorn's report of a cancelled lifespan (a forced exit cancels it unfinished: starlette
    sends lifespan.shutdown.failed with the traceback as text, which uvicorn logs as an error)."""
    if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
        return False
    return not str(record.msg).rstrip().endswith("CancelledError")


def _cancelled_response_in_one_line(record: logging.LogRecord) -> bool:
    """uvicorn logs each response it cancels when the graceful shutdown's time runs out (a client
    that stopped reading its stream) as "Exception in ASGI application" with the CancelledError's
    traceback, ~60 lines for an expected end: one line says it."""
    if (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError)
            and str(record.msg).startswith("Exception in ASGI application")):
        record.msg, record.args = ("a response still being written was cancelled at shutdown (its client stopped "
                                   "reading within the %g s for open responses, or a second signal)",
                                   (SHUTDOWN_GRACE_S,))
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"  # expected: the client's doing
    return True


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, stopping the way `cent serve` stops: the first SIGINT or SIGTERM is
    logged and stops the engine at once (`stop_engine`), so every running generation ends as
    aborted (a stream with finish_reason abort and [DONE], a collected request with 503) and
    the connections drain; then uvicorn shuts down. A second signal of either kind exits without
    waiting (uvicorn's own answers only a second SIGINT): uvicorn returns at once, `forced_by` the
    signal, and `run_server` then exits without a teardown (`api.shutdown.exit_now`). A `watch` that
    finds its Ray cluster `lost` stops the server the same way as a first signal (the engine ends
    every request with the reason, and `run_server` raises it)."""

    def __init__(self, config: uvicorn.Config, stop_engine, watch=None) -> None:
        super().__init__(config)
        self.stop_engine, self.watch = stop_engine, watch
        self.forced_by: int | None = None
        """The second signal, which asked to exit without waiting (None: none came)."""
        logging.getLogger("uvicorn.error").addFilter(_cancelled_response_in_one_line)  # once: filters are a set

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:
            log.warning("%s again: exiting now, without waiting for the open responses or the shutdown",
                        signal.Signals(sig).name)
            self.forced_by = sig
            self.force_exit = True  # uvicorn skips the lifespan's shutdown: its task ends cancelled, as asked
            logging.getLogger("uvicorn.error").addFilter(_not_cancelled)
            return
        super().handle_exit(sig, frame)  # should_exit first: a second signal must never reach the engine again
        log.info("%s: aborting the running generations and shutting down", signal.Signals(sig).name)
        self.stop_engine()

    async def on_tick(self, counter: int) -> bool:
        if not self.should_exit and self.watch is not None and self.watch.lost:  # every 0.1 s
            log.error("giving the Ray cluster up (server.cluster_lost_s): ending the requests and exiting")
            self.should_exit = True  # as a first signal: a signal now is the second
            self.stop_engine()
        return await super().on_tick(counter)


def build(cfg: CentConfig, engine: Engine | None = None):
    """(app, engine loop) for a config (`cfg.executor` says where the devices run); the loop is started."""
    watch = None
    if cfg.executor == "ray" and not cfg.on_gpus:  # which Ray, said once it is known to hold the devices: a
        # refusal comes alone (modelled GPUs run in this process, as `executor_factory` has them: no Ray)
        from cent_serve.executor.ray_executor import cluster_watch, join_cluster
        log.info("%s", join_cluster(cfg))
        watch = cluster_watch(cfg)  # started with the engine loop
    engine = engine or Engine(cfg)
    sched = engine.scheduler  # vllm:cache_config_info's labels, those of vLLM's CacheConfig that apply here
    metrics = Metrics(cfg.model.name, cfg.model.max_seq_len,
                      dict(block_size=sched.block_tokens, num_gpu_blocks=sched.kv_blocks * engine.num_replicas,
                           cache_dtype="16-bit" if cfg.on_gpus else f"{cfg.device.kv_element_bytes * 8}-bit",
                           enable_prefix_caching=False))
    stats_log = StatsLog(engine_reader(engine))  # the log's line every LOG_STATS_S under load

    def on_round(tokens: int) -> None:
        metrics.observe_round(tokens)
        stats_log.tick()

    loop = EngineLoop(engine, cfg.server.clock, cfg.server.pace_factor, on_finish=metrics.observe_finished,
                      on_tokens=metrics.observe_tokens, on_round=on_round,
                      on_late=metrics.observe_pace_late, on_idle=stats_log.tick, watch=watch)
    loop.start()
    return create_app(loop, metrics, cfg.server.api_key, cfg.server.max_body_bytes, cfg.server.origins()), loop


def run_server(cfg: CentConfig, sock: socket.socket | None = None) -> None:
    """Serve until interrupted; uvicorn handles SIGINT/SIGTERM, then everything is torn down. A
    failed startup (the app's lifespan) leaves by SystemExit(3), uvicorn's code, through the teardown;
    a Ray cluster whose head stopped answering for `server.cluster_lost_s` by ClusterLost, once every
    request has ended with that reason (its device actors are gone with it: not asked to stop).

    `sock`: the listen address, bound already (`bind_listen_socket`); without it the address is
    bound here, before Ray and the devices start. Bound from the start, the port cannot be taken by
    an outgoing connection or a port-0 bind of another process (Ray's) while the devices come up, as
    vLLM's server binds first for the same reason; it listens once the server is ready, so a client
    meets a refusal, not a hang, before then (another server told the same port can bind it too
    meanwhile: whichever listens second is refused, naming the port)."""
    t0 = time.perf_counter()
    lost = None
    if sock is None:
        sock = bind_listen_socket(cfg.server.host, cfg.server.port)
    callers = current_handlers()  # put back on the way out, but after an interrupted start-up (below)
    on_signals(stop_starting)  # a signal while Ray and the devices start undoes it; a second exits at once
    responsive_gil()
    try:
        app, loop = build(cfg)
    except BaseException as exc:
        sock.close()
        release_gil()
        if not isinstance(exc, KeyboardInterrupt):  # interrupted, a second signal (in the caller's teardown,
            restore(callers)                        # Ray's atexit shutdown) still exits at once
        raise
    mp, replicas = loop.engine.timer.mapping, loop.engine.num_replicas
    what = "emulated CENT devices" if not cfg.on_gpus else f"modelled {cfg.gpu.kind} GPUs"
    unit = "GPUs" if cfg.on_gpus else "devices"
    log.info("%s on %d %s: %d replica%s x %d %s used = %d in use (each %s); numerics %s (%s), "
             "clock %s; ready in %.1f s", cfg.model.name, mp.num_devices, what, replicas, "s" if replicas > 1 else "",
             mp.devices_used, unit, replicas * mp.devices_used, mp.describe(), *cfg.numerics_why, cfg.server.clock,
             time.perf_counter() - t0)
    if hasattr(loop.engine.tokenizer, "warn_stand_in"):  # a checkpoint without tokenizer.json: say so now
        loop.engine.tokenizer.warn_stand_in()
    try:
        # uvicorn's backlog, from now: a client that reads the log line below and connects waits, not refused
        start_listening(sock, cfg.server.host, cfg.server.port)
        host = f"[{cfg.server.host}]" if ":" in cfg.server.host else cfg.server.host
        log.info("listening on http://%s:%d/v1 (OpenAI-compatible; /metrics, /v1/cent/status)",
                 host, sock.getsockname()[1])
        if cfg.server.api_key:
            log.info("an API key is required on every path but /health, /ping and the docs (/docs, /openapi.json)")
        # uvicorn takes SIGINT/SIGTERM while it runs (`_Uvicorn.handle_exit`) and then re-raises the
        # signal to the handler found before it; this one lets the teardown below run and the process exit 0.
        signalled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda num, _frame: signalled.append(num))
        config = uvicorn.Config(app, host=cfg.server.host, port=sock.getsockname()[1], log_level="warning",
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        server = _Uvicorn(config, loop.request_stop, loop.watch)
        server.run(sockets=[sock])
        on_signals(exit_now)  # the teardown below: a signal now is the second, or one that cannot wait
        if server.forced_by is not None:  # a second signal while the responses drained: no teardown
            exit_now(server.forced_by, said=True)
        if not server.started and not signalled:  # older uvicorn returns from a failed startup (newer exits 3)
            raise SystemExit(3)  # uvicorn.run's code for it
    finally:
        sock.close()
        lost = loop.watch.lost if loop.watch is not None else None
        loop.stop()
        if not lost:  # a lost cluster's actors are gone with it; Ray would wait on its GCS to kill them
            loop.engine.shutdown(EXIT_JOIN_S)  # the process ends next: a replica's start-up is not waited out
        else:  # nor by a re-creation in flight, which leaves Ray first (inside it at ray.shutdown, it ended the
            loop.engine.replicas.give_up_cluster()  # process before the last line), asking it nothing more
        if cfg.executor == "ray":
            import ray
            reaped = stop_and_reap(ray.shutdown)  # a local Ray's workers still starting outlive its raylet
            if reaped:
                log.info("killed %d Ray processes that outlived the Ray shutdown", reaped)
        release_gil()
        restore(callers)
        log.info("stopped: %s%s", "engine thread is gone (modelled GPUs: no device actors)" if cfg.on_gpus else
                 "engine thread and device actors are gone", " (with their cluster)" if lost else "")
    if lost:
        raise ClusterLost(lost)


class Server:
    """A server on a background thread: `with Server(cfg, "local") as s: s.url ...`."""

    def __init__(self, cfg: CentConfig, executor: str | None = None, engine: Engine | None = None) -> None:
        if executor is not None:  # a caller's shorthand for cfg.executor
            cfg.executor = executor
        self.cfg = cfg
        self.sock = bind_listen_socket(cfg.server.host, cfg.server.port)  # held while the devices start (run_server)
        self.port = self.sock.getsockname()[1]
        responsive_gil()  # given back by `stop`
        self._stopped = False
        try:
            self.app, self.loop = build(cfg, engine)
        except BaseException:
            self.sock.close()
            release_gil()
            raise
        config = uvicorn.Config(self.app, host=cfg.server.host, port=self.port, log_level="warning",
                                timeout_keep_alive=5, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        self.server = _Uvicorn(config, self.loop.request_stop)
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, kwargs=dict(sockets=[self.sock]), name="cent-uvicorn",
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.server.host}:{self.port}"

    def start(self) -> "Server":
        try:
            start_listening(self.sock, self.cfg.server.host, self.port)
            self.thread.start()
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not self.server.started:
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start on {self.url}")
                time.sleep(0.02)
        except BaseException:
            self.stop()  # the engine thread, the socket and the switch interval are given back
            raise
        return self

    def stop(self) -> None:
        """As `cent serve` stops on a signal: the engine first (running generations end as aborted), then uvicorn."""
        if self._stopped:
            return
        self._stopped = True
        self.loop.stop()
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(30)
        self.sock.close()
        self.loop.engine.shutdown()
        release_gil()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
