"""The wire of the round chain and the switch: one connection (TCP, or a Unix socket between
processes on one node) between two of the host, the device actors and the fabric actor, carrying
data, never code.

Why not Ray calls for the data path: on the 2-core machine this was built on, a Ray actor call
costs 2-3 ms and a compiled-graph hop about 1 ms, while a message on an open socket costs tens of
microseconds; a 70B pipeline round is 27 device visits and 26 fabric hops. Ray still creates,
places, queries and kills the actors; only the rounds travel here.

Messages. A message is a dict with str keys whose values are None, bool, int (64-bit), float,
str, bytes, lists, tuples, dicts with str keys and numpy arrays (dtypes in `ARRAY_DTYPES`), nested
freely. On the wire it is one msgpack map; an array is a msgpack ExtType (`ARRAY_EXT`) carrying
its dtype code, its shape and its raw little-endian bytes, rebuilt with `np.frombuffer`. Decoding
never unpickles, never evaluates, never imports: anything outside the whitelist is refused with a
`WireError` naming what is wrong. What comes back differs from what was sent only in:
  - tuples come back as lists; bytearray and memoryview come back as bytes;
  - numpy scalars (np.float32(1), np.int64(3), np.bool_) come back as Python float, int, bool;
  - arrays come back C-contiguous, little-endian and READ-ONLY (views of the received bytes:
    `np.array(a)` or `a.copy()` for a writable one), with the same dtype, shape and bits;
  - msgpack's own `ExtType` / `Timestamp` objects are not values: the far end refuses the former
    and reads the latter as int nanoseconds (nothing in the protocol sends them).

Frames. An 8-byte little-endian length (`HEADER`) then the msgpack body. A frame longer than the
receiving link's limit (`MAX_FRAME_BYTES`, or `HANDSHAKE_MAX_FRAME_BYTES` before the peer is
authenticated) is never read: the link is closed and `recv` raises `LinkClosed`.

Authentication. Every link made with `Link.connect` / `Link.accept` proves, before anything else
is read from it, that both ends hold the run's secret (bytes made by the driver with
`secrets.token_bytes(32)` and handed to the actors). The handshake, each step one small frame:

  1. client -> server  {"proto": PROTOCOL, "nonce": Nc}            Nc, Ns: NONCE_BYTES from `secrets`
  2. server -> client  {"proto": PROTOCOL, "nonce": Ns}
  3. client -> server  {"mac": HMAC-SHA256(secret, CLIENT_LABEL + Nc + Ns)}
  4. server -> client  {"mac": HMAC-SHA256(secret, SERVER_LABEL + Nc + Ns)}   only if 3 was right
  5. client -> server  hello (who the client is, e.g. {"role": "device", "device_id": 3})

Both nonces enter both proofs (neither side can replay an old exchange), the labels bind each
proof to its direction (a client's proof reflected back as the server's fails, and the server
never computes a client-direction MAC, so it cannot be used as an oracle for one), a reflected
nonce is refused, MACs are compared with `hmac.compare_digest`, and the whole server side must
finish within `HELLO_TIMEOUT_S`. A failed handshake closes the connection, logs a warning on
logger "cent.link" naming the peer's address (never the secret) and raises `LinkRefused`.

What this does not do: it authenticates the peer when the link opens; it neither encrypts nor
MACs the frames after that, so an attacker on the network path can read, alter or hijack traffic
(or relay a handshake between two honest ends): run a cluster on a trusted network or a VPN.
Whoever sends, frames decode to plain data only, never code. An authenticated peer is trusted
with memory: one frame may make the receiver allocate up to `MAX_FRAME_BYTES` (and a frame of
tiny nested containers some multiple of its size). `Link(sock)` itself authenticates nothing
(for socket pairs inside one process and tests).

Errors crossing a link travel as `error_message(exc)` and come back as `remote_error(d)`:
builtin types from `REMOTE_ERROR_TYPES` and any class passed to `register_error` are rebuilt as
themselves, anything else as `RemoteError` naming the original type.

Threading: one thread at a time sends and one at a time receives on a link (a sender and a
receiver may be two threads); `close` may be called from any thread and wakes a blocked `recv`.
The socket stays blocking: receive deadlines are polled, and a send that makes no progress for
`SEND_STALL_TIMEOUT_S` fails with `LinkClosed`.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import select
import socket
import struct
import sys
import threading
import time

import msgpack
import numpy as np

log = logging.getLogger("cent.link")

HEADER = struct.Struct("<Q")
"""Frame header: body length in bytes, 8-byte little-endian."""
MAX_FRAME_BYTES = 1 << 30
"""Largest frame an authenticated link reads (1 GiB). The largest legitimate message is a round's
hidden states, tokens x hidden_size x 4 bytes: a whole 4,096-token llama2-70b prompt is 128 MiB,
so this leaves room for 8 of them in one round while bounding what one header can make the
receiver allocate."""
HANDSHAKE_MAX_FRAME_BYTES = 4096
"""Largest frame read before the peer is authenticated: nonces, MACs and a hello of a few ids fit
in a few hundred bytes, so an unauthenticated peer can make the server allocate nothing more."""
CONNECT_TIMEOUT_S = 60.0
"""Longest wait to open a link to the switch and finish the handshake (the switch's node may be
busy starting dozens of actors)."""
HELLO_TIMEOUT_S = 10.0
"""Longest the server waits for a new connection to finish the handshake (an honest client answers
in milliseconds; a peer that says nothing, or trickles bytes, is dropped after this)."""
SEND_STALL_TIMEOUT_S = 300.0
"""Longest a send may make no progress before the link is declared gone: a peer busy with a stage
reads again well within this; one that never does is hung (kernel SO_SNDTIMEO, on Linux)."""
RECV_CHUNK_BYTES = 64 * 1024
"""Bytes asked of the socket per read: frames up to this size (and several of them) arrive in one
call and are sent with their header in one call; larger ones are read straight into their own
buffer and sent without copying the body."""
MAX_ARRAY_NDIM = 32
"""Most dimensions a received array may claim (numpy 1.x's own limit)."""
MAX_ERROR_MESSAGE_CHARS = 10_000
"""Longest error message sent over a link (a runaway repr should not fill a frame)."""

PROTOCOL = "cent-link/1"
"""Handshake protocol name and version; a peer speaking anything else is refused."""
NONCE_BYTES = 32
"""Challenge size: 256 random bits from `secrets`, never repeated in practice."""
MIN_SECRET_BYTES = 16
"""Shortest secret accepted: 128 bits cannot be guessed; `secrets.token_bytes(32)` is the norm."""
CLIENT_LABEL = b"cent-link/1 client->server\x00"
"""Prefix of the client's proof (differs from the server's, so one cannot pass for the other)."""
SERVER_LABEL = b"cent-link/1 server->client\x00"
"""Prefix of the server's proof."""

ARRAY_EXT = 1
"""msgpack ExtType code of a numpy array: payload = dtype code (u8), ndim (u8), shape
(ndim x u64 little-endian), then the raw little-endian bytes in C order."""
_ARRAY_HEAD = struct.Struct("<BB")
_ARRAY_HEADS = [struct.Struct(f"<BB{n}Q") for n in range(MAX_ARRAY_NDIM + 1)]
_SHAPES = [struct.Struct(f"<{n}Q") for n in range(MAX_ARRAY_NDIM + 1)]
ARRAY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"),
    3: np.dtype("i1"), 4: np.dtype("<i2"), 5: np.dtype("<i4"), 6: np.dtype("<i8"),
    7: np.dtype("u1"), 8: np.dtype("<u2"), 9: np.dtype("<u4"),
    11: np.dtype("?"),
}
"""The array dtypes a link carries, by wire code: float32, float64, int8-64, uint8-32, bool and
ml_dtypes.bfloat16 (the weights' storage type, `BF16_CODE`: added by `wire_dtypes` on first use).
float16, uint64, complex, object, str, structured and datetime arrays are refused (nothing in the
protocol uses them)."""
BF16_CODE = 12
"""Wire code of ml_dtypes.bfloat16. Its table entry is added when a process first sends or receives
one: importing ml_dtypes costs ~0.6 CPU-s, which every device actor would pay at start-up, and only
full numerics with bfloat16 weights move bfloat16 arrays."""
_DTYPE_CODES = {dt: code for code, dt in ARRAY_DTYPES.items()}
_DTYPE_NAMES = ", ".join([dt.name for dt in ARRAY_DTYPES.values()] + ["bfloat16"])


