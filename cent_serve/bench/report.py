"""The figures of a bench run: summary.json's (vLLM's benchmark field names), CENT beside GPUs, the
terminal table and the titles; `results` writes the run's files (summary.json, requests.csv, config.json,
the PNG plots)."""
from __future__ import annotations

import copy
import numbers
from pathlib import Path

import numpy as np

from cent_serve.arguments import check_config, wrong
from cent_serve.bench.records import BenchResult, RequestRecord
from cent_serve.config import CentConfig
from cent_serve.executor.base import busy_fraction
from cent_serve.timing.mapping import parallelism

PERCENTILES = (50, 90, 99)
"""Reported besides mean and std (p50 is vLLM's 'median')."""
SLO_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(specs: list[str]) -> dict[str, float]:
    """`["ttft:200", "tpot:50"]` -> {"ttft": 200.0, "tpot": 50.0} (milliseconds)."""
    out = {}
    for spec in specs:
        name, _, value = spec.partition(":")
        if name not in SLO_METRICS:
            raise ValueError(f"--goodput {spec!r} is invalid: use NAME:MS with NAME in {', '.join(SLO_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput {spec!r} is invalid: the value must be milliseconds, e.g. ttft:200") from None
        if not ms >= 0:  # NaN too (vLLM refuses a negative SLO as well)
            raise ValueError(f"--goodput {spec!r} is invalid: the value must be milliseconds >= 0, e.g. {name}:200")
        if name in out:
            raise ValueError(f"--goodput {spec!r} is invalid: {name} is given twice (also {name}:{out[name]:g}): "
                             "give each metric once")
        out[name] = ms
    return out


def _stats(prefix: str, values_ms) -> dict:
    """Mean, median, std and PERCENTILES of `values_ms` (a list or an array of milliseconds)."""
    a = np.asarray(values_ms, dtype=float)
    if a.size == 0:
        return {f"mean_{prefix}_ms": None, f"median_{prefix}_ms": None, f"std_{prefix}_ms": None,
                **{f"p{p}_{prefix}_ms": None for p in PERCENTILES if p != 50}}
    out = {f"mean_{prefix}_ms": float(a.mean()), f"median_{prefix}_ms": float(np.median(a)),
           f"std_{prefix}_ms": float(a.std())}
    out.update({f"p{p}_{prefix}_ms": float(np.percentile(a, p)) for p in PERCENTILES if p != 50})
    return out


def meets(r: RequestRecord, slos: dict[str, float]) -> bool:
    got = {"ttft": r.ttft_s, "tpot": r.tpot_s, "e2el": r.e2e_s}
    return r.ok and all(got[k] is None or got[k] * 1e3 <= v for k, v in slos.items())


def failure_reasons(records: list[RequestRecord]) -> dict[str, dict]:
    """{reason: {"count": n, "example": the first such request's error message}} over the failed
    `records` (in the order given), most frequent reason first."""
    out: dict[str, dict] = {}
    for r in records:
        if not r.ok:
            entry = out.setdefault(r.reason, {"count": 0, "example": r.error})
            entry["count"] += 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["count"], kv[0])))


def _check_result(call: str, result: object, example: str) -> None:
    """ValueError unless `result` is a replay's `BenchResult`."""
    if not isinstance(result, BenchResult):
        raise wrong(call, "result", result, f"give the BenchResult run_in_process returns: {example}")


def _check_slos(call: str, slos: object) -> None:
    """ValueError unless `slos` is None or {metric of SLO_METRICS: milliseconds >= 0}."""
    if slos is None:
        return
    if not isinstance(slos, dict):
        fix = (f"parse it first: parse_goodput({slos!r}) (cent_serve.bench.report)" if isinstance(slos, (list, tuple))
               and all(isinstance(x, str) for x in slos) and len(repr(slos)) <= 60 else
               "give {metric: milliseconds}, e.g. slos={'ttft': 200, 'tpot': 50}")
        raise wrong(call, "slos", slos, fix)
    for name, ms in slos.items():
        if name not in SLO_METRICS:
            raise wrong(call, "slos", slos, f"{name!r} is no metric: use {', '.join(SLO_METRICS)}, e.g. "
                        "slos={'ttft': 200}")
        if isinstance(ms, bool) or not isinstance(ms, numbers.Real) or not ms >= 0:
            raise wrong(call, f"slos[{name!r}]", ms, f"give milliseconds >= 0, e.g. slos={{{name!r}: 200}}")


