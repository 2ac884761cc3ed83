"""The HTTP recommendation service (FastAPI): the champion of one registry model, swapped on promotion.

    GET  /health                              200 with the served version, 503 before any champion exists
    GET  /model                               the champion: run, metrics, trained-on dates, capabilities
    GET  /users/{user_id}/recommendations?k=  top k unrated items of a known user (ids, titles, scores)
    POST /recommendations                     {"ratings": {"item_id": rating, ...}, "k": 10}: a new user, folded in
    GET  /items/{item_id}/similar?k=          the k items nearest by the model's item vectors (cosine)
    POST /reload                              re-read the champion pointer now (the watcher does it every few s)

Errors are JSON ``{"detail": "<one sentence>"}``: 404 unknown user/item, 422 bad parameters, 409 when the
served model cannot fold a user in or has no item vectors, 503 before a champion exists; never a
traceback. Handlers return ready ``JSONResponse``s (no response-model pass over the body). The scoring
handlers are ``async``: a request is ~1 ms of numpy/torch on the event loop (no thread hop); model
loading, the slow part of a swap, runs in a worker thread so requests keep being answered meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from recsys_core.errors import RecsysError
from recsys_core.registry import Registry
from recsys_core.serving.service import MAX_K, BadRequest, ChampionHolder, NoChampion, NotFound, Unsupported

log = logging.getLogger("recsys_core.serving")

STATUS = {NotFound: 404, BadRequest: 422, Unsupported: 409, NoChampion: 503}
ID = dict(ge=-2**31, le=2**31 - 1)  # raw ids are int32 in every stage's schema


class NewUserRatings(BaseModel):
    ratings: dict[int, float] = Field(description="the new user's ratings, {item_id: rating}", min_length=1)
    k: int = Field(10, ge=1, le=MAX_K, description="number of items to recommend")


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _validation_sentence(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {e.get('msg')}")
    return "bad request: " + "; ".join(parts)


def create_app(registry_dir: str, name: str, device: str = "cpu", watch_interval: float = 2.0) -> FastAPI:
    """The service for registry model ``name`` under ``registry_dir``; ``watch_interval`` seconds between
    looks at the champion pointer (0 = only ``POST /reload``)."""
    holder = ChampionHolder(Registry(registry_dir), name, device)

    async def reload_off_loop() -> dict:
        return await asyncio.to_thread(holder.reload)

    async def watch() -> None:
        while True:
            await asyncio.sleep(watch_interval)
            if holder.changed():
                with contextlib.suppress(RecsysError):
                    await reload_off_loop()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with contextlib.suppress(RecsysError):  # no or a broken champion: serve 503s until a good one appears
            await reload_off_loop()
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
        log.exception("unexpected error answering %s", request.url.path)
        return _error(500, f"internal error ({type(err).__name__}): {err}")

    @app.get("/health")
    async def health():
        body = holder.health()
        return JSONResponse(body, status_code=200 if holder.current is not None else 503)

    @app.get("/model")
    async def model_info():
        return JSONResponse(holder.require().describe())

    @app.get("/users/{user_id}/recommendations")
    async def user_recommendations(user_id: int = Path(**ID), k: int = Query(10, ge=1, le=MAX_K)):
        return JSONResponse(holder.require().recommend_user(user_id, k))

    @app.post("/recommendations")
    async def new_user_recommendations(body: NewUserRatings):
        return JSONResponse(holder.require().recommend_ratings(body.ratings, body.k))

    @app.get("/items/{item_id}/similar")
    async def similar_items(item_id: int = Path(**ID), k: int = Query(10, ge=1, le=MAX_K)):
        return JSONResponse(holder.require().similar_items(item_id, k))

    @app.post("/reload")
    async def reload():
        result = await reload_off_loop()
        return JSONResponse({**result, **holder.health()})

    return app
