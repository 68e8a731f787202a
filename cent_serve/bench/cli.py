"""`cent bench`: load tests on emulated CENT devices.

- `run`: replay a trace (or a synthetic load) in-process (the engine in virtual time, as fast
  as it can) or, with `--url URL`, against a running server (`cent serve`, or any
  OpenAI-compatible one).
- `sweep`: the same trace at several request rates.
- `paper`: the paper's mappings on one trace, beside the GPU baseline.
- `compare`: one trace on CENT devices and on modelled GPUs, side by side.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cent_serve.cli_common import add_config_args, check_out_dir, config_from_args, given_overrides, warn_gpu_run
from cent_serve.config import PLACEMENTS
from cent_serve.preflight import check_runnable

log = logging.getLogger("cent.bench")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="load-test with request traces", description=__doc__.replace("`", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # the docstring's list, as written
    # (without its Markdown backticks, which a terminal prints as they are)
    bsub = p.add_subparsers(dest="bench_command", required=True)
    r = bsub.add_parser("run", help="replay one trace in-process, or against a running server (--url URL: "
                                    "cent serve or any OpenAI-compatible one), and write results",
                        description="Replay a trace through the engine in this process, in virtual time, or with "
                                    "--url URL against a running server (cent serve, or any OpenAI-compatible one); "
                                    "write summary.json, requests.csv, config.json and plots to --out.")
    add_config_args(r, requests=True)
    _add_request_args(r)
    r.add_argument("--url", help="replay against this running server (e.g. http://127.0.0.1:8000) instead "
                                 "of in-process")
    r.add_argument("--in-process", action="store_true",
                   help="run the engine in this process in virtual time (the default without --url)")
    r.add_argument("--ray", action="store_true", help="in-process: device actors on Ray")
    r.add_argument("--ray-address", help="in-process on Ray: join this cluster (implies --ray; default: "
                                         "RAY_ADDRESS or a local Ray)")
    r.add_argument("--placement", choices=PLACEMENTS, help="--ray on a cluster: spread devices, pack "
                   "them, or a node per replica")
    r.add_argument("--concurrency", type=int, help="--url: requests in flight at most (paced or non-cent "
                                                   "servers; default 256)")
    r.add_argument("--api-key", help="--url: bearer key")
    r.add_argument("--goodput", nargs="+", default=[], metavar="NAME:MS",
                   help="SLOs for request_goodput, e.g. ttft:500 tpot:50 e2el:10000")
    r.add_argument("--out", default="bench-results", help="results directory (default: %(default)s)")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--save-detailed", action="store_true",
                   help="add each request's inter-token latencies to requests.csv (column itls_s)")
    r.set_defaults(func=run_bench)

    sw = bsub.add_parser("sweep", help="one trace at several request rates: latency vs throughput, goodput",
                         description="Replay the trace at each --rates value (in-process); write sweep.json, "
                                     "config.json and sweep.png with DistServe's goodput (highest rate at which "
                                     "90% of requests meet the --goodput SLOs).")
    add_config_args(sw, requests=True)
    _add_request_args(sw)
    sw.add_argument("--rates", required=True, help="comma-separated request rates, e.g. 0.5,1,2,4")
    sw.add_argument("--goodput", nargs="+", default=[], metavar="NAME:MS", help="SLOs, e.g. ttft:500 tpot:50")
    sw.add_argument("--out", default="bench-sweep", help="results directory (default: %(default)s)")
    sw.add_argument("--no-plots", action="store_true", help="write sweep.json and config.json only")
    sw.set_defaults(func=run_sweep_cmd)

    pa = bsub.add_parser("paper", help="the paper's mappings on one trace, beside the GPU baseline",
                         description="Replay one trace on every mapping the paper evaluates for --devices "
                                     "(pure pipeline, hybrids, full tensor parallel); write paper.json/.csv, "
                                     "config.json and paper.png. Throughput is what the trace's arrivals allow: "
                                     "add --rate to "
                                     "saturate the devices for a peak-throughput comparison with the GPUs.")
    add_config_args(pa, requests=True)
    _add_request_args(pa)
    pa.add_argument("--out", default="bench-paper", help="results directory (default: %(default)s)")
    pa.add_argument("--no-plots", action="store_true", help="write paper.json, paper.csv and config.json only")
    pa.set_defaults(func=run_paper_cmd)

    cm = bsub.add_parser("compare", help="one trace on CENT devices and on GPUs, side by side",
                         description="Replay one trace on the CENT devices the usual flags give and on --gpu "
                                     "KIND:N modelled GPUs, through the same engine; write compare.json/.csv, "
                                     "compare_cdfs.png and, with --rates, compare_sweep.png.")
    add_config_args(cm, requests=True)
    _add_request_args(cm)
    cm.add_argument("--gpu", default="a100-80gb:4", metavar="KIND:N",
                    help="the GPU side (default a100-80gb:4; kinds a100-80gb, a100-80gb-pcie, h100-80gb; "
                         "--set gpu.tp=, gpu.pp=, gpu.attention_reads=)")
    cm.add_argument("--rates", help="also replay at these request rates (comma-separated) for the "
                                    "throughput-latency plot (the table's replay keeps --rate or --time-scale)")
    cm.add_argument("--goodput", nargs="+", default=[], metavar="NAME:MS", help="SLOs, e.g. ttft:2000 tpot:100")
    cm.add_argument("--out", default="bench-compare", help="results directory (default: %(default)s)")
    cm.add_argument("--save-detailed", action="store_true",
                    help="add each request's inter-token latencies to requests_*.csv (column itls_s)")
    cm.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cm.set_defaults(func=run_compare_cmd)


def _add_request_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("requests")
    src.add_argument("--trace", help="trace file (Vidur/Azure/BurstGPT CSV, Mooncake JSONL, ShareGPT JSON) or a "
                                     "shipped trace: sample_conv (the default, 200 requests), azure_conv_2023, "
                                     "azure_code_2023")
    add_selection_args(src)
    src.add_argument("--synthetic", choices=["poisson", "gamma"],
                     help="synthetic arrivals at --rate: a synthetic trace (no --trace), or the arrivals of a "
                          "ShareGPT --trace (which has no timestamps)")
    src.add_argument("--burstiness", type=float, help="--synthetic gamma: the gamma shape (default 1 = Poisson; "
                                                      "< 1 burstier)")
    src.add_argument("--prompt-len", type=_length, metavar="N|LO:HI",
                     help="--synthetic without --trace: prompt tokens of every request, or drawn uniformly from "
                          "LO..HI (default 128)")
    src.add_argument("--output-len", type=_length, metavar="N|LO:HI",
                     help="--synthetic without --trace: output tokens of every request, or drawn uniformly from "
                          "LO..HI (default 128)")
    src.add_argument("--lengths-from", metavar="TRACE",
                     help="--synthetic without --trace: draw each request's (prompt, output) lengths from a trace's "
                          "rows (a file or shipped name, as --trace), keeping how they go together; a CSV of "
                          "lengths only (no arrival column, e.g. Vidur's num_prefill_tokens, num_decode_tokens) "
                          "will do")


def _length(text: str) -> int | tuple[int, int]:
    """--prompt-len / --output-len: N, or LO:HI for lengths drawn uniformly (inclusive)."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            return int(low)
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length: give N or LO:HI (uniform), e.g. 128 or "
                                         "64:512") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: give LO:HI with 1 <= LO <= HI")
    return lo, hi


