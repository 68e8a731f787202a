"""The order in which a round visits devices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from cent_serve.timing.mapping import Mapping


@dataclass(frozen=True)
class Unit:
    """Devices that take one call each, in lockstep, per round: one device holding
    consecutive pipeline stages, or the tp devices of a tensor-parallel stage."""

    device_ids: tuple[int, ...]


def execution_units(mp: Mapping) -> list[Unit]:
    """Units in stage order; consecutive stages on one device merge into one unit."""
    units: list[Unit] = []
    for stage in mp.stages:
        if units and units[-1].device_ids == stage.device_ids:
            continue
        units.append(Unit(stage.device_ids))
    return units


def drive_lockstep(gens: list[Generator], exchange: Callable[[list[np.ndarray]], np.ndarray]) -> list:
    """Run the ranks' `DeviceWorker.run` generators together: at every exchange point all
    ranks yield a slice, `exchange` joins them, every rank gets the whole. Returns results."""
    results: list = [None] * len(gens)
    msgs: list = [None] * len(gens)
    done = 0
    for i, g in enumerate(gens):
        try:
            msgs[i] = next(g)
        except StopIteration as stop:
            results[i], done = stop.value, done + 1
    while done < len(gens):
        assert done == 0 and all(m is not None for m in msgs), "ranks left lockstep"
        tags = {m[1] for m in msgs}
        assert len(tags) == 1, f"ranks disagree on the exchange point: {tags}"
        full = exchange([m[2] for m in msgs])
        for i, g in enumerate(gens):
            try:
                msgs[i] = g.send(full)
            except StopIteration as stop:
                results[i], msgs[i], done = stop.value, None, done + 1
    return results
