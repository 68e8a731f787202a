"""A round through the units of a mapping: the one unit loop and the one lockstep relay, whatever
carries the calls (in-process generators, or links to device actors).

A unit is the devices that take one call each per round, in lockstep: one device holding
consecutive pipeline stages, or the tp devices of a tensor-parallel stage (`execution_units`).
For each unit the switch starts every rank on the round, relays their exchanges in lockstep
(`Fabric.all_gather_data`), takes the first rank's output (the ranks agree on time) and the sum
of the ranks' energy, and hops it to the next unit (`Fabric.hop`). After the last unit the host
samples: `sampled_s` is the only place host time is added.

A `Port` is one rank's end of this protocol: `start(plan, x)` sends it the round and its input,
`next(reply)` returns its next message, `("exchange", tag, slice)` or `("done", RoundOutput)`,
or raises the device's error; `abort()` releases a rank waiting in an exchange.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Protocol

import numpy as np

from cent_serve.messages import RoundOutput, RoundPlan
from cent_serve.timing import SystemTimer
from cent_serve.timing.mapping import Mapping
from fabric.switch import Fabric


class RoundAborted(RuntimeError):
    """Another rank of this device's stage failed mid-round."""


@dataclass(frozen=True)
class Unit:
    """Devices that take one call each, in lockstep, per round."""

    device_ids: tuple[int, ...]


def execution_units(mp: Mapping) -> list[Unit]:
    """Units in stage order; consecutive stages on one device merge into one unit."""
    units: list[Unit] = []
    for stage in mp.stages:
        if units and units[-1].device_ids == stage.device_ids:
            continue
        units.append(Unit(stage.device_ids))
    return units


class Port(Protocol):
    def start(self, plan: RoundPlan, x: RoundOutput, index: int, last: bool) -> None: ...

    def next(self, reply: np.ndarray | None = None) -> tuple: ...

    def abort(self) -> None: ...


class LocalPort:
    """A device in this process: its `run` generator, driven directly."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self._gen: Generator | None = None

    def start(self, plan: RoundPlan, x: RoundOutput, index: int = 0, last: bool = False) -> None:
        self._gen = self.worker.run(plan, x)
        self._first = True

    def next(self, reply: np.ndarray | None = None) -> tuple:
        try:
            msg = next(self._gen) if self._first else self._gen.send(reply)
        except StopIteration as stop:
            return ("done", stop.value)
        self._first = False
        return ("exchange", msg[1], msg[2])

    def abort(self) -> None:
        self._gen.close()


def run_unit(ports: list, plan: RoundPlan, x: RoundOutput, fabric: Fabric, index: int = 0,
             last: bool = False) -> RoundOutput:
    """One unit's call: every rank started before any is awaited, exchanges relayed in lockstep."""
    for p in ports:
        p.start(plan, x, index, last)
    reply = None
    while True:
        msgs, error = [], None
        for p in ports:
            try:
                msgs.append(p.next(reply))
            except Exception as exc:  # noqa: BLE001 - the others are released below, then it is raised
                msgs.append(("failed", exc))
                error = error or exc
        if error is None and len(msgs) > 1 and any(m[0] != msgs[0][0] or m[1] != msgs[0][1]
                                                   for m in msgs if m[0] == "exchange"):
            error = AssertionError(f"ranks left lockstep: {[m[:2] for m in msgs]}")
        if error is not None:
            _release(ports, msgs)
            raise error
        if all(m[0] == "done" for m in msgs):
            return _combine([m[1] for m in msgs])
        assert all(m[0] == "exchange" for m in msgs), f"ranks left lockstep: {[m[0] for m in msgs]}"
        reply = fabric.all_gather_data([m[2] for m in msgs])


def _release(ports: list, msgs: list) -> None:
    """After a rank failed: the ranks waiting in an exchange are aborted (they answer and stay usable)."""
    for p, m in zip(ports, msgs):
        if m is not None and m[0] == "exchange":
            try:
                p.abort()
            except Exception:  # noqa: BLE001 - the first error is the one that is raised
                pass


def _combine(outs: list[RoundOutput]) -> RoundOutput:
    """The unit's output: the first rank's (every rank has the same times and data), with every
    rank's energy (each charged its share)."""
    first = outs[0]
    if len(outs) == 1:
        return first
    assert all(np.array_equal(o.ready_s, first.ready_s) for o in outs), "tensor-parallel ranks disagree on time"
    for o in outs[1:]:
        first.energy_j = first.energy_j + o.energy_j
    return first


def run_round(plan: RoundPlan, units: list[Unit], ports: dict[int, object], fabric: Fabric,
              timer: SystemTimer) -> RoundOutput:
    """Every lane of `plan` through every unit; returns the last unit's output with the energy of
    all units and the host's sampling time (`sampled_s`)."""
    x = RoundOutput.start(plan)
    energy = x.energy_j
    for k, unit in enumerate(units):
        last = k + 1 == len(units)
        y = run_unit([ports[d] for d in unit.device_ids], plan, x, fabric, k, last)
        energy = energy + y.energy_j
        x = y if last else fabric.hop(unit.device_ids, units[k + 1].device_ids, plan.layout, y)
    x.energy_j = energy
    x.sampled_s = timer.sampled_s(x.ready_s)
    return x
