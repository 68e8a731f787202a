"""The model section: `ModelConfig`, the named presets and how a run names a changed one."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from cent_serve.config.checks import _check, _check_numbers
from cent_serve.config.fields import _factors_text, _ids_text, _words_text


MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "qwen2_moe", "phi3", "gemma", "gemma2",
               "gemma3_text")
"""Families the reference model runs (Hugging Face `model_type`)."""
MOE_TYPES = ("mixtral", "qwen3_moe", "qwen2_moe")
"""The mixture-of-experts families among them."""
LAYER_TYPES = ("full_attention", "sliding_attention")
"""The kinds of attention block (transformers' `layer_types` words)."""
GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")
"""Google's Gemma families: a GeGLU MLP, embeddings scaled by sqrt(D), norms weighting by 1 + w (Gemma 2
adds logit soft-capping, its own attention scale and norms after attention and around the MLP; Gemma 3's
text model drops the soft-capping and adds q/k norms and a rope base of its own on the windowed blocks)."""
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
"""The gated MLP's activations (transformers' `ACT2FN` names): SwiGLU's, and Gemma's GeGLU's."""
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
"""Rotary embeddings of a model (Hugging Face `rope_type`); the reference model computes all (longrope
given its factors: `rope_numerics_refusal`)."""


@dataclass
class ModelConfig:
    """A Llama-family decoder (Llama 2 and 3.x, Mistral, Qwen 2.5, Qwen 3, Phi-3, Gemma) or a mixture of experts
    (Mixtral, Qwen 3 MoE, Qwen 2 MoE: `num_experts` > 0). Presets: `MODEL_PRESETS` (`cent info --presets`)."""

    name: str = "tiny"
    """Preset name, or the checkpoint directory's name when loaded from disk (a snapshot in the Hugging
    Face cache, models--ORG--NAME/snapshots/COMMIT: NAME; chosen with `--model` or a YAML `model:`
    section, not `--set`: the top level says how)."""
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
    rope_local_theta: float = 0.0
    """The rotary base of the sliding_attention blocks, with no scaling (Gemma 3's rope_local_base_freq,
    10,000; its full blocks take rope_theta, 1e6, and the rope scaling); 0: every block as rope_theta, as
    every other family turns them."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = False
    """Whether the LM head reuses the embedding matrix."""
    model_type: str = "llama"
    """The family (Hugging Face `model_type`): `llama`, `mistral`, `qwen2`, `qwen3`, `mixtral`,
    `qwen3_moe`, `qwen2_moe`, `phi3`, `gemma`, `gemma2` or `gemma3_text`. The families differ only by the named variations below, which a
    checkpoint's config.json sets (Phi-3's checkpoints also fuse q/k/v and gate/up into one tensor each:
    split on load)."""
    attention_bias: bool = False
    """Biases on the q, k and v projections (Qwen 2.5)."""
    qk_norm: bool = False
    """An RMSNorm over each head of q and k before the rotary embedding (Qwen 3)."""
    sliding_window: int = 0
    """Attend to the last `sliding_window` positions only (Mistral, Phi-3 mini); 0: the whole context.
    On every block, or on those `layer_types` names sliding_attention."""
    layer_types: tuple[str, ...] = ()
    """Each block's attention, one entry a block: full_attention or sliding_attention (transformers'
    `layer_types`: Qwen 2, Qwen 3 and Qwen 2 MoE with use_sliding_window, Ministral, Gemma 2: every other
    block by default, Gemma 3: five blocks of six); empty: every block windowed when sliding_window > 0.
    --set takes them comma-separated."""
    num_experts: int = 0
    """Experts of each block's MLP (Mixtral 8, Qwen3-30B-A3B 128); 0: a dense SwiGLU MLP."""
    num_experts_per_tok: int = 0
    """k: the experts a token runs (the router's top k of its softmax)."""
    moe_intermediate_size: int = 0
    """An expert's SwiGLU width; 0: model.intermediate_size (Mixtral's experts are full-size MLPs)."""
    norm_topk_prob: bool = True
    """Divide the top-k router probabilities by their sum (Mixtral always; Qwen 3 and 2 MoE's config says)."""
    shared_expert_intermediate_size: int = 0
    """A shared expert's SwiGLU width (Qwen 2 MoE): every token runs it beside its k routed experts, its
    output scaled by sigmoid(shared_expert_gate(x)), a D -> 1 projection; 0: none (the other families)."""
    hidden_act: str = "silu"
    """The gated MLP's activation: `silu` (SwiGLU) or `gelu_pytorch_tanh` (Gemma's GeGLU, GELU's tanh
    approximation); a mixture of experts' experts are SwiGLU."""
    scale_embeddings: bool = False
    """Multiply the embedding rows by sqrt(hidden_size) (Gemma), as float32: the compute dtype."""
    norm_offset: float = 0.0
    """What every RMSNorm adds to its weight before scaling: 0 (x w, Llama) or 1 (x (1 + w), Gemma)."""
    attn_logit_softcapping: float = 0.0
    """c: attention scores soft-capped to tanh(s / c) c before the mask and softmax (Gemma 2: 50); 0: none."""
    final_logit_softcapping: float = 0.0
    """c: the LM head's logits soft-capped to tanh(z / c) c (Gemma 2: 30); 0: none."""
    query_pre_attn_scalar: int = 0
    """The attention scale is query_pre_attn_scalar^-0.5 (Gemma 2: 256, 144 on 27B; an integer, as Gemma2Config
    takes it); 0: head_dim^-0.5."""
    sandwich_norms: bool = False
    """Two more RMSNorms a block (Gemma 2): one on the attention's output before the residual add
    (post_attention_layernorm) and one on the MLP's (post_feedforward_layernorm); the MLP's input norm is
    then pre_feedforward_layernorm."""
    expert_skew: float = 0.0
    """Timing's router: with numerics off there are no router logits, so the time model routes each
    (sequence, position, block) to k experts by a seeded draw without replacement, the weight of
    the expert of rank r in a seeded order 1 / (r + 1)^expert_skew: 0 is uniform, larger piles
    tokens on a few hot experts (a hot-expert workload; they share devices as the seeded order
    places them). The same draw with numerics on, so timing never depends on numerics."""
    partial_rotary_factor: float = 1.0
    """The share of each head's dimensions the rotary embedding turns, the first ones (Phi-4-mini 0.75);
    the rest pass unrotated. Below 1.0 for `phi3` only."""
    rope_type: str = "default"
    """Rotary scaling (Hugging Face `rope_type`): `default`, `linear`, `dynamic` (NTK), `yarn`, `llama3`,
    or `longrope` (Phi-3's 128k variants, Phi-3.5-mini, Phi-4-mini)."""
    rope_factor: float = 1.0
    """Scaling factor of linear, dynamic, yarn and llama3 rotary embeddings (longrope: the context over
    the original one)."""
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
    """yarn and longrope: the cos / sin scale; 0: derived from the factor (yarn: and mscales)."""
    rope_truncate: bool = True
    """yarn: round the correction range to whole dimensions."""
    rope_short_factor: tuple[float, ...] = ()
    """longrope: what each rotary frequency is divided by while a pass stays within the original context
    (model.rope_original_max_position), one per pair of rotated dimensions; () with numerics off only."""
    rope_long_factor: tuple[float, ...] = ()
    """longrope: the same once a pass reaches past the original context."""
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
    """Hugging Face checkpoint directory; None means seeded random weights. In a config file a relative
    path is the file's directory's (`--model DIR`'s, and a config read from stdin's, the current directory's)."""

    def is_eos(self, token: int) -> bool:
        """Whether `token` ends a generation (unless ignore_eos): the eos or one of the extra eos ids."""
        return token == self.eos_token_id or token in self.extra_eos_token_ids

    _positive = frozenset({"hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                           "vocab_size", "max_seq_len", "rope_theta", "rms_norm_eps", "rope_low_freq_factor",
                           "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow", "partial_rotary_factor"})
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
        _check(0 < self.partial_rotary_factor <= 1 and self.rotary_dim % 2 == 0 and self.rotary_dim > 0,
               "model.partial_rotary_factor", self.partial_rotary_factor,
               f"use a share in (0, 1] that turns an even number of model.head_dim={self.head_dim} dimensions")
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
        _check(self.partial_rotary_factor == 1 or self.model_type == "phi3", "model.partial_rotary_factor",
               self.partial_rotary_factor, f"use 1.0: model_type={self.model_type!r} turns every dimension of a "
               "head (a partial rotary embedding is phi3's)")
        _check(not self.rope_local_theta or self.model_type == "gemma3_text", "model.rope_local_theta",
               self.rope_local_theta, f"use 0: model_type={self.model_type!r} turns every block by model.rope_theta "
               "(the sliding blocks' own base is gemma3_text's rope_local_base_freq)")
        if self.rope_type != "default":
            _check(self.rope_factor > 0, "model.rope_factor", self.rope_factor, "use a positive number")
        if self.rope_type == "llama3":  # its smoothing divides by the difference
            _check(self.rope_high_freq_factor > self.rope_low_freq_factor, "model.rope_high_freq_factor",
                   self.rope_high_freq_factor, f"use more than model.rope_low_freq_factor={self.rope_low_freq_factor}")
        _check(self.sliding_window >= 0, "model.sliding_window", self.sliding_window,
               "use a positive window, or 0 for the whole context")
        self._check_layer_types()
        _check(self.rope_original_max_position >= 0, "model.rope_original_max_position",
               self.rope_original_max_position, "use a positive context, or 0 for model.max_seq_len")
        self.extra_eos_token_ids = _ids_text(self.extra_eos_token_ids, "model.extra_eos_token_ids")
        for name in ("rope_short_factor", "rope_long_factor"):
            factors = _factors_text(getattr(self, name), f"model.{name}")
            setattr(self, name, factors)
            _check(not factors or len(factors) == self.rotary_dim // 2, f"model.{name}", factors,
                   f"give one factor per pair of rotated dimensions: {self.rotary_dim // 2} (model.head_dim x "
                   "model.partial_rotary_factor / 2)")
        for name, value in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id)] + \
                [("extra_eos_token_ids", v) for v in self.extra_eos_token_ids]:
            _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.vocab_size,
                   f"model.{name}", value, f"use an id in [0, {self.vocab_size})")
        _check(self.hidden_act in ACTIVATIONS and (self.hidden_act == "silu" or not self.num_experts),
               "model.hidden_act", self.hidden_act, "use 'silu' (experts are SwiGLU)" if self.num_experts else
               f"use one of {', '.join(ACTIVATIONS)}")
        _check(self.norm_offset in (0, 1), "model.norm_offset", self.norm_offset,
               "use 0 (weight w, Llama) or 1 (weight 1 + w, Gemma)")
        _check(not (self.sandwich_norms and self.num_experts), "model.sandwich_norms", self.sandwich_norms,
               "use false: a mixture of experts' block has its two norms (the extra norms are Gemma 2's)")
        _check(self.num_experts >= 0, "model.num_experts", self.num_experts, "use 0 (dense) or a positive count")
        _check(self.expert_skew >= 0, "model.expert_skew", self.expert_skew, "use 0 (uniform) or a positive skew")
        _check(self.moe_intermediate_size >= 0, "model.moe_intermediate_size", self.moe_intermediate_size,
               "use a positive width, or 0 for model.intermediate_size")
        if self.num_experts:
            _check(1 <= self.num_experts_per_tok <= self.num_experts, "model.num_experts_per_tok",
                   self.num_experts_per_tok, f"use 1 .. model.num_experts={self.num_experts}")
        shared = self.model_type == "qwen2_moe"
        _check(self.shared_expert_intermediate_size >= 0 and shared == bool(self.shared_expert_intermediate_size),
               "model.shared_expert_intermediate_size", self.shared_expert_intermediate_size,
               "model_type='qwen2_moe' has a shared expert: set its positive width" if shared else
               "only model_type='qwen2_moe' has a shared expert: use 0, or model.model_type=qwen2_moe")
        moe_type = self.model_type in MOE_TYPES
        _check(moe_type == bool(self.num_experts), "model.num_experts", self.num_experts,
               f"model_type={self.model_type!r} is a mixture of experts: set a positive count" if moe_type else
               f"model_type={self.model_type!r} is dense: use 0, or a model_type of {', '.join(MOE_TYPES)}")
        _check_numbers(self, "model")

    def _check_layer_types(self) -> None:
        self.layer_types = _words_text(self.layer_types, "model.layer_types")
        if not self.layer_types:
            return
        odd = [t for t in self.layer_types if t not in LAYER_TYPES]
        _check(not odd, "model.layer_types", odd[0] if odd else None,
               f"use {' or '.join(LAYER_TYPES)} for each block")
        _check(len(self.layer_types) == self.num_layers, "model.layer_types", f"{len(self.layer_types)} entr{'y' if len(self.layer_types) == 1 else 'ies'}",
               f"give one entry a block, {self.num_layers} (model.num_layers), or none")
        _check(self.sliding_window > 0 or "sliding_attention" not in self.layer_types, "model.sliding_window",
               self.sliding_window, "model.layer_types names sliding_attention blocks: set a positive window, or "
               "make every entry full_attention")

    def block_window(self, block: int) -> int:
        """The window of block `block` (0: it attends to the whole context): `sliding_window` on every
        block, or on those `layer_types` names sliding_attention."""
        if not self.layer_types:
            return self.sliding_window
        return self.sliding_window if self.layer_types[block] == "sliding_attention" else 0

    def is_local_rope(self, block: int) -> bool:
        """Whether block `block` turns q and k by `rope_local_theta` unscaled (a windowed block of a model
        that sets it: Gemma 3's sliding_attention blocks) rather than by rope_theta and the rope scaling."""
        return bool(self.rope_local_theta) and self.block_window(block) > 0

    @property
    def block_windows(self) -> tuple[int, ...]:
        """Every block's window (`block_window`), in block order."""
        return tuple(self.block_window(b) for b in range(self.num_layers))

    @property
    def num_rep(self) -> int:
        """nrep = H / Hkv: query heads per KV head (the GQA group)."""
        return self.num_heads // self.num_kv_heads

    @property
    def rotary_dim(self) -> int:
        """The dimensions of a head the rotary embedding turns (transformers' int(head_dim x factor))."""
        return int(self.head_dim * self.partial_rotary_factor)

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

    def shared_expert_param_count(self) -> int:
        """Parameters of a block's shared expert and its gate: gate, up and down (3 D F_s) and the
        D -> 1 gate (D); 0 without one."""
        fs = self.shared_expert_intermediate_size
        return 3 * self.hidden_size * fs + self.hidden_size if fs else 0

    def attention_param_count(self) -> int:
        """Parameters of a block's attention (with its biases and q/k norms) and its norms (two, four with
        `sandwich_norms`)."""
        d = self.hidden_size
        attn = d * self.q_size + 2 * d * self.kv_size + self.q_size * d
        attn += (self.q_size + 2 * self.kv_size if self.attention_bias else 0) + (2 * self.head_dim if self.qk_norm else 0)
        return attn + (4 if self.sandwich_norms else 2) * d

    def block_param_count(self) -> int:
        """Parameters of one transformer block (attention with its biases and q/k norms, MLP or router,
        every expert and a shared expert, two norms)."""
        if self.is_moe:
            return (self.attention_param_count() + self.num_experts * (self.hidden_size + self.expert_param_count())
                    + self.shared_expert_param_count())
        return self.attention_param_count() + 3 * self.hidden_size * self.intermediate_size

    def active_block_param_count(self) -> int:
        """Parameters one token reads in a block: the router, its k experts and a shared expert for a MoE."""
        if self.is_moe:
            return (self.attention_param_count() + self.num_experts * self.hidden_size
                    + self.num_experts_per_tok * self.expert_param_count() + self.shared_expert_param_count())
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

    def kv_bytes_per_token(self, element_bytes: int = 2) -> int:
        """KV cache bytes per token over all layers, `element_bytes` an element (default bf16, CENT's data
        type; `device.bytes_per_element` for what the devices store)."""
        return 2 * self.num_layers * self.kv_size * element_bytes


