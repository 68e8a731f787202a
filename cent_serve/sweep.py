"""`cent sweep`: the CENT model over a grid of configurations, for "what if the device had X?".

Every combination of the `--vary` values is a point: the config from the usual flags with those
fields set. Fields named together in one `--vary` move in step (`--vary devices,pp=32:80,64:160`: a
point takes each one's value at one index, devices 32 with pp 80, then 64 with 160; a model among them
keeps the ':'s of its path or name, `--vary model,devices=C:/ckpt:8`), and that group's
points are crossed with the other `--vary`s'. A point is evaluated by the closed form (the paper's workload or `--prompt/--decode`, one query a
pipeline stage or `--batch` in each replica, the pipeline the devices run: `cent_serve.timing.pipeline`) or, with `--trace`, by an in-process
timing-only replay of the trace (`cent_serve.bench`), read once for every point and selected and
scaled by `cent bench run`'s flags (`--format`, `--num-requests` (200 by default here),
`--start-s`, `--time-scale` or `--rate`, `--prompt-scale`, `--output-scale`, `--max-prompt-tokens`,
`--max-output-tokens`: the
bench code reads them); it needs its own token counts, so ShareGPT is refused (the `cent bench`
commands replay it at a rate), and without `--trace` those flags are refused. Before any point
runs, every `--vary` field and value is checked on its own (an unknown field, a field given twice
or also set by a flag or `--set`, a value given twice, a value of the wrong type or against the
config's rule for numbers, an unknown model: one line, exit 2; so is `--prompt`/`--decode` beside
`--trace`). A point that cannot run (the model does not fit, an invalid
mapping, values that clash, a replay where no request completes) is a row with its error and a line on the
terminal; the sweep goes on, and fails (exit 2) only
when no point could run. A replay's failed requests (a prompt over the context, ...) are a count
in the CSV and a line per point on the terminal with their reasons. Written to `--out`:

- `sweep.csv`: one row per point: the varied values, the figures, the error, and the point's
  full resolved config as JSON (so any row can be rerun; a trace replay's has the trace and every
  option that shaped its requests under `bench`, as `cent bench run`'s config.json; the closed
  form's has the workload's prompt and decode under `workload`).
  `energy_<term>_mj` (a column a term of `timing.energy.TERMS`) split the energy per token, adding up to it;
  `throughput_tok_s` counts prompt and generated tokens, as the energy per token does (a trace
  replay adds `output_throughput_tok_s`); `power_w` (closed form only) is the artifact's power, a
  token's energy over its blocks' PIM time, and `avg_power_w` energy per token x throughput;
- `pareto.png`: throughput against energy per token, the Pareto front (no other point is both
  faster and cheaper in energy) drawn and labelled;
- `tokens_per_dollar.png`: tokens per dollar (against the paper's GPU baseline in the artifact's
  TCO convention, `device.tco_per_device` a device, where the model has one, else, or when
  `device.unit_cost_usd` is varied and `device.tco_per_device` is not, tokens per second per device
  dollar) against the device count, or the first varied field with numbers; when a point's price,
  channels or capacity differ from the paper's device but its TCO does not, the terminal says so
  in one line (`timing.energy.tco_note`);
- `figures.png`: throughput, latency, energy per token and average power against that field,
  one line per combination of the others (when a varied field has numbers); several models, each
  over more than one x, are a column of the four panels a model on its own scales (a 70B model's
  figures drew a 7B's lines flat on shared ones). In both line plots a
  field varied in step with the x field shares its axis, each tick naming its value (32 over tp=1);
  a model varied in step stays a line of its own, and models sharing a panel get a log axis once their
  values span 10x (`sweep_plots.LOG_SPAN`).

Each plot's title names the workload the points ran and what every point shares ('given:' the --config
file, the config flags and --set, as `cent simulate`'s line).

This module holds the command and a point's figures; `sweep_grid` reads and checks `--vary` and makes
each point's config, `sweep_plots` draws.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging

from tqdm import tqdm

from cent_serve.cli_common import (add_config_args, check_out_dir, config_from_args, given_overrides, numerics_asked,
                                   warn_closed_form_ignores, warn_experts_given, warn_experts_unread,
                                   warn_file_closed_form_ignores, warn_file_model_replaced, warn_gqa_given,
                                   warn_gqa_unread, warn_narrow_dram)
from cent_serve.config import CentConfig, apply_overrides, config_to_dict, resolve_model
from cent_serve.sweep_grid import (FLAG_FIELDS, IN_STEP_EXAMPLE, SHORT, SHORT_OF, check_not_set_and_varied, check_vary,
                                   follows_tp, in_step_of, model_overrides, parse_vary, parse_vary_groups, point_config,
                                   vary_grid)
from cent_serve.timing.energy import tco_note, term_cells, term_columns, unpriced_device_changes

__all__ = ["register", "run", "closed_form_figures", "load_sweep_trace", "replay_figures", "workload_text",
           "DEFAULT_TRACE_REQUESTS", "SHARED_FLAGS", "CLOSED_FIGURES", "TRACE_FIGURES", "TCO_UNREAD",
           # the grid's, in sweep_grid.py, still reached here
           "SHORT", "SHORT_OF", "FLAG_FIELDS", "IN_STEP_EXAMPLE", "parse_vary", "parse_vary_groups", "vary_grid",
           "in_step_of", "check_not_set_and_varied", "check_vary", "model_overrides", "point_config", "follows_tp"]

log = logging.getLogger("cent")

DEFAULT_TRACE_REQUESTS = 200
"""--trace: the trace's first this many requests unless --num-requests says otherwise."""
SHARED_FLAGS = ("seed", "hardware", "devices", "pp", "tp")
"""The config flags the plots' 'given:' line names (the titles name the models and workload; --numerics
leaves every simulated figure as it is)."""
_MAPPING = ("model_name", "devices", "mode", "parallelism", "pp", "tp", "devices_used", "replicas", "throughput_tok_s")
_COST = ("energy_per_token_mj", *term_columns(), "tokens_per_joule")
"""Energy per token, the same by term (`energy_<term>_mj`, one a term of `energy.TERMS`: they add up to
it; the closed form's `energy_breakdown_mj`, a replay's devices' counts), tokens per joule."""
_PRICE = ("system_device_cost_usd", "tok_s_per_usd")
CLOSED_FIGURES = (_MAPPING + ("token_latency_ms",) + _COST + ("power_w", "avg_power_w") + _PRICE
                  + ("throughput_ratio", "tokens_per_dollar_ratio", "error"))
