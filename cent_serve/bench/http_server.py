"""What `cent bench run --url` learns of the server before its replay starts: the server's root
(`server_root`), the model it serves and its context (`_probe`), whether it is cent-serve and its
clock (`_Server`, from `/v1/cent/status`), its config, and what its tokenizer puts before a prompt
(`_bos`, through `POST /tokenize`).
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

import httpx


def server_root(url: str) -> str:
    """The server's root, which the replay's paths (`/v1/completions`, `/tokenize`) follow: `url` without
    a trailing slash, nor a trailing `/v1`, the OpenAI client's `base_url` form that `cent serve` logs
    ("listening on http://HOST:PORT/v1"), so that URL copied to --url is the server it names."""
    root = url.rstrip("/")
    path = urllib.parse.urlsplit(root).path  # only the path's /v1: a host named v1 (http://v1) is the server's
    return root.removesuffix("/v1").rstrip("/") if path.endswith("/v1") else root


async def _probe(client: httpx.AsyncClient, url: str) -> tuple[str, int | None]:
    """The served model's id and context (`max_model_len`, as vLLM and cent-serve list it; None
    when the server does not say); ValueError naming `url` and the fix when nothing answers there."""
    try:
        r = await client.get("/v1/models")
    except httpx.UnsupportedProtocol:
        raise ValueError(f"--url {url!r} is invalid: give http://HOST:PORT, e.g. http://127.0.0.1:8000") from None
    except httpx.HTTPError as exc:
        raise ValueError(f"--url {url}: cannot connect ({type(exc).__name__}: {exc}): start `cent serve` "
                         "there or fix --url") from None
    try:
        model = r.json()["data"][0]
        context = model.get("max_model_len")
        return model["id"], context if isinstance(context, int) and not isinstance(context, bool) else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ValueError(f"--url {url}: GET /v1/models answered {r.status_code} without a model list: "
                         "point --url at an OpenAI-compatible server (e.g. `cent serve`): http://HOST:PORT, or its /v1") from None


@dataclass
class _Server:
    """What the replay needs to know of the server before it starts."""

    model: str
    status: dict
    """`/v1/cent/status` at the start ({} when the server is not cent-serve)."""
    max_model_len: int | None = None
    """The served model's context, when /v1/models says it."""
    bos: list[int] = field(default_factory=lambda: [1])
    """What the server's tokenizer puts before a prompt (`POST /tokenize`, as vLLM and cent-serve
    answer it: Llama 3's 128000, none for Qwen); the byte-level preset's BOS (1) when the server
    does not say."""
    config: dict | None = None
    """`/v1/cent/config`: the server's resolved config (None when it has none: another server)."""

    @property
    def cent(self) -> bool:
        return bool(self.status)

    @property
    def virtual(self) -> bool:
        return self.status.get("clock_mode") == "virtual"

    @property
    def offset(self) -> float:
        """Simulated seconds the server's clock stands at when the replay starts, trace time 0: where
        a request sent now arrives (`sim_now_s`: on the virtual clock the engine's clock or its last
        finish when later, so a replay does not start under the last round's work; on the paced one
        the wall clock's simulated time). 0 for a server without simulated times."""
        if not self.cent:
            return 0.0
        return self.status.get("sim_now_s", self.status.get("clock_s", 0.0))

    @property
    def pace(self) -> float:
        return self.status.get("pace_factor", 1.0)


async def _server(client: httpx.AsyncClient, url: str) -> _Server:
    model, context = await _probe(client, url)
    st = await client.get("/v1/cent/status")
    status = st.json() if st.status_code == 200 else {}
    config = None
    if status:
        got = await client.get("/v1/cent/config")
        config = got.json() if got.status_code == 200 else None  # a cent-serve from before it was served
    return _Server(model, status, context, await _bos(client, model), config=config)


async def _tokens(client: httpx.AsyncClient, model: str, prompt: str, special: bool) -> list[int] | None:
    """The server's `POST /tokenize` of `prompt` (None when it has none or answers something else)."""
    try:
        r = await client.post("/tokenize", json={"model": model, "prompt": prompt, "add_special_tokens": special})
        ids = r.json()["tokens"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
    return ids if ok else None


async def _bos(client: httpx.AsyncClient, model: str) -> list[int]:
    """The ids the server's tokenizer starts a prompt with: `/tokenize` of a text with and without the
    special tokens (vLLM's and cent-serve's `add_special_tokens`), what the first has before the
    second's ids. A server that answers both alike (it may ignore the flag) or not at all is asked
    for an empty text's ids (one at most: a BOS, or none); [1], the byte-level preset's BOS, when
    it has no `/tokenize`."""
    from cent_serve.model.tokenizer import START_PROBE, leading_special_ids

    with_special = await _tokens(client, model, START_PROBE, True)
    without = await _tokens(client, model, START_PROBE, False)
    if with_special is not None and without is not None and with_special != without:
        start = leading_special_ids(with_special, without)
        if start is not None:
            return start
    empty = await _tokens(client, model, "", True)
    return empty if empty is not None and len(empty) <= 1 else [1]
