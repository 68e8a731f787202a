"""The GPU side of a comparison (`--hardware gpu:KIND:N`): `GpuConfig` and the flag's parser."""
from __future__ import annotations

from dataclasses import dataclass

from cent_serve.config.checks import _check, _check_numbers


GPU_ATTENTION_READS = ("kv_heads", "query_heads")


@dataclass
class GpuConfig:
    """GPUs in place of CENT devices (`--hardware gpu:KIND:N`; docs/gpu_model.md). `count` 0 means
    the hardware is CENT and nothing here is used."""

    kind: str = "a100-80gb"
    """`a100-80gb` (SXM4), `a100-80gb-pcie` or `h100-80gb` (SXM5): cent_serve/gpu/kinds.py."""
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
        from cent_serve.gpu.kinds import GPU_KINDS
        _check(self.kind in GPU_KINDS, "gpu.kind", self.kind, f"use one of {', '.join(GPU_KINDS)}")
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
    def num_seqs(self) -> int:
        """`max_num_seqs`, resolved (0: vLLM's default for the kind)."""
        from cent_serve.gpu.kinds import GPU_KINDS
        return self.max_num_seqs or GPU_KINDS[self.kind].max_num_seqs

    @property
    def num_batched_tokens(self) -> int:
        """`max_num_batched_tokens`, resolved (0: vLLM's default for the kind)."""
        from cent_serve.gpu.kinds import GPU_KINDS
        return self.max_num_batched_tokens or GPU_KINDS[self.kind].max_num_batched_tokens

    @property
    def group_tp(self) -> int:
        """GPUs per stage, resolved."""
        return self.tp or max(1, self.count // self.pp)

    @property
    def replicas(self) -> int:
        return max(1, self.count // (self.group_tp * self.pp))


def gpu_spec_problem(kind: str, count: str) -> str:
    """What is wrong with a `KIND:N` (`--hardware gpu:KIND:N`, `bench compare --gpu KIND:N`), as the start
    of its error ("no GPU kind 'h100': "), or "" when both parts are good; each caller adds the form."""
    from cent_serve.gpu.kinds import GPU_KINDS
    if kind not in GPU_KINDS:
        return f"no GPU kind {kind!r}: "
    if not count.isdigit() or int(count) < 1:
        return f"N={count!r} is not a whole number >= 1: "
    return ""


def parse_hardware(text: str) -> tuple[str, int] | None:
    """`cent` -> None; `gpu:KIND:N` -> (kind, N). ValueError naming the wrong part and the fix otherwise."""
    from cent_serve.gpu.kinds import GPU_KINDS
    if text == "cent":
        return None
    parts = text.split(":")
    well_formed = len(parts) == 3 and parts[0] == "gpu"
    why = gpu_spec_problem(parts[1], parts[2]) if well_formed else ""
    if not well_formed or why:
        raise ValueError(f"--hardware {text!r} is invalid: {why}use 'cent' or gpu:KIND:N with KIND one of "
                         f"{', '.join(GPU_KINDS)} and N >= 1 GPUs, e.g. gpu:a100-80gb:4")
    return parts[1], int(parts[2])
