"""Closed-form token latency, throughput and the paper's phase averages (docs/hardware_model.md section 7).

This is "paper mode": the same per-op functions the device actors charge,
added up the way the CENT artifact does with a perfect pipeline. The
emulated system is checked against it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cent_serve.arguments import check_config
from cent_serve.config import CentConfig, DeviceConfig, FabricConfig, ModelConfig
from cent_serve.timing.accelerator import accelerator_cycles
from cent_serve.timing.energy import TERMS, energy_model
from cent_serve.timing.fabric import hop_size, moe_collectives_s, pipeline_block_s, port_model, tensor_collectives_s
from cent_serve.timing.mapping import Mapping, resolve_mapping
from cent_serve.timing.memo import ContextMemo
from cent_serve.timing.pim import (BlockTimer, embed_lookup_cycles, expert_cycles, gemv_cycles, lm_head_cycles,
                                   timed_windows, window_keys)


CONVENTIONS = ("cent", "artifact")
"""How a closed form accounts a mapping (`cent_serve.timing.pipeline`)."""
TABLE_AHEAD = 32
"""Contexts past a missing one that `SystemTimer.fill_contexts` fills in the same pass."""
NUM_TERMS = len(TERMS)
TABLE_ROWS = 3 + NUM_TERMS
"""A context table's rows (`ContextTable`): PIM s, own accelerator s, joules, then the joules by term."""
PRELOAD_CONTEXTS = 8192
"""Contexts a driver fills before handing the table to its device processes (`load_table`);
longer ones are filled where they are first needed."""


def context_terms(table: np.ndarray, context: int) -> np.ndarray:
    """(NUM_TERMS,) the joules by term of one block at `context` in a context table (`ContextTable`)."""
    return table[3:].reshape(-1)[context * NUM_TERMS:(context + 1) * NUM_TERMS]


@dataclass(frozen=True)
class StepCost:
    """What one step costs, by named part (simulated seconds, joules): the closed form's token,
    and the pieces a device charges. `total_s` is the parts' sum: nothing else adds time."""

    pim_s: float = 0.0
    """Near-bank PIM work of the blocks (GEMVs, attention, norms, ...)."""
    accelerator_s: float = 0.0
    """The near-memory accelerator's share (softmax, rsqrt, rotary tables), x the blocks that share it."""
    collectives_s: float = 0.0
    """Tensor-parallel exchanges inside the blocks (0 in pure pipeline)."""
    hops_s: float = 0.0
    """Block outputs moving to the next block over the switch."""
    embedding_s: float = 0.0
    """The embedding lookup (first stage)."""
    lm_head_s: float = 0.0
    """Final norm and LM head (last stage)."""
    host_s: float = 0.0
    """Host CPU sampling."""
    energy_j: float = 0.0
    """Energy of the step over every device it uses."""

    @property
    def total_s(self) -> float:
        return (self.pim_s + self.accelerator_s + self.collectives_s + self.hops_s + self.embedding_s
                + self.lm_head_s + self.host_s)

    def as_dict(self) -> dict:
        return dict(asdict(self), total_s=self.total_s)


@dataclass(frozen=True)
class LanePlan:
    """What a round's layout fixes for every device of a mapping, packed as the kernels read it
    (`SystemTimer.lane_plan`; `cent_serve.timing.clock.device_round` and `tick`)."""

    ints: np.ndarray
    """int64: [offsets (lanes + 1) | tokens per sequence | flits per lane]: lane k's sequences are
    offsets[k]:offsets[k + 1] in layout order; flits of its activations crossing a switch port."""
    floats: np.ndarray
    """(3, lanes) float64: per lane its in-block collectives, its block-to-block hop, and the
    serialization seconds of its activations on a switch port, for its tokens."""
    num_tokens: int
    """The round's tokens."""


