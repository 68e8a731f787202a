"""The CXL switch: point-to-point, multicast, gather, all-gather and all-reduce.

Plain Python over arrays (the Ray actor in `actor.py` only wraps it). Every port has two
busy-until clocks (egress and ingress, full duplex): a transfer starts when its payload exists and
both ends are free, occupies them for its flits' serialization time, and arrives one hop latency
later (docs/hardware_model.md section 6, `cent_serve.timing.fabric`). So contention on a port
shows as later arrivals. Counters per port: bytes, flits, messages, busy time.

`transfer` is the one transfer function (compiled: `cent_serve.timing.clock.transfer`): every
primitive, and a round's stage-to-stage `hop` (a multicast per lane, in arrival order), is made
of it. The tensor-parallel exchanges inside a block move their data through `all_gather_data`;
their time is the same primitives evaluated without data (`TP_BLOCK_EXCHANGES`), charged by the
devices as part of a block's step, lockstep and free of port contention as in CENT's collectives.

In one process one `Fabric` clocks every port. Through Ray each unit's leader clocks its own
port's hops with a `Fabric` of its own (each port receives from one sender in a round, so the
sender's view of its destinations' ingress is the whole switch's) and the fabric actor's counts
the exchanges; `merge_stats` adds the views up.

Activations are framed with msgpack (dtype, shape, raw bytes) as they would be on the wire and
travel as float32 so sharded results equal the reference model; time is charged for CENT's bf16
wire format of the same number of values.
"""
from __future__ import annotations

import msgpack
import numpy as np

from cent_serve.config import CentConfig
from cent_serve.messages import Layout, RoundOutput
from cent_serve.timing.clock import BYTES_IN, BYTES_OUT, FLITS_OUT, MESSAGES_IN, MESSAGES_OUT, transfer
from cent_serve.timing.fabric import flits_for_values, gather_flits, hop_size, port_model

HOST = -1
"""Port id of the host CPU."""


