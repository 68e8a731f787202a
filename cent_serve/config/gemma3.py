"""Gemma 3's text model (`model_type` gemma3_text) in a config.json, both ways: what `hf_config` reads
beyond the keys every family shares, and what `cent_serve.model.hf_config_writer` writes. The facts are transformers 5.25's
configuration_gemma3.py (Gemma3TextConfig) and modeling_gemma3.py."""
from __future__ import annotations

from cent_serve.config.families import refuse as _refuse
from cent_serve.config.model import ModelConfig

KINDS = ("sliding_attention", "full_attention")
"""The layer types Gemma3TextConfig keys its rope_parameters by."""

# What a config.json leaves out, Gemma3TextConfig's defaults (transformers 5.25 configuration_gemma3.py);
# its KV heads (4), head size (256) and context (131,072) are hf_config's family defaults for gemma3_text.
SIZE_DEFAULTS = dict(vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                     num_attention_heads=8)
"""Gemma3TextConfig's vocab_size, hidden_size, intermediate_size, num_hidden_layers and num_attention_heads:
what a multimodal config.json's text_config leaves out (Gemma3Config builds a Gemma3TextConfig from it)."""
DEFAULT_THETA = dict(full_attention=1_000_000.0, sliding_attention=10_000.0)
"""Gemma3TextConfig.default_theta: the full blocks' rope_theta and the sliding ones' rope_local_base_freq."""
DEFAULT_WINDOW = 4096
"""Gemma3TextConfig's sliding_window."""
DEFAULT_PATTERN = 6
"""Gemma3TextConfig's sliding_window_pattern of older configs: every sixth block is full attention."""
DEFAULT_QUERY_PRE_ATTN_SCALAR = 256
"""Gemma3TextConfig's query_pre_attn_scalar: the attention scores are scaled by its inverse square root."""


_TOP_LEVEL = ("bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "tie_word_embeddings",
              "quantization_config")
"""Gemma3Config's own keys that its language model runs by (ids, dtype, the tied LM head), over text_config's:
transformers ties the head by Gemma3Config.tie_word_embeddings (default true), whatever text_config says."""


def text_config(hf: dict, cfg_file) -> dict:
    """The config.json of the multimodal Gemma 3 (model_type gemma3, Gemma3ForConditionalGeneration) read
    as its language model's: text_config as a gemma3_text config.json (Gemma3TextConfig's defaults for what it
    leaves out), with the top level's ids, dtype and tied LM head. Its vision tower is not modelled: an image
    cannot be sent, and the tower's tensors are ignored with a warning (`hf_checkpoint._warn_unused`)."""
    text = hf.get("text_config")
    if text is None:
        text = {}
    if not isinstance(text, dict):
        raise ValueError(f"{cfg_file}: text_config={text!r} is invalid: a gemma3 config.json gives its language "
                         "model's keys as a JSON object; fix it, or point --model at a gemma3_text checkpoint")
    top = {"tie_word_embeddings": True, **{k: hf[k] for k in _TOP_LEVEL if hf.get(k) is not None}}
    return {**SIZE_DEFAULTS, **text, **top, "model_type": "gemma3_text"}


def rope_by_kind(hf: dict) -> dict[str, dict]:
    """{layer type: its rope parameters} as Gemma3TextConfig.convert_rope_params_to_dict builds them, from
    either layout a config.json has: transformers 5's rope_parameters keyed by layer type, or the older
    top-level rope_theta, rope_local_base_freq and rope_scaling (which is the full blocks')."""
    given = hf.get("rope_parameters")
    if given is not None and not (isinstance(given, dict) and set(given) <= set(KINDS)):
        _refuse("rope_parameters", given, "a gemma3_text config keys it by layer type (sliding_attention, "
                "full_attention), as transformers 5 writes it: fix it, or write rope_theta, rope_local_base_freq and "
                "rope_scaling instead")
    out = {kind: dict((given or {}).get(kind) or {"rope_type": "default"}) for kind in KINDS}
    if isinstance(hf.get("rope_scaling"), dict):
        out["full_attention"].update(hf["rope_scaling"])
    out["full_attention"].setdefault("rope_theta", hf.get("rope_theta") or DEFAULT_THETA["full_attention"])
    out["sliding_attention"].setdefault("rope_theta", hf.get("rope_local_base_freq")
                                        or DEFAULT_THETA["sliding_attention"])
    return out


