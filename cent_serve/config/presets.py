"""The named models (`MODEL_PRESETS`, `model_preset`), how a run names one changed from its preset
(`model_label`), and how `--model` resolves a preset name or a checkpoint directory (`resolve_model`)."""
from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from cent_serve.config.hf_config import model_config_from_hf
from cent_serve.config.model import ModelConfig


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

def _preset_key(name: str) -> str:
    """A model name reduced to what tells presets apart: the Hub id's name (after its organisation),
    lower case, without a version suffix (-v0.1), the words of a release (hf, instruct, chat, it, meta) and
    punctuation: `meta-llama/Llama-2-70b-hf`, `Llama2-70B` and `llama2-70b` are all `llama2.70b`. Two
    numbers stay apart (a dot between them), so that `qwen2-57b` is not `qwen2.5-7b` nor `gemma-31b`
    `gemma-3-1b`."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"-v\d+(\.\d+)*", "", name.rstrip("/").rsplit("/", 1)[-1].lower()))
    key = ""
    for word in (w for w in words if w and w not in ("hf", "instruct", "chat", "it", "meta")):
        key += ("." if key[-1:].isdigit() and word[0].isdigit() else "") + word
    return key


def _near_preset(name: str) -> str | None:
    """The preset `name` spells differently (another case, dashes, a Hub id), or None."""
    key = _preset_key(name)
    return next((preset for preset in sorted(MODEL_PRESETS) if key and _preset_key(preset) == key), None)


_RELEASES = {
    # mistral-7b is mistralai/Mistral-7B-v0.1's config.json. v0.2 (mistralai/Mistral-7B-Instruct-v0.2's model
    # card and config.json): rope_theta 1e6 and no sliding window; v0.3 (mistralai/Mistral-7B-v0.3's): v0.2's
    # with the vocabulary extended to 32,768
    "mistral-7b": ("Mistral-7B-v0.1", "v0.1", {"v0.2": dict(rope_theta=1000000.0, sliding_window=0),
                                               "v0.3": dict(vocab_size=32768, rope_theta=1000000.0, sliding_window=0)}),
}
"""A preset published in releases: (the release it is, its version, {another version: the fields in
which that one differs}), so a Hub id of another release is not told it is the preset's shape."""


def _near_text(name: str) -> str:
    """What `resolve_model`'s refusal says of the preset `name` spells differently: the preset, or for
    another release of it (`-v0.3` where the preset is v0.1) the fields that give that release's shape,
    or that it may differ (a release `_RELEASES` does not know); "" for no such preset."""
    near = _near_preset(name)
    if near is None:
        return ""
    published, version, others = _RELEASES.get(near, (None, None, {}))
    release = re.search(r"-(v\d+(?:\.\d+)*)", name.rstrip("/").rsplit("/", 1)[-1].lower())
    release = release and release.group(1)
    if published is None or release in (None, version):
        return f"the preset of its shape is --model {near} (seeded random weights); else "
    if release in others:
        sets = " ".join(f"--set model.{field}={value}" for field, value in others[release].items())
        return (f"the nearest preset is --model {near}, {published}, which {release} differs from: {sets} gives "
                f"{release}'s shape (seeded random weights); else ")
    return (f"the nearest preset is --model {near}, {published}; {release} may differ from it (compare its "
            f"config.json with cent info --model {near}); else ")


def resolve_model(name_or_path: str, **checkpoint_fields: Any) -> ModelConfig:
    """A preset name (`tiny`, `llama2-7b`, ...) or a Hugging Face checkpoint directory (its
    config.json is enough for timing, read with `checkpoint_fields` set: `--set model.max_seq_len`'s
    context), as `--model` takes it."""
    if name_or_path in MODEL_PRESETS:
        return model_preset(name_or_path)
    if name_or_path.strip() and Path(name_or_path).exists():  # Path("") is the current directory
        return model_config_from_hf(name_or_path, **checkpoint_fields)
    near = _near_text(name_or_path)
    raise ValueError(f"--model {name_or_path!r} is neither a preset ({', '.join(sorted(MODEL_PRESETS))}) "
                     f"nor an existing checkpoint directory: {near}nothing is downloaded; save a Hugging Face model's "
                     "config.json in a directory and give that (it alone is enough to time it: cent generate and "
                     "full numerics need the weights beside it)")
