"""The HTTP recommendation service (FastAPI): the champion of one registry model, swapped on promotion.

    GET  /health                              200 "ok"; 503 "degraded" while the pointer names a run that
                                              cannot be loaded (the old champion keeps answering), 503
                                              "no champion" before any champion exists
    GET  /model                               the champion: run, metrics, trained-on dates, capabilities
    GET  /users/{user_id}/recommendations?k=  top k unrated items of a known user (ids, titles, scores)
    POST /recommendations                     {"ratings": {"item_id": rating, ...}, "k": 10}: a new user, folded in
    GET  /items/{item_id}/similar?k=          the k items nearest by the model's item vectors (cosine)
    POST /reload                              re-read the champion pointer now (the watcher does it every few s)
    GET  /metrics                             Prometheus metrics (``recsys_core.serving.metrics``)

Errors are JSON ``{"detail": "<one sentence>"}``: 401 without the API key (when one is set), 403 for
``POST /reload`` refused, 404 unknown user/item, 409 when the served model cannot fold a user in or has
no item vectors, 413 for a body over the limit, 422 bad parameters, 431 for headers over the limit, 503
before a champion exists; an unexpected error is a 500 naming a request id, its details in the log
only; never a traceback. Handlers return ready responses whose JSON orjson writes (no response-model
pass over the body). The scoring handlers are ``async``: a request is ~1 ms of numpy/torch on the event
loop (no thread hop); model loading, the slow part of a swap, runs in a worker thread so requests keep
being answered meanwhile.

The ``_Gate`` (one pure ASGI middleware, ~10 us a request) does what must happen before a handler runs:
the header-size and Content-Length limits, the API key, the ``/reload`` rule, and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
import uuid

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from recsys_core.errors import RecsysError
from recsys_core.registry import Registry
from recsys_core.serving.metrics import ServiceMetrics
from recsys_core.serving.service import (
    MAX_K,
    MAX_RATINGS,
    BadRequest,
    ChampionHolder,
    NoChampion,
    NotFound,
    TooLarge,
    Unsupported,
    parse_new_user,
)

log = logging.getLogger("recsys_core.serving")

STATUS = {NotFound: 404, BadRequest: 422, Unsupported: 409, NoChampion: 503, TooLarge: 413}
ID_MIN, ID_MAX = -2**31, 2**31 - 1  # raw ids are int32 in every stage's schema
MAX_BODY_BYTES = 1 << 20           # default limit of a request body (1 MiB: ~50,000 ratings of JSON)
MAX_HEADER_BYTES = 16 << 10        # default limit of all request headers together (uvicorn's h11 default)
OPEN = ("/health",)                # the routes that never need the API key (probes)


class JSONAnswer(Response):
    """A JSON response written by orjson (numpy-free dicts/lists; ~5x faster than the stdlib here)."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def _error(status: int, detail: str, headers: dict | None = None) -> JSONAnswer:
    return JSONAnswer({"detail": detail}, status_code=status, headers=headers)


