"""CXL switch timing (docs/hardware_model.md section 6).

Payloads travel in 256-byte PBR flits carrying 192 bytes; a transfer costs the
one-hop round trip (180 ns) plus its flits at the port's bandwidth. The
switch's lanes are shared equally by the devices in the system, and CENT
always multicasts, which halves the per-lane bandwidth. Without multicast
(`fabric.multicast` false) a payload for k devices is k transfers back to
back from its sender, at the whole lane bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass

from cent_serve.config import FabricConfig
from cent_serve.timing.mapping import counted

GIB = 2**30  # docs/hardware_model.md section 6: "GB here is 2^30 bytes"


def flits_for_bytes(nbytes: int, fab: FabricConfig) -> int:
    """PBR flits that carry `nbytes` of payload."""
    return -(-nbytes // fab.flit_payload_bytes)


def flits_for_values(n: int, fab: FabricConfig) -> int:
    """flits(n activation values) = ceil(2 n / 192) for CENT's bf16 (`fabric.activation_bytes`)."""
    return flits_for_bytes(fab.activation_bytes * n, fab)


def copies(fab: FabricConfig, receivers: int) -> int:
    """Times the sender puts a payload for `receivers` devices on the wire: once when the switch
    multicasts, else once a receiver."""
    return 1 if fab.multicast else max(1, receivers)


@dataclass(frozen=True)
class PortModel:
    """One device's switch port: lanes and bandwidth for a given system size."""

    lanes: int
    bytes_per_s: float
    latency_s: float
    flit_bytes: int

    def serialize_s(self, flits: int) -> float:
        """Time the port is busy putting `flits` on the wire."""
        return flits * self.flit_bytes / self.bytes_per_s

    def transfer_s(self, flits: int) -> float:
        """t(f) = 180 ns + f x 256 B / (4 GB/s x lanes)."""
        return self.latency_s + self.serialize_s(flits)


def port_model(fab: FabricConfig, num_devices: int) -> PortModel:
    """lanes = floor(144 / devices) (18 for 8 devices, 7 for 20, 4 for 32)."""
    lanes = fab.switch_lanes // num_devices
    if lanes < 1:
        raise ValueError(f"parallel.num_devices={num_devices} exceeds fabric.switch_lanes="
                         f"{fab.switch_lanes}: every device needs a lane; raise fabric.switch_lanes")
    per_lane = fab.lane_gbps * GIB / (2 if fab.multicast else 1)
    return PortModel(lanes=lanes, bytes_per_s=per_lane * lanes, latency_s=fab.hop_latency_s,
                     flit_bytes=fab.flit_bytes)


def idle_lanes_note(fab: FabricConfig, num_devices: int, used: int) -> str:
    """`; 17 idle devices keep ...`: devices no replica uses still take their share of the switch's
    lanes (every device on the switch has its port), which narrows the ports of those that work;
    "" when they cost none."""
    if used >= num_devices:
        return ""
    lanes, fewer = port_model(fab, num_devices).lanes, port_model(fab, used).lanes
    if fewer <= lanes:
        return ""
    return (f"; the switch's {fab.switch_lanes} lanes are shared by all {num_devices} devices, {num_devices - used} "
            f"of them idle: {counted(lanes, 'lane')} a device ({fewer} with --devices {used})")


