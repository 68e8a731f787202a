"""Prometheus metrics: vLLM's names, labels and series (docs/serving.md) plus `cent:` ones. Latencies
are simulated seconds. Every series has vLLM's labels `model_name` and `engine` (one engine: "0"),
but `vllm:cache_config_info`, whose labels are the cache's (and `engine`), as vLLM's.

Each app has its own registry, so several servers (tests) can live in one process.

Loss accounting: every generation request (POST /v1/completions or /v1/chat/completions)
is counted once in `cent:requests_total{outcome, reason}` when it ends (`OUTCOMES`), so
the counts add up to the requests received. `vllm:request_success_total{finished_reason}`
counts the engine's sequences (one per choice) instead, aborted and failed ones included.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from cent_serve.executor.base import busy_fraction
from cent_serve.request import Request
from cent_serve.serving import PACE_LATE_FRAC

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                     7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
"""Histogram buckets (seconds), vLLM's range stretched down for PIM's millisecond tokens."""
OUTCOMES = {
    "completed": ("stop", "length"),  # every choice finished; `length` if any hit its limit
    "failed": ("engine_error", "internal_error"),  # 5xx: the devices failed a round, or a bug
    "aborted": ("client_disconnect", "server_abort"),  # the client left, or the engine stopped
    "rejected": ("queue_full", "invalid_request", "unauthorized", "too_large"),  # 429, 400/404/415, 401, 413
}
"""`cent:requests_total` outcomes and the reasons each can carry."""
COMPLETED = ("stop", "length")
"""The finish reasons of a sequence that completed: the whole-request histograms observe these only."""
FINISH_REASONS = ("stop", "length", "abort", "error")
"""The engine's finish reasons (`vllm:request_success_total{finished_reason}`; vLLM's own, less its
`repetition`, which this engine never gives)."""
ITL_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                 1.0, 2.5, 5.0)
VLLM_TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0)
"""`vllm:time_per_output_token_seconds`'s buckets as vLLM's (vllm/v1/metrics/loggers.py), so a dashboard's
quantiles over it match vLLM's; the same gaps at PIM's resolution are `vllm:inter_token_latency_seconds`."""
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
"""`vllm:iteration_tokens_total`'s buckets, vLLM's."""
N_BUCKETS = (1, 2, 5, 10, 20)
"""`vllm:request_params_n`'s buckets, vLLM's."""
PACE_LATE_BUCKETS = (0.01, 0.025, 0.05, PACE_LATE_FRAC, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 100.0)
"""`cent:pace_late_fraction`'s buckets: a sequence's lateness as a fraction of its paced latency, one
bound at PACE_LATE_FRAC, so the share of late sequences is one bucket's (a sequence on time observes 0)."""
ENGINE = "0"
"""The `engine` label: vLLM's data-parallel engine index; this server has one engine (its
data-parallel replicas share one scheduler)."""