def summarize(result: BenchResult, slos: dict[str, float] | None = None) -> dict:
    """vLLM benchmark_serving's fields, over simulated time (duration = first arrival to last finish).

    Besides vLLM's: `failure_reasons` (see `failure_reasons`), `raised_to_one_token` (requests
    the trace gave 0 prompt or output tokens, sent with 1: `runner.ZeroTokens`) and, with `slos`,
    `slo_attainment`: the share of *all* requests that completed and met every SLO (a failed
    request meets none).
    """
    _check_result("summarize(result, slos)", result, "summarize(run_in_process(cfg, requests))")
    _check_slos("summarize(result, slos)", slos)
    records = sorted(result.records, key=lambda r: (r.arrival_s, r.request_id))  # sums in one order
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    start = min((r.arrival_s for r in records), default=0.0)
    end = max((r.finish_s for r in ok if r.finish_s is not None), default=start)
    duration = end - start  # 0 when nothing completed: every rate is then 0

    def rate(n: float) -> float:
        return n / duration if duration > 0 else 0.0

    n_in = sum(r.num_prompt_tokens for r in ok)
    n_out = sum(r.num_output_tokens for r in ok)
    energy_mj = sum(r.energy_mj for r in records)
    out = dict(duration=duration, completed=len(ok), failed=len(failed), total_input_tokens=n_in,
               total_output_tokens=n_out, request_throughput=rate(len(ok)),
               output_throughput=rate(n_out), total_token_throughput=rate(n_in + n_out))
    out.update(_stats("ttft", [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]))
    out.update(_stats("tpot", [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None]))
    # every gap of every completed request, in arrays: a list of them (~32 bytes a token) was the run's
    # peak memory past the replay's own records; the same doubles (b - a, then x 1e3)
    out.update(_stats("itl", np.concatenate([np.diff(r.token_times_s) for r in ok] + [np.empty(0)]) * 1e3))
    out.update(_stats("e2el", [r.e2e_s * 1e3 for r in ok if r.e2e_s is not None]))
    if slos:
        good = sum(1 for r in ok if meets(r, slos))
        out.update(request_goodput=rate(good), goodput_slos_ms=slos,
                   slo_attainment=good / max(1, len(records)))
    clock = result.clock_s
    out.update(energy_per_token_mj=energy_mj / max(1, n_in + n_out),
               energy_per_output_token_mj=energy_mj / n_out if n_out else None, energy_j=energy_mj / 1e3,
               device_busy_fraction={_dev(d): busy_fraction(d, clock) for d in result.devices},
               preemptions=sum(r.preemptions for r in records),
               failure_reasons=failure_reasons(records),
               raised_to_one_token=result.raised_to_one_token,
               time_unit="simulated seconds", wall_s=result.wall_s)
    out.update(energy_terms(result.energy_terms_j))
    return out


def energy_terms(terms_j: dict[str, float] | None) -> dict:
    """`energy_by_term_j` (the run's joules by term, `timing.energy.TERMS`, largest first) and
    `energy_share_by_term` (each one's share of their sum); both None where the run has no split (GPUs,
    a --url run against a server that gives none)."""
    if terms_j is None:
        return dict(energy_by_term_j=None, energy_share_by_term=None)
    ordered = dict(sorted(terms_j.items(), key=lambda kv: -kv[1]))  # stable: ties keep TERMS' order
    total = sum(ordered.values())
    return dict(energy_by_term_j=ordered,
                energy_share_by_term={k: v / total if total > 0 else 0.0 for k, v in ordered.items()})


def per_token_terms_mj(summary: dict) -> dict[str, float] | None:
    """A summary's energy per token by term (`energy_share_by_term` x `energy_per_token_mj`, so they add up
    to it: `cent sweep --trace`'s and `cent bench paper`'s `energy_<term>_mj` columns); None without a split."""
    shares = summary.get("energy_share_by_term")
    if shares is None:
        return None
    return {t: share * summary["energy_per_token_mj"] for t, share in shares.items()}


