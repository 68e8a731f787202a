"""The rotary position embedding in float32: its frequencies and scalings as transformers defines them,
the tables of cos / sin a process keeps, and the rotation of a block's queries and keys (`layers.project_qkv`)."""
from __future__ import annotations

import dataclasses
import math
import operator
import threading
from collections import OrderedDict

import numpy as np

from cent_serve.config import ModelConfig
from cent_serve.config.model import rope_numerics_refusal

F32 = np.float32


def _tables(positions: np.ndarray, inv_freq: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin as Hugging Face's rotary embedding builds them: freqs = positions x inv_freq,
    emb = concat(freqs, freqs) (the two halves of a head share frequencies: the rotate-half
    layout), both scaled by the attention factor. Returns two (seq, rotary_dim) float32 arrays."""
    freqs = positions.astype(F32)[:, None] * inv_freq[None, :]  # (seq, rotary_dim/2)
    emb = np.concatenate([freqs, freqs], axis=-1)  # (seq, rotary_dim)
    cos, sin = np.cos(emb).astype(F32), np.sin(emb).astype(F32)
    if scale != 1.0:
        cos, sin = cos * F32(scale), sin * F32(scale)
    return cos, sin


def rope_inv_freq(cfg: ModelConfig, seq_len: int, local: bool = False) -> tuple[np.ndarray, float]:
    """(inverse frequencies (rotary_dim/2,) float32, attention factor) of the model's rotary
    embedding for a forward pass reaching `seq_len` positions (rotary_dim: head_dim, or its share
    `partial_rotary_factor`, whose dimensions every scaling divides, as transformers'). The scalings, as transformers
    defines them (`modeling_rope_utils`): `linear` divides every frequency by the factor;
    `dynamic` (NTK) raises the base once the context passes the original one; `yarn` blends
    interpolated and original frequencies over a ramp of dimensions and scales cos / sin;
    `llama3` divides the low frequencies by the factor, keeps the high ones and blends between;
    `longrope` (Phi-3's) divides each by a short or a long factor of its own (`_longrope`). With `local`, a
    Gemma 3 sliding block's: base `rope_local_theta`, unscaled (transformers' Gemma3RotaryEmbedding builds
    one table a layer type, the sliding_attention one from rope_parameters["sliding_attention"], its
    rope_type default: configuration_gemma3.py `convert_rope_params_to_dict`, modeling_gemma3.py)."""
    if local:
        return _inv_freq(cfg.rotary_dim, cfg.rope_local_theta)[1], 1.0
    why = rope_numerics_refusal(cfg)
    if why:
        raise ValueError(why)
    dim, base, kind, factor = cfg.rotary_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor
    original = cfg.rope_original_max_position or cfg.max_seq_len
    if kind == "dynamic":
        seq_len = max(seq_len, original)
        base = base * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
    powers, inv_freq = _inv_freq(dim, base)  # (dim/2,) each
    if kind in ("default", "dynamic"):
        return inv_freq, 1.0
    if kind == "longrope":
        return _longrope(cfg, seq_len, powers, original)
    if kind == "linear":
        return (inv_freq / F32(factor)).astype(F32), 1.0
    if kind == "llama3":
        low_wavelen = original / cfg.rope_low_freq_factor
        high_wavelen = original / cfg.rope_high_freq_factor
        wavelen = (F32(2 * math.pi) / inv_freq).astype(F32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / F32(factor), inv_freq).astype(F32)
        smooth = ((F32(original) / wavelen - F32(cfg.rope_low_freq_factor))
                  / F32(cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)).astype(F32)
        smoothed = ((F32(1) - smooth) * scaled / F32(factor) + smooth * scaled).astype(F32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(F32), 1.0
    # yarn
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = cfg.rope_attention_factor or (
        mscale(factor, cfg.rope_mscale) / mscale(factor, cfg.rope_mscale_all_dim)
        if cfg.rope_mscale and cfg.rope_mscale_all_dim else mscale(factor))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1).astype(F32)
    keep = (F32(1) - ramp).astype(F32)  # the share of the original (extrapolated) frequency
    interpolated = (F32(1.0) / (F32(factor) * powers)).astype(F32)
    return (interpolated * (F32(1) - keep) + inv_freq * keep).astype(F32), float(attention)


def _inv_freq(dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """(base^(2i/dim), its inverse) (dim/2,) float32 each: the unscaled rotary frequencies."""
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)
    powers = (base ** exponents).astype(F32)  # (dim/2,)
    return powers, (F32(1.0) / powers).astype(F32)


def _longrope(cfg: ModelConfig, seq_len: int, powers: np.ndarray, original: int) -> tuple[np.ndarray, float]:
    """Phi-3's longrope, as transformers computes it (`_compute_longrope_parameters` and Phi3's
    `longrope_frequency_update`): every frequency divided by its short factor while the pass reaches no
    further than the original context, by its long factor once it does (the whole pass: positions
    cached before keep the factors they were turned with); cos / sin scaled by the attention factor,
    sqrt(1 + ln(factor) / ln(original)) for a factor over 1 unless the config gives it."""
    factors = cfg.rope_long_factor if seq_len > original else cfg.rope_short_factor
    inv_freq = (F32(1.0) / (np.asarray(factors, dtype=F32) * powers)).astype(F32)  # (dim/2,)
    factor = cfg.rope_factor
    attention = cfg.rope_attention_factor or (
        1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original)))
    return inv_freq, float(attention)


ROPE_TABLES_KEPT = 16
"""Rotary tables `rope_tables` keeps, the least recently used dropped first: a model needs one or two (Gemma 3's
global and local, a longrope's short and long; a dynamic rope one a pass once past its original context)."""
ROPE_MIN_ROWS = 256
"""Positions a new table covers at least (within model.max_seq_len): decode grows it by doubling, not a row a step."""


class RopeTables:
    """A bounded LRU of rotary tables: `_rope_key` -> (first position, cos, sin), read-only (n, rotary_dim)
    rows of positions first.. first + n - 1. Locked: the API's engine thread and another may share it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tables: OrderedDict[tuple, tuple[int, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, key: tuple) -> tuple[int, np.ndarray, np.ndarray] | None:
        with self._lock:
            entry = self._tables.get(key)
            if entry is not None:
                self._tables.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: tuple[int, np.ndarray, np.ndarray]) -> None:
        with self._lock:
            self._tables[key] = entry
            self._tables.move_to_end(key)
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)


ROPE_TABLES = RopeTables(ROPE_TABLES_KEPT)
"""The process's rotary tables: every block, shard and device worker in it cuts its rows from them."""


_rope_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(ModelConfig) if f.name.startswith("rope_")))
"""cfg -> the tuple of its model.rope_* fields (every one, by name: read at each pass, so one getter)."""


