"""Busy-until clocks over a round's lanes: the emulator's hot loops, compiled.

A resource (a channel group, the embedding unit, the LM head, a switch port) serves the lanes of
a round in arrival order: a lane starts at max(the resource's free time, its input's ready time)
and ends `cost` later (docs/architecture.md: an op starts at max(resource.free_at_s,
inputs.ready_s)). These loops run once per device and per switch hop for every round, so they
are compiled with numba (`njit`): the same IEEE double operations in the same order as the
plain Python they are written in (no fast-math), hence the same floats bit for bit as the
Python (`.py_func`, checked in tests/timing/test_clock.py) and as the recorded golden results
(tests/executor/test_sim_golden.py). Lanes are taken in arrival order, ties to the lower lane
(a stable sort by ready time).

`warm()` compiles them (numba caches the machine code on disk, so later processes, such as the
device actors, load it instead of compiling).
"""
from __future__ import annotations

import numpy as np
from numba import njit

# busy slots of a device, in its `busy` array: then one per channel group
EMBEDDING, LM_HEAD, ACCELERATOR, DMA, GROUPS = 0, 1, 2, 3, 4


@njit(cache=True)
def _unit(unit, t, count, busy, slot):  # pragma: no cover - compiled; tested through device_lanes
    """One lane through a once-per-token or once-per-sequence unit: unit = [has it, seconds per
    item, clock] (clock updated), `count` items, arriving at `t`; returns when it leaves."""
    free = unit[2]
    start = t if t > free else free
    t = start + unit[1] * count
    unit[2] = t
    busy[slot] += t - start
    return t


@njit(cache=True)
def device_lanes(ready, step, hop, acc, energy, tokens, seqs, group_free, group_blocks, block_last,
                 embed, head, busy, blocks, joules):  # pragma: no cover - compiled; its .py_func is tested
    """Push the lanes through one device, in arrival order; returns each lane's output time.

    ready, step, hop, acc, energy: (lanes,) float64 (block step, hop to the next block, own
    accelerator s and joules of one block, from `SystemTimer.lane_costs`); tokens, seqs: (lanes,)
    int64. group_free (groups,) float64, the channel groups' clocks (updated); group_blocks
    (groups,) int64 blocks per group; block_last (blocks,) bool, whether a block's output leaves
    the device (else the DMA engine moves it to the next block: one hop). embed = [has it,
    seconds per token, clock], head = [has it, seconds per sequence, clock, joules per sequence]
    (clocks updated). busy: (4 + groups,) busy seconds (updated, slots above); blocks: blocks on
    the device; joules: the device's energy so far. Returns (done times (lanes,), the energy with
    this round's lane by lane)."""
    order = np.argsort(ready, kind="mergesort")
    done = np.empty_like(ready)
    for i in order:
        t = ready[i]
        if embed[0]:
            t = _unit(embed, t, tokens[i], busy, EMBEDDING)
        b = 0
        for j in range(group_free.shape[0]):
            free = group_free[j]
            for _ in range(group_blocks[j]):
                start = free if free > t else t
                free = start + step[i]
                if block_last[b]:
                    t = free
                else:
                    t = free + hop[i]
                    busy[DMA] += hop[i]
                b += 1
            group_free[j] = free
            busy[GROUPS + j] += step[i] * group_blocks[j]
        busy[ACCELERATOR] += acc[i] * blocks
        joules += energy[i] * blocks
        if head[0]:
            t = _unit(head, t, seqs[i], busy, LM_HEAD)
            joules += head[3] * seqs[i]
        done[i] = t
    return done, joules


@njit(cache=True)
def port_lanes(free, ready, ser, latency, busy):  # pragma: no cover - compiled; its .py_func is tested
    """Transfers through a port (or ports held together), in arrival order: each starts when its
    payload exists and the port is free, holds it `ser` seconds, arrives `latency` later.
    Returns (arrival times (lanes,), the port's new free time, its busy seconds `busy` plus this
    round's, added lane by lane)."""
    order = np.argsort(ready, kind="mergesort")
    arrival = np.empty_like(ready)
    for i in order:
        start = ready[i]
        if free > start:
            start = free
        free = start + ser[i]
        busy += ser[i]
        arrival[i] = start + ser[i] + latency
    return arrival, free, busy


def warm() -> None:
    """Compile (or load from numba's on-disk cache) every kernel here."""
    z, i = np.zeros(1), np.ones(1, dtype=np.int64)
    device_lanes(z, z, z, z, z, i, i, np.zeros(1), i, np.ones(1, dtype=np.bool_), np.zeros(3), np.zeros(4),
                 np.zeros(5), 1, 0.0)
    port_lanes(0.0, z, z, 0.0, 0.0)