"""sweep.csv's figure columns for the closed form (`power_w` the artifact's, `avg_power_w` energy per token
x throughput; the ratios to the paper's GPUs empty unless the workload is the paper's)."""
TRACE_FIGURES = (_MAPPING + ("output_throughput_tok_s",) + _COST + ("avg_power_w",) + _PRICE
                 + ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "completed", "failed", "error"))
"""sweep.csv's figure columns for a trace replay (`avg_power_w`: the replay's energy / its simulated span)."""
TCO_UNREAD = ("device.tco_per_device: no point has tokens per dollar against the paper's GPUs "
              "(tokens_per_dollar_ratio: the closed form of the paper's workload, --prompt 512 --decode 3584, on a "
              "Llama 2 preset they ran), the one figure of cent sweep it prices, so it moved nothing here: "
              "tok_s_per_usd and tokens_per_dollar.png price device.unit_cost_usd; cent bench run, cent bench sweep, "
              "cent bench paper and cent bench compare report tokens per TCO unit (tokens_per_tco) of any model and "
              "trace")
"""What a sweep says when a point set device.tco_per_device and none has a ratio for it to move."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="the model over a grid of config values: CSV and plots",
                       description="Evaluate every combination of --vary values with the closed form (the paper's "
                                   "workload) or a trace replay; write sweep.csv with each point's config, and plots.")
    add_config_args(p)
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a config field (e.g. device.num_channels) or devices, pp, tp, model, and its values "
                        "(repeatable: every combination is a point); fields in step: F1,F2=A1:B1,A2:B2,... (e.g. "
                        "devices,pp=32:80,64:160: two points, devices 32 with pp 80 and 64 with 160)")
    p.add_argument("--prompt", type=int, help="closed form: prompt tokens of the paper's workload (default 512)")
    p.add_argument("--decode", type=int, help="closed form: generated tokens of the paper's workload (default 3584)")
    p.add_argument("--batch", type=int, help="closed form: queries in flight in each replica, at most one per "
                                             "pipeline stage (default: one per stage, the paper's), as cent simulate "
                                             "--batch: a long context the devices cannot hold for every stage")
    p.add_argument("--trace", help="replay this trace (a shipped name or a file with token counts and arrival times: "
                                   "Vidur, Azure, BurstGPT, Mooncake) at every point instead")
    from cent_serve.bench.cli import add_selection_args
    add_selection_args(p.add_argument_group("with --trace: which requests, as cent bench run selects them"),
                       num_requests_help=f"requests at most (default {DEFAULT_TRACE_REQUESTS})", generated=False)
    # cent bench's synthetic loads have no place here: --trace is what makes a sweep replay
    p.set_defaults(synthetic=None, burstiness=None, prompt_len=None, output_len=None, lengths_from=None)
    p.add_argument("--out", default="sweep-results", help="directory for sweep.csv and the plots (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    p.set_defaults(func=run)


def _any_model(base: CentConfig, vary: list[tuple[str, list[str]]], has) -> bool:
    """Whether `has(model)` holds for one of the sweep's models (the base's, or a varied `model`'s; one
    that cannot load says so at its point)."""
    def holds(name: str) -> bool:
        try:
            return has(resolve_model(name))
        except ValueError:
            return False
    return has(base.model) or any(holds(v) for name, values in vary if name == "model" for v in values)


def _any_moe(base: CentConfig, vary: list[tuple[str, list[str]]]) -> bool:
    """Whether a mixture of experts is among the sweep's models (`_any_model`)."""
    return _any_model(base, vary, lambda m: m.is_moe)