def _rope_key(cfg: ModelConfig, reach: int, local: bool) -> tuple[tuple, bool]:
    """(key, whether the table is the pass's own) of the rotary table of a pass reaching `reach` positions.
    The key holds every input of `rope_inv_freq`: for a Gemma 3 sliding block its dimensions and local base;
    else the dimensions, the original context, every model.rope_* field (type, base, factors, longrope's
    lists; a field added later joins by its name) and of the reach what the scaling reads of it: longrope
    whether it passes the original context (its long factors, or its short), dynamic the context its base is
    raised for (the original one; past it the reach, which makes the table the pass's own)."""
    if local:
        return ("local", cfg.rotary_dim, cfg.rope_local_theta), False
    original = cfg.rope_original_max_position or cfg.max_seq_len
    kind = cfg.rope_type
    reach_read = max(reach, original) if kind == "dynamic" else reach > original if kind == "longrope" else None
    return ("global", cfg.rotary_dim, original, reach_read, _rope_fields(cfg)), kind == "dynamic" and reach > original


def rope_tables(cfg: ModelConfig, start: int, seq: int, local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (seq, rotary_dim) of the model's rotary embedding at positions start .. start + seq - 1 (one
    forward pass: a dynamic scaling sees the pass's reach, as transformers' does); `local`: a Gemma 3 sliding
    block's (`ModelConfig.is_local_rope`). Read-only rows of a table in ROPE_TABLES: positions 0 .. n - 1, built
    anew twice as long (within model.max_seq_len) when a pass reaches past it; a dynamic rope's past its
    original context, the pass's own, its pass's rows. Every element is cos / sin of its position times its
    frequency (times the attention factor) alone, so a row is the same floats whichever table it is cut from.
    Every block of every device built its pass's table before: 8 us a call for the tiny model, 2 us now."""
    reach = start + seq
    key, own = _rope_key(cfg, reach, local)
    entry = ROPE_TABLES.get(key)
    if entry is None or start < entry[0] or reach > entry[0] + len(entry[1]):
        held = 0 if entry is None or own else len(entry[1])
        first, end = (start, reach) if own else (0, max(reach, min(max(2 * held, ROPE_MIN_ROWS), cfg.max_seq_len)))
        cos, sin = _tables(np.arange(first, end), *rope_inv_freq(cfg, reach, local))  # (end - first, rotary_dim)
        cos.setflags(write=False)
        sin.setflags(write=False)
        entry = (first, cos, sin)
        ROPE_TABLES.put(key, entry)
    first, cos, sin = entry
    return cos[start - first:reach - first], sin[start - first:reach - first]


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding: x * cos + rotate_half(x) * sin on the first rotary_dim
    dimensions of each head, the rest passed unchanged (a partial rotary embedding, Phi-4-mini's).

    x: (heads, seq, head_dim); cos, sin: (seq, rotary_dim), rotary_dim <= head_dim.
    """
    dim = cos.shape[-1]
    if dim < x.shape[-1]:
        return np.concatenate([apply_rope(x[..., :dim], cos, sin), x[..., dim:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # (heads, seq, head_dim)
    return x * cos[None] + rotated * sin[None]