def wire_dtypes() -> dict[int, np.dtype]:
    """Every dtype a link carries, by wire code, bfloat16 included (importing ml_dtypes)."""
    if BF16_CODE not in ARRAY_DTYPES:
        import ml_dtypes

        bf16 = np.dtype(ml_dtypes.bfloat16)
        _DTYPE_CODES[bf16] = BF16_CODE  # the encoder's table first: a reader of ARRAY_DTYPES finds both
        ARRAY_DTYPES[BF16_CODE] = bf16
    return ARRAY_DTYPES


class LinkClosed(ConnectionError):
    """The other end of a link went away (or sent a frame this end will not read)."""


class LinkRefused(ConnectionError):
    """A connection failed the handshake (no or wrong secret, wrong protocol, too slow): closed."""


class WireError(ValueError):
    """A value cannot travel on a link (sending), or received bytes are not a valid message."""


class RemoteError(RuntimeError):
    """An exception from the other end of a link whose type this end does not rebuild; the message
    starts with the original type's name, kept in `remote_type`."""

    def __init__(self, message: str, remote_type: str = "RemoteError") -> None:
        super().__init__(message)
        self.remote_type = remote_type


# --- messages ---------------------------------------------------------------------------------

def _encode_other(obj, _ndarray=np.ndarray, _codes=_DTYPE_CODES, _heads=_ARRAY_HEADS):
    """msgpack's hook for what it does not pack itself: arrays and numpy scalars; else refused."""
    if type(obj) is _ndarray or (isinstance(obj, _ndarray) and not isinstance(obj, np.ma.MaskedArray)):
        code = _codes.get(obj.dtype)
        if code is None:
            obj, code = _wire_dtype(obj)
        ndim = obj.ndim
        if ndim > MAX_ARRAY_NDIM:
            raise WireError(f"cannot send an array of {ndim} dimensions (at most {MAX_ARRAY_NDIM})")
        head = _heads[ndim].pack(code, ndim, *obj.shape)
        if obj.nbytes > RECV_CHUNK_BYTES and obj.flags.c_contiguous:  # one copy, not two
            data = b"".join((head, memoryview(obj.reshape(-1).view(np.uint8))))
        else:
            data = head + obj.tobytes()
        # msgpack.ExtType without its Python-level argument checks (a microsecond per array)
        return tuple.__new__(msgpack.ExtType, (ARRAY_EXT, data))
    if isinstance(obj, int):  # msgpack hands over only ints it cannot pack
        raise WireError(f"cannot send the int {obj}: outside the 64-bit range a link carries")
    if isinstance(obj, np.generic):
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating) and obj.dtype.itemsize <= 8:
            return float(obj)
    raise WireError(f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} on a link: "
                    "use None, bool, int, float, str, bytes, list, tuple, dict with str keys "
                    f"or a numpy array of {_DTYPE_NAMES}")


