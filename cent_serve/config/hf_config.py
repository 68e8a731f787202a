"""A `ModelConfig` from a checkpoint's Hugging Face `config.json`, with the family's defaults transformers
would take, and refusals of what the model cannot run. The other way, a config.json from a `ModelConfig`,
is `cent_serve.model.hf_config_writer`'s."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from cent_serve.config import gemma3
from cent_serve.config.families import (GELU_TANH_NAMES, activation, announced_features, dense_mlp_blocks,
                                        gemma2_windowed_blocks, gemma_fields, unmodelled_features, windowed_blocks)
from cent_serve.config.families import refuse as _refuse
from cent_serve.config.hf_files import json_object, tokenizer_special_id
from cent_serve.config.model import GEMMA_TYPES, MOE_TYPES, ROPE_TYPES, ModelConfig


ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                 "qwen2_moe": "Qwen2MoeForCausalLM", "phi3": "Phi3ForCausalLM", "gemma": "GemmaForCausalLM",
                 "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
FAMILY_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen 2.5", "qwen3": "Qwen 3", "mixtral": "Mixtral",
                "qwen3_moe": "Qwen 3 MoE", "qwen2_moe": "Qwen 2 MoE", "phi3": "Phi-3", "gemma": "Gemma",
                "gemma2": "Gemma 2", "gemma3_text": "Gemma 3"}
"""Each `ARCHITECTURES` family as a reader names it, for the messages of a directory that is not a checkpoint."""
FAMILY_NAMES_TEXT = ", ".join(list(FAMILY_NAMES.values())[:-1]) + " or " + list(FAMILY_NAMES.values())[-1]
ROPE_KEYS = dict(factor="rope_factor", low_freq_factor="rope_low_freq_factor",
                 high_freq_factor="rope_high_freq_factor", beta_fast="rope_beta_fast", beta_slow="rope_beta_slow",
                 mscale="rope_mscale", mscale_all_dim="rope_mscale_all_dim", attention_factor="rope_attention_factor",
                 truncate="rope_truncate", original_max_position_embeddings="rope_original_max_position")
"""A config.json's rope scaling keys -> the `ModelConfig` fields they set (read here, written by
`hf_config_writer`)."""
PHI3_ROPE_TYPES = ("default", "longrope")
"""The rotary scalings transformers' Phi3Config takes (it renames the older su and yarn to longrope,
and refuses the others)."""


_REQUIRED = object()
"""The default of a config.json key every checkpoint has (`model_config_from_hf`)."""
_WARNED_CONTEXT: set[str] = set()
"""The config.json files whose missing max_position_embeddings was warned of: once a file, however often a
command reads it (`_warn_default_context`)."""


def _qwen_window(hf: dict, arch: str, num_layers: int, context: int) -> dict:
    """The window fields of a Qwen config.json (`windowed_blocks`: transformers' blocks, a window that
    hides no key within the context read as none): sliding_window, and layer_types when some blocks only
    have it. The layer_types of a family that reads it (all but Qwen 3 MoE) is checked as Mistral's."""
    if arch != "qwen3_moe" and hf.get("layer_types") is not None:
        _check_layer_types(hf["layer_types"], num_layers)
    blocks = windowed_blocks(hf, arch, num_layers, context)
    if not blocks:
        return dict(sliding_window=0, layer_types=())
    return dict(sliding_window=int(hf["sliding_window"]), layer_types=_layer_types(blocks, num_layers))


def _layer_types(sliding: list[int], num_layers: int) -> tuple[str, ...]:
    """`ModelConfig.layer_types` of a model windowing the blocks `sliding`: () when it is every block."""
    if len(sliding) == num_layers:
        return ()
    return tuple("sliding_attention" if b in sliding else "full_attention" for b in range(num_layers))


_IGNORED_BY = {"llama": "LlamaForCausalLM ignores it and windows no block",
               "mixtral": "MixtralForCausalLM ignores it and windows every block"}
"""What transformers does with the `layer_types` of a family whose config has none."""


