"""The Ray actor of the CXL switch: a thin wrapper of `Fabric` and its `Router`.

It listens on one socket; each device actor and the host open a link to it (their
switch ports) and say who they are. The host's rounds run on the host link's thread;
Ray calls are for control: the address, readiness, stats.
"""
from __future__ import annotations

import socket
import threading

import ray

from cent_serve.config import CentConfig
from fabric.link import Link, LinkClosed
from fabric.router import Router
from fabric.switch import Fabric

HELLO_TIMEOUT_S = 30.0
"""Longest wait for a new link to say which port it is."""


@ray.remote(num_cpus=0)
class FabricActor:
    def __init__(self, cfg: CentConfig, units: list[tuple[int, ...]], host: str | None = None) -> None:
        self.router = Router(Fabric(cfg), units)
        self.server = socket.create_server((host or ray.util.get_node_ip_address(), 0))
        threading.Thread(target=self._accept, daemon=True, name="switch-accept").start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.server.accept()
            link = Link(conn)
            try:
                hello = link.recv(HELLO_TIMEOUT_S)
            except (LinkClosed, TimeoutError):
                link.close()
                continue
            if hello[0] == "device":
                self.router.attach(hello[1], link)
            elif hello[0] == "host":
                threading.Thread(target=self.router.serve_host, args=(link,), daemon=True,
                                 name="switch-host").start()

    def address(self) -> tuple[str, int]:
        return self.server.getsockname()[:2]

    def ready(self) -> bool:
        return True

    def stats(self) -> dict:
        with self.router.lock:
            return self.router.fabric.stats()
