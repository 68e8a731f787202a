"""What a Hugging Face config.json asks for that the reference model does not model, by name.

`model_config_from_hf` refuses such a config; a researcher bringing their own model reads in the
one-line refusal which feature is missing (so whether a supported family would stand in for its
shape), not only which families are supported. The facts are those of transformers' model
definitions for each `model_type`. Beside them, how a modelled family's class reads the keys it
varies by (Gemma's activation, Gemma 2's windowed blocks, Qwen's).
"""
from __future__ import annotations

from cent_serve.config.model import GEMMA_TYPES

UNMODELLED_FAMILIES: dict[str, str] = {
    "deepseek_v2": "multi-head latent attention (MLA: kv_lora_rank, q_lora_rank), shared experts "
                   "(n_shared_experts) and dense first blocks (first_k_dense_replace)",
    "deepseek_v3": "multi-head latent attention (MLA: kv_lora_rank, q_lora_rank), shared experts "
                   "(n_shared_experts), dense first blocks (first_k_dense_replace) and a sigmoid router "
                   "choosing within groups of experts (n_group, topk_group)",
    # DeepSeekMoE (deepseek-ai/deepseek-moe-16b-base, its own modeling_deepseek.py: no MLA): what stops it is
    # the dense first block; its ungated shared experts are a Qwen 2 MoE shared expert's shape without the gate
    "deepseek": "dense first blocks (first_k_dense_replace) among the mixture-of-experts ones, and shared experts "
                "without a gate (n_shared_experts; Qwen 2 MoE's gated one is modelled: a qwen2_moe config.json of its shape, "
                "shared_expert_intermediate_size = n_shared_experts x moe_intermediate_size and every block a mixture "
                "of experts, stands in for it)",
    "qwen3_next": "Gated DeltaNet linear-attention layers, gated attention and a shared expert",
    "llama4": "a shared expert, experts in every other block (interleave_moe_layer_step), chunked "
              "attention with layers without rotary embedding, and a vision encoder",
    "phi": "attention and MLP in parallel from one LayerNorm, a partial rotary embedding and a GELU "
           "MLP with biases",
    "gpt_oss": "attention sinks, sliding-window attention in alternate blocks, biases on attention and "
               "router, clamped SwiGLU experts (swiglu_limit) and MXFP4 expert weights",
    "olmo2": "norms after attention and MLP instead of before, and q/k norms over the whole projection",
    "olmoe": "q/k norms over the whole projection (not per head, as Qwen 3's) and, when set, clip_qkv "
             "clamping the projections",
    "phimoe": "LayerNorm (weight and bias) instead of RMSNorm, the sparsemixer router (its second expert "
              "chosen with the first masked out) and biases on attention and the LM head",
    "granite": "scaling multipliers (embedding_multiplier, residual_multiplier, attention_multiplier, "
               "logits_scaling)",
    "cohere": "attention and MLP in parallel from one LayerNorm, and a logit_scale",
    "mamba": "state-space layers instead of attention",
    "mamba2": "state-space layers instead of attention",
}
"""A family the reference model does not run -> what it has that is not modelled."""
for _name in ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "starcoder2"):
    UNMODELLED_FAMILIES[_name] = "LayerNorm blocks with a non-gated MLP (not RMSNorm and SwiGLU)"

_FEATURE_KEYS = (("kv_lora_rank", "multi-head latent attention (MLA)"),
                 ("n_shared_experts", "shared experts"), ("shared_expert_intermediate_size", "shared experts"),
                 ("attn_logit_softcapping", "logit soft-capping"), ("final_logit_softcapping", "logit soft-capping"),
                 ("vision_config", "a vision encoder (vision_config)"))
"""config.json keys that announce a feature the reference model does not model, for a model_type
not in `UNMODELLED_FAMILIES` (a fine-tune's own name, a newer family)."""


_READ_BY = {"shared_expert_intermediate_size": ("qwen2_moe",), "attn_logit_softcapping": ("gemma2",),
            "final_logit_softcapping": ("gemma2", "gemma3_text")}
"""Keys of `_FEATURE_KEYS` that a supported family's class reads (Qwen 2 MoE's shared expert, Gemma 2's
soft-capping, Gemma 3's final one: modelled; Gemma3Attention never passes attn_logit_softcapping to its
attention, modeling_gemma3.py, so a gemma3_text config's is warned as not read)."""


def refuse(field: str, value, why: str) -> None:
    """A config.json key whose value the reference model does not run, in one line: the key, its
    value and why (with the fix)."""
    raise ValueError(f"model.checkpoint: {field}={value!r} is not supported: {why}")


def announced_features(hf: dict, model_type: str | None = None) -> list[str]:
    """The keys of `_FEATURE_KEYS` a config.json sets, each as "key (feature)", but those the class
    of `model_type` reads (Qwen 2 MoE's shared_expert_intermediate_size)."""
    return [f"{key} ({what})" for key, what in _FEATURE_KEYS
            if hf.get(key) and model_type not in _READ_BY.get(key, ())]


def unmodelled_features(model_type: str, hf: dict) -> str | None:
    """What the config.json of an unsupported `model_type` has that is not modelled: its family's
    known features, else the ones its keys announce; None when nothing is known."""
    if model_type in UNMODELLED_FAMILIES:
        return UNMODELLED_FAMILIES[model_type]
    found = [what for key, what in _FEATURE_KEYS if hf.get(key)]
    return ", ".join(dict.fromkeys(found)) or None


def windowed_blocks(hf: dict, arch: str, num_layers: int, context: int) -> list[int]:
    """The blocks of a Qwen config.json whose sliding window would hide keys within `context`, as
    transformers (5.x) reads it: a window only with use_sliding_window; Qwen 2 and 3 put it on the blocks
    their layer_types name "sliding_attention" (by default those from max_window_layers on), Qwen 2 MoE
    likewise (by default the even blocks below max_window_layers), Qwen 3 MoE on every block
    (Qwen2Config, Qwen3Config, Qwen2MoeConfig and their attention modules). A window at least the context
    never hides a key, so such a config runs as full attention."""
    window = hf.get("sliding_window")
    if not hf.get("use_sliding_window") or not isinstance(window, (int, float)) or not 0 < window < context:
        return []
    if arch == "qwen3_moe":
        return list(range(num_layers))
    types = hf.get("layer_types")
    if isinstance(types, list):
        return [i for i, kind in enumerate(types[:num_layers]) if kind == "sliding_attention"]
    first = hf.get("max_window_layers", 28)  # the configs' default
    first = first if isinstance(first, int) else 0
    if arch == "qwen2_moe":
        return [i for i in range(num_layers) if i % 2 == 0 and i < first]
    return list(range(first, num_layers))


def dense_mlp_blocks(hf: dict, num_layers: int) -> list[int]:
    """The blocks of a Qwen 2 MoE or Qwen 3 MoE config.json that transformers builds with a dense MLP (of
    width intermediate_size) instead of a mixture of experts: Qwen2MoeDecoderLayer and Qwen3MoeDecoderLayer
    (modeling_qwen2_moe.py, modeling_qwen3_moe.py) give block i experts when i is not in mlp_only_layers
    and (i + 1) % decoder_sparse_step == 0, so a step of 1 and no listed block below num_hidden_layers
    (the configs' defaults: 1 and []) makes every block a mixture of experts. The two keys are checked:
    ValueError naming the key, its value and the fix."""
    step = hf.get("decoder_sparse_step")
    step = 1 if step is None else step
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"model.checkpoint: decoder_sparse_step={step!r} is invalid: use a positive integer (1: "
                         "experts in every block; a JSON number, without quotes)")
    listed = hf.get("mlp_only_layers")
    listed = [] if listed is None else listed
    if not isinstance(listed, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                               for i in listed):
        raise ValueError(f"model.checkpoint: mlp_only_layers={listed!r} is invalid: use a list of block indices "
                         "(JSON integers from 0), or [] for experts in every block")
    return [i for i in range(num_layers) if i in listed or (i + 1) % step != 0]


def gemma_fields() -> dict:
    """The variations every Gemma has (transformers' modeling_gemma.py): a GeGLU MLP, embeddings times
    sqrt(hidden_size) (GemmaTextScaledWordEmbedding) and norms weighting by 1 + w (GemmaRMSNorm)."""
    return dict(hidden_act="gelu_pytorch_tanh", scale_embeddings=True, norm_offset=1.0)


GELU_TANH_NAMES = ("gelu_pytorch_tanh", "gelu")
"""The activations a Gemma config.json may name: transformers' GemmaConfig reads the legacy `gelu` of the
first releases as gelu_pytorch_tanh (configuration_gemma.py, `__post_init__`)."""


def activation(hf: dict, arch: str) -> tuple[str, object]:
    """(the key, its value) of the MLP's activation as the family's class reads it: GemmaMLP reads
    hidden_act, Gemma2MLP hidden_activation (both default gelu_pytorch_tanh: modeling_gemma.py,
    modeling_gemma2.py); the others hidden_act (default silu)."""
    key = "hidden_activation" if arch in ("gemma2", "gemma3_text") else "hidden_act"  # Gemma3MLP's too
    default = "gelu_pytorch_tanh" if arch in GEMMA_TYPES else "silu"
    value = hf.get(key)
    return key, default if value is None else value


def gemma2_windowed_blocks(hf: dict, num_layers: int, context: int) -> list[int]:
    """The blocks of a Gemma 2 config.json whose sliding window would hide keys within `context`:
    transformers' Gemma2Config windows the blocks its layer_types name "sliding_attention" (by default
    every other one, from block 0) by sliding_window (default 4096; null: none), configuration_gemma2.py.
    A window at least the context never hides a key."""
    window = hf.get("sliding_window", 4096)
    if not isinstance(window, (int, float)) or isinstance(window, bool) or not 0 < window < context:
        return []
    types = hf.get("layer_types")
    if not isinstance(types, list):
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    return [i for i, kind in enumerate(types[:num_layers]) if kind == "sliding_attention"]
