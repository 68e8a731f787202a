"""The Ray actor of the CXL switch: a thin wrapper of `Fabric` and its `Router`.

It listens on one socket (127.0.0.1 on a single node, the node's address on a cluster); each
device actor and the host open a link to it, prove they know the run's secret (`Link.accept`:
an HMAC challenge, both ways) and say who they are. A connection that fails the proof is closed
and logged; nothing it sent is interpreted. The host's rounds run on the host link's thread;
Ray calls are for control: the address, readiness, stats.
"""
from __future__ import annotations

import logging
import socket
import threading

import ray

from cent_serve.config import CentConfig
from cent_serve.timing import SystemTimer
from cent_serve.timing.clock import warm
from fabric.link import Link, LinkRefused
from fabric.router import Router
from fabric.switch import Fabric

log = logging.getLogger("cent.switch")


@ray.remote(num_cpus=0)
class FabricActor:
    def __init__(self, cfg: CentConfig, units: list[tuple[int, ...]], secret: bytes, host: str | None = None) -> None:
        warm()  # compile or load the clock kernels now, not in the first round
        self.router = Router(Fabric(cfg), units, SystemTimer.from_config(cfg))
        self.secret = secret
        self.num_refused = 0
        self.server = socket.create_server((host or ray.util.get_node_ip_address(), 0))
        threading.Thread(target=self._accept, daemon=True, name="switch-accept").start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.server.accept()
            threading.Thread(target=self._admit, args=(conn,), daemon=True, name="switch-hello").start()

    def _admit(self, conn: socket.socket) -> None:
        """One new connection: trusted only once it proves the secret (its own thread, so a peer
        that says nothing cannot hold up the devices' links)."""
        try:
            link, hello = Link.accept(conn, self.secret)
        except LinkRefused:
            self.num_refused += 1
            return
        role = hello.get("role")
        if role == "device":
            self.router.attach(int(hello["device_id"]), link)
        elif role == "host":
            self.router.serve_host(link)
        else:
            log.warning("a link introduced itself as %r: closed", role)
            link.close()

    def address(self) -> tuple[str, int]:
        return self.server.getsockname()[:2]

    def ready(self) -> bool:
        return True

    def refused(self) -> int:
        """Connections closed because they did not prove the run's secret."""
        return self.num_refused

    def stats(self) -> dict:
        with self.router.lock:
            return self.router.fabric.stats()