def _wire_dtype(a: np.ndarray) -> tuple[np.ndarray, int]:
    """`a` in a dtype the wire carries (big-endian -> little-endian) and its code; else refused."""
    dt = a.dtype
    if dt.name == "bfloat16" and BF16_CODE not in ARRAY_DTYPES:  # only ml_dtypes' has this name
        wire_dtypes()
        if _DTYPE_CODES.get(dt) == BF16_CODE:
            return a, BF16_CODE
    code = _DTYPE_CODES.get(dt.newbyteorder("<")) if dt.byteorder == ">" else None
    if code is None:
        raise WireError(f"cannot send an array of dtype {dt} on a link: use one of {_DTYPE_NAMES}")
    return a.astype(ARRAY_DTYPES[code]), code


_CONTAINERS = (dict, list, tuple)


def _check_keys(obj, where: str) -> None:
    """Refuse dict keys that are not str anywhere in `obj` (msgpack would pack them; the far end
    would refuse them, failing there instead of here)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) is not str:
                raise WireError(f"cannot send {where}: key {k!r} ({type(k).__name__}) is not a str")
            if isinstance(v, _CONTAINERS):
                _check_keys(v, f"{where}[{k!r}]")
    else:
        for i, v in enumerate(obj):
            if isinstance(v, _CONTAINERS):
                _check_keys(v, f"{where}[{i}]")


_packers = threading.local()  # a packer per thread and mode: reused, not rebuilt per message


def _packer(autoreset: bool) -> msgpack.Packer:
    packer = getattr(_packers, "bytes" if autoreset else "buffer", None)
    if packer is None:
        packer = msgpack.Packer(default=_encode_other, use_bin_type=True, autoreset=autoreset)
        setattr(_packers, "bytes" if autoreset else "buffer", packer)
    return packer


def _pack(packer: msgpack.Packer, msg: dict):
    """`packer.pack(msg)` after `encode`'s checks, its failures as WireError."""
    if not isinstance(msg, dict):
        raise WireError(f"a link message is a dict, not a {type(msg).__name__}")
    try:
        _check_keys(msg, "the message")
    except RecursionError as e:
        raise WireError("cannot send the message: nested too deeply") from e
    try:
        return packer.pack(msg)
    except WireError:
        raise
    except (OverflowError, ValueError, TypeError) as e:  # an int past 64 bits, nesting past 512
        raise WireError(f"cannot send the message: {e}") from e


