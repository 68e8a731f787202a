"""PIM cycles of one CENT device's operations (docs/hardware_model.md section 4).

Every function returns cycles of the PIM command clock (0.5 ns at 2 GHz,
`DeviceConfig.clock_hz`). Inputs are model dimensions, the context length
`L`, the banks sharing a matrix `B`, the channels per block `cpb` and the
blocks sharing a device `tb` (their DMA-bound steps serialize, hence the
`tb` factors). Constants come from `DeviceConfig`; the formulas restate the
CENT artifact's AiM cycle model in closed form.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from cent_serve.config import DeviceConfig, ModelConfig
from cent_serve.timing.memo import ContextMemo


BANK_GROUPS = 4
"""Bank groups of a channel; softmax spreads a block's heads over them."""


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


@dataclass(frozen=True)
class BlockGeometry:
    """Where one block's matrices live: banks and channels (docs/hardware_model.md section 3)."""

    cpb: int
    """Channels per block on one device."""
    tb: int
    """Blocks sharing a device (pure pipeline), else 1."""
    tp: int
    """Devices a block spans."""
    banks_per_channel: int = 16

    @property
    def banks_per_device(self) -> int:
        """TB: banks of one block on one device."""
        return self.banks_per_channel * self.cpb

    @property
    def banks(self) -> int:
        """B: banks that share a matrix (all tp devices)."""
        return self.banks_per_device * self.tp


def gemv_cycles(din: int, dout: int, banks: int, dev: DeviceConfig, af: bool = False) -> float:
    """A Dout x Din GEMV over `banks` banks.

    c outputs per bank; the input is streamed one DRAM row (1024 elements) at
    a time: 2 cycles per column command (MAC_ABK every 2 cycles: `column_cycles`),
    a row switch plus register traffic per output and row (103), two mode switches
    per group of outputs that fit the accumulator registers (54.5). The
    activation ('AF') variant of the gate projection halves the group size
    and adds the lookup per output (72.4).
    """
    c = cdiv(dout, banks)
    rows = cdiv(din, dev.row_elements)
    group = dev.gemv_af_group_size if af else dev.accumulator_registers
    ng = cdiv(c, group)
    total = 0.0
    for r in range(rows):
        op = (dev.row_column_ops if r < rows - 1
              else cdiv(din - dev.row_elements * (rows - 1), dev.burst_elements))
        stream = dev.column_cycles * op
        total += stream + dev.gemv_group_cycles * ng + c * (dev.gemv_row_cycles + stream)
    if af:
        total += dev.gemv_af_cycles * c
    return total


def elementwise_split(n: int, lanes: int) -> tuple[int, int]:
    """(elements per lane, lanes used) when n elements spread over `lanes` units."""
    per = cdiv(n, lanes)
    return per, cdiv(n, per)


def norms_per_block(m: ModelConfig) -> int:
    """A block's RMSNorms: attention's and the MLP's inputs, and with `sandwich_norms` (Gemma 2) the
    attention's and the MLP's outputs too."""
    return 4 if m.sandwich_norms else 2


