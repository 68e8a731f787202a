"""What a replay yields (`cent bench run`, in process or over HTTP): a `RequestRecord` a request (a
row of requests.csv), a `Sample` of the queues a round, and the `BenchResult` holding them with the
devices' counters; `report` computes the figures from them, `results` writes them.
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from cent_serve.bench.request import Request as TraceRequest
from cent_serve.request import Request, RequestRefused
from cent_serve.scheduler import QueueFull


DEVICE_FAULT = "device_fault"
"""`failure_reason` of a request that ended with finish_reason "error": an emulated device or the
switch failed under it. The other reasons are the engine's refusals (`REFUSAL_REASONS`)."""


@dataclass
class RequestRecord:
    """One row of requests.csv: simulated times in seconds from the trace start."""

    request_id: str
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int = 0
    scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    finish_reason: str = ""
    energy_mj: float = 0.0
    preemptions: int = 0
    error: str = ""
    token_times_s: Sequence[float] = field(default_factory=lambda: array("d"), repr=False)
    """When each output token came, in the record's times: an `array('d')` in the records a replay
    makes, 8 bytes a token where a list holds a 24-byte float object and its pointer (a replay keeps
    every request's until the end, for the ITLs and `--save-detailed`); a record built by hand may
    give a list."""
    failure_reason: str = ""
    """Why the request failed, "" when it did not: a `cent_serve.request.REFUSAL_REASONS` code,
    DEVICE_FAULT, or for HTTP runs what `http_client.failure_reason` maps the answer to."""
    trace_arrival_s: float | None = None
    """The arrival on the trace's own clock (`bench.request.Request.trace_arrival_s`): where the
    row came from, while `arrival_s` is the replay's."""

    @property
    def ok(self) -> bool:
        return self.finish_reason in ("stop", "length")

    @property
    def reason(self) -> str:
        """`failure_reason`, else one derived from `finish_reason` (records built by hand or by
        older code): "error" is a device fault; "" for a request that did not fail."""
        if self.ok:
            return ""
        if self.failure_reason:
            return self.failure_reason
        return DEVICE_FAULT if self.finish_reason == "error" else (self.finish_reason or "unknown")

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """vLLM's definition: (E2EL - TTFT) / (output tokens - 1), for outputs longer than one."""
        if self.first_token_s is None or self.finish_s is None or self.num_output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.num_output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]

    @classmethod
    def from_request(cls, req: Request, trace_arrival_s: float | None = None) -> "RequestRecord":
        return cls(req.request_id, req.arrival_s, len(req.prompt_ids), len(req.output_ids), req.scheduled_s,
                   req.first_token_s, req.finish_s, req.finish_reason or "", req.energy_j * 1e3,
                   req.num_preemptions, req.error or "", array("d", req.token_times_s),
                   DEVICE_FAULT if req.finish_reason == "error" else "", trace_arrival_s)

    @classmethod
    def refused(cls, request_id: str, tr: TraceRequest, exc: RequestRefused) -> "RequestRecord":
        """A request the engine would not take: finish_reason "rejected" (queue full, the API's
        429) or "invalid" (the API's 400), the refusal's reason code and message."""
        return cls(request_id, tr.arrival_s, max(1, tr.num_prompt_tokens),  # as sent (`ZeroTokens`)
                   finish_reason="rejected" if isinstance(exc, QueueFull) else "invalid", error=str(exc),
                   failure_reason=exc.reason, trace_arrival_s=tr.trace_arrival_s)


@dataclass
class Sample:
    """The engine after a round (for the time-series plots)."""

    time_s: float
    num_waiting: int
    num_running: int
    kv_usage: float


@dataclass
class BenchResult:
    records: list[RequestRecord]
    samples: list[Sample]
    devices: list[dict]
    """Per-device counters at the end (busy seconds per resource, energy, ...)."""
    clock_s: float
    wall_s: float
    status: dict
    raised_to_one_token: int = 0
    """Requests the trace gave 0 prompt or 0 output tokens, sent with 1 (see `ZeroTokens`)."""
    interrupted: bool = False
    """Ctrl-C stopped the replay: `records` are the requests that ended before it (partial)."""
    energy_terms_j: dict[str, float] | None = None
    """The devices' joules by term (`Engine.energy_terms_j`), charged where the requests' energy is:
    they add up to the records' when every request ended; None on GPUs (and for a --url run, from a
    server whose status has none: `http_client.replay_http`)."""

    def __repr__(self) -> str:
        """Counts, not every record (a 200-request replay's records and samples are ~130 kB of text,
        which a notebook would print whole)."""
        ok = sum(r.ok for r in self.records)
        return (f"BenchResult({len(self.records)} records: {ok} completed, {len(self.records) - ok} failed; "
                f"{len(self.samples)} samples, {len(self.devices)} devices; clock_s={self.clock_s:.6g}, "
                f"wall_s={self.wall_s:.3g}" + (", interrupted" if self.interrupted else "") + ")")
