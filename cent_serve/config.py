"""One config tree for cent-serve (nested dataclasses, one docstring per field).

`CentConfig` holds everything: the model, the CENT device, the CXL fabric, the
parallel mapping, the scheduler and the server. Every field has the paper's
value (or a sensible default) and every cross-field check raises `ValueError`
naming the field, the offending value and the fix.

Hardware constants cite docs/hardware_model.md (the restatement of the CENT paper,
ASPLOS 2025, and its artifact) by section.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import re
from dataclasses import dataclass, field, fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, get_type_hints
from urllib.parse import urlsplit

__all__ = [
    "ModelConfig", "DeviceConfig", "EnergyConfig", "FabricConfig", "ParallelConfig",
    "SchedulerConfig", "ServerConfig", "GpuConfig", "CentConfig", "parse_hardware", "MODEL_PRESETS", "model_preset",
    "load_config", "apply_overrides", "config_to_dict",
]


def _check(cond: bool, field_name: str, value: Any, fix: str) -> None:
    """Raise a ValueError that names the field, the value and the fix."""
    if not cond:
        raise ValueError(f"{field_name}={value!r} is invalid: {fix}")


@lru_cache(maxsize=None)
def _numeric_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """Field name -> (int or float, whether None is allowed) of every numeric field of a config
    dataclass (`X | None` included; bools and strings are not numbers)."""
    out, hints = {}, get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        args = getattr(hint, "__args__", ())
        optional = type(None) in args
        kind = next((a for a in args if a is not type(None)), None) if optional and len(args) == 2 else hint
        if kind in (int, float):
            out[f.name] = (kind, optional)
    return out


NUMBER_RANGE = (1e-15, 1e15)
"""Where a non-zero number of the config lies: a product or quotient of a few such stays finite in
float64 (an energy of 1e308 mW, or a clock of 1e-300 Hz, made the figures NaN or inf)."""


def _number_fix(cls: type, name: str, value: Any) -> str | None:
    """The config's one rule for numbers: every numeric field of `cls` is a finite number >= 0, and
    > 0 for the fields in `cls._positive` (counts, sizes, clocks, rates: what is divided by, or what
    0 of makes no device), non-zero ones within `NUMBER_RANGE` (seeds: any size); `X | None` fields may also be None.
    None when `value` obeys it, else the fix to print (`cls._fixes` words a field's own)."""
    kind, optional = _numeric_fields(cls)[name]
    if value is None and optional:
        return None
    integer, positive = kind is int, name in getattr(cls, "_positive", ())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        fix = "expected an integer" if integer else "expected a number"
    elif math.isfinite(value) and (value > 0 if positive else value >= 0):
        if name == "seed" or value <= NUMBER_RANGE[1] and (value == 0 or value >= NUMBER_RANGE[0]):
            return None  # a seed names a stream of numbers: any size
        fix = f"use a value from {NUMBER_RANGE[0]:g} to {NUMBER_RANGE[1]:g} (beyond, the model's figures overflow)"
    else:
        fix = getattr(cls, "_fixes", {}).get(name) or (
            ("use a positive integer" if positive else "use an integer >= 0") if integer else
            ("use a finite positive number" if positive else "use a finite number >= 0"))
    return fix + (", or leave it unset" if optional and not fix.endswith("unset") else "")


def _check_numbers(obj: Any, section: str) -> None:
    """Hold every numeric field of a config section to `_number_fix`'s rule (ValueError naming
    `section.field`, the value and the fix)."""
    for name in _numeric_fields(type(obj)):
        value = getattr(obj, name)
        fix = _number_fix(type(obj), name, value)
        _check(fix is None, f"{section}.{name}", value, fix or "")


MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")
"""Families the reference model runs (Hugging Face `model_type`)."""
MOE_TYPES = ("mixtral", "qwen3_moe")
"""The mixture-of-experts families among them."""
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
"""Rotary embeddings the reference model computes (Hugging Face `rope_type`)."""


@dataclass
class ModelConfig:
    """A Llama-family decoder (Llama 2 and 3.x, Mistral, Qwen 2.5, Qwen 3) or a mixture of experts
    (Mixtral, Qwen 3 MoE: `num_experts` > 0). Presets: `MODEL_PRESETS` (`cent info --presets`)."""

    name: str = "tiny"
    """Preset name, or the checkpoint directory's name when loaded from disk (chosen with `--model`
    or a YAML `model:` section, not `--set`: the top level says how)."""
    hidden_size: int = 256
    """D: model width."""
    intermediate_size: int = 688
    """F: SwiGLU MLP width."""
    num_layers: int = 8
    """N: transformer blocks."""
    num_heads: int = 8
    """H: attention (query) heads."""
    num_kv_heads: int = 2
    """Hkv: key/value heads (GQA when < num_heads)."""
    head_dim: int = 0
    """Per-head width; 0 means hidden_size // num_heads."""
    vocab_size: int = 259
    """Vocabulary size (the byte-level tokenizer uses 259: 3 specials + 256 bytes)."""
    max_seq_len: int = 8192
    """Longest context (prompt + generated tokens) the model accepts. From a checkpoint, vLLM's
    `max_model_len`: `max_position_embeddings`, or with a linear, dynamic or yarn rope the original
    context times the factor (Qwen3 with yarn 4x: 32,768 x 4 = 131,072)."""
    rope_theta: float = 10000.0
    """Rotary embedding base (Hugging Face `rope_theta`)."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = False
    """Whether the LM head reuses the embedding matrix."""
    model_type: str = "llama"
    """The family (Hugging Face `model_type`): `llama`, `mistral`, `qwen2`, `qwen3`, `mixtral` or
    `qwen3_moe`. The families differ only by the named variations below, which a checkpoint's
    config.json sets."""
    attention_bias: bool = False
    """Biases on the q, k and v projections (Qwen 2.5)."""
    qk_norm: bool = False
    """An RMSNorm over each head of q and k before the rotary embedding (Qwen 3)."""
    sliding_window: int = 0
    """Attend to the last `sliding_window` positions only (Mistral); 0: the whole context."""
    num_experts: int = 0
    """Experts of each block's MLP (Mixtral 8, Qwen3-30B-A3B 128); 0: a dense SwiGLU MLP."""
    num_experts_per_tok: int = 0
    """k: the experts a token runs (the router's top k of its softmax)."""
    moe_intermediate_size: int = 0
    """An expert's SwiGLU width; 0: model.intermediate_size (Mixtral's experts are full-size MLPs)."""
    norm_topk_prob: bool = True
    """Divide the top-k router probabilities by their sum (Mixtral always; Qwen 3 MoE's config says)."""
    expert_skew: float = 0.0
    """Timing's router: with numerics off there are no router logits, so the time model routes each
    (sequence, position, block) to k experts by a seeded draw without replacement, the weight of
    the expert of rank r in a seeded order 1 / (r + 1)^expert_skew: 0 is uniform, larger piles
    tokens on a few hot experts (a hot-expert workload; they share devices as the seeded order
    places them). The same draw with numerics on, so timing never depends on numerics."""
    rope_type: str = "default"
    """Rotary scaling (Hugging Face `rope_type`): `default`, `linear`, `dynamic` (NTK), `yarn` or `llama3`."""
    rope_factor: float = 1.0
    """Scaling factor of linear, dynamic, yarn and llama3 rotary embeddings."""
    rope_original_max_position: int = 0
    """The context the model was pretrained for (`original_max_position_embeddings`; for linear and
    dynamic, and yarn without it, the checkpoint's `max_position_embeddings`); 0: model.max_seq_len."""
    rope_low_freq_factor: float = 1.0
    """llama3 scaling: wavelengths over original / low_freq_factor are divided by the factor."""
    rope_high_freq_factor: float = 4.0
    """llama3 scaling: wavelengths under original / high_freq_factor are kept."""
    rope_beta_fast: float = 32.0
    """yarn: rotations that bound extrapolation."""
    rope_beta_slow: float = 1.0
    """yarn: rotations that bound interpolation."""
    rope_mscale: float = 0.0
    """yarn: with rope_mscale_all_dim, sets the attention factor (0: from the factor alone)."""
    rope_mscale_all_dim: float = 0.0
    """yarn: see rope_mscale."""
    rope_attention_factor: float = 0.0
    """yarn: the cos / sin scale; 0: derived from the factor (and mscales)."""
    rope_truncate: bool = True
    """yarn: round the correction range to whole dimensions."""
    bos_token_id: int = 1
    """Beginning-of-sequence token id."""
    eos_token_id: int = 2
    """End-of-sequence token id."""
    extra_eos_token_ids: tuple[int, ...] = ()
    """More ids that end a generation as the eos does, unless ignore_eos (vLLM's rule: a checkpoint's
    eos_token_id list after its first and generation_config.json's, e.g. Llama 3 Instruct's <|eot_id|>
    128009); the reply's stop_reason names the id. --set takes them comma-separated."""
    weight_dtype: str = "bfloat16"
    """Storage dtype of weights: `bfloat16` (CENT's data type) or `float32`. Math is float32."""
    seed: int = 0
    """Seed of the random weights of a preset (same seed, same weights, on any machine), and of a mixture
    of experts' timing router (`expert_skew`), so its simulated times follow the seed too."""
    checkpoint: str | None = None
    """Hugging Face Llama checkpoint directory; None means seeded random weights."""

    def is_eos(self, token: int) -> bool:
        """Whether `token` ends a generation (unless ignore_eos): the eos or one of the extra eos ids."""
        return token == self.eos_token_id or token in self.extra_eos_token_ids

    _positive = frozenset({"hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                           "vocab_size", "max_seq_len", "rope_theta", "rms_norm_eps", "rope_low_freq_factor",
                           "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"model.{name}", value,
                   "use a positive integer")
        if self.head_dim == 0:
            _check(self.hidden_size % self.num_heads == 0, "model.hidden_size", self.hidden_size,
                   f"make it a multiple of model.num_heads={self.num_heads}, or set model.head_dim")
            self.head_dim = self.hidden_size // self.num_heads
        _check(self.head_dim > 0 and self.head_dim % 2 == 0, "model.head_dim", self.head_dim,
               "use a positive even number (rotary embeddings rotate pairs)")
        _check(self.num_heads % self.num_kv_heads == 0, "model.num_kv_heads", self.num_kv_heads,
               f"it must divide model.num_heads={self.num_heads}")
        _check(self.weight_dtype in ("bfloat16", "float32"), "model.weight_dtype", self.weight_dtype,
               "use 'bfloat16' or 'float32'")
        _check(self.rope_theta > 0, "model.rope_theta", self.rope_theta, "use a positive number")
        _check(self.rms_norm_eps > 0, "model.rms_norm_eps", self.rms_norm_eps, "use a positive number")
        _check(self.model_type in MODEL_TYPES, "model.model_type", self.model_type,
               f"use one of {', '.join(MODEL_TYPES)} (other families are not supported)")
        _check(self.rope_type in ROPE_TYPES, "model.rope_type", self.rope_type,
               f"use one of {', '.join(ROPE_TYPES)}")
        if self.rope_type != "default":
            _check(self.rope_factor > 0, "model.rope_factor", self.rope_factor, "use a positive number")
        if self.rope_type == "llama3":  # its smoothing divides by the difference
            _check(self.rope_high_freq_factor > self.rope_low_freq_factor, "model.rope_high_freq_factor",
                   self.rope_high_freq_factor, f"use more than model.rope_low_freq_factor={self.rope_low_freq_factor}")
        _check(self.sliding_window >= 0, "model.sliding_window", self.sliding_window,
               "use a positive window, or 0 for the whole context")
        _check(self.rope_original_max_position >= 0, "model.rope_original_max_position",
               self.rope_original_max_position, "use a positive context, or 0 for model.max_seq_len")
        self.extra_eos_token_ids = _ids_text(self.extra_eos_token_ids, "model.extra_eos_token_ids")
        for name, value in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id)] + \
                [("extra_eos_token_ids", v) for v in self.extra_eos_token_ids]:
            _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.vocab_size,
                   f"model.{name}", value, f"use an id in [0, {self.vocab_size})")
        _check(self.num_experts >= 0, "model.num_experts", self.num_experts, "use 0 (dense) or a positive count")
        _check(self.expert_skew >= 0, "model.expert_skew", self.expert_skew, "use 0 (uniform) or a positive skew")
        _check(self.moe_intermediate_size >= 0, "model.moe_intermediate_size", self.moe_intermediate_size,
               "use a positive width, or 0 for model.intermediate_size")
        if self.num_experts:
            _check(1 <= self.num_experts_per_tok <= self.num_experts, "model.num_experts_per_tok",
                   self.num_experts_per_tok, f"use 1 .. model.num_experts={self.num_experts}")
        moe_type = self.model_type in MOE_TYPES
        _check(moe_type == bool(self.num_experts), "model.num_experts", self.num_experts,
               f"model_type={self.model_type!r} is a mixture of experts: set a positive count" if moe_type else
               f"model_type={self.model_type!r} is dense: use 0, or a model_type of {', '.join(MOE_TYPES)}")
        _check_numbers(self, "model")

    @property
    def num_rep(self) -> int:
        """nrep = H / Hkv: query heads per KV head (the GQA group)."""
        return self.num_heads // self.num_kv_heads

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def expert_size(self) -> int:
        """An expert's SwiGLU width (the dense MLP's for a dense model)."""
        return self.moe_intermediate_size or self.intermediate_size

    def expert_param_count(self) -> int:
        """Parameters of one expert: gate, up and down (3 D F_e)."""
        return 3 * self.hidden_size * self.expert_size

    def attention_param_count(self) -> int:
        """Parameters of a block's attention (with its biases and q/k norms) and its two norms."""
        d = self.hidden_size
        attn = d * self.q_size + 2 * d * self.kv_size + self.q_size * d
        attn += (self.q_size + 2 * self.kv_size if self.attention_bias else 0) + (2 * self.head_dim if self.qk_norm else 0)
        return attn + 2 * d

    def block_param_count(self) -> int:
        """Parameters of one transformer block (attention with its biases and q/k norms, MLP or router
        and every expert, two norms)."""
        if self.is_moe:
            return self.attention_param_count() + self.num_experts * (self.hidden_size + self.expert_param_count())
        return self.attention_param_count() + 3 * self.hidden_size * self.intermediate_size

    def active_block_param_count(self) -> int:
        """Parameters one token reads in a block: the router and its k experts for a MoE."""
        if self.is_moe:
            return (self.attention_param_count() + self.num_experts * self.hidden_size
                    + self.num_experts_per_tok * self.expert_param_count())
        return self.block_param_count()

    def param_count(self, active: bool = False) -> int:
        """All parameters: blocks, final norm, embedding and (untied) LM head; with `active`, a MoE's
        blocks count only what a token reads (router and k experts), as "active parameters" are
        published (Mixtral 8x7B: 12.9 B of 46.7 B)."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        block = self.active_block_param_count() if active else self.block_param_count()
        return self.num_layers * block + self.hidden_size + emb + head

    def weight_bytes(self) -> int:
        return self.param_count() * (2 if self.weight_dtype == "bfloat16" else 4)

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes per token over all layers (bf16, CENT's data type)."""
        return 2 * self.num_layers * self.kv_size * 2


