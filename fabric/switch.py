"""The CXL switch: point-to-point, multicast, gather, all-gather and all-reduce.

Plain Python (the Ray actor in `actor.py` only wraps it). Every device port
has two busy-until clocks (egress and ingress, full duplex): a transfer
starts when its payload exists and both ends are free, occupies them for its
flits' serialization time, and arrives one hop latency later
(docs/hardware_model.md section 6, through `cent_serve.timing.fabric`). So contention
on a port shows as later arrivals. Counters per port: bytes, flits, messages.

Payloads are framed with msgpack (dtype, shape, raw bytes) as they would be
on the wire. Activations travel as float32 so sharded results equal the
reference model; time is charged for CENT's bf16 wire format of the same
number of values.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import msgpack
import numpy as np

from cent_serve.config import CentConfig
from cent_serve.messages import MicroBatch, Wave
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
        self._ser_of: dict[int, tuple[float, int]] = {}  # tokens of a stage output -> (serialize s, flits)

    # ------------------------------------------------------------ timed primitives

    def _move(self, src: int, dsts: tuple[int, ...], flits: int, ready_s: float) -> float:
        """One multicast transfer of `flits` from src to dsts; returns the arrival time."""
        ser = self.port.serialize_s(flits)
        start = max([ready_s, self.egress_free_s[src], *(self.ingress_free_s[d] for d in dsts)])
        self.egress_free_s[src] = start + ser
        for d in dsts:
            self.ingress_free_s[d] = start + ser
        pc = self.ports[src]
        nbytes = flits * self.cfg.fabric.flit_bytes
        pc.bytes_out += nbytes
        pc.flits_out += flits
        pc.messages_out += 1
        pc.busy_out_s += ser
        for d in dsts:
            self.ports[d].bytes_in += nbytes
            self.ports[d].messages_in += 1
        self.wire_bytes += nbytes
        return start + ser + self.port.latency_s

    def send(self, src: int, dst: int, num_values: int, ready_s: float) -> float:
        """Point-to-point: `num_values` bf16 values; returns the arrival time."""
        return self._move(src, (dst,), flits_for_values(num_values, self.cfg.fabric), ready_s)

    def multicast(self, src: int, dsts: tuple[int, ...], num_values: int, ready_s: float) -> float:
        """Broadcast to a group: one serialization at the source, every destination receives."""
        return self._move(src, tuple(dsts), flits_for_values(num_values, self.cfg.fabric), ready_s)

    def gather(self, srcs: tuple[int, ...], dst: int, num_values: int, ready_s: list[float]) -> float:
        """An n-vector split over srcs collected at dst: ceil(2 n / tp / 192) (tp - 1) flits,
        the slices arriving back to back through dst's port."""
        tp = len(srcs)
        flits_each = gather_flits(num_values, tp, self.cfg.fabric) // max(1, tp - 1)
        arrive = max(ready_s)
        for s, r in zip(srcs, ready_s):
            if s != dst:
                arrive = max(arrive, self._move(s, (dst,), flits_each, r))
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

    # ------------------------------------------------------------ what the executors call

    def transfer(self, srcs: tuple[int, ...], dsts: tuple[int, ...], mbs: list[MicroBatch]) -> list[MicroBatch]:
        """`transfer_wave` on MicroBatches (returned with the caller's own SeqStep lists)."""
        out = self.transfer_wave(srcs, dsts, Wave.from_micro_batches(mbs))
        return out.to_micro_batches({mb.mb_id: mb.seqs for mb in mbs})

    def transfer_wave(self, srcs: tuple[int, ...], dsts: tuple[int, ...], w: Wave) -> Wave:
        """Stage to stage: each micro-batch's activations from the sending stage (its first
        device sends, the others hold the same replica) to every device of the next stage,
        in arrival order; returns the wave in mb_id order stamped with the arrivals.

        Each transfer is `multicast`'s, with the port clocks in locals: the same float
        operations in the same order, so the times are bit for bit `multicast`'s."""
        src, dsts = srcs[0], tuple(dsts)
        d, fab, port = self.cfg.model.hidden_size, self.cfg.fabric, self.port
        egress, ingress = self.egress_free_s, self.ingress_free_s
        hidden = None if w.hidden is None else list(w.hidden)
        arrival = [0.0] * len(w)
        ser_of = self._ser_of
        pc, pcs_in = self.ports[src], [self.ports[x] for x in dsts]
        # every destination's ingress is busy exactly as long as the source's egress after the
        # first transfer, so one clock (the latest of them) decides each start, exactly as the max
        # over all of them would
        free = egress[src]
        for x in dsts:
            if ingress[x] > free:
                free = ingress[x]
        latency, flit_bytes = port.latency_s, fab.flit_bytes
        ready, tokens = w.ready_s, w.tokens
        busy_out, n_flits = pc.busy_out_s, 0
        for i in w.arrival_order():
            if hidden is not None and hidden[i] is not None:
                blob = frame(hidden[i])
                self.framed_bytes += len(blob)
                hidden[i] = unframe(blob)
            n = tokens[i]
            hit = ser_of.get(n)
            if hit is None:
                flits = flits_for_values(n * d, fab)
                hit = ser_of[n] = (port.serialize_s(flits), flits)
            ser, flits = hit
            start = ready[i]
            if free > start:
                start = free
            free = start + ser
            busy_out += ser
            n_flits += flits
            arrival[i] = start + ser + latency
        n_msgs = len(arrival)
        n_bytes = n_flits * flit_bytes
        if n_msgs:
            egress[src] = free
            for x in dsts:
                ingress[x] = free
            pc.busy_out_s = busy_out
            pc.bytes_out += n_bytes
            pc.flits_out += n_flits
            pc.messages_out += n_msgs
            for x in pcs_in:
                x.bytes_in += n_bytes
                x.messages_in += n_msgs
            self.wire_bytes += n_bytes
        order = w.id_order()
        return w.take(order, arrival, hidden=None if hidden is None else [hidden[i] for i in order])

    def exchange(self, slices: list[np.ndarray]) -> np.ndarray:
        """Numerics of an in-block all-gather: concatenate the ranks' slices (framed on the
        wire). Its time is charged by the devices (CENT's lockstep collectives)."""
        blobs = [frame(s) for s in slices]
        self.framed_bytes += sum(len(b) for b in blobs)
        self.wire_bytes += sum(s.size for s in slices) * BF16_BYTES * max(0, len(slices) - 1)
        return np.concatenate([unframe(b) for b in blobs], axis=-1)

    def stats(self) -> dict:
        return dict(wire_bytes=self.wire_bytes, framed_bytes=self.framed_bytes,
                    ports={p: vars(c).copy() for p, c in sorted(self.ports.items())})