class ContextTable:
    """`SystemTimer.block_cost` by context, filled as rounds reach contexts (`SystemTimer.context_table`):
    `costs` (TABLE_ROWS, n) float64 holds (PIM s, own accelerator s, joules on one tp device) at column
    L, for the contexts `filled` (n,) marks; its other rows, read as one run of n x len(TERMS) values,
    those joules by term (`energy.TERMS`, the vector whose sum they are), context after context
    (`context_terms`): a device adds a token's terms from one or two cache lines, not one a row.
    Timers of one model, mapping and device may share one (`SystemTimer.share_table`): the values are
    the same."""

    def __init__(self) -> None:
        self.costs = np.zeros((TABLE_ROWS, 0))
        self.filled = np.zeros(0, dtype=bool)


class SystemTimer:
    """Every time of one (model, mapping, device, fabric): built once per executor, queried often,
    and the owner of every cache of costs (devices and the switch ask it; nobody else adds up time).

    Per block for one token at context L: `block_cost(L)` = (PIM s, own accelerator s, joules on
    one tp device); `collectives_s(tokens)`, `hop_s(tokens)`; per token `embed_lookup_s`,
    `lm_head_s` (together `embedding_s`) and `host_s`; `token_cost(L)` is the closed form's token.
    """

    def __init__(self, model: ModelConfig, mapping: Mapping, device: DeviceConfig,
                 fabric: FabricConfig, convention: str = "cent") -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"--convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
        self.model, self.mapping, self.device, self.fabric = model, mapping, device, fabric
        self.convention = convention
        """`cent` (the pipeline the devices run) or `artifact` (the CENT artifact's accounting:
        `cent_serve.timing.pipeline`)."""
        self.cost_model, self.table_windows = timed_windows(model)
        """The model a block's costs are computed for, and each block's window the clocks read them at
        on top (`pim.timed_windows`: the full-attention twin of a model windowing some blocks only)."""
        self._one_kind = not any(self.table_windows)
        """No window on some blocks only: every block reads its costs at the token's context."""
        self.pim = BlockTimer(self.cost_model, mapping.geometry, device)
        self.port = port_model(fabric, mapping.num_devices)
        # The emulation runs the embedding lookup on the first stage and the LM head (with the
        # final norm) on the last; together they are embedding_s. The embedding is a row read;
        # the artifact charges it as a vocab x D GEMV, and so does its convention.
        g = mapping.geometry
        self.lm_head_s = lm_head_cycles(model, g, device) / device.clock_hz
        lookup = (gemv_cycles(model.vocab_size, model.hidden_size, g.banks, device) if convention == "artifact"
                  else embed_lookup_cycles(model, device))
        self.embed_lookup_s = lookup / device.clock_hz
        self.embedding_s = self.embed_lookup_s + self.lm_head_s
        self.host_s = device.host_sample_s
        self.expert_s = expert_cycles(model, g, device) / device.clock_hz
        """One token through one expert of a mixture of experts, on the banks that hold it."""
        self.moe_per_round = model.is_moe and mapping.tp > 1
        """Experts spread over a stage's devices: their time depends on the round's routing
        (`moe_lane_s`); otherwise a block's experts share its banks and their time is per token."""
        self._routing = None
        self._moe_expected: float | None = None
        self._moe_lanes: dict[tuple, tuple] = {}  # blocks -> (layout, starts, plan): moe_lane_plan's last
        self._acc = ContextMemo(1, model.max_seq_len + 1)  # a block's own accelerator s by context
        self._hop: dict[int, float] = {}
        self._coll: dict[int, float] = {}
        self._table = ContextTable()  # see context_table
        self._plan: tuple[object, LanePlan] | None = None  # the last layout's, see lane_plan

    @classmethod
    def from_config(cls, cfg: CentConfig, convention: str = "cent") -> "SystemTimer":
        check_config("SystemTimer.from_config(cfg)", cfg)
        return cls(cfg.model, resolve_mapping(cfg.model, cfg.parallel, cfg.device), cfg.device,
                   cfg.fabric, convention)

    # ------------------------------------------------------------------ per block

    def key_groups(self, context: int, blocks=None) -> list[tuple[int, int]]:
        """(the context `block_cost` is read at, how many of `blocks` read it; default every block)
        for one token at `context`: one group unless the model windows some blocks only."""
        if self._one_kind:  # every block reads `context` (the common case, on the closed form's path)
            return [(context, self.model.num_layers if blocks is None else len(blocks))]
        out: dict[int, int] = {}
        for b in range(self.model.num_layers) if blocks is None else blocks:
            keys = window_keys(context, self.table_windows[b])
            out[keys] = out.get(keys, 0) + 1
        return list(out.items())

    def per_block(self, context: int, value):
        """`value(keys)` of one block at `context`, a block's mean over the model's blocks (of a
        model windowing some: N blocks of it add up to theirs); for one kind of block, its own."""
        groups = self.key_groups(context)
        if len(groups) == 1:
            return value(groups[0][0])
        return sum(count * value(keys) for keys, count in groups) / self.model.num_layers

    def block_pim_s(self, context: int) -> float:
        """A block's PIM seconds for one token at `context` (`per_block`)."""
        return self.per_block(context, lambda keys: self.pim.cycles(keys) / self.device.clock_hz)

    def block_acc_s(self, context: int) -> float:
        """A block's own accelerator seconds for one token at `context` (`per_block`)."""
        return self.per_block(context, self._acc_s)

    def _acc_s(self, keys: int) -> float:
        hit = self._acc.get(keys)
        if hit is None:
            hit = self._acc.put(keys, accelerator_cycles(self.cost_model, self.device, keys) / self.device.acc_clock_hz)
        return float(hit[0])

    def block_cost(self, context: int) -> tuple[float, float, float]:
        """(PIM s, own accelerator s, joules on one tp device) of one block of `cost_model` for one
        token at `context` (a windowed block of a model windowing some reads it at `key_groups`'). Not kept:
        its parts are (`BlockTimer.cycles`, `_acc_s`, `EnergyModel.block`), and the context table."""
        from cent_serve.timing.energy import block_energy_j
        return (self.pim.cycles(context) / self.device.clock_hz, self._acc_s(context),
                block_energy_j(self, context) / self.mapping.tp)

    def hop_s(self, tokens: int) -> float:
        """A block's output (tokens x D) moving to the next block on other devices: t(flits(tokens D)),
        once to each of their tp devices without multicast."""
        hit = self._hop.get(tokens)
        if hit is None:
            hit = self._hop[tokens] = pipeline_block_s(self.model.hidden_size, self.port, self.fabric, tokens,
                                                       self.mapping.tp)
        return hit

    def local_hop_s(self, tokens: int) -> float:
        """A block's output moving to the next block on the same devices: a switch hop as the
        artifact charges it (`fabric.charge_local_hops`; without multicast sent to the tp - 1 others
        only, the sender holding it), or else the DMA engine moving its tokens x D values
        (`device.dma_bytes_per_cycle`)."""
        if self._hops_alike:
            return self.hop_s(tokens)
        if self.fabric.charge_local_hops:
            return pipeline_block_s(self.model.hidden_size, self.port, self.fabric, tokens, self.mapping.tp - 1)
        d = self.device
        return tokens * self.model.hidden_size * d.bytes_per_element / d.dma_bytes_per_cycle / d.clock_hz

    def collectives_s(self, tokens: int) -> float:
        """In-block tensor-parallel exchanges for `tokens` tokens: none in pure pipeline, none
        with tp = 1 (a block on one device has no partner; the artifact still charges them, and
        so does the `artifact` convention)."""
        if self.mapping.mode == "pipeline" or (self.mapping.tp == 1 and self.convention == "cent"):
            return 0.0
        hit = self._coll.get(tokens)
        if hit is None:
            m = self.model
            hit = self._coll[tokens] = (
                moe_collectives_s(m.hidden_size, self.mapping.tp, self.port, self.fabric, tokens,
                                  m.q_size, m.shared_expert_intermediate_size) if m.is_moe else
                tensor_collectives_s(m.hidden_size, m.intermediate_size, self.mapping.tp, self.port, self.fabric, tokens,
                                     m.q_size))
        return hit

    # ------------------------------------------------------------------ mixtures of experts

    @property
    def routing(self):
        """The time model's router (`cent_serve.timing.experts.RoutingTable`), built on first use."""
        if self._routing is None:
            from cent_serve.timing.experts import RoutingTable
            self._routing = RoutingTable(self.model)
        return self._routing

    def moe_lane_s(self, layout, starts: np.ndarray, blocks) -> np.ndarray:
        """(lanes,) the experts' seconds of each lane of a round through `blocks` of a stage whose tp
        devices hold the experts (expert e on its device e mod tp): per block, the busiest device's
        assignments one after the other (`experts.lane_max_loads`). starts: each sequence's position
        before the round, in layout order."""
        from cent_serve.timing.experts import lane_max_loads

        tokens = np.asarray(layout.seq_tokens, dtype=np.int64)
        chosen = self.routing.experts(layout.seq_ids, starts, tokens, blocks)
        seq_lane = np.repeat(np.arange(len(layout.seqs)), [len(lane) for lane in layout.seqs])
        loads = lane_max_loads(chosen, np.repeat(seq_lane, tokens), len(layout.seqs), self.mapping.tp)
        return loads * self.expert_s

    def moe_lane_plan(self, layout, starts: np.ndarray, blocks: tuple[int, ...]) -> LanePlan:
        """The layout's `LanePlan` with this round's experts (`moe_lane_s` over the stage's `blocks`)
        spread over the blocks' steps (the clocks add a lane's step once per block, so the lane's
        time through the stage gains exactly `moe_lane_s`). Kept for the stage's other devices of
        this process, which ask for the same round."""
        key = starts.tobytes()
        hit = self._moe_lanes.get(blocks)
        if hit is not None and hit[0] is layout and hit[1] == key:
            return hit[2]
        lp = self.lane_plan(layout)
        floats = lp.floats.copy()
        floats[0] += self.moe_lane_s(layout, starts, blocks) / len(blocks)
        plan = LanePlan(lp.ints, floats, lp.num_tokens)
        self._moe_lanes[blocks] = (layout, key, plan)
        return plan

    @property
    def moe_expected_s(self) -> float:
        """The closed form's experts per token and block when they are spread over a stage's devices:
        the expected busiest device's assignments of one token (`RoutingTable.mean_max_load`) x one
        expert's time; 0 when a block's experts share its banks (they are in `block_cost`)."""
        if not self.moe_per_round:
            return 0.0
        if self._moe_expected is None:
            self._moe_expected = self.routing.mean_max_load(self.mapping.tp) * self.expert_s
        return self._moe_expected

    def context_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(table, filled): table (TABLE_ROWS, n) float64 holds `block_cost(L)` (PIM s, own accelerator
        s, joules on one tp device) and those joules by term (`ContextTable`) at column L for the
        contexts `filled` (n,) marks. Devices read it in `device_round`; `fill_contexts` adds what a
        round lacks."""
        return self._table.costs, self._table.filled

    def share_table(self, other: "SystemTimer") -> None:
        """Read and fill `other`'s context table from now on (a timer of the same model, mapping,
        device and convention: an engine's in-process replicas), so each context's block costs are
        evaluated once, not once per replica."""
        assert (self.model, self.mapping, self.device, self.convention) == (
            other.model, other.mapping, other.device, other.convention), "a context table of another timing"
        self._table = other._table

    def fill_contexts(self, contexts: np.ndarray) -> None:
        """Fill the context table for `contexts`, and `TABLE_AHEAD` contexts past the largest
        missing one in the same pass: decoding asks for one new context a round, and one pass
        through the cost model at a time is what a device process, woken for a round on a shared
        core, does fastest. With windows on some blocks (`table_windows`), min(L, window) too: the
        context a windowed block reads."""
        contexts = np.asarray(contexts, dtype=np.int64)
        if contexts.size == 0:
            return
        windows = sorted({w for w in self.table_windows if w})  # the contexts windowed blocks read them at
        if windows:
            contexts = np.concatenate([contexts, *(np.minimum(contexts, w) for w in windows)])
        need = int(contexts.max()) + 1
        upto = max(need, min(need + TABLE_AHEAD, self.model.max_seq_len + 1))
        t = self._table
        if upto > t.filled.shape[0]:
            grow = max(upto, 2 * t.filled.shape[0])
            costs = np.zeros((TABLE_ROWS, grow))
            costs[:3, :t.costs.shape[1]] = t.costs[:3]
            costs[3:].reshape(-1)[:t.costs[3:].size] = t.costs[3:].reshape(-1)  # context-major: a prefix
            t.costs = costs
            t.filled = np.concatenate([t.filled, np.zeros(grow - t.filled.shape[0], bool)])
        missing = np.unique(contexts[~t.filled[contexts]])
        ahead = np.arange(int(missing.max()) + 1, upto) if missing.size else np.zeros(0, np.int64)
        energy, terms = energy_model(self), t.costs[3:].reshape(-1)  # a view: the rows are contiguous
        for L in np.concatenate([missing, ahead[~t.filled[ahead]]]).tolist():
            t.costs[:3, L] = self.block_cost(L)
            # the terms block_cost's joules add up (`block_energy_j`: the same cached vector), so a
            # device charges them beside the total (`clock.device_round`)
            terms[L * NUM_TERMS:(L + 1) * NUM_TERMS] = energy.block(L) / self.mapping.tp
            t.filled[L] = True

    def load_table(self, table: np.ndarray, filled: np.ndarray) -> None:
        """Take a context table another timer of the same mapping filled (`context_table`): the
        driver fills it once and hands it to every device process, which would otherwise each
        evaluate the cost model for every context. A timer sharing another's table (`share_table`)
        takes a table of its own here, leaving the other's as it was."""
        assert table.shape == (TABLE_ROWS, filled.shape[0]), (table.shape, filled.shape)
        self._table = ContextTable()
        self._table.costs, self._table.filled = np.array(table), np.array(filled)

    def lane_plan(self, layout) -> LanePlan:
        """The layout's `LanePlan`; kept while the layout holds (a decode batch keeps its layout
        for many rounds; the devices of one process share it)."""
        if self._plan is not None and (self._plan[0] is layout or self._plan[0] == layout):
            self._plan = (layout, self._plan[1])  # compared by identity next time
            return self._plan[1]
        lane_tokens = layout.lane_tokens
        sizes = [hop_size(self.model.hidden_size, n, self.port, self.fabric) for n in lane_tokens]
        ints = np.array([0, *np.cumsum([len(lane) for lane in layout.seqs]).tolist(), *layout.seq_tokens,
                         *(f for f, _ in sizes)], dtype=np.int64)
        floats = np.array([[self.collectives_s(n) for n in lane_tokens], [self.local_hop_s(n) for n in lane_tokens],
                           [s for _, s in sizes]], dtype=np.float64).reshape(3, len(lane_tokens))
        plan = LanePlan(ints, floats, int(sum(lane_tokens)))
        self._plan = (layout, plan)
        return plan

    # ------------------------------------------------------------------ per token (closed form)

    def token_cost(self, context: int) -> StepCost:
        """One token through the whole model at `context`, as the paper's perfect pipeline adds it."""
        from cent_serve.timing.energy import token_energy_j

        pim_s = acc_s = 0.0
        for keys, n in self.key_groups(context):
            pim, acc, _ = self.block_cost(keys)
            pim += self.moe_expected_s
            pim_s, acc_s = pim_s + n * pim, acc_s + n * acc
        n = self.model.num_layers
        return StepCost(pim_s=pim_s, accelerator_s=acc_s * self.mapping.tb,
                        collectives_s=n * self.collectives_s(1), hops_s=self._hops_s(),
                        embedding_s=self.embed_lookup_s, lm_head_s=self.lm_head_s, host_s=self.host_s,
                        energy_j=token_energy_j(self, context))

    def stations_s(self, context: int) -> list[float]:
        """What each resource of the pipeline is busy for with one query's token at `context`:
        every stage's channel group (its blocks' steps, and the DMA hops between them on one
        device; the last stage's also the LM head with `parallel.lm_head: last_stage`), the
        embedding and LM-head units and a switch port (its serialization); the
        pipeline's pace when it is the bottleneck (`cent_serve.timing.pipeline`)."""
        steps: dict[int, float] = {}

        def step(keys: int) -> float:  # a block's step at the context it reads, once a context
            if keys not in steps:
                pim, acc, _ = self.block_cost(keys)
                steps[keys] = pim + self.moe_expected_s + acc * self.mapping.tb + self.collectives_s(1)
            return steps[keys]

        hop = self.local_hop_s(1)  # a stage's blocks' steps: each its own (`key_groups`)
        if self._one_kind:  # every block's step the same: once for all stages (once a context, on the closed form)
            one = step(context)
            stages = [len(s.blocks) * one + (len(s.blocks) - 1) * hop for s in self.mapping.stages]
        else:
            stages = [sum(n * step(keys) for keys, n in self.key_groups(context, s.blocks)) + (len(s.blocks) - 1) * hop
                      for s in self.mapping.stages]
        head = self.lm_head_s
        if self.mapping.lm_head == "last_stage":  # on the last stage's channels: that station holds them
            # from its last block's end through the output's move to the head (the DMA's hop) and the head
            stages[-1], head = stages[-1] + hop + head, 0.0
        return [*stages, self.embed_lookup_s, head, self.hop_s(1) - self.port.latency_s]

    @property
    def switch_hop_share(self) -> float:
        """The share of the blocks' output hops that cross the switch: all of them when local hops
        are charged as switch hops (`fabric.charge_local_hops`), else the mapping's units less one
        over the blocks (the rest stay on a device, moved by its DMA engine)."""
        if self.fabric.charge_local_hops:
            return 1.0
        return (self.mapping.num_units - 1) / self.model.num_layers

    @property
    def _hops_alike(self) -> bool:
        """Every block's output hop costs the same (`hop_s`): local hops charged as switch hops, the
        same multicast to whichever devices."""
        return self.fabric.charge_local_hops and (self.fabric.multicast or self.mapping.tp == 1)

    def _hops_s(self) -> float:
        """A token's hops: every block's output moves on, over the switch between devices (the
        units of the mapping less one) and on a device otherwise (`local_hop_s`)."""
        n = self.model.num_layers
        if self._hops_alike:
            return n * self.hop_s(1)
        cross = self.mapping.num_units - 1
        return cross * self.hop_s(1) + (n - cross) * self.local_hop_s(1)

    @property
    def block_cxl_s(self) -> float:
        """Per-block communication of one token: its collectives and its output hop (with local hops
        on the DMA engine, `fabric.charge_local_hops` false, a block's mean share of the token's
        hops, so N blocks of `block_s` add up to the token's hops as `token_cost` charges them)."""
        hop = self.hop_s(1) if self._hops_alike else self._hops_s() / self.model.num_layers
        return self.collectives_s(1) + hop

    def block_s(self, context: int) -> float:
        """One block's step for one token in the closed form: PIM + CXL + ACC x tb."""
        return (self.block_pim_s(context) + self.moe_expected_s + self.block_cxl_s
                + self.block_acc_s(context) * self.mapping.tb)

    def token_s(self, context: int) -> float:
        """The closed form's token latency: `token_cost(context).total_s`."""
        return self.token_cost(context).total_s

    def sampled_s(self, ready_s: np.ndarray) -> np.ndarray:
        """When the host has sampled the tokens whose logits exist at `ready_s`."""
        return ready_s + self.host_s
