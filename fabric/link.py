"""The wire of the round chain and the switch: one connection (TCP, or a Unix socket between
processes on one node) between two of the host, the device actors and the fabric actor, carrying
data, never code.

Why not Ray calls for the data path: on the 2-core machine this was built on, a Ray actor call
costs 2-3 ms and a compiled-graph hop about 1 ms, while a message on an open socket costs tens of
microseconds; a 70B pipeline round is 27 device visits and 26 fabric hops. Ray still creates,
places, queries and kills the actors; only the rounds travel here.

Frames. An 8-byte little-endian length (`HEADER`) then the msgpack body. A frame longer than the
receiving link's limit (`MAX_FRAME_BYTES`, or `HANDSHAKE_MAX_FRAME_BYTES` before the peer is
authenticated) is never read: the link is closed and `recv` raises `LinkClosed`.

Messages, arrays, and errors crossing a link: `fabric.wire` (`encode`, `decode`, `error_message`,
`remote_error`).

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

Threading: one thread at a time sends and one at a time receives on a link (a sender and a
receiver may be two threads); `close` may be called from any thread and wakes a blocked `recv`,
and `send_if_room` too (it sends nothing while another thread's frame is under way).
The socket stays blocking: receive deadlines are polled (a long one in slices, `POLL_MAX_MS`), and
a send that makes no progress for the link's `send_stall_s` (`SEND_STALL_TIMEOUT_S` unless given; a
run's links take `server.peer_wait_s`) fails with `LinkClosed`.
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

from fabric.wire import RECV_CHUNK_BYTES, WireError, decode, encode, pack, thread_packer

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
"""Longest a send may make no progress before the link is declared gone, unless the link is made
with its own (`send_stall_s`: the links of a run's devices, switch and host take
`server.peer_wait_s`, which follows `server.round_timeout_s`): a peer busy with a stage reads again
well within this; one that never does is hung (kernel SO_SNDTIMEO, on Linux)."""
POLL_MAX_MS = 2**31 - 1
"""The longest slice of a wait one poll() takes: its timeout is a C int of milliseconds (24.8
days), and a longer one raised OverflowError at once (`server.round_timeout_s` may be up to 1e15 s,
and the host's and the devices' waits follow it). A longer wait polls again."""
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

class LinkClosed(ConnectionError):
    """The other end of a link went away (or sent a frame this end will not read)."""


class LinkRefused(ConnectionError):
    """A connection failed the handshake (no or wrong secret, wrong protocol, too slow): closed."""


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
        whole = int(seconds)  # a timeval: a fraction of a second kept (0 would mean no limit at all)
        micros = min(999_999, max(0 if whole else 1, round((seconds - whole) * 1e6)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", whole, micros))
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
    `max_frame_bytes` bounds what `recv` reads; a send that makes no progress for `send_stall_s`
    fails with `LinkClosed`."""

    def __init__(self, sock: socket.socket, max_frame_bytes: int = MAX_FRAME_BYTES, *,
                 send_stall_s: float = SEND_STALL_TIMEOUT_S) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking for good: deadlines are polled, never set on the socket
        _set_send_stall_timeout(sock, send_stall_s)
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
        self._sending = threading.Lock()  # held while a frame goes out: `send_if_room` cuts into none

    # -- handshake --

    @classmethod
    def connect(cls, address: tuple[str, int] | str, hello: dict, secret: bytes,
                timeout_s: float = CONNECT_TIMEOUT_S, *, send_stall_s: float = SEND_STALL_TIMEOUT_S) -> "Link":
        """Open a link to the server at `address` ((host, port) over TCP, or a str: a Unix socket's
        address), prove this end knows `secret`, check the server does too, then introduce this
        end with `hello`. Raises `LinkRefused` if the handshake fails, OSError if nothing accepts
        the connection, within `timeout_s` in all. `send_stall_s`: the link's (`Link`)."""
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
        return cls.connect_socket(sock, hello, secret, max(0.0, deadline - time.monotonic()), send_stall_s=send_stall_s)

    @classmethod
    def connect_socket(cls, sock: socket.socket, hello: dict, secret: bytes,
                       timeout_s: float = CONNECT_TIMEOUT_S, *, send_stall_s: float = SEND_STALL_TIMEOUT_S) -> "Link":
        """The client's side of the handshake on an already connected `sock` (`connect` without
        the TCP connect; e.g. one end of a socket pair)."""
        _check_secret(secret)
        hello_blob = _hello_frame(hello)
        link = cls(sock, send_stall_s=send_stall_s)
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
    def accept(cls, sock: socket.socket, secret: bytes, timeout_s: float = HELLO_TIMEOUT_S, *,
               send_stall_s: float = SEND_STALL_TIMEOUT_S) -> tuple["Link", dict]:
        """The server's side of the handshake on a just accepted `sock`: the client must prove it
        knows `secret` (only then does this end prove it too) and send its hello, all within
        `timeout_s`. Returns the link and the hello. On any failure the connection is closed, a
        warning names the peer, and `LinkRefused` is raised (the accept loop goes on). `send_stall_s`:
        the link's (`Link`)."""
        _check_secret(secret)
        link = cls(sock, send_stall_s=send_stall_s)
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
        packer = thread_packer(False)  # sent from the packer's own buffer: no copy of a large body
        try:
            pack(packer, msg)
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

    def send_if_room(self, blob: bytes) -> bool:
        """Send one small frame only if the socket takes it whole at once, never waiting: a last word
        on a link about to close (`HostEnd.stop`), which a hung peer must not hold up. False if it
        did not go (the link closed if part of it went: the stream is no longer in step). From any
        thread: while another thread's frame is going out, nothing is sent (it would land inside it)."""
        if self._closed or not self._sending.acquire(blocking=False):
            return False
        try:
            frame = HEADER.pack(len(blob)) + blob
            try:
                sent = self.sock.send(frame, socket.MSG_DONTWAIT)
            except OSError:  # BlockingIOError (no room) among them
                return False
            if sent != len(frame):
                self.close()
            return sent == len(frame)
        finally:
            self._sending.release()

    def _send_frame(self, blob: bytes) -> None:
        if self._closed:
            raise LinkClosed(f"the link to {self.peer} is closed")
        try:
            with self._sending:
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
            if left <= 0 or not self._poll.poll(min(math.ceil(left * 1000), POLL_MAX_MS)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no whole message from {self.peer} in time")
                continue  # poll woke a little early, or a long wait's slice ended
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

    def readable(self) -> bool:
        """Whether a receive would not wait: bytes buffered or arriving, or the link closed."""
        return self._closed or bool(self.buffered()) or bool(self._poll.poll(0))

    def peer_closed(self) -> bool:
        """Whether the other end has closed the link (or this end did), without waiting or
        reading a message: for a link kept open to watch its peer (the host's link to the switch,
        which carries only the switch's rare word of a device gone). Bytes not yet read count as
        open: the end is seen once they are read."""
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
