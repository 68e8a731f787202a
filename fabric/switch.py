"""The CXL switch: point-to-point, multicast, gather, all-gather and all-reduce.

Plain Python (the Ray actor in `actor.py` only wraps it). Every device port has two busy-until
clocks (egress and ingress, full duplex): a transfer starts when its payload exists and both
ends are free, occupies them for its flits' serialization time, and arrives one hop latency
later (docs/hardware_model.md section 6, `cent_serve.timing.fabric`). So contention on a port
shows as later arrivals. Counters per port: bytes, flits, messages, busy time.

`transfer` is the one transfer function: every primitive, and a round's stage-to-stage `hop`
(a multicast per lane, in arrival order), is made of it. The tensor-parallel exchanges inside a
block move their data through `all_gather_data`; their time is the same primitives evaluated
without data (`TP_BLOCK_EXCHANGES`), charged by the devices as part of a block's step, lockstep
and free of port contention as in CENT's collectives.

Activations are framed with msgpack (dtype, shape, raw bytes) as they would be on the wire and
travel as float32 so sharded results equal the reference model; time is charged for CENT's bf16
wire format of the same number of values.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import msgpack
import numpy as np

from cent_serve.config import CentConfig
from cent_serve.messages import Layout, RoundOutput
from cent_serve.timing.clock import port_lanes
from cent_serve.timing.fabric import BF16_BYTES, flits_for_values, gather_flits, port_model

HOST = -1
"""Port id of the host CPU."""


def frame(array: np.ndarray) -> bytes:
    """msgpack frame of an array: dtype, shape, raw bytes."""
    a = np.ascontiguousarray(array)
    return msgpack.packb({"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()})


def unframe(blob: bytes) -> np.ndarray:
    d = msgpack.unpackb(blob)
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


@dataclass
class PortCounters:
    bytes_out: int = 0
    bytes_in: int = 0
    flits_out: int = 0
    messages_out: int = 0
    messages_in: int = 0
    busy_out_s: float = 0.0


@dataclass
class Fabric:
    """The switch of one CENT system (`cfg.parallel.num_devices` ports plus the host)."""

    cfg: CentConfig
    egress_free_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    ingress_free_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    ports: dict[int, PortCounters] = field(default_factory=lambda: defaultdict(PortCounters))
    wire_bytes: int = 0
    framed_bytes: int = 0

    def __post_init__(self) -> None:
        self.port = port_model(self.cfg.fabric, self.cfg.parallel.num_devices)
        self._ser_of: dict[int, tuple[float, int]] = {}  # tokens of a lane -> (serialize s, flits)
        self._sizes: tuple | None = None  # (layout, per-lane serialize s, per-lane flits)

    # ------------------------------------------------------------ the one transfer function

    def transfer(self, src: int, dsts: tuple[int, ...], flits: np.ndarray, ser_s: np.ndarray,
                 ready_s: np.ndarray) -> np.ndarray:
        """Transfers from `src` to every port of `dsts` (one serialization at the source), in
        arrival order (ties: the lower index): each starts when its payload exists and the ports
        are free, holds them for `ser_s`, and arrives one hop latency later (`port_lanes`).
        Returns the arrival times (float64), in the order given.

        After a transfer every destination's ingress is busy exactly as long as the source's
        egress, so one clock (the latest of them) decides each start, as the max over all would."""
        dsts = tuple(dsts)
        free = self.egress_free_s[src]
        for d in dsts:
            if self.ingress_free_s[d] > free:
                free = self.ingress_free_s[d]
        n = ready_s.shape[0]
        if n == 0:
            return np.empty(0)
        pc = self.ports[src]
        arrival, free, pc.busy_out_s = port_lanes(free, ready_s, ser_s, self.port.latency_s, pc.busy_out_s)
        self.egress_free_s[src] = free
        for d in dsts:
            self.ingress_free_s[d] = free
        n_flits = int(flits.sum())
        n_bytes = n_flits * self.cfg.fabric.flit_bytes
        pc.bytes_out += n_bytes
        pc.flits_out += n_flits
        pc.messages_out += n
        for d in dsts:
            self.ports[d].bytes_in += n_bytes
            self.ports[d].messages_in += n
        self.wire_bytes += n_bytes
        return arrival

    def _one(self, src: int, dsts: tuple[int, ...], flits: int, ready_s: float) -> float:
        ser = self.port.serialize_s(flits)
        return float(self.transfer(src, dsts, np.array([flits]), np.array([ser]), np.array([ready_s]))[0])

    # ------------------------------------------------------------ timed primitives

    def send(self, src: int, dst: int, num_values: int, ready_s: float) -> float:
        """Point-to-point: `num_values` bf16 values; returns the arrival time."""
        return self._one(src, (dst,), flits_for_values(num_values, self.cfg.fabric), ready_s)

    def multicast(self, src: int, dsts: tuple[int, ...], num_values: int, ready_s: float) -> float:
        """Broadcast to a group: one serialization at the source, every destination receives."""
        return self._one(src, tuple(dsts), flits_for_values(num_values, self.cfg.fabric), ready_s)

    def gather(self, srcs: tuple[int, ...], dst: int, num_values: int, ready_s: list[float]) -> float:
        """An n-vector split over srcs collected at dst: ceil(2 n / tp / 192) (tp - 1) flits,
        the slices arriving back to back through dst's port."""
        tp = len(srcs)
        flits_each = gather_flits(num_values, tp, self.cfg.fabric) // max(1, tp - 1)
        arrive = max(ready_s)
        for s, r in zip(srcs, ready_s):
            if s != dst:
                arrive = max(arrive, self._one(s, (dst,), flits_each, r))
        return arrive

    def all_gather(self, group: tuple[int, ...], num_values: int, ready_s: list[float]) -> float:
        """Gather at the group's first device, then multicast the whole vector to the group."""
        t = self.gather(group, group[0], num_values, ready_s)
        others = tuple(d for d in group if d != group[0])
        return self.multicast(group[0], others, num_values, t) if others else t

    def all_reduce(self, group: tuple[int, ...], num_values: int, ready_s: list[float]) -> float:
        """Reduce at the first device (full vectors in), then multicast the sum back."""
        root = group[0]
        t = max(ready_s)
        for s, r in zip(group, ready_s):
            if s != root:
                t = max(t, self.send(s, root, num_values, r))
        others = tuple(d for d in group if d != root)
        return self.multicast(root, others, num_values, t) if others else t

    # ------------------------------------------------------------ what a round runs on

    def hop(self, srcs: tuple[int, ...], dsts: tuple[int, ...], layout: Layout, x: RoundOutput) -> RoundOutput:
        """Stage to stage: each lane's activations from the sending unit (its first device sends,
        the others hold the same) multicast to every device of the next unit, lanes in arrival
        order (ties: the lower lane). Returns the next unit's input: the arrivals, the data."""
        if len(layout) == 0:
            return x
        ser, flits = self._lane_sizes(layout)
        arrival = self.transfer(srcs[0], dsts, flits, ser, x.ready_s)
        hidden = None
        if x.hidden is not None:
            hidden = []
            for h in x.hidden:
                blob = frame(h)
                self.framed_bytes += len(blob)
                hidden.append(unframe(blob))
        return RoundOutput(arrival, x.energy_j, hidden)

    def _lane_sizes(self, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        """(serialization s, flits) of each lane's activations; kept while the layout holds."""
        if self._sizes is not None and (self._sizes[0] is layout or self._sizes[0] == layout):
            self._sizes = (layout, *self._sizes[1:])  # compared by identity next time
            return self._sizes[1], self._sizes[2]
        ser_of, fab, port = self._ser_of, self.cfg.fabric, self.port
        for n in set(layout.lane_tokens):
            if n not in ser_of:
                flits = flits_for_values(n * self.cfg.model.hidden_size, fab)
                ser_of[n] = (port.serialize_s(flits), flits)
        ser = np.array([ser_of[n][0] for n in layout.lane_tokens])
        flits = np.array([ser_of[n][1] for n in layout.lane_tokens], dtype=np.int64)
        self._sizes = (layout, ser, flits)
        return ser, flits

    def all_gather_data(self, slices: list[np.ndarray]) -> np.ndarray:
        """Numerics of an in-block all-gather: concatenate the ranks' slices (framed on the wire).
        Its time is charged by the devices (`TP_BLOCK_EXCHANGES`, the primitives without data)."""
        blobs = [frame(s) for s in slices]
        self.framed_bytes += sum(len(b) for b in blobs)
        self.wire_bytes += sum(s.size for s in slices) * BF16_BYTES * max(0, len(slices) - 1)
        return np.concatenate([unframe(b) for b in blobs], axis=-1)

    def stats(self) -> dict:
        return dict(wire_bytes=self.wire_bytes, framed_bytes=self.framed_bytes,
                    ports={p: vars(c).copy() for p, c in sorted(self.ports.items())})