SELECTION_FLAGS = {"trace_format": ("--format", None), "num_requests": ("--num-requests", None),
                   "start_s": ("--start-s", 0.0), "time_scale": ("--time-scale", 1.0), "rate": ("--rate", None),
                   "prompt_scale": ("--prompt-scale", 1.0), "output_scale": ("--output-scale", 1.0),
                   "max_prompt_tokens": ("--max-prompt-tokens", None),
                   "max_output_tokens": ("--max-output-tokens", None)}
"""dest -> (flag, default) of the flags `add_selection_args` adds."""


def add_selection_args(group, num_requests_help: str = "requests at most (default: every request the trace "
                                                      "selects; --synthetic needs it)",
                       generated: bool = True) -> None:
    """The flags that read a trace file and select and scale its requests (`SELECTION_FLAGS`):
    every `cent bench` command's, and `cent sweep --trace`'s, read by `select_requests`
    (`generated`: the command also makes arrivals, for ShareGPT and --synthetic)."""
    from cent_serve.bench.traces import FORMATS

    helps = dict(trace_format=f"trace format: {', '.join(FORMATS)} (default: detected from the file)",
                 num_requests=num_requests_help,
                 start_s="skip requests arriving less than this many seconds after the trace's first request (not "
                         "on the file's own clock)",
                 time_scale="multiply a trace's inter-arrival times (not with --rate)",
                 rate="mean request rate (req/s): rescales a trace's arrivals"
                      + ("; Poisson arrivals for ShareGPT (gamma with --synthetic gamma)" if generated else "")
                      + "; not with --time-scale",
                 prompt_scale="multiply every prompt length (rounded; before --max-prompt-tokens)",
                 output_scale="multiply every output length (rounded; before --max-output-tokens)",
                 max_prompt_tokens="clip prompt lengths", max_output_tokens="clip output lengths")
    for dest, (flag, default) in SELECTION_FLAGS.items():
        kind = (str if dest == "trace_format" else
                float if dest in ("start_s", "time_scale", "rate", "prompt_scale", "output_scale") else int)
        group.add_argument(flag, dest=dest, type=kind, default=default, help=helps[dest])


