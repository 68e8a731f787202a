"""The OpenAI-compatible HTTP front end (docs/serving.md): `create_app` wires one app from the
engine loop and the metrics. The parts live by concern:

- api/guard.py: the `Guard` middleware (API key, body size and encoding) before any handler;
- api/context.py: `ApiContext`, the state handlers share (a FastAPI dependency), and helpers;
- api/generate.py: the one generation path (check, queue all choices or none, stream or collect);
- api/routes.py: the endpoints, completions and chat as two shapes of that path;
- api/errors.py: OpenAI's error JSON (the `Faults` middleware: a bug's 500), and the one count per
  request in `cent:requests_total`.

Every error is OpenAI's error JSON. With an API key every path but `/health`, `/ping` and the API's
documentation (`/docs`, `/openapi.json`) needs it, `/metrics` included (Prometheus sends it with
`authorization: {credentials: ...}`)."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.context import MAX_CHARS_PER_TOKEN, ApiContext
from api.errors import Faults, install_error_handlers
from api.generate import DISCONNECT_POLL_S, RETRY_AFTER_S
from api.guard import Guard
from api.metrics import Metrics
from api.protocol import DEFAULT_MAX_TOKENS
from api.routes import router
from cent_serve import __version__
from cent_serve.serving import EngineLoop

__all__ = ["create_app", "DEFAULT_MAX_TOKENS", "DISCONNECT_POLL_S", "MAX_CHARS_PER_TOKEN", "RETRY_AFTER_S"]
# the constants are re-exported: they were defined here, and tests and clients import them from here


def _serve_docs_offline(app: FastAPI) -> None:
    """`/docs`: Swagger UI from the `swagger-ui-bundle` package, not a CDN (the server may run with
    no network). The schema itself is `/openapi.json`."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cent-serve API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")


def create_app(loop: EngineLoop, metrics: Metrics, api_key: str | None = None,
               max_body_bytes: int = 1 << 20, allowed_origins: list[str] = ()) -> FastAPI:
    """The app serving `loop`'s engine, counting into `metrics`. `api_key`: required as a bearer
    token on every path but /health, /ping and the docs (None: open); bodies over `max_body_bytes` get 413;
    browsers on `allowed_origins` (`server.allowed_origins`) may call it."""
    app = FastAPI(title="cent-serve", version=__version__, docs_url=None, redoc_url=None)
    _serve_docs_offline(app)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes,
                       on_count=metrics.count_request)
    app.add_middleware(Faults)  # outside the guard, inside CORS: a bug's 500 is OpenAI's JSON, readable by pages
    if allowed_origins:  # added last, so outermost: a preflight needs no key, a 401 or 413 is readable
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False, expose_headers=["Retry-After"])
    app.state.loop, app.state.metrics = loop, metrics  # api/errors.py counts through app.state.metrics
    app.state.ctx = ApiContext.build(loop, metrics)  # what `api_context` hands the handlers
    install_error_handlers(app, router)
    app.include_router(router)
    _document_schema_errors_as_400(app)
    return app


def _document_schema_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents a 422 `HTTPValidationError` on every route that takes a body or
    parameters; this server answers a schema error 400 with OpenAI's error body (api/errors.py),
    so /openapi.json leaves the 422 and its schemas out."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = build()  # caches itself in app.openapi_schema, which is edited in place
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi
