"""A one-device unit's steady rounds, compiled end to end.

When a round brings a device nothing but times (a tick, `device_worker.port`), what it does is
fixed: read the frame, run its time pass and its port's hop (`cent_serve.timing.clock.tick`),
write the answer. `steady_loop` does that in compiled code for tick after tick, reading and
writing the link sockets itself (libc `recv` and `send`, without the GIL), and hands anything
else back to Python: a frame that is not a tick, a context the cost table lacks, a sequence
that needs a new KV block, a closed or failed socket. With dozens of device processes taking
turns on a core, a round through Python costs a device a few hundred microseconds of cold
interpreter; through this loop it costs its syscalls and the kernel.

The frames are the link's (`fabric.link`: an 8-byte little-endian length, then msgpack), and
the ticks exactly the bytes `fabric.rounds.tick_message` writes, {"kind": "tick", "round": r,
"x": raw float64 bytes}: a map of three keys in that order, the round a non-negative int in its
shortest form, "x" a bin (tests/fabric/test_steady.py checks both ways). A frame of any other
shape is not parsed here: it goes back to the link, whose decoder reads it. The links are
authenticated before this loop ever runs.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from cent_serve.timing.clock import tick

_recv = types.ExternalFunction("recv", types.intp(types.intc, types.intp, types.uintp, types.intc))
_send = types.ExternalFunction("send", types.intp(types.intc, types.intp, types.uintp, types.intc))
MSG_NOSIGNAL = 0x4000
"""send: a peer gone is an error return, not a signal."""

OTHER, NEED, CROSSED, CLOSED, FAILED, SEND_FAILED = range(6)
"""Why `steady_loop` returned: the next frame is not a tick (or too large for its buffer); the cost
table lacks a context (that frame is kept, nothing changed); sequences crossed into new KV blocks
(the round ran, not handed on); the input closed; receiving failed (e.g. interrupted: the link
reads on); sending failed (e.g. interrupted: the rest is sent from Python)."""

_HEAD = np.frombuffer(b"\x83\xa4kind\xa4tick\xa5round", dtype=np.uint8)
"""A tick's msgpack up to its round: a map of 3, "kind": "tick", "round"."""
_X_KEY = np.frombuffer(b"\xa1x", dtype=np.uint8)


@njit(cache=True)
def _big(buf, at, n):  # pragma: no cover - compiled; tested through parse_tick
    v = 0
    for k in range(n):
        v = (v << 8) | buf[at + k]
    return v


@njit(cache=True)
def _put_big(buf, at, v, n):  # pragma: no cover - compiled; tested through encode_tick
    for k in range(n):
        buf[at + n - 1 - k] = (v >> (8 * k)) & 0xFF


@njit(cache=True)
def parse_tick(buf, start, end, head, x_key):  # pragma: no cover - compiled; tested against msgpack's bytes
    """(round, offset of x, bytes of x) of the tick in buf[start:end], or round -1 if the bytes
    are not exactly a tick."""
    at = start
    if end - at < head.shape[0]:
        return -1, 0, 0
    for k in range(head.shape[0]):
        if buf[at + k] != head[k]:
            return -1, 0, 0
    at += head.shape[0]
    if at >= end:
        return -1, 0, 0
    c = buf[at]
    at += 1
    if c <= 0x7F:
        rid = c
    else:
        n = 1 if c == 0xCC else 2 if c == 0xCD else 4 if c == 0xCE else 8 if c == 0xCF else 0
        if n == 0 or at + n > end or (n == 8 and buf[at] >= 0x80):
            return -1, 0, 0
        rid = _big(buf, at, n)
        at += n
    if at + 2 > end or buf[at] != x_key[0] or buf[at + 1] != x_key[1]:
        return -1, 0, 0
    at += 2
    if at >= end:
        return -1, 0, 0
    c = buf[at]
    at += 1
    n = 1 if c == 0xC4 else 2 if c == 0xC5 else 4 if c == 0xC6 else 0
    if n == 0 or at + n > end:
        return -1, 0, 0
    size = _big(buf, at, n)
    at += n
    if at + size != end:
        return -1, 0, 0
    return rid, at, size


