"""The GPU side of a comparison (`--hardware gpu:KIND:N`): `GpuConfig` and the flag's parser."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from cent_serve.config.checks import _check, _check_numbers


GPU_ATTENTION_READS = ("kv_heads", "query_heads")

CUSTOM_FLOORS = {"hbm_bytes_per_s": (1e9, "bytes a second: 4.8 TB/s is 4.8e12"),
                 "peak_flops": (1e12, "FLOP/s: 989 TFLOP/s is 989e12"),
                 "memory_bytes": (1e9, "bytes: 141 GB is 141e9"),
                 "link_bytes_per_s": (1e9, "bytes a second in one direction: 450 GB/s is 450e9"),
                 "board_power_w": (10.0, "watts: 700 W is 700")}
"""A kind of one's own's figures, each with the least a GPU's can be and the unit it is given in: a
figure under it was given in another unit (4.8 for 4.8 TB/s), and is refused saying which."""


@dataclass
class GpuKindConfig:
    """A GPU kind of one's own, which `--hardware gpu:NAME:N` (`cent bench compare --gpu NAME:N`) runs
    beside the shipped kinds: the datasheet figures the model reads, every one required once `name` is
    set. What no figure sets is borrowed from the A100 SXM4 (docs/gpu_model.md section 6): the two
    efficiency constants unless `mem_efficiency` / `compute_efficiency` give them, and the host's times
    (`gpu.layer_overhead_s`, `gpu.allreduce_latency_s`, set from the CENT artifact's A100 runs) unless set;
    every run of the kind says what it borrows. Its cost is `gpu.tco_per_gpu`'s."""

    name: str = ""
    """The kind's name, as `--hardware gpu:NAME:N` gives it (letters, digits, `.`, `_`, `-`; not a
    shipped kind's); "" = none (the figures below unset)."""
    hbm_bytes_per_s: float = 0.0
    """HBM bandwidth, bytes a second (the datasheet's memory bandwidth: 4.8 TB/s = 4.8e12)."""
    peak_flops: float = 0.0
    """Dense bf16 tensor-core peak, FLOP/s: without sparsity (a datasheet's "with sparsity" figure halved)."""
    memory_bytes: float = 0.0
    """GPU memory, bytes (141 GB = 141e9); a replica's weights and KV take `gpu.memory_utilization` of it.
    From 70 GiB up (and no `a100` in the name) vLLM's larger batching defaults apply, as vLLM chooses them."""
    link_bytes_per_s: float = 0.0
    """One direction of the link a tensor-parallel all-reduce crosses, bytes a second (NVLink 4: 450e9,
    half the 900 GB/s a datasheet gives both ways; PCIe 5.0 x16: 64e9, twice a100-80gb-pcie's PCIe 4.0 x16)."""
    link: str = ""
    """The link's name, for the report (e.g. `NVLink 4`)."""
    board_power_w: float = 0.0
    """Board power (TDP), W."""
    serving_power_w: float = 0.0
    """The board's draw while serving, W, if measured (at most board_power_w); 0 = the A100 SXM4's measured
    share of its TDP, 293 / 400 of board_power_w."""
    mem_efficiency: float = 0.0
    """The share of hbm_bytes_per_s the kernels reach, in (0, 1] (0.8 for 80%), measured on this GPU or
    assumed (a run's figures then rest on the assumption); 0 = the A100 SXM4's, 0.955."""
    compute_efficiency: float = 0.0
    """The share of peak_flops the kernels reach, in (0, 1], measured on this GPU or assumed; 0 = the
    A100 SXM4's, 0.526."""

    _fixes = {k: f"use a share in (0, 1] of the {peak} the kernels reach (0.8 for 80%), or 0 for the A100 SXM4's"
              for k, peak in (("mem_efficiency", "HBM bandwidth"), ("compute_efficiency", "bf16 peak"))}
    """Fixes worded for their field (`_number_fix`)."""

    def __post_init__(self) -> None:
        from cent_serve.gpu.kinds import EFFICIENCIES, GPU_KINDS
        _check_numbers(self, "gpu.custom")
        figures = [f.name for f in fields(self) if f.name != "name"]
        if not self.name:
            given = [f"gpu.custom.{k}" for k in figures if getattr(self, k)]
            _check(not given, "gpu.custom.name", self.name,
                   f"{', '.join(given)} set without a name: name the GPU they describe (e.g. --set "
                   "gpu.custom.name=h200-141gb) and run it with --hardware gpu:NAME:N")
            return
        _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name)), "gpu.custom.name", self.name,
               "use letters, digits, '.', '_' and '-' (it is the KIND of gpu:KIND:N), e.g. h200-141gb")
        _check(self.name not in GPU_KINDS, "gpu.custom.name", self.name,
               f"{self.name} is a shipped kind: run it without gpu.custom, or name yours otherwise "
               f"(e.g. {self.name}-mine)")
        for key in figures:
            value = getattr(self, key)
            if key == "serving_power_w":
                _check(value <= self.board_power_w, f"gpu.custom.{key}", value,
                       f"use at most gpu.custom.board_power_w={self.board_power_w:g} (the board's TDP), or 0 for "
                       "the A100 SXM4's share of it")
            elif key in EFFICIENCIES:  # optional: 0 borrows the A100 SXM4's
                _check(value <= 1, f"gpu.custom.{key}", value, self._fixes[key])
            elif key == "link":
                _check(bool(value.strip()), f"gpu.custom.{key}", value,
                       f"name the link tensor-parallel all-reduces cross for {self.name} (e.g. NVLink 4, PCIe 5.0 x16)")
            else:
                floor, unit = CUSTOM_FLOORS[key]
                _check(value >= floor, f"gpu.custom.{key}", value,
                       f"give {self.name}'s figure in {unit}" if value else
                       f"{self.name} needs it (every figure of a kind of one's own is required): give it in {unit}")

    def kind(self):
        """The `GpuKind` these figures make (`cent_serve.gpu.kinds.custom_kind`)."""
        from cent_serve.gpu.kinds import custom_kind
        return custom_kind(self.name, self.hbm_bytes_per_s, self.peak_flops, self.memory_bytes,
                           self.link_bytes_per_s, self.link, self.board_power_w, self.serving_power_w,
                           self.mem_efficiency, self.compute_efficiency)

    @property
    def borrowed_efficiencies(self) -> tuple[str, ...]:
        """The efficiency constants (`gpu.kinds.EFFICIENCIES`' keys) not given here: the kind borrows the A100 SXM4's."""
        from cent_serve.gpu.kinds import EFFICIENCIES
        return tuple(k for k in EFFICIENCIES if not getattr(self, k))