def selection_flags_given(args: argparse.Namespace) -> list[str]:
    """The `add_selection_args` flags set to other than their default."""
    return [flag for dest, (flag, default) in SELECTION_FLAGS.items() if getattr(args, dest) != default]


def select_requests(args: argparse.Namespace, cfg, rate_flag: str = "--rate",
                    lengths_only_fix: str | None = None) -> tuple[list, dict]:
    """The requests to replay (at least one) and what shaped them (`_recorded`: its `trace` names
    their source). ValueError (one line,
    naming the flag and the fix) for a selection that cannot be made; the library's errors name
    its parameters, rephrased here with the flags that set them (`errors.CLI_FLAGS`; the rate
    is `rate_flag`'s, e.g. --rates for a sweep). A --trace of lengths only is refused with
    `lengths_only_fix` (default: cent bench's --lengths-from)."""
    from cent_serve.bench.errors import CLI_FLAGS, ParamError
    from cent_serve.bench.readers import LengthsOnlyError

    try:
        requests, recorded = _select(args, cfg)
    except LengthsOnlyError as exc:  # only --trace's: --lengths-from reads such a file
        rate = f"{rate_flag} {'R1,R2' if rate_flag == '--rates' else 'R'}"  # bench sweep's are --rates
        fix = lengths_only_fix or f"use it with --synthetic poisson {rate} --num-requests N --lengths-from {args.trace}"
        raise ValueError(f"--trace {args.trace}: {exc.what}: {fix}") from None
    except ParamError as exc:
        raise ValueError(exc.render({**CLI_FLAGS, "request_rate": rate_flag, "rate": rate_flag})) from None
    assert requests, recorded  # an empty file, and a --start-s past its end, are refused as it is read
    return requests, recorded


def _select(args: argparse.Namespace, cfg) -> tuple[list, dict]:
    """`select_requests` before its checks: the requests the flags select and what shaped them."""
    from cent_serve.bench import (FORMATS, TraceOptions, detect_format, load_trace, resolve_trace,
                                  sample_trace_path, synthetic_trace)

    if args.trace_format is not None and args.trace_format not in FORMATS:
        raise ValueError(f"--format {args.trace_format!r} is unknown: use one of {', '.join(FORMATS)} "
                         "(or leave it out to detect the format)")
    path = resolve_trace(args.trace) if args.trace else None
    fmt = None if path is None else (args.trace_format or detect_format(path))
    if args.synthetic and fmt not in (None, "sharegpt"):
        raise ValueError(f"--synthetic makes arrivals for traces without timestamps (ShareGPT); --trace {path} "
                         f"({fmt}) has its own: drop --synthetic (use --rate to rescale it) or drop --trace")
    _check_applies(args, path, fmt)
    if path is None and not args.synthetic:
        path = sample_trace_path()
        fmt = detect_format(path)
    lengths = _lengths(args) if path is None else None
    recorded = _recorded(args, path, fmt)
    rescale = not args.synthetic and fmt != "sharegpt"  # else --rate is the arrival process's own rate
    options = TraceOptions(start_s=args.start_s, num_requests=args.num_requests, time_scale=args.time_scale,
                           request_rate=args.rate if rescale else None, prompt_scale=args.prompt_scale,
                           output_scale=args.output_scale,
                           max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens)
    if fmt == "sharegpt":
        return _sharegpt(path, args, cfg, options), recorded
    if args.synthetic:
        if args.rate is None or args.num_requests is None:
            raise ValueError("--synthetic needs --rate (req/s) and --num-requests")
        return list(synthetic_trace(args.num_requests, args.rate, burstiness=_burstiness(args), lengths=lengths,
                                    seed=args.seed or 0, options=options)), recorded
    from tqdm import tqdm

    # a trace of millions of rows takes a while to read: a bar once it has taken a second (and one for
    # --rate's first pass, which measures the selection's span)
    def span_pass(rows):
        return tqdm(rows, desc=f"measuring {path.name}'s span for --rate", unit="row", delay=1.0,
                    mininterval=1.0, leave=False)

    requests = load_trace(path, fmt, options, span_progress=span_pass)
    return list(tqdm(requests, desc=f"reading {path.name}", unit="req", delay=1.0,
                     mininterval=1.0, total=args.num_requests)), recorded