def _check_layer_types(types, num_layers: int) -> None:
    """Refuse a config.json's layer_types naming a kind of attention that is not modelled, or not one
    entry a block."""
    kinds = ("full_attention", "sliding_attention")
    odd = sorted({str(t) for t in types} - set(kinds)) if isinstance(types, list) else [types]
    if odd:
        _refuse("layer_types", odd[0] if len(odd) == 1 else odd, f"a list of {' and '.join(kinds)} blocks is "
                "modelled (other kinds of attention are not): fix the list, or remove layer_types")
    if len(types) != num_layers:
        raise ValueError(f"model.checkpoint: layer_types names {len(types)} blocks, not num_hidden_layers="
                         f"{num_layers}: give one entry a block (transformers requires it), or remove layer_types")


def _layer_types_window(hf: dict, arch: str, num_layers: int, context: int, window: int) -> dict:
    """The window fields (sliding_window, layer_types) of a Llama, Mistral or Mixtral config.json with
    `layer_types` (`window` on every block without). transformers reads a Mistral's as Ministral's
    (AutoConfig: a window on the blocks it names "sliding_attention" only), so a Mistral's on no block is
    full attention and a mix windows its sliding blocks; Llama and Mixtral ignore theirs: they run as
    transformers runs them, with a warning that the list is not read. A kind of block that is not
    modelled is refused."""
    types = hf.get("layer_types")
    if types is None:
        return dict(sliding_window=window, layer_types=())
    _check_layer_types(types, num_layers)
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    size = hf.get("sliding_window") if arch == "llama" else window  # a Llama's window is never applied
    hides = isinstance(size, (int, float)) and not isinstance(size, bool) and 0 < size < context
    if 0 < len(sliding) < num_layers and hides and arch != "mistral":  # transformers runs it without the list
        mix = f"{len(sliding)} sliding_attention, {num_layers - len(sliding)} full_attention"
        logging.getLogger("cent").warning(
            "model.checkpoint: layer_types (%s) is not read: %s, as cent does (sliding_window=%s); remove "
            "layer_types to silence this", mix, _IGNORED_BY[arch], size)
    if arch != "mistral" or not window:
        return dict(sliding_window=window, layer_types=())
    if not sliding or not hides:  # no block windowed, or a window that hides no key: full attention
        return dict(sliding_window=0 if not sliding else window, layer_types=())
    return dict(sliding_window=window, layer_types=_layer_types(sliding, num_layers))


def hub_repo_id(directory: str | Path) -> str | None:
    """ORG/NAME of a snapshot in the Hugging Face cache, hub/models--ORG--NAME/snapshots/COMMIT
    (huggingface_hub's file_download.py layout), else None. From the path alone: no file is read."""
    directory = Path(os.path.abspath(directory))  # not resolve(): a symlink's own name stays the name
    repo = directory.parent.parent.name
    if directory.parent.name == "snapshots" and repo.startswith("models--"):
        return repo[len("models--"):].replace("--", "/", 1)
    return None


def checkpoint_name(directory: str | Path) -> str:
    """The model name of a checkpoint directory: its own name (`.` resolved), but for a snapshot in the
    Hugging Face cache its repository's NAME (`hub_repo_id`), not the commit hash."""
    repo = hub_repo_id(directory)
    return repo.split("/")[-1] if repo else Path(os.path.abspath(directory)).name


def _suggested_snapshot(repo: Path, snapshots: list[Path]) -> tuple[str, Path]:
    """(how it was chosen, directory) of the snapshot to offer for the cache folder `repo`, given its
    snapshots' config.json files: the one refs/main names (a file holding the commit that the branch main
    last downloaded was at: huggingface.co/docs/hub/local-cache), else the one modified last."""
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except (OSError, UnicodeDecodeError):
        commit = ""
    by_main = [f.parent for f in snapshots if commit and f.parent.name == commit]
    if by_main:
        return "the one refs/main names", by_main[0]
    return "the newest", max(snapshots, key=lambda f: f.stat().st_mtime).parent