@dataclass
class GpuConfig:
    """GPUs in place of CENT devices (`--hardware gpu:KIND:N`; docs/gpu_model.md). `count` 0 means
    the hardware is CENT and nothing here is used."""

    kind: str = "a100-80gb"
    """`a100-80gb` (SXM4), `a100-80gb-pcie` or `h100-80gb` (SXM5): cent_serve/gpu/kinds.py; or
    gpu.custom.name, a kind of one's own."""
    count: int = 0
    """GPUs; 0 = CENT devices, not GPUs."""
    tp: int = 0
    """GPUs per tensor-parallel group (0 = count / pp); count / (tp x pp) data-parallel replicas."""
    pp: int = 1
    """Pipeline stages of tp GPUs each."""
    attention_reads: str = "kv_heads"
    """How attention reads the KV cache: `kv_heads`, once per KV head (paged / flash kernels, as
    vLLM serves), or `query_heads`, once per query head (transformers' eager attention repeats
    K and V for every query head of a group; the CENT artifact's GPU measurements fit it)."""
    memory_utilization: float = 0.9
    """Share of a GPU's memory for weights and KV; the rest is the reserve for activations and
    the runtime (vLLM's gpu_memory_utilization)."""
    max_num_seqs: int = 0
    """Sequences in a step at most (vLLM's max_num_seqs); 0 = vLLM's default for the kind, as its
    OpenAI server takes it (256 on A100s, 1024 on H100s)."""
    max_num_batched_tokens: int = 0
    """Tokens in a step at most: decodes first, then prefill chunks fill the rest (vLLM's chunked
    prefill); 0 = vLLM's default for the kind (2048 on A100s, 8192 on H100s)."""
    layer_overhead_s: float = 143e-6
    """Host time a step spends per layer outside the kernels' work (kernel launches, Python):
    set from the artifact's Llama2-7B latency at batch 1 (tests/data/calibrate_gpu.py)."""
    allreduce_latency_s: float = 30e-6
    """Fixed latency of one tensor-parallel all-reduce (two per layer), beside its bytes over the
    link: chosen, not fitted to the 7B data (docs/gpu_model.md says how)."""
    custom: GpuKindConfig = field(default_factory=GpuKindConfig)
    """A GPU kind of one's own, run as `gpu:NAME:N` with NAME its `name`."""
    tco_per_gpu: float | None = None
    """A GPU's cost in the artifact's TCO units (A100: 1.76 / 4 against 0.73 / 32 CENT devices), a
    positive number; None = the kind's own (none for the H100: tokens per dollar are then not reported).
    With kind a100-80gb it also prices the paper's A100s in CENT's tokens per dollar against them
    (`tokens_per_dollar_ratio`); set beside another kind it is that GPU's price, not theirs."""

    _positive = frozenset({"pp", "memory_utilization", "tco_per_gpu"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""
    _fixes = {"tco_per_gpu": "use a positive cost (a zero cost makes tokens per dollar infinite), or leave it unset"}
    """Fixes worded for their field."""

    def __post_init__(self) -> None:
        _check(not kind_problem(self.kind, self.custom.name), "gpu.kind", self.kind, f"use {KINDS_TEXT}")
        _check(isinstance(self.count, int) and self.count >= 0, "gpu.count", self.count,
               "use a number of GPUs (0 = CENT devices)")
        _check(isinstance(self.pp, int) and self.pp >= 1, "gpu.pp", self.pp, "use at least one stage")
        _check(isinstance(self.tp, int) and self.tp >= 0, "gpu.tp", self.tp, "use GPUs per stage (0 = count / pp)")
        if self.count:
            # with tp 0 (count / pp) the pipeline is what does not divide: name the field that was set
            field, value = ("gpu.tp", self.tp) if self.tp else ("gpu.pp", self.pp)
            _check(self.count % (self.pp * self.group_tp) == 0, field, value,
                   f"tp x pp = {self.pp * self.group_tp} must divide gpu.count={self.count}")
        _check(self.attention_reads in GPU_ATTENTION_READS, "gpu.attention_reads", self.attention_reads,
               "use " + " or ".join(map(repr, GPU_ATTENTION_READS)))
        _check(0 < self.memory_utilization <= 1, "gpu.memory_utilization", self.memory_utilization,
               "use a share in (0, 1]")
        _check(isinstance(self.max_num_seqs, int) and self.max_num_seqs >= 0, "gpu.max_num_seqs", self.max_num_seqs,
               "use a positive integer (0 = vLLM's default for the kind)")
        _check(isinstance(self.max_num_batched_tokens, int) and self.max_num_batched_tokens >= 0,
               "gpu.max_num_batched_tokens", self.max_num_batched_tokens,
               "use a positive integer (0 = vLLM's default for the kind)")
        if self.max_num_batched_tokens:  # the budget was set: it is what is short
            _check(self.num_batched_tokens >= self.num_seqs, "gpu.max_num_batched_tokens",
                   self.max_num_batched_tokens, f"use at least {self.num_seqs} tokens, the sequences a step may hold "
                   "(gpu.max_num_seqs: a decode step of every sequence must fit), as vLLM requires")
        else:  # the kind's budget: the sequences set are too many for it
            _check(self.num_batched_tokens >= self.num_seqs, "gpu.max_num_seqs", self.max_num_seqs,
                   f"use at most {self.num_batched_tokens}, {self.kind}'s default gpu.max_num_batched_tokens (a "
                   "decode step of every sequence must fit, as vLLM requires), or raise that too")
        _check(self.layer_overhead_s >= 0, "gpu.layer_overhead_s", self.layer_overhead_s, "use seconds >= 0")
        _check(self.allreduce_latency_s >= 0, "gpu.allreduce_latency_s", self.allreduce_latency_s,
               "use seconds >= 0")
        _check_numbers(self, "gpu")

    @property
    def spec(self):
        """The kind's `GpuKind`: a shipped one (`cent_serve.gpu.kinds.GPU_KINDS`), or gpu.custom's."""
        from cent_serve.gpu.kinds import GPU_KINDS
        return GPU_KINDS[self.kind] if self.kind in GPU_KINDS else self.custom.kind()

    @property
    def is_custom(self) -> bool:
        """Whether the kind is gpu.custom's, not a shipped one."""
        return bool(self.custom.name) and self.kind == self.custom.name

    @property
    def borrowed_note(self) -> str | None:
        """The line on what the kind borrows from the A100 SXM4 (`cent_serve.gpu.kinds.borrowed_note`), None
        for the A100 SXM4 itself."""
        from cent_serve.gpu.kinds import borrowed_note
        if not self.is_custom:
            return borrowed_note(self.spec, False)
        return borrowed_note(self.spec, True, not self.custom.serving_power_w, self.custom.borrowed_efficiencies,
                             self.borrowed_host_times)

    @property
    def borrowed_host_times(self) -> tuple[str, ...]:
        """The host's times (`gpu.kinds.HOST_TIMES`) left at their default, the A100 SXM4's: what a kind of one's
        own borrows of them (a value set equal to the default is the A100 SXM4's too)."""
        from cent_serve.gpu.kinds import HOST_TIMES
        return tuple(f.name for f in fields(self) if f.name in HOST_TIMES and getattr(self, f.name) == f.default)

    @property
    def num_seqs(self) -> int:
        """`max_num_seqs`, resolved (0: vLLM's default for the kind)."""
        return self.max_num_seqs or self.spec.max_num_seqs

    @property
    def num_batched_tokens(self) -> int:
        """`max_num_batched_tokens`, resolved (0: vLLM's default for the kind)."""
        return self.max_num_batched_tokens or self.spec.max_num_batched_tokens

    @property
    def group_tp(self) -> int:
        """GPUs per stage, resolved."""
        return self.tp or max(1, self.count // self.pp)

    @property
    def replicas(self) -> int:
        return max(1, self.count // (self.group_tp * self.pp))


def _kinds_text() -> str:
    from cent_serve.gpu.kinds import GPU_KINDS
    return f"one of {', '.join(GPU_KINDS)}, or a kind of one's own described in gpu.custom (docs/gpu_model.md)"


KINDS_TEXT = _kinds_text()
"""The kinds a GPU may be, as the fixes name them."""


def kind_problem(kind: str, custom: str = "") -> str:
    """What is wrong with a GPU kind's name, given gpu.custom.name `custom` ("" none), as the start of its
    error ("no GPU kind 'h100': "), or "" when it is a shipped kind or the custom one."""
    from cent_serve.gpu.kinds import GPU_KINDS
    if kind in GPU_KINDS or (custom and kind == custom):
        return ""
    return f"no GPU kind {kind!r}" + (f" (gpu.custom.name is {custom!r})" if custom else "") + ": "


def gpu_spec_problem(kind: str, count: str, custom: str = "") -> str:
    """What is wrong with a `KIND:N` (`--hardware gpu:KIND:N`, `bench compare --gpu KIND:N`), as the start
    of its error ("no GPU kind 'h100': "), or "" when both parts are good; each caller adds the form.
    `custom`: gpu.custom.name, a kind of one's own ("" none)."""
    if kind_problem(kind, custom):
        return kind_problem(kind, custom)
    if not count.isdigit() or int(count) < 1:
        return f"N={count!r} is not a whole number >= 1: "
    return ""


def parse_hardware(text: str, custom: str = "") -> tuple[str, int] | None:
    """`cent` -> None; `gpu:KIND:N` -> (kind, N), KIND a shipped kind or `custom` (gpu.custom.name, ""
    none). ValueError naming the wrong part and the fix otherwise."""
    if text == "cent":
        return None
    parts = text.split(":")
    well_formed = len(parts) == 3 and parts[0] == "gpu"
    why = gpu_spec_problem(parts[1], parts[2], custom) if well_formed else ""
    if not well_formed or why:
        raise ValueError(f"--hardware {text!r} is invalid: {why}use 'cent' or gpu:KIND:N with KIND {KINDS_TEXT} "
                         "and N >= 1 GPUs, e.g. gpu:a100-80gb:4")
    return parts[1], int(parts[2])


def parse_gpu_flag(text: str, custom: str | None) -> tuple[str, int]:
    """`cent bench compare --gpu KIND:N` as (kind, N): ValueError naming the wrong part and the fix. `custom`:
    the config's gpu.custom.name ("" none), or None to check the form and N alone (the config not read yet)."""
    parts = text.split(":")
    why = gpu_spec_problem(parts[0] if custom is not None else "a100-80gb", parts[1], custom or "") \
        if len(parts) == 2 else ""
    if len(parts) != 2 or why:
        raise ValueError(f"--gpu {text!r} is invalid: {why}use KIND:N with KIND {KINDS_TEXT} "
                         "and N >= 1 GPUs, e.g. --gpu a100-80gb:4")
    return parts[0], int(parts[1])
