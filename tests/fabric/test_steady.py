"""The compiled tick loop (`device_worker.steady`) speaks the link's wire exactly: its ticks are
msgpack's bytes for {"kind": "tick", "round", "x"}, it reads only those and leaves every other
frame to the link, whole, and over real sockets it answers what the kernel and `tick_message`
give, through partial reads, a table that lacks a context, KV blocks to grow and a closed peer."""
from __future__ import annotations

import socket
import struct
import threading

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cent_serve.timing.clock import DeviceClock, hand_on_tick, tick
from device_worker.steady import (_HEAD, _X_KEY, CLOSED, CROSSED, NEED, OTHER, buffers, encode_tick, parse_tick,
                                  steady_loop)
from fabric.link import HEADER, Link
from fabric.wire import encode
from fabric.rounds import tick_message

ROUNDS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]
RECV_TIMEOUT_S = 10
"""The compiled loop blocks in recv: every socket it reads gets this receive timeout, so a
regression fails the test (the loop returns FAILED) instead of hanging it."""


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", RECV_TIMEOUT_S, 0))
    return a, b


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ROUNDS) | st.integers(0, 2**63 - 1), st.integers(0, 9000))
def test_a_tick_frame_is_msgpacks_bytes_both_ways(round_id, n):
    x = np.arange(n, dtype=np.float64) * 1.5
    want = tick_message(round_id, x)
    out = np.zeros(64 + 8 * n, dtype=np.uint8)
    length = encode_tick(out, round_id, x, _HEAD, _X_KEY)
    assert out[:length].tobytes() == HEADER.pack(len(want)) + want
    frame = np.frombuffer(HEADER.pack(len(want)) + want, dtype=np.uint8)
    rid, at, size = parse_tick(frame, 8, frame.shape[0], _HEAD, _X_KEY)
    assert (rid, size) == (round_id, 8 * n) and frame[at:at + size].tobytes() == x.tobytes()


@pytest.mark.parametrize("msg", [
    {"kind": "run", "round": 3, "x": b"12345678"},
    {"round": 3, "kind": "tick", "x": b"12345678"},  # another key order
    {"kind": "tick", "round": 3, "x": b"12345678", "more": 1},
    {"kind": "tick", "round": -3, "x": b"12345678"},
    {"kind": "tick", "round": 3.0, "x": b"12345678"},
    {"kind": "tick", "round": 3, "x": "12345678"},  # a str, not bytes
    {"kind": "tick", "round": 3},
    {"kind": "error", "error": {"type": "ValueError", "message": "x"}},
])
def test_anything_else_is_not_a_tick(msg):
    body = msgpack.packb(msg)
    frame = np.frombuffer(HEADER.pack(len(body)) + body, dtype=np.uint8)
    assert parse_tick(frame, 8, frame.shape[0], _HEAD, _X_KEY)[0] == -1
    assert parse_tick(frame[:-1], 8, frame.shape[0] - 1, _HEAD, _X_KEY)[0] == -1  # truncated


def _device(n_lanes: int, table_upto: int = 200, held: int = 10**6):
    """A one-lane-per-sequence device at context 100 with a route to two ports: tick's arguments."""
    clock = DeviceClock([2, 1], [False, False, True], 3, 16, (True, 2e-6), (False, 0.0, 0.0), 1.5e-4,
                        (0, (1, 2), 1.8e-7, 256))
    table = np.linspace(1e-5, 2e-5, 3 * 256).reshape(3, 256)
    filled = np.zeros(256, dtype=np.bool_)
    filled[:table_upto] = True
    lanes_i = np.concatenate([np.arange(n_lanes + 1), np.ones(n_lanes), np.full(n_lanes, 43)]).astype(np.int64)
    lanes_f = np.stack([np.zeros(n_lanes), np.full(n_lanes, 3e-7), np.full(n_lanes, 1e-6)])
    seq = np.stack([np.full(n_lanes, 100), np.full(n_lanes, held), np.zeros(n_lanes)]).astype(np.int64)
    return [table, filled, seq, lanes_i, lanes_f, clock.f, clock.i, np.zeros((3, 3)), np.zeros((3, 5), dtype=np.int64)]


def _frames(n_lanes: int, rounds: int):
    rng = np.random.default_rng(1)
    return [(r, rng.random(2 * n_lanes)) for r in range(rounds)]