def model_config_from_hf(path: str | Path, **overrides) -> ModelConfig:
    """A ModelConfig from a Hugging Face `config.json` (file or its directory) of a supported family:
    Llama (2, 3.x, with rope scaling), Mistral (sliding window), Qwen 2.5 (q/k/v biases), Qwen 3
    (q/k norms), Phi-3 (fused projections, a sliding window, a partial rotary embedding, its 128k
    variants' longrope), Gemma (GeGLU, embeddings times sqrt(D), norms weighting by 1 + w), Gemma 2
    (soft-capping, its attention scale, norms after attention and around the MLP, a window on alternate
    blocks), Gemma 3 (q/k norms, a window on five blocks of six with a rope base of its own; a multimodal
    gemma3's language model, `gemma3.text_config`), and the mixtures of experts Mixtral, Qwen 3 MoE and Qwen 2 MoE
    (Qwen1.5-MoE, Qwen2-57B-A14B: a shared expert beside the routed ones). What the reference model
    cannot run is refused by name."""
    path = Path(path)
    if path.is_file():  # a checkpoint is a directory (the weights and tokenizer sit beside config.json)
        if path.name != "config.json":
            raise ValueError(f"model.checkpoint={str(path)!r} is a file: point --model at a checkpoint directory, "
                             f"with the file in it as config.json (e.g. mkdir m && cp {path} m/config.json)")
        path = path.parent
    cfg_file = path / "config.json"
    if not path.exists():
        raise ValueError(f"model.checkpoint={str(path)!r} does not exist: point it at a Hugging Face checkpoint "
                         f"directory ({FAMILY_NAMES_TEXT})")
    snapshots = [] if cfg_file.is_file() else list((path / "snapshots").glob("*/config.json"))
    if snapshots:  # the Hugging Face cache's folder of a repository
        which, snapshot = _suggested_snapshot(path, snapshots)
        raise ValueError(f"model.checkpoint={str(path)!r} is a Hugging Face cache entry, not a checkpoint: give "
                         f"one of its snapshots, e.g. {which}, --model {snapshot}")
    if not cfg_file.is_file():
        raise ValueError(f"model.checkpoint={str(path)!r} has no config.json: point it at a Hugging Face "
                         f"checkpoint directory ({FAMILY_NAMES_TEXT})")
    hf = json_object(cfg_file, "hidden_size", "or point --model at a preset or another checkpoint directory")
    context_given = "max_seq_len" in overrides  # --set model.max_seq_len: the family's default is not the context

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

    families = ", ".join([*ARCHITECTURES, "gemma3 (its language model)"])
    if "model_type" not in hf:  # as transformers refuses it: the family decides what the keys mean
        raise ValueError(f"{cfg_file}: model_type is missing: a Hugging Face config.json names its family; add "
                         f"it (e.g. \"model_type\": \"llama\"; supported: {families})")
    arch = hf["model_type"]
    if arch == "gemma3":  # the multimodal Gemma 3: its language model, a gemma3_text
        hf = gemma3.text_config(hf, cfg_file)
        arch = "gemma3_text"
    if arch not in ARCHITECTURES:
        missing = unmodelled_features(arch, hf)
        _refuse("model_type", arch, (f"not modelled: {missing}; " if missing else "")
                + f"supported families: {families}")
    family = _FAMILY_DEFAULTS.get(arch, {})
    if arch == "gemma3_text":  # its rope per layer type: the full blocks' read as every family's
        hf, local_theta = gemma3.flattened(hf)
    moe = {}
    if arch in MOE_TYPES:
        if hf.get("shared_expert_intermediate_size") and arch != "qwen2_moe":
            _refuse("shared_expert_intermediate_size", hf["shared_expert_intermediate_size"], "shared experts are not modelled")
        if arch in _EXPERT_WIDTH:  # Qwen's keys of dense blocks among the sparse ones (MixtralConfig has none)
            _refuse_dense_blocks(hf, _num("num_hidden_layers"), _num("intermediate_size"))
        if not hf.get("num_experts_per_tok"):
            _refuse("num_experts_per_tok", hf.get("num_experts_per_tok"),
                    "a mixture of experts' config.json names how many experts a token runs")
        if not (hf.get("num_local_experts") or hf.get("num_experts")):
            _refuse("num_local_experts / num_experts", None, "a mixture of experts' config.json names its experts")
        moe = dict(num_experts=_num("num_local_experts" if hf.get("num_local_experts") else "num_experts"),
                   num_experts_per_tok=_num("num_experts_per_tok"),
                   # transformers' Qwen3MoeConfig defaults: 768-wide experts, weights not renormalised;
                   # Qwen2MoeConfig's: 1408-wide experts and a 5632-wide shared expert, not renormalised
                   moe_intermediate_size=(_num("moe_intermediate_size", _EXPERT_WIDTH[arch]) or _EXPERT_WIDTH[arch])
                   if arch in _EXPERT_WIDTH else 0,
                   norm_topk_prob=_bool("norm_topk_prob", False) if arch in _EXPERT_WIDTH else True)
        if arch == "qwen2_moe":
            moe["shared_expert_intermediate_size"] = _num("shared_expert_intermediate_size", 5632) or 5632
    if hf.get("quantization_config"):
        quant = hf["quantization_config"]
        _refuse("quantization_config", quant.get("quant_method", "?") if isinstance(quant, dict) else quant,
                "cent runs unquantized weights; use the checkpoint's bf16 / fp16 / fp32 weights")
    act_key, act = activation(hf, arch)
    if act not in ({"gemma": GELU_TANH_NAMES, "gemma2": GELU_TANH_NAMES[:1],
                    "gemma3_text": GELU_TANH_NAMES[:1]}.get(arch, ("silu",))):
        _refuse(act_key, act, "the MLP is GeGLU (gelu_pytorch_tanh)" if arch in GEMMA_TYPES else "the MLP is SwiGLU (silu)")
    if _bool("mlp_bias", False):
        _refuse("mlp_bias", True, "MLP biases are not modelled")
    if arch not in ("qwen2", "qwen2_moe") and _bool("attention_bias", False):  # their classes never read it
        _refuse("attention_bias", True, "an o_proj bias is not modelled (Qwen 2.5's q/k/v biases are)")
    rope = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    # transformers 5 writes it in both places and reads rope_parameters' (older versions: the top level's)
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    partial = 1.0 if partial is None else partial
    if partial not in (1, 1.0) and arch != "phi3":  # transformers rotates only this share of each head's dims
        _refuse("partial_rotary_factor", partial, "the rotary embedding turns every dimension of a head (1.0) "
                "but in a phi3 model")
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        raise ValueError(f"{cfg_file}: partial_rotary_factor={partial!r} is invalid: use a number in (0, 1] (a "
                         "JSON number, without quotes)")
    # transformers < 5 writes `rope_theta` and `rope_scaling`; 5.x writes both inside
    # `rope_parameters` ({"rope_type": "default" | "llama3" | ..., "rope_theta": ..., ...}).
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise ValueError(f"{cfg_file}: {key}={hf[key]!r} is invalid: use a JSON object "
                             "({\"rope_type\": ..., \"factor\": ...}) or null")
    rope = dict(hf.get("rope_scaling") or {})
    rope.update(hf.get("rope_parameters") or {})
    for key, value in rope.items():  # numbers as JSON numbers: "8" would repeat a string, not scale a context
        if key in ROPE_KEYS and value is not None:
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
    if arch == "phi3" and rope_type in ("su", "yarn"):  # Phi3Config's older names of longrope
        rope_type = "longrope"
    # longrope: Phi-3's; Phi3Config refuses every other scaling (`PHI3_ROPE_TYPES`)
    kinds = PHI3_ROPE_TYPES if arch == "phi3" else [kind for kind in ROPE_TYPES if kind != "longrope"]
    if rope_type not in kinds:
        where = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"  # the key the file uses
        _refuse(f"{where}.{'rope_type' if 'rope_type' in rope else 'type'}", rope_type,
                f"supported: {', '.join(kinds)}"
                + ("; longrope in a phi3 model" if arch != "phi3" else
                   " (transformers' Phi3Config takes no other scaling)"))
    scaling = {}
    if rope_type != "default":
        scaling = {ours: rope[theirs] for theirs, ours in ROPE_KEYS.items() if rope.get(theirs) is not None}
        scaling["rope_type"] = rope_type
        if rope_type in ("dynamic", "linear", "yarn") and (arch, rope_type) != ("gemma3_text", "linear"):
            # they scale the original context factor times: the context is that product, as vLLM derives it
            # (yarn's original is its own key, the others' the checkpoint's max_position_embeddings; llama3's
            # context is max_position_embeddings already, and so is Gemma 3's: 131,072 with linear 8)
            original = rope.get("original_max_position_embeddings") if rope_type == "yarn" else None
            scaling["rope_original_max_position"] = original or hf.get("max_position_embeddings",
                                                                         family.get("max_position_embeddings"))
            if scaling["rope_original_max_position"] is None:  # "max_position_embeddings": null, nothing to scale
                where = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"
                raise ValueError(f"{cfg_file}: max_position_embeddings=null is invalid: {where}'s {rope_type} scaling "
                                 "multiplies the model's original context; set \"max_position_embeddings\": N (the "
                                 "context the model was trained for) in config.json"
                                 + (f" or {where}.original_max_position_embeddings" if rope_type == "yarn" else ""))
            overrides.setdefault("max_seq_len", int(scaling["rope_original_max_position"] * rope.get("factor", 1.0)))
        if rope_type == "longrope":  # Phi-3 128k: max_position_embeddings is the context already; transformers
            # reads the original from the config's top level (Phi3Config) and divides the two for the factor
            original = _num("original_max_position_embeddings", rope.get("original_max_position_embeddings")
                            or (4096 if arch == "phi3" else None))  # Phi3Config's default
            if original:  # transformers 5 takes rope_parameters' factor when it has one, else the ratio
                scaling.update(rope_original_max_position=original, rope_factor=rope.get("factor") or _num(
                    "max_position_embeddings", family.get("max_position_embeddings", 4096)) / original)
            for key in ("short_factor", "long_factor"):  # lists of numbers: checked as model.rope_* fields
                if rope.get(key) is not None:
                    scaling[f"rope_{key}"] = rope[key]
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

    if "max_position_embeddings" in hf and hf["max_position_embeddings"] is None and not context_given:
        # null is no context (transformers keeps None); missing is the family's default (`_warn_default_context`)
        raise ValueError(f"{cfg_file}: max_position_embeddings=null is invalid: the model's context is a positive "
                         "integer; set \"max_position_embeddings\": N (the context the model was trained for) in "
                         "config.json, or give --set model.max_seq_len=N")
    torch_dtype = hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"
    fields = dict(
        name=checkpoint_name(path),
        model_type=arch,
        hidden_size=hidden,
        intermediate_size=_num("intermediate_size"),
        num_layers=_num("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_num("num_key_value_heads", family.get("num_key_value_heads")) or heads,  # null: heads
        head_dim=_num("head_dim", None) or family.get("head_dim") or hidden // heads,
        vocab_size=vocab,
        max_seq_len=_num("max_position_embeddings", family.get("max_position_embeddings", 4096)),
        rope_theta=float(_num("rope_theta", theta, float) or 10000.0),
        rms_norm_eps=float(_num("rms_norm_eps", family.get("rms_norm_eps", 1e-6), float) or 1e-6),
        tie_word_embeddings=_bool("tie_word_embeddings", family.get("tie_word_embeddings", False)),
        partial_rotary_factor=float(partial),
        attention_bias=arch == "qwen2" or (arch == "qwen2_moe" and _bool("qkv_bias", True)),  # Qwen2MoeConfig's key
        qk_norm=arch in ("qwen3", "qwen3_moe"),
        **(gemma_fields() if arch in GEMMA_TYPES else {}),
        # Gemma2Config's defaults: the scale 256 (an int), soft-caps 50 and 30 (null: none)
        **(dict(sandwich_norms=True, query_pre_attn_scalar=_num("query_pre_attn_scalar", 256) or 256,
                attn_logit_softcapping=float(_num("attn_logit_softcapping", 50.0, float) or 0.0),
                final_logit_softcapping=float(_num("final_logit_softcapping", 30.0, float) or 0.0))
           if arch == "gemma2" else {}),
        sliding_window=(_num("sliding_window", family.get("sliding_window", 0), positive=False) or 0)
        if arch in ("mistral", "mixtral", "phi3") else 0,  # null: no window
        bos_token_id=_special_ids(cfg_file, "bos_token_id", _ids("bos_token_id"),
                                  _ids("bos_token_id", gen, gen_file), eos)[0],
        eos_token_id=eos[0],
        extra_eos_token_ids=tuple(dict.fromkeys(i for i in more if i != eos[0])),
        weight_dtype="float32" if torch_dtype == "float32" else "bfloat16",
        checkpoint=str(cfg_file.parent),
        **scaling,
        **moe,
    )
    if not context_given and "max_position_embeddings" not in hf:
        _warn_default_context(cfg_file, arch, family.get("max_position_embeddings", 4096))
    if ignored := announced_features(hf, arch):  # a supported family's class does not read them: nor does cent
        logging.getLogger("cent").warning(
            "model.checkpoint: %s %s not read: transformers' %s model has no such feature and cent models it as "
            "transformers runs it; if the checkpoint needs it, its model_type is not %s", ", ".join(ignored),
            "are" if len(ignored) > 1 else "is", arch, arch)
    if arch in ("llama", "mistral", "mixtral"):  # their layer_types, within the context served
        context = overrides.get("max_seq_len", fields["max_seq_len"])
        fields.update(_layer_types_window(hf, arch, fields["num_layers"], context, fields["sliding_window"]))
    if arch in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe"):  # within the context served (a yarn rope's,
        # --set model.max_seq_len's)
        fields.update(_qwen_window(hf, arch, fields["num_layers"], overrides.get("max_seq_len", fields["max_seq_len"])))
    if arch == "gemma2":  # its window on the blocks Gemma2Config's layer_types name, within the context served
        fields.update(_gemma2_window(hf, fields["num_layers"], overrides.get("max_seq_len", fields["max_seq_len"])))
    if arch == "gemma3_text":  # its window and rope on the blocks Gemma3TextConfig's layer_types name
        if hf.get("layer_types") is not None:
            _check_layer_types(hf["layer_types"], fields["num_layers"])
        fields.update(gemma3.fields(hf, fields["num_layers"], local_theta, _num))
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except ValueError as exc:  # a value the model cannot take: say which file it came from, and its keys there
        keys = [key for name, key in _HF_KEYS.items() if f"model.{name}=" in str(exc)]
        where = f" (config.json's {' and '.join(keys)})" if keys else ""
        if "model.head_dim=" in str(exc) and "head_dim" not in overrides and not (
                _num("head_dim", None) or family.get("head_dim")):  # derived: the file has no such key
            where += f" (config.json has no head_dim: hidden_size {hidden} // num_attention_heads {heads})"
        raise ValueError(f"{cfg_file}: {exc}{where}") from None


def _warn_default_context(cfg_file: Path, arch: str, default: int) -> None:
    """Warn, once a file, that a config.json without max_position_embeddings (one written by hand) is read
    with its family's transformers default as the context (`_FAMILY_DEFAULTS`: LlamaConfig's 2,048): a
    context the model may not have, which sets what fits and what is refused."""
    if str(cfg_file) in _WARNED_CONTEXT:
        return
    _WARNED_CONTEXT.add(str(cfg_file))
    logging.getLogger("cent").warning(
        "%s: max_position_embeddings is missing: the model's context is transformers' %s default, %s tokens; add "
        "\"max_position_embeddings\": N (the model's context) to config.json, or give --set model.max_seq_len=N",
        cfg_file, arch, f"{default:,}")


_HF_KEYS = {"num_kv_heads": "num_key_value_heads", "num_heads": "num_attention_heads", "num_layers": "num_hidden_layers"}
"""The config.json keys whose `ModelConfig` fields have other names, for the message of a value the model refuses."""


_FAMILY_DEFAULTS = {
    "llama": dict(max_position_embeddings=2048),
    "mistral": dict(num_key_value_heads=8, sliding_window=4096, max_position_embeddings=4096 * 32),
    "mixtral": dict(num_key_value_heads=8, rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=4096 * 32),
    "qwen2": dict(num_key_value_heads=32, max_position_embeddings=32768),
    "qwen3": dict(num_key_value_heads=32, max_position_embeddings=32768, head_dim=128),
    "qwen3_moe": dict(num_key_value_heads=4, max_position_embeddings=32768),
    "qwen2_moe": dict(num_key_value_heads=16, max_position_embeddings=32768),
    "phi3": dict(max_position_embeddings=4096, rms_norm_eps=1e-5),  # Phi3Config's; no window unless given (None)
    "gemma": dict(num_key_value_heads=16, max_position_embeddings=8192, head_dim=256, tie_word_embeddings=True),
    "gemma2": dict(num_key_value_heads=4, max_position_embeddings=8192, head_dim=256, tie_word_embeddings=True),
    "gemma3_text": dict(num_key_value_heads=4, max_position_embeddings=131072, head_dim=256, tie_word_embeddings=True),
}
"""What a family's transformers config class (LlamaConfig, MistralConfig, ...) takes for a key its
config.json leaves out, where that is not the general default (KV heads: the query heads; rope_theta
1e4; rms_norm_eps 1e-6; no window); a key given as null reads as that general default."""


def _gemma2_window(hf: dict, num_layers: int, context: int) -> dict:
    """The window fields of a Gemma 2 config.json (`gemma2_windowed_blocks`: Gemma2Config's blocks, by
    default every other one from block 0; a window that hides no key within the context read as none)."""
    if isinstance(types := hf.get("layer_types"), list):
        _check_layer_types(types, num_layers)
    blocks = gemma2_windowed_blocks(hf, num_layers, context)
    if not blocks:
        return dict(sliding_window=0, layer_types=())
    return dict(sliding_window=int(hf.get("sliding_window", 4096)), layer_types=_layer_types(blocks, num_layers))


_EXPERT_WIDTH = {"qwen3_moe": 768, "qwen2_moe": 1408}
"""The expert width (moe_intermediate_size) a family's config class takes when its config.json leaves
it out; the families without the key (Mixtral) size their experts by intermediate_size."""


def _refuse_dense_blocks(hf: dict, num_layers: int, width: int) -> None:
    """Refuse, in one line, a Qwen MoE config.json whose decoder_sparse_step or mlp_only_layers give some
    blocks a dense MLP (`dense_mlp_blocks`, transformers' rule): cent runs every block of a mixture of
    experts alike (`ModelConfig.is_moe` is the model's, read by its timing, sharding, weights and device
    workers; docs/hardware_model.md section 10). Keys that leave every block sparse (a step of 1, blocks
    listed past num_hidden_layers) are accepted, as transformers builds that model."""
    dense = dense_mlp_blocks(hf, num_layers)
    if not dense:
        return
    step, listed = hf.get("decoder_sparse_step") or 1, hf.get("mlp_only_layers") or []
    keys = " and ".join(([f"decoder_sparse_step={step!r}"] if step != 1 else [])
                        + ([f"mlp_only_layers={listed!r}"] if listed else []))
    shown = ", ".join(map(str, dense[:6])) + (", ..." if len(dense) > 6 else "")
    raise ValueError(f"model.checkpoint: {keys} {'are' if ' and ' in keys else 'is'} not supported: {len(dense)} of its {num_layers} blocks ({shown}) "
                     f"would run a dense MLP of width intermediate_size={width} among the mixture-of-experts blocks "
                     "(transformers' Qwen MoE decoder layer), and cent models every block of a mixture of experts "
                     "alike: use decoder_sparse_step 1 and mlp_only_layers [] (as Qwen's released MoE checkpoints "
                     "have)")


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