def frame(array: np.ndarray) -> bytes:
    """msgpack frame of an array: dtype, shape, raw bytes."""
    a = np.ascontiguousarray(array)
    return msgpack.packb({"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()})


def unframe(blob: bytes) -> np.ndarray:
    d = msgpack.unpackb(blob)
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


class Fabric:
    """The switch of one CENT system: `cfg.parallel.num_devices` ports plus the host's."""

    def __init__(self, cfg: CentConfig) -> None:
        self.cfg = cfg
        self.port = port_model(cfg.fabric, cfg.parallel.num_devices)
        n = cfg.parallel.num_devices + 1  # the host's port is the last (HOST = -1)
        self.ports = np.zeros((3, n))
        """Per port: egress free time, ingress free time, egress busy seconds (rows)."""
        self.egress_free_s, self.ingress_free_s, self.busy_out_s = self.ports
        self.counts = np.zeros((n, 5), dtype=np.int64)
        """Per port: bytes out, bytes in, flits out, messages out, messages in (`clock` slots)."""
        self.exchange_wire_bytes = 0
        """Bytes the in-block exchanges put on the wire (their data, `all_gather_data`)."""
        self.framed_bytes = 0
        self._groups: dict[tuple, np.ndarray] = {}  # destination tuples as arrays
        self._ser_of: dict[int, tuple[int, float]] = {}  # tokens of a lane -> (flits, serialize s)
        self._sizes: tuple | None = None  # (layout, per-lane serialize s, per-lane flits)

    # ------------------------------------------------------------ the one transfer function

    def transfer(self, src: int, dsts: tuple[int, ...], flits: np.ndarray, ser_s: np.ndarray,
                 ready_s: np.ndarray) -> np.ndarray:
        """Transfers from `src` to every port of `dsts` (one serialization at the source), in
        arrival order (ties: the lower index): each starts when its payload exists and the ports
        are free, holds them for `ser_s`, and arrives one hop latency later
        (`cent_serve.timing.clock.transfer`). Returns the arrival times, in the order given."""
        group = self._groups.get(dsts)
        if group is None:
            group = self._groups[dsts] = np.array(dsts, dtype=np.int64)
        return transfer(src, group, flits, ser_s, ready_s, self.port.latency_s, self.port.flit_bytes, self.ports,
                        self.counts)

    def _one(self, src: int, dsts: tuple[int, ...], flits: int, ready_s: float) -> float:
        ser = self.port.serialize_s(flits)
        return float(self.transfer(src, dsts, np.array([flits], dtype=np.int64), np.array([ser]),
                                   np.array([float(ready_s)]))[0])

    # ------------------------------------------------------------ timed primitives

    def send(self, src: int, dst: int, num_values: int, ready_s: float) -> float:
        """Point-to-point: `num_values` activation values; returns the arrival time."""
        return self._one(src, (dst,), flits_for_values(num_values, self.cfg.fabric), ready_s)

    def multicast(self, src: int, dsts: tuple[int, ...], num_values: int, ready_s: float) -> float:
        """Broadcast to a group: one serialization at the source, every destination receives (without
        multicast, `fabric.multicast` false: one send to each, back to back; the last arrival)."""
        flits = flits_for_values(num_values, self.cfg.fabric)
        if self.cfg.fabric.multicast:
            return self._one(src, tuple(dsts), flits, ready_s)
        return max((self._one(src, (d,), flits, ready_s) for d in dsts), default=ready_s)

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
        if self.cfg.fabric.multicast or len(dsts) == 1:
            arrival = self.transfer(srcs[0], dsts, flits, ser, x.ready_s)
        else:  # one send to each destination, lane by lane in arrival order; a lane's last copy counts
            arrival = np.empty(len(layout))
            for a in np.argsort(x.ready_s, kind="mergesort"):
                one = slice(a, a + 1)
                arrival[a] = max(self.transfer(srcs[0], (d,), flits[one], ser[one], x.ready_s[one])[0] for d in dsts)
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
        ser_of = self._ser_of
        for n in set(layout.lane_tokens):
            if n not in ser_of:
                ser_of[n] = hop_size(self.cfg.model.hidden_size, n, self.port, self.cfg.fabric)
        ser = np.array([ser_of[n][1] for n in layout.lane_tokens])
        flits = np.array([ser_of[n][0] for n in layout.lane_tokens], dtype=np.int64)
        self._sizes = (layout, ser, flits)
        return ser, flits

    def all_gather_data(self, slices: list[np.ndarray]) -> np.ndarray:
        """Numerics of an in-block all-gather: concatenate the ranks' slices (framed on the wire).
        Its time is charged by the devices (`TP_BLOCK_EXCHANGES`, the primitives without data)."""
        blobs = [frame(s) for s in slices]
        self.framed_bytes += sum(len(b) for b in blobs)
        self.exchange_wire_bytes += sum(s.size for s in slices) * self.cfg.fabric.activation_bytes * max(0, len(slices) - 1)
        return np.concatenate([unframe(b) for b in blobs], axis=-1)

    def stats(self) -> dict:
        """Bytes on the wire, framed bytes, and the counters of every port that moved a message."""
        n = self.counts.shape[0]
        ports = {}
        for p in np.flatnonzero(self.counts[:, MESSAGES_OUT] + self.counts[:, MESSAGES_IN]).tolist():
            c = self.counts[p].tolist()
            ports[HOST if p == n - 1 else p] = dict(
                bytes_out=c[BYTES_OUT], bytes_in=c[BYTES_IN], flits_out=c[FLITS_OUT], messages_out=c[MESSAGES_OUT],
                messages_in=c[MESSAGES_IN], busy_out_s=float(self.busy_out_s[p]))
        return dict(wire_bytes=int(self.counts[:, BYTES_OUT].sum()) + self.exchange_wire_bytes,
                    framed_bytes=self.framed_bytes, ports=dict(sorted(ports.items())))


def merge_stats(views: list[dict]) -> dict:
    """One switch's stats from the `Fabric.stats` of the processes that clock its ports (through
    Ray each unit's leader clocks its own port's hops and the fabric actor the exchanges): the
    counters added. Each port's egress counters come from one process and its ingress counters
    from the one that sends to it, so the sums equal one `Fabric`'s in one process, bit for bit."""
    ports: dict[int, dict] = {}
    for view in views:
        for p, c in view["ports"].items():
            mine = ports.setdefault(int(p), dict.fromkeys(c, 0))
            for k, v in c.items():
                mine[k] = mine[k] + v
    return dict(wire_bytes=sum(v["wire_bytes"] for v in views), framed_bytes=sum(v["framed_bytes"] for v in views),
                ports=dict(sorted(ports.items())))