def _any_gqa(base: CentConfig, vary: list[tuple[str, list[str]]]) -> bool:
    """Whether a model sharing a KV head among query heads is among the sweep's models (`_any_model`)."""
    return _any_model(base, vary, lambda m: m.num_rep > 1)


def closed_form_figures(cfg: CentConfig, prompt: int, decode: int, batch: int | None = None) -> dict:
    """The paper's workload end to end, as `cent simulate --prompt --decode [--batch]` computes it
    (`cent_serve.paper.closed_form`'s `end2end`), with the mapping's shape. `batch`: queries in flight in
    each replica (None: one a stage); more than a point's stages is its error."""
    from cent_serve.paper import closed_form
    from cent_serve.timing.mapping import resolve_mapping

    from cent_serve.timing.pipeline import tokens_over_latency

    phases = closed_form(cfg, prompt, decode, batch=batch)
    e2e = phases["end2end"]
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    # not a column: the terminal's note when the artifact's mean of rates lies far above it (`mean_rate_note`)
    done = tokens_over_latency({"end2end": e2e}, prompt, decode, phases["batch"] * mp.replicas)["end2end"]
    return dict(e2e, mode=mp.mode, parallelism=mp.parallelism, pp=mp.pp, tp=mp.tp, devices_used=mp.devices_used,
                replicas=mp.replicas, tokens_over_latency_tok_s=done, **term_cells(e2e["energy_breakdown_mj"]))


