"""CXL switch timing (CENT_MODEL.md section 6).

Payloads travel in 256-byte PBR flits carrying 192 bytes; a transfer costs the
one-hop round trip (180 ns) plus its flits at the port's bandwidth. The
switch's lanes are shared equally by the devices in the system, and CENT
always multicasts, which halves the per-lane bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass

from cent_serve.config import FabricConfig

GIB = 2**30  # CENT_MODEL.md section 6: "GB here is 2^30 bytes"
BF16_BYTES = 2


def flits_for_bytes(nbytes: int, fab: FabricConfig) -> int:
    """PBR flits that carry `nbytes` of payload."""
    return -(-nbytes // fab.flit_payload_bytes)


def flits_for_values(n: int, fab: FabricConfig) -> int:
    """flits(n bf16 values) = ceil(2 n / 192)."""
    return flits_for_bytes(BF16_BYTES * n, fab)


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


def gather_flits(n_values: int, tp: int, fab: FabricConfig) -> int:
    """A gather of an n-vector split over tp devices: ceil(2 n / tp / 192) (tp - 1) flits."""
    return -(-BF16_BYTES * n_values // (tp * fab.flit_payload_bytes)) * (tp - 1)


def pipeline_block_s(hidden: int, port: PortModel, fab: FabricConfig) -> float:
    """Pipeline: one t(flits(D)) per block (charged even between blocks on one device)."""
    return port.transfer_s(flits_for_values(hidden, fab))


def tensor_block_s(hidden: int, ffn: int, tp: int, port: PortModel, fab: FabricConfig) -> float:
    """Tensor/hybrid: per block 5 Eb + 5 Eg + Fb + Fg (broadcasts and gathers of D and F)."""
    eb = port.transfer_s(flits_for_values(hidden, fab))
    eg = port.transfer_s(gather_flits(hidden, tp, fab))
    fb = port.transfer_s(flits_for_values(ffn, fab))
    fg = port.transfer_s(gather_flits(ffn, tp, fab))
    return 5 * eb + 5 * eg + fb + fg