def _lengths(args: argparse.Namespace):
    """--synthetic's lengths: fixed (`FixedLengths`, each 128 unless given), uniform over a range
    when either is LO:HI (`UniformLengths`), or a trace's rows (`TraceLengths`, --lengths-from)."""
    from cent_serve.bench import FixedLengths, TraceLengths, UniformLengths, resolve_trace

    if args.lengths_from is not None:
        from cent_serve.bench import detect_format
        from cent_serve.bench.readers import LengthsOnlyError
        source = resolve_trace(args.lengths_from, "--lengths-from")
        try:
            fmt = detect_format(source)
        except LengthsOnlyError:  # lengths and no arrivals (Vidur's length traces): all this needs
            fmt = None
        if fmt == "sharegpt":  # its lengths need the model's tokenizer over every text
            raise ValueError(f"--lengths-from {args.lengths_from} is ShareGPT, which has no token counts: give a trace "
                             "with them (Vidur, Azure, BurstGPT CSV, Mooncake JSONL)")
        return TraceLengths.from_trace(source)
    prompt, output = (128 if v is None else v for v in (args.prompt_len, args.output_len))
    if isinstance(prompt, int) and isinstance(output, int):
        return FixedLengths(prompt, output)
    return UniformLengths(*(v if isinstance(v, tuple) else (v, v) for v in (prompt, output)))


def _recorded(args: argparse.Namespace, path: Path | None, fmt: str | None) -> dict:
    """Every option that shaped the requests, as the results record it (config.json's `bench`,
    summary.json's `bench`, compare.json's `bench`, cent sweep's row configs): the trace (its path,
    or "synthetic") and format, the selection and scaling flags (None: not given), and for
    generated arrivals (ShareGPT, --synthetic) their process, burstiness and seed; for --synthetic
    also the lengths."""
    from cent_serve.bench import resolve_trace, trace_record

    out = dict(trace=trace_record(path) if path is not None else "synthetic", format=fmt or "synthetic",
               start_s=args.start_s, num_requests=args.num_requests, time_scale=args.time_scale, rate=args.rate,
               prompt_scale=args.prompt_scale, output_scale=args.output_scale,
               max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens)
    if args.synthetic or fmt == "sharegpt":
        out.update(arrivals=args.synthetic or "poisson", burstiness=_burstiness(args), seed=args.seed or 0)
    if path is None and args.lengths_from is not None:
        out.update(lengths_from=trace_record(resolve_trace(args.lengths_from, "--lengths-from")))
    elif path is None:  # N, or "LO:HI" for a uniform draw
        out.update({key: 128 if v is None else v if isinstance(v, int) else f"{v[0]}:{v[1]}"
                    for key, v in (("prompt_len", args.prompt_len), ("output_len", args.output_len))})
    return out


def _rates(text: str) -> list[float]:
    """--rates: positive request rates, comma-separated."""
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rates {text!r} is invalid: give numbers separated by commas, e.g. 0.5,1,2") from None
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--rates {text!r} is invalid: give positive request rates")
    return rates


def _burstiness(args: argparse.Namespace) -> float:
    return 1.0 if args.burstiness is None else args.burstiness  # Poisson (`_check_applies`: gamma's only)


