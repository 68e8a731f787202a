"""Hugging Face safetensors checkpoints: the tensor names of a model's weights, reading them (checked
against config.json), and saving `LlamaWeights` as a checkpoint; `load_weights`, a model's weights from its
checkpoint, else seeded random ones.

A checkpoint is read one tensor at a time through safetensors' memory map, so loading never holds the
raw file and the parsed model at once. A checkpoint's config.json is `cent_serve.config.hf_config`'s (read) and
`hf_config_writer`'s (written).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.config.hf_files import json_object
from cent_serve.model.hf_config_writer import hf_config_dict
from cent_serve.model.weights import F32, LayerWeights, LlamaWeights, bf16, random_weights

log = logging.getLogger(__name__)
_WARNED_UNUSED: set[str] = set()
"""Checkpoints whose unused tensors were warned about (once each, per process: the preflight reads
the headers, then a local executor loads the same files)."""


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
_SHARED_NAMES = {"shared_gate": "mlp.shared_expert.gate_proj.weight", "shared_up": "mlp.shared_expert.up_proj.weight",
                 "shared_down": "mlp.shared_expert.down_proj.weight", "shared_expert_gate": "mlp.shared_expert_gate.weight"}
"""Qwen 2 MoE's shared expert and its gate (model.shared_expert_intermediate_size)."""
_SANDWICH_NAMES = {"post_norm": "pre_feedforward_layernorm.weight", "attn_out_norm": "post_attention_layernorm.weight",
                   "mlp_out_norm": "post_feedforward_layernorm.weight"}
"""Gemma 2's block norms (model.sandwich_norms, Gemma2DecoderLayer): its post_attention_layernorm norms the
attention's output, and the MLP's input norm is pre_feedforward_layernorm."""


_FUSED_LAYER_NAMES = {"self_attn.qkv_proj.weight": ("wq", "wk", "wv"), "mlp.gate_up_proj.weight": ("w_gate", "w_up")}
"""Phi-3's fused projections -> the LayerWeights fields their rows hold, in order: transformers'
Phi3Attention slices q (H hd rows), k then v (Hkv hd each); Phi3MLP chunks gate then up (F each)."""


def split_fused(cfg: ModelConfig, suffix: str, arr: np.ndarray, name: str = "") -> dict[str, np.ndarray]:
    """The parts (LayerWeights field -> (out, D) rows) of a block's Phi-3 fused tensor `suffix`
    (`self_attn.qkv_proj.weight`, `mlp.gate_up_proj.weight`): ValueError naming the tensor (`name`)
    when its shape is not theirs stacked."""
    keys = _FUSED_LAYER_NAMES[suffix]
    shapes = _dense_layer_shapes(cfg)
    rows = [shapes[key][0] for key in keys]
    want = (sum(rows), cfg.hidden_size)
    if arr.shape != want:
        raise ValueError(f"checkpoint tensor {name or suffix} has shape {arr.shape}, expected {want} "
                         f"({' + '.join(map(str, rows))} rows) from config.json: the checkpoint and its config disagree")
    ends = np.cumsum(rows)
    return {key: arr[end - n:end] for key, n, end in zip(keys, rows, ends)}


def _dense_layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of a dense block's tensors (LayerWeights field -> shape), as config.json sizes them."""
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    return {"input_norm": (d,), "post_norm": (d,), "wq": (cfg.num_heads * hd, d), "wk": (cfg.num_kv_heads * hd, d),
            "wv": (cfg.num_kv_heads * hd, d), "wo": (d, cfg.num_heads * hd), "w_gate": (f, d), "w_up": (f, d),
            "w_down": (d, f), "attn_out_norm": (d,), "mlp_out_norm": (d,)}


_MOE_NAMES = {"mixtral": ("block_sparse_moe", dict(experts_gate="w1", experts_up="w3", experts_down="w2")),
              "qwen3_moe": ("mlp", dict(experts_gate="gate_proj", experts_up="up_proj", experts_down="down_proj")),
              "qwen2_moe": ("mlp", dict(experts_gate="gate_proj", experts_up="up_proj", experts_down="down_proj"))}
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
    if cfg.model_type == "phi3":  # its fused tensors (`_FUSED_LAYER_NAMES`) hold these
        for key in ("wq", "wk", "wv", "w_gate", "w_up"):
            del names[key]
    if cfg.is_moe:
        for key in ("w_gate", "w_up", "w_down"):
            del names[key]
        names["router"] = f"{_MOE_NAMES[cfg.model_type][0]}.gate.weight"
    if cfg.shared_expert_intermediate_size:
        names.update(_SHARED_NAMES)
    if cfg.sandwich_norms:
        names.update(_SANDWICH_NAMES)
    return names


