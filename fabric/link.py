"""A switch port's wire: one TCP connection between the fabric actor and a device actor
(or the host), carrying length-prefixed pickled messages.

Why not Ray calls for the data path: on the 2-core machine this was built on, a Ray actor
call costs 2-3 ms and a compiled-graph hop about 1 ms, while a message on an open socket
costs about 0.1 ms; a 70B pipeline round is 27 device visits and 26 fabric hops. Ray
still creates, places, queries and kills the actors; only the rounds travel here.

Messages (tuples, first item the kind):
  host -> switch:   ("round", Wave, free_seq_ids)         switch -> host:   ("done", Wave) | ("error", exc)
  switch -> device: ("run", Wave, free_seq_ids)           device -> switch: ("done", Wave) | ("error", exc)
  device -> switch: ("exchange", tag, slice)              switch -> device: ("full", array) | ("abort",)
"""
from __future__ import annotations

import pickle
import socket
import struct

HEADER = struct.Struct("<Q")
"""Frame header: payload length in bytes."""
CONNECT_TIMEOUT_S = 60.0
"""Longest wait to open a link to the switch."""


class LinkClosed(ConnectionError):
    """The other end of a link went away."""


def dumps(msg) -> bytes:
    """A message as the bytes `Link.send_bytes` takes (pickle once, send to several ports)."""
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


class Link:
    """One end of a port's connection: blocking, in-order, whole messages."""

    def __init__(self, sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self.sock = sock
        self._reader = sock.makefile("rb")

    @classmethod
    def connect(cls, address: tuple[str, int], hello) -> "Link":
        """Open a link to the switch at `address` and introduce this end with `hello`."""
        link = cls(socket.create_connection(address, timeout=CONNECT_TIMEOUT_S))
        link.send(hello)
        return link

    def send(self, msg) -> None:
        self.send_bytes(dumps(msg))

    def send_bytes(self, blob: bytes) -> None:
        try:
            self.sock.sendall(HEADER.pack(len(blob)) + blob)
        except OSError as e:
            raise LinkClosed(f"link closed while sending: {e}") from e

    def recv(self, timeout_s: float | None = None):
        """The next message; raises TimeoutError after `timeout_s` (None: wait while idle)."""
        self.sock.settimeout(timeout_s)
        try:
            head = self._reader.read(HEADER.size)
            if len(head) < HEADER.size:
                raise LinkClosed("link closed by the other end")
            (n,) = HEADER.unpack(head)
            blob = self._reader.read(n)
        except socket.timeout as e:
            raise TimeoutError(f"no message on the link within {timeout_s} s") from e
        except OSError as e:
            raise LinkClosed(f"link closed while receiving: {e}") from e
        if len(blob) < n:
            raise LinkClosed("link closed mid-message")
        return pickle.loads(blob)

    def close(self) -> None:
        try:
            self._reader.close()
            self.sock.close()
        except OSError:
            pass


def sendable_error(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (so the driver re-raises the same type), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