def encode(msg: dict) -> bytes:
    """`msg` as one frame's body (what `Link.send_bytes` takes: encode once, send to several
    ports). Raises `WireError` naming the first value that cannot travel."""
    return _pack(_packer(True), msg)


def _decode_ext(code: int, data: bytes) -> np.ndarray:
    if code != ARRAY_EXT:
        raise WireError(f"msgpack extension type {code} is not one a link carries (only arrays, {ARRAY_EXT})")
    if len(data) < _ARRAY_HEAD.size:
        raise WireError("array header truncated")
    dcode, ndim = _ARRAY_HEAD.unpack_from(data)
    dtype = ARRAY_DTYPES.get(dcode)
    if dtype is None and dcode == BF16_CODE:
        dtype = wire_dtypes()[BF16_CODE]
    if dtype is None:
        raise WireError(f"array dtype code {dcode} is not one a link carries")
    if ndim > MAX_ARRAY_NDIM:
        raise WireError(f"array claims {ndim} dimensions (at most {MAX_ARRAY_NDIM})")
    start = _ARRAY_HEAD.size + 8 * ndim
    if len(data) < start:
        raise WireError("array shape truncated")
    shape = _SHAPES[ndim].unpack_from(data, _ARRAY_HEAD.size)
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - start:
        raise WireError(f"array of {dtype} {shape} needs {count * dtype.itemsize} bytes, "
                        f"the frame carries {len(data) - start}")
    try:  # positional: numpy's keyword path costs a microsecond more
        array = np.frombuffer(data, dtype, count, start)
        return array if ndim == 1 else array.reshape(shape)
    except ValueError as e:  # a zero-size array with an absurd dimension
        raise WireError(f"array of {dtype} {shape} cannot be built: {e}") from e


