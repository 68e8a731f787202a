"""DRAM commands one device issues for one step of a block (docs/hardware_model.md section 8).

Energy is counted from these. A CENT device runs a block as a stream of AiM instructions (ISRs);
each reaches every channel of its channel set, and the channel's controller turns it into GDDR6
commands, opening and closing rows and switching the register mode as the instruction needs.
The counts here are those of the device trace the CENT artifact feeds its DRAM simulator
(Ramulator with the AiM controller): open-page rows, no refresh, requests served in order per
channel, so the commands are a function of the trace alone. They were derived by replaying the
artifact's traces command by command and agree with its simulator's counters exactly on the
Llama 2 mappings it publishes; the derivation is written up in docs/hardware_model.md section 8.

Commands (`CMDS`), all counted over the channels of one trace:

- `act`, `pre`: one bank's row opened / closed (single-bank data moves through the DMA);
- `act16`, `prea`: a row opened in every bank of a channel / all banks closed;
- `tmod`: the channel's switch between normal and register (accumulator) mode;
- `mac16`: an all-bank MAC step (every bank multiplies a burst by the global buffer);
- `ewmul16`: an all-bank elementwise product; `af16`: the all-bank activation-function lookup;
- `wra16`: an all-bank write with auto-precharge (the KV cache's V^T append);
- `wrgb`: a burst into the channel's global buffer; `wrmac16`, `rdmac16`, `rdaf16`: an
  accumulator register written (bias) or read (MAC result, activation result);
- `rdcp`, `wrcp`: a bank <-> global-buffer copy burst; `rd`, `wr`: a single-bank burst moved by
  the DMA engine (norms, rotary, KV's K row, softmax, SiLU).

`lines` (not a command) counts the trace's instruction lines, which the instruction buffer
reads. Each function returns a vector indexed like `CMDS + ("lines",)`.

The device's fields drive the counts: channels, banks per channel, row and burst sizes, the
accumulator registers (outputs per mode-switch group) and the activation group size.
"""
from __future__ import annotations

import numpy as np

from cent_serve.config import DeviceConfig, ModelConfig
from cent_serve.timing.pim import (BANK_GROUPS, BlockGeometry, attended, cdiv, context_rows, elementwise_split,
                                   norms_per_block, router_outputs, v_rows)

CMDS = ("act", "act16", "pre", "prea", "tmod", "mac16", "ewmul16", "af16", "wra16", "wrgb", "wrmac16",
        "rdmac16", "rdaf16", "rdcp", "wrcp", "wr", "rd")
FIELDS = (*CMDS, "lines")
IDX = {name: i for i, name in enumerate(FIELDS)}
BLOCK_OPS = ("norm", "qkvo", "rotary", "kv", "score", "softmax", "sv", "ffn", "act", "router", "experts", "shared")
"""The operations of a block, keyed like the PIM time breakdown (`BlockBreakdown`)."""


def vec(**counts: float) -> np.ndarray:
    v = np.zeros(len(FIELDS))
    for name, n in counts.items():
        v[IDX[name]] = n
    return v


def _bursts(n: int, dev: DeviceConfig) -> int:
    return cdiv(n, dev.burst_elements)


def _kv_bursts(n: int, dev: DeviceConfig) -> int:
    """Bursts of n KV elements (`kv_burst_elements` a burst: a burst's bytes whatever the element)."""
    return cdiv(n, dev.kv_burst_elements)


def gemv_set_channels(dout: int, banks: int, dev: DeviceConfig, span: int | None = None) -> int:
    """The channels a GEMV's instructions reach: enough whole groups of the channels its
    outputs need to fill the `span` channels of the trace (default: the device's; all of them
    when the outputs need more). In a pure-pipeline trace the groups are the tb blocks' copies."""
    span = dev.num_channels if span is None else span
    c = cdiv(dout, banks)
    need = cdiv(cdiv(dout, c), dev.banks_per_channel)
    return span if need > span else span // need * need


