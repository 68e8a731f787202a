"""fabric.link and fabric.wire: data, not code, on the wire; every link authenticated before it is trusted.

Values round-trip bit for bit, anything else is refused by name; frames over the limit close the
link; the handshake admits the run's secret and refuses everything else (a wrong secret, a pickle
payload, a reflection, a silent peer) without interpreting what the peer sent, and the accept
loop goes on. No test asserts a wall-clock bound."""
from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import logging
import math
import os
import pickle
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import ml_dtypes
import msgpack
import numpy as np
import pytest

from fabric import link as L
from fabric import wire as W
from fabric.link import HANDSHAKE_MAX_FRAME_BYTES, HEADER, MAX_FRAME_BYTES, PROTOCOL, Link, LinkClosed, LinkRefused
from fabric.wire import (
    RECV_CHUNK_BYTES, REMOTE_ERROR_TYPES, RemoteError, WireError, decode, encode, error_message, register_error,
    remote_error, wire_dtypes,
)

SECRET = secrets.token_bytes(32)
SHORT_S = 0.5
"""Handshake timeout for the silent and slow peers: short, so the tests stay fast."""
JOIN_S = 30.0
"""Generous bound on waiting for a helper thread (never reached unless something hangs)."""

SHAPES = [(), (0,), (1,), (7,), (3, 4), (2, 0, 5), (2, 3, 4), (1, 1, 1, 1, 2)]


def _pair() -> tuple[Link, Link]:
    a, b = socket.socketpair()
    return Link(a), Link(b)


def _values(dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Arrays whose bits are arbitrary (NaN payloads, -0.0, extremes): bit-exactness is visible."""
    rng = np.random.default_rng(zlib.crc32(repr((dtype.str, shape)).encode()))
    n = math.prod(shape) * dtype.itemsize
    return np.frombuffer(rng.integers(0, 256, n, dtype=np.uint8).tobytes(), dtype=dtype).reshape(shape).copy() \
        if dtype != np.dtype("?") else rng.integers(0, 2, shape).astype(bool)


def _same(a, b) -> None:
    """Equal as link values: bit-exact arrays (dtype, shape, bytes), tuples compared as lists."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert b.dtype == a.dtype.newbyteorder("<") or b.dtype == a.dtype, (a.dtype, b.dtype)
        assert b.shape == a.shape
        assert b.tobytes() == np.ascontiguousarray(a, dtype=b.dtype).tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float):
        assert type(b) is float and struct.pack("<d", a) == struct.pack("<d", b)
    else:
        assert type(b) is type(a) and b == a


# --- values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(wire_dtypes().values()), ids=lambda d: d.name)
def test_arrays_of_every_dtype_and_shape_round_trip_bit_exactly(dtype):
    for shape in SHAPES:
        a = _values(dtype, shape)
        b = decode(encode({"a": a}))["a"]
        _same(a, b)
        assert not b.flags.writeable  # documented: a view of the received bytes
        assert np.array(b).flags.writeable


def test_bfloat16_arrays_travel_as_bfloat16():
    a = np.array([1.5, -0.0, np.inf, np.nan, 3e38], dtype=ml_dtypes.bfloat16)
    b = decode(encode({"w": a}))["w"]
    assert b.dtype == ml_dtypes.bfloat16 and b.tobytes() == a.tobytes()


def test_bfloat16_is_imported_only_when_an_array_needs_it():
    """Importing ml_dtypes costs a process ~0.6 CPU-s, paid by every device actor if the modules it
    loads import it, or its random bfloat16 weights' rounding: they do not; a bfloat16 array received
    (and sent back) imports it then."""
    a = np.array([1.5, -2.0, 3e38], dtype=ml_dtypes.bfloat16)
    code = f"""
import sys
import api.server, cent_serve.cli, cent_serve.model.hf_checkpoint, cent_serve.model.weights, device_worker.actor, fabric.actor
assert "ml_dtypes" not in sys.modules, "imported at start-up"
from cent_serve.config import CentConfig, ParallelConfig, model_preset
from device_worker.worker import DeviceWorker
DeviceWorker(CentConfig(model=model_preset("tiny"), parallel=ParallelConfig(2, 2, 1), numerics="full"), 1)
assert "ml_dtypes" not in sys.modules, "imported to round a device's random bfloat16 weights"
from fabric.wire import decode, encode
b = decode(bytes.fromhex({encode({"w": a}).hex()!r}))["w"]
assert b.dtype.name == "bfloat16" and b.tobytes().hex() == {a.tobytes().hex()!r}
assert decode(encode({{"w": b}}))["w"].tobytes() == b.tobytes()
"""
    # and a bfloat16 checkpoint loads in a process that had not imported it (safetensors asks numpy
    # for the dtype by name, which only ml_dtypes' import teaches numpy)
    load = """
import sys
from cent_serve.model.hf_checkpoint import iter_checkpoint_tensors
assert "ml_dtypes" not in sys.modules
names = dict(iter_checkpoint_tensors("tests/data/hf_tiny_llama"))
assert names["model.embed_tokens.weight"].dtype.name == "float32" and len(names) > 3
"""
    for script in (code, load):
        subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2],
                       timeout=120)


