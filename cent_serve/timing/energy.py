"""Energy, power and cost (docs/hardware_model.md sections 8 and 9).

Energy is counted, not fitted: the DRAM commands a device issues for a block's step
(`cent_serve.timing.commands`), each charged from the device's powers and times
(`device.energy`), plus what draws power for the step's duration. The terms, named as the
breakdown shows them (`TERMS`), are those of the CENT artifact's power calculator:

- `activate`: rows opened (act_mw x tRC a bank); `read` / `write`: bursts in and out of the
  banks (rd_mw / wr_mw x tBL; an activation-function lookup reads every bank, a V^T append
  writes every bank); `pim`: the banks' MAC units (all-bank MAC and elementwise steps);
- `dq`: bursts across the DRAM interface pins; `controller`: the memory controllers, a
  transaction-engine cycle per data command and a PHY cycle per command;
- `active_standby` / `precharge_standby`: DRAM background power over the step, split by the
  share of channel-cycles with a row open (a channel is precharged `precharge_cycles` after
  closing all its banks and `write_precharge_cycles` after an all-bank write);
- `sram_static`, `accelerator_static`, `device_controller`: leakage and control logic over the
  step; `sram_dynamic`: global-buffer accesses, the instruction buffer's reads (one per
  instruction) and the accelerator's shared-buffer traffic; `accelerator_dynamic`, `riscv`:
  the accelerator's passes (RMSNorm, softmax, rotary); `pcie`: the step's CXL transfers.

How steps make a token (the timer's convention, `cent_serve.timing.pipeline`):

- pure pipeline: a device steps its tb blocks together (one trace, the block's PIM time T);
  a block's energy is the trace's / tb. `artifact`: a token costs ceil(N / tb) device steps
  (81 block steps for Llama2-70B's 80 blocks on 27 devices) with the V^T append of one block
  per trace, as the artifact counts; `cent`: N blocks, every block's V^T append, and the
  embedding and LM head.
- tensor / hybrid: a block's first device runs the whole block with its 1/tp share of the
  weights; its tp - 1 partners run their shares of the seven weight GEMVs only, each charged
  over its own busy time.

Power = a token's energy over one pipeline step (`pipeline.token_figures`), as the artifact
reports it.
"""
from __future__ import annotations

import numpy as np

from cent_serve.config import DeviceConfig, ModelConfig, preset_changes
from cent_serve.config.hardware import PAPER_TCO_PER_DEVICE
from cent_serve.timing.commands import (BLOCK_OPS, FIELDS, IDX, attention_commands, head_commands,
                                        partner_commands, static_commands)
from cent_serve.timing.accelerator import score_passes
from cent_serve.timing.memo import ContextMemo
from cent_serve.timing.pim import (attended, cdiv, expert_cycles, ffn_cycles, norms_per_block, qkvo_cycles,
                                   router_cycles, shared_expert_cycles)

# docs/hardware_model.md section 9: measured A100-80GB throughput (prefill, decode, end-to-end tok/s)
# and how many A100s the paper's baseline uses per model.
GPU_BASELINES = {
    "llama2-7b": dict(gpus=1, prefill=12497.0, decoding=960.0, end2end=1085.0),
    "llama2-13b": dict(gpus=2, prefill=12913.0, decoding=953.0, end2end=1077.0),
    "llama2-70b": dict(gpus=4, prefill=3110.0, decoding=917.0, end2end=1006.0),
}
PAPER_GPU_KIND = "a100-80gb"
"""The GPUs `GPU_BASELINES` measured (the CENT artifact's A100-80GB SXM4 modules, docs/gpu_model.md section 4):
their price in the TCO ratio is this kind's `tco_per_gpu` (1.76 per 4) unless `gpu.tco_per_gpu` is set."""

TERMS = ("activate", "read", "write", "pim", "dq", "controller", "active_standby", "precharge_standby",
         "sram_static", "sram_dynamic", "accelerator_static", "accelerator_dynamic", "riscv",
         "device_controller", "pcie")