def decode(blob) -> dict:
    """The message in one frame's body (bytes-like); raises `WireError` for anything that is not
    a valid message: bad msgpack or UTF-8, trailing bytes, a non-map top level, a map key that is
    not a str (bytes keys, which `encode` never writes, pass msgpack's strict_map_key), an unknown
    extension or dtype, an array whose bytes do not match its shape. Never runs code; msgpack's
    reserved timestamp extension, which `encode` never writes, comes back as int nanoseconds."""
    try:
        msg = msgpack.unpackb(blob, ext_hook=_decode_ext, raw=False, strict_map_key=True, timestamp=2)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for malformed input
        raise WireError(f"not a valid link message: {type(e).__name__}: {e}") from e
    if not isinstance(msg, dict):
        raise WireError(f"a link message is a map, this frame holds a {type(msg).__name__}")
    return msg


# --- the link ---------------------------------------------------------------------------------

def _peer_name(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "an unknown peer"
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return f"local socket {peer!r}" if peer else "a local socket"


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"a link secret is bytes (secrets.token_bytes(32)), not a {type(secret).__name__}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a link secret of {len(secret)} bytes is too short: use at least "
                         f"{MIN_SECRET_BYTES} (secrets.token_bytes(32))")


def _set_send_stall_timeout(sock: socket.socket, seconds: float) -> None:
    """Make a blocking send that makes no progress for `seconds` fail (SO_SNDTIMEO), so a peer
    that stops reading cannot hang this end for ever. Best effort: skipped where the option or
    the timeval layout is unknown."""
    if not hasattr(socket, "SO_SNDTIMEO") or not sys.platform.startswith("linux"):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", int(seconds), 0))
    except OSError:
        pass


def _hello_frame(hello: dict) -> bytes:
    """`hello` encoded; WireError unless it is a message that fits a handshake frame."""
    blob = encode(hello)
    if len(blob) > HANDSHAKE_MAX_FRAME_BYTES:
        raise WireError(f"a hello of {len(blob)} bytes is over the handshake's "
                        f"{HANDSHAKE_MAX_FRAME_BYTES}-byte limit: say who you are in a few ids")
    return blob


