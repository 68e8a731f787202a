"""Near-memory accelerator (PNM) and host time (docs/hardware_model.md sections 1 and 5).

One accelerator unit per channel, each of `acc_simd_lanes` SIMD lanes (exp units, vector adders,
reduction trees), pipelined across the channels through the shared buffer, and a few RISC-V cores
beside them. A pass of a vector over the units costs a buffer read per unit (two for an add of
two vectors), the operation, and a write; the RISC-V cores take the rsqrt of RMSNorm, softmax's
division and the rotary tables. Source: the artifact's power calculator, which states the same
latencies (its `ACCEL_CYCLE`, `RMSNorm_latency`, `Softmax_latency`, `RotEmbed_latency`), here in
the device's own fields so a different channel count or SIMD width changes them.
"""
from __future__ import annotations

from cent_serve.config import DeviceConfig, ModelConfig
from cent_serve.timing.pim import attended, norms_per_block


def accelerator_parts(m: ModelConfig, dev: DeviceConfig, context: int) -> dict[str, float]:
    """Accelerator cycles of one block for one token, by part: two RMSNorms (sum of squares over
    the SIMD lanes, a reduction, the rsqrt on a RISC-V core), softmax over the attended keys (exp
    and sum per head, a reduction and the division per head), the rotary tables of q and k, and
    with per-head q/k norms (Qwen 3) one more RMSNorm of every q and k head (their sums of squares
    over the units, an rsqrt each on the cores). The accelerator is shared by every block resident
    on the device, so callers multiply by the blocks that share it.

    Gemma 2: its two more RMSNorms (`norms_per_block`) cost what the two do; its attention logit
    soft-capping tanh(s / c) c runs where softmax's exponent does, on the exp units: per score one more
    exp pass (tanh from e^(2s/c)) and one more add pass (its ratio and the two scalings), the pair
    softmax's own vectors take, so it doubles softmax's per-key part and adds nothing per head."""
    units, lanes, buf = dev.num_channels, dev.acc_simd_lanes, dev.acc_buffer_cycles
    cores, d, h = dev.acc_riscv_cores, m.hidden_size, m.num_heads
    exp_pass = units * buf + dev.acc_exp_cycles + buf  # read, exp, write, pipelined over the units
    add_pass = units * 2 * buf + 1 + buf  # two reads, add, write
    # RMSNorm: D values / the lanes / the banks' 16-to-1 products, over the units; a reduction; rsqrt
    norm = d / lanes / dev.burst_elements / units * add_pass + buf + buf + 1 + dev.acc_norm_riscv_cycles
    passes = attended(m, context) * h / lanes / units  # softmax's vectors: every head's keys, over the units
    softmax = (score_passes(m) * (passes * exp_pass + passes * add_pass) + h * buf
               + h * (dev.acc_softmax_writes * buf + dev.acc_softmax_riscv_cycles / cores + buf))
    # q's and k's elements, (1 + Hkv / H) H hd: the artifact's (1 + Hkv / H) D where H hd = D (Llama 2),
    # and what q and k hold where it is not (Qwen3-30B-A3B: 32 x 128 = 4096 beside D = 2048)
    rotary = (1 + m.num_kv_heads / h) * m.q_size * dev.acc_rotary_riscv_cycles / cores
    qk_heads = (h + m.num_kv_heads) if m.qk_norm else 0
    qk_norm = (qk_heads * m.head_dim / lanes / dev.burst_elements / units * add_pass
               + qk_heads * dev.acc_norm_riscv_cycles / cores) if qk_heads else 0.0
    return dict(norm=norms_per_block(m) * norm, softmax=softmax, rotary=rotary, qk_norm=qk_norm)


def score_passes(m: ModelConfig) -> int:
    """The exp-and-add passes over every attention score a block makes: softmax's, and with Gemma 2's
    attention logit soft-capping (`model.attn_logit_softcapping`) as many again (`accelerator_parts`).
    Its time and its energy (`energy.EnergyModel`) both count them."""
    return 2 if m.attn_logit_softcapping else 1


def accelerator_cycles(m: ModelConfig, dev: DeviceConfig, context: int) -> float:
    """Accelerator cycles of one block for one token (`accelerator_parts` added up)."""
    return sum(accelerator_parts(m, dev, context).values())


def accelerator_s(m: ModelConfig, dev: DeviceConfig, context: int) -> float:
    return accelerator_cycles(m, dev, context) / dev.acc_clock_hz


def host_sample_s(dev: DeviceConfig) -> float:
    """Host CPU cost of sampling one token (0.15 ms, docs/hardware_model.md section 1)."""
    return dev.host_sample_s