"""The named parts of a token's energy: `energy_breakdown_mj` (cent simulate), `energy_by_term_j` and
`energy_share_by_term` (a replay's summary.json), `energy_<term>_mj` (CSV columns), one split under three
names (docs/hardware_model.md section 8 lists them)."""
T = {name: i for i, name in enumerate(TERMS)}
OPS = (*(op for op in BLOCK_OPS if op not in ("router", "experts", "shared")), "background")
"""`block_energy_by_op_j`'s keys for a dense block: the commands of each operation, and what the step
draws for its duration or per step (standby, leakage, accelerator, instruction buffer, links)."""
MOE_OPS = (*(op for op in BLOCK_OPS if op not in ("ffn", "act")), "background")
"""The same for a mixture-of-experts block: the router and the token's experts instead of the MLP, and a
shared expert (Qwen 2 MoE; left out for a family without one)."""

DATA_COMMANDS = ("rd", "wr", "mac16", "af16", "ewmul16", "rdcp", "wrcp", "wrgb", "rdmac16", "rdaf16",
                 "wrmac16", "wra16")
"""Commands that carry data through a controller's transaction engine (the others, row and
mode commands, only through its PHY)."""
PIN_COMMANDS = ("rd", "wr", "wrgb", "rdmac16", "rdaf16", "wrmac16", "wra16")
"""Commands whose burst crosses the DRAM interface pins."""


QUOTED_ROW_BYTES = 2048
"""The row bytes `device.energy.act_mw` is quoted for: the paper's 2 KB row (1024 bf16 elements); a row
of other bytes (`device.row_elements` x `device.bytes_per_element`) scales it."""


def command_energies_j(dev: DeviceConfig) -> np.ndarray:
    """(len(TERMS), len(FIELDS)): joules of each term per command (per instruction line for
    `lines`, the instruction buffer's read). Bursts and MAC steps are quoted for 32 B a bank and
    scale with the device's burst; controller and buffer accesses cost one cycle of their power
    at `access_clock_hz`."""
    e, b = dev.energy, dev.banks_per_channel
    cycle_ns = 1e9 / e.access_clock_hz
    share = dev.burst_elements * dev.bytes_per_element / 32  # of the 32 B burst the times are quoted for
    # of the 2 KB row act_mw is quoted for (whatever its elements' width): an activation senses the whole
    # row, so a wider row costs more a row opened and the same a byte streamed
    act = e.act_mw * e.t_rc_ns * 1e-12 * dev.row_elements * dev.bytes_per_element / QUOTED_ROW_BYTES
    rd, wr = e.rd_mw * e.t_burst_ns * share * 1e-12, e.wr_mw * e.t_burst_ns * share * 1e-12
    mac = b * e.mac_bank_read_share * e.rd_mw * e.t_ccd_ns * share * 1e-12
    pins = dev.burst_elements * dev.bytes_per_element * 8 * e.external_pj_per_bit * 1e-12
    trx = e.controller_trx_mw / e.channels_per_controller * cycle_ns * 1e-12
    phy = e.controller_phy_mw / e.channels_per_controller * cycle_ns * 1e-12
    m = np.zeros((len(TERMS), len(FIELDS)))

    def put(term: str, commands, joules: float) -> None:
        for c in commands:
            m[T[term], IDX[c]] += joules

    put("activate", ("act",), act)
    put("activate", ("act16",), b * act)
    put("read", ("rd", "rdcp", "rdmac16", "rdaf16"), rd)
    put("read", ("af16",), b * rd)
    put("write", ("wr", "wrcp", "wrmac16"), wr)
    put("write", ("wra16",), b * wr)
    put("pim", ("mac16",), mac)
    put("pim", ("ewmul16",), e.ewmul_mac_share * mac)
    put("dq", PIN_COMMANDS, pins)
    put("controller", DATA_COMMANDS, trx)
    put("controller", FIELDS[:-1], phy)
    put("sram_dynamic", ("wrcp",), e.global_buffer_read_mw * cycle_ns * 1e-12)
    put("sram_dynamic", ("wrgb", "rdcp"), e.global_buffer_write_mw * cycle_ns * 1e-12)
    put("sram_dynamic", ("lines",), e.instruction_buffer_read_mw / e.access_clock_hz * 1e-3)
    return m