def terms_text(summary: dict) -> str:
    """`pim 41.2%, activate 20.1%, ... (others 3.0%)`: the largest `energy.TERMS_SHOWN` terms' shares
    (`energy.shares_text`); "n/a" and why for a run without a split."""
    from cent_serve.timing.energy import shares_text

    shares = summary.get("energy_share_by_term")
    if shares is None:
        return "n/a (no split by term: a GPU run, or a server that gives none)"
    return shares_text(shares)


ROWS = (  # (key of side_figures, label, unit, better)
    ("median_ttft_ms", "TTFT p50", "ms", "low"), ("p99_ttft_ms", "TTFT p99", "ms", "low"),
    ("median_tpot_ms", "TPOT p50", "ms", "low"), ("p99_tpot_ms", "TPOT p99", "ms", "low"),
    ("median_e2el_ms", "E2E p50", "ms", "low"), ("p99_e2el_ms", "E2E p99", "ms", "low"),
    ("output_throughput", "output throughput", "tok/s", "high"),
    ("total_token_throughput", "total throughput", "tok/s", "high"),
    ("request_goodput", "request goodput", "req/s", "high"),
    ("energy_per_token_mj", "energy per token", "mJ", "low"),
    ("energy_per_output_token_mj", "energy per output token", "mJ", "low"), ("power_w", "power", "W", "low"),
    ("tokens_per_tco", "tokens per dollar", "tok/s per TCO unit", "high"),
    ("completed", "completed", "", "high"), ("failed", "failed", "", "low"),
)
"""The figures `cent bench compare` sets side by side (`compare_table`)."""
OPTIONAL_ROWS = ("request_goodput", "energy_per_output_token_mj")
"""ROWS' keys a side may lack: goodput without SLOs (`summarize`'s `slos`), energy per output token in
a compare.json written before it was a row (its table shows "-" there)."""


def side_figures(cfg: CentConfig, result: BenchResult, slos: dict[str, float] | None = None) -> dict:
    """`summarize` plus the hardware as a run's title names it, `power_w` (the run's energy over its
    duration), `tco` (the CENT artifact's TCO units: device.tco_per_device a device, 0.73 per 32 by default;
    the GPU kind's per GPU) and
    `tokens_per_tco`: one side of `cent bench compare` (compare.json's `cent` and `gpu`), for a replay on
    CENT devices or on GPUs."""
    call = "side_figures(cfg, result, slos)"
    check_config(call, cfg)
    _check_result(call, result, "side_figures(cfg, run_in_process(cfg, requests))")
    _check_slos(call, slos)
    s = summarize(result, slos)
    if cfg.on_gpus:
        hw = result.status['mapping']['describe']  # "4 x a100-80gb: pp 1 x tp 4"
    else:
        hw = f"{cfg.parallel.num_devices} CENT devices ({result.status['mapping']['describe']})"
    s.update(hardware=hw, power_w=s["energy_j"] / s["duration"] if s["duration"] > 0 else 0.0,
             **tco_figures(cfg, s["total_token_throughput"]))
    return s


def tco_figures(cfg: CentConfig, total_token_throughput: float) -> dict:
    """`tco`: what a run's hardware costs in the CENT artifact's TCO units (docs/hardware_model.md
    section 9: device.tco_per_device a device, 0.73 per 32 unset, times parallel.num_devices, every device
    bought; on GPUs the kind's gpu.tco_per_gpu times the GPUs, None for a kind without a cost) and
    `tokens_per_tco`: `total_token_throughput` (prompt and output tokens a second) over it, None without
    a cost. The one place tokens per dollar of a replay are counted: each side of `cent bench compare`
    (`side_figures`), `cent bench run`'s summary.json and each row of `cent bench sweep` and `cent bench
    paper` take them from here."""
    if cfg.on_gpus:
        from cent_serve.gpu.timing import GpuTimer
        tco = GpuTimer(cfg).tco()
    else:
        from cent_serve.timing.energy import cent_tco
        tco = cent_tco(cfg.device, cfg.parallel.num_devices)
    return dict(tco=tco, tokens_per_tco=None if tco is None else total_token_throughput / tco)


