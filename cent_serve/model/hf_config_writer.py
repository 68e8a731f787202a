"""A Hugging Face `config.json` from a `ModelConfig` (`hf_config_dict`), for a checkpoint cent saves
(`save_hf_checkpoint`, `cent tokenizer export`): the keys transformers reads for the model's family, so
that reading it back (`hf_config.model_config_from_hf`) gives the same model. A variation the family's
config cannot say is refused by name."""
from __future__ import annotations

from cent_serve.config import ModelConfig
from cent_serve.config.model import GEMMA_TYPES
from cent_serve.config import gemma3
from cent_serve.config.hf_config import ARCHITECTURES, PHI3_ROPE_TYPES, ROPE_KEYS


_ROPE_TYPE_KEYS = {"linear": ("factor",), "dynamic": ("factor",),
                   "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                   "yarn": ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                            "truncate", "original_max_position_embeddings")}
"""The keys each rope type has in a config.json (what `hf_config_dict` writes)."""
_FAMILY_FEATURES = dict(attention_bias=("qwen2", "qwen2_moe"), qk_norm=("qwen3", "qwen3_moe", "gemma3_text"),
                        sliding_window=("mistral", "mixtral", "phi3", "qwen2", "qwen3", "qwen3_moe", "qwen2_moe",
                                        "gemma2", "gemma3_text"))
"""The family whose config.json can say each variation (q/k/v biases, q/k norms, a window)."""
_PER_BLOCK_WINDOWS = ("mistral", "qwen2", "qwen3", "qwen2_moe", "gemma2", "gemma3_text")
"""The families whose config.json can window some blocks only (`layer_types`: Mistral's read as Ministral's)."""


def hf_config_dict(cfg: ModelConfig) -> dict:
    """The Hugging Face `config.json` content of a ModelConfig (of a variation its family's config
    can say: ValueError otherwise)."""
    for feature, families in _FAMILY_FEATURES.items():
        if getattr(cfg, feature) and cfg.model_type not in families:
            raise ValueError(f"model.{feature}={getattr(cfg, feature)!r} cannot be saved as a model_type="
                             f"{cfg.model_type!r} checkpoint: only {' and '.join(map(repr, families))} configs have it "
                             "(set model.model_type)")
    if cfg.rope_type == "longrope":
        raise ValueError("model.rope_type='longrope' cannot be saved: its Phi3Config layout (factor lists, the "
                         "original context at the top level) is not written here; copy the checkpoint's config.json "
                         "instead")
    if cfg.model_type == "phi3" and cfg.rope_type not in PHI3_ROPE_TYPES:
        raise ValueError(f"model.rope_type={cfg.rope_type!r} cannot be saved as a model_type='phi3' checkpoint: "
                         "transformers' Phi3Config takes no scaling but longrope (and reads yarn as longrope): "
                         "set model.rope_type='default' or another model.model_type")
    if cfg.layer_types and len(set(cfg.block_windows)) > 1 and cfg.model_type not in _PER_BLOCK_WINDOWS:
        raise ValueError(f"model.layer_types (a window on some blocks) cannot be saved as a model_type="
                         f"{cfg.model_type!r} checkpoint: transformers windows every block of it or none; use "
                         f"model.model_type {' or '.join(map(repr, _PER_BLOCK_WINDOWS))}")
    gemma = cfg.model_type in GEMMA_TYPES
    if (cfg.hidden_act, cfg.scale_embeddings, cfg.norm_offset) != \
            (("gelu_pytorch_tanh", True, 1.0) if gemma else ("silu", False, 0.0)):
        raise ValueError(f"model.hidden_act={cfg.hidden_act!r}, model.scale_embeddings={cfg.scale_embeddings} and "
                         f"model.norm_offset={cfg.norm_offset} cannot be saved as a model_type={cfg.model_type!r} "
                         "checkpoint: a gemma config has gelu_pytorch_tanh, True and 1.0, the other families silu, False "
                         "and 0.0 (set them, or model.model_type)")
    gemma2 = (cfg.sandwich_norms, bool(cfg.query_pre_attn_scalar)) != (False, False) or cfg.attn_logit_softcapping \
        or cfg.final_logit_softcapping
    sandwich = ("gemma2", "gemma3_text")  # gemma3_text: the extra norms and query_pre_attn_scalar, no attention cap
    if cfg.model_type == "gemma3_text" and cfg.attn_logit_softcapping:
        raise ValueError(f"model.attn_logit_softcapping={cfg.attn_logit_softcapping} cannot be saved as a "
                         "model_type='gemma3_text' checkpoint: transformers' Gemma3Attention does not cap its attention "
                         "logits; set model.attn_logit_softcapping=0.0, or model.model_type='gemma2'")
    if cfg.model_type in sandwich and not cfg.sandwich_norms or cfg.model_type not in sandwich and gemma2:
        raise ValueError(f"model.sandwich_norms={cfg.sandwich_norms} cannot be saved as a model_type={cfg.model_type!r} "
                         "checkpoint: gemma2 and gemma3_text have the extra norms (true), and only they have them, "
                         "soft-capping or query_pre_attn_scalar (set them, or model.model_type)")
    if cfg.model_type == "qwen2" and not cfg.attention_bias:
        raise ValueError("model.model_type='qwen2' has q/k/v biases: set model.attention_bias=true to save it")
    if cfg.model_type in ("qwen3", "qwen3_moe", "gemma3_text") and not cfg.qk_norm:
        raise ValueError(f"model.model_type={cfg.model_type!r} has q/k norms: set model.qk_norm=true to save it")
    if cfg.model_type == "mixtral" and (not cfg.norm_topk_prob or cfg.moe_intermediate_size not in (0, cfg.intermediate_size)):
        raise ValueError("model.model_type='mixtral' always renormalizes its top-k and sizes its experts by "
                         "intermediate_size: set model.norm_topk_prob=true and model.moe_intermediate_size=0 to save it")
    out = {
        "architectures": [ARCHITECTURES[cfg.model_type]], "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": [cfg.eos_token_id, *cfg.extra_eos_token_ids] if cfg.extra_eos_token_ids else cfg.eos_token_id,
        "hidden_act": cfg.hidden_act, "mlp_bias": False,
        "torch_dtype": cfg.weight_dtype,
    }
    if cfg.model_type not in ("qwen2", "qwen2_moe"):  # Qwen 2 MoE's biases are qkv_bias's
        out["attention_bias"] = False
    out.update(_window_keys(cfg))
    if cfg.model_type == "phi3":  # Phi3Config has neither bias key (transformers' Phi3 has no biases), and
        # its default pad id, 32000, is outside a smaller vocabulary (transformers refuses it); cent pads nothing
        del out["attention_bias"], out["mlp_bias"]
        out.update(partial_rotary_factor=cfg.partial_rotary_factor, pad_token_id=None)
    if cfg.model_type in GEMMA_TYPES:  # GemmaConfig has no mlp_bias (GemmaMLP has no biases)
        del out["mlp_bias"]
    if cfg.model_type == "gemma2":  # Gemma2MLP reads hidden_activation; its window: `_window_keys`
        out["hidden_activation"] = out.pop("hidden_act")
        out.update(query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
                   attn_logit_softcapping=cfg.attn_logit_softcapping or None,
                   final_logit_softcapping=cfg.final_logit_softcapping or None)
    if cfg.model_type == "mixtral":
        out.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok)
    if cfg.model_type in ("qwen3_moe", "qwen2_moe"):
        out.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                   moe_intermediate_size=cfg.expert_size, norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1,
                   mlp_only_layers=[])
    if cfg.model_type == "qwen2_moe":
        out.update(shared_expert_intermediate_size=cfg.shared_expert_intermediate_size, qkv_bias=cfg.attention_bias)
    if cfg.rope_type != "default":
        values = {theirs: getattr(cfg, ROPE_KEYS[theirs]) for theirs in _ROPE_TYPE_KEYS[cfg.rope_type]}
        if cfg.rope_type == "yarn":  # 0 means "derive it" for these: leave them out, as transformers does
            values = {k: v for k, v in values.items() if v or k == "truncate"}
        if "original_max_position_embeddings" in values:
            values["original_max_position_embeddings"] = cfg.rope_original_max_position or cfg.max_seq_len
        out["rope_scaling"] = {"rope_type": cfg.rope_type, **values}
        if cfg.rope_type in ("dynamic", "linear"):  # their original context is max_position_embeddings
            out["max_position_embeddings"] = cfg.rope_original_max_position or round(cfg.max_seq_len / cfg.rope_factor)
    if cfg.model_type == "gemma3_text":  # its rope per layer type replaces the shared keys (`gemma3.config_keys`)
        out["hidden_activation"] = out.pop("hidden_act")
        scaling = out.pop("rope_scaling", {})
        out.update(gemma3.config_keys(cfg, {**scaling, "rope_type": cfg.rope_type, "rope_theta": out.pop("rope_theta")}))
        if cfg.rope_type == "linear":  # Gemma 3's linear rope serves max_position_embeddings (as it is read);
            out["max_position_embeddings"] = cfg.max_seq_len  # a dynamic one's is its original context
    return out


