"""Listening sockets that admit only links proving the run's secret (`Link.accept`).

The switch (fabric actor) and every device actor listen with one `Listener`: over TCP (on a
single node on 127.0.0.1, on a cluster on the node's address) and, on Linux, on an abstract Unix
socket. A peer on the same node connects over the Unix socket (a message costs about half what
it costs over TCP loopback), a peer on another node over TCP (`Address.connect`); an abstract
Unix socket is reachable only from the node's own network namespace, like 127.0.0.1, and every
link proves the secret whichever way it came.

Each new connection gets its own thread for the handshake, so a peer that says nothing cannot hold
up the others; one that fails it is closed, logged by `Link.accept` and counted (`num_refused`);
nothing it sent is interpreted. An admitted link goes to `admit(link, hello)` with the hello it
introduced itself with.
"""
from __future__ import annotations

import logging
import secrets as _secrets
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from fabric.link import SEND_STALL_TIMEOUT_S, Link, LinkRefused

log = logging.getLogger("cent.link")


@dataclass(frozen=True)
class Address:
    """Where a listener answers: TCP (host, port), and its Unix socket on `node` (or None)."""

    host: str
    port: int
    unix: str | None = None
    node: str | None = None
    """The node (Ray node id) the listener runs on: peers on it use the Unix socket."""

    @property
    def tcp(self) -> tuple[str, int]:
        return (self.host, self.port)

    def connect(self, hello: dict, secret: bytes, node: str | None = None, *,
                send_stall_s: float = SEND_STALL_TIMEOUT_S) -> Link:
        """A link to this listener from a peer on `node`: over the Unix socket when on the same
        node, else over TCP. `send_stall_s`: the link's (`fabric.link.Link`)."""
        if self.unix is not None and node is not None and node == self.node:
            return Link.connect(self.unix, hello, secret, send_stall_s=send_stall_s)
        return Link.connect(self.tcp, hello, secret, send_stall_s=send_stall_s)


class Listener:
    """Accepts on its sockets; each admitted link (its sends limited by `send_stall_s`) goes to `admit`."""

    def __init__(self, host: str, secret: bytes, admit: Callable[[Link, dict], None], name: str,
                 node: str | None = None, *, send_stall_s: float = SEND_STALL_TIMEOUT_S) -> None:
        self.secret, self.admit, self.name, self.node = secret, admit, name, node
        self.send_stall_s = send_stall_s
        self.num_refused = 0
        self.servers = [socket.create_server((host, 0))]
        self.unix = None
        if sys.platform.startswith("linux"):  # abstract namespace: no file to clean up when killed
            self.unix = f"\0cent-{name}-{_secrets.token_hex(8)}"
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.bind(self.unix)
            unix.listen()
            self.servers.append(unix)
        for server in self.servers:
            threading.Thread(target=self._accept, args=(server,), daemon=True, name=f"{name}-accept").start()

    @property
    def address(self) -> Address:
        host, port = self.servers[0].getsockname()[:2]
        return Address(host, port, self.unix, self.node)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True, name=f"{self.name}-hello").start()

    def _handshake(self, conn: socket.socket) -> None:
        try:
            link, hello = Link.accept(conn, self.secret, send_stall_s=self.send_stall_s)
        except LinkRefused:
            self.num_refused += 1
            return
        self.admit(link, hello)

    def close(self) -> None:
        for server in self.servers:
            server.close()


class LinkBook:
    """Admitted links by what they said they are (e.g. ("host",), ("hop", 3)); `wait` blocks until
    one is there."""

    def __init__(self) -> None:
        self._links: dict[tuple, Link] = {}
        self._cond = threading.Condition()

    def add(self, key: tuple, link: Link) -> bool:
        """Keep `link` as `key`; a second link claiming a key already held is closed instead (a
        link in use is never replaced: compiled code may be reading its socket). Returns whether
        it was kept."""
        with self._cond:
            if key in self._links:
                taken = True
            else:
                taken = False
                self._links[key] = link
                self._cond.notify_all()
        if taken:
            log.warning("a second link introduced itself as %s: closed (the first stays)", key)
            link.close()
        return not taken

    def wait(self, key: tuple, timeout_s: float) -> Link:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._links, timeout=timeout_s):
                raise TimeoutError(f"no link {key} arrived in {timeout_s} s")
            return self._links[key]

    def close(self) -> None:
        with self._cond:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
