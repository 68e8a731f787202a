"""Llama weights: seeded random presets and Hugging Face safetensors checkpoints.

Weights live in `LlamaWeights` under Hugging Face's tensor names' structure,
as float32 compute arrays whose values are exactly representable in the
storage dtype (bf16 by default, CENT's data type). A checkpoint is read one
tensor at a time through safetensors' memory map, so loading never holds the
raw file and the parsed model at once.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from cent_serve.config import ROPE_TYPES, ModelConfig
from cent_serve.model.families import unmodelled_features, windowed_blocks

F32 = np.float32
log = logging.getLogger(__name__)
_WARNED_UNUSED: set[str] = set()
"""Checkpoints whose unused tensors were warned about (once each, per process: the preflight reads
the headers, then a local executor loads the same files)."""


@dataclass
class LayerWeights:
    """One transformer block; matrices in (out, in) layout like torch.nn.Linear."""

    input_norm: np.ndarray  # (D,)
    wq: np.ndarray  # (H*hd, D)
    wk: np.ndarray  # (Hkv*hd, D)
    wv: np.ndarray  # (Hkv*hd, D)
    wo: np.ndarray  # (D, H*hd)
    post_norm: np.ndarray  # (D,)
    w_gate: np.ndarray | None  # (F, D); None in a mixture of experts
    w_up: np.ndarray | None  # (F, D)
    w_down: np.ndarray | None  # (D, F)
    bq: np.ndarray | None = None  # (H*hd,) q/k/v biases (model.attention_bias)
    bk: np.ndarray | None = None  # (Hkv*hd,)
    bv: np.ndarray | None = None  # (Hkv*hd,)
    q_norm: np.ndarray | None = None  # (hd,) per-head RMSNorm weights of q and k (model.qk_norm)
    k_norm: np.ndarray | None = None  # (hd,)
    router: np.ndarray | None = None  # (E, D) a mixture of experts' router (model.num_experts)
    experts_gate: np.ndarray | None = None  # (E, F_e, D) every expert's gate, up and down, stacked
    experts_up: np.ndarray | None = None  # (E, F_e, D)
    experts_down: np.ndarray | None = None  # (E, D, F_e)

    @property
    def qkv_bias(self) -> tuple | None:
        return None if self.bq is None else (self.bq, self.bk, self.bv)

    @property
    def qk_norms(self) -> tuple | None:
        return None if self.q_norm is None else (self.q_norm, self.k_norm)


@dataclass
class LlamaWeights:
    """All weights of a Llama model (float32 compute copies)."""

    embed: np.ndarray  # (vocab, D)
    layers: list[LayerWeights]
    final_norm: np.ndarray  # (D,)
    lm_head: np.ndarray  # (vocab, D); the embedding itself when tied
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def bf16() -> type:
    """ml_dtypes.bfloat16, imported on first use: the import costs ~0.6 CPU-s in every process
    (each device actor), and only bfloat16 checkpoints need it (random weights round with
    `round_to_bfloat16`)."""
    import ml_dtypes

    return ml_dtypes.bfloat16


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even; a NaN to the quiet NaN of its
    sign) and given back as float32: bit for bit `x.astype(ml_dtypes.bfloat16).astype(float32)`
    (every one of the 2^32 float32 patterns was compared), without importing ml_dtypes, which
    costs a device actor's start-up ~0.6 CPU-s when it only rounds its random weights. Other dtypes
    than float32 go through ml_dtypes (float64 rounded once, not twice)."""
    if x.dtype != F32:
        return x.astype(bf16()).astype(F32)
    u = np.ascontiguousarray(x).view(np.uint32)
    r = u >> np.uint32(16)
    r &= np.uint32(1)  # the lowest bit kept: a tie rounds to make it 0
    r += np.uint32(0x7FFF)
    r += u  # a carry out of the low half rounds up (to inf past the largest finite value)
    r &= np.uint32(0xFFFF0000)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = (u[nan] & np.uint32(0x80000000)) | np.uint32(0x7FC00000)
    return r.view(F32)


def _to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to the storage dtype and back to float32 compute values."""
    if dtype == "bfloat16":
        return round_to_bfloat16(x)
    return x.astype(F32)


def random_weights(cfg: ModelConfig) -> LlamaWeights:
    """Seeded random weights: same cfg.seed, same weights, on any machine.

    Uses numpy's PCG64 generator (platform-independent stream); matrices are
    N(0, 1/fan_in) so activations stay O(1) through many layers, norms are 1.
    """
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim

    def mat(out_dim: int, in_dim: int) -> np.ndarray:
        w = rng.standard_normal((out_dim, in_dim), dtype=F32) * F32(1.0 / np.sqrt(in_dim))
        return _to_storage(w, cfg.weight_dtype)

    def norm(n: int = d) -> np.ndarray:
        return _to_storage(1.0 + 0.1 * rng.standard_normal(n, dtype=F32), cfg.weight_dtype)

    def bias(n: int) -> np.ndarray:
        return _to_storage(0.1 * rng.standard_normal(n, dtype=F32), cfg.weight_dtype)

    embed = _to_storage(rng.standard_normal((cfg.vocab_size, d), dtype=F32), cfg.weight_dtype)
    layers = []
    for _ in range(cfg.num_layers):
        attn = dict(input_norm=norm(), wq=mat(cfg.num_heads * hd, d), wk=mat(cfg.num_kv_heads * hd, d),
                    wv=mat(cfg.num_kv_heads * hd, d), wo=mat(d, cfg.num_heads * hd), post_norm=norm())
        if cfg.is_moe:
            fe, n = cfg.expert_size, cfg.num_experts
            layers.append(LayerWeights(
                **attn, w_gate=None, w_up=None, w_down=None, router=mat(n, d),
                experts_gate=np.stack([mat(fe, d) for _ in range(n)]),
                experts_up=np.stack([mat(fe, d) for _ in range(n)]),
                experts_down=np.stack([mat(d, fe) for _ in range(n)])))
        else:
            layers.append(LayerWeights(**attn, w_gate=mat(f, d), w_up=mat(f, d), w_down=mat(d, f)))
        if cfg.attention_bias:
            layers[-1].bq, layers[-1].bk, layers[-1].bv = (bias(cfg.q_size), bias(cfg.kv_size), bias(cfg.kv_size))
        if cfg.qk_norm:
            layers[-1].q_norm, layers[-1].k_norm = norm(hd), norm(hd)
    final_norm = norm()
    lm_head = embed if cfg.tie_word_embeddings else mat(cfg.vocab_size, d)
    return LlamaWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)


# ------------------------------------------------------------------ Hugging Face layout

_LAYER_NAMES = {
    "input_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "post_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
_BIAS_NAMES = {"bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias"}
_QK_NORM_NAMES = {"q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}


_MOE_NAMES = {"mixtral": ("block_sparse_moe", dict(experts_gate="w1", experts_up="w3", experts_down="w2")),
              "qwen3_moe": ("mlp", dict(experts_gate="gate_proj", experts_up="up_proj", experts_down="down_proj"))}
"""A mixture of experts' module and expert projection names per family, as `save_pretrained` writes
them: `model.layers.{i}.{module}.gate.weight` (the router), `...{module}.experts.{j}.{proj}.weight`."""
_EXPERT_NAME = re.compile(r"^(block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight$")
_FUSED_NAME = re.compile(r"^(block_sparse_moe|mlp)\.experts\.(gate_up_proj|down_proj)$")
"""transformers 5 holds a layer's experts fused, (E, 2 F_e, D) gate then up and (E, D, F_e); a
checkpoint saved in that form is read too."""


def _layer_names(cfg: ModelConfig) -> dict[str, str]:
    """LayerWeights field -> Hugging Face tensor name suffix, for the model's variations (a mixture
    of experts: its router instead of the MLP; the experts are `_expert_names`)."""
    names = {**_LAYER_NAMES, **(_BIAS_NAMES if cfg.attention_bias else {}),
             **(_QK_NORM_NAMES if cfg.qk_norm else {})}
    if cfg.is_moe:
        for key in ("w_gate", "w_up", "w_down"):
            del names[key]
        names["router"] = f"{_MOE_NAMES[cfg.model_type][0]}.gate.weight"
    return names


def _expert_names(cfg: ModelConfig) -> list[tuple[str, int, str]]:
    """(LayerWeights field, expert, tensor name suffix) of every expert projection of a block."""
    if not cfg.is_moe:
        return []
    module, projs = _MOE_NAMES[cfg.model_type]
    return [(key, j, f"{module}.experts.{j}.{proj}.weight") for j in range(cfg.num_experts)
            for key, proj in projs.items()]


def hf_tensor_names(cfg: ModelConfig) -> list[str]:
    """The tensor names a Hugging Face Llama checkpoint holds for this config."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.{n}" for n in _layer_names(cfg).values()]
        names += [f"model.layers.{i}.{n}" for _, _, n in _expert_names(cfg)]
    return names


ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
_ROPE_KEYS = dict(factor="rope_factor", low_freq_factor="rope_low_freq_factor",
                  high_freq_factor="rope_high_freq_factor", beta_fast="rope_beta_fast", beta_slow="rope_beta_slow",
                  mscale="rope_mscale", mscale_all_dim="rope_mscale_all_dim", attention_factor="rope_attention_factor",
                  truncate="rope_truncate", original_max_position_embeddings="rope_original_max_position")
