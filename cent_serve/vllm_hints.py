"""What a user coming from vLLM types first, and cent's way to the same: the hints `cent`'s one-line
error adds for a vLLM flag a command does not take (`cli._vllm_hint` says "here" only to a command that
takes the flag a hint starts with, else names the commands that do)."""
from __future__ import annotations

# --tp above 1 alone is refused ('with tp > 1 set pp explicitly'): the hint names --pp beside it
_TP = ("--tp N here, with --pp M: CENT devices per pipeline stage, M stages (--devices N x M; on modelled GPUs, "
       "--hardware gpu:KIND:N --set gpu.tp=N)")
_PP = "--pp N here: pipeline stages (default one a block; on modelled GPUs --set gpu.pp=N)"
_DP = ("--devices N here: N devices hold N // (the devices one replica's mapping uses) data-parallel replicas "
       "(cent info prints how many); on modelled GPUs --hardware gpu:KIND:N holds N / (gpu.tp x gpu.pp) of them")
_NO_CODE = ("not needed here: a checkpoint's config.json, tokenizer files and weights are read, none of its code "
            "is run")
_QUANT = ("not taken here: weights are bfloat16 or float32 (--set model.weight_dtype=...); an 8-bit KV cache is --set "
          "device.kv_bytes_per_element=1")

VLLM_SERVE_HINTS = {
    # `vllm serve`'s engine flags (vllm/engine/arg_utils.py; --chat-template its server's,
    # vllm/entrypoints/openai/cli_args.py): what cent serve (and cent simulate, cent info, cent bench) takes for them
    "--tensor-parallel-size": _TP, "-tp": _TP, "--pipeline-parallel-size": _PP, "-pp": _PP,
    "--data-parallel-size": _DP, "-dp": _DP,
    "--max-model-len": "--set model.max_seq_len=N here",
    "--max-num-seqs": "--set gpu.max_num_seqs=N here on modelled GPUs (--hardware gpu:KIND:N); CENT devices run "
                      "--pp lanes of --set scheduler.max_seqs_per_stage=N sequences",
    "--max-num-batched-tokens": "--set gpu.max_num_batched_tokens=N here on modelled GPUs; on CENT devices --set "
                                "scheduler.prefill_chunk_tokens=N takes N prompt tokens a step",
    "--enable-chunked-prefill": "--set scheduler.prefill_chunk_tokens=N here (N prompt tokens a step; on modelled "
                                "GPUs prefill is always chunked)",
    "--gpu-memory-utilization": "--set gpu.memory_utilization=F here, with --hardware gpu:KIND:N",
    "--dtype": "--set model.weight_dtype=bfloat16 or float32 here (the devices store bf16: device.bytes_per_element)",
    "--block-size": "--set scheduler.kv_block_tokens=N here (tokens per KV-cache block)",
    # the GPU model times a 16-bit KV cache (gpu/timing.py BYTES)
    "--kv-cache-dtype": "--set device.kv_bytes_per_element=1 here for an 8-bit KV cache on CENT devices (as "
                        "vLLM's fp8; 2 is 16-bit); modelled GPUs time a bf16 one",
    "--quantization": _QUANT, "-q": _QUANT,  # -q: arg_utils.py adds --quantization as "--quantization", "-q"
    # docs/serving.md: usage's cached tokens, the mooncake trace's hash_ids
    "--enable-prefix-caching": "not taken here: no prefix cache is modelled, every request prefills its whole "
                               "prompt (as vLLM's with it off)",
    "--no-enable-prefix-caching": "not needed here: no prefix cache is modelled, every request prefills its whole "
                                  "prompt",
    "--enforce-eager": "not needed here: nothing is compiled or captured as CUDA graphs",
    "--trust-remote-code": _NO_CODE,
    "--tokenizer": "--model here: the tokenizer is the model's own (a checkpoint directory's tokenizer.json, a "
                   "preset's byte-level one); cent tokenizer export DIR --model M writes it for a client to load",
    "--chat-template": "not taken here: a checkpoint's own template is used (tokenizer_config.json's chat_template, "
                       "or chat_template.jinja in its directory: put yours there), else cent's default",
    "--served-model-name": "not taken here: the API serves the model by its --model name",
    # config.md: server.max_tokens_default plays --override-generation-config '{"max_new_tokens": N}'s role
    "--override-generation-config": "--set server.max_tokens_default=N here for max_new_tokens (the tokens a "
                                    "request gets when it names no limit)",
}
"""`vllm serve`'s flag -> cent's way to the same ("vLLM's FLAG is ..."), or a plain "not taken here" and
what to do instead; one that starts with a flag starts with one `cent serve` takes (tests/test_vllm_hints.py)."""