@pytest.mark.parametrize("dtype", list(wire_dtypes().values()), ids=lambda d: d.name)
def test_large_arrays_round_trip_bit_exactly(dtype):
    """Past RECV_CHUNK_BYTES an array's bytes are copied differently (and read into their own buffer)."""
    for shape in ((RECV_CHUNK_BYTES // dtype.itemsize + 3,), (3, RECV_CHUNK_BYTES // dtype.itemsize)):
        a = _values(dtype, shape)
        _same(a, decode(encode({"a": a}))["a"])
        _same(a[:, ::2] if a.ndim == 2 else a[::3], decode(encode({"a": a[:, ::2] if a.ndim == 2 else a[::3]}))["a"])


def test_non_contiguous_and_big_endian_arrays_arrive_as_c_order_little_endian():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    for a in (base.T, base[:, ::2], base[::-1], base.astype(">f8"), base.astype(">i4")[1:, 1:]):
        b = decode(encode({"a": a}))["a"]
        assert b.flags.c_contiguous and b.dtype.byteorder in "=<|"
        np.testing.assert_array_equal(b, a)
        assert b.dtype == a.dtype.newbyteorder("<")


def test_scalars_containers_and_nesting_round_trip():
    msg = {
        "none": None, "t": True, "f": False, "zero": 0, "neg": -1, "i64min": -2**63, "u64max": 2**64 - 1,
        "pi": math.pi, "negzero": -0.0, "inf": math.inf, "nan": math.nan, "tiny": 5e-324,
        "s": "", "u": "héllo ☃ \x00 end", "b": b"", "raw": bytes(range(256)),
        "list": [1, "two", None, [3.0, [b"4"]]], "tuple": (1, (2, 3)), "empty": {}, "el": [],
        "deep": {"a": {"b": {"c": [{"d": np.arange(3, dtype=np.int8)}]}}},
        "arrays": [np.zeros((0, 3), np.float32), np.ones((2, 2), bool)],
    }
    _same(msg, decode(encode(msg)))
    assert decode(encode({"t": (1, (2,))}))["t"] == [1, [2]]  # documented: tuples come back as lists


def test_numpy_scalars_and_byte_likes_come_back_as_python_values():
    out = decode(encode({"i": np.int64(-3), "u": np.uint8(200), "f": np.float32(0.5), "d": np.float64(0.25),
                         "b": np.bool_(True), "ba": bytearray(b"xy"), "mv": memoryview(b"zw")}))
    assert out == {"i": -3, "u": 200, "f": 0.5, "d": 0.25, "b": True, "ba": b"xy", "mv": b"zw"}
    assert [type(out[k]) for k in ("i", "f", "b", "ba")] == [int, float, bool, bytes]


@pytest.mark.parametrize("msg, says", [
    ({"s": {1, 2}}, "builtins.set"),
    ({"c": 1j}, "complex"),
    ({"o": object()}, "builtins.object"),
    ({"f16": np.zeros(2, np.float16)}, "float16"),
    ({"u64": np.zeros(2, np.uint64)}, "uint64"),
    ({"obj": np.array([None, 1], dtype=object)}, "dtype object"),
    ({"str": np.array(["a"])}, "<U1"),
    ({"dt": np.array(["2020-01-01"], dtype="datetime64[D]")}, "datetime64"),
    ({"m": np.ma.masked_array([1.0, 2.0], mask=[0, 1])}, "MaskedArray"),
    ({"big": 2**64}, "64-bit"),
    ({"neg": -2**63 - 1}, "64-bit"),
    ({1: "int key"}, "key 1 (int)"),
    ({"nested": [{"ok": 1}, {(1, 2): 3}]}, "['nested'][1]"),
    ([1, 2], "dict, not a list"),
    ({"fn": print}, "builtin_function_or_method"),
])
def test_values_that_cannot_travel_are_refused_by_name(msg, says):
    with pytest.raises(WireError) as e:
        encode(msg)
    assert says in str(e.value)
    _same({"after": [1, np.arange(2)]}, decode(encode({"after": [1, np.arange(2)]})))  # packer still sane


def test_decode_never_unpickles_and_refuses_anything_that_is_not_a_message(tmp_path):
    evil = tmp_path / "pwned"
    bad = [
        pickle.dumps(_Evil(evil)), b"", b"\xc1", b"\x93\x01\x02\x03",  # a pickle, nothing, reserved, a list
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        msgpack.packb({1: 2}),  # an int key
        msgpack.packb({"a": b"\xff"}, use_bin_type=False),  # a raw str that is not UTF-8
        msgpack.packb({"x": msgpack.ExtType(7, b"abc")}),  # an extension links do not carry
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x63\x01" + struct.pack("<Q", 1) + b"\x00")}),  # dtype 99
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x02\x01" + struct.pack("<Q", 3) + bytes(16))}),  # short
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x02\x01" + struct.pack("<Q", 1) + bytes(9))}),  # long
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x02\x05" + bytes(8))}),  # shape truncated
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x02\x40")}),  # 64 dimensions
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x02")}),  # header truncated
        msgpack.packb({"x": msgpack.ExtType(W.ARRAY_EXT, b"\x02\x02" + struct.pack("<QQ", 0, 2**63))}),
    ]
    for blob in bad:
        with pytest.raises(WireError):
            decode(blob)
    assert not evil.exists()


# --- frames -----------------------------------------------------------------------------------

def test_messages_cross_a_link_in_order_small_large_and_multicast():
    a, b = _pair()
    big = np.random.default_rng(0).standard_normal((3, RECV_CHUNK_BYTES // 2)).astype(np.float32)
    blob = encode({"kind": "run", "hidden": [big]})

    def sender():  # frames larger than the socket's buffer: someone must read meanwhile
        for msg in ({"n": 0}, {"kind": "run", "hidden": [big]}, {"n": 2}):
            a.send(msg)
        a.send_bytes(blob)
        a.send_bytes(blob)  # encoded once, sent twice
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(sender)
        assert b.recv(JOIN_S) == {"n": 0}
        _same(big, b.recv(JOIN_S)["hidden"][0])
        assert b.recv(JOIN_S) == {"n": 2}
        _same(big, b.recv(JOIN_S)["hidden"][0])
        _same(big, b.recv(JOIN_S)["hidden"][0])
        sent.result(JOIN_S)
    b.send({"back": True})
    assert a.recv(JOIN_S) == {"back": True}


def test_a_frame_over_the_limit_closes_the_link_without_reading_it():
    raw, far = socket.socketpair()
    link = Link(far, max_frame_bytes=1024)
    raw.sendall(HEADER.pack(1025) + b"x" * 16)
    with pytest.raises(LinkClosed, match="1025 bytes, over this link's 1024-byte limit"):
        link.recv(5.0)
    with pytest.raises(LinkClosed):
        link.recv(5.0)
    assert raw.recv(16) == b""  # the sender sees the link go away


def test_the_default_limit_refuses_a_memory_bomb_header():
    raw, far = socket.socketpair()
    link = Link(far)
    raw.sendall(HEADER.pack(MAX_FRAME_BYTES + 1))  # claims 1 GiB + 1 and sends nothing more
    with pytest.raises(LinkClosed, match="over this link's"):
        link.recv(5.0)


def test_sending_over_the_limit_is_refused_before_anything_is_sent():
    a, b = _pair()
    a.max_frame_bytes = 64
    with pytest.raises(WireError, match="over the link's 64-byte frame limit"):
        a.send({"a": np.zeros(100)})
    with pytest.raises(WireError, match="builtins.set"):
        a.send({"ok": [1, {2}]})
    a.send({"ok": 1})  # still in step
    assert b.recv(5.0) == {"ok": 1}


def test_a_timeout_leaves_the_link_usable_even_mid_frame():
    raw, far = socket.socketpair()
    link = Link(far)
    with pytest.raises(TimeoutError):
        link.recv(0.05)
    frame = encode({"x": np.arange(5)})
    raw.sendall(HEADER.pack(len(frame)) + frame[:3])
    with pytest.raises(TimeoutError):
        link.recv(0.05)
    raw.sendall(frame[3:])
    _same({"x": np.arange(5)}, link.recv(5.0))


def test_the_other_end_going_away_is_link_closed_also_mid_frame():
    raw, far = socket.socketpair()
    link = Link(far)
    raw.sendall(HEADER.pack(100) + b"abc")
    raw.close()
    with pytest.raises(LinkClosed, match="mid-frame"):
        link.recv(5.0)
    a, b = _pair()
    a.close()
    with pytest.raises(LinkClosed):
        b.recv(5.0)
    with pytest.raises(LinkClosed):
        a.send({"x": 1})


def test_an_invalid_frame_is_refused_and_the_link_stays_in_step():
    raw, far = socket.socketpair()
    link = Link(far)
    junk = pickle.dumps({"a": 1})
    good = encode({"ok": True})
    raw.sendall(HEADER.pack(len(junk)) + junk + HEADER.pack(len(good)) + good)
    with pytest.raises(WireError):
        link.recv(5.0)
    assert link.recv(5.0) == {"ok": True}


class _Sock:
    """A link's socket whose sends a test holds: `send` lets through at most `room` bytes (a socket
    buffer nearly full); `sendall` sends its first half, then waits for `go` (a send under way)."""

    def __init__(self, sock: socket.socket, room: int = 1 << 20) -> None:
        self.sock, self.room = sock, room
        self.halfway, self.go = threading.Event(), threading.Event()

    def send(self, data, flags=0):
        return self.sock.send(bytes(data)[:self.room], flags)

    def sendall(self, data):
        data = bytes(data)
        self.sock.sendall(data[:len(data) // 2])
        self.halfway.set()
        self.go.wait(JOIN_S)
        self.sock.sendall(data[len(data) // 2:])

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_send_if_room_sends_a_whole_frame_or_closes_the_link():
    """A last word (`HostEnd.stop`) the socket took only part of: the link closes, so its reader sees
    the stream end (LinkClosed), never a frame cut short followed by whatever comes next."""
    a, b = _pair()
    assert a.send_if_room(encode({"kind": "stop"})) and b.recv(JOIN_S) == {"kind": "stop"}
    a.sock = _Sock(a.sock, room=5)
    assert a.send_if_room(encode({"kind": "stop"})) is False
    with pytest.raises(LinkClosed):
        a.send({"x": 1})
    with pytest.raises(LinkClosed):
        b.recv(JOIN_S)


def test_send_if_room_to_a_peer_gone_is_false_not_an_error():
    """A device already dead when its executor shuts down: the stop is not sent, and nothing raises."""
    a, b = _pair()
    b.close()
    assert a.send_if_room(encode({"kind": "stop"})) is False
    a.close()
    assert a.send_if_room(encode({"kind": "stop"})) is False


def test_send_if_room_sends_nothing_while_another_thread_is_sending_a_frame():
    """An executor shut down from another thread (`Server.stop` after its engine thread's join gave up)
    while a round is being sent: the stop must not land inside that round's frame (the reader would
    take it for part of the round, and the stream after it for frames)."""
    a, b = _pair()
    held = _Sock(a.sock)
    a.sock = held
    body = {"kind": "run", "hidden": np.arange(64, dtype=np.float64)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(a.send, body)
        assert held.halfway.wait(JOIN_S)
        sent_stop = a.send_if_room(encode({"kind": "stop"}))
        held.go.set()
        sending.result(JOIN_S)
    got = b.recv(JOIN_S)
    assert got["kind"] == "run" and np.array_equal(got["hidden"], body["hidden"])
    assert sent_stop is False


def test_close_wakes_a_thread_blocked_receiving():
    a, b = _pair()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(b.recv)
        time.sleep(0.05)
        b.close()
        with pytest.raises(LinkClosed):
            waiting.result(JOIN_S)


# --- the handshake ----------------------------------------------------------------------------

class _Evil:
    """Unpickling this creates a file: proof that nothing unpickled it, if the file never appears."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def server():
    """A listening socket on 127.0.0.1 and `accept_one(secret, timeout_s)` -> Future of
    `Link.accept` on its next connection (as the switch's accept loop runs it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    pool = concurrent.futures.ThreadPoolExecutor(2)

    def accept_one(secret=SECRET, timeout_s=L.HELLO_TIMEOUT_S):
        def run():
            conn, _ = listener.accept()
            return Link.accept(conn, secret, timeout_s)
        return pool.submit(run)

    yield listener.getsockname(), accept_one
    listener.close()
    pool.shutdown(wait=False, cancel_futures=True)


def _good_client_is_admitted(address, accept_one, hello=None):
    hello = hello or {"role": "device", "device_id": 3}
    accepted = accept_one()
    client = Link.connect(address, hello, SECRET, timeout_s=JOIN_S)
    link, got = accepted.result(JOIN_S)
    assert got == hello
    client.send({"ping": np.arange(80, dtype=np.float64)})
    _same({"ping": np.arange(80, dtype=np.float64)}, link.recv(JOIN_S))
    link.send({"pong": 1})
    assert client.recv(JOIN_S) == {"pong": 1}
    client.close()
    link.close()


def test_the_same_secret_is_admitted_and_the_link_carries_messages(server):
    address, accept_one = server
    _good_client_is_admitted(address, accept_one)
    _good_client_is_admitted(address, accept_one, {"role": "host"})


def test_connect_socket_runs_the_client_side_on_a_socket_pair():
    a, b = socket.socketpair()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        accepted = pool.submit(Link.accept, b, SECRET)
        client = Link.connect_socket(a, {"role": "test"}, SECRET)
        link, hello = accepted.result(JOIN_S)
    assert hello == {"role": "test"}
    client.send({"x": 1})
    assert link.recv(JOIN_S) == {"x": 1}


def test_a_wrong_secret_is_refused_on_both_sides(server, caplog):
    address, accept_one = server
    accepted = accept_one()
    with caplog.at_level(logging.WARNING, logger="cent.link"):
        with pytest.raises(LinkRefused, match="does not hold the same secret"):
            Link.connect(address, {"role": "device", "device_id": 0}, secrets.token_bytes(32), timeout_s=JOIN_S)
        with pytest.raises(LinkRefused, match="client's proof is wrong"):
            accepted.result(JOIN_S)
    assert "127.0.0.1:" in caplog.text and "refused a link from" in caplog.text
    assert SECRET.hex() not in caplog.text and repr(SECRET) not in caplog.text
    _good_client_is_admitted(address, accept_one)


def test_a_pickle_from_a_client_without_the_secret_is_never_unpickled(server, tmp_path, caplog):
    address, accept_one = server
    evil = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(evil), protocol=pickle.HIGHEST_PROTOCOL)
    for wire in (HEADER.pack(len(payload)) + payload, payload):  # as the old link framed it, and bare
        accepted = accept_one()
        with socket.create_connection(address) as raw, caplog.at_level(logging.WARNING, logger="cent.link"):
            raw.sendall(wire)
            with pytest.raises(LinkRefused):
                accepted.result(JOIN_S)
            raw.settimeout(JOIN_S)
            assert raw.recv(1) == b""  # closed on it, nothing said
    assert not evil.exists()
    assert caplog.text.count("refused a link from 127.0.0.1:") == 2
    _good_client_is_admitted(address, accept_one)  # the same listening socket still admits


def _raw_frame(sock: socket.socket, msg: dict) -> None:
    blob = encode(msg)
    sock.sendall(HEADER.pack(len(blob)) + blob)


def _read_raw_frame(sock: socket.socket) -> dict:
    f = sock.makefile("rb")
    (n,) = HEADER.unpack(f.read(HEADER.size))
    return decode(f.read(n))


@pytest.mark.parametrize("first", [
    {"proto": "cent-link/0", "nonce": bytes(32)},  # another protocol
    {"proto": PROTOCOL, "nonce": b"short"},  # a nonce of the wrong size
    {"proto": PROTOCOL},  # no nonce
    {"hello": "world"},
], ids=["protocol", "nonce-size", "no-nonce", "no-handshake"])
def test_a_malformed_handshake_is_refused(server, first):
    address, accept_one = server
    accepted = accept_one()
    with socket.create_connection(address) as raw:
        _raw_frame(raw, first)
        with pytest.raises(LinkRefused):
            accepted.result(JOIN_S)


def test_garbage_and_an_oversized_handshake_frame_are_refused(server):
    address, accept_one = server
    for wire in (os.urandom(64), HEADER.pack(HANDSHAKE_MAX_FRAME_BYTES + 1) + bytes(HANDSHAKE_MAX_FRAME_BYTES + 1),
                 HEADER.pack(3) + b"\xc1\xc1\xc1"):
        accepted = accept_one()
        with socket.create_connection(address) as raw:
            raw.sendall(wire)
            with pytest.raises(LinkRefused):
                accepted.result(JOIN_S)
    _good_client_is_admitted(address, accept_one)


def test_the_server_proves_nothing_before_the_client_has(server):
    """No oracle: a client without the secret gets a nonce, never a MAC to reflect or replay."""
    address, accept_one = server
    accepted = accept_one()
    with socket.create_connection(address) as raw:
        raw.settimeout(JOIN_S)
        _raw_frame(raw, {"proto": PROTOCOL, "nonce": secrets.token_bytes(32)})
        reply = _read_raw_frame(raw)
        assert set(reply) == {"proto", "nonce"}
        _raw_frame(raw, {"mac": reply["nonce"]})  # the server's challenge reflected as a proof
        with pytest.raises(LinkRefused, match="proof is wrong"):
            accepted.result(JOIN_S)
        assert raw.recv(1) == b""


def _fake_server(behaviour):
    """A server without the secret that runs `behaviour(sock, client_nonce)` against a client."""
    a, b = socket.socketpair()
    b.settimeout(JOIN_S)

    def run():
        first = _read_raw_frame(b)
        behaviour(b, first["nonce"])
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return a, b, t


def test_a_reflected_challenge_is_refused_by_the_client():
    def reflect_nonce(sock, nonce):
        _raw_frame(sock, {"proto": PROTOCOL, "nonce": nonce})  # the client's own challenge back
    a, b, t = _fake_server(reflect_nonce)
    with pytest.raises(LinkRefused, match="own challenge back"):
        Link.connect_socket(a, {"role": "device", "device_id": 1}, SECRET, timeout_s=JOIN_S)
    t.join(JOIN_S)


def test_a_reflected_proof_is_refused_by_the_client():
    """The client's proof sent back as the server's: the direction labels make them differ."""
    def reflect_mac(sock, nonce):
        _raw_frame(sock, {"proto": PROTOCOL, "nonce": secrets.token_bytes(32)})
        proof = _read_raw_frame(sock)["mac"]
        _raw_frame(sock, {"mac": proof})
    a, b, t = _fake_server(reflect_mac)
    with pytest.raises(LinkRefused, match="server's proof is wrong"):
        Link.connect_socket(a, {"role": "device", "device_id": 1}, SECRET, timeout_s=JOIN_S)
    t.join(JOIN_S)


def test_a_reflected_proof_is_refused_by_the_server(server):
    """A client that somehow holds a server-direction MAC for this exchange still cannot pass it
    off as its own (computed here with the secret, to isolate the direction binding)."""
    address, accept_one = server
    accepted = accept_one()
    with socket.create_connection(address) as raw:
        raw.settimeout(JOIN_S)
        nc = secrets.token_bytes(32)
        _raw_frame(raw, {"proto": PROTOCOL, "nonce": nc})
        ns = _read_raw_frame(raw)["nonce"]
        server_mac = hmac.new(SECRET, L.SERVER_LABEL + nc + ns, hashlib.sha256).digest()
        _raw_frame(raw, {"mac": server_mac})
        with pytest.raises(LinkRefused, match="client's proof is wrong"):
            accepted.result(JOIN_S)


def test_a_silent_peer_is_dropped_after_the_handshake_timeout(server):
    address, accept_one = server
    accepted = accept_one(timeout_s=SHORT_S)
    with socket.create_connection(address) as raw:
        with pytest.raises(LinkRefused, match="in time"):
            accepted.result(JOIN_S)
        raw.settimeout(JOIN_S)
        assert raw.recv(1) == b""
    _good_client_is_admitted(address, accept_one)


def test_a_slow_loris_cannot_extend_the_handshake_timeout(server):
    """A client that holds the secret but trickles its first frame in pieces, each gap shorter
    than the timeout and the whole longer: refused, because the timeout bounds the whole
    handshake, not each read (with per-read timeouts this client would be admitted)."""
    address, accept_one = server
    accepted = accept_one(timeout_s=SHORT_S)
    raw = socket.create_connection(address)
    raw.settimeout(JOIN_S)

    def slow_honest_client():
        nc = secrets.token_bytes(32)
        frame = encode({"proto": PROTOCOL, "nonce": nc})
        wire = HEADER.pack(len(frame)) + frame
        pieces = 8  # 8 gaps of SHORT_S / 4: twice the timeout in all
        try:
            for i in range(pieces):
                time.sleep(SHORT_S / 4)
                raw.sendall(wire[i * len(wire) // pieces:(i + 1) * len(wire) // pieces])
            ns = _read_raw_frame(raw)["nonce"]
            _raw_frame(raw, {"mac": hmac.new(SECRET, L.CLIENT_LABEL + nc + ns, hashlib.sha256).digest()})
            _read_raw_frame(raw)
            _raw_frame(raw, {"role": "host"})
        except (OSError, struct.error, WireError):
            return  # refused: the server closed on it
    t = threading.Thread(target=slow_honest_client, daemon=True)
    t.start()
    with pytest.raises(LinkRefused, match="in time"):
        accepted.result(JOIN_S)
    t.join(JOIN_S)
    raw.close()


def test_a_hello_that_cannot_travel_or_a_bad_secret_fails_before_connecting():
    with pytest.raises(TypeError, match="secret is bytes"):
        Link.connect(("127.0.0.1", 9), {"role": "host"}, None)
    with pytest.raises(ValueError, match="too short"):
        Link.connect(("127.0.0.1", 9), {"role": "host"}, b"short")
    with pytest.raises(WireError, match="handshake's"):
        Link.connect(("127.0.0.1", 9), {"role": "host", "pad": "x" * HANDSHAKE_MAX_FRAME_BYTES}, SECRET)
    with pytest.raises(WireError):
        Link.connect(("127.0.0.1", 9), {"role": {1, 2}}, SECRET)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", REMOTE_ERROR_TYPES, ids=lambda c: c.__name__)
def test_builtin_errors_round_trip_by_type(cls):
    exc = cls("device 3: something went wrong")
    back = remote_error(decode(encode({"error": error_message(exc)}))["error"])
    assert type(back) is cls and str(back) == str(exc)


def test_key_error_keeps_its_message():
    back = remote_error(error_message(KeyError("seq 7")))
    assert type(back) is KeyError and str(back) == str(KeyError("seq 7"))


class LinkTestCacheFull(RuntimeError):
    """Stands in for device_worker's KVCacheFull."""


def test_registered_errors_round_trip_and_others_become_remote_error():
    assert register_error(LinkTestCacheFull) is LinkTestCacheFull
    register_error(LinkTestCacheFull)  # registering again is harmless
    back = remote_error(error_message(LinkTestCacheFull("no free blocks")))
    assert type(back) is LinkTestCacheFull and str(back) == "no free blocks"

    class Unlisted(Exception):
        pass
    back = remote_error(error_message(Unlisted("boom")))
    assert type(back) is RemoteError and isinstance(back, RuntimeError)
    assert str(back) == "Unlisted: boom" and back.remote_type == "Unlisted"
    again = remote_error(error_message(back))  # relayed once more: still names the original
    assert type(again) is RemoteError and str(again) == "Unlisted: boom"


def test_register_error_refuses_a_second_class_of_the_same_name_and_non_exceptions():
    other = type("LinkTestCacheFull", (RuntimeError,), {"__module__": "elsewhere"})
    register_error(LinkTestCacheFull)
    with pytest.raises(ValueError, match="already registered"):
        register_error(other)
    with pytest.raises(ValueError, match="already registered"):
        register_error(type("ValueError", (Exception,), {}))  # builtins cannot be shadowed
    with pytest.raises(TypeError):
        register_error(int)


def test_malformed_error_reports_become_remote_error():
    for d in (None, {}, {"type": 1, "message": "x"}, {"type": "ValueError"}, "ValueError"):
        assert type(remote_error(d)) is RemoteError
    assert len(error_message(ValueError("x" * 100_000))["message"]) < 11_000


def test_a_reloaded_module_may_register_its_class_again():
    reloaded = type("LinkTestCacheFull", (RuntimeError,), {"__module__": LinkTestCacheFull.__module__,
                                                           "__qualname__": LinkTestCacheFull.__qualname__})
    try:
        assert register_error(reloaded) is reloaded
        assert type(remote_error(error_message(reloaded("x")))) is reloaded
    finally:
        register_error(LinkTestCacheFull)