class EnergyModel:
    """The energy of one timer's mapping: per block, per token, by term (joules). Built once per
    timer (`energy_model`); the context-independent counts are kept."""

    def __init__(self, timer) -> None:
        self.timer = timer
        m, dev, g = timer.cost_model, timer.device, timer.mapping.geometry  # a block's: `SystemTimer.cost_model`
        self.model, self.dev, self.geometry = m, dev, g
        self.pipeline = timer.mapping.mode == "pipeline"
        self.matrix = command_energies_j(dev)
        self.artifact = timer.convention == "artifact"
        self.static_ops = static_commands(m, g, dev, 1 if self.artifact else g.tb)
        self.static = sum(self.static_ops.values())
        self.partner = self.partner_counts = None  # a tensor-parallel partner's step: its GEMVs over their busy time
        # a tensor-parallel stage's experts run outside the block's PIM time (the round's routing sets
        # which device they keep waiting: `pim.BlockTimer`), but a token's k experts keep the stage's
        # devices busy k x expert cycles whatever the routing; their commands are the first device's
        # (`static_commands`), and so is their time, as with tp = 1, where the block's time holds them
        self.expert_cycles = m.num_experts_per_tok * expert_cycles(m, g, dev) if g.tp > 1 else 0.0
        if not self.pipeline:
            self.partner_counts = counts = partner_commands(m, g, dev)
            self.partner = self.matrix @ counts + self._over_time(
                counts, qkvo_cycles(m, g, dev) + ffn_cycles(m, g, dev) + router_cycles(m, g, dev)
                + shared_expert_cycles(m, g, dev))
        d, f = m.hidden_size, m.intermediate_size
        self.pcie = np.zeros(len(TERMS))
        if self.artifact:
            # the artifact counts D values a pipeline step, 10 D + 2 F a tensor-parallel one (on
            # every device's step), and charges the count as bits
            # (a mixture of experts has no F-sized exchange but a shared expert's, of F_s, when tp > 1 splits it)
            width = (m.shared_expert_intermediate_size if g.tp > 1 else 0) if m.is_moe else f
            values = d if self.pipeline else 10 * d + 2 * width
            self.pcie[T["pcie"]] = values * dev.energy.pcie_pj_per_bit * 1e-12
        else:
            # a block's output moving on (D values), and with tp > 1 the four exchanges of its
            # slices (attention heads, o, SiLU x up, down: every device receives the others'); a
            # mixture of experts has no SiLU x up exchange but a shared expert's (F_s values), its
            # combine takes the down's place; an output staying on its device (`fabric.charge_local_hops`
            # false) uses no link, so a block carries its mean share of the token's hops that cross the switch
            width = m.shared_expert_intermediate_size if m.is_moe else f
            values = d * timer.switch_hop_share + (g.tp - 1) * (m.q_size + 2 * d + width)
            # `fabric.activation_bytes` a value on the links (2, bf16, by default) whatever the banks hold
            # (docs/hardware_model.md section 1, "The data type")
            self.pcie[T["pcie"]] = values * timer.fabric.activation_bytes * 8 * dev.energy.pcie_pj_per_bit * 1e-12
        self.head: np.ndarray | None = None
        self._blocks = ContextMemo(len(TERMS), m.max_seq_len + 1)  # `block`'s terms by context

    # ------------------------------------------------------------------ one step

    def _over_time(self, counts: np.ndarray, cycles: float) -> np.ndarray:
        """Standby, leakage and control logic of a step of `cycles` PIM cycles."""
        dev, e = self.dev, self.dev.energy
        nch, seconds = dev.num_channels, cycles / dev.clock_hz
        out = np.zeros(len(TERMS))
        per_ns = dev.clock_hz * 1e-9  # cycles a ns
        closed = min(nch * cycles, e.precharge_ns * per_ns * counts[IDX["prea"]]
                     + e.write_precharge_ns * per_ns * counts[IDX["wra16"]])
        out[T["active_standby"]] = e.act_standby_mw * 1e-3 * (nch * cycles - closed) / nch / dev.clock_hz
        out[T["precharge_standby"]] = e.pre_standby_mw * 1e-3 * closed / nch / dev.clock_hz
        out[T["sram_static"]] = (e.global_buffer_static_mw * nch + e.shared_buffer_static_mw
                                 + e.instruction_buffer_static_mw) * 1e-3 * seconds
        out[T["accelerator_static"]] = (e.reduction_leak_mw + e.exp_leak_mw + e.vector_leak_mw) * nch * 1e-3 * seconds
        out[T["device_controller"]] = e.device_controller_mw * 1e-3 * seconds
        return out

    def _accelerator(self, context: int) -> np.ndarray:
        """The accelerator's work for one block (its RMSNorms, two or Gemma 2's four: `norms_per_block`;
        softmax over every head's scores, its passes twice with soft-capping: `score_passes`; the
        rotary of q and k, and Qwen 3's q/k norms: one more RMSNorm pass over every q and k head) and
        its buffers' traffic, by the artifact's counts of accesses and cycles, each access one
        cycle of its unit's power at `access_clock_hz`: the work `accelerator_parts` times."""
        m, dev, e = self.model, self.dev, self.dev.energy
        d, h, lanes = m.hidden_size, m.num_heads, dev.acc_simd_lanes
        sb_rd, sb_wr = e.shared_buffer_read_mw, e.shared_buffer_write_mw
        norms = norms_per_block(m)
        norm = d / (lanes * dev.burst_elements) + 2  # one RMSNorm's shared-buffer passes
        exps = score_passes(m) * attended(m, context) * h / lanes  # SIMD passes over every head's scores
        rotated = (1 + 1 / m.num_rep) * m.q_size  # q and k elements (H hd is D in Llama 2; not in all)
        qk_heads = h + m.num_kv_heads if m.qk_norm else 0
        qk = qk_heads * m.head_dim / (lanes * dev.burst_elements)  # the q/k norms' passes, as an RMSNorm's
        out = np.zeros(len(TERMS))
        ib_reads = norms * norm + 2 * exps + 2 * h + rotated + qk
        sb = ((norms * norm + qk) * (2 * sb_rd + sb_wr) + (3 * exps + 2 * h) * sb_rd + (2 * exps + 2 * h) * sb_wr
              + rotated / lanes * (sb_rd + 2 * sb_wr))
        out[T["sram_dynamic"]] = (ib_reads * e.instruction_buffer_read_mw + sb) * 1e-3 / e.access_clock_hz
        riscv_cycles = ((norms + qk_heads) * dev.acc_norm_riscv_cycles
                        + h * (dev.acc_softmax_writes * dev.acc_buffer_cycles + dev.acc_softmax_riscv_cycles
                               + dev.acc_buffer_cycles)
                        + rotated * dev.acc_rotary_riscv_cycles / dev.acc_riscv_cores)
        out[T["riscv"]] = e.riscv_core_mw * 1e-3 * riscv_cycles / e.access_clock_hz
        out[T["accelerator_dynamic"]] = (e.reduction_mw * (norms + h) + e.exp_mw * exps
                                         + e.vector_mw * (norms * d / (lanes * dev.burst_elements) + exps + qk)
                                         ) * 1e-3 / e.access_clock_hz
        return out

    # ------------------------------------------------------------------ blocks and tokens

    def block(self, context: int) -> np.ndarray:
        """Terms of one block's step for one token at `context`, over all tp devices: (len(TERMS),)
        a read-only row of the memo that keeps them by context."""
        hit = self._blocks.get(context)
        if hit is None:
            g = self.geometry
            counts = self.static + sum(attention_commands(self.model, g, self.dev, context).values())
            step = self.matrix @ counts + self._over_time(counts, self.timer.pim.cycles(context) + self.expert_cycles)
            acc = self._accelerator(context)
            if self.artifact:  # its accounting: a device step's accelerator work and links once per
                # step, the partners' steps too
                step = step + acc + self.pcie
                hit = step / g.tb if self.pipeline else step + (g.tp - 1) * (self.partner + acc + self.pcie)
            else:  # each block's own accelerator work, on its first device; the partners' GEMVs
                hit = (step / g.tb if self.pipeline else step + (g.tp - 1) * self.partner) + acc + self.pcie
            hit = self._blocks.put(context, hit)
        return hit

    def head_terms(self) -> np.ndarray:
        """Embedding and LM head of one token (charged under the `cent` convention only)."""
        if self.head is None:
            counts = head_commands(self.model, self.geometry, self.dev)
            cycles = (self.timer.embed_lookup_s + self.timer.lm_head_s) * self.dev.clock_hz
            self.head = self.matrix @ counts + self._over_time(counts, cycles)
        return self.head

    def token(self, context: int) -> np.ndarray:
        """Terms of one token at `context` over the whole model, by the timer's convention: each block
        at its own context (`SystemTimer.key_groups`: a window on some blocks only)."""
        n = self.model.num_layers
        groups = self.timer.key_groups(context)
        if self.artifact:
            tb = self.geometry.tb
            if len(groups) == 1:
                return cdiv(n, tb) * tb * self.block(groups[0][0])
            return cdiv(n, tb) * tb * (sum(count * self.block(keys) for keys, count in groups) / n)
        if len(groups) == 1:
            return n * self.block(groups[0][0]) + self.head_terms()
        return sum(count * self.block(keys) for keys, count in groups) + self.head_terms()

    def block_by_op(self, context: int) -> dict[str, float]:
        """One block's joules by operation (`OPS`), over all tp devices."""
        m, dev, g = self.model, self.dev, self.geometry
        per_op = {**self.static_ops, **attention_commands(m, g, dev, context)}
        scale = 1 / g.tb if self.pipeline else 1.0
        ops = [op for op in (MOE_OPS if m.is_moe else OPS)[:-1] if op != "shared" or m.shared_expert_intermediate_size]
        out = {op: float((self.matrix @ per_op[op]).sum()) * scale for op in ops}
        if not self.pipeline:
            partner = self.matrix @ self.partner_counts * (g.tp - 1)
            ops = ("qkvo", "ffn", "router", "shared")  # what a partner runs (`partner_commands`)
            parts = [float((self.matrix @ self.static_ops[op]).sum()) for op in ops]
            for op, part in zip(ops, parts):
                if part:
                    out[op] += float(partner.sum()) * part / sum(parts)
        out["background"] = float(self.block(context).sum()) - sum(out.values())
        return out