def _validation_sentence(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {e.get('msg')}")
    return "bad request: " + "; ".join(parts)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Gate:
    """Pure ASGI middleware: limits, API key, the /reload rule and the request metrics, before FastAPI."""

    def __init__(self, app, *, api_key: str | None, reload_open: bool, max_body_bytes: int,
                 max_header_bytes: int, metrics: ServiceMetrics):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.reload_open = reload_open
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.metrics = metrics

    def _refusal(self, scope) -> tuple[int, str, dict | None] | None:
        headers = scope["headers"]
        if sum(len(k) + len(v) for k, v in headers) > self.max_headers:
            return 431, f"request headers over the limit of {self.max_headers} bytes", None
        path = scope["path"]
        if self.key is not None and path not in OPEN:
            given = next((v for k, v in headers if k == b"authorization"), b"")
            scheme, _, token = given.partition(b" ")
            # constant time: the key cannot be guessed byte by byte from how long a refusal takes
            if not (hmac.compare_digest(token, self.key) and scheme.lower() == b"bearer"):
                return 401, "this service needs its API key: send the header Authorization: Bearer <key>", \
                    {"WWW-Authenticate": "Bearer"}
        if path == "/reload" and self.key is None:
            if not self.reload_open:
                return 403, ("POST /reload needs an API key when the server listens beyond loopback; start it "
                             "with --api-key-file FILE or RECSYS_API_KEY"), None
            if any(k == b"origin" for k, _ in headers):
                return 403, "POST /reload is not answered to web pages (a request with an Origin header)", None
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return 413, f"the request body ({int(length)} bytes) is over the limit of {self.max_body} bytes", None
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                await self.app(scope, receive, sending)
            else:
                code, detail, headers = refusal
                await _error(code, detail, headers)(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status,
                                 time.perf_counter() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes (a chunked body has no Content-Length
    for the gate to check)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(registry_dir: str, name: str, device: str = "cpu", watch_interval: float = 2.0, *,
               api_key: str | None = None, reload_open: bool = True, max_body_bytes: int = MAX_BODY_BYTES,
               max_ratings: int = MAX_RATINGS, max_header_bytes: int = MAX_HEADER_BYTES,
               load_in_child: bool = True) -> FastAPI:
    """The service for registry model ``name`` under ``registry_dir``; ``watch_interval`` seconds between
    looks at the champion pointer (0 = only ``POST /reload``). ``api_key``: when set, every route but
    /health needs ``Authorization: Bearer <api_key>``; ``reload_open``: whether ``POST /reload`` is
    answered without a key (only when the server binds loopback); ``load_in_child``: load a champion with
    ``LinearScores`` in a child process (``recsys_core.serving.remote``)."""
    holder = ChampionHolder(Registry(registry_dir), name, device, watch_interval=watch_interval or 2.0,
                            in_child=load_in_child)
    metrics = ServiceMetrics(holder)

    async def watch() -> None:
        while True:
            await asyncio.sleep(watch_interval)
            try:
                if holder.due():
                    await asyncio.to_thread(holder.poll)
            except Exception:  # poll never raises; this keeps the loop alive whatever else does
                log.exception("the champion watcher's step failed; it goes on")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(holder.poll)  # no or a broken champion: serve 503s until a good one appears
        if holder.current is None and not holder.last_error:  # nothing to load, and nothing broken either
            log.warning("registry model %s has no champion yet: every recommendation answers 503 (and /health "
                        "\"no champion\") until a run is promoted (`flows/full.py --registry-model %s` or "
                        "`recsys registry promote`)", holder.name, holder.name)
        watcher = asyncio.create_task(watch()) if watch_interval > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    app = FastAPI(title="recsys recommendation service", lifespan=lifespan)
    app.state.holder = holder
    app.state.metrics = metrics
    app.add_middleware(_Gate, api_key=api_key, reload_open=reload_open, max_body_bytes=max_body_bytes,
                       max_header_bytes=max_header_bytes, metrics=metrics)

    @app.exception_handler(RecsysError)
    async def _recsys_error(request: Request, err: RecsysError):
        return _error(STATUS.get(type(err), 500), str(err))

    @app.exception_handler(RequestValidationError)
    async def _bad_parameters(request: Request, err: RequestValidationError):
        return _error(422, _validation_sentence(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s: unexpected error answering %s %s: %s: %s", request_id, request.method,
                  request.url.path, type(err).__name__, err, exc_info=err)
        return _error(500, f"internal error; request id {request_id} (the server log has the details)",
                      {"X-Request-ID": request_id})

    @app.get("/health")
    async def health():
        body = holder.health()
        return JSONAnswer(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/model")
    async def model_info():
        return JSONAnswer(holder.require().describe())

    @app.get("/users/{user_id}/recommendations")
    async def user_recommendations(user_id: int = Path(ge=ID_MIN, le=ID_MAX), k: int = Query(10, ge=1, le=MAX_K)):
        return JSONAnswer(holder.require().recommend_user(user_id, k))

    @app.post("/recommendations")
    async def new_user_recommendations(request: Request):
        ratings, k = parse_new_user(await _read_body(request, max_body_bytes), max_ratings)
        return JSONAnswer(holder.require().recommend_ratings(ratings, k))

    @app.get("/items/{item_id}/similar")
    async def similar_items(item_id: int = Path(ge=ID_MIN, le=ID_MAX), k: int = Query(10, ge=1, le=MAX_K)):
        return JSONAnswer(holder.require().similar_items(item_id, k))

    @app.post("/reload")
    async def reload():
        result = await asyncio.to_thread(holder.reload)
        return JSONAnswer({**result, **holder.health()})

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
