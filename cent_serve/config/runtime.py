"""How a run uses the hardware: the parallel mapping, the scheduler and the server."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cent_serve.config.checks import _check, _check_numbers


MAX_DEVICES = 1024
"""The most CENT devices a config may name (`parallel.num_devices`)."""
PEER_WAIT_MARGIN = 0.1
"""`ServerConfig.peer_wait_s`'s margin over `round_timeout_s`, as a share of it: a device's wait
begins after the host sent the round, so any margin puts the host first; this one leaves room for a
host slow to read its link (a loaded machine)."""
PEER_WAIT_MARGIN_S = 1.0
"""And in seconds, on top: room for a small `round_timeout_s` (a test's) on a busy host."""


@dataclass
class ParallelConfig:
    """How the model maps onto devices (docs/hardware_model.md section 3).

    `pp` is the number of pipeline stages and `tp` the devices per stage.
    `pp == model.num_layers` with `tp == 1` is CENT's pure pipeline (several
    blocks per device, each on its own channel group); otherwise each stage
    spans all channels of `tp` devices and `pp * tp` must not exceed
    `num_devices`. `pp = 0` picks the pure pipeline.
    """

    num_devices: int = 8
    """Emulated CENT devices."""
    pp: int = 0
    """Pipeline stages; 0 = one stage per block (pure pipeline)."""
    tp: int = 1
    """Devices per stage (tensor parallel)."""
    lm_head: str = "unit"
    """Where the final norm and LM head run on the last stage's device(s): `unit`, a unit of its own
    that no stage waits for (the artifact charges its time per token and places it nowhere), or
    `last_stage`, on the last stage's channel group, which it holds: that stage's next blocks wait
    for it (docs/hardware_model.md section 4)."""

    _positive = frozenset({"num_devices", "tp"})
    """Numbers that must be > 0 (`_number_fix`)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.num_devices, int) and 1 <= self.num_devices <= MAX_DEVICES,
               "parallel.num_devices", self.num_devices, f"use an integer from 1 to {MAX_DEVICES}")
        _check(isinstance(self.tp, int) and 1 <= self.tp <= self.num_devices, "parallel.tp",
               self.tp, f"use an integer from 1 to parallel.num_devices={self.num_devices}")
        _check(isinstance(self.pp, int) and self.pp >= 0, "parallel.pp", self.pp,
               "use a non-negative integer (0 = one stage per block)")
        _check(self.lm_head in LM_HEAD_PLACEMENTS, "parallel.lm_head", self.lm_head,
               f"use one of {', '.join(LM_HEAD_PLACEMENTS)}")
        _check_numbers(self, "parallel")


LM_HEAD_PLACEMENTS = ("unit", "last_stage")
"""`parallel.lm_head`'s values."""


LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
"""What log-probabilities report (vLLM's `--logprobs-mode` names): the distribution the sampler
draws from (after allowed_token_ids, logit_bias, the penalties, temperature, min-p, top-k and top-p; the
default here), or the model's own (log-softmax of the logits; vLLM's default)."""
PLACEMENTS = ("spread", "pack", "replica")
"""`server.placement`'s values (the Ray executor's `place_devices`)."""


@dataclass
class SchedulerConfig:
    """Continuous batching in simulated time."""

    max_seqs_per_stage: int = 1
    """Sequences per pipeline micro-batch (the paper uses 1)."""
    max_waiting: int = 1024
    """Requests left waiting once every free lane place is taken, at most; past it requests are
    refused (the API answers 429). Requests queued again once admitted (their devices died, or
    preempted for KV space) are not counted (they take the first free places)."""
    prefill_chunk_tokens: int = 1
    """Prompt tokens per step: 1 = token by token like the paper; larger = chunked prefill. The
    banks' GEMVs make a k-token chunk cost about k one-token steps, so on CENT a chunk shortens
    nothing and holds its stage k steps long: in a deep pipeline TTFT and the other lanes' TPOT grow
    (llama2-70b pp 80, 16 prompts of 64 at once: TTFT p50 3.5 s -> 7.2 s at 64)."""
    seed: int = 0
    """Seed of the stand-in sampler and of sampling without an explicit seed."""
    kv_block_tokens: int = 16
    """Tokens per KV-cache block: the paging unit of the devices' caches and of the scheduler's
    admission (vLLM's block_size)."""
    num_kv_blocks_override: int | None = None
    """Admit at most this many KV blocks per replica, fewer than the devices hold (vLLM's
    num_gpu_blocks_override: for tests of preemption and admission)."""
    logprobs_mode: str = "processed_logprobs"
    """What `logprobs` report: `processed_logprobs`, the distribution tokens are drawn from (after
    allowed_token_ids, bad_words, logit_bias, the penalties, the min_tokens mask of the stop tokens,
    temperature, min-p, top-k and top-p), or `raw_logprobs`, the model's own (log-softmax of the logits;
    vLLM's default). Timing-only runs report the stand-in sampler's uniform one."""

    _positive = frozenset({"max_seqs_per_stage", "max_waiting", "prefill_chunk_tokens", "kv_block_tokens"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check(self.logprobs_mode in LOGPROBS_MODES, "scheduler.logprobs_mode", self.logprobs_mode,
               "use " + " or ".join(map(repr, LOGPROBS_MODES)))
        _check(self.kv_block_tokens >= 1, "scheduler.kv_block_tokens", self.kv_block_tokens,
               "use a positive number of tokens")
        _check(self.num_kv_blocks_override is None or self.num_kv_blocks_override >= 0,
               "scheduler.num_kv_blocks_override", self.num_kv_blocks_override, "use a number of blocks, or leave it unset")
        _check(self.max_seqs_per_stage >= 1, "scheduler.max_seqs_per_stage",
               self.max_seqs_per_stage, "use a positive integer")
        _check(self.max_waiting >= 1, "scheduler.max_waiting", self.max_waiting,
               "use a positive integer")
        _check(self.prefill_chunk_tokens >= 1, "scheduler.prefill_chunk_tokens",
               self.prefill_chunk_tokens, "use a positive integer")
        _check_numbers(self, "scheduler")


@dataclass
class ServerConfig:
    """The HTTP front end and where Ray runs."""

    host: str = "127.0.0.1"
    """Bind address (loopback by default)."""
    port: int = 8000
    """Listen port."""
    clock: str = "virtual"
    """`virtual`: run as fast as possible; `paced`: release tokens at their simulated time."""
    pace_factor: float = 1.0
    """In paced mode, wall seconds per simulated second."""
    ray_address: str | None = None
    """Existing Ray cluster to join (None = start a local Ray)."""
    api_key: str | None = field(default=None, repr=False)
    """Require `Authorization: Bearer <key>` on every path but `/health`, `/ping`, `/docs` and
    `/openapi.json` when set (`cent serve` reads `--api-key` or `CENT_API_KEY`); never printed,
    redacted by `config_to_dict`."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (bytes); larger ones get 413. 1 MiB holds a 4096-token
    prompt as text ~60 times over."""
    device_resource: str = "cent_device"
    """Ray resource a node advertises per emulated device it may host (deploy/README.md)."""
    placement: str = "spread"
    """On a cluster advertising `device_resource`: `spread` each replica's devices over the nodes (a
    node's loss then fails every replica with a device there), `pack` them (fill one node first), or
    `replica`: all of a replica's devices on one node, each replica on a node of its own while one
    has room, so a node's loss fails only its replicas (deploy/README.md, faults)."""
    placement_timeout_s: float = 30.0
    """Longest wait for the cluster to grant the devices before a clear error."""
    replica_retry_s: float = 10.0
    """Wall seconds between attempts to re-create a replica whose re-creation failed (a lost host left
    too little room, or the nodes with units are gone): how soon capacity that comes back is used,
    and the `Retry-After` of a 503 `no_replica` while no replica can serve. Each attempt asks the
    cluster for its units once, then waits for its placement up to `placement_timeout_s`."""
    cluster_lost_s: float = 30.0
    """On Ray: how long (wall seconds) the cluster's head, its GCS (or the raylet of the server's own
    node), may go unanswered before the server gives the cluster up: it fails the requests it holds with a 503 naming the cause and exits
    1, as vLLM's server exits when its engine dies (`/health` says 503 from the first unanswered
    second). Keep it below Ray's own limit (`gcs_rpc_server_reconnect_timeout_s`, 60 s), past which
    Ray's core ends the process itself (the server warns at start when it is not); a head back
    sooner (GCS fault tolerance) is served on."""
    round_timeout_s: float = 300.0
    """On Ray: longest wait (wall seconds) for a round's output. A device that never answers (its
    process alive, its links open: stopped, hung, on a node that stopped answering) fails its
    replica's requests in the round with 500 `device_fault` after this, and the replica is
    re-created; the other replicas serve on. Long rounds (a long prompt on a large model, emulated
    with full numerics) must fit in it. The devices' and the switch's own waits within a round (a
    rank's output, an exchange, a send to a peer that stops reading) follow it with a margin
    (`peer_wait_s`): raising it lets longer rounds run, lowering it makes the devices give up sooner.
    Between rounds it is the idle check's bar too: a device that leaves the check (or a stats call)
    unanswered this long is hung and its replica re-created (docs/serving.md). `/health` calls a round that runs longer than this (and 120 s) stalled, on the local executor too."""
    pin_replica_cpu: bool = True
    """Run each replica's device actors on one CPU of their node (replicas take the CPUs in turn).
    A round visits the devices one after the other, and on one CPU handing it on wakes no other
    processor (measured on a 2-core VM: about 20 us a hop instead of 50). Not applied where
    tensor-parallel ranks compute full numerics: those run at the same time; nor where the executor
    is built inside a Ray task or actor (a Ray program's fanned-out sweep), whose processes would
    each take the node's first CPU."""
    max_tokens_default: int | None = None
    """Tokens a request gets when it names no limit (clamped to the context the prompt leaves).
    None: OpenAI's defaults, 16 for completions and the rest of the context for chat (vLLM's
    `--override-generation-config '{"max_new_tokens": N}'` plays this role)."""
    allowed_origins: str = ""
    """Web origins whose pages may call the API from a browser (CORS), comma-separated
    (`http://localhost:3000,https://ui.example.com`), or `*` for any, vLLM's default. Empty: none,
    so a page on another origin cannot read the API (a server on loopback is not exposed to every
    site the user's browser visits). Cookies are never allowed (vLLM's default); the API key goes
    in the Authorization header, which preflights allow."""

    @property
    def peer_wait_s(self) -> float:
        """Longest a device, the switch or the host waits on a peer within a round (a rank's output, a
        tensor-parallel exchange, a send to a peer that stops reading) before it gives up:
        `round_timeout_s` with a margin over it, so that the host's round timeout, which names its
        field and re-creates the replica, decides first. Passed to the actors in their config."""
        return self.round_timeout_s * (1 + PEER_WAIT_MARGIN) + PEER_WAIT_MARGIN_S

    def origins(self) -> list[str]:
        """`allowed_origins` as the list of origins a browser sends in `Origin` (lowercase, no
        default port: the CORS check compares strings); empty: no CORS."""
        given = [o.strip() for o in self.allowed_origins.split(",") if o.strip()]
        return [web_origin(o) or o for o in given]

    _positive = frozenset({"pace_factor", "placement_timeout_s", "replica_retry_s", "cluster_lost_s", "round_timeout_s",
                           "max_body_bytes", "max_tokens_default"})
    """Numbers that must be > 0 (every other one >= 0: `_number_fix`)."""

    def __post_init__(self) -> None:
        _check(self.clock in ("virtual", "paced"), "server.clock", self.clock,
               "use 'virtual' or 'paced'")
        _check(self.max_tokens_default is None or self.max_tokens_default >= 1, "server.max_tokens_default",
               self.max_tokens_default, "use a positive number of tokens, or leave it unset")
        # no name is no resource: a cluster of several nodes would be refused for advertising '{"": N}'
        _check(bool(self.device_resource.strip()), "server.device_resource", self.device_resource,
               "name the Ray resource the nodes hosting devices advertise (ray start --resources), e.g. "
               "the default 'cent_device'")
        _check(self.placement in PLACEMENTS, "server.placement", self.placement,
               "use " + " or ".join(map(repr, PLACEMENTS)))
        _check(self.placement_timeout_s > 0, "server.placement_timeout_s", self.placement_timeout_s,
               "use a positive number of seconds")
        _check(self.max_body_bytes >= 1024, "server.max_body_bytes", self.max_body_bytes,
               "use at least 1024 bytes")
        _check(0 <= self.port <= 65535, "server.port", self.port, "use a port in 0..65535")
        origins = self.origins()
        _check(origins == ["*"] or all(web_origin(o) for o in origins), "server.allowed_origins",
               self.allowed_origins, "use '*' or comma-separated origins, each a scheme, a host and any port, "
               "nothing more: 'http://localhost:3000,https://ui.example.com'")
        _check(self.pace_factor > 0, "server.pace_factor", self.pace_factor,
               "use a positive factor")
        _check_numbers(self, "server")


_HOST = re.compile(r"[a-z0-9._~-]+|\[[0-9a-f:.]+\]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def web_origin(text: str) -> str | None:
    """`text` as a browser sends it in `Origin` (RFC 6454: scheme, host, a port unless the scheme's
    default; lowercase), or None if it is not an origin: user info, a path, a query, a fragment, a
    bad port. Any scheme (a browser extension's `chrome-extension://ID` too) and `null` pass."""
    if text == "null":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    if (not re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme) or not _HOST.fullmatch(host)
            or "@" in parts.netloc or any(c in text for c in "?#\\") or parts.path
            or text.endswith(":") or not text.lower().startswith(parts.scheme + "://")):
        return None
    shown = port is not None and port != _DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.scheme}://{host}" + (f":{port}" if shown else "")