def gemv(din: int, dout: int, banks: int, dev: DeviceConfig, af: bool = False,
         from_normal_mode: bool = False, banks_closed: bool = False, span: int | None = None) -> np.ndarray:
    """A Dout x Din GEMV over `banks` banks, input reused from the global buffer.

    Per input row r (R rows of `row_elements`): the row's input bursts into every set channel's
    buffer; then for each of the c outputs a bank holds, its bias register written, the weight
    row opened in all banks (closing the previous one), the row's bursts MACed and the register
    read. Outputs go in groups of `accumulator_registers`, two mode switches a group and row.
    The activation variant (gate projection) groups `gemv_af_group_size` outputs and, in the
    last row, runs the all-bank lookup and reads its result per output; its lookup row is
    opened once a group. `from_normal_mode`: the previous instruction left the channel in normal
    mode (one more switch); `banks_closed`: no row is open yet (one precharge fewer); `span`:
    as in `gemv_set_channels`.
    """
    c = cdiv(dout, banks)
    rows = cdiv(din, dev.row_elements)
    ops = _bursts(din, dev)  # column steps over all input rows
    ch = gemv_set_channels(dout, banks, dev, span)
    per_out = c * rows * ch
    v = vec(wrgb=ops * ch, wrmac16=per_out, rdmac16=per_out, mac16=c * ops * ch, act16=per_out, prea=per_out,
            lines=rows + 3 * c * rows)
    if af:
        ng = cdiv(c, dev.gemv_af_group_size)
        v += vec(af16=c * ch, rdaf16=c * ch, act16=ng * ch, prea=ng * ch,
                 tmod=(2 * ng * (rows - 1) + 2 * c) * ch, lines=2 * c)
    else:
        v += vec(tmod=2 * cdiv(c, dev.accumulator_registers) * rows * ch)
    if from_normal_mode:
        v += vec(tmod=ch)
    if banks_closed:
        v -= vec(prea=ch)
    return v


