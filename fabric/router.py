"""The switch driving rounds over its ports: the fabric actor's side of `fabric.rounds`.

Plain Python over `Link`s (the fabric actor in `actor.py` only wraps it). Each device's port is a
`RemotePort`; the host's rounds run through `fabric.rounds.run_round`, the same unit loop the
in-process executor runs, so activations go device -> switch -> device, never through the host,
and the simulated times are the local executor's, bit for bit.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from cent_serve.messages import Layout, RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer
from fabric.link import Link, LinkClosed, encode, error_message, remote_error
from fabric.rounds import Unit, run_round
from fabric.switch import Fabric

log = logging.getLogger("cent.switch")
DEVICE_TIMEOUT_S = 300.0
"""Longest wait for one device's reply (its whole stage, or up to its next exchange)."""
PORT_TIMEOUT_S = 60.0
"""Longest wait for a device's link to come up after the round that needs it arrived."""


class RemotePort:
    """A device actor at the other end of a link (the switch's side of `device_worker.port`)."""

    def __init__(self, link: Link, shared: dict) -> None:
        self.link = link
        self.last_layout: Layout | None = None
        self._shared = shared  # the ranks of a unit get the same bytes: encoded once

    def start(self, plan: RoundPlan, x: RoundOutput, index: int, last: bool) -> None:
        key = (plan.round_id, index)
        if self._shared.get("key") != key or self._shared.get("layout") is not self.last_layout:
            msg = plan.to_wire(self.last_layout)
            msg.update(kind="run", ready=x.ready_s)
            if index:  # only the first unit embeds the token ids
                msg.pop("tokens", None)
            if not last:  # only the last unit's LM head reads which sequences want logits
                msg.pop("logits", None)
            if x.hidden is not None:
                msg["hidden"] = x.hidden
            self._shared.update(key=key, layout=self.last_layout, blob=encode(msg))
        self.link.send_bytes(self._shared["blob"])
        self.last_layout = plan.layout

    def next(self, reply: np.ndarray | None = None) -> tuple:
        if reply is not None:
            self.link.send({"kind": "full", "data": reply})
        msg = self.link.recv(DEVICE_TIMEOUT_S)
        kind = msg["kind"]
        if kind == "exchange":
            return ("exchange", msg["tag"], msg["data"])
        if kind == "done":
            return ("done", RoundOutput.from_wire(msg))
        raise remote_error(msg["error"])

    def abort(self) -> None:
        self.link.send({"kind": "abort"})
        self.link.recv(DEVICE_TIMEOUT_S)  # its answer: the round aborted there


class Router:
    """Runs rounds through `units` (the device ids of each unit, in stage order)."""

    def __init__(self, fabric: Fabric, units: list[tuple[int, ...]], timer: SystemTimer) -> None:
        self.fabric, self.timer = fabric, timer
        self.units = [Unit(tuple(u)) for u in units]
        self.ports: dict[int, RemotePort] = {}
        self._shared: dict = {}
        self.lock = threading.Lock()
        """Held for a whole round; readers of the fabric's clocks and counters take it too."""
        self._attached = threading.Condition()

    def attach(self, device_id: int, link: Link) -> None:
        with self._attached:
            self.ports[device_id] = RemotePort(link, self._shared)
            self._attached.notify_all()

    def _wait_for_ports(self) -> None:
        needed = [d for u in self.units for d in u.device_ids]
        with self._attached:
            if not self._attached.wait_for(lambda: all(d in self.ports for d in needed), timeout=PORT_TIMEOUT_S):
                missing = [d for d in needed if d not in self.ports]
                raise TimeoutError(f"devices {missing} did not connect to the switch in {PORT_TIMEOUT_S} s")

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        with self.lock:
            self._wait_for_ports()
            return run_round(plan, self.units, self.ports, self.fabric, self.timer)

    def serve_host(self, link: Link) -> None:
        """Answer the host's rounds, in order, until it hangs up."""
        last_layout = None
        while True:
            try:
                msg = link.recv()
            except LinkClosed:
                return
            try:
                plan = RoundPlan.from_wire(msg, last_layout)
                last_layout = plan.layout
                reply = {"kind": "done", **self.run_round(plan).to_wire()}
            except Exception as e:  # noqa: BLE001 - every failure goes back to the host
                log.warning("round failed: %s: %s", type(e).__name__, e)
                reply = {"kind": "error", "error": error_message(e)}
            try:
                link.send(reply)
            except LinkClosed:
                return