def rope_numerics_refusal(model: ModelConfig) -> str | None:
    """Why full numerics cannot run `model` (a longrope scaling without its short and long factors, as
    `--set model.rope_type=longrope` makes one), in one line with the fix; None when it can. Preflight,
    `numerics: auto` and the reference model's rotary embedding say it."""
    if model.rope_type != "longrope" or (model.rope_short_factor and model.rope_long_factor):
        return None
    missing = "model.rope_short_factor" if not model.rope_short_factor else "model.rope_long_factor"
    return (f"model.rope_type='longrope' without {missing} cannot be computed: give both factor lists (a checkpoint's "
            "config.json rope_scaling has them), or time it with --numerics off (cent serve, cent bench) or cent "
            "simulate; the simulated times do not depend on the rotary embedding")


_LLAMA31_ROPE = dict(rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                     rope_original_max_position=8192)
"""Llama 3.1's rotary scaling (its config.json `rope_scaling`)."""
_GEMMA = dict(hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0, head_dim=256, vocab_size=256000,
              max_seq_len=8192, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1)
"""What every Gemma's config.json sets alike (transformers' GemmaConfig defaults, google/gemma-* configs)."""
_GEMMA2 = dict(sandwich_norms=True, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096)
"""What Gemma 2 adds (google/gemma-2-* config.json): its window on every other block (`_alternate`)."""


