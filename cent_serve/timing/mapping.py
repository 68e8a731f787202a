"""From (model, devices, pp, tp) to stages, channels and devices (docs/hardware_model.md section 3).

Two kinds of mapping:

- **pipeline** (pp == N blocks, tp == 1): every block is its own stage;
  blocks_per_device = cdiv(N, devices) blocks share a device, each on its
  own group of cpb = 32 // blocks_per_device channels, running in lockstep.
- **tensor / hybrid** (pp stages of tp devices): a stage is a run of
  consecutive blocks on all 32 channels of its tp devices. When N is not a
  multiple of pp, the first N mod pp stages get one block more (the
  imbalance then shows in the emulated pipeline, not in the closed form).

Lanes = pp queries in flight, one per stage (the paper's batch).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cent_serve.config import DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig
from cent_serve.config.fields import size_text
from cent_serve.kv_room import KVRoom, seq_blocks
from cent_serve.timing.pim import BlockGeometry, cdiv


@dataclass(frozen=True)
class Stage:
    """A run of consecutive blocks on a set of devices."""

    index: int
    blocks: tuple[int, ...]
    device_ids: tuple[int, ...]
    """The tp devices the stage spans (one device in pure pipeline)."""
    channel_group: int
    """Which channel group of its device(s) the stage occupies (pure pipeline), else 0."""


@dataclass(frozen=True)
class Mapping:
    """The resolved placement of a model on CENT devices."""

    mode: str
    """How blocks use channels: 'pipeline' (one block per stage, several stages per device) or
    'tensor' (every stage on whole devices, pp 8 x tp 1 too); `parallelism` is what a reader calls it."""
    num_devices: int
    pp: int
    tp: int
    stages: tuple[Stage, ...]
    blocks_per_device: int
    channels_per_block: int
    num_layers: int
    banks_per_channel: int = 16
    """The device's banks per channel (`device.banks_per_channel`)."""
    lm_head: str = "unit"
    """Where the LM head runs (`parallel.lm_head`): a unit of its own, or the last stage's channels."""

    @property
    def tb(self) -> int:
        """Blocks sharing a device's DMA and accelerator (1 outside pure pipeline)."""
        return self.blocks_per_device if self.mode == "pipeline" else 1

    @property
    def devices_used(self) -> int:
        return len({d for s in self.stages for d in s.device_ids})

    @property
    def parallelism(self) -> str:
        """pipeline, tensor, hybrid or one device (`parallelism`)."""
        return parallelism(self.pp, self.tp)

    @property
    def replicas(self) -> int:
        """Data-parallel copies of the mapping the devices hold (the serving engine runs one per
        copy; the spare devices, fewer than a copy needs, stay idle)."""
        return max(1, self.num_devices // self.devices_used)

    @property
    def lanes(self) -> int:
        """Lanes of a replica: the queries in flight in the pipeline, one per stage (the paper's
        batch; each lane holds up to `scheduler.max_seqs_per_stage` sequences)."""
        return self.pp

    @property
    def geometry(self) -> BlockGeometry:
        return BlockGeometry(cpb=self.channels_per_block, tb=self.tb, tp=self.tp, banks_per_channel=self.banks_per_channel)

    @property
    def num_units(self) -> int:
        """Groups of devices a token visits in turn (consecutive stages on the same devices are
        one): a token crosses the switch between units, num_units - 1 times."""
        return 1 + sum(a.device_ids != b.device_ids for a, b in zip(self.stages, self.stages[1:]))

    def stages_on_device(self, device_id: int) -> list[Stage]:
        return [s for s in self.stages if device_id in s.device_ids]

    def describe(self) -> str:
        if self.mode == "pipeline":
            return (f"pipeline: {counted(self.pp, 'stage')} of 1 block, {counted(self.blocks_per_device, 'block')}/device "
                    f"on {counted(self.channels_per_block, 'channel')} each, {counted(self.devices_used, 'device')} used")
        return (f"{parallelism(self.pp, self.tp)}: {counted(self.pp, 'stage')} x tp {self.tp}, "
                f"{counted(cdiv(self.num_layers, self.pp), 'block')}/stage, {counted(self.devices_used, 'device')} used")


def counted(n: int, noun: str) -> str:
    """`1 device`, `8 devices`."""
    return f"{n} {noun}{'s' * (n != 1)}"


def parallelism(pp: int, tp: int) -> str:
    """What a mapping is to a reader: `pipeline` (tp 1, whether a stage holds one block or several),
    `tensor` (one stage) or `hybrid` (the mapping's own `mode` says only how blocks use channels:
    `tensor` for every stage of whole devices, pp 8 x tp 1 too)."""
    if tp == 1:
        return "one device" if pp == 1 else "pipeline"  # pp 0: the config's "one stage a block"
    return "tensor" if pp == 1 else "hybrid"


def resolve_mapping(m: ModelConfig, p: ParallelConfig, dev: DeviceConfig) -> Mapping:
    """Place model `m` on `p.num_devices` devices as `p.pp` stages of `p.tp` devices."""
    n = m.num_layers
    pp = p.pp or n
    if pp == n and p.tp == 1:
        bpd = cdiv(n, p.num_devices)
        if bpd > dev.num_channels:
            raise ValueError(f"parallel.num_devices={p.num_devices} is too few for {n} blocks in pure "
                             f"pipeline: a device has {dev.num_channels} channels (device.num_channels), one "
                             f"for a block at least, so use at least {cdiv(n, dev.num_channels)} devices")
        cpb = dev.num_channels // bpd
        stages = tuple(Stage(index=i, blocks=(i,), device_ids=(i // bpd,), channel_group=i % bpd)
                       for i in range(n))
        return Mapping("pipeline", p.num_devices, n, 1, stages, bpd, cpb, n, dev.banks_per_channel, p.lm_head)
    if pp > n:
        raise ValueError(f"parallel.pp={pp} exceeds model.num_layers={n}: use at most {n} stages")
    if pp * p.tp > p.num_devices:
        raise ValueError(f"parallel.pp x parallel.tp = {pp * p.tp} exceeds parallel.num_devices="
                         f"{p.num_devices}: use pp <= {p.num_devices // p.tp}")
    base, extra = divmod(n, pp)
    stages, first = [], 0
    for i in range(pp):
        count = base + (1 if i < extra else 0)
        devices = tuple(range(i * p.tp, (i + 1) * p.tp))
        stages.append(Stage(index=i, blocks=tuple(range(first, first + count)), device_ids=devices,
                            channel_group=0))
        first += count
    return Mapping("tensor", p.num_devices, pp, p.tp, tuple(stages), cdiv(n, pp), dev.num_channels, n,
                   dev.banks_per_channel, p.lm_head)


# ----------------------------------------------------------------------------- capacity

DEFAULT_BLOCK_TOKENS = SchedulerConfig.kv_block_tokens
"""`scheduler.kv_block_tokens`' default, for `check_capacity`'s callers that have no config."""


def device_weight_bytes(m: ModelConfig, mp: Mapping, device_id: int, element_bytes: int = 2) -> int:
    """Weight bytes a device stores: its blocks' slices plus embedding / LM head shares, each weight
    `element_bytes` wide (`device.bytes_per_element`: 2, bf16, CENT's data type)."""
    stages = mp.stages_on_device(device_id)
    blocks = sum(len(s.blocks) for s in stages)
    per_block = m.block_param_count() * element_bytes / mp.tp
    if m.is_moe and stages:  # attention and a shared expert split, the router and the shared expert's gate
        # (D) on every device, whole experts e with e mod tp == rank
        rank = stages[0].device_ids.index(device_id)
        local = len(range(rank, m.num_experts, mp.tp))
        gate = m.hidden_size if m.shared_expert_intermediate_size else 0
        per_block = (m.attention_param_count() / mp.tp + m.num_experts * m.hidden_size + gate
                     + local * m.expert_param_count() + (m.shared_expert_param_count() - gate) / mp.tp) * element_bytes
    table = m.vocab_size * m.hidden_size * element_bytes / mp.tp
    extra = 0.0
    if any(s.index == 0 for s in stages):
        extra += table  # embedding on the first stage
    if any(s.index == mp.pp - 1 for s in stages):
        extra += table if not m.tie_word_embeddings or mp.pp > 1 else 0.0  # LM head on the last
    return int(blocks * per_block + extra)


def device_kv_bytes_per_token(m: ModelConfig, mp: Mapping, device_id: int, element_bytes: int = 2) -> int:
    """KV bytes per token of context on a device (K and V of the KV heads it holds, each element
    `element_bytes` wide: `DeviceConfig.kv_element_bytes`, `device.kv_bytes_per_element` or else
    `device.bytes_per_element`)."""
    blocks = sum(len(s.blocks) for s in mp.stages_on_device(device_id))
    kv_heads = max(1, -(-m.num_kv_heads // mp.tp))  # replicated when tp exceeds the KV heads
    return 2 * kv_heads * m.head_dim * element_bytes * blocks


def device_block_kinds(m: ModelConfig, mp: Mapping, device_id: int) -> tuple[int, int]:
    """(full-attention blocks, windowed blocks) a device holds (`ModelConfig.block_window`)."""
    blocks = [b for s in mp.stages_on_device(device_id) for b in s.blocks]
    windowed = sum(1 for b in blocks if m.block_window(b))
    return len(blocks) - windowed, windowed


def device_kv_blocks(m: ModelConfig, mp: Mapping, dev: DeviceConfig, block_tokens: int) -> Iterator[tuple[int, int, int, int]]:
    """Per device of a replica, in order: (device, full-attention blocks, windowed blocks, the KV blocks of
    `block_tokens` tokens of every block it holds that fit beside its weight shard), as its paged cache
    allocates them (`device_worker.kv_cache.PagedKVCache`): what the scheduler admits against (`kv_room`)
    and the preflight checks (`check_capacity`). Counted as asked, so a check stops at its first refusal
    (`fewest_devices` tries many counts that do not hold)."""
    for d in sorted({d for s in mp.stages for d in s.device_ids}):
        yield (d, *device_block_kinds(m, mp, d), device_num_kv_blocks(m, mp, dev, d, block_tokens))


def device_num_kv_blocks(m: ModelConfig, mp: Mapping, dev: DeviceConfig, device_id: int, block_tokens: int) -> int:
    """The KV blocks of `block_tokens` tokens of every block a device holds that fit beside its weight shard:
    the size of its paged cache (`device_worker.worker.DeviceWorker.kv`), one device's `device_kv_blocks`."""
    per_token = device_kv_bytes_per_token(m, mp, device_id, dev.kv_element_bytes)
    free = dev.capacity_bytes - device_weight_bytes(m, mp, device_id, dev.bytes_per_element)
    return max(0, free) // (block_tokens * per_token)


def kv_room(m: ModelConfig, mp: Mapping, dev: DeviceConfig, block_tokens: int, window_tokens: int | None) -> KVRoom:
    """What a replica's devices hold of KV (`device_kv_blocks`), a windowed block keeping `window_tokens`
    of a sequence (`CentConfig.kv_tokens_cap`): one row per kind of device (`cent_serve.kv_room`)."""
    return KVRoom.of(block_tokens, window_tokens, (kinds for _, *kinds in device_kv_blocks(m, mp, dev, block_tokens)))


class CapacityError(ValueError):
    """A device does not hold what it must; `max_batch`: the most queries that fit at the context
    (None when the weights alone do not fit: the message says what does not fit, and the caller, which
    knows what device counts and mappings hold it, words the fix: `preflight.check_devices_hold`)."""

    def __init__(self, message: str, max_batch: int | None = None) -> None:
        super().__init__(message)
        self.max_batch = max_batch


def check_capacity(m: ModelConfig, mp: Mapping, dev: DeviceConfig, context: int,
                   batch: int | None = None, window_tokens: int | None = None,
                   block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
    """Weights plus the KV cache of `batch` queries at `context` tokens must fit every device, in
    whole KV blocks of `block_tokens` tokens (`scheduler.kv_block_tokens`), a windowed block keeping
    `window_tokens` of each at most (`CentConfig.kv_tokens_cap`; None: all): exactly what the scheduler
    admits on an empty replica (`KVRoom.fits` of the device's own count, `device_kv_blocks`).

    Raises `CapacityError` naming the device and what does not fit: the weight shard alone, or the
    weights and the KV cache with the largest context (at this batch) and batch (at this context)
    that would.
    """
    batch = mp.lanes if batch is None else batch
    keys = -(-context // block_tokens)  # blocks a full-attention block's keys fill
    cap_blocks = None if window_tokens is None else -(-window_tokens // block_tokens)
    for d, full, windowed, blocks in device_kv_blocks(m, mp, dev, block_tokens):
        if batch * seq_blocks(keys, full, windowed, cap_blocks) <= blocks:  # KVRoom.fits of this device alone
            continue  # (`fewest_devices` asks of many counts: no KVRoom built for a device that holds them)
        room = KVRoom.of(block_tokens, window_tokens, [(full, windowed, blocks)])
        w = device_weight_bytes(m, mp, d, dev.bytes_per_element)
        cap = size_text(dev.capacity_bytes)
        if w > dev.capacity_bytes:  # a shard just over reads "16.00 GiB of the device's 16.00 GiB": say by how much
            over = f" ({size_text(w - dev.capacity_bytes)} too much)" if size_text(w) == cap else ""
            raise CapacityError(f"device {d}: its weight shard alone needs {size_text(w)} of the device's {cap}{over}")
        need, _ = room.tightest(context, batch)
        block_bytes = block_tokens * device_kv_bytes_per_token(m, mp, d, dev.kv_element_bytes)
        max_batch = room.most_sequences(context)
        raise CapacityError(f"device {d}: weights {size_text(w)} + KV cache of {batch} quer{'y' if batch == 1 else 'ies'} x "
                            f"{context} tokens ({need} blocks of {block_tokens} tokens, {size_text(need * block_bytes)}) "
                            f"exceed the device's {cap} ({blocks} blocks beside the weights): the largest context at "
                            f"batch {batch} is {room.longest(batch)}, the largest batch at context {context} "
                            f"is {max_batch}", max_batch)


CAPACITY_FIELDS = ("device.num_channels x banks_per_channel x rows_per_bank x row_elements x bytes_per_element")
"""What a device's capacity is made of (`DeviceConfig.capacity_bytes`), for the capacity errors."""


def expert_placement(m: ModelConfig, mp: Mapping, element_bytes: int = 2) -> dict | None:
    """Where a mixture of experts' experts sit on this mapping (None for a dense model): per rank of a
    stage the experts it holds of each of the stage's blocks, and a sentence that says how they run."""
    if not m.is_moe:
        return None
    tp, n, k = mp.tp, m.num_experts, m.num_experts_per_tok
    ranks = {r: list(range(r, n, tp)) for r in range(tp)}
    expert_mib = m.expert_param_count() * element_bytes / 2**20
    if tp == 1:
        where = (f"all {n} experts of a block on the block's {mp.channels_per_block} channels "
                 f"({mp.geometry.banks_per_device} banks) of its device; a token's {k} experts run there one after "
                 "the other (no dispatch: the token is already there)")
    else:
        idle = [r for r, held in ranks.items() if not held]
        where = (f"expert parallelism over each stage's {tp} devices: rank r holds experts e with e mod {tp} == r "
                 f"({n / tp:.3g} per block per device), each spread over that device's {mp.geometry.banks_per_device} "
                 "banks, the router on every device; a round's block waits for its busiest device (tokens sent to one "
                 "device's experts run one after the other), then one combine (a gather of each device's partial "
                 "sum)" + (f"; ranks {idle} hold no expert" if idle else ""))
    if m.shared_expert_intermediate_size:
        where += (f"; a shared expert of width {m.shared_expert_intermediate_size} "
                  f"({m.shared_expert_param_count() * element_bytes / 2**20:.3g} MiB) that every token runs, "
                  + ("whole on the block's device" if tp == 1 else
                     f"split over the stage's {tp} devices as a dense MLP (its gate on every device, as the router)"))
    return dict(num_experts=n, top_k=k, expert_mib=expert_mib, experts_by_rank=ranks, describe=where,
                weights_per_device_gib={d: device_weight_bytes(m, mp, d, element_bytes) / 2**30
                                        for d in sorted({d for s in mp.stages[:1] for d in s.device_ids})})