def load_sweep_trace(args: argparse.Namespace, base: CentConfig) -> tuple[list, dict]:
    """The requests `--trace` and the selection flags give (`cent bench run`'s reading of them) and
    what shaped them (`bench.cli.select_requests`), read once for every point; its 0-token requests
    warned about once (`ZeroTokens`)."""
    from cent_serve.bench import CLI_FLAGS, ParamError, detect_format, resolve_trace
    from cent_serve.bench.cli import select_requests
    from cent_serve.bench.readers import LengthsOnlyError
    from cent_serve.bench.runner import ZeroTokens

    lengths_only = (f"cent sweep --trace needs arrivals; draw synthetic requests' lengths from it with cent bench run "
                    f"--synthetic poisson --rate R --num-requests N --lengths-from {args.trace}")
    try:
        fmt = args.trace_format or detect_format(resolve_trace(args.trace))
    except LengthsOnlyError as exc:
        raise ValueError(f"--trace {args.trace}: {exc.what}: {lengths_only}") from None
    except ParamError as exc:  # a header of no format: worded with this command's --format
        raise ValueError(exc.render(CLI_FLAGS)) from None
    if fmt == "sharegpt":  # its counts need a tokenizer, which a varied model changes
        raise ValueError(f"--trace {args.trace} is ShareGPT, which has no token counts or arrival times: cent sweep "
                         "--trace needs a trace that has both (Vidur, Azure or BurstGPT CSV, Mooncake JSONL); "
                         f"replay a ShareGPT file with cent bench run --trace {args.trace} --rate REQ_PER_S, or at "
                         f"several rates with cent bench sweep --trace {args.trace} --rates R1,R2,...")
    if args.num_requests is None:
        args = argparse.Namespace(**{**vars(args), "num_requests": DEFAULT_TRACE_REQUESTS})
    requests, recorded = select_requests(args, base, lengths_only_fix=lengths_only)  # --format's: read as a trace
    zeros = ZeroTokens()
    for r in requests:
        zeros.add(r)
    zeros.warn()
    return requests, recorded


def replay_figures(cfg: CentConfig, requests: list) -> dict:
    """An in-process replay of the trace's requests at this point (`cfg` as `run` makes it: numerics
    off, executor local; the row's config records it so)."""
    from cent_serve.bench.report import per_token_terms_mj, reasons_text, summarize
    from cent_serve.bench.runner import run_in_process
    from cent_serve.preflight import check_runnable
    from cent_serve.timing.energy import cost_figures

    mp = check_runnable(cfg)  # a mapping that cannot hold the model is the point's error, as the closed form's
    s = summarize(run_in_process(cfg, requests, progress=False, warn=False, checked=True))
    if not s["completed"]:  # no figure to give: a row of zeros would sit on the plots as the best energy
        raise ValueError(f"no request completed ({s['failed']} failed): {reasons_text(s['failure_reasons'], examples=True)}")
    out = dict(mode=mp.mode, parallelism=mp.parallelism, pp=mp.pp, tp=mp.tp, devices_used=mp.devices_used, replicas=mp.replicas,
               # prompt + output tokens, as the closed form's throughput and every energy per token count them
               throughput_tok_s=s["total_token_throughput"], output_throughput_tok_s=s["output_throughput"],
               energy_per_token_mj=s["energy_per_token_mj"],
               # by term: each term's share of the devices' joules x the energy per token, so they add up to it
               **term_cells(per_token_terms_mj(s)),
               avg_power_w=s["energy_j"] / s["duration"] if s["duration"] > 0 else None,
               ttft_p50_ms=s.get("median_ttft_ms"), ttft_p99_ms=s.get("p99_ttft_ms"),
               tpot_p50_ms=s.get("median_tpot_ms"), tpot_p99_ms=s.get("p99_tpot_ms"),
               completed=s["completed"], failed=s["failed"], failure_reasons=s["failure_reasons"])
    # the paper's GPU figures are for its own workload, not this trace: no ratio against them
    out.update(cost_figures(cfg.model, mp.devices_used, mp.num_devices, out["throughput_tok_s"], "end2end",
                            out["energy_per_token_mj"], cfg.device, against_paper=False))
    return out


