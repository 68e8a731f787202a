"""Access: the API key guards every path but /health, /ping and the docs, never shows up in logs or saved configs,
and the server binds to loopback unless told otherwise."""
from __future__ import annotations

import http.client
import logging

import httpx
import pytest

import api.routes
from api.guard import bearer_ok
from api.server import Server
from cent_serve.config import ServerConfig, config_to_dict
from tests.serving.utils import body, outcomes, server_cfg

KEY = "sk-cent-test-7f3a9c1e55d0"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed():
    with Server(server_cfg(api_key=KEY), "local") as s:
        yield s


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/v1/cent/status"),
                                          ("GET", "/v1/cent/config"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                          ("POST", "/tokenize"), ("GET", "/no-such-path")])
def test_every_path_but_health_and_docs_needs_the_key(keyed, method, path):
    for headers in ({}, {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Bearer {KEY[:-1]}"},
                    {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.request(method, keyed.url + path, headers=headers, json=body())
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text
    r = httpx.request(method, keyed.url + path, headers=AUTH, json=body())
    assert r.status_code != 401 and r.status_code < 500, r.text


def test_the_served_config_redacts_the_key(keyed):
    """`/v1/cent/config` is the server's config as a results config.json records it: the key itself
    is not in it (a --url replay writes it to disk)."""
    r = httpx.get(keyed.url + "/v1/cent/config", headers=AUTH)
    assert r.status_code == 200 and KEY not in r.text
    assert r.json()["server"]["api_key"] not in (None, KEY)


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/docs/static/swagger-ui.css"])
def test_the_api_documentation_opens_without_the_key(keyed, path):
    """A browser sends no key: the docs page, its schema and its static files are open (they hold no
    data and run nothing), as the liveness probes are."""
    assert httpx.get(keyed.url + path).status_code == 200


def test_a_path_through_the_open_docs_reaches_nothing_else(keyed):
    """Sent raw (httpx would resolve the dots itself): a path under the docs' static files that climbs
    out to /metrics or a file is not served."""
    host, port = keyed.url.removeprefix("http://").split(":")
    for path in ("/docs/static/../../metrics", "/docs/static/%2e%2e/%2e%2e/metrics", "/docs/static/../../../etc/passwd"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path)
        r = conn.getresponse()
        text = r.read().decode()
        conn.close()
        assert r.status in (401, 404) and "cent:" not in text and "root:" not in text, (path, r.status, text[:200])


def test_health_is_open_and_the_right_key_is_served(keyed):
    assert httpx.get(keyed.url + "/health").json() == {"status": "ok"}
    r = httpx.post(keyed.url + "/v1/completions", json=body(), headers={"authorization": f"bearer {KEY}"})
    assert r.status_code == 200  # the scheme is case-insensitive, as HTTP auth schemes are
    assert "cent:requests_total" in httpx.get(keyed.url + "/metrics", headers=AUTH).text


def test_refused_generation_requests_are_counted(keyed):
    before = outcomes(keyed.url, AUTH).get(("rejected", "unauthorized"), 0)
    httpx.post(keyed.url + "/v1/completions", json=body())
    httpx.get(keyed.url + "/v1/models")  # not a generation request: not counted
    assert outcomes(keyed.url, AUTH)[("rejected", "unauthorized")] == before + 1


def test_a_wrong_method_on_a_generation_path_is_not_a_generation_request(keyed):
    """cent:requests_total counts generation requests: a GET, HEAD or PUT on /v1/completions
    (405, or 401 without the key) is not one, as GET /v1/nope (404) is not; a bad POST still counts."""
    before = outcomes(keyed.url, AUTH)
    for method in ("GET", "HEAD", "PUT"):
        for path in ("/v1/completions", "/v1/chat/completions"):
            assert httpx.request(method, keyed.url + path, headers=AUTH).status_code == 405
            assert httpx.request(method, keyed.url + path).status_code == 401
    assert httpx.post(keyed.url + "/v1/completions", json=body(max_tokens=-1), headers=AUTH).status_code == 400
    after = outcomes(keyed.url, AUTH)
    before[("rejected", "invalid_request")] = before.get(("rejected", "invalid_request"), 0) + 1
    assert after == before


def test_bearer_check():
    key = KEY.encode()
    assert bearer_ok([(b"authorization", b"Bearer " + key)], key)
    assert bearer_ok([(b"host", b"x"), (b"Authorization", b"BEARER " + key)], key)
    assert not bearer_ok([], key)
    assert not bearer_ok([(b"authorization", b"Bearer " + key[:-1])], key)
    assert not bearer_ok([(b"authorization", b"Bearer")], key)


def test_the_key_never_reaches_the_logs_or_saved_configs(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    cfg = server_cfg(api_key=KEY)
    with Server(cfg, "local") as s:
        httpx.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}-wrong"})
        httpx.post(s.url + "/v1/completions", json=body(), headers=AUTH)
    assert caplog.records and KEY not in caplog.text
    assert KEY not in repr(cfg) and KEY not in repr(cfg.server)
    assert config_to_dict(cfg)["server"]["api_key"] == "<redacted>"


def test_the_server_binds_to_loopback_by_default():
    assert ServerConfig().host == "127.0.0.1"
    with Server(server_cfg(), "local") as s:
        bound = {sock.getsockname()[0] for srv in s.server.servers for sock in srv.sockets}
    assert bound == {"127.0.0.1"}


def test_browsers_on_the_allowed_origins_may_call_the_api_and_no_others():
    """CORS (`server.allowed_origins`): a browser's preflight from an allowed origin passes without the
    key (browsers send none on it) and names the origin; the call itself still needs the key, and its
    401 is readable by the page; another origin gets no CORS header, nor does any origin by default."""
    page = "http://localhost:3000"
    preflight = {"Origin": page, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    # written as a user might: the browser sends it lowercase, without the default port
    with Server(server_cfg(api_key=KEY, allowed_origins="HTTP://LocalHost:3000, https://ui.example.com:443"),
                "local") as s:
        r = httpx.options(s.url + "/v1/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = httpx.post(s.url + "/v1/completions", json=body(), headers={"Origin": page, **AUTH})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert r.headers["access-control-expose-headers"] == "Retry-After"  # a page reads it on a 429
        r = httpx.post(s.url + "/v1/completions", json=body(), headers={"Origin": page})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == page
        assert httpx.options(s.url + "/v1/models", headers=dict(preflight, Origin="https://ui.example.com"),
                             ).headers["access-control-allow-origin"] == "https://ui.example.com"
        other = httpx.options(s.url + "/v1/completions", headers=dict(preflight, Origin="https://evil.example"))
        assert "access-control-allow-origin" not in other.headers
    with Server(server_cfg(), "local") as s:
        r = httpx.options(s.url + "/v1/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert r.status_code == 400 and r.json()["error"]["message"].endswith(f"--allowed-origins {page}")
        assert httpx.options(s.url + "/v1/completions").status_code == 405  # no preflight: the method's answer
        assert httpx.options(s.url + "/v1/completions", headers={"Origin": page}).status_code == 405
        r = httpx.options(s.url + "/v1/completions", headers=dict(preflight, Origin="null"))  # a page from a file
        assert r.status_code == 400 and "--allowed-origins null" not in r.text and "over http(s)" in r.text
        r = httpx.post(s.url + "/v1/completions", json=body(), headers={"Origin": page})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with Server(server_cfg(api_key=KEY), "local") as s:  # a preflight carries no key: the same hint, not a 401
        r = httpx.options(s.url + "/v1/completions", headers=preflight)
        assert r.status_code == 400 and r.json()["error"]["message"].endswith(f"--allowed-origins {page}")
        assert httpx.options(s.url + "/v1/completions").status_code == 401
    for junk in ("localhost:3000", "http://user@host", "http://a/b", "http://a?b", "http://host:99999", "*,http://a"):
        with pytest.raises(ValueError, match=r"server.allowed_origins='.*' is invalid: use '\*'"):
            ServerConfig(allowed_origins=junk)
    assert ServerConfig(allowed_origins="http://[::1]:3000,chrome-extension://abc,http://a:80").origins() == [
        "http://[::1]:3000", "chrome-extension://abc", "http://a"]


def test_a_bug_is_a_500_in_openai_json_that_pages_can_read_and_the_server_serves_on(monkeypatch, caplog):
    """An exception no handler takes (a bug) answers OpenAI's error JSON with the CORS headers (the
    last-resort handler outside the middleware had none), is logged with its traceback, is counted
    as failed/internal_error when it hit a generation request, and the next request is served."""
    page = "http://localhost:3000"

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    async def broken_in_a_task_group(*args, **kwargs):  # what anyio raises for a bug in a task
        raise ExceptionGroup("unhandled errors in a TaskGroup", [RuntimeError("a bug")])

    with Server(server_cfg(allowed_origins=page), "local") as s:
        monkeypatch.setattr(api.routes, "_snapshot", broken)
        monkeypatch.setattr(api.routes, "generate", broken_in_a_task_group)
        with caplog.at_level(logging.ERROR, logger="cent.server"):
            for method, path in (("GET", "/v1/cent/status"), ("POST", "/v1/completions")):
                r = httpx.request(method, s.url + path, json=body(), headers={"Origin": page})
                assert r.status_code == 500 and r.headers["access-control-allow-origin"] == page, r.text
                assert r.json()["error"] == {"message": "internal error: RuntimeError", "type": "server_error",
                                             "param": None, "code": 500, "cent": {"code": None}}
        assert [rec.exc_info[0] for rec in caplog.records if "internal error" in rec.getMessage()] == [
            RuntimeError, ExceptionGroup]
        monkeypatch.undo()
        assert outcomes(s.url)[("failed", "internal_error")] == 1
        r = httpx.post(s.url + "/v1/completions", json=body(), headers={"Origin": page})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
