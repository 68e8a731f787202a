"""A bench run's files: summary.json, config.json, requests.csv (a row a request) and the PNG plots
(`plots`), as `cent bench run` writes them; `cent bench compare` writes each side's requests.csv alike.
The figures themselves are `report`'s."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from cent_serve.bench.records import BenchResult


CSV_FIELDS = ("request_id", "arrival_s", "trace_arrival_s", "scheduled_s", "first_token_s", "finish_s", "queued_s", "ttft_s",
              "tpot_s", "e2e_s", "num_prompt_tokens", "num_output_tokens", "finish_reason", "energy_mj",
              "preemptions", "failure_reason", "error")


DETAILED_FIELDS = ("itls_s",)
"""Columns `--save-detailed` adds (vLLM's benchmark saves its per-request `itls` with the same flag):
the gaps between a request's successive tokens, a JSON list in seconds, so the ITL figures can be
recomputed (a long trace's file grows by ~25 bytes a generated token, hence not by default)."""


def natural_key(text: str) -> tuple:
    """Sorts `text` with its runs of digits read as numbers: `trace-5` before `trace-10`."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part)


CSV_TIME_DECIMALS = 12
"""requests.csv's times are written to the picosecond: a float's last digits are the noise of its
arithmetic (a trace's 1.025094 s less its first arrival, 1.0, is 0.02509399999999995), not
information, and a picosecond is below any simulated step; summary.json is computed from the full values."""


def _seconds(x):
    return round(x, CSV_TIME_DECIMALS) if isinstance(x, float) else x


def write_requests_csv(path: Path, records: list, detailed: bool = False) -> None:
    """One row per request (CSV_FIELDS, then DETAILED_FIELDS when `detailed`), in arrival order; equal
    arrivals in their ids' natural order (`trace-5` before `trace-10`)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # not the csv module's \r\n: cut and awk read the lines
        w.writerow(CSV_FIELDS + (DETAILED_FIELDS if detailed else ()))
        for r in sorted(records, key=lambda r: (r.arrival_s, natural_key(r.request_id))):
            queued = None if r.scheduled_s is None else r.scheduled_s - r.arrival_s
            row = [r.request_id, *map(_seconds, (r.arrival_s, r.trace_arrival_s, r.scheduled_s, r.first_token_s,
                                                 r.finish_s, queued, r.ttft_s, r.tpot_s, r.e2e_s)),
                   r.num_prompt_tokens, r.num_output_tokens, r.finish_reason,
                   r.energy_mj, r.preemptions, r.reason, r.error]
            w.writerow(row + [json.dumps(r.itls_s)] if detailed else row)


def write_results(out_dir: Path, result: BenchResult, summary: dict, config: dict, plots: bool = True,
                  detailed: bool = False) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    write_requests_csv(out_dir / "requests.csv", result.records, detailed)
    if plots:
        from cent_serve.bench.plots import plot_all  # matplotlib loads only for a run that draws

        plot_all(out_dir, result, summary)
