"""Near-memory accelerator (PNM) and host time (docs/hardware_model.md sections 1 and 5)."""
from __future__ import annotations

from cent_serve.config import DeviceConfig, ModelConfig


def accelerator_cycles(m: ModelConfig, dev: DeviceConfig, context: int) -> float:
    """PNM cycles of one block for one token: norm reductions and rsqrt, softmax exp/sum
    over the context, per-head work and rotary tables. The PNM is shared by every block
    resident on the device, so callers multiply by the blocks that share it."""
    d, h = m.hidden_size, m.num_heads
    return (2 * (dev.acc_norm_per_8k * d / 8192 + dev.acc_norm_base)
            + dev.acc_softmax_per_512 * context * h / 512
            + dev.acc_head * h
            + dev.acc_rotary * d * (1 + m.num_kv_heads / h))


def accelerator_s(m: ModelConfig, dev: DeviceConfig, context: int) -> float:
    return accelerator_cycles(m, dev, context) / dev.clock_hz


def host_sample_s(dev: DeviceConfig) -> float:
    """Host CPU cost of sampling one token (0.15 ms, docs/hardware_model.md section 1)."""
    return dev.host_sample_s