def energy_model(timer) -> EnergyModel:
    """The timer's `EnergyModel` (one per timer)."""
    hit = timer.__dict__.get("_energy")
    if hit is None:
        hit = timer.__dict__["_energy"] = EnergyModel(timer)
    return hit


def block_energy_j(timer, context: int) -> float:
    """One block's energy for one token at `context`, over all tp devices of its stage."""
    return float(energy_model(timer).block(context).sum())


def block_energy_by_op_j(timer, context: int) -> dict[str, float]:
    """One block's energy for one token at `context` by operation (`OPS`)."""
    return energy_model(timer).block_by_op(context)


def head_energy_j(timer) -> float:
    """Embedding and LM head of one token (0 under the `artifact` convention, which leaves them out)."""
    return float(head_energy_terms_j(timer).sum())


def head_energy_terms_j(timer) -> np.ndarray:
    """`head_energy_j` by term (`TERMS`): (len(TERMS),) joules, zeros under the `artifact` convention."""
    if timer.convention == "artifact":
        return np.zeros(len(TERMS))
    return energy_model(timer).head_terms()


def token_energy_terms_j(timer, context: int) -> dict[str, float]:
    """One token's energy at `context` by term (`TERMS`), joules."""
    return dict(zip(TERMS, energy_model(timer).token(context).tolist()))


