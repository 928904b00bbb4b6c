"""The HTTP API and the page: `imgvec serve`.

``create_app`` puts the parts together: the routes (``routes.py``) parse and answer, ``Searcher`` does the work,
``metrics.py`` counts, and ``_STATUS`` here is the one place an imgvec error becomes an HTTP status, as
``cli/base.py`` is for exit codes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from imgvec.errors import (
    IdentityMismatchError,
    ImageDecodeError,
    ImgvecError,
    IndexNotFoundError,
    ModelLoadError,
    NoRunError,
    NotInIndexError,
    NoVectorError,
    ObjectTooLargeError,
    SourceError,
    StoreError,
    ThumbnailError,
    UsageError,
    reason,
)
from imgvec.service import routes
from imgvec.service.announce import announce, withdraw
from imgvec.service.hosts import HostCheck
from imgvec.service.limits import BodyLimits
from imgvec.service.metrics import ServiceMetrics
from imgvec.service.run_state import RunState
from imgvec.service.searcher import Searcher, ServiceConfig
from imgvec.settings import Settings

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[BaseException], int]] = [
    (NotInIndexError, 404),
    (ThumbnailError, 404),
    (IndexNotFoundError, 404),
    (NoRunError, 404),
    (IdentityMismatchError, 409),
    (NoVectorError, 409),
    (ImageDecodeError, 400),
    (ObjectTooLargeError, 413),
    (UsageError, 400),
    (FileNotFoundError, 404),
    (SourceError, 400),
    (ModelLoadError, 503),
    (StoreError, 503),
    (ImgvecError, 500),
    (OSError, 502),
]
"""Starlette answers with the handler of the most specific class (``NotInIndexError`` before ``StoreError``): an
error a client can fix is 4xx with its reason; a store or S3 that does not answer is 503/502, which a client may
retry."""


def create_app(settings: Settings, config: ServiceConfig | None = None, *, announce_url: str | None = None) -> FastAPI:
    """``announce_url``: where local clients reach this service, written beside the store while it runs
    (``service/announce.py``) so that `imgvec search` asks it instead of loading the model."""
    config = config or ServiceConfig()
    metrics = ServiceMetrics()
    searcher, run_state = Searcher(settings, config, on_batch=metrics.on_batch), RunState(settings)
    metrics.add_run(run_state.run_metrics, {"index": settings.index})

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if announce_url is not None:
            try:
                announce(settings, announce_url, token_required=bool(config.token))
            except OSError as exc:  # a read-only store: the service works, the CLI just does not find it
                log.warning("cannot announce the service beside the store: %s", reason(exc))
        try:
            yield
        finally:
            if announce_url is not None:
                withdraw(settings)
            searcher.close()

    app = FastAPI(
        title="imgvec",
        summary="Text → image and image → image search over a CLIP vector index, and the embedding endpoint.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load its scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.searcher, app.state.run_state, app.state.config, app.state.metrics = searcher, run_state, config, metrics
    app.add_middleware(BodyLimits, max_bytes=config.max_upload_bytes, timeout=config.body_timeout)
    app.add_middleware(HostCheck, hosts=config.allowed_hosts)  # added after: runs before the body is read
    app.middleware("http")(metrics.count)  # added last, runs first: every answer is counted, a refused one too
    for error, status in _STATUS:
        app.add_exception_handler(error, _handler(status))
    app.add_exception_handler(ClientDisconnect, _gone)
    app.include_router(routes.api)
    app.include_router(routes.public)
    app.mount("/static", StaticFiles(directory=str(routes.STATIC)), name="static")
    return app


def _handler(status: int) -> Callable[[Request, Exception], Any]:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.warning("%s: %s", type(exc).__name__, reason(exc), exc_info=log.isEnabledFor(logging.INFO))
        text = reason(exc) if isinstance(exc, OSError) else str(exc)
        return JSONResponse({"detail": text}, status_code=status)

    return handle


async def _gone(request: Request, _exc: Exception) -> Response:
    """The client went away mid-body: nobody reads the answer, and it is no server error worth a traceback."""
    log.info("%s %s: the client disconnected before sending its whole body", request.method, request.url.path)
    return Response(status_code=400)