def flattened(hf: dict) -> tuple[dict, float]:
    """(hf with the full blocks' rope as a one-rope family's rope_parameters, which the shared reading
    takes: its rope_theta and scaling; the sliding blocks' base). The sliding blocks' rope must be
    unscaled: `ModelConfig.rope_local_theta` has no scaling of its own."""
    rope = rope_by_kind(hf)
    local = rope["sliding_attention"]
    kind = local.get("rope_type", local.get("type", "default"))
    if kind != "default":
        _refuse("rope_parameters.sliding_attention.rope_type", kind, "the sliding blocks' rotary embedding is "
                "modelled unscaled (default), as every Gemma 3 has it; set it to 'default' (Gemma 3's)")
    flat = {k: v for k, v in hf.items() if k not in ("rope_scaling", "rope_local_base_freq")}
    flat["rope_parameters"] = rope["full_attention"]
    flat["rope_theta"] = rope["full_attention"]["rope_theta"]
    return flat, float(local["rope_theta"])


def sliding_blocks(hf: dict, num_layers: int) -> list[int]:
    """The blocks Gemma3TextConfig windows: those its layer_types name sliding_attention, by default all
    but every sixth (sliding_window_pattern, 6: `(i + 1) % pattern` nonzero; the _sliding_window_pattern
    transformers 5 writes beside layer_types is not read for it, as Gemma3TextConfig does not). A given
    layer_types is one entry a block of the two kinds: `hf_config` checked it as every family's."""
    types = hf.get("layer_types")
    if types is None:
        pattern = hf.get("sliding_window_pattern", DEFAULT_PATTERN)
        if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
            _refuse("sliding_window_pattern", pattern, "give a positive integer (every so many blocks one is "
                    "full_attention, Gemma 3's 6), or layer_types naming each block's attention")
        return [i for i in range(num_layers) if (i + 1) % pattern]
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


def fields(hf: dict, num_layers: int, local_theta: float, num) -> dict:
    """The ModelConfig fields of a gemma3_text config.json beyond the shared keys: Gemma 2's sandwich
    norms and query_pre_attn_scalar, q/k norms (Gemma3Attention q_norm, k_norm), the
    final soft-cap if given (default none; Gemma3Attention does not pass attn_logit_softcapping to its
    attention, so it is not read: `families._READ_BY`), the window on the sliding blocks and their rope
    base (Gemma3TextConfig's defaults above). `num(key, default, kind)` reads a number as `model_config_from_hf`
    does."""
    if hf.get("use_bidirectional_attention"):
        _refuse("use_bidirectional_attention", True, "attention is causal here (EmbeddingGemma's bidirectional "
                "attention is not modelled); serve a causal Gemma 3 checkpoint (the key false or absent)")
    sliding = sliding_blocks(hf, num_layers)
    window = hf.get("sliding_window", DEFAULT_WINDOW)
    if sliding and window is None:  # transformers' create_sliding_window_causal_mask refuses it too
        _refuse("sliding_window", None, f"{len(sliding)} blocks are sliding_attention: give their window")
    scalar = num("query_pre_attn_scalar", DEFAULT_QUERY_PRE_ATTN_SCALAR) or DEFAULT_QUERY_PRE_ATTN_SCALAR
    out = dict(sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=scalar,
               final_logit_softcapping=float(num("final_logit_softcapping", None, float) or 0.0))
    if not sliding:
        return dict(out, sliding_window=0, layer_types=())
    out.update(sliding_window=num("sliding_window", DEFAULT_WINDOW), rope_local_theta=local_theta)
    if len(sliding) < num_layers:
        out["layer_types"] = tuple(KINDS[0] if b in sliding else KINDS[1] for b in range(num_layers))
    return out


def config_keys(cfg: ModelConfig, rope_full: dict) -> dict:
    """What a gemma3_text config.json says beyond the shared keys (`hf_config_dict`): Gemma3TextConfig's
    names (hidden_activation), every block's layer type, the window, and the rope per layer type as
    transformers 5 writes it (`rope_full`: the full blocks', the shared writer's rope_scaling and theta).
    Without a window, one of the whole context: Gemma3TextModel builds its sliding_attention mask whatever
    layer_types say, and create_sliding_window_causal_mask refuses a null one (modeling_gemma3.py)."""
    windows = cfg.block_windows
    if any(windows) and not cfg.rope_local_theta and cfg.rope_type != "default":
        raise ValueError(f"model.rope_local_theta=0 cannot be saved as a model_type='gemma3_text' checkpoint with "
                         f"model.rope_type={cfg.rope_type!r}: its windowed blocks' rope is unscaled in transformers; set "
                         "model.rope_local_theta (Gemma 3's 10000.0)")
    local = cfg.rope_local_theta or cfg.rope_theta
    return dict(query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
                sliding_window=cfg.sliding_window or cfg.max_seq_len, use_bidirectional_attention=False,
                layer_types=[KINDS[0] if w else KINDS[1] for w in windows], attn_logit_softcapping=None,
                final_logit_softcapping=cfg.final_logit_softcapping or None,
                rope_parameters=dict(full_attention=rope_full,
                                     sliding_attention=dict(rope_type="default", rope_theta=local)))
