"""The model section: `ModelConfig`, its fields and checks. The named presets, and how a run names a
model, are `presets`'."""
from __future__ import annotations

from dataclasses import dataclass

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