def buckets_1_2_5(most: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `most`: vLLM's token-count buckets for a context of `most`."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > most:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


LABELS = ["model_name", "engine"]


class _Totals:
    """The engine's monotone totals as Prometheus counters, read from the latest status snapshot
    (counters of prometheus_client can only be incremented; these are kept by the engine), and
    the bytes each replica's interconnect has moved (`cent:fabric_bytes_total`)."""

    COUNTERS = (("vllm:prompt_tokens", "prompt_tokens", "Prefill tokens processed: a sequence's prompt once its "
                 "first token is made, as vLLM counts it."),
                ("vllm:generation_tokens", "generation_tokens", "Tokens generated, as each round makes them."),
                ("cent:energy_joules", "energy_j", "Energy charged to requests' steps on the devices (simulated)."),
                ("vllm:num_preemptions", "num_preemptions", "Sequences preempted for KV space."),
                ("cent:preemptions", "num_preemptions", "Sequences preempted for KV space (vllm:num_preemptions_total's "
                 "older name here)."),
                ("cent:rounds", "num_rounds", "Engine rounds run."),
                ("cent:recoveries", "num_recoveries", "Replicas re-created after a device fault."),
                ("cent:fault_retries", "num_fault_retries", "Sequences queued again after their replica's devices "
                 "died, to start over or be recomputed with their output so far (not preemptions)."),
                ("cent:pace_late_requests", "pace_late_requests", "Paced clock: requests a token of which reached its "
                 f"client more than {PACE_LATE_FRAC:.0%} of its paced latency late (a client's timing of it is off by "
                 "that much)."))

    FABRIC = ("cent:fabric_bytes", "Bytes on the interconnect: the CXL switch (CENT devices), the tensor-parallel "
              "all-reduces over NVLink or PCIe (modelled GPUs).")

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.status: dict = {}
        self.fabrics: list[dict] = []

    def describe(self):
        return ([CounterMetricFamily(name, doc, labels=LABELS) for name, _, doc in self.COUNTERS]
                + [CounterMetricFamily(*self.FABRIC, labels=LABELS + ["replica"])])

    def collect(self):
        for name, key, doc in self.COUNTERS:
            family = CounterMetricFamily(name, doc, labels=LABELS)
            family.add_metric([self.model_name, ENGINE], float(self.status.get(key, 0)))
            yield family
        family = CounterMetricFamily(*self.FABRIC, labels=LABELS + ["replica"])
        for f in self.fabrics:
            family.add_metric([self.model_name, ENGINE, str(f["replica"])], float(f.get("wire_bytes", 0)))
        yield family


class _WithoutCreated:
    """A registry's families without their `*_created` samples: vLLM's /metrics has none (its
    multiprocess collector gives none), and Prometheus tracks resets itself. (prometheus_client's
    `disable_created_metrics` would drop them from every registry in the process.)"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.samples = [x for x in family.samples if not x.name.endswith("_created")]
            yield family


class Metrics:
    def __init__(self, model_name: str, max_model_len: int = 8192, cache_info: dict | None = None) -> None:
        """`max_model_len` sets the token-count buckets (vLLM's 1-2-5 series up to the context);
        `cache_info` the labels of `vllm:cache_config_info` (the KV cache's shape)."""
        self.registry = r = CollectorRegistry()
        lab = LABELS
        self.key = key = (model_name, ENGINE)

        def hist(name, doc, buckets=LATENCY_BUCKETS_S):
            return Histogram(name, doc, lab, buckets=buckets, registry=r)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token (simulated).")
        self.itl = hist("vllm:inter_token_latency_seconds", "Inter-token latency (simulated).", ITL_BUCKETS_S)
        self.tpot_iter = hist("vllm:time_per_output_token_seconds", "Inter-token latency with vLLM's buckets "
                              "(simulated; vLLM's older name for the gaps).", VLLM_TPOT_BUCKETS_S)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "End-to-end request latency (simulated).")
        self.queue = hist("vllm:request_queue_time_seconds", "Time in the waiting queue (simulated).")
        self.prefill = hist("vllm:request_prefill_time_seconds", "Prefill time (simulated).")
        self.decode = hist("vllm:request_decode_time_seconds", "Decode time (simulated).")
        self.inference = hist("vllm:request_inference_time_seconds", "First scheduled to last token (simulated).")
        self.prefill_per_token = hist("vllm:time_per_prefill_token_request_seconds",
                                      "Per request, prefill time / prompt tokens (simulated).", ITL_BUCKETS_S)
        self.tpot = hist("vllm:request_time_per_output_token_seconds",
                         "Per request, (last token - first token) / (tokens - 1) (simulated).", ITL_BUCKETS_S)
        counts = buckets_1_2_5(max_model_len)
        self.prompt_len = hist("vllm:request_prompt_tokens", "Prompt tokens per sequence.", counts)
        self.output_len = hist("vllm:request_generation_tokens", "Generated tokens per sequence.", counts)
        self.max_tokens = hist("vllm:request_params_max_tokens", "Per sequence, its max_tokens.", counts)
        self.max_output_len = hist("vllm:request_max_num_generation_tokens", "Per prompt, the most tokens one of its "
                                   "n choices generated.", counts)
        self.n = hist("vllm:request_params_n", "Per prompt, its n.", N_BUCKETS)
        self.round_tokens = hist("vllm:iteration_tokens_total", "Tokens per engine round: prompts whose first "
                                 "token it made, and tokens generated.", ITERATION_TOKEN_BUCKETS)
        self.pace_late = hist("cent:pace_late_fraction", "Paced clock: per sequence given a token, the most its "
                              "tokens reached its client late, as a fraction of its paced latency (0: on time; "
                              f"over {PACE_LATE_FRAC:g}: counted in cent:pace_late_requests_total).", PACE_LATE_BUCKETS)
        self.running = Gauge("vllm:num_requests_running", "Requests on the devices.", lab, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", lab, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = 100%).", lab, registry=r)
        info = {k: str(v) for k, v in (cache_info or {}).items()}
        self.cache_info = Gauge("vllm:cache_config_info", "The KV cache's configuration (labels; the value is 1).",
                                list(info) + ["engine"], registry=r)
        self.cache_info.labels(*info.values(), ENGINE).set(1)
        self.success = Counter("vllm:request_success", "Finished requests.", lab + ["finished_reason"],
                               registry=r)
        self.clock = Gauge("cent:simulated_clock_seconds", "The engine's simulated clock.", lab, registry=r)
        self.snapshot_age = Gauge("cent:snapshot_age_seconds", "Wall seconds since the engine's gauges here were "
                                  "read: 0, or while a round holds the engine thread, the last reading's age; while Ray "
                                  "devices are slow to answer a stats call, their figures' age.",
                                  lab, registry=r)
        self.busy = Gauge("cent:device_busy_fraction", "Busiest resource's busy time / the simulated run (to the "
                          "device's last work when later than the clock).",
                          lab + ["device", "replica"], registry=r)
        self.totals = _Totals(model_name)
        r.register(self.totals)
        self.pace_lag = Gauge("cent:pace_lag_seconds", "Paced clock: wall seconds the engine runs behind its "
                              "schedule (how late tokens reach clients; 0 on schedule).", lab, registry=r)
        self.pace_late_max = Gauge("cent:pace_late_fraction_max", "Paced clock: the most a request's token reached "
                                   "its client late, as a fraction of its paced latency (kept when idle).", lab, registry=r)
        self.requests = Counter("cent:requests", "Generation requests by how they ended (one count each).",
                                lab + ["outcome", "reason"], registry=r)
        self.expert_tokens = Gauge("cent:expert_tokens", "Mixture of experts: tokens routed to each expert, over "
                                   "all blocks (the time model's router).", lab + ["expert"], registry=r)
        self.expert_busy = Gauge("cent:expert_busy_fraction", "Mixture of experts: each expert's bank time / "
                                 "(simulated clock x blocks x replicas).", lab + ["expert"], registry=r)
        # every series a dashboard or an alert reads exists from the start, at 0, as vLLM's do (a
        # series born at its first increment loses that increment to rate() and increase())
        for metric in (self.ttft, self.itl, self.tpot_iter, self.e2e, self.queue, self.prefill, self.decode,
                       self.inference, self.prefill_per_token, self.tpot, self.prompt_len, self.output_len,
                       self.max_tokens, self.max_output_len, self.n, self.round_tokens, self.pace_late):
            metric.labels(*key)
        for reason in FINISH_REASONS:
            self.success.labels(*key, reason)
        for outcome, reasons in OUTCOMES.items():
            for reason in reasons:
                self.requests.labels(*key, outcome, reason)
        # the series the engine thread observes for every sequence each round, looked up once
        self.ttft_k, self.itl_k, self.tpot_iter_k = (m.labels(*key) for m in (self.ttft, self.itl, self.tpot_iter))

    def count_request(self, outcome: str, reason: str) -> None:
        """Record how one generation request ended (any thread)."""
        assert reason in OUTCOMES.get(outcome, ()), (outcome, reason)
        self.requests.labels(*self.key, outcome, reason).inc()

    def observe_round(self, tokens: int) -> None:
        """An engine round made `tokens` (engine thread): prompts whose first token it made, and the
        tokens it generated, as vLLM counts an iteration's."""
        self.round_tokens.labels(*self.key).observe(tokens)

    def observe_pace_late(self, frac: float) -> None:
        """Paced clock: a sequence given a token ended, its tokens at most `frac` of its paced latency
        late (engine thread, `EngineLoop.on_late`): completed or not, as cent:pace_late_requests_total
        counts it."""
        self.pace_late.labels(*self.key).observe(frac)

    def observe_prompts(self, n: int, generated: list[int]) -> None:
        """A request's prompts whose choices all came back: per prompt its `n` and the most tokens one
        of its choices generated (`generated`: each choice's count, the prompts' n at a time)."""
        for i in range(0, len(generated), n):
            self.n.labels(*self.key).observe(n)
            self.max_output_len.labels(*self.key).observe(max(generated[i:i + n]))

    def observe_tokens(self, req: Request, before: int) -> None:
        """A sequence's tokens from index `before` on were just made (engine thread): its TTFT with
        its first token, the gaps to the new ones, as vLLM observes them each iteration."""
        times = req.token_times_s
        if before == 0:
            self.ttft_k.observe(times[0] - req.arrival_s)
        itl, tpot = self.itl_k, self.tpot_iter_k
        for i in range(max(before, 1), len(times)):
            itl.observe(times[i] - times[i - 1])
            tpot.observe(times[i] - times[i - 1])

    def observe_finished(self, req: Request) -> None:
        """Called once per ended sequence (engine thread): its finish reason, and for a completed one the
        histograms of whole-request latencies and sizes (TTFT and the inter-token gaps are observed
        as tokens come, `observe_tokens`; the token counters are the engine's totals, `_Totals`)."""
        k = self.key
        t = req.timing()
        self.success.labels(*k, req.finish_reason or "unknown").inc()
        if req.finish_reason not in COMPLETED:  # an aborted or failed sequence: counted above only, as a
            return  # benchmark client's figures count the requests that completed
        self.prompt_len.labels(*k).observe(len(req.prompt_ids))
        self.output_len.labels(*k).observe(len(req.output_ids))
        self.max_tokens.labels(*k).observe(req.params.max_tokens)
        if req.scheduled_s is not None:
            self.queue.labels(*k).observe(max(0.0, req.scheduled_s - req.arrival_s))
            if req.finish_s is not None:
                self.inference.labels(*k).observe(max(0.0, req.finish_s - req.scheduled_s))
        if t["ttft_s"] is not None:
            prefill = max(0.0, req.first_token_s - (req.scheduled_s or req.arrival_s))
            self.prefill.labels(*k).observe(prefill)
            self.prefill_per_token.labels(*k).observe(prefill / len(req.prompt_ids))
        if t["e2e_s"] is not None:
            self.e2e.labels(*k).observe(t["e2e_s"])
        if req.first_token_s is not None and req.finish_s is not None:
            self.decode.labels(*k).observe(max(0.0, req.finish_s - req.first_token_s))
        if t["tpot_s"] is not None:
            self.tpot.labels(*k).observe(t["tpot_s"])
        elif req.first_token_s is not None:  # one token: 0, as vLLM observes it (its count is e2e's)
            self.tpot.labels(*k).observe(0.0)

    def render(self, status: dict, devices: list[dict], fabrics: list[dict]) -> bytes:
        """Refresh the gauges from an engine snapshot and render the text format."""
        k = self.key
        self.running.labels(*k).set(status["num_running"])
        self.waiting.labels(*k).set(status["num_waiting"])
        self.kv_usage.labels(*k).set(status["kv_usage"])
        self.clock.labels(*k).set(status["clock_s"])
        self.snapshot_age.labels(*k).set(status.get("snapshot_age_s", 0.0))
        self.totals.status = status
        self.pace_lag.labels(*k).set(status.get("pace_lag_s", 0.0))
        self.pace_late_max.labels(*k).set(status.get("pace_late_frac_max", 0.0))
        for d in devices:
            self.busy.labels(*k, str(d["device_id"]), str(d["replica"])).set(busy_fraction(d, status["clock_s"]))
        self.totals.fabrics = fabrics
        experts = status.get("experts")
        if experts:
            for e, n in enumerate(experts["tokens"]):
                self.expert_tokens.labels(*k, str(e)).set(n)
            for e, frac in enumerate(experts.get("busy_fraction", ())):
                self.expert_busy.labels(*k, str(e)).set(frac)
        return generate_latest(_WithoutCreated(self.registry))