def _alternate(num_layers: int) -> tuple[str, ...]:
    """Gemma2Config's default layer_types: a window on every other block, from block 0."""
    return tuple("sliding_attention" if b % 2 == 0 else "full_attention" for b in range(num_layers))


_GEMMA3 = dict(model_type="gemma3_text", sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=256,
               rope_theta=1e6, rope_local_theta=1e4, sliding_window=1024, max_seq_len=131072, vocab_size=262208,
               extra_eos_token_ids=(106,))
"""What Gemma 3's text models add (google/gemma-3-*: text_config of the 4B, 12B and 27B config.json, the 1B's
own): q/k norms, Gemma 2's norms and scale without soft-capping, a 1024 window on five blocks of six
(`gemma3_layer_types`) whose rope base is 10,000, the full blocks' 1e6 scaled linearly by 8; eos 1 and
<end_of_turn> 106."""
_GEMMA3_SCALED = dict(rope_type="linear", rope_factor=8.0, rope_original_max_position=0)


def gemma3_layer_types(num_layers: int) -> tuple[str, ...]:
    """Gemma 3's blocks: every sixth full attention, the others windowed (Gemma3TextConfig's default
    layer_types from sliding_window_pattern 6, configuration_gemma3.py)."""
    return tuple("sliding_attention" if (b + 1) % 6 else "full_attention" for b in range(num_layers))


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
    # Qwen/Qwen1.5-MoE-A2.7B config.json: 60 routed experts (top 4, not renormalised) beside a shared one
    "qwen1.5-moe-a2.7b": dict(model_type="qwen2_moe", hidden_size=2048, intermediate_size=5632, num_layers=24,
                              num_heads=16, num_kv_heads=16, vocab_size=151936, max_seq_len=8192,
                              rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=True, num_experts=60,
                              num_experts_per_tok=4, moe_intermediate_size=1408, norm_topk_prob=False,
                              shared_expert_intermediate_size=5632, bos_token_id=151643, eos_token_id=151643),
    # microsoft/Phi-3-mini-4k-instruct config.json: a Mistral-like block (fused tensors in its checkpoints)
    "phi3-mini-4k": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_layers=32, num_heads=32,
                         num_kv_heads=32, vocab_size=32064, max_seq_len=4096, sliding_window=2047,
                         bos_token_id=1, eos_token_id=32000),
    # google/gemma-2b and gemma-7b config.json: GeGLU, head_dim 256 (not D / H on 7B), tied embeddings, a
    # 256,000-token vocabulary (bos 2, eos 1); 2,506,172,416 and 8,537,680,896 parameters (their safetensors)
    "gemma-2b": dict(model_type="gemma", **_GEMMA, hidden_size=2048, intermediate_size=16384, num_layers=18,
                     num_heads=8, num_kv_heads=1),
    "gemma-7b": dict(model_type="gemma", **_GEMMA, hidden_size=3072, intermediate_size=24576, num_layers=28,
                     num_heads=16, num_kv_heads=16),
    # google/gemma-2-9b and gemma-2-27b config.json (9,241,705,984 and 27,227,128,320 parameters): an
    # 8192-token context, a 4096-token window on every other block
    "gemma-2-9b": dict(model_type="gemma2", **{**_GEMMA, **_GEMMA2}, hidden_size=3584, intermediate_size=14336,
                       num_layers=42, num_heads=16, num_kv_heads=8, query_pre_attn_scalar=256, layer_types=_alternate(42)),
    "gemma-2-27b": dict(model_type="gemma2", **{**_GEMMA, **_GEMMA2, "head_dim": 128}, hidden_size=4608,
                        intermediate_size=36864, num_layers=46, num_heads=32, num_kv_heads=16, query_pre_attn_scalar=144,
                        layer_types=_alternate(46)),
    # Gemma 3's text models: google/gemma-3-1b-pt config.json (999,885,952 parameters), and the text_config of
    # gemma-3-4b-pt, 12b-pt and 27b-pt (their language models' 3,880,263,168, 11,766,034,176 and 27,009,346,304,
    # counted from the config; the hub's 4.3 B, 12.2 B and 27.4 B add the SigLIP vision tower, not modelled)
    "gemma-3-1b": dict(**{**_GEMMA, **_GEMMA3, "sliding_window": 512, "max_seq_len": 32768, "vocab_size": 262144},
                       hidden_size=1152, intermediate_size=6912, num_layers=26, num_heads=4, num_kv_heads=1,
                       layer_types=gemma3_layer_types(26)),
    "gemma-3-4b": dict(**{**_GEMMA, **_GEMMA3, **_GEMMA3_SCALED}, hidden_size=2560, intermediate_size=10240,
                       num_layers=34, num_heads=8, num_kv_heads=4, layer_types=gemma3_layer_types(34)),
    "gemma-3-12b": dict(**{**_GEMMA, **_GEMMA3, **_GEMMA3_SCALED}, hidden_size=3840, intermediate_size=15360,
                        num_layers=48, num_heads=16, num_kv_heads=8, layer_types=gemma3_layer_types(48)),
    "gemma-3-27b": dict(**{**_GEMMA, **_GEMMA3, **_GEMMA3_SCALED, "head_dim": 128, "query_pre_attn_scalar": 168},
                        hidden_size=5376, intermediate_size=21504, num_layers=62, num_heads=32, num_kv_heads=16,
                        layer_types=gemma3_layer_types(62)),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (like gpt-fast's `ModelArgs.from_name`), with field overrides."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"model.name={name!r} is not a preset: use one of "
                         f"{sorted(MODEL_PRESETS)} or a Hugging Face checkpoint directory")
    return ModelConfig(name=name, **{**MODEL_PRESETS[name], **overrides})