@njit(cache=True)
def encode_tick(out, round_id, x, head, x_key):  # pragma: no cover - compiled; tested against msgpack's bytes
    """Write the frame of a tick (length header and msgpack) of `round_id` and the float64 `x`
    into `out`; returns its length."""
    at = 8
    out[at:at + head.shape[0]] = head
    at += head.shape[0]
    if round_id <= 0x7F:
        out[at] = round_id
        at += 1
    else:
        n, c = (1, 0xCC) if round_id <= 0xFF else (2, 0xCD) if round_id <= 0xFFFF else \
            (4, 0xCE) if round_id <= 0xFFFFFFFF else (8, 0xCF)
        out[at] = c
        _put_big(out, at + 1, round_id, n)
        at += 1 + n
    out[at:at + 2] = x_key
    at += 2
    size = 8 * x.shape[0]
    n, c = (1, 0xC4) if size <= 0xFF else (2, 0xC5) if size <= 0xFFFF else (4, 0xC6)
    out[at] = c
    _put_big(out, at + 1, size, n)
    at += 1 + n
    out[at:at + size] = x.view(np.uint8)
    at += size
    body = at - 8
    for k in range(8):
        out[k] = (body >> (8 * k)) & 0xFF
    return at


@njit(nogil=True, cache=True)
def steady_loop(fd_in, fds_out, sent, inbuf, have, outbuf, table, filled, seq, lanes_i, lanes_f, f, i, ports,
                counts):  # pragma: no cover - compiled; tested over socket pairs (tests/fabric/test_steady.py)
    """Ticks from socket `fd_in` (`inbuf[:have]` already read) answered to every socket of `fds_out`
    until one of the reasons above. Returns (reason, bytes left in inbuf, the tick's round, the
    device's output, the number crossed, where):
    CROSSED: the round ran to `tick`'s stop (the device's output; the sequences crossed listed in
    seq's third row) and its frame is consumed: grow the KV caches, then `hand_on_tick` and send;
    SEND_FAILED: where = [the output that failed, bytes of the frame in outbuf sent to it, the
    frame's length]. `sent`: (2,) int64, messages and bytes sent (added to as each message starts).
    The round's other arguments are `tick`'s."""
    cap = inbuf.shape[0]
    n_lanes, n_seqs = lanes_f.shape[1], seq.shape[1]
    x = np.empty(n_lanes + n_seqs)
    none = np.empty(0, dtype=np.int64)
    head, x_key = _HEAD, _X_KEY
    n = 0
    while True:
        while True:  # a whole frame in inbuf[:have]
            if have >= 8:
                n = 0
                for k in range(8):
                    n |= np.int64(inbuf[k]) << (8 * k)
                if n < 0 or n > cap - 8:
                    return OTHER, have, 0, x, 0, none
                if have >= 8 + n:
                    break
            got = _recv(fd_in, inbuf.ctypes.data + have, cap - have, 0)
            if got == 0:
                return CLOSED, have, 0, x, 0, none
            if got < 0:
                return FAILED, have, 0, x, 0, none
            have += got
        end = 8 + n
        rid, at, size = parse_tick(inbuf, 8, end, head, x_key)
        if rid < 0 or size != 8 * (n_lanes + n_seqs):
            return OTHER, have, 0, x, 0, none
        x.view(np.uint8)[:] = inbuf[at:at + size]
        out, n_crossed, need = tick(x, table, filled, seq, lanes_i, lanes_f, f, i, ports, counts)
        if need:
            return NEED, have, rid, x, 0, none
        inbuf[:have - end] = inbuf[end:have].copy()
        have -= end
        if n_crossed:
            return CROSSED, have, rid, out, n_crossed, none
        length = encode_tick(outbuf, rid, out, head, x_key)
        for o in range(fds_out.shape[0]):
            sent[0] += 1
            sent[1] += length
            done_bytes = 0
            while done_bytes < length:
                k = _send(fds_out[o], outbuf.ctypes.data + done_bytes, length - done_bytes, MSG_NOSIGNAL)
                if k <= 0:
                    where = np.array([o, done_bytes, length], dtype=np.int64)
                    return SEND_FAILED, have, rid, x, 0, where
                done_bytes += k


def buffers(n_lanes: int, n_seqs: int, inbuf_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(input buffer, output buffer) for `steady_loop` on a layout of this size."""
    return np.zeros(inbuf_bytes, dtype=np.uint8), np.zeros(64 + 8 * (2 * n_lanes + n_seqs), dtype=np.uint8)


def warm() -> None:
    """Compile (or load from numba's on-disk cache) the loop and its helpers."""
    from cent_serve.timing.clock import DeviceClock

    clock = DeviceClock([1], [True], 1, 16, (False, 0.0), (False, 0.0, 0.0))
    inbuf, outbuf = buffers(1, 1, 64)
    steady_loop(-1, np.zeros(0, dtype=np.int64), np.zeros(2, dtype=np.int64), inbuf, 0, outbuf, np.zeros((3, 3)), np.ones(3, dtype=np.bool_),
                np.zeros((3, 1), dtype=np.int64), np.array([0, 1, 1, 1], dtype=np.int64), np.zeros((3, 1)), clock.f,
                clock.i, np.zeros((3, 2)), np.zeros((2, 5), dtype=np.int64))