def _gemvs(m: ModelConfig, banks: int, dev: DeviceConfig, fc_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """(q, k, v, o) and (gate, up, down) of a block. In a block's full trace the q, gate and
    down projections follow elementwise work (normal mode); in the weights-only trace of a
    tensor-parallel partner only the first one does, and its banks start closed."""
    d, f = m.hidden_size, m.intermediate_size
    qkvo = (gemv(d, m.q_size, banks, dev, from_normal_mode=True, banks_closed=fc_only)
            + 2 * gemv(d, m.kv_size, banks, dev) + gemv(m.q_size, d, banks, dev))
    if m.is_moe:  # no dense MLP: `moe_commands`
        return qkvo, vec()
    ffn = (gemv(d, f, banks, dev, af=True, from_normal_mode=not fc_only) + gemv(d, f, banks, dev)
           + gemv(f, d, banks, dev, from_normal_mode=not fc_only))
    return qkvo, ffn


def moe_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig,
                 tb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the router, the token's k experts, a shared expert) of a mixture-of-experts block: the router's
    D -> E GEMV (E + 1 with a shared expert's gate) and, per expert, its gate (with the lookup), up and
    down GEMVs of width F_e and SiLU x up, on one device's banks of the block (`pim.router_cycles`,
    `pim.expert_cycles`); the shared expert the same at width F_s, but split over the stage's B banks as
    a dense MLP's GEMVs, its SiLU x up over a device's cdiv(F_s, tp) values (`pim.shared_expert_cycles`):
    one device's slice. A token runs k experts wherever they sit, so their commands (and energy) do not
    depend on the routing."""
    if not m.is_moe:
        return vec(), vec(), vec()
    d, b = m.hidden_size, g.banks_per_device
    router = gemv(d, router_outputs(m), b, dev, from_normal_mode=True)

    def swiglu(f: int, banks: int, act: int) -> np.ndarray:
        return (gemv(d, f, banks, dev, af=True, from_normal_mode=True) + gemv(d, f, banks, dev)
                + gemv(f, d, banks, dev, from_normal_mode=True) + _silu_commands(act, g, dev, tb))

    fs = m.shared_expert_intermediate_size
    return (router, m.num_experts_per_tok * swiglu(m.expert_size, b, m.expert_size),
            swiglu(fs, g.banks, cdiv(fs, g.tp)) if fs else vec())


def _silu_commands(f: int, g: BlockGeometry, dev: DeviceConfig, tb: int) -> np.ndarray:
    """SiLU x up over f values: both inputs stored, the elementwise product with copies, the result
    read back."""
    b, cb = dev.banks_per_channel, tb * g.cpb
    fl, flb = elementwise_split(f, g.banks_per_device // 4)
    return vec(wr=3 * _bursts(fl, dev) * flb * tb, rd=_bursts(fl, dev) * flb * tb,
               ewmul16=2 * _bursts(fl, dev) * cb, rdcp=b // 4 * _bursts(fl, dev) * cb,
               wrcp=b // 4 * _bursts(fl, dev) * cb, pre=b // 2 * cb, act=b // 2 * cb, prea=cb, act16=cb,
               tmod=cb, lines=2 + 2 * (b // 4) + 1)


def kv_channels(m: ModelConfig, g: BlockGeometry) -> tuple[int, int]:
    """(KV heads a channel holds, channels that hold KV heads) of a block's cpb channels."""
    per = cdiv(m.num_kv_heads, g.cpb)
    return per, cdiv(m.num_kv_heads, per)


def static_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig,
                    kv_copies: int = 1) -> dict[str, np.ndarray]:
    """The context-independent operations of one device trace (all its blocks).

    `kv_copies`: blocks whose V^T append the trace writes. The artifact's trace writes block 0's
    only (1); the devices write every block's (`g.tb`).
    """
    d, f, b, tb = m.hidden_size, m.intermediate_size, dev.banks_per_channel, g.tb
    cb = g.tb * g.cpb  # the channels every block-wide instruction reaches: tb blocks stepping in lockstep
    lanes = g.banks_per_device
    nb, nbb = elementwise_split(d, lanes // 2)
    ew, ewb = elementwise_split(d, lanes // 4)
    fl, flb = elementwise_split(f, lanes // 4)
    # RMSNorm: the square-sum products into neighbour banks (DMA writes), one all-bank MAC pass and
    # its accumulator, the scale's inputs stored, two elementwise passes with copies through the
    # global buffer (one bank of four), the result read back. The attention norm opens the banks
    # in three steps (all, half, a quarter); the FFN norm stores both inputs to one row.
    norm_one = vec(wr=2 * _bursts(nb, dev) * nbb * tb + 2 * _bursts(ew, dev) * ewb * tb,
                   rd=_bursts(ew, dev) * ewb * tb, mac16=_bursts(nb, dev) * cb, wrmac16=cb, rdmac16=cb,
                   ewmul16=2 * _bursts(ew, dev) * cb, rdcp=b // 4 * _bursts(ew, dev) * cb,
                   wrcp=b // 4 * _bursts(ew, dev) * cb, lines=3 + 2 + 2 * (b // 4) + 1)
    ffn_rows = vec(act=(b + b // 4) * cb, pre=(b + b // 4) * cb, prea=cb, act16=cb, tmod=5 * cb)
    norm = (2 * norm_one + vec(act=(b + b // 2 + b // 4) * cb, pre=(b // 2 + b // 4) * cb, prea=2 * cb,
                               act16=2 * cb, tmod=4 * cb) + ffn_rows)
    # Gemma 2's norms of the attention's and the MLP's outputs: each as the FFN norm (`norms_per_block`)
    norm = norm + (norms_per_block(m) - 2) * (norm_one + ffn_rows)
    qkvo, ffn = _gemvs(m, g.banks, dev, fc_only=False)
    qw, qwb = elementwise_split(m.q_size, lanes // 4)  # q's H hd values (D where they agree), as the time's
    rotary = vec(wr=2 * (_bursts(2 * qw, dev) + _bursts(2 * (qw // m.num_rep), dev)) * qwb * tb,
                 ewmul16=(_bursts(m.q_size, dev) + _bursts(m.kv_size, dev)) * cb,
                 prea=2 * cb, act16=2 * cb, pre=b * cb, act=b * cb, tmod=cb, lines=2)
    # KV append: the token's K (its bursts, in rows of one bank) through the DMA, and V^T as an
    # all-bank write per 16 dimensions of each KV head on the head's channel.
    # K's rows and bursts are of the KV element (`kv_row_elements`, `kv_burst_elements`); V^T's all-bank
    # writes stay one per 16 dimensions, each writing the new token's value in its banks' rows.
    k_rows = cdiv(m.kv_size, dev.kv_row_elements)
    v_writes = _bursts(m.head_dim, dev) * m.num_kv_heads * kv_copies
    kv = vec(wr=_kv_bursts(m.kv_size, dev) * tb, pre=k_rows * tb, act=k_rows * tb, wra16=v_writes,
             act16=v_writes, prea=kv_channels(m, g)[1] * kv_copies, lines=v_writes)
    # SiLU x up: both inputs stored, the elementwise product with copies, the result read back.
    act = vec() if m.is_moe else _silu_commands(f, g, dev, tb)
    router, experts, shared = moe_commands(m, g, dev, tb)
    tail = vec(lines=3)  # two residual adds and the end of the step: instructions, no commands
    return dict(norm=norm + tail, qkvo=qkvo, rotary=rotary, kv=kv, ffn=ffn, act=act, router=router, experts=experts,
                shared=shared)


def partner_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> np.ndarray:
    """One tensor-parallel partner's trace: its share of the seven weight GEMVs only (the block's
    first device runs attention, norms and SiLU, as the artifact splits a block), a mixture of experts'
    router (every device runs its own copy) and its slice of a shared expert."""
    qkvo, ffn = _gemvs(m, g.banks, dev, fc_only=True)
    router, _, shared = moe_commands(m, g, dev, 1)
    return qkvo + ffn + router + shared + vec(lines=1)


def attention_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig, context: int) -> dict[str, np.ndarray]:
    """q.K^T, softmax and score x V of one device trace at `context` tokens (of which a sliding
    window attends to the last `sliding_window`)."""
    context = attended(m, context)
    cb, tb, nrep, hd = g.tb * g.cpb, g.tb, m.num_rep, m.head_dim
    kv_per_channel, kv_chans = kv_channels(m, g)
    nch, banks = dev.num_channels, g.banks
    # q.K^T: keys one per bank, in slots of B banks; a slot's instructions reach whole groups of the
    # channels its keys occupy. Per key row and slot and query head of the group: the query's values
    # into the buffer, then per KV head in the row a bias, an hd-wide MAC, a read. The query's values
    # fill buffer rows (`row_elements` activations: the instruction lines), the key's open K rows of the
    # KV element (`kv_row_elements`) and MAC its bursts (`kv_burst_elements`).
    k_rows, buffer_rows = cdiv(m.kv_size, dev.kv_row_elements), cdiv(m.kv_size, dev.row_elements)
    slots = cdiv(context, banks)
    bursts, heads = _bursts(m.kv_size, dev), m.num_kv_heads  # over all k_rows rows

    def reach(need: int) -> int:
        return nch if g.cpb * g.tp > nch else nch // need * need

    full, last = reach(g.cpb * g.tp), reach(cdiv(context - banks * (slots - 1), dev.banks_per_channel))
    csum, cmax = (slots - 1) * full + last, max(full, last) if slots > 1 else last
    rep = nrep * csum
    score = vec(wrgb=bursts * rep, mac16=heads * _kv_bursts(hd, dev) * rep, wrmac16=heads * rep,
                rdmac16=heads * rep, act16=k_rows * csum,
                # a channel the V append closed (auto-precharge), or that nothing opened yet, needs no
                # precharge before its next all-bank row: here, or in softmax for KV channels q.K^T skips
                prea=k_rows * csum - min(kv_chans, cmax) - max(0, cmax - cb), tmod=2 * heads * rep + cmax,
                lines=(buffer_rows + 3 * heads) * slots * nrep)
    # softmax: the scores of every head cross the DMA (4 writes, 2 reads a burst) around two
    # elementwise passes per head group and row; the single-bank row moves reopen rows.
    sizes = context_rows(context, dev.row_elements)
    rl, s16 = len(sizes), sum(_bursts(n, dev) for n in sizes)
    groups = cdiv(m.num_heads, BANK_GROUPS * g.cpb)
    same = 1 if groups == 1 and rl == 1 else 0
    moves = tb * (6 * m.num_heads * rl - 4 * same * cdiv(m.num_heads, groups))
    softmax = vec(wr=4 * tb * m.num_heads * s16, rd=2 * tb * m.num_heads * s16, ewmul16=2 * groups * s16 * cb,
                  pre=moves, act=moves, prea=cb * (2 * groups * rl - same) - max(0, kv_chans - cmax),
                  act16=cb * (2 * groups * rl - same),
                  tmod=min(cmax, cb), lines=2 * groups * rl + 2)
    # score x V: per KV-head slot of a channel, query head of the group and score row: the row into
    # the buffer, then the head's V^T rows in a bank (`v_rows`) each with bias, MAC over the row's tokens
    # (their V in KV bursts: `pim.score_v_cycles`), read.
    heads = kv_per_channel * nrep
    rows = v_rows(m, dev)
    v16 = sum(_kv_bursts(n, dev) for n in sizes)
    sv = vec(wrgb=heads * s16 * cb, mac16=rows * heads * v16 * cb, wrmac16=rows * heads * rl * cb,
             rdmac16=rows * heads * rl * cb, act16=rows * heads * rl * cb, prea=rows * heads * rl * cb,
             tmod=(2 * rows * heads * rl + 1) * cb, lines=(1 + 3 * rows) * heads * rl)
    return dict(score=score, softmax=softmax, sv=sv)


def head_commands(m: ModelConfig, g: BlockGeometry, dev: DeviceConfig) -> np.ndarray:
    """The embedding lookup (the token's row: one bank row opened, its bursts read by the DMA) and
    the LM head (a GEMV over a block's banks on each of its tp devices) with the final norm's scale
    pass, once per token: the work `pim.embed_lookup_cycles` and `lm_head_cycles` time. Unlike a
    pure-pipeline block step, nothing runs in lockstep copies: the GEMV reaches a block's channels."""
    ew, ewb = elementwise_split(m.hidden_size, g.banks_per_device // 4)
    return (g.tp * gemv(m.hidden_size, m.vocab_size, g.banks, dev, from_normal_mode=True, span=g.cpb)
            + vec(rd=_bursts(m.hidden_size, dev), act=1, pre=1, wr=2 * _bursts(ew, dev) * ewb * g.tb, lines=2))
