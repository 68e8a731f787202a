"""GPU kinds: the vendors' datasheet figures and the model's efficiency constants (docs/gpu_model.md).

Datasheet figures (NVIDIA A100 Tensor Core GPU datasheet, 80GB columns; NVIDIA H100 Tensor Core
GPU datasheet, SXM column): HBM bandwidth, dense bf16 peak (without sparsity), memory, the link
tensor-parallel all-reduces cross (NVLink per direction for SXM, PCIe 4.0 x16 per direction for
the PCIe card), board power (TDP).

Two efficiency constants per kind, the fractions of the datasheet peaks the kernels reach
(`mem_efficiency` for the bytes of a step, `compute_efficiency` for its FLOPs); the A100's
are set from the Llama2-7B measurements the CENT artifact published (one GPU, so no link in
them), by `tests/data/calibrate_gpu.py`, which prints how. The H100 has no measurement to set
them from: it takes the A100's, and says so (`calibrated`); so does the A100 PCIe card (the
measurements were of SXM4 modules, below).

`power_fraction`: the board power while serving as a share of the TDP. Both A100 kinds draw the
measured 293 W (the 7B end-to-end row; prefill and decoding 292-293 W; the artifact's GPUs were
SXM4 modules: 68 of the 161 power samples of its throttling trace, the source of its figure 15b,
are over the PCIe card's 300 W, up to 387 W); the H100 takes the A100 SXM's share of its TDP,
293 / 400. `tco_per_gpu`: a GPU's share of the artifact's TCO convention (1.76 per 4 A100s against
0.73 per 32 CENT devices; docs/hardware_model.md section 9); None where the convention has no
figure (tokens per dollar are then not reported).

A kind of one's own (`gpu.custom`, `custom_kind`) gives the datasheet figures, and the efficiency
constants if it has them (measured or assumed), and borrows the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

# Set by tests/data/calibrate_gpu.py from the artifact's Llama2-7B rows (its output, rounded to 3 figures).
A100_MEM_EFFICIENCY = 0.955
A100_COMPUTE_EFFICIENCY = 0.526


# vLLM's batching defaults for its OpenAI server (EngineArgs' usage-context defaults, as vLLM's
# tests/engine/test_arg_utils.py pins them): (max_num_seqs, max_num_batched_tokens) on A100s and
# GPUs under 70 GiB, and on the larger ones (H100, H200, MI300X).
VLLM_A100_BATCH = (256, 2048)
VLLM_LARGE_BATCH = (1024, 8192)
VLLM_LARGE_MEMORY_BYTES = 70 * 2**30
"""vLLM's line between the two (vllm/engine/arg_utils.py: `device_memory >= 70 * GiB_bytes and "a100"
not in device_name` takes the larger defaults), which a kind of one's own is put on (`custom_kind`)."""

A100_POWER_SHARE = 293.0 / 400.0
"""The measured 293 W of the A100 SXM4 over its 400 W TDP: the share a kind without a measurement of its
own draws (the H100, a kind of one's own without `gpu.custom.serving_power_w`)."""


@dataclass(frozen=True)
class GpuKind:
    name: str
    hbm_bytes_per_s: float
    peak_flops: float
    """Dense bf16 tensor-core peak, FLOP/s."""
    memory_bytes: float
    link_bytes_per_s: float
    """One direction of the link a tensor-parallel all-reduce crosses."""
    link: str
    board_power_w: float
    mem_efficiency: float
    compute_efficiency: float
    power_fraction: float
    tco_per_gpu: float | None
    calibrated: bool
    """Whether the efficiency constants were set from this kind's own measurements (the A100 SXM4 alone; a kind
    of one's own's given in gpu.custom may be measured or assumed, which the model cannot tell: False)."""
    max_num_seqs: int
    """vLLM's default for its OpenAI server on this kind (`gpu.max_num_seqs` 0 takes it)."""
    max_num_batched_tokens: int
    """Likewise: vLLM's default tokens a step (`gpu.max_num_batched_tokens` 0 takes it)."""

    def describe(self) -> str:
        return (f"{self.name}: {self.hbm_bytes_per_s / 1e12:.3g} TB/s HBM, {self.peak_flops / 1e12:.0f} TFLOP/s bf16, "
                f"{self.memory_bytes / 1e9:.0f} GB, {self.link} {self.link_bytes_per_s / 1e9:.0f} GB/s a direction, "
                f"{self.board_power_w:.0f} W")


GPU_KINDS: dict[str, GpuKind] = {k.name: k for k in (
    GpuKind("a100-80gb", 2.039e12, 312e12, 80e9, 300e9, "NVLink 3", 400.0,
            A100_MEM_EFFICIENCY, A100_COMPUTE_EFFICIENCY, A100_POWER_SHARE, 1.76 / 4, True, *VLLM_A100_BATCH),
    GpuKind("a100-80gb-pcie", 1.935e12, 312e12, 80e9, 32e9, "PCIe 4.0 x16", 300.0,
            A100_MEM_EFFICIENCY, A100_COMPUTE_EFFICIENCY, 293.0 / 300.0, 1.76 / 4, False, *VLLM_A100_BATCH),
    GpuKind("h100-80gb", 3.35e12, 989.4e12, 80e9, 450e9, "NVLink 4", 700.0,
            A100_MEM_EFFICIENCY, A100_COMPUTE_EFFICIENCY, A100_POWER_SHARE, None, False, *VLLM_LARGE_BATCH),
)}
"""`a100-80gb` is the SXM4 module, `h100-80gb` the SXM5 one."""


def gpu_kind(name: str) -> GpuKind:
    try:
        return GPU_KINDS[name]
    except KeyError:
        raise ValueError(f"GPU kind {name!r} is unknown: use one of {', '.join(GPU_KINDS)}") from None


def custom_kind(name: str, hbm_bytes_per_s: float, peak_flops: float, memory_bytes: float, link_bytes_per_s: float,
                link: str, board_power_w: float, serving_power_w: float = 0.0, mem_efficiency: float = 0.0,
                compute_efficiency: float = 0.0) -> GpuKind:
    """A kind of one's own (`gpu.custom`, checked there): the figures given, and what no figure of it sets,
    borrowed: the A100 SXM4's efficiency constants where `mem_efficiency` / `compute_efficiency` are 0
    (`calibrated` False either way), its share of the TDP when no serving power is given
    (`A100_POWER_SHARE`), no TCO figure, and vLLM's batching defaults by vLLM's own rule on the memory and
    the name (`VLLM_LARGE_MEMORY_BYTES`)."""
    share = serving_power_w / board_power_w if serving_power_w else A100_POWER_SHARE
    large = memory_bytes >= VLLM_LARGE_MEMORY_BYTES and "a100" not in name.lower()
    return GpuKind(name, hbm_bytes_per_s, peak_flops, memory_bytes, link_bytes_per_s, link, board_power_w,
                   mem_efficiency or A100_MEM_EFFICIENCY, compute_efficiency or A100_COMPUTE_EFFICIENCY, share, None,
                   False, *(VLLM_LARGE_BATCH if large else VLLM_A100_BATCH))


EFFICIENCIES = {"mem_efficiency": "memory efficiency", "compute_efficiency": "compute efficiency"}
"""The efficiency constants, which a kind of one's own may give (gpu.custom; 0 borrows the A100 SXM4's), and
their names in `borrowed_note`'s line."""


HOST_TIMES = ("layer_overhead_s", "allreduce_latency_s")
"""The host's times (`GpuConfig` fields), set from the CENT artifact's A100 SXM4 runs: a kind of one's own
borrows each left at its default (`GpuConfig.borrowed_host_times`)."""


def borrowed_note(kind: GpuKind, custom: bool, power_borrowed: bool = False,
                  efficiencies: tuple[str, ...] = tuple(EFFICIENCIES),
                  host_times: tuple[str, ...] = HOST_TIMES) -> str | None:
    """One line on what `kind` borrows from the A100 SXM4 (None for the A100 SXM4 itself): the warning
    every command running it logs (`cli_common.warn_gpu_run`) and, for a kind of one's own (`custom`),
    a note of the results it makes (`bench.report.kind_notes`); `power_borrowed`: its serving power is
    the A100 SXM4's share of its TDP (no gpu.custom.serving_power_w), which its energy figures rest on;
    `efficiencies`: the efficiency constants (`EFFICIENCIES`' keys) it borrows (a shipped kind: both;
    a kind of one's own: those gpu.custom does not give); `host_times`: the host's times (`HOST_TIMES`) a
    kind of one's own borrows, those not set (a shipped kind's line does not name them). A kind of one's
    own always has a line: one that borrows nothing says so, and that it is not validated."""
    if kind.calibrated:
        return None
    source = "(set from the CENT artifact's A100 SXM4 measurements)"
    host = " and ".join(f"gpu.{key}" for key in host_times)
    verb = "are" if len(host_times) == 2 else "is"
    if len(efficiencies) == 2:
        head = f"{kind.name}'s efficiency constants are a100-80gb's {source}"
    elif efficiencies:
        key, = efficiencies
        head = f"{kind.name}'s {EFFICIENCIES[key]}, {getattr(kind, key):g}, is a100-80gb's {source}"
    elif host_times:
        head = f"{kind.name}'s host time{'s' if len(host_times) == 2 else ''}, {host}, {verb} a100-80gb's {source}"
    else:
        head = f"{kind.name} borrows nothing of the A100 SXM4's" + (" apart from its serving power"
                                                                     if power_borrowed else "")
    if not custom:
        return f"{head}: none of this kind to set them from (docs/gpu_model.md)"
    own_efficiencies = [words for key, words in EFFICIENCIES.items() if key not in efficiencies]
    own_host = [f"gpu.{key}" for key in HOST_TIMES if key not in host_times]
    given = ["datasheet figures", *(["efficiency constants"] if len(own_efficiencies) == 2 else own_efficiencies),
             *(["host times"] if len(own_host) == 2 else own_host)]
    *rest, last = given
    given_text = f"{', '.join(rest)} and {last}" if rest else last
    too = " too" if efficiencies or host_times else ""
    power = (f"; its serving power{too} is the A100 SXM4's share of its TDP, 293 / 400 of {kind.board_power_w:g} W "
             "(gpu.custom.serving_power_w gives a measured draw)") if power_borrowed else ""
    also = f", and so {verb} the host's {host}" if efficiencies and host_times else ""
    return (f"{head}{also}: {kind.name} is a kind of one's own (gpu.custom), its {given_text} as "
            f"given, not validated against any measurement (docs/gpu_model.md section 6){power}")