_ROPE_TYPE_KEYS = {"linear": ("factor",), "dynamic": ("factor",),
                   "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                   "yarn": ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                            "truncate", "original_max_position_embeddings")}
"""The keys each rope type has in a config.json (what `hf_config_dict` writes)."""
_FAMILY_FEATURES = dict(attention_bias=("qwen2",), qk_norm=("qwen3", "qwen3_moe"), sliding_window=("mistral", "mixtral"))
"""The family whose config.json can say each variation (q/k/v biases, q/k norms, a window)."""


_REQUIRED = object()
"""The default of a config.json key every checkpoint has (`model_config_from_hf`)."""


def _refuse(field: str, value, why: str) -> None:
    raise ValueError(f"model.checkpoint: {field}={value!r} is not supported: {why}")


def _check_qwen_window(hf: dict, num_layers: int, context: int, per_block: bool) -> None:
    """Refuse a Qwen sliding window that hides keys within the context: the reference model has
    Mistral's window on every block, not Qwen's on some (a window it never reaches is harmless)."""
    blocks = windowed_blocks(hf, num_layers, context, per_block)
    if blocks:
        window = hf["sliding_window"]
        _refuse("use_sliding_window", True, f"sliding_window={window} on {len(blocks)} of {num_layers} blocks "
                f"(from block {blocks[0]}) is not modelled (Mistral's window on every block is): set "
                f"use_sliding_window to false in config.json to run full attention (the same tokens while a "
                f"sequence stays within {window} tokens)")


def json_object(file: Path, field: str, alternative: str) -> dict:
    """A checkpoint's JSON file of fields: ValueError naming the file, what is wrong and the fix
    (fix the file, `alternative`)."""
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): fix the "
                         f"file, {alternative}") from None
    except UnicodeDecodeError as exc:  # cut inside a character, or not text at all
        raise ValueError(f"{file}: not UTF-8 text (byte {exc.start}): fix the file, {alternative}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object of fields (\"{field}\": ..., ...), not a "
                         f"{type(data).__name__}: fix the file, {alternative}")
    return data