def _mean_rate_note(rows: list[dict], names: list[str]) -> str | None:
    """One line when some closed-form point's throughput_tok_s (the artifact's mean of each context's
    throughput) lies more than `MEAN_RATE_NOTE_FRACTION` above its tokens over its latency (long contexts):
    how many, and the farthest with both figures; else None."""
    from cent_serve.timing.pipeline import MEAN_RATE_NOTE_FRACTION

    far = [(r["throughput_tok_s"] / r["tokens_over_latency_tok_s"] - 1, r) for r in rows
           if r.get("tokens_over_latency_tok_s")]
    far = [(over, r) for over, r in far if over > MEAN_RATE_NOTE_FRACTION]
    if not far:
        return None
    over, r = max(far, key=lambda x: x[0])
    point = ", ".join(f"{name}={r[name]}" for name in names)
    return (f"throughput_tok_s is the artifact's mean of each context length's throughput (docs/hardware_model.md "
            f"section 7), which weighs a long context's slow tokens as much as the fast ones: at {len(far)} of "
            f"{len(rows)} points it is over {100 * MEAN_RATE_NOTE_FRACTION:.0f}% above the tokens over the latency "
            f"(the farthest, {point}: {r['throughput_tok_s']:.1f} against {r['tokens_over_latency_tok_s']:.1f} tok/s, "
            f"{100 * over:.0f}% above; cent simulate with its config prints every phase's)")


def workload_text(args: argparse.Namespace) -> str:
    """What every point ran, as the plots' titles say it: the trace replayed, or the closed form's
    prompt and decode (the flags', not always the paper's)."""
    from cent_serve.timing.energy import PAPER_WORKLOAD

    if args.trace:
        return f"trace replay of {args.trace}"
    tokens = f"prompt {args.prompt} + decode {args.decode}"
    if args.batch is not None:
        tokens += f", {args.batch} {'query' if args.batch == 1 else 'queries'} in flight"
    paper = (args.prompt, args.decode) == PAPER_WORKLOAD
    return f"closed form, the paper's workload: {tokens}" if paper else f"closed form, {tokens}"


