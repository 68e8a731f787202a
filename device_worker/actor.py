"""The Ray actor of a CENT device: a thin wrapper of `DeviceWorker` and its `DevicePort`.

It listens for the links of its place in the round chain (`fabric.rounds.chain_places`): its
input (from the host or the previous unit's leader) and, for a unit's leader, its other ranks'
outputs; every link proves the run's secret first (`fabric.listener`). `wire` opens its own
outgoing links and starts serving rounds on a thread (`device_worker.port`). Ray calls are for
control: addresses, readiness, stats.
"""
from __future__ import annotations

import logging
import os
import threading

import ray

from cent_serve.config import CentConfig
from cent_serve.timing.clock import warm
from device_worker.port import DevicePort
from device_worker.steady import warm as warm_steady
from device_worker.worker import DeviceWorker
from fabric.link import Link
from fabric.listener import Address, LinkBook, Listener
from fabric.rounds import Place

log = logging.getLogger("cent.device")


@ray.remote(num_cpus=0)
class DeviceActor:
    def __init__(self, cfg: CentConfig, place: Place, switch_address: Address, secret: bytes,
                 listen_host: str | None = None, table: tuple | None = None, cpu_slot: int | None = None) -> None:
        if cpu_slot is not None:  # this replica's CPU (`server.pin_replica_cpu`); later threads inherit it
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[cpu_slot % len(cpus)]})
        warm()  # compile or load the clock kernels now, not in the first round
        warm_steady()
        self.worker = DeviceWorker(cfg, place.device_id)
        if table is not None:  # the cost model by context, as the driver filled it
            self.worker.timer.load_table(*table)
        self.place, self.secret = place, secret
        # the general path's rounds and the Ray calls share the worker; the compiled steady loop
        # does not take the lock, so a stats call during a tick may see it half done
        self.lock = threading.Lock()
        self.links = LinkBook()
        self.node = ray.get_runtime_context().get_node_id()
        self.stall_s = cfg.server.peer_wait_s  # its links' sends, as its port's waits: the round timeout's
        self.listener = Listener(listen_host or ray.util.get_node_ip_address(), secret, self._admit,
                                 f"device{place.device_id}", self.node, send_stall_s=self.stall_s)
        switch = switch_address.connect({"role": "device", "device_id": place.device_id}, secret, self.node,
                                        send_stall_s=self.stall_s)
        self.port = DevicePort(self.worker, place, self.links, switch, self.lock)

    def _admit(self, link: Link, hello: dict) -> None:
        role = hello.get("role")
        if role == "host":
            self.links.add(("host",), link)
        elif role in ("hop", "rank") and isinstance(hello.get("from"), int):
            self.links.add((role, hello["from"]), link)
        else:
            log.warning("device %d: a link introduced itself as %r: closed", self.place.device_id, hello)
            link.close()

    def address(self) -> Address:
        return self.listener.address

    def wire(self, addresses: dict[int, Address]) -> None:
        """Open this device's outgoing links (a leader's to the next unit's devices, another
        rank's to its leader) and start serving rounds."""
        p = self.place
        if p.is_leader:
            peers, role = ([] if p.is_last else list(p.next_ids)), "hop"
        else:
            peers, role = [p.leader], "rank"
        outputs = [addresses[d].connect({"role": role, "from": p.device_id}, self.secret, self.node,
                                        send_stall_s=self.stall_s) for d in peers]
        threading.Thread(target=self.port.serve, args=(outputs,), daemon=True,
                         name=f"device{p.device_id}-rounds").start()

    def ready(self) -> int:
        return self.worker.device_id

    def cpus(self) -> list[int]:
        """The CPUs this device's rounds may run on (`server.pin_replica_cpu`)."""
        return sorted(os.sched_getaffinity(0))

    def refused(self) -> int:
        """Connections closed because they did not prove the run's secret."""
        return self.listener.num_refused

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def stats(self) -> dict:
        """{"device": the worker's counters, "fabric": the switch ports this device clocks, "sent":
        messages and bytes it sent on its links, "energy_terms_j": the worker's joules by term}."""
        with self.lock:
            device = dict(self.worker.stats(), host=ray.util.get_node_ip_address(),
                          node_id=ray.get_runtime_context().get_node_id())
            return dict(device=device, fabric=self.port.fabric.stats(), sent=self.port.sent.tolist(),
                        energy_terms_j=self.worker.energy_terms_j())