_RANDOM = ", with --rate R and --num-requests N"  # `cent bench run --synthetic poisson --prompt-len N` alone is refused
VLLM_BENCH_HINTS = {
    # `vllm bench serve`'s flags (vllm/benchmarks/serve.py `add_cli_args`, vllm/benchmarks/datasets/arg_utils.py
    # `add_dataset_parser`): what cent bench run takes for them
    "--request-rate": "--rate R here", "--num-prompts": "--num-requests N here",
    "--base-url": "--url URL here", "--dataset-path": "--trace FILE here",
    # vLLM's --host/--port name the server to load; cent serve's own are where it listens
    "--host": "--url http://HOST:PORT here (the server to replay against; cent serve's --host and --port are where "
              "it listens)",
    "--port": "--url http://HOST:PORT here (the server to replay against; cent serve's --host and --port are where "
              "it listens)",
    "--max-concurrency": "--concurrency N here, with --url URL (requests in flight at most; in process the engine "
                         "admits what its lanes and KV room hold)",
    "--dataset-name": "--trace FILE here for sharegpt and burstgpt (the file; its --format is detected), --synthetic "
                      "poisson --prompt-len N --output-len N for random; no sonnet, hf, custom or other generated "
                      "dataset: give such requests as a trace file (ShareGPT JSON, Vidur, Azure or BurstGPT CSV, "
                      "Mooncake JSONL)",
    "--random-input-len": "--synthetic poisson --prompt-len N here" + _RANDOM,
    "--input-len": "--synthetic poisson --prompt-len N here" + _RANDOM,
    "--random-output-len": "--synthetic poisson --output-len N here" + _RANDOM,
    "--random-range-ratio": "--prompt-len LO:HI here and --output-len LO:HI, lengths drawn uniformly (vLLM's N with "
                            "ratio R: N*(1-R):N*(1+R)), with --synthetic poisson",
    "--sharegpt-output-len": "not taken here: a trace keeps its own output lengths; --output-scale F scales them, "
                             "--max-output-tokens N clips them",
    "--save-result": "not needed here: cent bench run always writes summary.json, requests.csv and config.json to "
                     "--out DIR",
    "--result-dir": "--out DIR here",
    "--result-filename": "not taken here: the files' names are fixed (summary.json, requests.csv, config.json): give "
                         "each run its own --out DIR",
    # bench/runner.py and bench/http_client.py send each request's output length as max_tokens with ignore_eos;
    # vLLM's bench sends it with --ignore-eos, and unasked only for its random datasets (vllm/benchmarks/serve.py)
    "--ignore-eos": "not needed here: every request generates its trace's output length (each is sent with "
                    "ignore_eos, as vLLM's benchmark sends them with --ignore-eos)",
    "--percentile-metrics": "not taken here: summary.json holds the mean, std, median, p90 and p99 of TTFT, TPOT, "
                            "ITL and E2E latency (bench/report.py), requests.csv each request's",
    "--metric-percentiles": "not taken here: summary.json holds the mean, std, median, p90 and p99 of TTFT, TPOT, "
                            "ITL and E2E latency (bench/report.py), requests.csv each request's",
    "--endpoint": "not taken here: cent bench run --url sends /v1/completions with token-id prompts",
    "--backend": "not taken here: cent bench run --url speaks OpenAI's /v1/completions to any server",
}
"""`vllm bench serve`'s flag -> cent's way to the same, as `VLLM_SERVE_HINTS`; one that starts with a flag
starts with one `cent bench run` takes."""

VLLM_FLAG_HINTS = {**VLLM_SERVE_HINTS, **VLLM_BENCH_HINTS}
"""Every vLLM flag with a hint (`cli._vllm_hint`)."""

VLLM_SWITCHES = frozenset({"--enforce-eager", "--trust-remote-code", "--save-result", "--ignore-eos"})
"""vLLM's flags with a hint that take no value (`action="store_true"` or BooleanOptionalAction, in
vllm/engine/arg_utils.py and vllm/benchmarks/serve.py), besides those `VLLM_SWITCH_PREFIXES` covers: the word after
one is not its value (`cli._positional`)."""

VLLM_SWITCH_PREFIXES = ("--no-", "--enable-", "--disable-")
"""How every other vLLM flag that takes no value starts: BooleanOptionalAction's --no-FLAG, and each
--enable-*/--disable-* flag of `vllm serve` and `vllm bench serve` is a bool field or store_true
(vllm/engine/arg_utils.py get_kwargs, vllm/entrypoints/openai/cli_args.py FrontendArgs,
vllm/benchmarks/datasets/arg_utils.py), with or without a hint here (--disable-log-requests MODEL)."""