def gather_flits(n_values: int, tp: int, fab: FabricConfig) -> int:
    """A gather of an n-vector split over tp devices: ceil(2 n / tp / 192) (tp - 1) flits."""
    return -(-fab.activation_bytes * n_values // (tp * fab.flit_payload_bytes)) * (tp - 1)


def pipeline_block_s(hidden: int, port: PortModel, fab: FabricConfig, tokens: int = 1, receivers: int = 1) -> float:
    """Pipeline: one t(flits(D)) per block (charged even between blocks on one device).

    This is also the hop every block ends with in the emulation: its output
    vector (tokens x D) moving to the next block's `receivers` devices (its tp).
    """
    return port.transfer_s(flits_for_values(hidden * tokens, fab) * copies(fab, receivers))


def hop_size(hidden: int, tokens: int, port: PortModel, fab: FabricConfig) -> tuple[int, float]:
    """(flits, serialization s) of a lane's activations (tokens x D values) crossing a port
    once: the payload of a stage-to-stage hop (`fabric.switch.Fabric.hop`)."""
    flits = flits_for_values(hidden * tokens, fab)
    return flits, port.serialize_s(flits)


TP_BLOCK_EXCHANGES = (
    ("norm_in", "all_gather", "D"),  # RMSNorm's partial sums of squares, gathered and re-broadcast
    ("attn", "all_gather", "A"),  # the heads' outputs, H hd values (data: `attn` in the numerics)
    ("o_proj", "all_gather", "D"),  # o_proj's output slices (data: `o_proj`)
    ("norm_post", "all_gather", "D"),  # the second RMSNorm's sums
    ("act", "all_gather", "F"),  # silu(gate) x up slices (data: `act`)
    ("down", "gather", "D"),  # down's slices at the stage's first device; the block's hop broadcasts them
)
"""A tensor-parallel block's exchanges in order, as switch primitives over its tp devices: CENT's
lockstep broadcasts (Eb, Fb) and gathers (Eg, Fg) of D- and F-vectors, 5 Eg + 4 Eb + Fg + Fb, plus
the output hop (one more Eb, `pipeline_block_s`). The heads' outputs ("A") are H hd values: D in
every model the paper ran (Llama 2), not in all (Qwen 3's 30B-A3B: 32 x 128 = 4096 beside D = 2048,
as its o_proj's input is), where they are moved and timed at their own size. The numerics move data at `attn`, `o_proj`, `act`
and `down` (the last as an all-gather: the gather plus the hop's broadcast); the norms' exchanges
are charged without data, their payload being a few scalars CENT still moves as vectors."""


def tensor_collectives_s(hidden: int, ffn: int, tp: int, port: PortModel, fab: FabricConfig,
                         tokens: int = 1, heads: int | None = None) -> float:
    """The in-block exchanges of a tensor-parallel block besides its output hop, for `tokens`
    token vectors: `TP_BLOCK_EXCHANGES` evaluated without data with the primitives below
    (all-gather = gather + broadcast), which adds up to 4 Eb + 5 Eg + Fb + Fg when the heads'
    outputs are D values (`heads`, H hd; None: D), else 3 Eb + 4 Eg + Fb + Fg + Ab + Ag."""
    return _exchanges_s(TP_BLOCK_EXCHANGES, hidden, ffn, tp, port, fab, tokens, heads)


def _exchanges_s(exchanges, hidden: int, ffn: int, tp: int, port: PortModel, fab: FabricConfig, tokens: int,
                 heads: int | None) -> float:
    """The time of `exchanges` ((name, primitive, dim) each, dims D, F and A: the heads' H hd values,
    counted as D where they are as many) for `tokens` token vectors."""
    dims = {"D": hidden * tokens, "F": ffn * tokens, "A": (hidden if heads is None else heads) * tokens}
    count = {(kind, dim): 0 for kind in ("broadcast", "gather") for dim in dims}
    for _, primitive, dim in exchanges:
        if dim == "A" and dims["A"] == dims["D"]:
            dim = "D"  # one size: the artifact's sum below, float for float
        count[("gather", dim)] += 1
        count[("broadcast", dim)] += primitive == "all_gather"
    total = 0.0
    for dim in dims:  # summed in this order: the artifact's 4 Eb + 5 Eg + Fb + Fg, float for float
        if count[("gather", dim)]:
            nbytes = fab.activation_bytes * dims[dim]
            total += count[("broadcast", dim)] * broadcast_s(nbytes, port, fab, tp - 1)  # a term at a time:
            total += count[("gather", dim)] * gather_s(nbytes, tp, port, fab)  # the same association
    return total


MOE_TP_BLOCK_EXCHANGES = (
    *TP_BLOCK_EXCHANGES[:4],
    ("combine", "gather", "tp x D"),  # every device's weighted sum of its experts' outputs, at the first device
)
"""A mixture of experts' tensor-parallel block (experts spread over the stage's devices): the
attention's exchanges, then no dispatch (the o_proj all-gather already put the normed input on every
device) and one combine: each device's partial sum of its experts' outputs (D values) gathered at the
stage's first device, which adds them; the block's hop broadcasts the sum. A shared expert (Qwen 2
MoE), split over the devices as a dense MLP, adds the dense MLP's `act` all-gather at its width F_s
before the combine (`MOE_SHARED_EXCHANGE`); each device adds its D / tp outputs of the shared down
into its partial sum, so the combine's payload does not grow. The numerics gather the experts'
outputs one by one instead, to add them in expert order (`cent_serve.sharding.moe_combine`), the
shared down's slices beside them: with numerics on, the switch's `wire_bytes` counts those, about k
times the partial sums; the time is the partial sums'."""

MOE_SHARED_EXCHANGE = TP_BLOCK_EXCHANGES[4]
"""A shared expert's silu(gate) x up slices all-gathered before its down: the dense MLP's `act`
exchange, at the shared expert's width (data: `shared_act` in the numerics)."""


def moe_collectives_s(hidden: int, tp: int, port: PortModel, fab: FabricConfig, tokens: int = 1,
                      heads: int | None = None, shared: int = 0) -> float:
    """`MOE_TP_BLOCK_EXCHANGES` for `tokens` token vectors: 4 Eb + 4 Eg + the combine, one of the
    four all-gathers the heads' outputs (`heads`, H hd values; None: D); with a shared expert of
    width `shared` (F_s; 0: none) its all-gather too, Sb + Sg as the dense MLP's Fb + Fg, when tp > 1
    splits it (a tp 1 stage, whose exchanges the `artifact` convention charges, holds it whole)."""
    attention = MOE_TP_BLOCK_EXCHANGES[:-1] + ((MOE_SHARED_EXCHANGE,) if shared and tp > 1 else ())
    return (_exchanges_s(attention, hidden, shared, tp, port, fab, tokens, heads)
            + moe_combine_s(hidden, tp, port, fab, tokens))


def moe_combine_s(hidden: int, tp: int, port: PortModel, fab: FabricConfig, tokens: int = 1) -> float:
    """A MoE block's combine on a tp stage: each device's partial sum (tokens x D) gathered at one."""
    return gather_s(tp * fab.activation_bytes * hidden * tokens, tp, port, fab)


def tensor_block_s(hidden: int, ffn: int, tp: int, port: PortModel, fab: FabricConfig,
                   heads: int | None = None) -> float:
    """Tensor/hybrid: per block 5 Eb + 5 Eg + Fb + Fg (broadcasts and gathers of D and F; one Eb
    and one Eg of the heads' H hd values when `heads` is not D)."""
    return (tensor_collectives_s(hidden, ffn, tp, port, fab, heads=heads)
            + pipeline_block_s(hidden, port, fab, receivers=tp))


# ----------------------------------------------------------------------------- any payload, in bytes


def point_to_point_s(nbytes: int, port: PortModel, fab: FabricConfig) -> float:
    """One device to another: t(ceil(nbytes / 192)) seconds."""
    return port.transfer_s(flits_for_bytes(nbytes, fab))


def broadcast_s(nbytes: int, port: PortModel, fab: FabricConfig, receivers: int) -> float:
    """One device to `receivers` others: CENT multicasts, so one transfer reaches every receiver
    (the halved lane bandwidth is already in `port`); without multicast, one transfer each."""
    return port.transfer_s(flits_for_bytes(nbytes, fab) * copies(fab, receivers))


def gather_s(nbytes: int, tp: int, port: PortModel, fab: FabricConfig) -> float:
    """`nbytes` split evenly over `tp` devices, collected at one of them: the other tp - 1
    slices of ceil(nbytes / tp / 192) flits each cross the receiver's port."""
    assert tp >= 1, tp
    return port.transfer_s(-(-nbytes // (tp * fab.flit_payload_bytes)) * (tp - 1))