def test_the_loop_answers_ticks_as_the_kernel_and_leaves_the_next_frame_whole():
    n = 7
    frames = _frames(n, 5)
    ref = _device(n)
    want = []
    for r, x in frames:
        out, n_crossed, _ = tick(x, *ref)
        assert n_crossed == 0  # nothing crosses into a new KV block here
        want.append(tick_message(r, out))
    a_in, b_in = _pair()
    a_out, b_out = _pair()
    other = encode({"kind": "run", "round": 9, "ready": np.zeros(3)})
    stream = b"".join(HEADER.pack(len(b)) + b for b in [tick_message(r, x) for r, x in frames] + [other])

    def trickle():  # in pieces that split frames anywhere
        for k in range(0, len(stream), 37):
            a_in.sendall(stream[k:k + 37])

    t = threading.Thread(target=trickle)
    t.start()
    inbuf, outbuf = buffers(n, n, 1 << 16)
    got = _device(n)
    sent = np.zeros(2, dtype=np.int64)
    status, have, *_ = steady_loop(b_in.fileno(), np.array([a_out.fileno()]), sent, inbuf, 0, outbuf, *got)
    t.join()
    assert status == OTHER
    link = Link(b_in)
    link.unread(inbuf[:have].tobytes())
    assert link.recv(10)["round"] == 9  # the frame the loop would not read, whole, for the link
    answers = Link(b_out)
    assert [encode(answers.recv(10)) for _ in frames] == want
    assert sent.tolist() == [len(frames), sum(HEADER.size + len(w) for w in want)]
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))  # clocks, positions, port, counters


def test_a_context_the_table_lacks_leaves_the_frame_and_the_state_alone():
    n = 3
    (r, x), = _frames(n, 1)
    a_in, b_in = _pair()
    a_in.sendall(HEADER.pack(len(tick_message(r, x))) + tick_message(r, x))
    inbuf, outbuf = buffers(n, n, 1 << 16)
    state = _device(n, table_upto=100)  # context 101 missing
    before = [s.copy() for s in state]
    none = np.zeros(0, dtype=np.int64)
    status, have, *_ = steady_loop(b_in.fileno(), none, np.zeros(2, dtype=np.int64), inbuf, 0, outbuf, *state)
    assert status == NEED and inbuf[:have].tobytes() == HEADER.pack(len(tick_message(r, x))) + tick_message(r, x)
    assert all(np.array_equal(a, b) for a, b in zip(state, before))


def test_a_new_kv_block_stops_the_round_before_its_hop_then_a_closed_peer_is_said():
    """Every sequence crosses into a new block: the loop hands the round back (its time charged,
    the frame consumed) before any port moves or anything is sent: the device grows its KV cache
    first, and a failure there fails the round as on the general path."""
    n = 3
    (r, x), = _frames(n, 1)
    a_in, b_in = _pair()
    a_out, b_out = _pair()
    a_in.sendall(HEADER.pack(len(tick_message(r, x))) + tick_message(r, x))
    inbuf, outbuf = buffers(n, n, 1 << 16)
    state = _device(n, held=100)
    ports = state[7].copy()
    status, have, rid, y, n_crossed, _ = steady_loop(
        b_in.fileno(), np.array([a_out.fileno()]), np.zeros(2, dtype=np.int64), inbuf, 0, outbuf, *state)
    assert status == CROSSED and rid == r and n_crossed == n and state[2][2, :n].tolist() == [0, 1, 2] and have == 0
    assert state[7].tolist() == ports.tolist()  # no hop charged yet
    ref = _device(n, held=100)
    ref_y, ref_crossed, _ = tick(x, *ref)
    assert ref_crossed == n and y.tolist() == ref_y.tolist()  # the kernel stops there too
    assert hand_on_tick(y, *state[3:]).tolist() == hand_on_tick(ref_y, *ref[3:]).tolist()
    b_out.settimeout(0.2)
    with pytest.raises(socket.timeout):
        b_out.recv(1)  # nothing sent
    a_in.close()
    assert steady_loop(b_in.fileno(), np.array([a_out.fileno()]), np.zeros(2, dtype=np.int64), inbuf, 0, outbuf,
                       *state)[0] == CLOSED


def test_a_frame_too_large_for_the_buffer_is_left_to_the_link():
    a_in, b_in = _pair()
    big = encode({"kind": "run", "hidden": [np.zeros(5000)]})
    a_in.sendall(HEADER.pack(len(big)) + big[:1000])
    inbuf, outbuf = buffers(3, 3, 4096)
    none = np.zeros(0, dtype=np.int64)
    status, have, *_ = steady_loop(b_in.fileno(), none, np.zeros(2, dtype=np.int64), inbuf, 0, outbuf, *_device(3))
    assert status == OTHER and have == 1008 and struct.unpack("<Q", inbuf[:8].tobytes())[0] == len(big)
