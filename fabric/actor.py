"""The Ray actor of the CXL switch: a thin wrapper of its `Relay` (the units' exchanges).

It listens (`fabric.listener`: TCP on 127.0.0.1 on a single node or on the node's address on a
cluster, and a Unix socket for peers on its node); each device actor opens a link to it for its
unit's exchanges, and the host one that it keeps open
while the switch lives (a round submitted after the switch is gone fails at once) and on which
the switch says when a device's link closes (`Relay.attach_host`). Every link
proves the run's secret first (`fabric.listener`): a connection that fails is closed, logged and
counted; nothing it sent is interpreted. The rounds' hops do not pass through this process: each
unit's leader clocks its own switch port and sends to the next unit directly (`device_worker.port`).
Ray calls are for control: the address, readiness, stats.
"""
from __future__ import annotations

import logging

import ray

from cent_serve.config import CentConfig
from fabric.link import Link
from fabric.listener import Address, Listener
from fabric.router import Relay
from fabric.switch import Fabric

log = logging.getLogger("cent.switch")


@ray.remote(num_cpus=0)
class FabricActor:
    def __init__(self, cfg: CentConfig, units: list[tuple[int, ...]], secret: bytes, host: str | None = None) -> None:
        self.relay = Relay(Fabric(cfg), units)
        self.listener = Listener(host or ray.util.get_node_ip_address(), secret, self._admit, "switch",
                                 ray.get_runtime_context().get_node_id(),
                                 send_stall_s=cfg.server.peer_wait_s)  # as the devices' (the round timeout's)

    def _admit(self, link: Link, hello: dict) -> None:
        role = hello.get("role")
        if role == "device" and isinstance(hello.get("device_id"), int):
            self.relay.attach(hello["device_id"], link)
        elif role == "host":
            self.relay.attach_host(link)
        else:
            log.warning("a link introduced itself as %r: closed", hello)
            link.close()

    def address(self) -> Address:
        return self.listener.address

    def ready(self) -> bool:
        return True

    def where(self) -> dict:
        """The node the switch runs on: {"host": its IP, "node_id": Ray's id}."""
        return dict(host=ray.util.get_node_ip_address(), node_id=ray.get_runtime_context().get_node_id())

    def refused(self) -> int:
        """Connections closed because they did not prove the run's secret."""
        return self.listener.num_refused

    def stats(self) -> dict:
        with self.relay.lock:
            return self.relay.fabric.stats()
