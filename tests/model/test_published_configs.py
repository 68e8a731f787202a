"""Popular checkpoints' config.json shapes (written by hand from each repository's config.json on the
Hugging Face hub, no weights) read to their published sizes: the parameters the hub's safetensors index
counts (the model cards' "8B", "57B-A14B", ...) and the KV cache bytes a token, layers x kv_heads x
head_dim x 2 (K and V) x 2 bytes. What each one exercises is named beside it."""
from __future__ import annotations

import json

import pytest

from cent_serve.config.hf_config import model_config_from_hf

_LLAMA31 = dict(model_type="llama", vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192))
_QWEN3 = dict(vocab_size=151936, max_position_embeddings=40960, rope_theta=1e6, head_dim=128, bos_token_id=151643,
              eos_token_id=151645, use_sliding_window=False)
_QWEN2_MOE = dict(model_type="qwen2_moe", vocab_size=151936, rope_theta=1e6, bos_token_id=151643, eos_token_id=151643,
                  norm_topk_prob=False, decoder_sparse_step=1, use_sliding_window=False)

CASES = {  # name: (config.json, parameters, active parameters (a MoE's), KV bytes a token)
    # Llama 3.1 405B: 126 blocks
    "Llama-3.1-405B": (dict(_LLAMA31, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                            num_attention_heads=128, num_key_value_heads=8), 405_853_388_800, None, 126 * 8 * 128 * 4),
    # Llama 3.2 3B: tied embeddings (one vocab x D table), head_dim given
    "Llama-3.2-3B": (dict(_LLAMA31, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                          num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                          rope_scaling=dict(_LLAMA31["rope_scaling"], factor=32.0)), 3_212_749_824, None, 28 * 8 * 128 * 4),
    # Mistral Nemo: head_dim 128, not hidden_size / heads = 160
    "Mistral-Nemo-12B": (dict(model_type="mistral", hidden_size=5120, intermediate_size=14336, num_hidden_layers=40,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=131072,
                              max_position_embeddings=1024000, rope_theta=1e6, sliding_window=None, bos_token_id=1,
                              eos_token_id=2), 12_247_782_400, None, 40 * 8 * 128 * 4),
    # Mixtral 8x22B: 8 experts of intermediate_size, top 2 (39B active)
    "Mixtral-8x22B": (dict(model_type="mixtral", hidden_size=6144, intermediate_size=16384, num_hidden_layers=56,
                           num_attention_heads=48, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                           vocab_size=32000, max_position_embeddings=65536, sliding_window=None, bos_token_id=1,
                           eos_token_id=2), 140_620_634_112, 39_152_031_744, 56 * 8 * 128 * 4),
    # Qwen 2.5 72B: q/k/v biases
    "Qwen2.5-72B": (dict(model_type="qwen2", hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, vocab_size=152064, max_position_embeddings=32768,
                         rope_theta=1e6, use_sliding_window=False, sliding_window=131072, bos_token_id=151643,
                         eos_token_id=151645), 72_706_203_648, None, 80 * 8 * 128 * 4),
    # Qwen 3 32B: q/k norms
    "Qwen3-32B": (dict(_QWEN3, model_type="qwen3", hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                       num_attention_heads=64, num_key_value_heads=8), 32_762_123_264, None, 64 * 8 * 128 * 4),
    # Qwen 3 235B-A22B: 128 experts of 1536, top 8, no shared expert
    "Qwen3-235B-A22B": (dict(_QWEN3, model_type="qwen3_moe", hidden_size=4096, intermediate_size=12288,
                             moe_intermediate_size=1536, num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4,
                             num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
                             mlp_only_layers=[]), 235_093_634_560, 22_190_763_520, 94 * 4 * 128 * 4),
    # Qwen 2 57B-A14B: 64 experts of 2560, top 8, and a 20480-wide shared expert with its gate
    "Qwen2-57B-A14B": (dict(_QWEN2_MOE, hidden_size=3584, intermediate_size=18944, moe_intermediate_size=2560,
                            shared_expert_intermediate_size=20480, num_hidden_layers=28, num_attention_heads=28,
                            num_key_value_heads=4, num_experts=64, num_experts_per_tok=8, max_position_embeddings=131072),
                       57_408_658_944, 14_249_270_784, 28 * 4 * 128 * 4),
    # Phi-4: a phi3 model (fused projections in its weights, the same count), 10 KV heads
    "phi-4": (dict(model_type="phi3", hidden_size=5120, intermediate_size=17920, num_hidden_layers=40, num_attention_heads=40,
                   num_key_value_heads=10, vocab_size=100352, max_position_embeddings=16384, rope_theta=250000.0,
                   sliding_window=None, bos_token_id=100257, eos_token_id=100265, pad_token_id=100349),
              14_659_507_200, None, 40 * 10 * 128 * 4),
    # Gemma 2 9B: head_dim 256, tied, four norms a block, a window on every other block
    "gemma-2-9b": (dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                        sliding_window=4096, bos_token_id=2, eos_token_id=1), 9_241_705_984, None, 42 * 8 * 256 * 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_published_config_reads_to_its_published_size(tmp_path, name):
    hf, params, active, kv_bytes = CASES[name]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    m = model_config_from_hf(tmp_path)
    assert m.param_count() == params
    assert m.param_count(active=True) == (active or params)
    assert m.kv_bytes_per_token() == kv_bytes


def test_gemma_2_9b_windows_its_even_blocks_within_its_context(tmp_path):
    """Gemma 2 9B: the 4096-token window on blocks 0, 2, ..., 40 (Gemma2Config's default layer_types),
    full attention on the odd ones, at its 8192-token context."""
    (tmp_path / "config.json").write_text(json.dumps(CASES["gemma-2-9b"][0]))
    m = model_config_from_hf(tmp_path)
    assert m.block_windows == tuple(4096 if b % 2 == 0 else 0 for b in range(42))