def model_config_from_hf(path: str | Path, **overrides) -> ModelConfig:
    """A ModelConfig from a Hugging Face `config.json` (file or its directory) of a supported family:
    Llama (2, 3.x, with rope scaling), Mistral (sliding window), Qwen 2.5 (q/k/v biases), Qwen 3
    (q/k norms), and the mixtures of experts Mixtral and Qwen 3 MoE. What the reference model cannot
    run is refused by name."""
    path = Path(path)
    if path.is_file():  # a checkpoint is a directory (the weights and tokenizer sit beside config.json)
        if path.name != "config.json":
            raise ValueError(f"model.checkpoint={str(path)!r} is a file: point --model at a checkpoint directory, "
                             f"with the file in it as config.json (e.g. mkdir m && cp {path} m/config.json)")
        path = path.parent
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"model.checkpoint={str(path)!r} has no config.json: point it at a "
                         "Hugging Face checkpoint directory (Llama, Mistral, Qwen 2.5, Qwen 3, Mixtral or Qwen 3 MoE)")
    hf = json_object(cfg_file, "hidden_size", "or point --model at a preset or another checkpoint directory")

    def _num(key: str, default=_REQUIRED, kind: type = int, positive: bool = True):
        """hf[key] as an int (or float), > 0 (else >= 0): ValueError naming the file, the key and the fix."""
        value = hf.get(key) if default is _REQUIRED else hf.get(key, default)
        if value is None and default is _REQUIRED:
            raise ValueError(f"{cfg_file}: {key} is missing: a Hugging Face config.json gives it (a positive "
                             f"{'integer' if kind is int else 'number'}); add it, or use the checkpoint's own file")
        if value is None:
            return value
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if kind is int and number and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not number or (kind is int and not isinstance(value, int)) or not math.isfinite(value) \
                or (value <= 0 if positive else value < 0):
            sign = "positive" if positive else "non-negative"
            raise ValueError(f"{cfg_file}: {key}={value!r} is invalid: use a {sign} "
                             f"{'integer' if kind is int else 'number'} (a JSON number, without quotes)")
        return value

    def _bool(key: str, default: bool) -> bool:
        """hf[key] as a JSON boolean ("false" in quotes is not false: transformers refuses it too)."""
        value = hf.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValueError(f"{cfg_file}: {key}={value!r} is invalid: use true or false (a JSON boolean, "
                             "without quotes)")
        return value

    if "model_type" not in hf:  # as transformers refuses it: the family decides what the keys mean
        raise ValueError(f"{cfg_file}: model_type is missing: a Hugging Face config.json names its family; add "
                         f"it (e.g. \"model_type\": \"llama\"; supported: {', '.join(ARCHITECTURES)})")
    arch = hf["model_type"]
    if arch not in ARCHITECTURES:
        missing = unmodelled_features(arch, hf)
        _refuse("model_type", arch, (f"not modelled: {missing}; " if missing else "")
                + f"supported families: {', '.join(ARCHITECTURES)}")
    family = _FAMILY_DEFAULTS.get(arch, {})
    moe = {}
    if arch in _MOE_NAMES:
        if hf.get("shared_expert_intermediate_size"):
            _refuse("shared_expert_intermediate_size", hf["shared_expert_intermediate_size"], "shared experts are not modelled")
        if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
            _refuse("decoder_sparse_step / mlp_only_layers", (hf.get("decoder_sparse_step"), hf.get("mlp_only_layers")),
                    "every block must be a mixture of experts (decoder_sparse_step 1, no mlp_only_layers)")
        if not hf.get("num_experts_per_tok"):
            _refuse("num_experts_per_tok", hf.get("num_experts_per_tok"),
                    "a mixture of experts' config.json names how many experts a token runs")
        if not (hf.get("num_local_experts") or hf.get("num_experts")):
            _refuse("num_local_experts / num_experts", None, "a mixture of experts' config.json names its experts")
        moe = dict(num_experts=_num("num_local_experts" if hf.get("num_local_experts") else "num_experts"),
                   num_experts_per_tok=_num("num_experts_per_tok"),
                   # transformers' Qwen3MoeConfig defaults: 768-wide experts, weights not renormalised
                   moe_intermediate_size=(_num("moe_intermediate_size", 768) or 768) if arch == "qwen3_moe" else 0,
                   norm_topk_prob=_bool("norm_topk_prob", False) if arch == "qwen3_moe" else True)
    if hf.get("quantization_config"):
        quant = hf["quantization_config"]
        _refuse("quantization_config", quant.get("quant_method", "?") if isinstance(quant, dict) else quant,
                "quantized checkpoints are not supported: use the bf16 / fp16 / fp32 weights")
    if hf.get("hidden_act", "silu") != "silu":
        _refuse("hidden_act", hf["hidden_act"], "the MLP is SwiGLU (silu)")
    if _bool("mlp_bias", False):
        _refuse("mlp_bias", True, "MLP biases are not modelled")
    if arch != "qwen2" and _bool("attention_bias", False):
        _refuse("attention_bias", True, "an o_proj bias is not modelled (Qwen 2.5's q/k/v biases are)")
    rope = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    partial = hf.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):  # transformers rotates only this share of each head's dims
        _refuse("partial_rotary_factor", partial, "the rotary embedding turns every dimension of a head (1.0)")
    # transformers < 5 writes `rope_theta` and `rope_scaling`; 5.x writes both inside
    # `rope_parameters` ({"rope_type": "default" | "llama3" | ..., "rope_theta": ..., ...}).
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise ValueError(f"{cfg_file}: {key}={hf[key]!r} is invalid: use a JSON object "
                             "({\"rope_type\": ..., \"factor\": ...}) or null")
    rope = dict(hf.get("rope_scaling") or {})
    rope.update(hf.get("rope_parameters") or {})
    for key, value in rope.items():  # numbers as JSON numbers: "8" would repeat a string, not scale a context
        if key in _ROPE_KEYS and value is not None:
            where = "rope_parameters" if key in (hf.get("rope_parameters") or {}) else "rope_scaling"
            ok = isinstance(value, bool) if key == "truncate" else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (value > 0 if key in ("factor", "original_max_position_embeddings") else True))
            if not ok:
                raise ValueError(f"{cfg_file}: {where}.{key}={value!r} is invalid: use "
                                 + ("true or false" if key == "truncate" else "a positive number" if key in
                                    ("factor", "original_max_position_embeddings") else "a number")
                                 + " (JSON, without quotes)")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        where = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"  # the key the file uses
        _refuse(f"{where}.{'rope_type' if 'rope_type' in rope else 'type'}", rope_type,
                f"supported: {', '.join(ROPE_TYPES)}")
    scaling = {}
    if rope_type != "default":
        scaling = {ours: rope[theirs] for theirs, ours in _ROPE_KEYS.items() if rope.get(theirs) is not None}
        scaling["rope_type"] = rope_type
        if rope_type in ("dynamic", "linear", "yarn"):  # they scale the original context factor times: the
            # context is that product, as vLLM derives it (yarn's original is its own key, the others' the
            # checkpoint's max_position_embeddings; llama3's context is max_position_embeddings already)
            original = rope.get("original_max_position_embeddings") if rope_type == "yarn" else None
            scaling["rope_original_max_position"] = original or hf.get("max_position_embeddings",
                                                                         family.get("max_position_embeddings"))
            overrides.setdefault("max_seq_len", int(scaling["rope_original_max_position"] * rope.get("factor", 1.0)))
    heads, hidden = _num("num_attention_heads"), _num("hidden_size")
    theta = hf.get("rope_theta", rope.get("rope_theta", family.get("rope_theta", 10000.0)))

    vocab = _num("vocab_size")

    def _ids(key: str, source: dict = hf, file: Path = cfg_file) -> list[int]:
        """A token id field as a list (Hugging Face writes one id or a list of them; [] when absent or
        null), each an id of the vocabulary: ValueError naming `file`, the key and the fix."""
        value = source.get(key)
        value = [] if value is None else value if isinstance(value, list) else [value]
        ids = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < vocab for v in ids):
            raise ValueError(f"{file}: {key}={value!r} is invalid: use a token id in [0, {vocab}) or a list of "
                             "them (JSON integers)")
        return ids

    gen_file = cfg_file.parent / "generation_config.json"  # vLLM stops at its eos ids too
    gen = json_object(gen_file, "eos_token_id", "or remove it (its eos_token_id ends generations)") \
        if gen_file.is_file() else {}
    eos = _special_ids(cfg_file, "eos_token_id", _ids("eos_token_id"), _ids("eos_token_id", gen, gen_file))
    more = eos[1:] + _ids("eos_token_id", gen, gen_file)

    torch_dtype = hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"
    fields = dict(
        name=cfg_file.parent.name,
        model_type=arch,
        hidden_size=hidden,
        intermediate_size=_num("intermediate_size"),
        num_layers=_num("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_num("num_key_value_heads", family.get("num_key_value_heads")) or heads,  # null: heads
        head_dim=_num("head_dim", None) or (128 if arch == "qwen3" else hidden // heads),  # Qwen3Config's default
        vocab_size=vocab,
        max_seq_len=_num("max_position_embeddings", family.get("max_position_embeddings", 4096)),
        rope_theta=float(_num("rope_theta", theta, float) or 10000.0),
        rms_norm_eps=float(_num("rms_norm_eps", family.get("rms_norm_eps", 1e-6), float) or 1e-6),
        tie_word_embeddings=_bool("tie_word_embeddings", False),
        attention_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "qwen3_moe"),
        sliding_window=(_num("sliding_window", family.get("sliding_window", 0), positive=False) or 0)
        if arch in ("mistral", "mixtral") else 0,  # null: no window
        bos_token_id=_special_ids(cfg_file, "bos_token_id", _ids("bos_token_id"),
                                  _ids("bos_token_id", gen, gen_file), eos)[0],
        eos_token_id=eos[0],
        extra_eos_token_ids=tuple(dict.fromkeys(i for i in more if i != eos[0])),
        weight_dtype="float32" if torch_dtype == "float32" else "bfloat16",
        checkpoint=str(cfg_file.parent),
        **scaling,
        **moe,
    )
    fields.update(overrides)
    if arch in ("qwen2", "qwen3", "qwen3_moe"):  # Mistral's window is modelled; Llama has none. Within the
        # context served (a yarn rope's, --set model.max_seq_len's)
        _check_qwen_window(hf, fields["num_layers"], fields["max_seq_len"], arch != "qwen3_moe")
    try:
        return ModelConfig(**fields)
    except ValueError as exc:  # a value the model cannot take: say which file it came from
        raise ValueError(f"{cfg_file}: {exc}") from None


_FAMILY_DEFAULTS = {
    "llama": dict(max_position_embeddings=2048),
    "mistral": dict(num_key_value_heads=8, sliding_window=4096, max_position_embeddings=4096 * 32),
    "mixtral": dict(num_key_value_heads=8, rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=4096 * 32),
    "qwen2": dict(num_key_value_heads=32, max_position_embeddings=32768),
    "qwen3": dict(num_key_value_heads=32, max_position_embeddings=32768),
    "qwen3_moe": dict(num_key_value_heads=4, max_position_embeddings=32768),
}
"""What a family's transformers config class (LlamaConfig, MistralConfig, ...) takes for a key its
config.json leaves out, where that is not the general default (KV heads: the query heads; rope_theta
1e4; rms_norm_eps 1e-6; no window); a key given as null reads as that general default."""


_STAND_IN_IDS = dict(bos_token_id=1, eos_token_id=2)
"""The byte-level tokenizer's `<s>` and `</s>` (`ByteTokenizer`): the ids of a checkpoint that names none and
has no tokenizer.json, which that tokenizer then stands in for."""


def _special_ids(cfg_file: Path, key: str, ids: list[int], gen_ids: list[int],
                 eos: list[int] | None = None) -> list[int]:
    """The model's `key` (bos_token_id, eos_token_id) ids: config.json's, else generation_config.json's,
    else its tokenizer's token (tokenizer_config.json's or special_tokens_map.json's bos_token / eos_token
    in tokenizer.json), as vLLM
    falls back to the tokenizer's eos. With no tokenizer.json, the byte-level stand-in's id. A bos that
    none names is the model's `eos` (a tokenizer without a BOS, as Qwen's: its config.json says so too).
    An eos that none names is a ValueError asking for it: ModelConfig's ids are plain ints that the stop
    checks use, and a made-up id is an ordinary token of a real vocabulary (an eos that cuts replies short)."""
    if ids or gen_ids:
        return ids or gen_ids
    from cent_serve.model.tokenizer import tokenizer_special_id  # the tokenizer module imports this one

    token = key.removesuffix("_id")
    found = tokenizer_special_id(cfg_file.parent, token)
    if found is not None:
        return [found]
    if not (cfg_file.parent / "tokenizer.json").is_file():
        return [_STAND_IN_IDS[key]]
    if key == "bos_token_id" and eos:
        return eos[:1]
    raise ValueError(f"{cfg_file}: {key} is missing, and neither generation_config.json nor the tokenizer's {token} "
                     f"(tokenizer_config.json's or special_tokens_map.json's, in tokenizer.json) gives it: add it "
                     "(the token that ends a reply)")


def _checkpoint_files(ckpt: Path) -> list[Path]:
    """The safetensors files of a checkpoint: its index's shards (each there: ValueError naming the index
    and the shard otherwise), else model.safetensors."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        fix = "or download it again"
        weight_map = json_object(index, "weight_map", fix).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: weight_map={weight_map!r:.60} is invalid: a sharded checkpoint's index maps "
                             f"each tensor to its file ({{\"weight_map\": {{\"model.norm.weight\": "
                             f"\"model-00001-of-00002.safetensors\", ...}}}}); fix the file, {fix}")
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not (ckpt / name).is_file()]
        if missing:
            raise ValueError(f"{index}: lists shards missing from {ckpt} ({len(missing)} of {len(files)}): "
                             f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: download them (a "
                             "download that did not finish?)")
        return [ckpt / name for name in files]
    single = ckpt / "model.safetensors"
    if single.is_file():
        return [single]
    raise ValueError(f"model.checkpoint={str(ckpt)!r} has neither model.safetensors nor "
                     "model.safetensors.index.json: save the checkpoint in safetensors format, or run its "
                     "shape timing-only with --numerics off")


_LFS_POINTER = b"version https://git-lfs"
"""How a Git LFS pointer file begins (a repository cloned without git-lfs holds these, not the weights)."""


def _safe_open(file: Path):
    """safetensors' `safe_open` of a checkpoint file: a file it cannot read (cut short by a download
    that did not finish, a Git LFS pointer) is a ValueError naming the file and the fix."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework="numpy")
    except SafetensorError as exc:
        with open(file, "rb") as raw:
            is_pointer = raw.read(len(_LFS_POINTER)) == _LFS_POINTER
        why = ("a Git LFS pointer, not the weights: fetch them (git lfs pull) or download the file again"
               if is_pointer else f"not a readable safetensors file ({exc}): damaged or cut short (a download "
               "that did not finish?); download it again")
        raise ValueError(f"{file}: {why}") from None