def served_price(server_config: dict | None, url: str, total_token_throughput: float) -> tuple[float | None, list[str]]:
    """(`tokens_per_tco`, notes) of a `cent bench run --url` replay: the price of the server's own devices
    (or GPUs), from the config it gives at GET /v1/cent/config (what the results' config.json records of
    it) by `tco_figures` and `price_notes`, as an in-process run of that config prices them. (None, a note
    saying why) for a server that gives none (another server, or a cent-serve from before it served it)
    or one this version cannot read. Its `server` section (the port, the API key it redacts) prices nothing
    and is not read, nor is its model's checkpoint directory, a path on the server's host: the resolved
    model fields it gives beside it are the model."""
    from cent_serve.bench.http_server import server_root
    from cent_serve.config.files import config_from_mapping

    url = server_root(url)
    if not isinstance(server_config, dict) or not server_config:
        return None, [f"tokens per dollar: n/a: the server at {url} does not give its config (GET /v1/cent/config), "
                      "so its devices and their price are unknown"]
    data = copy.deepcopy(server_config)  # config_from_mapping changes what it reads
    data.pop("server", None)  # read back, its redacted key warned "no key is set (give --api-key ...)"
    if isinstance(data.get("model"), dict) and data["model"].get("checkpoint"):
        data["model"]["checkpoint"] = None  # "does not exist" on another host: the shape beside it is the model's
    try:
        cfg = config_from_mapping(data, f"GET {url}/v1/cent/config")
        priced = tco_figures(cfg, total_token_throughput)
    except ValueError as exc:
        return None, [f"tokens per dollar: n/a: the server's config could not be read here ({exc})"]
    return priced["tokens_per_tco"], price_notes(cfg, priced["tco"])


def price_notes(cfg: CentConfig, tco: float | None) -> list[str]:
    """What a reader of a replay's tokens per dollar (`tco_figures`, `tco` its cost) should know of
    their price: CENT devices changed in a way their TCO does not follow while device.tco_per_device is
    unset (`timing.energy.tco_note`), or a GPU kind without a cost. [] when neither. `cent bench
    compare`'s notes (each side's) and `cent bench run`'s."""
    if cfg.on_gpus:
        return [] if tco is not None else [
            f"tokens per dollar: {cfg.gpu.kind} has no cost in the CENT artifact's TCO convention; "
            "--set gpu.tco_per_gpu=UNITS gives it one (an A100's is 0.44, 1.76 per 4)"]
    from cent_serve.timing.energy import tco_note, unpriced_device_changes
    changes = unpriced_device_changes(cfg.device)
    return [tco_note(changes)] if changes else []


def kind_notes(cfg: CentConfig) -> list[str]:
    """On a GPU kind of one's own (gpu.custom), the line saying what it borrows from the A100 SXM4
    (`gpu.kinds.borrowed_note`): its figures are the user's, the efficiency constants it does not give and the
    host's times left unset calibrated on another GPU.
    [] otherwise (a shipped kind's borrowing is logged by every command that runs it). `cent bench run`'s,
    `cent bench compare`'s and `cent bench sweep`'s notes."""
    if not (cfg.on_gpus and cfg.gpu.is_custom):
        return []
    return [cfg.gpu.borrowed_note]


def compare_table(cent: dict, gpu: dict) -> list[dict]:
    """compare.json's `table`: a row per figure of `ROWS` (`metric`, `unit`, `cent`, `gpu`,
    `cent_over_gpu`, `better`: which way is better) from two sides' `side_figures` (or compare.json's
    `cent` and `gpu`); a side without their figures is refused (it made a table of Nones)."""
    for name, side in (("cent", cent), ("gpu", gpu)):
        missing = [key for key, *_ in ROWS if key not in OPTIONAL_ROWS] if not isinstance(side, dict) else \
            [key for key, *_ in ROWS if key not in side and key not in OPTIONAL_ROWS]
        if missing:
            lacks = "" if not isinstance(side, dict) else \
                f"it lacks {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}: "
            raise wrong("compare_table(cent, gpu)", name, side, f"{lacks}give each side's side_figures(cfg, result) "
                        "(or compare.json's 'cent' and 'gpu')")
    table = []
    for key, label, unit, better in ROWS:
        c, g = cent.get(key), gpu.get(key)
        ratio = c / g if isinstance(c, (int, float)) and isinstance(g, (int, float)) and g else None
        table.append(dict(metric=label, unit=unit, cent=c, gpu=g, cent_over_gpu=ratio, better=better))
    return table


