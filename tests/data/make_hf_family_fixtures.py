"""Build the model-family fixtures with real transformers (torch is NOT a project dependency).

For each family cent-serve runs, a small random checkpoint written by transformers' own
`save_pretrained` with the family's special features switched on, and `expected.json` with
transformers' greedy tokens and last-position logits (method as in make_hf_fixture.py: bf16
weights loaded back as float32; `generate` with eos_token_id None, so it never stops early):

- llama3: Llama 3.x: `llama3` rope scaling (original context 32, so the prompts pass it), GQA,
  tied embeddings (as Llama 3.2 1B/3B);
- llama_linear, llama_dynamic, llama_yarn: the other rope types transformers' Llama accepts;
- mistral: a sliding window of 8, shorter than every prompt;
- qwen2: Qwen 2.5 (q/k/v biases), tied embeddings;
- qwen3: Qwen 3 (per-head q/k RMSNorm, head_dim 32 with hidden 64 and 4 heads);
- qwen2_window: Qwen 2 with use_sliding_window: a window of 8 (shorter than every prompt) on blocks 1
  and 2 of 3 (max_window_layers 1: transformers derives layer_types from it), full attention on block 0;
- mixtral: Mixtral (top-2 of 4 full-size experts, softmax router, top-k renormalized);
- qwen3_moe: Qwen 3 MoE (top-3 of 6 narrow experts, norm_topk_prob off: the other branch of the
  router; q/k norms);
- qwen2_moe: Qwen 2 MoE (Qwen1.5-MoE: top-3 of 6 narrow experts, norm_topk_prob off, q/k/v biases,
  and a shared expert wider than the routed ones behind its sigmoid gate);
- phi3: Phi-3 / Phi-4-mini (fused qkv_proj and gate_up_proj, a sliding window of 8, a partial rotary
  embedding turning 12 of 16 dimensions a head, tied embeddings);
- phi3_longrope: Phi-3-mini-128k / Phi-3.5-mini / Phi-4-mini's `longrope` scaling (original context 16
  of 64), a rotary embedding on 12 of 16 dimensions a head; its own prompts (`FAMILY_PROMPTS`): the
  21-token one runs on the long factors from its prefill, a 6-token one with 10 new tokens on the short
  factors throughout. None crosses 16 while it generates: there transformers' Phi3 `generate` drops its
  cache and prefills the whole sequence again on the long factors, which cent-serve does not (its keys
  keep the factors they were turned with, as transformers' forward with a kept cache).
- gemma: Gemma (GeGLU MLP, embeddings times sqrt(64) = 8, norms weighting by 1 + w, head_dim 32 with
  hidden 64 and 4 heads, tied embeddings);
- gemma2: Gemma 2 (Gemma's, and soft-caps small enough to bite: attention 2.0, logits 3.0; the attention
  scale 24^-0.5, not head_dim 32's; norms after attention and around the MLP; its window on alternate
  blocks of 256, the whole context, so it runs as full attention);
- gemma2_window: Gemma 2's of 3 blocks with its window of 8, shorter than every prompt, on the blocks
  Gemma2Config's layer_types windows by default (every other one from block 0: blocks 0 and 2);
- gemma3_text: Gemma 3's text model (Gemma 2's block without soft-capping, q/k norms weighting by 1 + w;
  6 blocks, so its default layer_types window blocks 0-4 and not 5, by 8, shorter than every prompt; the
  windowed blocks' rotary base 100, unscaled, the full block's 10,000 with a linear scaling of 4, written
  in transformers 5's rope_parameters per layer type);
- gemma3: the multimodal Gemma3ForConditionalGeneration around gemma3_text's model, with a tiny SigLIP
  vision tower (one 16-wide layer, 28-pixel images of 14-pixel patches) whose tensors a text prompt never
  reads; its image token (262,144) is outside the vocabulary, as Gemma 3's.

Every model: hidden 64, 2 layers (qwen2_window and gemma2_window 3, gemma3_text 6), 4 query / 2 KV heads,
vocabulary 512, random norms and biases.
Written to tests/data/hf_families/<name>/ (about 0.3 MB each, with the BPE tokenizer of
make_hf_fixture.py). Regenerate (CI never does; the suite reads the committed files):

    python3 -m venv /tmp/hf-venv && /tmp/hf-venv/bin/pip install torch transformers pytest
    /tmp/hf-venv/bin/pip install -e . && /tmp/hf-venv/bin/python tests/data/make_hf_family_fixtures.py
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPTS = [[1, 5, 9, 200, 7, 431, 88, 300, 12, 511, 64, 3, 250, 17, 99, 150, 42, 480, 8, 61, 222],
           [1, 77, 301, 45, 128, 9, 9, 260, 33, 401, 12, 5, 88, 17]]
NUM_NEW_TOKENS = 24
COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
FAMILIES = {  # name: (config class, causal-LM class, config fields beyond COMMON)
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=True, rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                       low_freq_factor=1.0, high_freq_factor=4.0,
                                                       original_max_position_embeddings=32))),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0))),
    "llama_dynamic": ("LlamaConfig", "LlamaForCausalLM", dict(
        max_position_embeddings=16, rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=4.0))),
    "llama_yarn": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16))),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8, rope_theta=10000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, rope_theta=1000000.0)),
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_hidden_layers=3, use_sliding_window=True, sliding_window=8, max_window_layers=1,
        rope_theta=1000000.0)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2,
                                                            sliding_window=None, rope_theta=1000000.0)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        head_dim=32, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=48, norm_topk_prob=False,
        rope_theta=1000000.0)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        num_experts=6, num_experts_per_tok=3, moe_intermediate_size=48, shared_expert_intermediate_size=80,
        norm_topk_prob=False, rope_theta=1000000.0)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=8, partial_rotary_factor=0.75, tie_word_embeddings=True,
                                                  rope_theta=10000.0, pad_token_id=0)),
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM", dict(
        max_position_embeddings=64, original_max_position_embeddings=16, partial_rotary_factor=0.75,
        sliding_window=None, pad_token_id=0,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                             short_factor=[1.0, 1.2, 1.5, 1.9, 2.4, 3.0],
                             long_factor=[1.0, 1.8, 3.5, 6.0, 10.0, 16.0]))),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=32, hidden_act="gelu_pytorch_tanh", rope_theta=10000.0,
                                                    tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=32, hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0, tie_word_embeddings=True,
        query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=3.0, sliding_window=256)),
    "gemma2_window": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        num_hidden_layers=3, head_dim=32, hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0,
        tie_word_embeddings=True, query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        sliding_window=8)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=6, head_dim=32, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        query_pre_attn_scalar=24, sliding_window=8,
        rope_parameters=dict(sliding_attention=dict(rope_type="default", rope_theta=100.0),
                             full_attention=dict(rope_type="linear", factor=4.0, rope_theta=10000.0)))),
    "gemma3": ("Gemma3Config", "Gemma3ForConditionalGeneration", dict(
        text_config="gemma3_text", vision_config=dict(model_type="siglip_vision_model", hidden_size=16,
                                                      intermediate_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4, eos_token_id=2, bos_token_id=1, pad_token_id=0)),
}
OFFSET_NORMS = ("gemma", "gemma2", "gemma2_window", "gemma3_text", "gemma3")
"""Families whose norms weight by 1 + w: their random norm weights are drawn around 0, not 1."""


FAMILY_PROMPTS = {"phi3_longrope": ([PROMPTS[0], [1, 77, 301, 45, 128, 9]], 10)}
"""A family's own (prompts, new tokens) where the shared ones would not test what it is for."""