UNLABELLED_MODEL_FIELDS = frozenset({"name", "checkpoint", "seed", "weight_dtype", "bos_token_id", "eos_token_id",
                                     "extra_eos_token_ids"})
"""Model fields a run's header does not name when they differ from the preset's (they change no figure
of the timing, or are the model's identity: an Instruct checkpoint's end-of-sequence ids beside its base
model's preset); but a mixture of experts' seed (`model_label`)."""


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
    not read as the published one. A checkpoint is named by its directory, which may be a preset's name
    (a folder called `llama2-7b`): it is labelled a checkpoint, not that preset changed in every field."""
    if model.checkpoint and model.name in MODEL_PRESETS:
        return f"{model.name} (checkpoint)"
    # a mixture of experts' seed is its timing router's too (`ModelConfig.seed`): named, as its figures follow it
    changed = preset_changes(model, lambda name: name in UNLABELLED_MODEL_FIELDS and not (name == "seed" and model.is_moe))
    if not changed:
        return model.name
    more = f" and {len(changed) - most} more" if len(changed) > most else ""
    return f"{model.name} ({', '.join(changed[:most])}{more})"

def resolve_model(name_or_path: str, **checkpoint_fields: Any) -> ModelConfig:
    """A preset name (`tiny`, `llama2-7b`, ...) or a Hugging Face checkpoint directory (its
    config.json is enough for timing, read with `checkpoint_fields` set: `--set model.max_seq_len`'s
    context), as `--model` takes it."""
    if name_or_path in MODEL_PRESETS:
        return model_preset(name_or_path)
    if name_or_path.strip() and Path(name_or_path).exists():  # Path("") is the current directory
        from cent_serve.model.hf_config import model_config_from_hf
        return model_config_from_hf(name_or_path, **checkpoint_fields)
    raise ValueError(f"--model {name_or_path!r} is neither a preset ({', '.join(sorted(MODEL_PRESETS))}) "
                     "nor an existing checkpoint directory: nothing is downloaded; save a Hugging Face model's "
                     "config.json in a directory and give that (it alone is enough to time it: cent generate and "
                     "full numerics need the weights beside it)")
