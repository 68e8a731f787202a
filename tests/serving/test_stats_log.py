"""The log over hours: one stats line per LOG_STATS_S under load, none per request, none when idle."""
from __future__ import annotations

import logging

import httpx

from api.server import Server
from cent_serve.stats_log import LOG_STATS_S, StatsLog
from tests.serving.utils import HANG_GUARD_S, body, server_cfg


class _Fake:
    """A wall clock the test moves, and engine totals it sets."""

    def __init__(self) -> None:
        self.now = 100.0
        self.state = (0, 0, 0.0, 0, 0, 0.0)

    def clock(self) -> float:
        return self.now

    def read(self):
        return self.state


def test_a_line_per_interval_under_load_with_the_intervals_throughput(caplog):
    fake = _Fake()
    stats = StatsLog(fake.read, clock=fake.clock)
    caplog.set_level(logging.INFO, logger="cent.stats")
    for i in range(1, 50):  # many rounds within one interval: no line
        fake.now += (LOG_STATS_S - 0.1) / 50
        fake.state = (10 * i, 40 * i, 0.01 * i, 3, 2, 0.25)
        stats.on_round()
    assert caplog.records == []
    fake.now, fake.state = 100.0 + LOG_STATS_S, (1000, 4000, 2.0, 3, 2, 0.25)
    stats.on_round()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("throughput: 100.0 prompt + 400.0 generation tok/s over 10 wall s (simulated 500.0 prompt "
                    "+ 2000.0 generation tok/s over 2 s); running 3, waiting 2; KV cache 25.0%")
    fake.now += LOG_STATS_S  # the next interval counts from the last line
    fake.state = (1100, 4100, 2.5, 1, 0, 0.5)
    stats.on_round()
    assert caplog.records[-1].getMessage().startswith("throughput: 10.0 prompt + 10.0 generation tok/s over 10 wall s "
                                                      "(simulated 200.0 prompt + 200.0 generation tok/s over 0.5 s)")


def test_no_line_while_idle():
    fake = _Fake()
    fake.state = (5, 50, 1.0, 0, 0, 0.0)
    stats = StatsLog(fake.read, clock=fake.clock)
    lines = []
    handler = logging.Handler()
    handler.emit = lines.append
    logging.getLogger("cent.stats").addHandler(handler)
    try:
        for _ in range(5):  # the idle engine's rounds that only free sequences: nothing made, nothing queued
            fake.now += 2 * LOG_STATS_S
            stats.on_round()
    finally:
        logging.getLogger("cent.stats").removeHandler(handler)
    assert lines == []


def test_a_server_logs_no_line_per_request(caplog):
    """200 requests, streamed and not: the log gains no line for them (the stats line comes at most
    every LOG_STATS_S, and the whole run may take less)."""
    caplog.set_level(logging.INFO)
    with Server(server_cfg(), "local") as s:
        before = len(caplog.records)
        with httpx.Client(base_url=s.url, timeout=HANG_GUARD_S) as c:
            for i in range(200):
                r = c.post("/v1/completions", json=body(prompt=f"p{i}", max_tokens=2, stream=bool(i % 2)))
                assert r.status_code == 200, r.text
        # the server's loggers (cent.*, uvicorn's, the API's), not this test's client (httpx logs each request)
        lines = [r.getMessage() for r in caplog.records[before:] if not r.name.startswith(("httpx", "httpcore"))]
    assert len([m for m in lines if not m.startswith("throughput: ")]) == 0, lines[:5]