_LLAMA31_ROPE = dict(rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                     rope_original_max_position=8192)
"""Llama 3.1's rotary scaling (its config.json `rope_scaling`)."""
# docs/hardware_model.md section 2 (Llama2 dimensions); rope/eps/max_seq_len from the Llama 2 release configs.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_layers=8, num_heads=8, num_kv_heads=2,
                 vocab_size=259, max_seq_len=8192),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                      num_kv_heads=32, vocab_size=32000, max_seq_len=4096),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                       num_kv_heads=40, vocab_size=32000, max_seq_len=4096),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                       num_kv_heads=8, vocab_size=32000, max_seq_len=4096),
    # the families people serve now: dimensions, rope and context from each model's published
    # config.json (Hugging Face hub: meta-llama/Llama-3.1-8B, Llama-3.1-70B, Llama-3.2-1B,
    # mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-7B, Qwen/Qwen3-8B)
    "llama3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                        vocab_size=128256, max_seq_len=131072, rope_theta=500000.0, **_LLAMA31_ROPE,
                        bos_token_id=128000, eos_token_id=128001),
    "llama3.1-70b": dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8,
                         vocab_size=128256, max_seq_len=131072, rope_theta=500000.0, **_LLAMA31_ROPE,
                         bos_token_id=128000, eos_token_id=128001),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                        head_dim=64, vocab_size=128256, max_seq_len=131072, rope_theta=500000.0,
                        **{**_LLAMA31_ROPE, "rope_factor": 32.0}, tie_word_embeddings=True,
                        bos_token_id=128000, eos_token_id=128001),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, vocab_size=32000, max_seq_len=32768, sliding_window=4096),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                       num_kv_heads=4, vocab_size=152064, max_seq_len=131072, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, attention_bias=True, bos_token_id=151643, eos_token_id=151643),
    "qwen3-8b": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
                     num_kv_heads=8, head_dim=128, vocab_size=151936, max_seq_len=40960, rope_theta=1000000.0,
                     rms_norm_eps=1e-6, qk_norm=True, bos_token_id=151643, eos_token_id=151645),
    # mixtures of experts (mistralai/Mixtral-8x7B-v0.1, Qwen/Qwen3-30B-A3B config.json)
    "mixtral-8x7b": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                         num_kv_heads=8, vocab_size=32000, max_seq_len=32768, rope_theta=1000000.0,
                         num_experts=8, num_experts_per_tok=2),
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_layers=48, num_heads=32,
                          num_kv_heads=4, head_dim=128, vocab_size=151936, max_seq_len=40960, rope_theta=1000000.0,
                          rms_norm_eps=1e-6, qk_norm=True, num_experts=128, num_experts_per_tok=8,
                          moe_intermediate_size=768, norm_topk_prob=True, bos_token_id=151643, eos_token_id=151645),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (like gpt-fast's `ModelArgs.from_name`), with field overrides."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"model.name={name!r} is not a preset: use one of "
                         f"{sorted(MODEL_PRESETS)} or a Hugging Face checkpoint directory")
    return ModelConfig(name=name, **{**MODEL_PRESETS[name], **overrides})


UNLABELLED_MODEL_FIELDS = frozenset({"name", "checkpoint", "seed", "weight_dtype"})
"""Model fields a run's header does not name when they differ from the preset's (they change no figure
of the timing, or are the model's identity); but a mixture of experts' seed (`model_label`)."""


@lru_cache(maxsize=None)
def _preset(name: str) -> ModelConfig:
    """The preset `name` as published, built once per process (read only)."""
    return ModelConfig(name=name, **MODEL_PRESETS[name])