def _dev(d: dict) -> str:
    return f"r{d.get('replica', 0)}d{d['device_id']}"


def client_wall_stats(client: dict) -> dict:
    """The HTTP client's own wall-clock TTFT and E2E (what an unmodified benchmark would see)."""
    per = client["per_request"].values()
    out = {}
    out.update(_stats("client_wall_ttft", [1e3 * w["ttft_s"] for w in per if w["ttft_s"] is not None]))
    out.update(_stats("client_wall_e2el", [1e3 * w["e2e_s"] for w in per if w["e2e_s"] is not None]))
    return out


EXAMPLE_CHARS = 110
"""The terminal table cuts example failure messages to this many characters (summary.json has them whole)."""


def short_example(message: str) -> str:
    """A failure's example message as the terminal tables print it (`EXAMPLE_CHARS` at most)."""
    return message if len(message) <= EXAMPLE_CHARS else message[:EXAMPLE_CHARS - 3] + "..."


def reasons_text(reasons: dict[str, dict], examples: bool = False) -> str:
    """`failure_reasons` on one line, `context_exceeded 1, aborted 2`; with `examples` each
    reason's `short_example` too, `context_exceeded 1 (e.g. the prompt has ...)`, for a line
    that has no table under it."""
    return ", ".join(f"{k} {v['count']}" + (f" (e.g. {short_example(v['example'])})" if examples else "")
                     for k, v in reasons.items())


REPLAY_FIXES = {
    # the figures are of an overloaded system
    "queue_full": "the requests arrive faster than the server serves them; replay them slower (--time-scale "
                  "over 1, or a lower --rate) or on more capacity (more devices; cent-serve's "
                  "scheduler.max_waiting queues more)",
    # the engine's example says to shorten the prompt or lower max_tokens, which a replay does with its flags
    "context_exceeded": "clip the requests' lengths with --max-prompt-tokens and --max-output-tokens (a prompt "
                        "plus its output within the model's context, model.max_seq_len)",
}
"""What a replay's flags do about a failure reason, for the tables under its examples."""


def replay_fixes(reasons: dict) -> list[str]:
    """`reason: fix` for each reason of `reasons` (failure_reasons, or their names) `REPLAY_FIXES` has."""
    return [f"{reason}: {fix}" for reason, fix in REPLAY_FIXES.items() if reason in reasons]


def slos_text(slos_ms: dict) -> str:
    """`ttft <= 5000 ms, tpot <= 100 ms`: the --goodput SLOs."""
    return ", ".join(f"{k} <= {v:g} ms" for k, v in slos_ms.items())


def print_table(summary: dict, title: str | None = None) -> None:
    """The replay's figures; `title` (what ran: model, hardware, mapping, trace) first."""
    if title:
        print(title)
    print(f"{'completed':<24}{summary['completed']:>12}   failed {summary['failed']}")
    for reason, f in summary.get("failure_reasons", {}).items():
        print(f"  {reason:<22}{f['count']:>12}   e.g. {short_example(f['example'])}")
    for line in replay_fixes(summary.get("failure_reasons", {})):
        print(f"  {'':<22}{'':>12}   {line}")
    if summary.get("raised_to_one_token"):
        print(f"{'raised to 1 token':<24}{summary['raised_to_one_token']:>12}   requests with 0 prompt or output "
              "tokens in the trace, sent with 1")
    print(f"{'duration (sim s)':<24}{summary['duration']:>12.3f}   wall {summary['wall_s']:.1f} s")
    print(f"{'request throughput':<24}{summary['request_throughput']:>12.3f} req/s")
    print(f"{'output throughput':<24}{summary['output_throughput']:>12.1f} tok/s")
    print(f"{'total token throughput':<24}{summary['total_token_throughput']:>12.1f} tok/s")
    if "request_goodput" in summary:
        print(f"{'request goodput':<24}{summary['request_goodput']:>12.3f} req/s "
              f"({100 * summary['slo_attainment']:.1f}% of all requests meet {slos_text(summary['goodput_slos_ms'])})")
    per_out = summary["energy_per_output_token_mj"]
    print(f"{'energy per token':<24}{summary['energy_per_token_mj']:>12.3f} mJ (prompt + output tokens"
          + ("" if per_out is None else f"; {per_out:.3f} mJ an output token") + ")")
    energy_j = summary["energy_j"]  # 4 digits below 1 kJ; whole joules above, never 1.583e+04
    print(f"{'energy by term':<24}{energy_j:>12{',.0f' if energy_j >= 1e3 else '.4g'}} J: {terms_text(summary)}")
    if "tokens_per_tco" in summary:  # `tco_figures`, as bench compare's row; null: a note below says why
        tpd = summary["tokens_per_tco"]
        print(f"{'tokens per dollar':<24}" + (f"{'-':>12}   (no price: see the note below)" if tpd is None else
                                             f"{tpd:>12,.1f} tok/s per TCO unit (the CENT artifact's TCO convention)"))
    print(f"{'':<10}{'mean':>13}{'median':>13}{'p90':>13}{'p99':>13}  (ms, simulated)")
    for m in ("ttft", "tpot", "itl", "e2el"):
        vals = [summary[f"{k}_{m}_ms"] for k in ("mean", "median", "p90", "p99")]
        print(f"{m:<10}" + "".join(f"{'-':>13}" if v is None else f" {v:>12.6g}" for v in vals))