def _check_applies(args: argparse.Namespace, path: Path | None, fmt: str | None) -> None:
    """Refuse a flag the selected requests would not use, the same way for every trace format: one
    line naming the flag and what to do (a flag silently ignored reads as if it shaped the run)."""
    from cent_serve.bench.traces import check_rate_or_time_scale

    if args.trace_format is not None and path is None:
        raise ValueError("--format names the format of a --trace file: add --trace FILE or drop --format")
    source = (f"--trace {path} ({fmt})" if path is not None
              else None if args.synthetic else "the shipped sample trace (no --trace)")
    for flag, value, cap in (("--prompt-len", args.prompt_len, "--max-prompt-tokens"),
                             ("--output-len", args.output_len, "--max-output-tokens"),
                             ("--lengths-from", args.lengths_from, "--max-prompt-tokens, --max-output-tokens")):
        if value is not None and source is not None:
            raise ValueError(f"{flag} sets the length of --synthetic requests without --trace; {source} has its own "
                             f"lengths: drop {flag} (to cap them, {cap})")
    if args.lengths_from is not None and (args.prompt_len is not None or args.output_len is not None):
        flag = "--prompt-len" if args.prompt_len is not None else "--output-len"
        raise ValueError(f"--lengths-from draws both lengths from {args.lengths_from}'s rows: drop {flag}")
    if args.burstiness is not None and args.synthetic != "gamma":
        timed = source is not None and fmt != "sharegpt"
        raise ValueError("--burstiness is the shape of --synthetic gamma arrivals; " + (
            f"{source} has its own arrival times: drop --burstiness" if timed
            else "these are Poisson: add --synthetic gamma or drop --burstiness"))
    check_rate_or_time_scale(args.rate, args.time_scale)
    if fmt == "sharegpt" and args.prompt_scale > 1.0:  # its prompts are their own text: cut short, never lengthened
        raise ValueError(f"--prompt-scale {args.prompt_scale:g} would lengthen the prompts of --trace {path} (sharegpt), "
                         "which are their own text: use a scale of at most 1 (or --max-prompt-tokens)")


def _sharegpt(path: Path, args: argparse.Namespace, cfg, options) -> list:
    """ShareGPT has no timestamps or token counts: arrivals from --rate (Poisson, or --synthetic
    gamma --burstiness B), counts from the model's own tokenizer."""
    from cent_serve.bench import iter_arrival_times_s, load_trace
    from cent_serve.model.tokenizer import load_tokenizer

    if args.rate is None:
        raise ValueError(f"--trace {path} is ShareGPT, which has no arrival times: add --rate REQ_PER_S "
                         "(Poisson arrivals; --synthetic gamma --burstiness B for burstier ones)")
    tok = load_tokenizer(cfg.model)
    rate, burstiness, seed = args.rate, _burstiness(args), args.seed or 0
    # both counts with BOS, as vLLM's benchmark counts ShareGPT (`tokenizer(text).input_ids`, the HF default
    # adding Llama's BOS): the same file gives vLLM's lengths; the prompt is sent with its BOS, the answer's
    # count is one more than its text's tokens
    return list(load_trace(path, "sharegpt", options, count_tokens=lambda text: len(tok.encode(text)),
                           arrivals_s=lambda: iter_arrival_times_s(rate, burstiness, seed)))