def _mac(secret: bytes, label: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(bytes(secret), label + client_nonce + server_nonce, hashlib.sha256).digest()


class Link:
    """One end of a port's connection: blocking, in order, whole messages.

    `Link(sock)` wraps a connected socket without authenticating it (tests, socket pairs inside
    one process); anything reachable over a network is made with `connect` / `accept`.
    `max_frame_bytes` bounds what `recv` reads."""

    def __init__(self, sock: socket.socket, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking for good: deadlines are polled, never set on the socket
        _set_send_stall_timeout(sock, SEND_STALL_TIMEOUT_S)
        self.sock = sock
        self.peer = _peer_name(sock)
        """The other end's address, for messages and logs."""
        self.max_frame_bytes = max_frame_bytes
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._buf = bytearray()  # bytes received past the frames returned so far
        self._body: bytearray | None = None  # a large frame being read into its own buffer
        self._have = 0  # bytes of `_body` read so far
        self._closed = False

    # -- handshake --

    @classmethod
    def connect(cls, address: tuple[str, int] | str, hello: dict, secret: bytes,
                timeout_s: float = CONNECT_TIMEOUT_S) -> "Link":
        """Open a link to the server at `address` ((host, port) over TCP, or a str: a Unix socket's
        address), prove this end knows `secret`, check the server does too, then introduce this
        end with `hello`. Raises `LinkRefused` if the handshake fails, OSError if nothing accepts
        the connection, within `timeout_s` in all."""
        _check_secret(secret)
        _hello_frame(hello)  # a hello that cannot travel fails here, before any connection
        deadline = time.monotonic() + timeout_s
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(tuple(address), timeout=timeout_s)
        return cls.connect_socket(sock, hello, secret, max(0.0, deadline - time.monotonic()))

    @classmethod
    def connect_socket(cls, sock: socket.socket, hello: dict, secret: bytes,
                       timeout_s: float = CONNECT_TIMEOUT_S) -> "Link":
        """The client's side of the handshake on an already connected `sock` (`connect` without
        the TCP connect; e.g. one end of a socket pair)."""
        _check_secret(secret)
        hello_blob = _hello_frame(hello)
        link = cls(sock)
        deadline = time.monotonic() + timeout_s
        try:
            client_nonce = secrets.token_bytes(NONCE_BYTES)
            link._send_frame(encode({"proto": PROTOCOL, "nonce": client_nonce}))
            server_nonce = link._handshake_field(deadline, "nonce", proto=True)
            if hmac.compare_digest(server_nonce, client_nonce):
                raise LinkRefused("the server sent our own challenge back (a reflection)")
            link._send_frame(encode({"mac": _mac(secret, CLIENT_LABEL, client_nonce, server_nonce)}))
            try:
                proof = link._handshake_field(deadline, "mac")
            except LinkClosed as e:
                raise LinkRefused("the server closed the link after our proof: it does not hold "
                                  "the same secret (or this end does not)") from e
            if not hmac.compare_digest(proof, _mac(secret, SERVER_LABEL, client_nonce, server_nonce)):
                raise LinkRefused("the server's proof is wrong: it does not know the secret")
            link._send_frame(hello_blob)
        except (LinkRefused, LinkClosed, TimeoutError, WireError) as e:
            err = link._refused("to", e)
            if err is e:
                raise
            raise err from e
        return link

    @classmethod
    def accept(cls, sock: socket.socket, secret: bytes,
               timeout_s: float = HELLO_TIMEOUT_S) -> tuple["Link", dict]:
        """The server's side of the handshake on a just accepted `sock`: the client must prove it
        knows `secret` (only then does this end prove it too) and send its hello, all within
        `timeout_s`. Returns the link and the hello. On any failure the connection is closed, a
        warning names the peer, and `LinkRefused` is raised (the accept loop goes on)."""
        _check_secret(secret)
        link = cls(sock)
        deadline = time.monotonic() + timeout_s
        try:
            client_nonce = link._handshake_field(deadline, "nonce", proto=True)
            server_nonce = secrets.token_bytes(NONCE_BYTES)
            if hmac.compare_digest(server_nonce, client_nonce):  # never by chance
                raise LinkRefused("the client's challenge is ours")
            link._send_frame(encode({"proto": PROTOCOL, "nonce": server_nonce}))
            proof = link._handshake_field(deadline, "mac")
            if not hmac.compare_digest(proof, _mac(secret, CLIENT_LABEL, client_nonce, server_nonce)):
                raise LinkRefused("the client's proof is wrong: it does not know the secret")
            link._send_frame(encode({"mac": _mac(secret, SERVER_LABEL, client_nonce, server_nonce)}))
            hello = link._recv(deadline, HANDSHAKE_MAX_FRAME_BYTES)
        except (LinkRefused, LinkClosed, TimeoutError, WireError) as e:
            err = link._refused("from", e)
            if err is e:
                raise
            raise err from e
        return link, hello

    def _refused(self, direction: str, e: BaseException) -> LinkRefused:
        """A failed handshake: the link closed, a warning naming the peer, the error to raise."""
        self.close()
        log.warning("refused a link %s %s: %s", direction, self.peer, e)
        return e if isinstance(e, LinkRefused) else LinkRefused(f"handshake {direction} {self.peer} failed: {e}")

    def _handshake_field(self, deadline: float, field: str, proto: bool = False) -> bytes:
        """The one bytes field of the next handshake frame (and its protocol name if `proto`)."""
        msg = self._recv(deadline, HANDSHAKE_MAX_FRAME_BYTES)
        if proto and msg.get("proto") != PROTOCOL:
            raise LinkRefused(f"the peer speaks {msg.get('proto')!r:.80}, not {PROTOCOL!r}")
        value = msg.get(field)
        size = NONCE_BYTES if field == "nonce" else hashlib.sha256().digest_size
        if not isinstance(value, bytes) or len(value) != size:
            raise LinkRefused(f"the peer's handshake frame has no {size}-byte {field!r}")
        return value

    # -- data --

    def send(self, msg: dict) -> None:
        """Send one message (`encode`'s contract); raises `WireError` (nothing sent) if it cannot
        travel, `LinkClosed` if the other end is gone."""
        packer = _packer(False)  # sent from the packer's own buffer: no copy of a large body
        try:
            _pack(packer, msg)
            with packer.getbuffer() as body:
                self.send_bytes(body)
        finally:
            packer.reset()

    def send_bytes(self, blob: bytes) -> None:
        """Send one frame whose body `encode` made (encode once, send to several links); raises
        `WireError` (nothing sent) if it is over `max_frame_bytes`, `LinkClosed` as `send`."""
        if len(blob) > self.max_frame_bytes:
            raise WireError(f"a message of {len(blob)} bytes is over the link's "
                            f"{self.max_frame_bytes}-byte frame limit (MAX_FRAME_BYTES)")
        self._send_frame(blob)

    def _send_frame(self, blob: bytes) -> None:
        if self._closed:
            raise LinkClosed(f"the link to {self.peer} is closed")
        try:
            if len(blob) <= RECV_CHUNK_BYTES:
                self.sock.sendall(HEADER.pack(len(blob)) + blob)
            else:  # no copy of a large body to prepend the header
                self.sock.sendall(HEADER.pack(len(blob)))
                self.sock.sendall(blob)
        except OSError as e:  # a send stalled past its timeout included: the stream is lost
            self.close()
            raise LinkClosed(f"link to {self.peer} closed while sending: {e}") from e

    def recv(self, timeout_s: float | None = None) -> dict:
        """The next message. Raises TimeoutError if no whole message arrived within `timeout_s`
        (None: wait as long as it takes; the link stays usable, a later `recv` continues the same
        frame), `LinkClosed` if the other end went away (also mid-frame) or sent a frame over
        `max_frame_bytes`, `WireError` if the frame is not a valid message (the frame is consumed,
        the link stays in step)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return self._recv(deadline, self.max_frame_bytes)

    def _recv(self, deadline: float | None, limit: int) -> dict:
        if self._body is None and not self._buf and deadline is None and not self._closed:
            # the common case, kept short (it runs once per round in every device process, with
            # cold caches): nothing buffered, and the whole frame comes in one read
            data = self._recv_chunk()
            if len(data) >= HEADER.size and HEADER.unpack_from(data)[0] == len(data) - HEADER.size <= limit:
                return decode(memoryview(data)[HEADER.size:])
            self._buf += data  # a part of a frame, or several: the general way
        if self._body is None:
            while len(self._buf) < HEADER.size:
                self._read_some(deadline)
            (n,) = HEADER.unpack_from(self._buf)
            if n > limit:
                self.close()
                raise LinkClosed(f"{self.peer} sent a frame of {n} bytes, over this link's "
                                 f"{limit}-byte limit: closed")
            end = HEADER.size + n
            if n <= RECV_CHUNK_BYTES:  # small: it arrives with its header
                while len(self._buf) < end:
                    self._read_some(deadline)
                body = self._buf[HEADER.size:end]  # a small copy; cheaper than a memoryview
                del self._buf[:end]
                return decode(body)
            self._body = bytearray(n)
            self._have = min(len(self._buf) - HEADER.size, n)
            self._body[:self._have] = self._buf[HEADER.size:HEADER.size + self._have]
            del self._buf[:HEADER.size + self._have]
        with memoryview(self._body) as view:
            while self._have < len(self._body):
                self._have += self._read_into(view[self._have:], deadline)
        body, self._body = self._body, None
        return decode(body)

    def _wait(self, deadline: float | None) -> None:
        """Return when the socket has bytes (or EOF) to read; TimeoutError past `deadline`."""
        if self._closed:
            raise LinkClosed(f"the link to {self.peer} is closed")
        if deadline is None:
            return  # the blocking read waits
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(math.ceil(left * 1000)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no whole message from {self.peer} in time")
                continue  # poll woke a little early
            return

    def _read_some(self, deadline: float | None) -> None:
        self._wait(deadline)
        self._buf += self._recv_chunk()

    def _recv_chunk(self) -> bytes:
        """What one read of the socket gives (at least a byte; LinkClosed at its end or failure)."""
        try:
            data = self.sock.recv(RECV_CHUNK_BYTES)
        except OSError as e:
            self.close()
            raise LinkClosed(f"link to {self.peer} closed while receiving: {e}") from e
        if not data:
            self._eof()
        return data

    def _read_into(self, view: memoryview, deadline: float | None) -> int:
        self._wait(deadline)
        try:
            k = self.sock.recv_into(view)
        except OSError as e:
            self.close()
            raise LinkClosed(f"link to {self.peer} closed while receiving: {e}") from e
        if not k:
            self._eof()
        return k

    def _eof(self) -> None:
        partial = self._body is not None or bool(self._buf)
        self.close()
        raise LinkClosed(f"link closed by {self.peer}" + (" mid-frame" if partial else ""))

    def fileno(self) -> int:
        return self.sock.fileno()

    def buffered(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buf) + (self._have if self._body is not None else 0)

    def unread(self, data: bytes) -> None:
        """Give back bytes read from this link's socket by someone else (a compiled reader,
        `device_worker.steady`), to be read first; only when nothing is buffered."""
        assert not self.buffered(), "unread with bytes already buffered"
        self._buf += data

    def peer_closed(self) -> bool:
        """Whether the other end has closed the link (or this end did), without waiting or
        reading a message: for a link that carries nothing and is kept open to watch its peer."""
        if self._closed:
            return True
        if not self._poll.poll(0):
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        """Close the connection (idempotent; wakes a thread blocked receiving on it); later sends
        and receives raise `LinkClosed`."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        try:
            self.sock.close()
        except OSError:
            pass


# --- errors -----------------------------------------------------------------------------------

REMOTE_ERROR_TYPES = (ValueError, TypeError, KeyError, IndexError, RuntimeError, TimeoutError,
                      AssertionError, MemoryError, ConnectionError)
"""Builtin exception types rebuilt as themselves when they come back over a link."""
_error_types: dict[str, type[BaseException]] = {c.__name__: c for c in (*REMOTE_ERROR_TYPES, RemoteError)}
_error_lock = threading.Lock()


def register_error(cls: type[BaseException]) -> type[BaseException]:
    """Let `remote_error` rebuild `cls` (by its class name; built with one message argument).
    Returns `cls` (usable as a decorator). Registering again, or a reloaded module's class of the
    same module and qualified name, is harmless; ValueError if another class has the name."""
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(f"register_error takes an Exception subclass, not {cls!r}")
    with _error_lock:
        known = _error_types.setdefault(cls.__name__, cls)
        if known is not cls and known not in (*REMOTE_ERROR_TYPES, RemoteError) and \
                (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__):
            known = _error_types[cls.__name__] = cls  # the same class, its module reloaded
    if known is not cls:
        raise ValueError(f"an error type named {cls.__name__!r} is already registered "
                         f"({known.__module__}.{known.__qualname__})")
    return cls


def error_message(exc: BaseException) -> dict:
    """`exc` as a link value: {"type": its class name, "message": its message}."""
    args = exc.args
    message = args[0] if len(args) == 1 and isinstance(args[0], str) else str(exc)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + " [...]"
    return {"type": type(exc).__name__, "message": message}


def remote_error(d: dict) -> BaseException:
    """The exception an `error_message` describes, to raise here: its own type if builtin-listed
    (`REMOTE_ERROR_TYPES`) or registered, else `RemoteError("<type>: <message>")`."""
    if not isinstance(d, dict) or not isinstance(d.get("type"), str) or not isinstance(d.get("message"), str):
        return RemoteError(f"malformed error report from the other end of a link: {d!r:.200}")
    name, message = d["type"], d["message"]
    cls = _error_types.get(name)
    if cls is not None:
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a registered class with another constructor
            pass
    return RemoteError(f"{name}: {message}", name)