def _window_keys(cfg: ModelConfig) -> dict:
    """The window keys of `hf_config_dict`, so that transformers windows the blocks cent does: Mistral,
    Mixtral and Phi-3 a sliding_window (and a Mistral windowing some blocks its layer_types, which
    transformers reads as Ministral's); the Qwen families use_sliding_window with the window and, but for
    Qwen 3 MoE (every block), layer_types naming every block's attention (read instead of
    max_window_layers); Gemma 2 its window and layer_types."""
    windows = cfg.block_windows
    types = ["sliding_attention" if w else "full_attention" for w in windows]
    if cfg.model_type in ("mistral", "mixtral", "phi3"):
        out = dict(sliding_window=cfg.sliding_window or None)
        if cfg.model_type == "mistral" and len(set(windows)) > 1:
            out["layer_types"] = types
        return out
    if cfg.model_type == "gemma2":  # Gemma2Config has no null window: the whole context's windows nothing
        return dict(sliding_window=cfg.sliding_window, layer_types=types) if any(windows) else \
            dict(sliding_window=cfg.max_seq_len)
    if cfg.model_type not in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe"):
        return {}
    if not any(windows):
        return dict(use_sliding_window=False)
    out = dict(use_sliding_window=True, sliding_window=cfg.sliding_window, max_window_layers=0)
    if cfg.model_type != "qwen3_moe":
        out["layer_types"] = types
    return out