def run_bench(args: argparse.Namespace) -> int:
    from cent_serve.bench.report import (client_wall_stats, kind_notes, parse_goodput, price_notes, print_table,
                                         run_title, served_price, source_text, summarize, tco_figures)
    from cent_serve.bench.results import write_results
    from cent_serve.bench.runner import run_in_process
    from cent_serve.config import config_to_dict, model_label

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request under the progress bar
    # --url's own flags would change nothing in process, silently
    if args.concurrency is not None and not args.url:
        raise ValueError(f"--concurrency {args.concurrency} limits the requests in flight of a --url replay; in "
                         "process the engine admits what its lanes and KV room hold: add --url URL or drop --concurrency")
    if args.api_key is not None and not args.url:
        raise ValueError("--api-key is the bearer key of a --url server: add --url URL or drop --api-key")
    if args.concurrency is not None and args.concurrency < 1:  # 0 would hold every request back for ever
        raise ValueError(f"--concurrency {args.concurrency} is invalid: give 1 or more requests in flight")
    check_out_dir(args.out)
    cfg = config_from_args(args)
    slos = parse_goodput(args.goodput)
    requests, recorded = select_requests(args, cfg)
    source = recorded["trace"]
    if args.url and args.in_process:
        raise ValueError("--url and --in-process are two ways to run: give one of them")
    if args.url:
        import asyncio

        from cent_serve.bench.http_client import replay_http
        kind = f"http {args.url}"
        limit = {} if args.concurrency is None else {"concurrency": args.concurrency}  # else replay_http's 256
        result, client = asyncio.run(replay_http(args.url, requests, seed=cfg.scheduler.seed, api_key=args.api_key,
                                                 **limit))
        served = result.status.get("model", client["model"])
        ignored = [f"--{name}" for name in ("model", "hardware", "devices", "pp", "tp", "numerics", "config")
                   if getattr(args, name, None) is not None and not (name == "model" and args.model == served)]
        ignored += ["--set"] if args.set else []
        if ignored:  # the server runs its own model and hardware; these shaped only how the trace was read
            log.warning("%s: the server at %s runs its own model and devices (%s): with --url these flags "
                        "change nothing there", " ".join(ignored), args.url, served)
    else:
        if args.ray_address:
            cfg.server.ray_address = args.ray_address
        if args.placement:
            cfg.server.placement = args.placement
        kind = cfg.executor = "ray" if args.ray or args.ray_address else "local"
        # run_in_process refuses what cannot run before the devices are built
        result, client = run_in_process(cfg, requests, total=len(requests), keep_on_interrupt=True), None
    summary = summarize(result, slos)
    if client is not None:
        summary.update(client_wall_stats(client), server_clock=client["server_clock"],
                       hold_expiries=client["hold_expiries"], late_arrivals=client["late_arrivals"])
    summary["bench"] = recorded
    notes = []
    if args.url:  # the server's own, not this command's defaults: its devices priced from its config
        tokens_per_tco, notes = served_price(client["server_config"], args.url, summary["total_token_throughput"])
        summary.update(source=source, model=result.status.get("model", client["model"]),
                       hardware=result.status.get("hardware"), devices=result.status.get("mapping", {}).get("devices"),
                       tokens_per_tco=tokens_per_tco)
    else:
        priced = tco_figures(cfg, summary["total_token_throughput"])  # as each side of bench compare
        notes += price_notes(cfg, priced["tco"]) + kind_notes(cfg)
        summary.update(source=source, model=cfg.model.name, hardware=cfg.hardware,
                       devices=cfg.gpu.count if cfg.on_gpus else cfg.parallel.num_devices,
                       tokens_per_tco=priced["tokens_per_tco"])
        if model_label(cfg.model) != cfg.model.name:  # a changed preset (or a checkpoint named like one): titles say so
            summary["model_label"] = model_label(cfg.model)
        if given_overrides(args):  # a changed device or fabric: the titles say how, as for a changed preset
            summary["given"] = given_overrides(args)
    out = Path(args.out)
    if args.url:  # the server's config when it serves it (`--config` reruns the replay in-process), its status
        config = dict(client["server_config"] or {}, bench=dict(recorded, url=args.url),
                      server_status={k: v for k, v in result.status.items() if k not in ("devices", "fabric")})
    else:
        config = dict(config_to_dict(cfg), bench=dict(recorded, executor=kind))  # a --config as it is
    if result.interrupted:
        summary["interrupted"] = True
    write_results(out, result, summary, config, plots=not args.no_plots, detailed=args.save_detailed)
    print_table(summary, f"{run_title(result.status, summary).splitlines()[0]}; {source_text(recorded)}")
    for note in notes:
        print(f"note: {note}")
    if result.interrupted:  # the replay's hours are not lost to a Ctrl-C; the figures say so
        print(f"interrupted: the results of the {len(result.records)} of {len(requests)} requests that ended "
              f"before Ctrl-C are in {out}/ (partial: summary.json has \"interrupted\": true)")
        return 130
    print(f"results in {out}/")
    return 0


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from cent_serve.bench.report import parse_goodput
    from cent_serve.bench.sweep import run_sweep

    check_out_dir(args.out)
    cfg = config_from_args(args)  # what cannot run: run_sweep refuses it first, before requests_at reads the trace
    slos = parse_goodput(args.goodput)
    rates = _rates(args.rates)
    if args.rate is not None:  # every replay's rate is one of --rates: --rate would be replaced at each
        raise ValueError(f"--rate {args.rate:g} is one rate; bench sweep replays the trace at each of --rates: drop "
                         f"--rate (or add it to --rates {args.rates})")

    recorded: dict = {}

    def requests_at(rate: float) -> list:
        requests, shaped = select_requests(argparse.Namespace(**{**vars(args), "rate": rate}), cfg, rate_flag="--rates")
        recorded.update(shaped, rate=None, rates=rates)  # the rates are the sweep's
        return requests

    sweep = run_sweep(cfg, requests_at, rates, slos, Path(args.out), plots=not args.no_plots, bench=recorded,
                      given=given_overrides(args))
    g, share = sweep["distserve_goodput_rate"], f"{100 * sweep['attainment_threshold']:.0f}%"
    if not slos:
        goodput = "DistServe goodput: give --goodput ttft:MS tpot:MS for it"
    elif g is None:
        goodput = f"DistServe goodput: no rate of {args.rates} has {share} of its requests within the SLOs"
    else:
        goodput = f"DistServe goodput: {g:g} req/s (the highest rate with {share} of its requests within the SLOs)"
    print(f"{goodput}; results in {Path(args.out)}/")
    return 0


