"""Energy, power and cost (docs/hardware_model.md sections 8 and 9).

Energy is counted, not fitted. Every operation of a block reports the
commands it issues (`OpCounts`) and each command costs its section-8 energy:

- `mac16`: an all-bank MAC (16 banks x 16 bf16 MACs), 1.314 nJ.
- `act16`: one row opened and closed in all 16 banks of a channel, 16 x 2.95 nJ.
- `gb_bursts`: 32 B written into a channel's global buffer: the GEMV input
  vector (on every channel of the block) and the score rows of score x V.
  The buffer is SRAM, so only the DRAM interface is charged: 32 x 8 x 5.5 pJ.
- `rd_bursts`: accumulator reads (one per output and input row of a GEMV on
  every channel; per key row and head for q.K^T): RD burst 0.548 nJ + interface.
- `dma_lines`: single-bank 32 B lines through the DMA engine (RMSNorm,
  rotary, KV append, SiLU x up, softmax's six passes), one per DMA cycle of
  the PIM formulas: the mean of an RD and a WR burst + interface.
- every command above: a host instruction (67 pJ) and a DRAM command (95 pJ).

All-bank commands run on every channel of a block, so banks that hold only
padding (Dout < B under wide tensor parallelism) still spend energy, and the
GEMV input reaches every channel: that is what makes wide tp cost energy.

Not charged: DRAM background power (the artifact's breakdown puts standby
near 1%, so its per-command energies already carry it), the accelerator's
RISC-V cores and SRAM static power (about 0.05 W per device), and CXL link
energy (`fabric_energy_j`, for callers that want it).

Power = token energy / one pipeline step (N/pp blocks x block PIM time), as
the artifact reports it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from cent_serve.config import DeviceConfig, EnergyConfig, ModelConfig
from cent_serve.timing.pim import BlockGeometry, cdiv, context_rows, elementwise_split

# docs/hardware_model.md section 9: measured A100-80GB throughput (prefill, decode, end-to-end tok/s)
# and how many A100s the paper's baseline uses per model.
GPU_BASELINES = {
    "llama2-7b": dict(gpus=1, prefill=12497.0, decoding=960.0, end2end=1085.0),
    "llama2-13b": dict(gpus=2, prefill=12913.0, decoding=953.0, end2end=1077.0),
    "llama2-70b": dict(gpus=4, prefill=3110.0, decoding=917.0, end2end=1006.0),
}
# docs/hardware_model.md section 9: TCO factor 1.76 (#GPU / 4) / (0.73 (#CENT / 32)).
TCO_GPU_PER_4 = 1.76
TCO_CENT_PER_32 = 0.73
OPS = ("norm", "qkvo", "rotary", "kv", "score", "softmax", "sv", "ffn", "act")


@dataclass(frozen=True)
class OpCounts:
    """Commands and transfers one operation issues for one token (all channels, all tp devices)."""

    mac16: float = 0.0
    act16: float = 0.0
    gb_bursts: float = 0.0
    rd_bursts: float = 0.0
    dma_lines: float = 0.0

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def commands(self) -> float:
        return self.mac16 + self.act16 + self.gb_bursts + self.rd_bursts + self.dma_lines

    def energy_parts_j(self, dev: DeviceConfig) -> dict[str, float]:
        """Joules by component: MAC, activation, transfers (interface + bursts), controller."""
        e = dev.energy
        io_nj = _io_nj(e, dev)
        transfer_nj = (self.gb_bursts * io_nj + self.rd_bursts * (e.rd_burst_nj + io_nj)
                       + self.dma_lines * ((e.rd_burst_nj + e.wr_burst_nj) / 2 + io_nj))
        return dict(mac=self.mac16 * e.mac16_nj * 1e-9,
                    act=self.act16 * e.bank_activation_nj * dev.banks_per_channel * 1e-9,
                    transfer=transfer_nj * 1e-9,
                    controller=self.commands * (e.controller_instruction_pj + e.dram_command_pj) * 1e-12)

    def energy_j(self, dev: DeviceConfig) -> float:
        return sum(self.energy_parts_j(dev).values())


def _io_nj(e: EnergyConfig, dev: DeviceConfig) -> float:
    """One 32 B burst across the DRAM interface (5.5 pJ/bit)."""
    return dev.burst_elements * dev.bytes_per_element * 8 * e.external_pj_per_bit * 1e-3


# ----------------------------------------------------------------------------- per operation


def gemv_counts(din: int, dout: int, g: BlockGeometry, dev: DeviceConfig) -> OpCounts:
    """A GEMV over B banks: every channel of the block streams the whole input through its
    global buffer and steps c outputs per bank through every input row (padding included)."""
    channels = g.banks // dev.banks_per_channel
    c = cdiv(dout, g.banks)
    rows = cdiv(din, dev.row_elements)
    ops = cdiv(din, dev.burst_elements)  # column commands over all input rows
    return OpCounts(mac16=channels * c * ops, act16=channels * c * rows, gb_bursts=channels * ops,
                    rd_bursts=channels * c * rows)


def _norm_lines(d: int, g: BlockGeometry, dev: DeviceConfig) -> int:
    """DMA lines of one RMSNorm: the DMA cycles of the PIM formula without the tb lockstep."""
    nb, nbb = elementwise_split(d, g.banks_per_device // 2)
    ew, ewb = elementwise_split(d, g.banks_per_device // 4)
    return 2 * cdiv(nb, dev.burst_elements) * nbb + 3 * cdiv(ew, dev.burst_elements) * ewb


def static_op_counts(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> dict[str, OpCounts]:
    """The operations whose work does not depend on the context length."""
    d, f, bl = m.hidden_size, m.intermediate_size, dev.burst_elements
    ew, ewb = elementwise_split(d, g.banks_per_device // 4)
    fl, flb = elementwise_split(f, g.banks_per_device // 4)
    qkvo = (gemv_counts(d, m.q_size, g, dev) + gemv_counts(d, m.kv_size, g, dev)
            + gemv_counts(d, m.kv_size, g, dev) + gemv_counts(m.q_size, d, g, dev))
    ffn = gemv_counts(d, f, g, dev) + gemv_counts(d, f, g, dev) + gemv_counts(f, d, g, dev)
    rotary = OpCounts(mac16=cdiv(m.q_size, bl) + cdiv(m.kv_size, bl),  # in-bank elementwise products
                      dma_lines=2 * (cdiv(2 * ew, bl) + cdiv(2 * (ew // m.num_rep), bl)) * ewb)
    return dict(norm=OpCounts(dma_lines=2 * _norm_lines(d, g, dev)), qkvo=qkvo, rotary=rotary,
                kv=OpCounts(dma_lines=2 * cdiv(m.kv_size, bl)),  # this token's K and V
                ffn=ffn, act=OpCounts(dma_lines=dev.silu_cycles_per_burst * cdiv(fl, bl) * flb))


def attention_counts(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig,
                     context: int) -> dict[str, OpCounts]:
    """score (q.K^T), softmax and score x V for one token at `context`."""
    channels = g.banks // dev.banks_per_channel
    bl, row = dev.burst_elements, dev.row_elements
    rpv = cdiv(m.kv_size, row)
    slots = cdiv(context, g.banks)  # one key per bank: every channel steps through the slots
    heads_per_row = max(1, row // m.head_dim)
    score = OpCounts(mac16=channels * slots * rpv * dev.row_column_ops * m.num_rep,
                     act16=channels * slots * rpv,
                     rd_bursts=channels * slots * rpv * heads_per_row * m.num_rep)
    sizes = context_rows(context, row)
    ops = sum(cdiv(s, bl) for s in sizes)
    softmax = OpCounts(dma_lines=dev.softmax_dma_passes * m.num_heads * ops)
    rows_per_head = cdiv(m.head_dim, bl)  # V^T: one bank row per 16 dims of a head
    sv = OpCounts(mac16=m.num_heads * rows_per_head * ops, act16=m.num_heads * rows_per_head * len(sizes),
                  gb_bursts=m.num_heads * ops)
    return dict(score=score, softmax=softmax, sv=sv)


def block_op_counts(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig,
                    context: int) -> dict[str, OpCounts]:
    """Every operation of one block for one token, keyed like the PIM breakdown."""
    counts = {**static_op_counts(m, g, dev), **attention_counts(m, g, dev, context)}
    return {op: counts[op] for op in OPS}


def head_counts(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> OpCounts:
    """Embedding and LM head (with the final RMSNorm's scale pass), once per token."""
    ew, ewb = elementwise_split(m.hidden_size, g.banks_per_device // 4)
    return (gemv_counts(m.vocab_size, m.hidden_size, g, dev) + gemv_counts(m.hidden_size, m.vocab_size, g, dev)
            + OpCounts(dma_lines=2 * cdiv(ew, dev.burst_elements) * ewb))


# ----------------------------------------------------------------------------- per block and token


def _static(timer) -> dict:
    """Per-timer cache of the context-independent energies."""
    cache = timer.__dict__.get("_energy_static")
    if cache is None:
        m, dev, g = timer.model, timer.device, timer.mapping.geometry
        ops = {op: c.energy_j(dev) for op, c in static_op_counts(m, g, dev).items()}
        cache = timer.__dict__["_energy_static"] = dict(
            ops=ops, total=sum(ops.values()), head=head_counts(m, g, dev).energy_j(dev), by_context={})
    return cache


def block_energy_by_op_j(timer, context: int) -> dict[str, float]:
    """Joules of each operation of one block for one token at `context` (all tp devices)."""
    m, dev, g = timer.model, timer.device, timer.mapping.geometry
    attn = {op: c.energy_j(dev) for op, c in attention_counts(m, g, dev, context).items()}
    ops = {**_static(timer)["ops"], **attn}
    return {op: ops[op] for op in OPS}


def block_energy_j(timer, context: int) -> float:
    """One block's energy for one token at `context`, over all tp devices of its stage."""
    cache = _static(timer)
    hit = cache["by_context"].get(context)
    if hit is None:
        m, dev, g = timer.model, timer.device, timer.mapping.geometry
        hit = cache["total"] + sum(c.energy_j(dev) for c in attention_counts(m, g, dev, context).values())
        cache["by_context"][context] = hit
    return hit


def head_energy_j(timer) -> float:
    """Embedding and LM head of one token."""
    return _static(timer)["head"]


def token_energy_j(timer, context: int) -> float:
    """Energy of one token over the whole model (all blocks, embedding and LM head)."""
    return timer.model.num_layers * block_energy_j(timer, context) + head_energy_j(timer)


def token_energy_parts_j(timer, context: int) -> dict[str, float]:
    """One token's energy split into MAC, activation, transfer and controller joules."""
    m, dev, g = timer.model, timer.device, timer.mapping.geometry
    total = OpCounts()
    for c in block_op_counts(m, g, dev, context).values():
        total = total + c
    parts = total.energy_parts_j(dev)
    head = head_counts(m, g, dev).energy_parts_j(dev)
    return {k: m.num_layers * v + head[k] for k, v in parts.items()}


def fabric_energy_j(nbytes: int, dev: DeviceConfig) -> float:
    """CXL link energy of moving `nbytes` over PCIe lanes (4.4 pJ/bit); not in token energy."""
    return nbytes * 8 * dev.energy.pcie_pj_per_bit * 1e-12


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
