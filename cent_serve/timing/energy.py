"""Energy, power and cost (CENT_MODEL.md sections 8 and 9).

Energy is counted from the DRAM commands the device actually issues, not
from useful bytes:

- **MAC_ABK** (1.314 nJ each): an all-bank MAC runs on all 16 banks of a
  channel, so a GEMV costs (channels of the block) x (outputs per bank) x
  (column commands per output), counting banks that hold padding when the
  outputs do not fill B banks (tensor parallelism over many devices).
- **ACT16** (47.2 nJ): one row opened in all 16 banks, per output and input
  row of a GEMV, per key row of the score.
- Those two plus ~15% for the controller, DRAM commands and transfers, the
  paper's first-order estimate.
- **Elementwise steps** (RMSNorm, rotary, KV append, SiLU x up) stream
  vectors through the global buffers of every channel of the block, on
  every one of the tp devices: the block's channels draw their write power
  (553.15 mW each) for those cycles. This is why tensor parallelism costs
  energy that grows with tp.

Power = token energy / one pipeline step (N/pp blocks x block PIM time), as the artifact
reports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from cent_serve.config import DeviceConfig, ModelConfig
from cent_serve.timing.pim import (BlockGeometry, cdiv, kv_append_cycles, norm_cycles,
                                   rotary_cycles, silu_mul_cycles)

# CENT_MODEL.md section 9: measured A100-80GB throughput (prefill, decode, end-to-end tok/s)
# and how many A100s the paper's baseline uses per model.
GPU_BASELINES = {
    "llama2-7b": dict(gpus=1, prefill=12497.0, decoding=960.0, end2end=1085.0),
    "llama2-13b": dict(gpus=2, prefill=12913.0, decoding=953.0, end2end=1077.0),
    "llama2-70b": dict(gpus=4, prefill=3110.0, decoding=917.0, end2end=1006.0),
}
# CENT_MODEL.md section 9: TCO factor 1.76 (#GPU / 4) / (0.73 (#CENT / 32)).
TCO_GPU_PER_4 = 1.76
TCO_CENT_PER_32 = 0.73


@dataclass(frozen=True)
class CommandCounts:
    """All-bank MAC commands and 16-bank row activations of one token."""

    mac16: float
    act16: float

    def __add__(self, other: "CommandCounts") -> "CommandCounts":
        return CommandCounts(self.mac16 + other.mac16, self.act16 + other.act16)

    def scaled(self, k: float) -> "CommandCounts":
        return CommandCounts(self.mac16 * k, self.act16 * k)


def gemv_commands(din: int, dout: int, g: BlockGeometry, dev: DeviceConfig) -> CommandCounts:
    """Commands a GEMV issues over the block's channels (idle banks of a channel still MAC)."""
    channels = g.banks // dev.banks_per_channel
    c = cdiv(dout, g.banks)
    rows = cdiv(din, dev.row_elements)
    ops = sum(dev.full_row_column_ops if r < rows - 1
              else cdiv(din - dev.row_elements * (rows - 1), dev.burst_elements) for r in range(rows))
    return CommandCounts(channels * c * ops, channels * c * rows)


def block_gemv_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> CommandCounts:
    d, f = m.hidden_size, m.intermediate_size
    shapes = [(d, m.q_size), (d, m.kv_size), (d, m.kv_size), (m.q_size, d), (d, f), (d, f), (f, d)]
    total = CommandCounts(0.0, 0.0)
    for din, dout in shapes:
        total = total + gemv_commands(din, dout, g, dev)
    return total


def attention_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig, context: int) -> CommandCounts:
    """Score: one key per bank, every channel of the block steps through cdiv(L, B) key slots
    of rpv rows for each query head of a GQA group. Score x V: 8 rows of 16 dims per head,
    op column commands per 1024-token row."""
    channels = g.banks // dev.banks_per_channel
    rpv = cdiv(m.head_dim * m.num_kv_heads, dev.row_elements)
    slots = cdiv(context, g.banks)
    score = CommandCounts(channels * slots * rpv * dev.full_row_column_ops * m.num_rep,
                          channels * slots * rpv)
    rows_per_head = m.head_dim // dev.burst_elements
    full, last = divmod(context, dev.row_elements)
    ops = full * dev.full_row_column_ops + cdiv(last, dev.burst_elements)
    nrows = full + (1 if last else 0)
    sv = CommandCounts(m.num_heads * rows_per_head * ops, m.num_heads * rows_per_head * nrows)
    return score + sv


def elementwise_energy_j(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """Write power of the block's channels on each of its tp devices during elementwise steps."""
    g1 = BlockGeometry(cpb=g.cpb, tb=1, tp=g.tp, banks_per_channel=g.banks_per_channel)
    cycles = (norm_cycles(m, g1, dev) + rotary_cycles(m, g1, dev) + kv_append_cycles(m, g1, dev)
              + silu_mul_cycles(m, g1, dev))
    return cycles / dev.clock_hz * dev.energy.wr_mw * 1e-3 * g.cpb * g.tp


def commands_energy_j(c: CommandCounts, dev: DeviceConfig) -> float:
    e = dev.energy
    return (c.mac16 * e.mac16_nj + c.act16 * e.bank_activation_nj * dev.banks_per_channel) * 1e-9 \
        * (1 + e.overhead_fraction)


def token_energy_j(timer, context: int) -> float:
    """Energy of one token over the whole model (all blocks, embedding and LM head)."""
    m, dev = timer.model, timer.device
    g = timer.mapping.geometry
    cache = timer.__dict__.setdefault("_energy_static", {})
    if "block" not in cache:
        head = gemv_commands(m.vocab_size, m.hidden_size, g, dev) + gemv_commands(m.hidden_size, m.vocab_size, g, dev)
        cache["block"] = commands_energy_j(block_gemv_commands(m, g, dev), dev) + elementwise_energy_j(m, g, dev)
        cache["head"] = commands_energy_j(head, dev)
    attn = commands_energy_j(attention_commands(m, g, dev, context), dev)
    return m.num_layers * (cache["block"] + attn) + cache["head"]


def cost_figures(model_name: str, devices_used: int, num_devices: int, throughput_tok_s: float,
                 phase: str, energy_per_token_mj: float, dev: DeviceConfig) -> dict:
    """Throughput ratio and tokens per dollar against the paper's GPU baseline (section 9)."""
    out = dict(device_unit_cost_usd=dev.unit_cost_usd, system_device_cost_usd=dev.unit_cost_usd * num_devices,
               tokens_per_joule=1000.0 / energy_per_token_mj if energy_per_token_mj else None)
    base = GPU_BASELINES.get(model_name)
    if base is None:
        return out
    gpu = base[phase]
    tco_gpu = TCO_GPU_PER_4 * base["gpus"] / 4
    tco_cent = TCO_CENT_PER_32 * num_devices / 32
    out.update(gpu_throughput_tok_s=gpu, gpus=base["gpus"], throughput_ratio=throughput_tok_s / gpu,
               tokens_per_dollar_ratio=(throughput_tok_s / tco_cent) / (gpu / tco_gpu))
    return out