def preset_changes(model: ModelConfig, skip: Callable[[str], bool]) -> list[str]:
    """The fields (`model.F=value`) in which `model` differs from the preset of its name, but those
    `skip` names; [] for a model that is no preset."""
    if model.name not in MODEL_PRESETS:
        return []
    preset = _preset(model.name)
    return [f"model.{f.name}={getattr(model, f.name)}" for f in dataclasses.fields(ModelConfig)
            if not skip(f.name) and getattr(model, f.name) != getattr(preset, f.name)]


def model_label(model: ModelConfig, most: int = 2) -> str:
    """The model as a run's header names it: a preset's name, with the fields set apart from it
    (`llama2-7b (model.num_layers=16)`; after `most` of them, how many more), so a changed preset is
    not read as the published one."""
    # a mixture of experts' seed is its timing router's too (`ModelConfig.seed`): named, as its figures follow it
    changed = preset_changes(model, lambda name: name in UNLABELLED_MODEL_FIELDS and not (name == "seed" and model.is_moe))
    if not changed:
        return model.name
    more = f" and {len(changed) - most} more" if len(changed) > most else ""
    return f"{model.name} ({', '.join(changed[:most])}{more})"


@dataclass
class EnergyConfig:
    """Energy constants of one CENT device (docs/hardware_model.md section 8). Source: the CENT
    artifact's power calculator (`cent_power_calculator.py`); the per-command energies are
    derived from these powers and times (`cent_serve.timing.energy.command_energies_j`)."""

    # DRAM (the calculator's GDDR6 powers, which it halves from the data sheet's)
    act_mw: float = 66.3
    """Power of one bank's activate-precharge cycle, mW (x t_rc_ns: 2.95 nJ a row opened), quoted for
    the paper's 2 KB row; an activation scales with the row's bytes (row_elements x bytes_per_element)."""
    rd_mw: float = 438.15
    """Power while a read burst streams, mW (x t_burst_ns: 0.548 nJ a burst)."""
    wr_mw: float = 553.15
    """Power while a write burst streams, mW (x t_burst_ns: 0.691 nJ a burst)."""
    act_standby_mw: float = 263.75
    """Active standby power, mW: charged per device for the share of channel-cycles that have a
    row open (the artifact's accounting; per channel it would be `num_channels` times more)."""
    pre_standby_mw: float = 183.15
    """Precharged standby power, mW, for the share of channel-cycles with every bank closed."""
    t_rc_ns: float = 44.5
    """Row cycle time tRC, ns: how long an activation draws act_mw. Energy only, as every timing
    of this section: the time model counts device cycles (device.gemv_row_cycles, ...)."""
    t_burst_ns: float = 1.25
    """Burst time tBL of a 32 B burst, ns: how long a read or write draws rd_mw / wr_mw (a burst of
    device.burst_elements x bytes_per_element bytes costs its share of 32 B)."""
    t_ccd_ns: float = 1.0
    """Column-to-column delay tCCD_L, ns: how long an all-bank MAC step of 32 B a bank draws its power.
    Energy only: the time model's interval is device.column_cycles at device.clock_hz (2 cycles,
    the artifact's: docs/hardware_model.md section 4)."""
    mac_bank_read_share: float = 0.1875
    """Power of one bank's MAC unit during a MAC step, as a share of rd_mw (the artifact charges
    an all-bank MAC of 16 banks 3 x rd_mw: 1.314 nJ)."""
    ewmul_mac_share: float = 0.25
    """Energy of an all-bank elementwise product as a share of an all-bank MAC step."""
    precharge_ns: float = 16.0
    """Time a channel stays precharged after closing all its banks (tRP; 32 cycles at 2 GHz), for
    standby energy only."""
    write_precharge_ns: float = 36.5
    """Time a channel stays precharged after an all-bank write with auto-precharge (tCWL + tBL +
    tWR + tRP; 73 cycles at 2 GHz), for standby energy only."""
    access_clock_hz: float = 2e9
    """The clock the per-access powers below are quoted at (controller, buffers, accelerator units):
    an access costs its power for one cycle of it, whatever device.clock_hz is (a faster device
    clock does not make an access cheaper)."""
    # interfaces
    external_pj_per_bit: float = 5.5
    """DRAM data pins (DQ) energy, pJ/bit: a burst across the interface (1.408 nJ for 32 B)."""
    controller_trx_mw: float = 267.7082056
    """Memory controller's transaction engine, mW: one cycle of it per data command."""
    controller_phy_mw: float = 381.0445262
    """Memory controller's PHY, mW: one cycle of it per DRAM command of any kind."""
    channels_per_controller: int = 2
    """Channels one memory controller serves (the controller's power is shared by them)."""
    pcie_pj_per_bit: float = 4.4
    """PCIe / CXL link energy, pJ/bit."""
    # SRAM buffers: global buffer (one per channel), shared buffer and instruction buffer (one a device)
    global_buffer_static_mw: float = 0.06702101898
    """Global buffer leakage, mW per channel."""
    global_buffer_read_mw: float = 0.2785010052
    """Global buffer read power, mW (one cycle of it per bank <- buffer copy)."""
    global_buffer_write_mw: float = 0.3254884575
    """Global buffer write power, mW (one cycle of it per burst written to the buffer)."""
    shared_buffer_static_mw: float = 0.6917736525
    """Shared buffer (accelerator side) leakage, mW."""
    shared_buffer_read_mw: float = 3.207188769
    """Shared buffer read power, mW (one cycle of it per access)."""
    shared_buffer_write_mw: float = 3.754155771
    """Shared buffer write power, mW (one cycle of it per access)."""
    instruction_buffer_static_mw: float = 18.81731768
    """Instruction buffer leakage, mW."""
    instruction_buffer_read_mw: float = 70.13266856
    """Instruction buffer read power, mW (one cycle of it per instruction)."""
    # near-memory accelerator, one unit per channel, and its control logic
    reduction_mw: float = 0.2882
    """Reduction tree dynamic power (switching + internal), mW, one cycle a reduction."""
    exp_mw: float = 0.5939
    """Exponent unit dynamic power, mW, one cycle a SIMD pass."""
    vector_mw: float = 0.381
    """Vector adder dynamic power, mW, one cycle a SIMD pass."""
    reduction_leak_mw: float = 0.00562
    """Reduction tree leakage, mW per channel (5.62 uW)."""
    exp_leak_mw: float = 0.0128
    """Exponent unit leakage, mW per channel (12.8 uW)."""
    vector_leak_mw: float = 0.00654
    """Vector adder leakage, mW per channel (6.54 uW)."""
    riscv_core_mw: float = 3.96
    """One RISC-V core of the accelerator, mW, for the cycles it works."""
    device_controller_mw: float = 3.014
    """PIM dispatcher, CXL controller, decoder, load/store unit and accelerator controller, mW
    while the device steps: half their 5.98 mW dynamic plus 0.046 mW leakage, as the artifact
    charges them."""

    _positive = frozenset({"channels_per_controller", "access_clock_hz"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check_numbers(self, "device.energy")


@dataclass
class DeviceConfig:
    """One CENT device: 32 GDDR6-AiM channels with near-bank PIM (docs/hardware_model.md section 1)."""

    num_channels: int = 32
    """GDDR6-AiM channels per device (16 controllers x 2)."""
    banks_per_channel: int = 16
    """Banks per channel (4 bank groups x 4): a multiple of 4, the bank groups of equal size."""
    rows_per_bank: int = 16384
    """DRAM rows per bank (with the row size and the channels and banks: the capacity)."""
    row_elements: int = 1024
    """bf16 elements per DRAM row of a bank (1024 columns x 2 B)."""
    burst_elements: int = 16
    """Elements per burst, and the bf16 MACs a bank's unit does per column command (32 B)."""
    bytes_per_element: int = 2
    """Bytes per stored element, bf16: the weights, KV cache, capacity and DMA lines are counted in it,
    the PIM cycles per element (docs/hardware_model.md section 1, "The data type")."""
    clock_hz: float = 2e9
    """PIM command clock: one cycle is 0.5 ns. Every PIM cycle count of the time model is at it, the
    DRAM's included (a column command every column_cycles, a row switch in gemv_row_cycles), so 4e9
    is a DRAM twice as fast, not a faster controller beside the same DRAM (whose tCCD_L of 1 ns
    would keep a column every 4 cycles: raise column_cycles with it)."""
    column_cycles: float = 2.0
    """Cycles from one column command of a streamed row to the next (tCCD_L at clock_hz: 2 cycles,
    1 ns): an all-bank MAC step, an elementwise product, a burst into the global buffer. The GEMV,
    score, softmax, rotary and score x V passes stream at it (docs/hardware_model.md section 4); their
    fixed per-row and per-group cycles do not change with it. Time only: a MAC step's energy is
    device.energy.t_ccd_ns's."""
    accumulator_registers: int = 32
    """Per-bank accumulator registers: GEMV outputs per mode-switch group (reuse size)."""
    # GEMV cost terms (docs/hardware_model.md section 4).
    gemv_row_cycles: float = 103.0
    """Per output and input row: row switch plus register traffic."""
    gemv_group_cycles: float = 54.5
    """Per group of outputs and input row: two mode switches."""
    gemv_af_cycles: float = 72.4
    """Per output of the gate projection: activation-function lookup."""
    gemv_af_group_size: int = 16
    """Outputs per group in the activation ('AF') GEMV variant."""
    # Other per-op constants (docs/hardware_model.md section 4).
    norm_fixed_cycles: float = 850.0
    """RMSNorm fixed cost (reduction + rsqrt round trip)."""
    rotary_fixed_cycles: float = 98.0
    """Rotary fixed cost per vector."""
    kv_head_cycles: float = 1008.0
    """KV append: cycles per KV head per channel group."""
    score_head_cycles: float = 81.0
    """q.K^T: per key row, bank-slot and head in the row, beyond its MAC columns: the bias write,
    the result read and two mode switches (first query head of a GQA group; 904 cycles a
    1024-element row of 128-wide heads)."""
    score_rep_head_cycles: float = 70.0
    """q.K^T: the same for each further query head of the group (816 cycles a row)."""
    softmax_dma_passes: int = 6
    """Times a score vector crosses the DMA in softmax."""
    softmax_fixed_cycles: float = 98.0
    """Softmax fixed cost per head-group and row."""
    sv_row_cycles: float = 158.0
    """score x V: per-row switch cost."""
    silu_cycles_per_burst: float = 4.0
    """SiLU x up: cycles per burst."""
    silu_fixed_cycles: float = 400.0
    """SiLU x up: fixed cost."""
    # Near-memory accelerator (docs/hardware_model.md section 5): one unit per channel, pipelined.
    acc_clock_hz: float = 2e9
    """Accelerator clock (the artifact runs it at the PIM clock)."""
    acc_simd_lanes: int = 16
    """SIMD lanes of one accelerator unit (exp units, vector adders, reduction trees)."""
    acc_exp_cycles: float = 11.0
    """Cycles of one exp through a SIMD lane."""
    acc_buffer_cycles: float = 1.0
    """Cycles of one read or write of the shared buffer."""
    acc_riscv_cores: int = 8
    """RISC-V cores beside the units (rsqrt, softmax's division, rotary tables)."""
    acc_norm_riscv_cycles: float = 26.0
    """RISC-V cycles of one RMSNorm's rsqrt."""
    acc_rotary_riscv_cycles: float = 3.0
    """RISC-V cycles per rotated element of q and k (spread over the cores)."""
    acc_softmax_riscv_cycles: float = 2.0
    """RISC-V cycles per attention head of softmax's division (spread over the cores)."""
    acc_softmax_writes: int = 16
    """Shared-buffer writes per head of softmax's result."""
    host_sample_s: float = 0.15e-3
    """Host CPU sampling cost per generated token (0.15 ms)."""
    dma_bytes_per_cycle: float = 32.0
    """DMA engine width: one 32 B line per cycle, serialized device-wide (the RMSNorm, rotary,
    KV-append, softmax and SiLU passes move their data through it)."""
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    """Energy constants."""
    unit_cost_usd: float = 2.69 + 1.10 + 24.38
    """Per device: die $2.69 + packaging $1.10 + NRE $24.38 at 1M units (section 9), for the
    paper's 32 channels: a fixed figure that does not follow `num_channels` or the bank geometry,
    so a sweep over those gets capacity and speed at the same price unless it sets this too. It
    prices the devices (`tok_s_per_usd`); tokens per dollar against GPUs use the artifact's TCO
    convention instead (0.73 per 32 devices, 1.76 per 4 A100s), which this does not move."""

    @property
    def capacity_bytes(self) -> int:
        """DRAM per device: channels x banks x rows x row size (32 x 16 x 16384 x 2 KB = 16 GiB)."""
        return (self.num_channels * self.banks_per_channel * self.rows_per_bank * self.row_elements
                * self.bytes_per_element)

    @property
    def row_column_ops(self) -> int:
        """Column commands that stream one full row: row_elements / burst_elements (1024 / 16)."""
        return self.row_elements // self.burst_elements

    @property
    def peak_pim_bytes_per_s(self) -> float:
        """Weights streamed per second by all banks: each bank reads a burst per all-bank MAC,
        one every 2 cycles (512 GB/s a channel, 16.4 TB/s a device)."""
        return self.num_channels * self.banks_per_channel * self.burst_elements * self.bytes_per_element * self.clock_hz / 2

    @property
    def dma_line_cycles(self) -> float:
        """Cycles the DMA engine takes per 32 B line (a burst): burst bytes / its width."""
        return self.burst_elements * self.bytes_per_element / self.dma_bytes_per_cycle

    _positive = frozenset({"num_channels", "banks_per_channel", "rows_per_bank", "row_elements", "burst_elements",
                           "bytes_per_element", "clock_hz", "column_cycles", "accumulator_registers",
                           "gemv_af_group_size", "acc_clock_hz", "acc_simd_lanes", "acc_riscv_cores",
                           "dma_bytes_per_cycle"})
    """Numbers that must be > 0 (every other one, the cycle, time and cost terms, >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check_numbers(self, "device")
        _check(self.row_elements % self.burst_elements == 0, "device.row_elements", self.row_elements,
               f"it is not a multiple of device.burst_elements={self.burst_elements} (a row is whole bursts): set "
               "the one you meant to change so it is, or both")
        # The time and energy models spread a block's elementwise work over its banks / 4 and / 2 and
        # softmax's heads over a channel's 4 bank groups (cent_serve.timing.pim.BANK_GROUPS): fewer
        # than 4 banks a block would divide by zero, and a count not a multiple of 4 drops banks.
        _check(self.banks_per_channel % 4 == 0, "device.banks_per_channel", self.banks_per_channel,
               "make it a multiple of 4 (a channel's 4 bank groups of equal size, e.g. 8, 16 or 32)")
        _check(self.bytes_per_element in (1, 2, 4), "device.bytes_per_element", self.bytes_per_element,
               "use 1 (int8), 2 (bfloat16) or 4 (float32): a burst holds whole elements")
        if self.gemv_af_group_size > self.accumulator_registers:  # name the one changed from its default
            if self.accumulator_registers != DeviceConfig.accumulator_registers:
                _check(False, "device.accumulator_registers", self.accumulator_registers,
                       f"an activation GEMV group's device.gemv_af_group_size={self.gemv_af_group_size} outputs sit in "
                       f"the accumulator registers: use at least {self.gemv_af_group_size}, or lower that")
            _check(False, "device.gemv_af_group_size", self.gemv_af_group_size,
                   f"a group's outputs sit in the accumulator registers: use at most "
                   f"device.accumulator_registers={self.accumulator_registers}, or raise that")
        if isinstance(self.energy, dict):
            self.energy = _from_dict(EnergyConfig, self.energy, "device.energy")
        _check(isinstance(self.energy, EnergyConfig), "device.energy", self.energy,
               "it is a section of fields: set them, e.g. device.energy.rd_mw=438.15")
        # A controller serves whole channels: its power is shared by channels_per_controller of them
        # (cent_serve.timing.energy), so a count that does not divide the channels would leave a
        # fraction of a controller.
        per = self.energy.channels_per_controller
        _check(self.num_channels % per == 0, "device.energy.channels_per_controller", per,
               f"it does not divide device.num_channels={self.num_channels} (a controller serves whole "
               f"channels): use a divisor of it, e.g. {max(d for d in (1, 2, 4) if self.num_channels % d == 0)}")


@dataclass
class FabricConfig:
    """The CXL switch (docs/hardware_model.md section 6)."""

    cxl_port_latency_ns: float = 25.0
    """One CXL port crossing."""
    num_cxl_ports: int = 4
    """CXL ports crossed on a one-hop round trip."""
    pcie_latency_ns: float = 30.0
    """One PCIe PHY crossing."""
    num_pcie_crossings: int = 2
    """PCIe crossings on a one-hop round trip."""
    switch_latency_ns: float = 20.0
    """Switch traversal."""
    switch_lanes: int = 144
    """Lanes of the switch, shared equally by the devices."""
    lane_gbps: float = 8.0
    """Bytes per second per lane, in GiB/s (2^30 bytes a second; not gigabits)."""
    multicast: bool = True
    """CENT always multicasts, which halves the per-lane bandwidth; false: the whole bandwidth, and a
    payload for k devices is sent k times (docs/hardware_model.md section 6)."""
    flit_bytes: int = 256
    """PBR flit size on the wire."""
    flit_payload_bytes: int = 192
    """Payload per flit: 3 x 64 B messages."""
    activation_bytes: int = 2
    """Bytes of one activation value on the switch: 2, bf16, as CENT sends them whatever the banks
    hold; 1 or 4 to ask what an 8-bit or a float32 wire format would do. It sizes every payload's
    flits (a block's output hop, the tensor-parallel exchanges, the MoE combine) and the links'
    energy; the devices still compute and store in `device.bytes_per_element`."""
    charge_local_hops: bool = True
    """Charge a block's output a switch hop even when the next block sits on the same device (as
    the artifact does); false: the device's DMA engine moves it (tokens x D values at
    `device.dma_bytes_per_cycle`, drawing no link energy under the `cent` energy convention)."""

    _positive = frozenset({"switch_lanes", "lane_gbps", "flit_bytes", "flit_payload_bytes", "activation_bytes"})
    """Numbers that must be > 0 (every other one, the latencies and crossings, >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check(self.switch_lanes >= 1, "fabric.switch_lanes", self.switch_lanes,
               "use a positive lane count")
        _check(self.lane_gbps > 0, "fabric.lane_gbps", self.lane_gbps, "use a positive bandwidth")
        _check(0 < self.flit_payload_bytes <= self.flit_bytes, "fabric.flit_payload_bytes",
               self.flit_payload_bytes, f"use a value in (0, fabric.flit_bytes={self.flit_bytes}]")
        _check(self.activation_bytes in (1, 2, 4), "fabric.activation_bytes", self.activation_bytes,
               "use 1 (8-bit), 2 (bfloat16, CENT's) or 4 (float32): a value crosses the switch whole")
        _check_numbers(self, "fabric")

    @property
    def hop_latency_s(self) -> float:
        """One-hop round trip: 4 x 25 + 2 x 30 + 20 = 180 ns."""
        ns = (self.num_cxl_ports * self.cxl_port_latency_ns
              + self.num_pcie_crossings * self.pcie_latency_ns + self.switch_latency_ns)
        return ns * 1e-9


MAX_DEVICES = 1024
"""The most CENT devices a config may name (`parallel.num_devices`)."""


@dataclass
class ParallelConfig:
    """How the model maps onto devices (docs/hardware_model.md section 3).

    `pp` is the number of pipeline stages and `tp` the devices per stage.
    `pp == model.num_layers` with `tp == 1` is CENT's pure pipeline (several
    blocks per device, each on its own channel group); otherwise each stage
    spans all channels of `tp` devices and `pp * tp` must not exceed
    `num_devices`. `pp = 0` picks the pure pipeline.
    """

    num_devices: int = 8
    """Emulated CENT devices."""
    pp: int = 0
    """Pipeline stages; 0 = one stage per block (pure pipeline)."""
    tp: int = 1
    """Devices per stage (tensor parallel)."""
    lm_head: str = "unit"
    """Where the final norm and LM head run on the last stage's device(s): `unit`, a unit of its own
    that no stage waits for (the artifact charges its time per token and places it nowhere), or
    `last_stage`, on the last stage's channel group, which it holds: that stage's next blocks wait
    for it (docs/hardware_model.md section 4)."""

    _positive = frozenset({"num_devices", "tp"})
    """Numbers that must be > 0 (`_number_fix`)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.num_devices, int) and 1 <= self.num_devices <= MAX_DEVICES,
               "parallel.num_devices", self.num_devices, f"use an integer from 1 to {MAX_DEVICES}")
        _check(isinstance(self.tp, int) and 1 <= self.tp <= self.num_devices, "parallel.tp",
               self.tp, f"use an integer from 1 to parallel.num_devices={self.num_devices}")
        _check(isinstance(self.pp, int) and self.pp >= 0, "parallel.pp", self.pp,
               "use a non-negative integer (0 = one stage per block)")
        _check(self.lm_head in LM_HEAD_PLACEMENTS, "parallel.lm_head", self.lm_head,
               f"use one of {', '.join(LM_HEAD_PLACEMENTS)}")
        _check_numbers(self, "parallel")


LM_HEAD_PLACEMENTS = ("unit", "last_stage")
"""`parallel.lm_head`'s values."""


LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
"""What log-probabilities report (vLLM's `--logprobs-mode` names): the distribution the sampler
draws from (after temperature, top-k and top-p; the default here), or the model's own
(log-softmax of the logits; vLLM's default)."""
PLACEMENTS = ("spread", "pack", "replica")
"""`server.placement`'s values (the Ray executor's `place_devices`)."""


@dataclass
class SchedulerConfig:
    """Continuous batching in simulated time."""

    max_seqs_per_stage: int = 1
    """Sequences per pipeline micro-batch (the paper uses 1)."""
    max_waiting: int = 1024
    """Requests left waiting once every free lane place is taken, at most; past it requests are
    refused (the API answers 429)."""
    prefill_chunk_tokens: int = 1
    """Prompt tokens per step: 1 = token by token like the paper; larger = chunked prefill."""
    seed: int = 0
    """Seed of the stand-in sampler and of sampling without an explicit seed."""
    kv_block_tokens: int = 16
    """Tokens per KV-cache block: the paging unit of the devices' caches and of the scheduler's
    admission (vLLM's block_size)."""
    num_kv_blocks_override: int | None = None
    """Admit at most this many KV blocks per replica, fewer than the devices hold (vLLM's
    num_gpu_blocks_override: for tests of preemption and admission)."""
    logprobs_mode: str = "processed_logprobs"
    """What `logprobs` report: `processed_logprobs`, the distribution tokens are drawn from
    (after temperature, top-k and top-p), or `raw_logprobs`, the model's own (log-softmax of the
    logits; vLLM's default). Timing-only runs report the stand-in sampler's uniform one."""

    _positive = frozenset({"max_seqs_per_stage", "max_waiting", "prefill_chunk_tokens", "kv_block_tokens"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check(self.logprobs_mode in LOGPROBS_MODES, "scheduler.logprobs_mode", self.logprobs_mode,
               "use " + " or ".join(map(repr, LOGPROBS_MODES)))
        _check(self.kv_block_tokens >= 1, "scheduler.kv_block_tokens", self.kv_block_tokens,
               "use a positive number of tokens")
        _check(self.num_kv_blocks_override is None or self.num_kv_blocks_override >= 0,
               "scheduler.num_kv_blocks_override", self.num_kv_blocks_override, "use a number of blocks, or leave it unset")
        _check(self.max_seqs_per_stage >= 1, "scheduler.max_seqs_per_stage",
               self.max_seqs_per_stage, "use a positive integer")
        _check(self.max_waiting >= 1, "scheduler.max_waiting", self.max_waiting,
               "use a positive integer")
        _check(self.prefill_chunk_tokens >= 1, "scheduler.prefill_chunk_tokens",
               self.prefill_chunk_tokens, "use a positive integer")
        _check_numbers(self, "scheduler")


@dataclass
class ServerConfig:
    """The HTTP front end and where Ray runs."""

    host: str = "127.0.0.1"
    """Bind address (loopback by default)."""
    port: int = 8000
    """Listen port."""
    clock: str = "virtual"
    """`virtual`: run as fast as possible; `paced`: release tokens at their simulated time."""
    pace_factor: float = 1.0
    """In paced mode, wall seconds per simulated second."""
    ray_address: str | None = None
    """Existing Ray cluster to join (None = start a local Ray)."""
    api_key: str | None = field(default=None, repr=False)
    """Require `Authorization: Bearer <key>` on every path but `/health`, `/ping`, `/docs` and
    `/openapi.json` when set (`cent serve` reads `--api-key` or `CENT_API_KEY`); never printed,
    redacted by `config_to_dict`."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (bytes); larger ones get 413. 1 MiB holds a 4096-token
    prompt as text ~60 times over."""
    device_resource: str = "cent_device"
    """Ray resource a node advertises per emulated device it may host (deploy/README.md)."""
    placement: str = "spread"
    """On a cluster advertising `device_resource`: `spread` each replica's devices over the nodes (a
    node's loss then fails every replica with a device there), `pack` them (fill one node first), or
    `replica`: all of a replica's devices on one node, each replica on a node of its own while one
    has room, so a node's loss fails only its replicas (deploy/README.md, faults)."""
    placement_timeout_s: float = 30.0
    """Longest wait for the cluster to grant the devices before a clear error."""
    pin_replica_cpu: bool = True
    """Run each replica's device actors on one CPU of their node (replicas take the CPUs in turn).
    A round visits the devices one after the other, and on one CPU handing it on wakes no other
    processor (measured on a 2-core VM: about 20 us a hop instead of 50). Not applied where
    tensor-parallel ranks compute full numerics: those run at the same time."""
    max_tokens_default: int | None = None
    """Tokens a request gets when it names no limit (clamped to the context the prompt leaves).
    None: OpenAI's defaults, 16 for completions and the rest of the context for chat (vLLM's
    `--override-generation-config '{"max_new_tokens": N}'` plays this role)."""
    allowed_origins: str = ""
    """Web origins whose pages may call the API from a browser (CORS), comma-separated
    (`http://localhost:3000,https://ui.example.com`), or `*` for any, vLLM's default. Empty: none,
    so a page on another origin cannot read the API (a server on loopback is not exposed to every
    site the user's browser visits). Cookies are never allowed (vLLM's default); the API key goes
    in the Authorization header, which preflights allow."""

    def origins(self) -> list[str]:
        """`allowed_origins` as the list of origins a browser sends in `Origin` (lowercase, no
        default port: the CORS check compares strings); empty: no CORS."""
        given = [o.strip() for o in self.allowed_origins.split(",") if o.strip()]
        return [web_origin(o) or o for o in given]

    _positive = frozenset({"pace_factor", "placement_timeout_s", "max_body_bytes", "max_tokens_default"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check(self.clock in ("virtual", "paced"), "server.clock", self.clock,
               "use 'virtual' or 'paced'")
        _check(self.max_tokens_default is None or self.max_tokens_default >= 1, "server.max_tokens_default",
               self.max_tokens_default, "use a positive number of tokens, or leave it unset")
        _check(self.placement in PLACEMENTS, "server.placement", self.placement,
               "use " + " or ".join(map(repr, PLACEMENTS)))
        _check(self.placement_timeout_s > 0, "server.placement_timeout_s", self.placement_timeout_s,
               "use a positive number of seconds")
        _check(self.max_body_bytes >= 1024, "server.max_body_bytes", self.max_body_bytes,
               "use at least 1024 bytes")
        _check(0 <= self.port <= 65535, "server.port", self.port, "use a port in 0..65535")
        origins = self.origins()
        _check(origins == ["*"] or all(web_origin(o) for o in origins), "server.allowed_origins",
               self.allowed_origins, "use '*' or comma-separated origins, each a scheme, a host and any port, "
               "nothing more: 'http://localhost:3000,https://ui.example.com'")
        _check(self.pace_factor > 0, "server.pace_factor", self.pace_factor,
               "use a positive factor")
        _check_numbers(self, "server")


_HOST = re.compile(r"[a-z0-9._~-]+|\[[0-9a-f:.]+\]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def web_origin(text: str) -> str | None:
    """`text` as a browser sends it in `Origin` (RFC 6454: scheme, host, a port unless the scheme's
    default; lowercase), or None if it is not an origin: user info, a path, a query, a fragment, a
    bad port. Any scheme (a browser extension's `chrome-extension://ID` too) and `null` pass."""
    if text == "null":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    if (not re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme) or not _HOST.fullmatch(host)
            or "@" in parts.netloc or any(c in text for c in "?#\\") or parts.path
            or text.endswith(":") or not text.lower().startswith(parts.scheme + "://")):
        return None
    shown = port is not None and port != _DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.scheme}://{host}" + (f":{port}" if shown else "")


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
    positive number; None = the kind's own (none for the H100: tokens per dollar are then not reported)."""

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


def parse_hardware(text: str) -> tuple[str, int] | None:
    """`cent` -> None; `gpu:KIND:N` -> (kind, N). ValueError naming the fix otherwise."""
    from cent_serve.gpu.kinds import GPU_KINDS
    if text == "cent":
        return None
    parts = text.split(":")
    if len(parts) != 3 or parts[0] != "gpu" or parts[1] not in GPU_KINDS or not parts[2].isdigit() \
            or int(parts[2]) < 1:
        raise ValueError(f"--hardware {text!r} is invalid: use 'cent' or gpu:KIND:N with KIND one of "
                         f"{', '.join(GPU_KINDS)} and N GPUs, e.g. gpu:a100-80gb:4")
    return parts[1], int(parts[2])


def resolve_model(name_or_path: str) -> ModelConfig:
    """A preset name (`tiny`, `llama2-7b`, ...) or a Hugging Face checkpoint directory (its
    config.json is enough for timing), as `--model` takes it."""
    if name_or_path in MODEL_PRESETS:
        return model_preset(name_or_path)
    if Path(name_or_path).exists():
        from cent_serve.model.weights import model_config_from_hf
        return model_config_from_hf(name_or_path)
    raise ValueError(f"--model {name_or_path!r} is neither a preset ({', '.join(sorted(MODEL_PRESETS))}) "
                     "nor an existing checkpoint directory")


@dataclass
class CentConfig:
    """The whole resolved configuration; written next to every result.

    Every number in it is finite and >= 0, and > 0 where 0 would make no device or be divided by
    (counts, sizes, clocks, bandwidths, gpu.tco_per_gpu): NaN, infinities and negative values are
    refused, naming the field, the value and the fix. A section takes fields, never a value
    (`--set device=5` is refused). The model is chosen whole, never relabelled: with `--model
    NAME_OR_DIR`, or in YAML with `model: {name: PRESET}` or `model: {checkpoint: DIR}` (the
    checkpoint's config.json, as `--model DIR` loads it; fields given beside either override it);
    a name that is no preset is refused, and so are `--set model.name` and `--set model.checkpoint`
    (but `--set model.checkpoint=none`: the same model with seeded random weights)."""

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
    """`full` (real weights and math), `off` (timing only), `auto` (full up to 1B params when the
    weights are there: a checkpoint directory with only its config.json runs timing only)."""
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
        """The KV a sequence of a sliding-window model keeps (None: all of it): the window, a
        step's tokens (`scheduler.prefill_chunk_tokens`; on GPUs `gpu.max_num_batched_tokens`) and
        one block for the alignment; the blocks of older positions are reused as it moves on."""
        m, sc = self.model, self.scheduler
        step = self.gpu.num_batched_tokens if self.on_gpus else sc.prefill_chunk_tokens
        return m.sliding_window + step + sc.kv_block_tokens if m.sliding_window else None

    def kv_tokens(self, tokens: int) -> int:
        """The tokens of a sequence's KV that take room: all, or the cap of a sliding window."""
        cap = self.kv_tokens_cap
        return tokens if cap is None else min(tokens, cap)

    @property
    def resolved_numerics(self) -> str:
        """`full` or `off` once `auto` is resolved (full up to 1e9 parameters)."""
        return self.numerics_why[0]

    @property
    def numerics_why(self) -> tuple[str, str]:
        """(`resolved_numerics`, why: the flag, or what `auto` found), for a start-up line."""
        if self.numerics != "auto":
            return self.numerics, "as set"
        if self.model.checkpoint and not checkpoint_has_weights(self.model.checkpoint):
            return "off", "auto: the checkpoint has no weight files"  # a config.json alone: its shape, timed
        n = self.model.param_count()
        if n <= 1_000_000_000:
            return "full", "auto: 1B parameters or fewer"
        return "off", (f"auto: {n / 1e9:.1f}B parameters, over the 1B full numerics run to; the text is a stand-in, "
                       "the times are the model's")


WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "*.pt", "*.pth", "*.gguf")
"""Files that hold a checkpoint's weights in some format (only safetensors load: `weights.py`)."""


def checkpoint_has_weights(directory: str | Path) -> bool:
    """Whether a checkpoint directory holds weight files of any format, not a config.json alone (a
    pytorch_model.bin is weights: loading it is refused by name, rather than timed silently)."""
    return any(next(Path(directory).glob(pattern), None) is not None for pattern in WEIGHT_FILES)


# ---------------------------------------------------------------- dict / YAML / overrides


DERIVED_FIELDS = {
    "device.capacity_bytes": "it is derived (num_channels x banks_per_channel x rows_per_bank x row_elements x "
                             "bytes_per_element): set those, e.g. device.rows_per_bank",
    "device.full_row_column_ops": "it is derived (row_elements / burst_elements): set those",
    "device.kv_row_cycles": "it is derived (a row's bursts through the DMA: row_elements / burst_elements lines "
                            "at device.dma_bytes_per_cycle)",
    "device.energy.bank_activation_nj": "it is derived (act_mw x t_rc_ns): set those",
    "device.energy.rd_burst_nj": "it is derived (rd_mw x t_burst_ns): set those",
    "device.energy.wr_burst_nj": "it is derived (wr_mw x t_burst_ns): set those",
    "device.energy.mac16_nj": "it is derived (banks_per_channel x mac_bank_read_share x rd_mw x t_ccd_ns): "
                              "set those, e.g. device.energy.mac_bank_read_share",
    "device.energy.controller_instruction_pj": "it is derived (controller_trx_mw / channels_per_controller, "
                                               "one cycle a data command): set those",
    "device.energy.dram_command_pj": "it is derived (controller_phy_mw / channels_per_controller, one cycle a "
                                     "command): set those",
    "device.energy.precharge_cycles": "it is a time now: device.energy.precharge_ns (16 ns: 32 cycles at 2 GHz)",
    "device.energy.write_precharge_cycles": "it is a time now: device.energy.write_precharge_ns (36.5 ns)",
    "device.energy.sram_static_mw": "it is three fields now: device.energy.global_buffer_static_mw, "
                                    "shared_buffer_static_mw, instruction_buffer_static_mw",
    "device.score_row_cycles": "it is derived per head in a row: device.score_head_cycles (+ its MAC columns)",
    "device.score_rep_cycles": "it is derived per head in a row: device.score_rep_head_cycles",
    "device.sv_parallel_rows": "it is derived (a head's V^T rows in a bank: head_dim / banks_per_channel)",
    "device.acc_norm_base": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_norm_per_8k": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_softmax_per_512": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_head": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
    "device.acc_rotary": "the accelerator is described by its parts: device.acc_* (cent info --describe)",
}
"""Fields that were removed because they are derived from others: what to set instead."""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@lru_cache(maxsize=None)
def _sections(cls: type) -> dict[str, type]:
    """Field name -> dataclass of the fields of `cls` that are sections of fields (model, device, ...)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if is_dataclass(hints[f.name])}


@lru_cache(maxsize=None)
def _all_paths(cls: type = None) -> tuple[str, ...]:
    """Every field's dotted path in the config, sections' fields included (`device.energy.t_ccd_ns`)."""
    cls = cls or CentConfig
    out = []
    for f in fields(cls):
        sub = _sections(cls).get(f.name)
        out += [f"{f.name}.{p}" for p in _all_paths(sub)] if sub else [f.name]
    return tuple(out)


def _likely_meant(path: str) -> list[str]:
    """Fields a mistyped `path` likely meant: a close spelling of the whole path, else the name, or
    one close to it, in another section (device.t_ccd_ns: device.energy.t_ccd_ns)."""
    import difflib

    paths = _all_paths()
    near = difflib.get_close_matches(path, paths, n=3, cutoff=0.8)
    if not near:
        names = difflib.get_close_matches(path.rsplit(".", 1)[-1], {p.rsplit(".", 1)[-1] for p in paths}, n=3,
                                          cutoff=0.8)
        near = [p for p in paths if p.rsplit(".", 1)[-1] in names]
    return near[:3]


FLAG_FIELDS = {"devices": "parallel.num_devices", "num_devices": "parallel.num_devices", "pp": "parallel.pp",
               "tp": "parallel.tp"}
"""A command-line flag's name (`--devices`, or `cent sweep --vary devices=...`) set as if it were a
field: the field it sets."""


def _not_a_field(path: str, why: str) -> str:
    """The error for a key that is no field: what it likely meant, else `why` (what the section has)."""
    if path in FLAG_FIELDS:
        flag = "devices" if FLAG_FIELDS[path] == "parallel.num_devices" else path
        return (f"{path} is not a field: did you mean {FLAG_FIELDS[path]} (which --{flag} sets)? (cent info "
                "--describe lists every field)")
    near = _likely_meant(path)
    if near:
        return f"{path} is not a field: did you mean {' or '.join(near)}? (cent info --describe lists every field)"
    return f"{path} is not a field: {why}"


_SECTION_FIX = ("{name} is a section of fields, not a value: set its fields, e.g. --set {name}.FIELD=VALUE "
                "(in YAML: `{leaf}: {{FIELD: VALUE, ...}}`)")
"""The fix for a section given a scalar (`--set device=5`, YAML `device: {energy: 5}`)."""


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}={data!r} is invalid: expected a mapping of fields")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            gone = DERIVED_FIELDS.get(_join(where, key))
            if gone:
                raise ValueError(f"{_join(where, key)} is not a field any more: {gone}")
            raise ValueError(_not_a_field(_join(where, key), f"known fields{' of ' + where if where else ''} are "
                                                             f"{', '.join(sorted(known))}"))
        hint = hints[key]
        if is_dataclass(hint):
            if value is None:  # a section left empty in YAML (`device:`): its defaults
                continue
            if isinstance(value, dict):
                value = _from_dict(hint, value, _join(where, key))
            elif not isinstance(value, hint):
                _check(False, _join(where, key), value, _SECTION_FIX.format(name=_join(where, key), leaf=key))
        else:
            value = _typed(value, hint, _join(where, key))
        kwargs[key] = value
    return cls(**kwargs)


NULL_WORDS = ("none", "null", "")
"""How a config file or `--set` writes an unset optional field."""


def _is_null(text: str) -> bool:
    return text.strip().lower() in NULL_WORDS


def _int_text(text: str) -> int:
    """An integer written as text: 4096, or as a float that is one (1e4, 64.0: YAML reads `1e4` as a
    string, and --set gives strings). ValueError otherwise."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


def _ids_text(value: Any, name: str) -> tuple[int, ...]:
    """A tuple of ids from a list, one id, or text `5,9` (nothing or none: no ids)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, str):
        items = [] if _is_null(value) else [x for x in value.split(",") if x.strip()]
    else:
        items = [value]
    try:
        return tuple(v if isinstance(v, int) and not isinstance(v, bool) else _int_text(str(v)) for v in items)
    except (ValueError, OverflowError):
        raise ValueError(f"{name}={value!r} is invalid: expected integers separated by commas "
                         f"(e.g. {name}=128008,128009), or none") from None


def _typed(value: Any, hint: Any, name: str) -> Any:
    """Coerce YAML/JSON scalars to the field's type (PyYAML reads `1.0e9` as a string; `--set`
    gives strings); `X | None` takes None or an X."""
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    if type(None) in getattr(hint, "__args__", ()) and len(args) == 1:
        if value is None or (isinstance(value, str) and _is_null(value)):
            return None
        hint = args[0]
        if hint in (int, float) and isinstance(value, str):
            try:
                value = float(value) if hint is float else _int_text(value)
            except (ValueError, OverflowError):
                raise ValueError(f"{name}={value!r} is invalid: expected {'a number' if hint is float else 'an integer'}"
                                 " or none") from None
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is invalid: expected a number") from None
    if hint is int and not isinstance(value, int):
        try:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return _int_text(value)
        except (ValueError, OverflowError):
            pass
        raise ValueError(f"{name}={value!r} is invalid: expected an integer, e.g. {INTEGER_EXAMPLES.get(name, '4096')}")
    if hint is bool and not isinstance(value, bool):
        flag = _bool_text(str(value)) if isinstance(value, (str, int)) else None
        if flag is None:
            raise ValueError(f"{name}={value!r} is invalid: expected true or false")
        return flag  # 0 / 1, "no" / "yes" ... as --set reads them
    if hint is str and not isinstance(value, str):
        quote = (f": YAML reads an unquoted {'on, yes or true' if value else 'off, no or false'} as {str(value).lower()}, "
                 f"so quote the word ({name.rsplit('.', 1)[-1]}: \"{'on' if value else 'off'}\")"
                 if isinstance(value, bool) else "")
        raise ValueError(f"{name}={value!r} is invalid: expected a string{quote}")
    if getattr(hint, "__origin__", None) is tuple:
        return _ids_text(value, name)
    return value


INTEGER_EXAMPLES = {"device.bytes_per_element": "1 (int8), 2 (bfloat16) or 4 (float32); sub-byte types such as "
                                                "4-bit are not modelled"}
"""The example an integer field's type error gives, where 4096 would mislead."""


REDACTED = "<redacted>"
"""What `config_to_dict` writes for an API key (`load_config` reads it back as no key)."""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists; an API key is redacted; on GPUs, the
    batching their kind gave, not its 0: a results' config.json says what ran)."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))
    server = data.get("server") if isinstance(data, dict) else None
    if isinstance(server, dict) and server.get("api_key"):
        server["api_key"] = REDACTED
    if isinstance(cfg, CentConfig) and cfg.on_gpus:
        data["gpu"].update(max_num_seqs=cfg.gpu.num_seqs, max_num_batched_tokens=cfg.gpu.num_batched_tokens)
    return data


def _bool_text(text: str) -> bool | None:
    """A boolean as `--set` and a YAML file both take it (1/true/yes/on, 0/false/no/off), or None."""
    low = text.strip().lower()
    return True if low in ("1", "true", "yes", "on") else False if low in ("0", "false", "no", "off") else None


def _coerce(text: str, current: Any, name: str) -> Any:
    """Parse a CLI override string into the type of the current value."""
    if isinstance(current, bool):
        flag = _bool_text(text)
        if flag is None:
            raise ValueError(f"{name}={text!r} is invalid: use true or false")
        return flag
    if current is None:
        return None if _is_null(text) else text
    if isinstance(current, tuple):  # ids, comma-separated; empty or none for none
        return _ids_text(text, name)
    try:
        if isinstance(current, int):
            return _int_text(text)
        if isinstance(current, float):
            return float(text)
    except (ValueError, OverflowError):
        kind = (f"an integer, e.g. {INTEGER_EXAMPLES.get(name, '4096')}" if isinstance(current, int)
                else "a number, e.g. 1.5e9")
        raise ValueError(f"{name}={text!r} is invalid: expected {kind}") from None
    return text


MODEL_CHOSEN_WHOLE = ("model.name", "model.checkpoint")
"""Fields `--set` does not take: they name the model, whose every field `--model` (a preset or a
checkpoint directory) sets at once; set alone, they would relabel the model, not load it."""


def _parse_override(data: dict[str, Any], item: str) -> tuple[dict[str, Any], str, Any]:
    """(the section's dict in `data`, the field, its typed value) of one `section.field=value`
    string: ValueError naming an unknown field or section, a section set to a value, a value
    of the wrong type or against the config's rule for numbers (`_number_fix`), before anything
    is built. Cross-field checks are left to the config's own validation."""
    path, sep, text = item.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ValueError(f"override {item!r} is invalid: write section.field=value, e.g. device.clock_hz=1e9")
    keys = path.split(".")
    node: Any = data
    cls: type = CentConfig
    where = ""
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node or key not in _sections(cls):
            raise ValueError(_not_a_field(path, f"{_join(where, key)} is not a config section (sections"
                                                f"{' of ' + where if where else ''}: {', '.join(_sections(cls)) or 'none'})"))
        node, cls, where = node[key], _sections(cls)[key], _join(where, key)
    name = keys[-1]
    if not isinstance(node, dict) or name not in node:
        gone = DERIVED_FIELDS.get(path)
        raise ValueError(f"{path} is not a field any more: {gone}" if gone else
                         _not_a_field(path, f"known fields{' of ' + where if where else ''} are {', '.join(sorted(node))}"))
    if name in _sections(cls):
        _check(False, path, text, _SECTION_FIX.format(name=path, leaf=name))
    if path in MODEL_CHOSEN_WHOLE and not (path == "model.checkpoint" and _is_null(text)):
        _check(False, path, text, f"the model is chosen whole: use --model NAME_OR_DIR (a preset or a checkpoint "
                                  f"directory; cent sweep: --vary model=A,B), e.g. --model {text}")
    if name in _numeric_fields(cls):  # parsed as the field's type, whatever the value it holds
        kind, optional = _numeric_fields(cls)[name]
        value = None if optional and _is_null(text) else _coerce(text, kind(), path)
        fix = _number_fix(cls, name, value)
        _check(fix is None, path, value, fix or "")
    else:
        value = _typed(_coerce(text, node[name], path), get_type_hints(cls)[name], path)
    return node, name, value


def build_config(model: str | None = None, *, config: str | Path | None = None, devices: int | None = None,
                 pp: int | None = None, tp: int | None = None, hardware: str | None = None,
                 numerics: str | None = None, seed: int | None = None, overrides: list[str] | tuple = ()) -> CentConfig:
    """The config the `cent` commands' flags resolve, as keywords: `build_config("llama2-70b", devices=32,
    pp=80, overrides=["device.clock_hz=1e9"])` is `--model llama2-70b --devices 32 --pp 80 --set
    device.clock_hz=1e9`. In their order of precedence: the `config` file (YAML), then `model` (a
    preset's name or a checkpoint directory, replacing the whole model section), `seed`, `numerics`,
    `devices`, `pp`, `tp` (None: the file's or the default), `hardware` (`cent` or `gpu:KIND:N`), then
    every `overrides` item (`section.field=value`). ValueError, one line naming the field, the value and
    the fix (worded with the flags: `--model` is `model`, `--set` is `overrides`)."""
    cfg = load_config(config) if config else CentConfig()
    if model:
        cfg.model = resolve_model(str(model))
    if seed is not None:
        cfg.model.seed = seed
    if numerics:
        cfg.numerics = numerics
    if devices is not None or pp is not None or tp is not None:
        p = cfg.parallel  # these replace their fields; the rest (lm_head) is the config's
        cfg.parallel = dataclasses.replace(p, num_devices=p.num_devices if devices is None else devices,
                                           pp=p.pp if pp is None else pp, tp=p.tp if tp is None else tp)
    if hardware is not None:
        gpu = parse_hardware(hardware)
        cfg.gpu = dataclasses.replace(cfg.gpu, kind=gpu[0], count=gpu[1]) if gpu else dataclasses.replace(cfg.gpu, count=0)
    if isinstance(overrides, str):  # one item given bare: a list of its characters would be refused one by one
        overrides = [overrides]
    cfg = apply_overrides(cfg, list(overrides or ()))
    if hardware is not None:
        _check_hardware(hardware, cfg)
    return cfg


def _check_hardware(hw: str, cfg: CentConfig) -> None:
    """`--hardware` says what serves; a `--set gpu.count` or `gpu.kind` that contradicts it (e.g.
    `--hardware gpu:a100-80gb:4 --set gpu.count=0`, which would quietly run CENT) is refused."""
    gpu = parse_hardware(hw)
    if gpu is None:
        wrong = "gpu.count" if cfg.on_gpus else None
    else:
        wrong = "gpu.count" if cfg.gpu.count != gpu[1] else "gpu.kind" if cfg.gpu.kind != gpu[0] else None
    if wrong:
        value = getattr(cfg.gpu, wrong.split(".")[1])
        raise ValueError(f"{wrong}={value!r} is invalid with --hardware {hw}, which sets the hardware: drop "
                         f"--set {wrong}, or say it in --hardware (gpu:KIND:N for GPUs, cent for CENT devices)")


def check_override(cfg: CentConfig, item: str) -> Any:
    """The typed value of `item`, or ValueError when `apply_overrides(cfg, [item])` would refuse it on
    its own (an unknown field, a value of the wrong type or against the rule for numbers); `cent
    sweep` checks its `--vary` values with it before any point runs."""
    return _parse_override(dataclasses.asdict(cfg), item)[2]


def apply_overrides(cfg: CentConfig, overrides: list[str]) -> CentConfig:
    """Apply `section.field=value` strings (e.g. `device.clock_hz=1e9`) and re-validate."""
    data = dataclasses.asdict(cfg)
    for item in overrides:
        node, name, value = _parse_override(data, item)
        node[name] = value
    return _from_dict(CentConfig, data, "")


@lru_cache(maxsize=None)
def _unique_keys_loader():
    """yaml's safe loader, refusing a key given twice in one mapping (it keeps the last silently: a
    sweep's base config set twice would run the value the user did not mean)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written here (a `<<` merge may override them: legal)
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key} is given twice in one section: "
                                                            "keep one of them", key_node.start_mark)
                seen.add(key)
            except TypeError:  # unhashable: construct_mapping says so in yaml's words
                pass
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


_BENCH_DEFAULTS = dict(start_s=0.0, time_scale=1.0, prompt_scale=1.0, output_scale=1.0, burstiness=1.0, seed=0)
"""A recorded `bench` option at these values needs no flag."""


def bench_flags(bench: dict) -> str:
    """The `cent bench` flags that select the requests a results file's `bench` section records
    (`bench.cli._recorded`): its trace, or `--synthetic` and the lengths, and every option given."""
    import shlex

    out = []
    for key, value in bench.items():
        if value is None or key in ("executor", "arrivals", "url") or _BENCH_DEFAULTS.get(key) == value:
            continue
        if key == "trace":
            arrivals = str(bench.get("arrivals", "poisson"))
            out += (["--synthetic", arrivals] if value == "synthetic"  # ShareGPT's gamma arrivals need it too
                    else ["--trace", shlex.quote(str(value))] + (["--synthetic", arrivals] if arrivals != "poisson" else []))
        elif key != "format" or bench.get("trace") != "synthetic":
            # each key is its flag's name; a list (`bench sweep`'s rates) as the comma-separated values it takes
            text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
            out += ["--" + key.replace("_", "-"), shlex.quote(text)]
    return " ".join(out)


def load_config(path: str | Path) -> CentConfig:
    """Load a YAML (or JSON) config; a `model: {name: llama2-7b}` pulls in that preset."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--config {str(path)!r} cannot be read ({exc.strerror}): give the path of a YAML "
                         "config file") from None
    try:
        data = yaml.load(text, Loader=_unique_keys_loader()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "given twice" in problem:
            raise ValueError(f"config file {path}{where}: {problem}") from None
        raise ValueError(f"config file {path}: not valid YAML{where} ({problem}): fix the file "
                         "(indentation, a missing colon or quote)") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of sections (model:, parallel:, ...) "
                         "at the top level")
    bench = data.pop("bench", None)  # what cent bench writes beside a run's config (its trace, its executor)
    if isinstance(bench, dict) and bench.get("trace"):
        logging.getLogger("cent_serve").warning(
            "config file %s: its bench section (the requests its run replayed) is not read as config: to replay "
            "them again give cent bench its flags: %s", path, bench_flags(bench))
    status = data.pop("server_status", None)  # what the server of a --url replay said of itself: a record, not config
    workload = data.pop("workload", None)  # cent simulate --json's, a closed-form sweep row's
    if isinstance(workload, dict) and workload:
        logging.getLogger("cent_serve").warning(
            "config file %s: its workload (%s) is not read as config: give it as flags to rerun it (e.g. --prompt "
            "and --decode)", path, ", ".join(f"{k} {v}" for k, v in workload.items()))
    if status is not None and not data:  # a server without GET /v1/cent/config: read as config, the defaults
        model = status.get("model") if isinstance(status, dict) else None
        raise ValueError(f"config file {path}: server_status (model {model!r}) is what the server of a --url replay "
                         "said of itself, and that server did not give its config (GET /v1/cent/config): no config "
                         "to read; give the flags the server ran with (--model, --devices, ...) instead of --config")
    server = data.get("server")
    if isinstance(server, dict) and server.get("api_key") == REDACTED:
        logging.getLogger("cent_serve").warning("config file %s: server.api_key was redacted when it was written: "
                                                "no key is set (give --api-key or CENT_API_KEY)", path)
        server["api_key"] = None
    for section in _sections(CentConfig):
        value = data.get(section)
        if value is not None and not isinstance(value, dict):
            example = f"{{name: {value}}}" if section == "model" else "{field: value, ...}"
            raise ValueError(f"config file {path}: {section}={value!r} is invalid: {section} is a section of "
                             f"fields, write `{section}: {example}`")
    model = data.get("model")
    if isinstance(model, dict):
        try:
            data["model"] = _model_section(model)
        except ValueError as exc:
            raise ValueError(f"config file {path}: {exc}") from None
    try:
        return _from_dict(CentConfig, data, "")
    except ValueError as exc:
        raise ValueError(f"config file {path}: {exc}") from None


def _model_section(model: dict[str, Any]) -> dict[str, Any]:
    """A YAML `model:` section with what it names filled in, as `--model` would: `checkpoint: DIR`
    loads the checkpoint's config.json, `name: PRESET` the preset; the fields given beside them
    override. Another name is a model of one's own and needs its shape beside it (`_SHAPE_FIELDS`);
    alone it is refused: it would only relabel the default model."""
    name, ckpt = model.get("name"), model.get("checkpoint")
    if ckpt is not None:
        from cent_serve.model.weights import model_config_from_hf

        base = dataclasses.asdict(model_config_from_hf(str(ckpt)))
        _check(name is None or name == base["name"], "model.name", name,
               f"a checkpoint's model is named after its directory ({base['name']!r}): drop model.name beside "
               f"model.checkpoint")
        return {**base, **model, "checkpoint": base["checkpoint"]}
    if name is None:
        return model
    if isinstance(name, str) and name in MODEL_PRESETS:
        return {**MODEL_PRESETS[name], **model}
    # a model of one's own (or a saved resolved config) names itself and gives its shape
    _check(isinstance(name, str) and bool(_SHAPE_FIELDS & model.keys()), "model.name", name,
           f"it is not a preset: use one of {', '.join(sorted(MODEL_PRESETS))}, `checkpoint: DIR` for a Hugging "
           f"Face checkpoint directory, or give your model's shape beside its name ({', '.join(sorted(_SHAPE_FIELDS))})")
    return model


_SHAPE_FIELDS = frozenset({"hidden_size", "intermediate_size", "num_layers", "num_heads"})
"""A YAML `model:` section with any of these beside a name that is no preset describes a model of its own."""
