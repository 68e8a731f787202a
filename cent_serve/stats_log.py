"""The server's periodic stats line: what an operator reads in the log over hours.

The server logs nothing per request (its access log is off, as vLLM's request lines are when it is
not asked for them); instead, at most every LOG_STATS_S wall seconds while work runs, one INFO line
with the interval's throughput and the queues, as vLLM's `LoggingStatLogger`
(vllm/v1/metrics/loggers.py: every VLLM_LOG_STATS_INTERVAL, 10 s, and nothing at INFO while idle).
A soak of hours writes a line per 10 s of load, whatever the requests: /metrics has the rest.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("cent.stats")

LOG_STATS_S = 10.0
"""Wall seconds between two stats lines while the engine runs rounds (vLLM's default interval)."""


class StatsLog:
    """Ticked by the engine thread after each round (`EngineLoop.on_round`) and while it idles
    (`EngineLoop.on_idle`, about every IDLE_POLL_S), as vLLM's log runs on a timer: logs when LOG_STATS_S
    has passed since the last line, so the load's last interval gets its line when the load stops, and
    an idle interval (no line) starts the next one afresh. `read()` gives the engine's (prompt tokens, generation tokens,
    simulated clock s, running, waiting, KV usage as a fraction): totals since start, and gauges now."""

    def __init__(self, read: Callable[[], tuple[int, int, float, int, int, float]], interval_s: float = LOG_STATS_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read, self.interval_s, self.clock = read, interval_s, clock
        self._last_wall_s = clock()
        self._last = read()

    def tick(self) -> None:
        """A clock read and a compare, unless a line is due (then `read()` once)."""
        now = self.clock()
        wall_s = now - self._last_wall_s
        if wall_s < self.interval_s:
            return
        cur = self.read()
        prompt, generated, sim_s = (c - p for c, p in zip(cur[:3], self._last[:3]))
        self._last_wall_s, self._last = now, cur
        running, waiting, kv_usage = cur[3:]
        if not (prompt or generated or running or waiting):
            return  # idle (rounds with no lanes that only free sequences): no line, as vLLM's
        sim = (f"simulated {prompt / sim_s:.1f} prompt + {generated / sim_s:.1f} generation tok/s over {sim_s:.3g} s"
               if sim_s > 0 else "no simulated time passed")
        log.info("throughput: %.1f prompt + %.1f generation tok/s over %.0f wall s (%s); running %d, waiting %d; "
                 "KV cache %.1f%%", prompt / wall_s, generated / wall_s, wall_s, sim, running, waiting, 100 * kv_usage)


def engine_reader(engine) -> Callable[[], tuple[int, int, float, int, int, float]]:
    """`StatsLog`'s `read` of an `Engine` (engine thread only)."""
    def read():
        s = engine.scheduler
        return (engine.stats.prompt_tokens, engine.stats.generation_tokens, engine.now_s, s.num_running,
                s.num_waiting, s.kv_usage())
    return read