TERMS_SHOWN = 5
"""Terms a printed table names (the largest); the JSON and CSV outputs have them all."""


def shares_text(terms: dict[str, float], shown: int = TERMS_SHOWN) -> str:
    """`pim 41.2%, activate 20.1%, ... (others 3.0%)`: the largest `shown` of `terms` (joules, mJ, or
    shares: any one unit) by their share of the sum, for a table's line (`cent bench run`'s and `cent bench
    compare`'s `energy by term`, `cent simulate`'s phases', each `--sweep` mapping's and `--emulate`'s; `cent bench
    sweep` and `cent bench paper` print no energy: their JSON and CSV have the terms)."""
    total = sum(terms.values())
    if total <= 0:
        return "none charged"
    ordered = sorted(terms.items(), key=lambda kv: -kv[1])  # stable: ties keep TERMS' order
    rest = sum(v for _, v in ordered[shown:])
    return (", ".join(f"{k} {100 * v / total:.1f}%" for k, v in ordered[:shown])
            + (f" (others {100 * rest / total:.1f}%)" if rest else ""))


def term_columns() -> tuple[str, ...]:
    """A CSV's columns of energy per token by term: `energy_<term>_mj`, one a term of `TERMS`, in its
    order (`cent sweep`'s sweep.csv, `cent bench paper`'s paper.csv); they add up to `energy_per_token_mj`."""
    return tuple(f"energy_{t}_mj" for t in TERMS)


def term_cells(per_token_mj: dict[str, float] | None) -> dict[str, float]:
    """`term_columns`' cells of one row: mJ a token by term ({} without a split: the cells stay empty)."""
    if per_token_mj is None:
        return {}
    return {f"energy_{t}_mj": per_token_mj.get(t, 0.0) for t in TERMS}


