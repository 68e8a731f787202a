"""The devices' own waits within a round follow `server.round_timeout_s` (`ServerConfig.peer_wait_s`:
the round timeout with a margin over it), where they were fixed at 120 s (an exchange), 300 s (a
leader waiting for a rank) and 300 s (a send to a peer that stops reading): a round longer than
300 s ended as a device's TimeoutError whatever round_timeout_s said, and a lowered round timeout
left the devices waiting minutes. On the threaded chain of test_chain.py, with a stalled rank."""
from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from fabric.link import Link, LinkClosed
from tests.fabric.test_chain import ThreadedChain, _plan

ROUND_TIMEOUT_S = 0.3
"""A small round timeout: the devices give up on a stalled peer after `peer_wait_s` of it (1.33 s)."""
SLACK = 10
"""Wall bounds below are `SLACK` times the wait they check: the point is that a device gives up
after the configured wait and not the fixed minutes it waited before; a busy machine can stretch a
1.33 s wait several times, not tenfold."""


def _cfg(numerics: str, round_timeout_s: float = ROUND_TIMEOUT_S) -> CentConfig:
    cfg = CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(4, 2, 2), numerics=numerics)
    cfg.server.round_timeout_s = round_timeout_s
    return cfg


class Stall:
    """A device's rounds, stalled until `release` (a process alive with its links open that answers
    nothing: stopped, or hung); counts the rounds that reached it."""

    def __init__(self, worker) -> None:
        self.run_inner, self.released, self.num_rounds = worker.run, threading.Event(), 0
        worker.run = self.run

    def run(self, plan, x):
        self.num_rounds += 1
        self.released.wait()
        return self.run_inner(plan, x)


@pytest.mark.parametrize("numerics, waits", [("off", "no output from device 3"),  # the leader, for a rank
                                             ("full", "the other ranks of exchange")])  # an exchange at the switch
def test_a_device_gives_up_on_a_stalled_rank_after_the_round_timeout_with_its_margin(numerics, waits):
    cfg = _cfg(numerics)
    wait_s = cfg.server.peer_wait_s
    assert ROUND_TIMEOUT_S < wait_s < ROUND_TIMEOUT_S + 2
    chain = ThreadedChain(cfg)
    assert {p.wait_s for p in chain.ports.values()} == {wait_s}
    stall = Stall(chain.ports[3].worker)  # a rank of the second unit (devices 2 and 3), not its leader
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"device 2: {waits}.* within {wait_s:g} s \(server.round_timeout_s=0.3 "):
        chain.run(_plan(0, 0, [1, 5], 0))  # the host's own wait (60 s) would say 'no whole message'
    elapsed = time.monotonic() - t0
    stall.released.set()
    # the error came from device 2's wait, which began after the host sent the round: no sooner than the
    # wait, and long before the fixed 120 s / 300 s the devices waited before
    assert stall.num_rounds == 1 and wait_s <= elapsed < SLACK * (2 * wait_s), elapsed


def test_a_raised_round_timeout_raises_the_device_waits_past_the_old_fixed_300_s():
    cfg = _cfg("off", round_timeout_s=1000.0)
    chain = ThreadedChain(cfg)
    assert {p.wait_s for p in chain.ports.values()} == {cfg.server.peer_wait_s} and cfg.server.peer_wait_s > 1000.0


def _stall_option(link: Link) -> tuple[int, int]:
    """The link socket's SO_SNDTIMEO as (seconds, microseconds)."""
    return struct.unpack("@ll", link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.calcsize("@ll")))


@pytest.mark.skipif(not hasattr(socket, "SO_SNDTIMEO"), reason="no SO_SNDTIMEO on this platform")
def test_a_send_to_a_peer_that_stops_reading_gives_up_after_the_link_s_own_stall_limit():
    """A fraction of a second is kept (it was truncated to whole seconds: 0.3 s became 0, which the
    kernel reads as no limit at all, a send blocked for ever), and the send fails with LinkClosed."""
    a, b = socket.socketpair()
    link = Link(a, send_stall_s=ROUND_TIMEOUT_S)
    assert _stall_option(link) == (0, 300_000) and _stall_option(Link(b, send_stall_s=1000.5)) == (1000, 500_000)
    blob = np.zeros(1 << 22, dtype=np.uint8).tobytes()  # 4 MiB a frame: the socket buffers fill at once
    box = {}

    def send() -> None:
        t0 = time.monotonic()
        try:
            for _ in range(64):  # b never reads
                link.send_bytes(blob)
        except LinkClosed as exc:
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=send, daemon=True)
    t.start()
    t.join(SLACK * ROUND_TIMEOUT_S + 5)
    assert isinstance(box.get("error"), LinkClosed), box
    assert ROUND_TIMEOUT_S <= box["elapsed"] < SLACK * ROUND_TIMEOUT_S + 5, box  # + the first 4 MiB copied
    b.close()