def iter_checkpoint_tensors(ckpt: str | Path, shapes_only: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, float32 array) one tensor at a time from a safetensors checkpoint; with
    `shapes_only`, arrays of the right shape that read nothing (one zero, broadcast: the files'
    headers only)."""
    if not shapes_only:
        bf16()  # safetensors asks numpy for the dtype "bfloat16" by name: numpy knows it once ml_dtypes is imported
    for file in _checkpoint_files(Path(ckpt)):
        with _safe_open(file) as f:
            for name in f.keys():
                if shapes_only:
                    yield name, np.broadcast_to(np.zeros((), F32), tuple(f.get_slice(name).get_shape()))
                else:
                    yield name, np.asarray(f.get_tensor(name)).astype(F32)


def check_hf_checkpoint(cfg: ModelConfig) -> None:
    """Check every expected tensor of `cfg.checkpoint` and its shape from the files' headers, reading
    no weights: ValueError naming the tensor, as loading would (on Ray each device actor loads, and
    its failure came back as a traceback after start-up)."""
    _checked_tensors(cfg, shapes_only=True)


def load_hf_weights(cfg: ModelConfig) -> LlamaWeights:
    """Load the weights of `cfg.checkpoint`, checking every expected tensor and shape."""
    top, layer_parts, expert_parts, extra = _checked_tensors(cfg, shapes_only=False)
    embed = top["model.embed_tokens.weight"]
    lm_head = embed if cfg.tie_word_embeddings else top["lm_head.weight"]
    if cfg.is_moe:
        for parts, got in zip(layer_parts, expert_parts):
            parts.update(w_gate=None, w_up=None, w_down=None)
            for key in ("experts_gate", "experts_up", "experts_down"):
                parts[key] = np.stack([got[(key, j)] for j in range(cfg.num_experts)])
    layers = [LayerWeights(**parts) for parts in layer_parts]
    return LlamaWeights(embed=embed, layers=layers, final_norm=top["model.norm.weight"],
                        lm_head=lm_head, extra=extra)


def _checked_tensors(cfg: ModelConfig, shapes_only: bool) -> tuple[dict, list[dict], list[dict], dict]:
    """The checkpoint's tensors by place (top level, each block's, each block's experts, the rest),
    after checking that every expected one is there with its shape."""
    assert cfg.checkpoint, "a checkpoint's tensors need cfg.checkpoint"
    d, hd = cfg.hidden_size, cfg.head_dim
    shapes = {
        "input_norm": (d,), "post_norm": (d,), "wq": (cfg.num_heads * hd, d),
        "wk": (cfg.num_kv_heads * hd, d), "wv": (cfg.num_kv_heads * hd, d),
        "wo": (d, cfg.num_heads * hd), "w_gate": (cfg.intermediate_size, d),
        "w_up": (cfg.intermediate_size, d), "w_down": (d, cfg.intermediate_size),
    }
    shapes.update(bq=(cfg.q_size,), bk=(cfg.kv_size,), bv=(cfg.kv_size,), q_norm=(hd,), k_norm=(hd,))
    fe = cfg.expert_size
    shapes.update(router=(cfg.num_experts, d), experts_gate=(fe, d), experts_up=(fe, d), experts_down=(d, fe))
    by_suffix = {v: k for k, v in _layer_names(cfg).items()}
    if cfg.model_type == "mixtral":  # transformers 5 names Mixtral's router like Qwen's, beside fused experts
        by_suffix["mlp.gate.weight"] = "router"
    experts = {suffix: (key, j) for key, j, suffix in _expert_names(cfg)}
    known = set(_LAYER_NAMES.values()) | set(_BIAS_NAMES.values()) | set(_QK_NORM_NAMES.values())
    layer_parts: list[dict[str, np.ndarray]] = [{} for _ in range(cfg.num_layers)]
    expert_parts: list[dict[tuple[str, int], np.ndarray]] = [{} for _ in range(cfg.num_layers)]
    top: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for name, arr in iter_checkpoint_tensors(cfg.checkpoint, shapes_only):
        if name.startswith("model.layers."):
            _, _, idx, rest = name.split(".", 3)
            if cfg.is_moe and int(idx) < cfg.num_layers and (rest in experts or _FUSED_NAME.match(rest)):
                _take_experts(cfg, name, rest, arr, experts, expert_parts[int(idx)], shapes)
                continue
            if not cfg.is_moe and (_EXPERT_NAME.match(rest) or _FUSED_NAME.match(rest)
                                   or rest.endswith(("mlp.gate.weight", "moe.gate.weight"))):
                raise ValueError(f"checkpoint tensor {name} is an expert's or a router's, but model.num_experts="
                                 f"{cfg.num_experts} (model_type={cfg.model_type!r}): the checkpoint and its config.json "
                                 "disagree")
            key = by_suffix.get(rest)
            if key is None and rest in known:  # a bias or norm the family's config does not announce
                raise ValueError(f"checkpoint tensor {name} is not part of a model_type={cfg.model_type!r} config: the "
                                 "checkpoint and its config.json disagree (biases: qwen2; q/k norms: qwen3)")
            if key is None or int(idx) >= cfg.num_layers:
                extra[name] = arr
                continue
            if arr.shape != shapes[key]:
                raise ValueError(f"checkpoint tensor {name} has shape {arr.shape}, expected "
                                 f"{shapes[key]} from config.json: the checkpoint and its config disagree")
            layer_parts[int(idx)][key] = arr
        else:
            top[name] = arr
    missing = [n for n in hf_tensor_names(cfg) if not _has(n, top, layer_parts, by_suffix, experts, expert_parts)]
    if missing:
        raise ValueError(f"model.checkpoint={cfg.checkpoint!r} lacks tensors {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}: is it a complete model_type={cfg.model_type!r} "
                         "checkpoint?")
    top_shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        top_shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for name, want in top_shapes.items():
        if top[name].shape != want:
            raise ValueError(f"checkpoint tensor {name} has shape {top[name].shape}, expected {want} from "
                             "config.json: the checkpoint and its config disagree")
    _warn_unused(cfg, [*extra, *(n for n in top if n not in top_shapes)])
    return top, layer_parts, expert_parts, extra


def _warn_unused(cfg: ModelConfig, names: list[str]) -> None:
    """Warn once a checkpoint about tensors its config.json does not use (blocks past
    num_hidden_layers, a vision tower, a multi-token-prediction head): dropped silently, they hid a
    config that disagrees with its weights. Not the ones transformers ignores too: old checkpoints'
    rotary `inv_freq` buffers, and the LM head of a model whose embedding is tied."""
    unused = sorted(n for n in names if not n.endswith("rotary_emb.inv_freq")
                    and not (cfg.tie_word_embeddings and n == "lm_head.weight"))
    if not unused or cfg.checkpoint in _WARNED_UNUSED:
        return
    _WARNED_UNUSED.add(cfg.checkpoint)
    groups = {".".join(re.sub(r"\d+", "N", n).split(".")[:2]): n for n in reversed(unused)}  # the first of each
    shown = list(dict.fromkeys([*sorted(groups.values()), *unused]))[:3]
    more = f" and {len(unused) - len(shown)} more" if len(unused) > len(shown) else ""
    log.warning("model.checkpoint=%r holds %d tensors its config.json does not use (model_type=%r, "
                "num_hidden_layers=%d%s), ignored: %s%s; if the model runs them, its config.json disagrees with "
                "its weights: fix config.json", cfg.checkpoint, len(unused), cfg.model_type,
                cfg.num_layers, f", num_experts={cfg.num_experts}" if cfg.is_moe else "", ", ".join(shown), more)


def _take_experts(cfg: ModelConfig, name: str, rest: str, arr: np.ndarray, experts: dict,
                  into: dict, shapes: dict) -> None:
    """One expert projection (or a fused stack of them) into `into`, keyed (field, expert)."""
    fused = _FUSED_NAME.match(rest)
    if fused is None:
        key, j = experts[rest]
        pieces = [(key, j, arr)]
    else:
        n, fe, d = cfg.num_experts, cfg.expert_size, cfg.hidden_size
        want = (n, 2 * fe, d) if fused.group(2) == "gate_up_proj" else (n, d, fe)
        if arr.shape != want:
            raise ValueError(f"checkpoint tensor {name} has shape {arr.shape}, expected {want} from config.json: "
                             "the checkpoint and its config disagree")
        pieces = ([(k, j, part[j]) for j in range(n) for k, part in
                   (("experts_gate", arr[:, :fe]), ("experts_up", arr[:, fe:]))]
                  if fused.group(2) == "gate_up_proj" else [("experts_down", j, arr[j]) for j in range(n)])
    for key, j, a in pieces:
        if a.shape != shapes[key]:
            raise ValueError(f"checkpoint tensor {name} has shape {a.shape}, expected {shapes[key]} from config.json: "
                             "the checkpoint and its config disagree")
        into[(key, j)] = a


def _has(name: str, top: dict, layer_parts: list[dict], by_suffix: dict, experts: dict, expert_parts: list) -> bool:
    if not name.startswith("model.layers."):
        return name in top
    _, _, idx, rest = name.split(".", 3)
    if rest in experts:
        return experts[rest] in expert_parts[int(idx)]
    return by_suffix[rest] in layer_parts[int(idx)]


def save_hf_checkpoint(cfg: ModelConfig, weights: LlamaWeights, out_dir: str | Path,
                       max_shard_bytes: int | None = None) -> Path:
    """Write weights as a Hugging Face Llama checkpoint (config.json + safetensors).

    With `max_shard_bytes`, tensors are split over several files with a
    `model.safetensors.index.json`, as `save_pretrained` does for big models.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = bf16() if cfg.weight_dtype == "bfloat16" else F32
    tensors = {"model.embed_tokens.weight": weights.embed, "model.norm.weight": weights.final_norm}
    if not cfg.tie_word_embeddings:
        tensors["lm_head.weight"] = weights.lm_head
    for i, layer in enumerate(weights.layers):
        for key, suffix in _layer_names(cfg).items():
            tensors[f"model.layers.{i}.{suffix}"] = getattr(layer, key)
        for key, j, suffix in _expert_names(cfg):
            tensors[f"model.layers.{i}.{suffix}"] = getattr(layer, key)[j]
    tensors = {k: np.ascontiguousarray(v.astype(store)) for k, v in tensors.items()}
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2))
    if max_shard_bytes is None:
        save_file(tensors, str(out / "model.safetensors"))
        return out
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors.items():
        if shards[-1] and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname))
        weight_map.update({name: fname for name in shard})
    total = sum(a.nbytes for a in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out


def hf_config_dict(cfg: ModelConfig) -> dict:
    """The Hugging Face `config.json` content of a ModelConfig (of a variation its family's config
    can say: ValueError otherwise)."""
    for feature, families in _FAMILY_FEATURES.items():
        if getattr(cfg, feature) and cfg.model_type not in families:
            raise ValueError(f"model.{feature}={getattr(cfg, feature)!r} cannot be saved as a model_type="
                             f"{cfg.model_type!r} checkpoint: only {' and '.join(map(repr, families))} configs have it "
                             "(set model.model_type)")
    if cfg.model_type == "qwen2" and not cfg.attention_bias:
        raise ValueError("model.model_type='qwen2' has q/k/v biases: set model.attention_bias=true to save it")
    if cfg.model_type in ("qwen3", "qwen3_moe") and not cfg.qk_norm:
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
        "hidden_act": "silu", "mlp_bias": False,
        "torch_dtype": cfg.weight_dtype,
    }
    if cfg.model_type != "qwen2":
        out["attention_bias"] = False
    if cfg.model_type in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window or None
    if cfg.model_type == "mixtral":
        out.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok)
    if cfg.model_type == "qwen3_moe":
        out.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                   moe_intermediate_size=cfg.expert_size, norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1,
                   mlp_only_layers=[])
    if cfg.rope_type != "default":
        values = {theirs: getattr(cfg, _ROPE_KEYS[theirs]) for theirs in _ROPE_TYPE_KEYS[cfg.rope_type]}
        if cfg.rope_type == "yarn":  # 0 means "derive it" for these: leave them out, as transformers does
            values = {k: v for k, v in values.items() if v or k == "truncate"}
        if "original_max_position_embeddings" in values:
            values["original_max_position_embeddings"] = cfg.rope_original_max_position or cfg.max_seq_len
        out["rope_scaling"] = {"rope_type": cfg.rope_type, **values}
        if cfg.rope_type in ("dynamic", "linear"):  # their original context is max_position_embeddings
            out["max_position_embeddings"] = cfg.rope_original_max_position or round(cfg.max_seq_len / cfg.rope_factor)
    return out


def load_weights(cfg: ModelConfig) -> LlamaWeights:
    """The model's weights: the checkpoint when one is set, else seeded random ones."""
    return load_hf_weights(cfg) if cfg.checkpoint else random_weights(cfg)