def token_energy_j(timer, context: int) -> float:
    """Energy of one token over the whole model at `context` (the timer's convention)."""
    return float(energy_model(timer).token(context).sum())


def fabric_energy_j(nbytes: int, dev: DeviceConfig) -> float:
    """CXL link energy of moving `nbytes` (pcie_pj_per_bit)."""
    return nbytes * 8 * dev.energy.pcie_pj_per_bit * 1e-12


PAPER_WORKLOAD = (512, 3584)
"""The prompt and generated tokens of every query the paper's GPU figures (`GPU_BASELINES`) measured."""


def paper_gpu_tco(gpus: int, tco_per_gpu: float | None = None) -> float:
    """TCO units of the paper's `gpus` GPUs in the artifact's convention (section 9: 1.76 per 4 A100s), each
    priced at `tco_per_gpu` (`gpu.tco_per_gpu`, the GPUs' price wherever the config sets it) or, None, at the
    A100's own (`PAPER_GPU_KIND`). 1.76 / 4 x gpus is 1.76 x gpus / 4 bit for bit for the 1, 2 and 4 GPUs
    of the baselines (powers of two scale a float exactly)."""
    from cent_serve.gpu.kinds import GPU_KINDS

    return (GPU_KINDS[PAPER_GPU_KIND].tco_per_gpu if tco_per_gpu is None else tco_per_gpu) * gpus


def paper_gpu_price(kind: str, tco_per_gpu: float | None) -> float | None:
    """The price a config's `gpu.kind` and `gpu.tco_per_gpu` give the paper's GPUs (`paper_gpu_tco`'s
    `tco_per_gpu`): the set price when the kind is theirs (`PAPER_GPU_KIND`), else None, their own: a price
    set beside another kind (an H100, the A100 PCIe card) is that GPU's, not the A100-80GB SXM4's."""
    return tco_per_gpu if kind == PAPER_GPU_KIND else None


def cent_tco(dev: DeviceConfig, num_devices: int) -> float:
    """TCO units of `num_devices` CENT devices in the artifact's convention (section 9):
    `dev.tco` each (`device.tco_per_device`, unset the paper's: 0.73 per 32)."""
    return dev.tco * num_devices


PRICED_DEVICE_FIELDS = ("unit_cost_usd", "num_channels", "banks_per_channel", "rows_per_bank", "row_elements")
"""Device fields that plausibly change what a device costs (its price, its channels, its capacity) and
that `device.tco_per_device`, the cost tokens per dollar against GPUs count, does not follow."""


def unpriced_device_changes(dev: DeviceConfig) -> list[str]:
    """`device.F=value` for each of `PRICED_DEVICE_FIELDS` changed from its default while
    `dev.tco_per_device` is unset: tokens per dollar against GPUs still price it as the paper's device
    (`tco_note` says so). [] when none is, or the TCO was set (to any value, the paper's 0.0228125 too:
    the user priced this device so)."""
    import math

    def same(f: str) -> bool:  # 28.17 as the paper prints it is the default's 2.69 + 1.10 + 24.38 (28.169999...)
        return math.isclose(getattr(dev, f), getattr(DeviceConfig, f), rel_tol=1e-9)

    if dev.tco_per_device is not None:
        return []
    return [f"device.{f}={getattr(dev, f)}" for f in PRICED_DEVICE_FIELDS if not same(f)]


def tco_note(changes: list[str], fix: str = "--set device.tco_per_device=UNITS") -> str:
    """One line: where tokens per dollar against GPUs take their prices from, when `changes`
    (`unpriced_device_changes`, or the fields a sweep varies) leave them the paper's device's; `fix`:
    how the command gives the device its own."""
    return (f"tokens per dollar against GPUs price every device at device.tco_per_device="
            f"{PAPER_TCO_PER_DEVICE:g} TCO units (the paper's device: 0.73 per 32, against 1.76 per 4 "
            f"A100s; docs/hardware_model.md section 9), which {', '.join(changes)} "
            f"{'does' if len(changes) == 1 else 'do'} not move: {fix} gives "
            "this device's cost in those units")


