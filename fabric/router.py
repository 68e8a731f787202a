"""The switch driving rounds over its ports: the Ray counterpart of `LocalExecutor.execute_wave`.

Plain Python over `Link`s (the fabric actor in `actor.py` only wraps it). For each unit
of the plan the switch multicasts the wave to the unit's devices, relays their
tensor-parallel exchanges in lockstep (`Fabric.exchange`, the same code the local
executor calls), takes the first rank's output and moves it to the next unit with
`Fabric.transfer_wave`. So activations go device -> switch -> device and never through
the host, and the simulated times are those of the local executor, bit for bit.
"""
from __future__ import annotations

import threading

from cent_serve.messages import Wave
from fabric.link import Link, LinkClosed, dumps, sendable_error
from fabric.switch import Fabric

DEVICE_TIMEOUT_S = 300.0
"""Longest wait for one device's reply (its whole stage, or up to its next exchange)."""
PORT_TIMEOUT_S = 60.0
"""Longest wait for a device's link to come up after the round that needs it arrived."""


class Router:
    """Runs rounds through `units` (the device ids of each unit, in stage order)."""

    def __init__(self, fabric: Fabric, units: list[tuple[int, ...]]) -> None:
        self.fabric = fabric
        self.units = [tuple(u) for u in units]
        self.ports: dict[int, Link] = {}
        self.lock = threading.Lock()
        """Held for a whole round; readers of the fabric's clocks and counters take it too."""
        self._attached = threading.Condition()

    def attach(self, device_id: int, link: Link) -> None:
        with self._attached:
            self.ports[device_id] = link
            self._attached.notify_all()

    def _port(self, device_id: int) -> Link:
        with self._attached:
            if not self._attached.wait_for(lambda: device_id in self.ports, timeout=PORT_TIMEOUT_S):
                raise TimeoutError(f"device {device_id} did not connect to the switch in {PORT_TIMEOUT_S} s")
            return self.ports[device_id]

    def run_round(self, wave: Wave, free_seq_ids: tuple[int, ...] = ()) -> Wave:
        with self.lock:
            x = wave
            for k, unit in enumerate(self.units):
                links = [self._port(d) for d in unit]
                blob = dumps(("run", x, free_seq_ids))
                for link in links:  # multicast: every rank starts before any is awaited
                    link.send_bytes(blob)
                x = self._lockstep(links)[0]
                if k + 1 < len(self.units):
                    x = self.fabric.transfer_wave(unit, self.units[k + 1], x)
            return x

    def _lockstep(self, links: list[Link]) -> list[Wave]:
        """Relay a unit's exchanges until every rank is done; returns the ranks' outputs."""
        while True:
            msgs = [link.recv(DEVICE_TIMEOUT_S) for link in links]
            kinds = {m[0] for m in msgs}
            if kinds == {"done"}:
                outs = [m[1] for m in msgs]
                assert all(o.ready_s == outs[0].ready_s for o in outs), "tensor-parallel ranks disagree on time"
                return outs
            if kinds == {"exchange"} and len({m[1] for m in msgs}) == 1:
                blob = dumps(("full", self.fabric.exchange([m[2] for m in msgs])))
                for link in links:
                    link.send_bytes(blob)
                continue
            # a rank failed, or the ranks left lockstep: release the ones waiting in an exchange
            for link, m in zip(links, msgs):
                if m[0] == "exchange":
                    link.send(("abort",))
                    link.recv(DEVICE_TIMEOUT_S)
            errors = [m[1] for m in msgs if m[0] == "error"]
            if errors:
                raise errors[0]
            raise AssertionError(f"ranks left lockstep: {[m[:2] if m[0] == 'exchange' else m[0] for m in msgs]}")

    def serve_host(self, link: Link) -> None:
        """Answer the host's rounds, in order, until it hangs up."""
        while True:
            try:
                kind, wave, free_seq_ids = link.recv()
            except LinkClosed:
                return
            assert kind == "round", kind
            try:
                reply = ("done", self.run_round(wave, free_seq_ids))
            except Exception as e:  # noqa: BLE001 - every failure goes back to the host
                reply = ("error", sendable_error(e))
            try:
                link.send(reply)
            except LinkClosed:
                return