def _count(n: int, noun: str) -> str:
    """'1 point', '2 points'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run(args: argparse.Namespace) -> int:
    from cent_serve.bench.cli import selection_flags_given
    from cent_serve.bench.report import reasons_text, replay_fixes
    from cent_serve.simulate_cli import paper_defaults

    from cent_serve.timing.energy import PAPER_WORKLOAD
    from cent_serve.timing.pipeline import check_phases

    out = check_out_dir(args.out)
    groups = parse_vary_groups(args.vary)
    vary, in_step = [field for group in groups for field in group], in_step_of(groups)
    check_not_set_and_varied(args, vary)
    paper_defaults(args)  # `--model llama2-70b` alone: the paper's 32 devices, as `cent simulate`
    base = config_from_args(args, experts=False, closed_form=not args.trace)  # warned below, over every point's model
    if base.on_gpus:
        raise ValueError("cent sweep explores CENT device designs: drop --hardware gpu:... (GPUs beside CENT: "
                         "cent bench compare --gpu KIND:N)")
    if args.trace:
        given = next((f for f in ("prompt", "decode") if getattr(args, f) is not None), None)
        if given:  # the trace has its own token counts: a workload beside it would be silently unused
            raise ValueError(f"--{given} sets the closed form's workload; --trace replays the trace's own prompts and "
                             f"outputs: drop --{given} (or --trace, for the closed form)")
        if args.batch is not None:  # the scheduler fills the lanes a replay runs
            raise ValueError("--batch sets the closed form's queries in flight; a --trace replay admits its requests "
                             "into the lanes as they come (scheduler.max_seqs_per_stage sequences a lane): drop --batch")
        if args.num_requests is not None and args.num_requests < 1:
            raise ValueError(f"--num-requests {args.num_requests} is invalid: use a positive number of requests "
                             f"(or leave it out for {DEFAULT_TRACE_REQUESTS})")
    else:
        given = selection_flags_given(args)
        if given:
            raise ValueError(f"{given[0]} selects the requests of a --trace replay; the closed form runs the paper's "
                             "workload (--prompt, --decode): add --trace or drop " + given[0])
        args.prompt = PAPER_WORKLOAD[0] if args.prompt is None else args.prompt
        args.decode = PAPER_WORKLOAD[1] if args.decode is None else args.decode
        check_phases(args.prompt, args.decode, gap_flag=None)  # closed_form_figures averages every 128 tokens
        if args.batch is not None and args.batch < 1:  # else every point would say it
            raise ValueError(f"--batch {args.batch} is invalid: use a positive number of queries in flight (e.g. "
                             "--batch 8), at most one per pipeline stage")
    check_vary(base, vary, in_step)
    moe = _any_moe(base, vary)
    warn_experts_unread([name for name, _ in vary], "--vary", moe)  # a replay reads them no more than the closed form
    gqa = _any_gqa(base, vary)
    warn_gqa_unread([name for name, _ in vary], "--vary", gqa)
    varies_model = any(name == "model" for name, _ in vary)
    if varies_model:
        warn_file_model_replaced(args, "--vary model", "every varied model", not args.trace, moe)
    file_model = not varies_model and args.model is None  # else replaced: `warn_file_model_replaced` names its fields
    warn_experts_given(args, base, moe, file_model=file_model)
    warn_gqa_given(args, base, gqa)
    if not args.trace:
        warn_closed_form_ignores([name for name, _ in vary], "--vary", moe)
        if "model.max_seq_len" in dict(vary):  # "what if the context were longer?" is --prompt's and --decode's
            log.warning(
                "--vary model.max_seq_len: the closed form reads it only to check that --prompt + --decode fit it "
                "(%d tokens here: the contexts its figures are at), so every point that holds them gives the same "
                "figures; to see a longer context raise --prompt or --decode (with --set model.max_seq_len=N to let "
                "them in, and --batch B if the devices cannot hold a query a stage), or replay a trace, whose "
                "requests it admits or refuses (cent sweep --trace)", args.prompt + args.decode)
        warn_closed_form_ignores([item.split("=", 1)[0].strip() for item in args.set], "--set", moe)
        warn_closed_form_ignores(["model.seed"] if args.seed is not None else [], "--seed", moe)
        warn_closed_form_ignores(numerics_asked(args, base), "--numerics", moe)
        warn_file_closed_form_ignores(args, base, moe, file_model=file_model, exclude=[n for n, _ in vary])
    elif numerics_asked(args, base):  # a replay point runs timing only (below): its config says numerics off
        log.warning(
            "--numerics %s: cent sweep --trace replays every point timing only, in this process (the same simulated "
            "times; no weights read, no text computed); to compute the numerics, cent bench run --numerics full",
            args.numerics)
    if "device.bytes_per_element" in dict(vary):  # each width on the rows and bursts the points keep
        widths = [apply_overrides(base, [f"device.bytes_per_element={v}"]).device
                  for v in dict(vary)["device.bytes_per_element"]]
        if not {"device.row_elements", "device.burst_elements"} & set(dict(vary)):  # else the combinations asked for
            warn_narrow_dram("--vary device.bytes_per_element", widths)
    requests, recorded = load_sweep_trace(args, base) if args.trace else (None, None)
    grid = vary_grid(groups)
    hybrid_pp = follows_tp(base, vary)
    if hybrid_pp:
        print("points of tp > 1 run devices / tp stages (CENT's hybrid mapping; at most one a block): --vary pp=... to "
              "choose them")
    rows = []
    unpriced: set[str] = set()  # device fields of cost some point changed while its TCO stayed the paper's
    tco_given = has_ratio = False  # a point's device.tco_per_device set; a point priced against the paper's GPUs
    for point in tqdm(grid, unit="point", desc="sweep", mininterval=1.0):
        row: dict = dict(point)
        try:
            cfg = point_config(base, point, model_overrides(args), hybrid_pp)
            if args.trace:  # a replay point runs timing only, in this process: its config says so
                cfg.numerics, cfg.executor = "off", "local"
            # a point that cannot run keeps its model, devices and config too: what was refused, rerunnable
            workload = dict(prompt=args.prompt, decode=args.decode,
                            **({} if args.batch is None else dict(batch=args.batch)))
            config = (dict(config_to_dict(cfg), workload=workload)
                      if recorded is None else dict(config_to_dict(cfg), bench=recorded))
            row.update(model_name=cfg.model.name, devices=cfg.parallel.num_devices,
                       config=json.dumps(config, sort_keys=True))
            figs = (replay_figures(cfg, requests) if args.trace
                    else closed_form_figures(cfg, args.prompt, args.decode, args.batch))
            row.update(figs)
            tco_given |= cfg.device.tco_per_device is not None
            if figs.get("tokens_per_dollar_ratio") is not None:  # priced as the paper's device though it is not
                has_ratio = True
                unpriced.update(c.split("=", 1)[0] for c in unpriced_device_changes(cfg.device))
        except ValueError as exc:  # this point cannot run: say why, go on
            row["error"] = " ".join(str(exc).split())
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    # the same columns whatever the points gave (a script reading several sweeps finds each where it was)
    figures = TRACE_FIGURES if args.trace else CLOSED_FIGURES
    columns = [n for n, _ in vary] + [f for f in figures if f not in dict(vary)]
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns + ["config"], extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    ok = [r for r in rows if "error" not in r]
    if not ok:
        if len(rows) == 1:
            why, where = f"the point could not run ({rows[0]['error']})", "its error"
        else:
            why = f"none of the {len(rows)} points could run (the first: {rows[0]['error']})"
            where = "every point's error"
        raise ValueError(f"{why}: change the --vary values or the flags; {where} is in {out / 'sweep.csv'}")
    for r in rows:  # why a point could not run, and a replay's failed requests (the CSV has their count only)
        point = ", ".join(f"{name}={r[name]}" for name, _ in vary)
        if "error" in r:  # as cent bench paper prints a mapping it skips
            print(f"{point}: could not run: {r['error']}")
        elif r.get("failed"):
            print(f"{point}: {r['failed']} of {r['completed'] + r['failed']} requests failed: "
                  f"{reasons_text(r['failure_reasons'], examples=True)}")
    for line in replay_fixes({k for r in ok for k in r.get("failure_reasons", {})}):  # what the flags do about them
        print(line)
    note = _mean_rate_note(ok, [n for n, _ in vary])
    if note:
        print(note)
    if unpriced:  # tokens_per_dollar_ratio: one line, whichever points changed them
        print(tco_note(sorted(unpriced), "--set device.tco_per_device=UNITS, or --vary it in step with them,"))
    if tco_given and not has_ratio:  # its one reader here: an unread price left every figure and plot as it was
        print(TCO_UNREAD)
    print(f"{_count(len(rows), 'point')}, {len(ok)} evaluated, {len(rows) - len(ok)} could not run: "
          f"{out / 'sweep.csv'}")
    if not args.no_plots and ok:
        from cent_serve.sweep_plots import plot_figures, plot_pareto, plot_tokens_per_dollar

        labels = [n for n, _ in vary]
        # every point's, unvaried: a 4 GHz device's plots are not the paper's, nor a 16-device sweep's the default's
        given = given_overrides(args, SHARED_FLAGS)
        how = workload_text(args)  # every plot's throughput moves with it
        plots = [plot_pareto(ok, labels, out / "pareto.png", given, how, in_step),
                 plot_tokens_per_dollar(ok, labels, out / "tokens_per_dollar.png", given, how, in_step),
                 plot_figures(ok, labels, out / "figures.png", trace=bool(args.trace), how=how, given=given,
                              in_step=in_step)]
        print(f"plots: {', '.join(str(p) for p in plots if p)}")
    return 0
