"""Build the Hugging Face cross-check fixture with real transformers (not a project dependency).

Writes tests/data/hf_tiny_llama/: a small random Llama saved by transformers'
`save_pretrained` (GQA, untied embeddings, non-default rope_theta, bf16
safetensors), a BPE `tokenizer.json` trained with `tokenizers`, and
`expected.json` with transformers' own greedy `generate` output and
last-position logits. The test suite compares cent-serve against that file,
so CI checks against transformers without installing torch.

    python -m venv /tmp/hfv && /tmp/hfv/bin/pip install torch==2.13.0 transformers
    /tmp/hfv/bin/pip install -e . && /tmp/hfv/bin/python tests/data/make_hf_fixture.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CORPUS = """CENT serves large language models without GPUs. CXL memory devices whose DRAM banks
compute near the data are joined by a CXL switch. Each device holds a shard of the weights and
a key value cache. The host samples tokens and the switch moves activations between devices.
Processing in memory streams the weights through the banks, so decoding is fast and cheap.
The quick brown fox jumps over the lazy dog while the pipeline keeps every stage busy."""

PROMPTS_TEXT = ["The CENT device computes in its DRAM banks", "the switch moves"]
NUM_NEW_TOKENS = 32


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer)
    return tok


def build_model(seed: int = 0, vocab_size: int = 384):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random norms so the checked path includes their weights
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model.to(torch.bfloat16).eval()


def transformers_reference(model, prompts: list[list[int]]) -> list[dict]:
    """Greedy tokens from transformers' generate (EOS disabled) and float32 last logits."""
    import torch

    out = []
    f32 = __import__("copy").deepcopy(model).float()  # the bf16 weights, computed in float32
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            gen = f32.generate(x, max_new_tokens=NUM_NEW_TOKENS, do_sample=False, eos_token_id=None,
                               pad_token_id=0, min_new_tokens=NUM_NEW_TOKENS)
            logits = f32(x).logits[0, -1].tolist()
        out.append(dict(prompt_ids=ids, greedy_ids=gen[0, len(ids):].tolist(), last_logits=logits))
    return out


def write_fixture(out_dir: Path, seed: int = 0) -> dict:
    import tokenizers
    import torch
    import transformers

    vocab = 384
    tok = build_tokenizer(vocab)
    model = build_model(seed, vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save(str(out_dir / "tokenizer.json"))
    prompts = [[1] + tok.encode(t).ids for t in PROMPTS_TEXT] + [[1, 5, 9, 200, 7]]
    expected = dict(
        generated_by=dict(torch=torch.__version__, transformers=transformers.__version__,
                          tokenizers=tokenizers.__version__, seed=seed),
        texts=PROMPTS_TEXT, encodings=[tok.encode(t).ids for t in PROMPTS_TEXT],
        cases=transformers_reference(model, prompts))
    (out_dir / "expected.json").write_text(json.dumps(expected))
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "hf_tiny_llama"
    exp = write_fixture(target)
    print(f"wrote {target}: {len(exp['cases'])} cases, transformers {exp['generated_by']['transformers']}")