def mapping_text(status: dict) -> str:
    """`pipeline pp 80 x tp 1, 27 devices used` (and the replicas when there are several)."""
    mp = status.get("mapping") or {}
    if not mp:
        return "mapping unknown (not a cent-serve server)"
    gpu = mp.get("mode") == "gpu"
    pp, tp, n = mp.get("pp"), mp.get("tp"), mp.get("devices_used")
    known = not gpu and isinstance(pp, int) and isinstance(tp, int)
    kind = parallelism(pp, tp) if known else mp.get("mode", "?")
    text = f"{kind} pp {pp} x tp {tp}, {n} {'GPU' if gpu else 'device'}{'' if n == 1 else 's'} used"
    if mp.get("replicas", 1) > 1:
        text += f" x {mp['replicas']} replicas"
    return text


def run_title(status: dict, summary: dict) -> str:
    """Two lines: model, devices and mapping (and what changed the config: `summary`'s `given`, as
    cent simulate's line says it); completed and failed requests by reason."""
    mp = status.get("mapping") or {}
    model = summary.get("model_label") or status.get("model") or summary.get("model", "?")
    devices = mp.get("devices", summary.get("devices", "?"))
    failed = summary.get("failed", 0)
    counts = reasons_text(summary.get("failure_reasons", {}))
    outcome = f"{summary.get('completed', 0)} completed, {failed} failed" + (f" ({counts})" if counts else "")
    given = f"; given: {summary['given']}" if summary.get("given") else ""
    return f"{model} on {hardware_text(status, devices)}: {mapping_text(status)}{given}\n{outcome}"


def _trace_name(trace: str) -> str:
    """A recorded trace (`bench.trace_record`) as a title names it: a file by its name, a shipped
    trace by its file's (`sample_conv.csv`)."""
    from cent_serve.bench import SHIPPED_TRACES

    if trace in SHIPPED_TRACES:
        return f"{trace}.csv"
    return Path(trace).name if trace != "synthetic" and Path(trace).is_file() else trace


def source_text(bench: dict) -> str:
    """What the requests came from, for a table's title: a trace's file name, with its generated
    arrivals (ShareGPT has no timestamps), or a synthetic load's arrivals and lengths."""
    trace = bench.get("trace") or "?"
    name = _trace_name(trace)
    if "arrivals" not in bench:
        return name
    arrivals = "Poisson" if bench["arrivals"] == "poisson" else f"gamma (burstiness {bench.get('burstiness'):g})"
    rate = bench.get("rate")  # None in a sweep: its rates are its own
    text = f"{name}, {arrivals} arrivals" + (f" at {rate:g} req/s" if rate is not None else "")
    if trace != "synthetic":
        return text
    if "lengths_from" in bench:
        return f"{text}, lengths from {_trace_name(bench['lengths_from'])}"
    return f"{text}, {bench.get('prompt_len')} prompt + {bench.get('output_len')} output tokens"


def hardware_text(status: dict, devices) -> str:
    """`32 CENT devices` or `4 x a100-80gb GPUs`."""
    hw = status.get("hardware", "cent")
    return f"{devices} CENT devices" if hw == "cent" else f"{devices} x {hw.split(':')[1]} GPUs"