def test_the_default_peer_wait_is_the_documented_331_s():
    """docs/serving.md: 300 s and its margin, 10 % of it and 1 s (the second keeps a small test's
    round timeout clear of a busy host)."""
    assert CentConfig().server.peer_wait_s == 331.0 and _cfg("off").server.peer_wait_s == 0.3 * 1.1 + 1


def _total_s(option: tuple[int, int]) -> float:
    return option[0] + option[1] / 1e6


@pytest.mark.skipif(not hasattr(socket, "SO_SNDTIMEO"), reason="no SO_SNDTIMEO on this platform")
@pytest.mark.parametrize("seconds", [1e-7, 2.9999999999, 330.99999999999994])
def test_a_send_stall_limit_at_the_edges_of_a_second_is_set_not_dropped(seconds):
    """A timeval's microseconds must be below 1,000,000 (the kernel refuses the option otherwise:
    EDOM, dropped silently, no limit) and (0, 0) means no limit: a limit a hair under a whole second
    or under a microsecond is still a limit, within the kernel's tick (a few ms) of the one asked."""
    a, b = socket.socketpair()
    try:
        got = _total_s(_stall_option(Link(a, send_stall_s=seconds)))
        assert got > 0 and abs(got - seconds) < 0.02, (seconds, got)
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not hasattr(socket, "SO_SNDTIMEO"), reason="no SO_SNDTIMEO on this platform")
@pytest.mark.parametrize("over", ["unix", "tcp"])
def test_a_listener_s_links_and_links_to_it_take_the_stall_limits_given(over):
    """Both ends of a link the way the actors make them (`Listener`, `Address.connect`, over the Unix
    socket on the same node or TCP): the listener's end takes its `send_stall_s` (the switch's and a
    device's sends to the host and to their peers go on accepted links), the connecting end its own."""
    from fabric.listener import Listener

    secret, admitted = b"s" * 32, []
    listener = Listener("127.0.0.1", secret, lambda link, hello: admitted.append(link), "stall-test", "node-a",
                        send_stall_s=ROUND_TIMEOUT_S)
    try:
        if over == "unix" and listener.unix is None:
            pytest.skip("no Unix socket on this platform")
        link = listener.address.connect({"role": "host"}, secret, "node-a" if over == "unix" else "node-b",
                                        send_stall_s=2.5)
        assert link.sock.family == (socket.AF_UNIX if over == "unix" else socket.AF_INET)
        deadline = time.monotonic() + 60  # the listener admits on a thread of its own
        while not admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _stall_option(link) == (2, 500_000) and _stall_option(admitted[0]) == (0, 300_000)
        link.close()
        admitted[0].close()
    finally:
        listener.close()


@pytest.mark.parametrize("round_timeout_s", [1e7, 1e15])  # the config takes up to 1e15
def test_a_wait_as_long_as_a_large_round_timeout_waits_for_the_message(round_timeout_s):
    """poll() takes its timeout in int milliseconds: a wait past 2**31 ms (24.8 days) raised
    OverflowError at once, on the host (`recv(round_timeout_s)`) and, since their waits follow it, on
    the devices, so a server with a round timeout of 1e7 s failed every round as a device fault."""
    wait_s = _cfg("off", round_timeout_s).server.peer_wait_s
    a, b = socket.socketpair()
    link, peer = Link(a), Link(b)
    timer = threading.Timer(0.05, peer.send, args=({"kind": "done"},))
    timer.start()
    try:
        assert link.recv(wait_s) == {"kind": "done"}
    finally:
        timer.cancel()
        link.close()
        peer.close()