def norm_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """The block's RMSNorms (`norms_per_block`), each a square-and-reduce then a scale over TB/2 and
    TB/4 lanes: Gemma 2's extra two cost what the two of every block cost."""
    nb, nbb = elementwise_split(m.hidden_size, g.banks_per_device // 2)
    ew, ewb = elementwise_split(m.hidden_size, g.banks_per_device // 4)
    bl = dev.burst_elements
    one = (2 * cdiv(nb, bl) * nbb * g.tb + 3 * cdiv(ew, bl) * ewb * g.tb) * dev.dma_line_cycles + dev.norm_fixed_cycles
    return norms_per_block(m) * one


def rotary_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """Rotary embedding of q and k (k smaller by nrep under GQA): their values through the DMA, then
    per vector a fixed cost and its all-bank elementwise products (`column_cycles` a burst). q is H hd
    values (the artifact's D, the same where H hd = D; Qwen3-30B-A3B's 4096 is twice its D)."""
    ew, ewb = elementwise_split(m.q_size, g.banks_per_device // 4)
    bl, d, rep, col = dev.burst_elements, m.q_size, m.num_rep, dev.column_cycles
    return (2 * (cdiv(2 * ew, bl) + cdiv(2 * (ew // rep), bl)) * ewb * g.tb * dev.dma_line_cycles
            + (dev.rotary_fixed_cycles + col * d / bl) + (dev.rotary_fixed_cycles + col * d / (bl * rep)))


def kv_append_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """Write this token's K and V into the cache banks: the K vector's bursts through the DMA, one
    line each (a whole row of them for 1024 values; bursts of `kv_burst_elements`, a burst's bytes
    whatever the KV element), and a fixed cost per KV head and channel group."""
    return (cdiv(m.kv_size, dev.kv_burst_elements) * dev.dma_line_cycles * g.tb
            + dev.kv_head_cycles * cdiv(m.num_kv_heads, g.cpb))


def attended(m: ModelConfig, context: int) -> int:
    """The keys a query attends to at `context`: all of them, or the last `sliding_window` (a model
    windowing every block; one windowing some is timed as `timed_windows` says)."""
    return min(context, m.sliding_window) if m.sliding_window else context


def timed_windows(m: ModelConfig) -> tuple[ModelConfig, tuple[int, ...]]:
    """(the model a block's costs are computed for, each block's window on top of them). Every cost
    of a block depends on its context only through the keys it attends to (`attended`), so a model
    windowing some blocks only (`model.layer_types`) is timed as its full-attention twin, a windowed
    block's costs read at min(L, window); a model windowing every block or none as it is (windows 0:
    its costs as they are; a `layer_types` naming one kind for every block, its window or none on all)."""
    windows = m.block_windows
    if len(set(windows)) == 1:
        return (m if not m.layer_types else replace(m, sliding_window=windows[0], layer_types=())), (0,) * m.num_layers
    return replace(m, sliding_window=0, layer_types=()), windows


def window_keys(context: int, window: int) -> int:
    """The context a block with `window` (0: none, as `timed_windows` gives them) reads its costs at."""
    return min(context, window) if window else context


def score_slot_cycles(m: ModelConfig, dev: DeviceConfig, first: bool) -> float:
    """q.K^T for one bank-slot of keys and one query head of a GQA group: each row of a key
    (head_dim x KV heads values) with the matching query values into the global buffer (2 cycles
    a burst: `column_cycles`), then per KV head its MAC columns (2 cycles a burst) and its bias,
    result read and mode switches (1024-element rows of 128-wide heads: 904 cycles a row, 816 for
    further heads). The query's values are activations (`burst_elements` a burst), the key's MAC columns
    KV (`kv_burst_elements` a burst: half the columns for 8-bit keys beside bf16 weights)."""
    per_head = dev.score_head_cycles if first else dev.score_rep_head_cycles
    bl, col = dev.burst_elements, dev.column_cycles
    return col * cdiv(m.kv_size, bl) + m.num_kv_heads * (col * cdiv(m.head_dim, dev.kv_burst_elements) + per_head)


def score_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig, context: int) -> float:
    """q.K^T: one key per bank, so a step function of the attended keys every B tokens."""
    return (cdiv(attended(m, context), g.banks)
            * (score_slot_cycles(m, dev, True) + score_slot_cycles(m, dev, False) * (m.num_rep - 1)))


def context_rows(context: int, row: int) -> list[int]:
    """Tokens in each 1024-token row of a score vector."""
    full, last = divmod(context, row)
    return [row] * full + ([last] if last else [])


def softmax_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig, context: int) -> float:
    """Score vectors cross the DMA six times (to the accelerator and back); per head group, two
    all-bank elementwise passes over the row (`column_cycles` a burst). Gemma 2's soft-capping is the
    accelerator's (`accelerator_parts`): the scores cross the DMA as they do without it."""
    bl = dev.burst_elements
    nhpb = cdiv(m.num_heads, BANK_GROUPS * g.cpb)
    return sum(dev.softmax_dma_passes * m.num_heads * cdiv(size, bl) * g.tb * dev.dma_line_cycles
               + 2 * nhpb * (dev.softmax_fixed_cycles + dev.column_cycles * cdiv(size, bl))
               for size in context_rows(attended(m, context), dev.row_elements))


def v_rows(m: ModelConfig, dev: DeviceConfig) -> int:
    """A head's V^T rows in one bank: its head_dim dimensions spread over the channel's banks."""
    return cdiv(m.head_dim, dev.banks_per_channel)


def score_v_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig, context: int) -> float:
    """score x V inside one device: per KV head group, per query head of the group, per score
    row: the scores into the buffer, then each of the head's V^T rows in a bank MACed. A score row is
    what the global buffer holds (`row_elements` activations); the V^T rows are opened once per score
    row whatever V's element, and stream its tokens' V in `kv_burst_elements` bursts (8-bit V beside
    bf16 scores: half the MAC columns, the same row switches)."""
    per_row = 0.0
    for size in context_rows(attended(m, context), dev.row_elements):
        op = dev.row_column_ops if size == dev.row_elements else cdiv(size, dev.burst_elements)
        stream = dev.column_cycles * op
        v_stream = dev.column_cycles * cdiv(size, dev.kv_burst_elements)  # stream's at equal bursts (whole-burst rows)
        per_row += stream + v_rows(m, dev) * (dev.sv_row_cycles + v_stream)
    return cdiv(m.num_kv_heads, g.cpb) * m.num_rep * per_row


def silu_mul_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """SiLU(gate) x up, elementwise over TB/4 lanes (a mixture of experts': in `expert_cycles`)."""
    return 0.0 if m.is_moe else _silu_mul(m.intermediate_size, g, dev)


def _silu_mul(f: int, g: BlockGeometry, dev: DeviceConfig) -> float:
    fl, flb = elementwise_split(f, g.banks_per_device // 4)
    return (dev.silu_cycles_per_burst * cdiv(fl, dev.burst_elements) * flb * g.tb * dev.dma_line_cycles
            + dev.silu_fixed_cycles)


def qkvo_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    d, b = m.hidden_size, g.banks
    return (gemv_cycles(d, m.q_size, b, dev) + 2 * gemv_cycles(d, m.kv_size, b, dev)
            + gemv_cycles(m.q_size, d, b, dev))


def ffn_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """The dense MLP's gate (with its activation lookup), up and down GEMVs; a mixture of experts
    has none (`router_cycles`, `expert_cycles`)."""
    return 0.0 if m.is_moe else _swiglu_gemvs(m.hidden_size, m.intermediate_size, g.banks, dev)


def _swiglu_gemvs(d: int, f: int, banks: int, dev: DeviceConfig) -> float:
    """A SwiGLU MLP's gate (with the activation lookup), up and down GEMVs of width f over `banks`."""
    return gemv_cycles(d, f, banks, dev, af=True) + gemv_cycles(d, f, banks, dev) + gemv_cycles(f, d, banks, dev)


def router_outputs(m: ModelConfig) -> int:
    """The router GEMV's outputs: the E router logits, and a shared expert's gate logit (Qwen 2 MoE),
    which reads the same normed input: one D -> E + 1 GEMV."""
    return m.num_experts + (1 if m.shared_expert_intermediate_size else 0)


def router_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """A mixture of experts' router (with a shared expert's gate: `router_outputs`), a D -> E GEMV on one
    device's banks of the block (every device of a tensor-parallel stage runs it on its own copy: each
    needs the routing). Its softmax and top-k over E values, and the gate's sigmoid, are not charged
    (E <= 128 values against the GEMVs' D x E)."""
    return gemv_cycles(m.hidden_size, router_outputs(m), g.banks_per_device, dev) if m.is_moe else 0.0


def shared_expert_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """A shared expert (Qwen 2 MoE) for one token: gate (with the activation lookup), up and down GEMVs
    of width F_s split by their outputs over the stage's B banks as a dense MLP's (`ffn_cycles`: each
    of the tp devices runs its 1/tp slice on its own banks; with tp = 1 one device's banks of the block),
    and SiLU x up over a device's slice, cdiv(F_s, tp) values (`cent_serve.sharding`; the all-gather of
    those slices is the fabric's, `fabric.moe_collectives_s`). Scaling its output by the gate's sigmoid
    and adding it (D values) is not charged, as an expert's weighting is not."""
    fs = m.shared_expert_intermediate_size
    if not fs:
        return 0.0
    return _swiglu_gemvs(m.hidden_size, fs, g.banks, dev) + _silu_mul(cdiv(fs, g.tp), g, dev)


def expert_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """One token through one expert: gate (with the activation lookup), up and down GEMVs of width
    F_e and the SiLU x up product, on the banks that hold the expert: a whole expert sits on one
    device, spread over the block's banks there (`g.banks_per_device`: the block's channel group in
    pure pipeline, the whole device in a tensor-parallel stage). Weighting and adding the expert's
    output (D values) is not charged."""
    if not m.is_moe:
        return 0.0
    return _swiglu_gemvs(m.hidden_size, m.expert_size, g.banks_per_device, dev) + _silu_mul(m.expert_size, g, dev)


def lm_head_cycles(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> float:
    """The final RMSNorm's scale pass (its bursts through the DMA, as the block's norms') and the LM
    head, a D -> vocab GEMV, once per token."""
    ew, ewb = elementwise_split(m.hidden_size, g.banks_per_device // 4)
    return (gemv_cycles(m.hidden_size, m.vocab_size, g.banks, dev)
            + 2 * cdiv(ew, dev.burst_elements) * ewb * g.tb * dev.dma_line_cycles + dev.norm_fixed_cycles)


def embed_lookup_cycles(m: ModelConfig, dev: DeviceConfig) -> float:
    """The embedding of one token: its row of the table (D values) read by the DMA engine, a line
    a burst; whatever the vocabulary."""
    return cdiv(m.hidden_size, dev.burst_elements) * dev.dma_line_cycles


@dataclass(frozen=True)
class BlockBreakdown:
    """PIM cycles of one block's decode step for one token, per operation."""

    norm: float
    qkvo: float
    rotary: float
    kv: float
    score: float
    softmax: float
    sv: float
    ffn: float
    act: float
    router: float = 0.0
    """A mixture of experts' router GEMV."""
    experts: float = 0.0
    """A mixture of experts' k experts for the token, when they run on the block's banks one after the
    other (pure pipeline); on a tensor-parallel stage the experts' time depends on the round's routing
    and is charged per round (`SystemTimer.moe_lane_s`), so it is 0 here."""
    shared: float = 0.0
    """A shared expert every token runs (Qwen 2 MoE: `shared_expert_cycles`), whatever the routing."""

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, float]:
        """Every operation's cycles: a dense block's MLP (ffn, act), or a mixture of experts' router
        and experts."""
        skip = (("ffn", "act") if self.router else ("router", "experts")) + (() if self.shared else ("shared",))
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


class BlockTimer:
    """PIM cycles of one block on one geometry; static ops precomputed, context ops memoised.

    Built once per (model, geometry) by the mapping and the device workers;
    `cycles(L)` is then a lookup on the hot path: the total is kept by context, a number a context
    (`memo.ContextMemo`); `breakdown(L)`, which reports read, is evaluated each time.
    """

    def __init__(self, m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> None:
        self.model, self.geometry, self.device = m, g, dev
        self._static = dict(norm=norm_cycles(m, g, dev), qkvo=qkvo_cycles(m, g, dev),
                            rotary=rotary_cycles(m, g, dev), kv=kv_append_cycles(m, g, dev),
                            ffn=ffn_cycles(m, g, dev), act=silu_mul_cycles(m, g, dev),
                            router=router_cycles(m, g, dev),
                            experts=m.num_experts_per_tok * expert_cycles(m, g, dev) if g.tp == 1 else 0.0,
                            shared=shared_expert_cycles(m, g, dev))
        self._total = ContextMemo(1, m.max_seq_len + 1)  # `cycles` by context

    def breakdown(self, context: int) -> BlockBreakdown:
        """All PIM operations of one block for one token whose context is `context` tokens."""
        assert context >= 1, context
        m, g, dev = self.model, self.geometry, self.device
        return BlockBreakdown(score=score_cycles(m, g, dev, context), softmax=softmax_cycles(m, g, dev, context),
                              sv=score_v_cycles(m, g, dev, context), **self._static)

    def cycles(self, context: int) -> float:
        """`breakdown(context).total`, kept by context."""
        hit = self._total.get(context)
        if hit is None:
            hit = self._total.put(context, self.breakdown(context).total)
        return float(hit[0])


def block_pim_breakdown(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig, context: int) -> BlockBreakdown:
    """PIM cycles of each operation of one block's decode step at `context` (no caching;
    device code should hold a `BlockTimer`, which keeps its total per context: `BlockTimer.cycles`)."""
    return BlockTimer(m, g, dev).breakdown(context)
