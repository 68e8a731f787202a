"""`CentConfig`, the whole tree, with its cross-section checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cent_serve.config.checks import _check
from cent_serve.config.fields import _SECTION_FIX, _sections, size_text, use_tree
from cent_serve.config.gpu import GpuConfig
from cent_serve.config.hardware import DeviceConfig, FabricConfig
from cent_serve.config.model import ModelConfig, rope_numerics_refusal
from cent_serve.config.runtime import ParallelConfig, SchedulerConfig, ServerConfig


@dataclass
class CentConfig:
    """The whole resolved configuration; written next to every result.

    Every number in it is finite and >= 0, and > 0 where 0 would make no device or be divided by
    (counts, sizes, clocks, bandwidths, gpu.tco_per_gpu): NaN, infinities and negative values are
    refused, naming the field, the value and the fix. A section takes fields, never a value
    (`--set device=5` is refused). The model is chosen whole, never relabelled: with `--model
    NAME_OR_DIR`, or in YAML with `model: {name: PRESET}` or `model: {checkpoint: DIR}` (the
    checkpoint's config.json, as `--model DIR` loads it; fields given beside either override it; a
    relative DIR in a config file is the file's directory's, as docker-compose reads paths, while
    `--model DIR` and a config read from stdin are the current directory's; a config cent writes
    records it absolute);
    a name that is no preset is refused unless the section gives that model's whole shape beside it
    (`hidden_size`, `intermediate_size`, `num_layers`, `num_heads`, `num_kv_heads`, `vocab_size`: a
    model of one's own; the fields it leaves out take the defaults below), and so are `--set
    model.name` and `--set model.checkpoint` (but `--set model.checkpoint=none`: the same model with
    seeded random weights)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    device: DeviceConfig = field(default_factory=DeviceConfig)
    """The CENT device."""
    fabric: FabricConfig = field(default_factory=FabricConfig)
    """The CXL switch."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """The mapping."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Batching."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """HTTP and Ray."""
    gpu: GpuConfig = field(default_factory=GpuConfig)
    """GPUs in place of the CENT devices when gpu.count > 0 (`--hardware gpu:KIND:N`)."""
    numerics: str = "auto"
    """`full` (real weights and math), `off` (timing only), `auto` (full for a checkpoint's weights up to 1B
    parameters, whose text is the model's, and for a preset's random weights up to 1 GiB of float32, about
    268M parameters: the host holds them once here and once more in each device actor, for text that is
    noise; a checkpoint directory with only its config.json, or a rotary scaling the reference model only
    times (`longrope` without its factor lists), runs timing only)."""
    executor: str = "local"
    """Where the devices run: `local` (all in this process) or `ray` (each device a Ray actor, the
    switch a fabric actor). `cent serve` picks `ray` unless given --local."""

    def __post_init__(self) -> None:
        for name, cls in _sections(CentConfig).items():
            section = getattr(self, name)
            _check(isinstance(section, cls), name, section, _SECTION_FIX.format(name=name, leaf=name))
        _check(self.numerics in ("full", "off", "auto"), "numerics", self.numerics,
               "use 'full', 'off' or 'auto'")
        _check(self.executor in ("local", "ray"), "executor", self.executor, "use 'local' or 'ray'")
        if not self.on_gpus:  # the CENT mapping; GPUs map by gpu.tp and gpu.pp (checked by their timer)
            self._check_mapping()

    def _check_mapping(self) -> None:
        n = self.model.num_layers
        p = self.parallel
        _check(p.pp <= n, "parallel.pp", p.pp,
               f"use at most model.num_layers={n} stages (0 = one stage per block)")
        if p.pp != 0 and p.pp != n:
            _check(p.pp * p.tp <= p.num_devices, "parallel.pp", p.pp,
                   f"pp x tp = {p.pp * p.tp} exceeds parallel.num_devices={p.num_devices}; "
                   f"use pp x tp <= {p.num_devices}" + (f" (pp <= {p.num_devices // p.tp} at tp {p.tp})" if p.tp > 1 else ""))
        if p.tp > 1:
            _check(p.pp != 0, "parallel.pp", p.pp,
                   "with tp > 1 set pp explicitly (devices / tp stages, CENT's hybrid mapping)")

    @property
    def on_gpus(self) -> bool:
        """Whether the hardware is GPUs (gpu.count > 0), not CENT devices."""
        return self.gpu.count > 0

    @property
    def hardware(self) -> str:
        """`cent` or `gpu:KIND:N`."""
        return f"gpu:{self.gpu.kind}:{self.gpu.count}" if self.on_gpus else "cent"

    @property
    def kv_tokens_cap(self) -> int | None:
        """The KV a windowed block keeps of a sequence (None: no block has a window): the window, a
        step's tokens (`scheduler.prefill_chunk_tokens`; on GPUs `gpu.max_num_batched_tokens`) and one
        block for the alignment; the blocks of older positions are reused as it moves on. A
        full-attention block (`model.layer_types`) keeps every token (`cent_serve.kv_room`)."""
        m, sc = self.model, self.scheduler
        step = self.gpu.num_batched_tokens if self.on_gpus else sc.prefill_chunk_tokens
        return m.sliding_window + step + sc.kv_block_tokens if any(m.block_windows) else None

    @property
    def resolved_numerics(self) -> str:
        """`full` or `off` once `auto` is resolved (a checkpoint's weights up to `AUTO_FULL_PARAMS`, a
        preset's random ones up to `AUTO_FULL_BYTES` of float32)."""
        return self.numerics_why[0]

    @property
    def numerics_why(self) -> tuple[str, str]:
        """(`resolved_numerics`, why: the flag, or what `auto` found), for a start-up line."""
        if self.numerics != "auto":
            return self.numerics, "as set"
        if self.model.checkpoint and not checkpoint_has_weights(self.model.checkpoint):
            return "off", "auto: the checkpoint has no weight files"  # a config.json alone: its shape, timed
        if rope_numerics_refusal(self.model):  # full numerics would refuse it
            return "off", (f"auto: model.rope_type={self.model.rope_type!r} without its factors is timed, not "
                           "computed; the text is a stand-in, the times are the model's")
        n = self.model.param_count()
        if self.model.checkpoint:  # its own weights (checked above): full numerics give the model's text
            if n <= AUTO_FULL_PARAMS:
                return "full", "auto: a checkpoint's weights of 1B parameters or fewer"
            return "off", (f"auto: a checkpoint's weights of {n / 1e9:.1f}B parameters, over the 1B auto computes; "
                           "the text is a stand-in, the times are the model's; --numerics full computes it")
        held = n * 4  # full numerics' weights are float32 (`model.weights`)
        if held <= AUTO_FULL_BYTES:
            return "full", f"auto: {size_text(held)} of float32 random weights, at most the 1 GiB auto computes"
        # in one process (the local executor, modelled GPUs) the devices read the host's copy
        copies = ", as each device actor holds a copy" if self.executor == "ray" and not self.on_gpus else ""
        return "off", (f"auto: {size_text(held)} of float32 random weights, over the 1 GiB auto computes{copies}; "
                       "the text is a stand-in, the times are the model's; --numerics full computes it")


use_tree(CentConfig)  # the paths and defaults `fields` names in its errors are this tree's


AUTO_FULL_BYTES = 2**30
"""`numerics: auto` computes a preset whose float32 random weights are at most this (about 268M
parameters: tiny, 21.6 MiB), and times one above it. Full numerics holds the float32 weights on this
machine once in this process and once more in each device actor on Ray (`cent serve`'s default: 9 GiB on
its 8 devices at this line, a laptop's memory), and buys only the text, noise from seeded random
weights; the simulated times are the same either way. gemma-3-1b (999,885,952 parameters, 3.72 GiB) is
timed: `cent serve` held 8 copies of it, 29.8 GiB."""

AUTO_FULL_PARAMS = 1_000_000_000
"""`numerics: auto` computes a checkpoint's own weights up to this many parameters: there full numerics
give the model's real text, worth the memory (`preflight` refuses what this machine cannot hold)."""


WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "*.pt", "*.pth", "*.gguf")
"""Files that hold a checkpoint's weights in some format (only safetensors load: `weights.py`)."""


def checkpoint_has_weights(directory: str | Path) -> bool:
    """Whether a checkpoint directory holds weight files of any format, not a config.json alone (a
    pytorch_model.bin is weights: loading it is refused by name, rather than timed silently)."""
    return any(next(Path(directory).glob(pattern), None) is not None for pattern in WEIGHT_FILES)