UNPRICED_MODEL_FIELDS = frozenset({"name", "checkpoint", "max_seq_len", "weight_dtype", "seed", "rms_norm_eps",
                                   "bos_token_id", "eos_token_id", "extra_eos_token_ids",
                                   "partial_rotary_factor", "norm_offset", "hidden_act", "scale_embeddings",
                                   "final_logit_softcapping", "query_pre_attn_scalar"})
"""Model fields (and every `rope_*`) that leave a preset the model the paper's GPUs ran: its weights'
values, numerics, tokens and how long a context it admits; every other field changes what a token
costs (`cli_common.CLOSED_FORM_IGNORES` lists those the timing does not read)."""


def baseline_changes(model: ModelConfig, dev: DeviceConfig | None = None) -> list[str]:
    """The fields (`model.F=value`) in which `model` differs from the preset of its name that the
    paper's GPUs ran (`GPU_BASELINES`), and `device.bytes_per_element` when `dev` stores other than
    the bfloat16 they computed in (1: 8-bit weights and KV, another model's numbers), and
    `device.kv_bytes_per_element` when the KV alone is stored otherwise; [] when it is
    that model or there is no such preset."""
    if model.name not in GPU_BASELINES:
        return []
    changes = preset_changes(model, lambda name: name in UNPRICED_MODEL_FIELDS or name.startswith("rope_"))
    if dev is not None and dev.bytes_per_element != GPU_BYTES_PER_ELEMENT:
        changes.append(f"device.bytes_per_element={dev.bytes_per_element}")
    if dev is not None and dev.kv_bytes_per_element not in (None, dev.bytes_per_element, GPU_BYTES_PER_ELEMENT):
        changes.append(f"device.kv_bytes_per_element={dev.kv_bytes_per_element}")
    return changes


GPU_BYTES_PER_ELEMENT = 2
"""The paper's GPUs ran the models in bfloat16."""


def gpu_baseline(model: ModelConfig, dev: DeviceConfig | None = None) -> dict | None:
    """The paper's GPU figures for `model`: its preset's (`GPU_BASELINES`), unless a field that sets
    a token's cost was changed (a llama2-7b with `--set model.num_layers=16` is a model the GPUs
    did not run, and one stored in 8 bits is not what they computed: `baseline_changes`)."""
    if model.name not in GPU_BASELINES or baseline_changes(model, dev):
        return None
    return GPU_BASELINES[model.name]


def paper_workload(model: ModelConfig, prompt: int, decode: int, dev: DeviceConfig | None = None) -> bool:
    """Whether the paper's GPU figures measured this: its workload, on a model it has figures for."""
    return (prompt, decode) == PAPER_WORKLOAD and gpu_baseline(model, dev) is not None


def cost_figures(model: ModelConfig, devices_used: int, num_devices: int, throughput_tok_s: float,
                 phase: str, energy_per_token_mj: float, dev: DeviceConfig, *, against_paper: bool,
                 tco_per_gpu: float | None = None) -> dict:
    """Cost figures, and with `against_paper` the throughput ratio and tokens per dollar against the
    paper's GPU baseline (section 9): only meaningful for its workload (`PAPER_WORKLOAD`), which the
    caller says it ran (or, `cent bench paper`, that the user asked for the baseline beside a trace).
    `tco_per_gpu`: the price of those GPUs (`paper_gpu_price` of the config's gpu.kind and gpu.tco_per_gpu;
    None: the A100's, `paper_gpu_tco`)."""
    tco_cent = cent_tco(dev, num_devices)
    system_usd = dev.unit_cost_usd * num_devices  # every device bought, also those a mapping leaves idle
    out = dict(device_unit_cost_usd=dev.unit_cost_usd, system_device_cost_usd=system_usd,
               tok_s_per_usd=throughput_tok_s / system_usd if system_usd else None,  # follows unit_cost_usd
               tokens_per_joule=1000.0 / energy_per_token_mj if energy_per_token_mj else None,
               tokens_per_tco=throughput_tok_s / tco_cent)  # the TCO convention's units, as the GPU side's
    base = gpu_baseline(model, dev)
    if base is None or not against_paper:
        return out
    gpu = base[phase]
    tco_gpu = paper_gpu_tco(base["gpus"], tco_per_gpu)
    out.update(gpu_throughput_tok_s=gpu, gpus=base["gpus"], throughput_ratio=throughput_tok_s / gpu,
               tokens_per_dollar_ratio=(throughput_tok_s / tco_cent) / (gpu / tco_gpu))
    return out
