"""Small factory helpers for tests (vLLM's tests/v1/core/utils.py style)."""
from __future__ import annotations

from cent_serve.config import ModelConfig


def tiny_model_config(**overrides) -> ModelConfig:
    """A very small GQA Llama for fast numerics tests (float32 unless overridden)."""
    base = dict(name="test-tiny", hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                num_kv_heads=2, vocab_size=97, max_seq_len=128, rope_theta=10000.0,
                weight_dtype="float32", seed=3)
    base.update(overrides)
    return ModelConfig(**base)
