"""Build the Hugging Face cross-check fixture with real transformers (torch is NOT a project dependency).

What it writes (about 0.7 MB in all):

- tests/data/hf_tiny_llama/: a small random `LlamaForCausalLM` saved by transformers'
  own `save_pretrained` (GQA 4 heads / 2 KV heads, untied embeddings,
  rope_theta=500000 so the loader must read it, rms_norm_eps=1e-5, random norm
  weights, bf16 safetensors), its BPE `tokenizer.json` (trained here with the
  `tokenizers` library on CORPUS, specials <unk>=0 <s>=1 </s>=2, a Llama-like
  "<s> $A" post-processor, saved through `PreTrainedTokenizerFast.save_pretrained`),
  and `expected.json`: transformers' own results for the prompts in it.
- tests/data/hf_tiny_llama_sharded/: the same model saved by `save_pretrained`
  with a small `max_shard_size`, so it has several files and a
  `model.safetensors.index.json` (weights and config only, no tokenizer).

How expected.json is computed (see `transformers_reference`): the bf16
checkpoint is loaded back from disk with
`LlamaForCausalLM.from_pretrained(dir, dtype=torch.float32)` (bf16 -> float32 is
exact, so these are the saved weights, with float32 math like cent-serve's
reference model); `last_logits` is `model(input_ids).logits[0, -1]` and
`greedy_ids` are the new tokens of `model.generate(input_ids,
max_new_tokens=32, do_sample=False)` with `generation_config.eos_token_id =
None`, so it never stops early and no logits processor touches the scores
(cent-serve compares with `--ignore-eos`). `encodings` are transformers'
tokenizer's `tokenizer(text).input_ids` (BOS included by the post-processor)
and `decoded` its `decode(greedy_ids, skip_special_tokens=True)`.

Regenerate (CI never does; the test suite only reads the committed files):

    python3 -m venv /tmp/hf-venv && /tmp/hf-venv/bin/pip install torch==2.13.0 transformers pytest
    /tmp/hf-venv/bin/pip install -e . && /tmp/hf-venv/bin/python tests/data/make_hf_fixture.py

The live test (`pytest -m hf` in that venv) imports this file and rebuilds a
fresh checkpoint with another seed in a temporary directory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CORPUS = """CENT serves large language models without GPUs. CXL memory devices whose DRAM banks
compute near the data are joined by a CXL switch. Each device holds a shard of the weights and
a key value cache. The host samples tokens and the switch moves activations between devices.
Processing in memory streams the weights through the banks, so decoding is fast and cheap.
The quick brown fox jumps over the lazy dog while the pipeline keeps every stage busy.
A language model reads a prompt, predicts the next token, and repeats until it is done.
Attention compares each query with every earlier key; grouped-query attention shares keys
and values between several query heads. Rotary embeddings turn positions into rotations."""

PROMPTS_TEXT = ["The CENT device computes in its DRAM banks", "the switch moves"]
EXTRA_PROMPTS = [[1, 5, 9, 200, 7, 431, 88, 300, 12, 511, 64, 3, 250, 17, 99, 150, 42, 480, 8, 61, 222]]
VOCAB_SIZE = 512
NUM_NEW_TOKENS = 32
MAX_SHARD_SIZE = "100KB"
LOGITS_METHOD = ("LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32) (bf16 weights upcast "
                 "exactly), model(torch.tensor([prompt_ids])).logits[0, -1]")
GENERATE_METHOD = ("same float32 model; generation_config.eos_token_id=None; model.generate(input_ids, "
                   f"max_new_tokens={NUM_NEW_TOKENS}, do_sample=False, pad_token_id=0)[0, len(prompt):]")


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE `tokenizers.Tokenizer` trained on CORPUS, with Llama's special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def build_model(seed: int = 0, vocab_size: int = VOCAB_SIZE):
    """A random bf16 LlamaForCausalLM (GQA, untied, non-default rope_theta), torch seed fixed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # random norms, so their weights are on the checked path
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 2:  # N(0, 1/fan_in) instead of std 0.02, so logits are far from flat
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model.to(torch.bfloat16).eval()


def save_checkpoint(model, tok, out_dir: Path, max_shard_size: str | None = None) -> None:
    """`save_pretrained` the model (and, with `tok`, the tokenizer) as transformers does."""
    import transformers
    from transformers import PreTrainedTokenizerFast

    kwargs = {} if int(transformers.__version__.split(".")[0]) >= 5 else {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, **kwargs)  # safetensors (transformers 5 has no other format)
    if tok is not None:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                       eos_token="</s>")
        fast.save_pretrained(out_dir)
        config = out_dir / "tokenizer_config.json"  # transformers 5 writes its own class name, which 4.x
        text = config.read_text()                   # (vLLM's pin) cannot load; 5 reads this one as the same
        config.write_text(text.replace('"TokenizersBackend"', '"PreTrainedTokenizerFast"'))


def transformers_reference(ckpt: Path, prompts: list[list[int]]) -> list[dict]:
    """transformers' greedy tokens and float32 last-position logits for each prompt (see LOGITS_METHOD)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # never stop early: cent-serve runs with --ignore-eos
    hf_tok = AutoTokenizer.from_pretrained(ckpt)
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, -1]
            gen = model.generate(x, max_new_tokens=NUM_NEW_TOKENS, do_sample=False, pad_token_id=0)
        new = gen[0, len(ids):].tolist()
        assert len(new) == NUM_NEW_TOKENS, f"transformers stopped after {len(new)} tokens"
        out.append(dict(prompt_ids=ids, greedy_ids=new, last_logits=logits.tolist(),
                        decoded=hf_tok.decode(new, skip_special_tokens=True)))
    return out


def write_fixture(out_dir: Path, seed: int = 0, sharded_dir: Path | None = None) -> dict:
    """Write the checkpoint (and optionally its sharded copy) and expected.json; return expected."""
    import tokenizers
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    model = build_model(seed)
    save_checkpoint(model, tok, out_dir)
    if sharded_dir is not None:
        save_checkpoint(model, None, sharded_dir, max_shard_size=MAX_SHARD_SIZE)
        assert (sharded_dir / "model.safetensors.index.json").is_file()
    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    encodings = [hf_tok(t)["input_ids"] for t in PROMPTS_TEXT]
    expected = dict(
        generated_by=dict(torch=torch.__version__, transformers=transformers.__version__,
                          tokenizers=tokenizers.__version__, seed=seed, vocab_size=VOCAB_SIZE),
        logits_method=LOGITS_METHOD, generate_method=GENERATE_METHOD,
        texts=PROMPTS_TEXT, encodings=encodings,
        cases=transformers_reference(out_dir, encodings + EXTRA_PROMPTS))
    (out_dir / "expected.json").write_text(json.dumps(expected))
    return expected


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "hf_tiny_llama"
    sharded = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "hf_tiny_llama_sharded"
    exp = write_fixture(target, sharded_dir=sharded)
    print(f"wrote {target} and {sharded}: {len(exp['cases'])} cases, "
          f"transformers {exp['generated_by']['transformers']}, torch {exp['generated_by']['torch']}")