def _base():
    spec = importlib.util.spec_from_file_location("make_hf_fixture", HERE / "make_hf_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(name: str, seed: int = 0):
    import torch
    import transformers

    config_cls, model_cls, extra = FAMILIES[name]
    torch.manual_seed(seed)
    if "text_config" in extra:  # a multimodal model: its text model is another family's (COMMON goes there)
        text_cls, _, text_extra = FAMILIES[extra["text_config"]]
        text = getattr(transformers, text_cls)(**{**COMMON, **text_extra})
        config = getattr(transformers, config_cls)(**{**extra, "text_config": text.to_dict()})
    else:
        config = getattr(transformers, config_cls)(**{**COMMON, **extra})
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):  # random norms (q/k norms too), so they are on the checked path
                p.copy_((0.0 if name in OFFSET_NORMS else 1.0) + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif p.dim() >= 2:  # matrices, and transformers 5's fused expert stacks (E, out, in)
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
                if name in OFFSET_NORMS and pname.endswith("embed_tokens.weight"):
                    # Gemma multiplies its embeddings by sqrt(hidden): drawn as the others', they would
                    # outweigh the blocks and, tied to the head, every greedy token would echo the last
                    # one, which checks no decode step; divided by it, the stream starts as the others'
                    p.div_(getattr(config, "text_config", config).hidden_size ** 0.5)
    return model.to(torch.bfloat16).eval(), model_cls


def reference(ckpt: Path, model_cls: str, prompts: list = PROMPTS, num_new_tokens: int = NUM_NEW_TOKENS) -> list[dict]:
    import torch
    import transformers

    model = getattr(transformers, model_cls).from_pretrained(ckpt, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, -1]
            gen = model.generate(x, max_new_tokens=num_new_tokens, do_sample=False, pad_token_id=0)
        new = gen[0, len(ids):].tolist()
        assert len(new) == num_new_tokens
        out.append(dict(prompt_ids=ids, greedy_ids=new, last_logits=logits.tolist()))
    return out


def crossing(ckpt: Path, model_cls: str, ids: list[int], num_new_tokens: int = NUM_NEW_TOKENS) -> dict:
    """A longrope prompt under the original context whose greedy tokens pass it, two ways: `generate`'s
    (Phi3's drops its cache there and prefills the whole sequence on the long factors) and a loop of
    forward passes over a kept cache (each key keeps the factors it was turned with, as cent-serve's)."""
    import torch
    import transformers

    model = getattr(transformers, model_cls).from_pretrained(ckpt, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=num_new_tokens, do_sample=False, pad_token_id=0)
        out = model(torch.tensor([ids]), use_cache=True)
        kept = []
        for i in range(num_new_tokens):
            kept.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[kept[-1]]]), past_key_values=out.past_key_values, use_cache=True,
                        position_ids=torch.tensor([[len(ids) + i]]))
    return dict(prompt_ids=ids, generate_ids=gen[0, len(ids):].tolist(), kept_cache_ids=kept)


def write(name: str, out_dir: Path, seed: int = 0) -> dict:
    import torch
    import transformers

    base = _base()
    model, model_cls = build(name, seed)
    base.save_checkpoint(model, base.build_tokenizer(), out_dir)
    expected = dict(generated_by=dict(torch=torch.__version__, transformers=transformers.__version__, seed=seed),
                    family=name, cases=reference(out_dir, model_cls, *FAMILY_PROMPTS.get(name, ())))
    if name == "phi3_longrope":  # the 14-token prompt passes the original 16 positions as it generates
        expected["crossing"] = crossing(out_dir, model_cls, PROMPTS[1])
    (out_dir / "expected.json").write_text(json.dumps(expected))
    return expected


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "hf_families"
    for family in sys.argv[2:] or FAMILIES:
        exp = write(family, root / family)
        print(f"{family}: {len(exp['cases'])} cases, transformers {exp['generated_by']['transformers']}")
