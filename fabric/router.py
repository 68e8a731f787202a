"""The switch's relay of the tensor-parallel exchanges: the fabric actor's side of `fabric.rounds`.

Plain Python over `Link`s (the fabric actor in `actor.py` only wraps it). Each device has a link
to the switch; a thread per link reads its exchanges and feeds its unit's `Rendezvous` (the one
lockstep relay, the same the in-process executor drives), and delivers the replies: the
concatenation to every rank once all have offered, or an abort when a rank failed, left
lockstep, or its device is gone. The exchanges' data crosses the switch here
(`Fabric.all_gather_data`); their simulated time is charged by the devices as part of a block's
step (`TP_BLOCK_EXCHANGES`, the switch's primitives evaluated without data).

The host's links to the switch (`attach_host`) carry one kind of message, switch -> host, never an
exchange: {"kind": "gone", "device_id": d} when device d's link to the switch closes (the device
died). Every device has such a link, so the host learns of a death between rounds that no link of
its own shows (a tensor-parallel rank other than a unit's leader, outside the first unit), and
re-creates the replica before sending it a round (`RayExecutor.check_links`).
"""
from __future__ import annotations

import logging
import threading

from fabric.link import Link, LinkClosed
from fabric.wire import WireError
from fabric.rounds import Rendezvous
from fabric.switch import Fabric

log = logging.getLogger("cent.switch")


class Relay:
    """The exchanges of every unit of a replica (`units`: each unit's device ids, rank order)."""

    def __init__(self, fabric: Fabric, units: list[tuple[int, ...]]) -> None:
        self.fabric = fabric
        self.units = [tuple(u) for u in units]
        self.place = {d: (k, r) for k, u in enumerate(self.units) for r, d in enumerate(u)}
        self.rendezvous = [Rendezvous(fabric, len(u)) for u in self.units]
        self.lock = threading.Lock()
        """Serializes the rendezvous; readers of the fabric's counters take it too."""
        self._links: dict[int, Link] = {}
        self._send_locks: dict[int, threading.Lock] = {}
        self._hosts: list[Link] = []
        self.gone_ids: list[int] = []
        """Devices whose link to the switch closed, in the order seen (a host attached later is told too)."""
        self._hosts_lock = threading.Lock()  # one sender at a time on a host link; a death told once to each

    def attach(self, device_id: int, link: Link) -> None:
        """A device's link to the switch: its exchanges are read on a thread of their own."""
        if device_id not in self.place:
            log.warning("device %d is not in this switch's units: link closed", device_id)
            link.close()
            return
        self._send_locks.setdefault(device_id, threading.Lock())
        self._links[device_id] = link
        threading.Thread(target=self._serve, args=(device_id, link), daemon=True,
                         name=f"switch-device{device_id}").start()

    def attach_host(self, link: Link) -> None:
        """A host's link to the switch: kept open (the host sees it close when the switch ends) and
        told of every device gone, those gone before it came included."""
        with self._hosts_lock:
            self._hosts.append(link)
            for d in self.gone_ids:
                self._tell(link, d)

    def _gone(self, device_id: int) -> None:
        """Device `device_id`'s link closed: say so on every host link."""
        with self._hosts_lock:
            self.gone_ids.append(device_id)
            for link in self._hosts:
                self._tell(link, device_id)

    @staticmethod
    def _tell(link: Link, device_id: int) -> None:
        try:
            link.send({"kind": "gone", "device_id": device_id})
        except LinkClosed:
            pass  # that host is gone (its replica shut down): nobody to tell

    def _serve(self, device_id: int, link: Link) -> None:
        unit, rank = self.place[device_id]
        rv = self.rendezvous[unit]
        while True:
            try:
                msg = link.recv()
            except LinkClosed:
                with self.lock:
                    replies = rv.close(f"device {device_id} is gone")
                self._deliver(unit, replies)
                self._gone(device_id)
                return
            except WireError as exc:
                log.warning("device %d sent an unreadable message: %s", device_id, exc)
                continue
            kind = msg.get("kind")
            with self.lock:
                if kind == "exchange":
                    replies = rv.offer(rank, msg.get("round"), str(msg.get("tag")), msg.get("data"))
                elif kind == "failed":
                    replies = rv.break_round(msg.get("round"), f"rank {rank} (device {device_id}) failed")
                else:
                    log.warning("device %d sent a %r message to the switch: ignored", device_id, kind)
                    replies = {}
            self._deliver(unit, replies)

    def _deliver(self, unit: int, replies: dict) -> None:
        for rank, (kind, value) in replies.items():
            d = self.units[unit][rank]
            msg = {"kind": "full", "data": value} if kind == "full" else {"kind": "abort", "reason": value}
            link = self._links.get(d)
            if link is None:
                continue
            try:
                with self._send_locks[d]:
                    link.send(msg)
            except LinkClosed:
                pass  # that device is gone; its reader says so to its unit