def run_paper_cmd(args: argparse.Namespace) -> int:
    from cent_serve.bench.sweep import run_paper
    from cent_serve.simulate_cli import refuse_one_mapping, sweep_mappings

    refuse_one_mapping(args, None, "cent bench paper", "cent bench run")
    check_out_dir(args.out)
    cfg = config_from_args(args)
    refuse_one_mapping(args, cfg, "cent bench paper", "cent bench run")
    if cfg.on_gpus:
        raise ValueError("bench paper runs the paper's CENT mappings: drop --hardware gpu:... (for GPUs beside CENT "
                         "on one trace use cent bench compare --gpu KIND:N)")
    requests, recorded = select_requests(args, cfg)
    run_paper(cfg, requests, sweep_mappings(cfg.parallel.num_devices, cfg.model.num_layers), Path(args.out),
              bench=recorded, plots=not args.no_plots, given=given_overrides(args))
    print(f"results in {Path(args.out)}/")
    return 0


def run_compare_cmd(args: argparse.Namespace) -> int:
    import dataclasses

    from cent_serve.bench.compare import print_compare, run_compare
    from cent_serve.bench.report import parse_goodput
    from cent_serve.config import GpuConfig
    from cent_serve.config.gpu import parse_gpu_flag

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.hardware not in (None, "cent"):
        raise ValueError("--hardware does not apply to compare: the CENT side comes from --devices/--pp/--tp, "
                         "the GPU side from --gpu KIND:N")
    parse_gpu_flag(args.gpu, None)  # the form, before anything is read; the kind once the config is
    check_out_dir(args.out)
    cent_cfg = config_from_args(args)
    kind, count = parse_gpu_flag(args.gpu, cent_cfg.gpu.custom.name)
    if cent_cfg.on_gpus:
        raise ValueError(f"gpu.count={cent_cfg.gpu.count} makes the CENT side GPUs: drop it (--set gpu.count / the "
                         "config file); compare takes the GPUs from --gpu KIND:N")
    set_kind = any(item.split("=", 1)[0].strip() == "gpu.kind" for item in args.set)
    if (set_kind or cent_cfg.gpu.kind != GpuConfig.kind) and cent_cfg.gpu.kind != kind:
        raise ValueError(f"gpu.kind={cent_cfg.gpu.kind!r} is invalid with --gpu {args.gpu}, which sets the GPU side: "
                         "drop it (--set gpu.kind / the config file), or say the kind in --gpu KIND:N")
    cent_cfg.executor = "local"
    gpu_cfg = dataclasses.replace(cent_cfg, gpu=dataclasses.replace(cent_cfg.gpu, kind=kind, count=count))
    warn_gpu_run(gpu_cfg)  # its kind's constants (the CENT side's flags are read: no args)
    check_runnable(cent_cfg)  # here, not in run_compare: the trace is read below, before run_compare
    check_runnable(gpu_cfg, gpu_flag="--gpu ")
    slos = parse_goodput(args.goodput)
    requests, recorded = select_requests(args, cent_cfg)
    rates = None
    if args.rates:
        # --time-scale or --rate shape the table's replay; each of --rates rescales the trace's own gaps
        rates = {r: select_requests(argparse.Namespace(**{**vars(args), "rate": r, "time_scale": 1.0}), cent_cfg,
                                    rate_flag="--rates")[0]
                 for r in _rates(args.rates)}
    out = run_compare(cent_cfg, gpu_cfg, requests, slos, Path(args.out), rates, args.save_detailed, not args.no_plots,
                      bench=dict(recorded, rates=list(rates or ())), checked=True, given=given_overrides(args))
    print_compare(out)
    print(f"results in {Path(args.out)}/")
    return 0