def _fused_names(cfg: ModelConfig) -> tuple[str, ...]:
    """The fused tensor name suffixes of a block (Phi-3's), none for the other families."""
    return tuple(_FUSED_LAYER_NAMES) if cfg.model_type == "phi3" else ()


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
        names += [f"model.layers.{i}.{n}" for n in _fused_names(cfg)]
        names += [f"model.layers.{i}.{n}" for _, _, n in _expert_names(cfg)]
    return names


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


def load_weights(cfg: ModelConfig) -> LlamaWeights:
    """The model's weights: the checkpoint when one is set, else seeded random ones."""
    if not cfg.checkpoint:
        return random_weights(cfg)
    return load_hf_weights(cfg)


def _checked_tensors(cfg: ModelConfig, shapes_only: bool) -> tuple[dict, list[dict], list[dict], dict]:
    """The checkpoint's tensors by place (top level, each block's, each block's experts, the rest),
    after checking that every expected one is there with its shape."""
    assert cfg.checkpoint, "a checkpoint's tensors need cfg.checkpoint"
    d, hd = cfg.hidden_size, cfg.head_dim
    shapes = _dense_layer_shapes(cfg)
    shapes.update(bq=(cfg.q_size,), bk=(cfg.kv_size,), bv=(cfg.kv_size,), q_norm=(hd,), k_norm=(hd,))
    fe = cfg.expert_size
    shapes.update(router=(cfg.num_experts, d), experts_gate=(fe, d), experts_up=(fe, d), experts_down=(d, fe))
    fs = cfg.shared_expert_intermediate_size
    shapes.update(shared_gate=(fs, d), shared_up=(fs, d), shared_down=(d, fs), shared_expert_gate=(1, d))
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
        name = text_model_name(name)
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
            if rest in _fused_names(cfg) and int(idx) < cfg.num_layers:
                layer_parts[int(idx)].update(split_fused(cfg, rest, arr, name))
                continue
            key = by_suffix.get(rest)
            if key is None and rest in known:  # a bias or norm the family's config does not announce
                raise ValueError(f"checkpoint tensor {name} is not part of a model_type={cfg.model_type!r} config: the "
                                 "checkpoint and its config.json disagree (biases: qwen2; q/k norms: qwen3; phi3 holds "
                                 "q/k/v and gate/up fused)")
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


_TEXT_MODEL_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                        ("language_model.lm_head.", "lm_head."))
"""A multimodal checkpoint's language model (Gemma3ForConditionalGeneration: transformers 5.25 saves it as
language_model.model.*, the name it loads as model.language_model.*, conversion_mapping.py's llava rules) ->
the text model's names; its vision tower and projector keep theirs, unused (`_warn_unused`)."""


def text_model_name(name: str) -> str:
    """A checkpoint tensor's name as a text model's: a multimodal one's language model tensors renamed
    (`_TEXT_MODEL_PREFIXES`), every other name as it is."""
    for prefix, ours in _TEXT_MODEL_PREFIXES:
        if name.startswith(prefix):
            return ours + name[len(prefix):]
    return name


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
    vision = all(n.removeprefix("model.").startswith(_VISION_PREFIXES) for n in unused)
    fix = ("its vision tower is not modelled: the language model runs on text alone" if vision else
           "if the model runs them, its config.json disagrees with its weights: fix config.json")
    log.warning("model.checkpoint=%r holds %d tensors its config.json does not use (model_type=%r, "
                "num_hidden_layers=%d%s), ignored: %s%s; %s", cfg.checkpoint, len(unused), cfg.model_type,
                cfg.num_layers, f", num_experts={cfg.num_experts}" if cfg.is_moe else "", ", ".join(shown), more, fix)


_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.")
"""A multimodal checkpoint's image tensors (Gemma3ForConditionalGeneration's SigLIP tower and projector)."""


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
    if rest in _FUSED_LAYER_NAMES:
        return all(key in layer_parts[int(idx)] for key in _FUSED_LAYER_NAMES[rest])
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
        for suffix in _fused_names(cfg):  # Phi-3's, fused as transformers loads them
            tensors[f"model.layers.{i}.{suffix}"] = np.concatenate([getattr(layer, k)
                                                                    for k in _FUSED_LAYER_NAMES[suffix]])
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
