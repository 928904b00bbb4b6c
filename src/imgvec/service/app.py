"""The HTTP API and the page: `imgvec serve`.

Routes parse and answer; ``Searcher`` does the work; ``_STATUS`` is the one place an imgvec error becomes an HTTP
status, as ``cli/base.py`` is for exit codes. Endpoints are plain functions, which FastAPI runs in its thread
pool: decoding and the store's calls block, and the model runs on the batcher's own thread.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from imgvec.errors import (
    IdentityMismatchError,
    ImageDecodeError,
    ImgvecError,
    IndexNotFoundError,
    ModelLoadError,
    NoRunError,
    SourceError,
    StoreError,
    UsageError,
    reason,
)
from imgvec.pipeline.metrics import RunMetricsCollector
from imgvec.service.hosts import HostCheck
from imgvec.service.limits import BodyLimits
from imgvec.service.searcher import NotInIndexError, NoVectorError, Searcher, ServiceConfig
from imgvec.service.thumbnails import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, ThumbnailError
from imgvec.settings import Settings
from imgvec.sources.s3 import ObjectTooLargeError
from imgvec.stores.base import SearchFilter

log = logging.getLogger(__name__)

CHALLENGE = {"WWW-Authenticate": "Bearer"}
MAX_K = 1000
MAX_QUERY_CHARS = 1000
MAX_ID_CHARS = 512
"""Longer than any id a store holds (imgvec's are 40 hex digits; OpenSearch caps _id at 512 bytes)."""

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

ID = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="A document id from a search result.")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="How many results.")]
EXT = Annotated[list[str] | None, Query(max_length=50, description="Only these extensions (repeatable).")]
PREFIX = Annotated[str | None, Query(max_length=4096, description="Only files under this path.")]


class EmbedRequest(BaseModel):
    """The worker's embedding function's request, field names included."""

    imageUrl: str = Field(max_length=4096, description="s3://bucket/key, or the object's S3 https URL.")
    useCache: bool = Field(True, description="Reuse the stored vector of identical bytes already indexed.")


class Embedding(BaseModel):
    embedding: list[float]
    dimension: int
    model: str
    cached: bool


class EmbedResponse(BaseModel):
    data: Embedding


_BEARER = HTTPBearer(auto_error=False)


class TokenCheck:
    """With a token set, every call under /api needs it: searches and embeddings cost model time, and documents,
    neighbours, failures and progress show the collection's paths and contents. /healthz and /metrics stay open."""

    def __init__(self, token: str | None) -> None:
        self.token = token.encode() if token else None

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if self.token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), self.token):
            raise HTTPException(401, "a valid token is needed: Authorization: Bearer TOKEN", CHALLENGE)


def create_app(settings: Settings, config: ServiceConfig | None = None) -> FastAPI:
    config = config or ServiceConfig()
    registry = CollectorRegistry(auto_describe=False)
    requests = Counter(
        "imgvec_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "imgvec_http_request_duration_seconds",
        "Time to answer an HTTP request.",
        ["method", "route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    batch_sizes = Histogram(
        "imgvec_model_batch_size",
        "Requests served by one model call (dynamic batching).",
        ["kind"],
        registry=registry,
        buckets=(1, 2, 4, 8, 16, 32, 64),
    )
    model_seconds = Histogram("imgvec_model_batch_seconds", "Time of one model call.", ["kind"], registry=registry)

    def on_batch(kind: str, size: int, seconds: float) -> None:
        batch_sizes.labels(kind).observe(size)
        model_seconds.labels(kind).observe(seconds)

    searcher = Searcher(settings, config, on_batch=on_batch)
    registry.register(RunMetricsCollector(searcher.run_metrics, {"index": settings.index}))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        searcher.close()

    app = FastAPI(
        title="imgvec",
        summary="Text → image and image → image search over a CLIP vector index, and the embedding endpoint.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load its scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.searcher = searcher
    app.add_middleware(BodyLimits, max_bytes=config.max_upload_bytes, timeout=config.body_timeout)
    app.add_middleware(HostCheck, hosts=config.allowed_hosts)  # added last: runs first
    guarded = [Depends(TokenCheck(config.token))]

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        requests.labels(request.method, name, str(response.status_code)).inc()
        latency.labels(request.method, name).observe(time.perf_counter() - started)
        return response

    for error, status in _STATUS:
        app.add_exception_handler(error, _handler(status))
    app.add_exception_handler(ClientDisconnect, _gone)

    # -- search -------------------------------------------------------------------------------------

    @app.get("/api/search", dependencies=guarded, summary="Text → image search, best first")
    def search_text(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
        k: K = 10,
        ext: EXT = None,
        path_prefix: PREFIX = None,
    ) -> list[dict[str, Any]]:
        return searcher.search_text(q, k, _filter(ext, path_prefix))

    @app.post("/api/search", dependencies=guarded, summary="Image → image search (multipart field 'image')")
    def search_image(
        image: Annotated[UploadFile, File(description="The query picture.")],
        k: K = 10,
        ext: EXT = None,
        path_prefix: PREFIX = None,
    ) -> list[dict[str, Any]]:
        return searcher.search_image(image.file.read(), k, _filter(ext, path_prefix))

    @app.get(
        "/api/similar/{doc_id}", dependencies=guarded, summary="Neighbours of an indexed document, the document first"
    )
    def similar(doc_id: ID, k: K = 10, ext: EXT = None, path_prefix: PREFIX = None) -> list[dict[str, Any]]:
        return searcher.similar(doc_id, k, _filter(ext, path_prefix))

    @app.get("/api/documents/{doc_id}", dependencies=guarded, summary="An indexed document, without its vector")
    def document(doc_id: ID) -> dict[str, Any]:
        return searcher.document(doc_id)

    @app.get(
        "/api/thumbnail/{doc_id}",
        dependencies=guarded,
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
        summary="A JPEG thumbnail of an indexed document's image (made once, then cached on disk)",
    )
    def thumbnail(doc_id: ID, size: Annotated[int, Query(ge=MIN_SIZE, le=MAX_SIZE)] = DEFAULT_SIZE) -> Response:
        data = searcher.thumbnail(doc_id, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # -- the worker's embedding endpoint ------------------------------------------------------------

    @app.post(
        "/api/embed",
        dependencies=guarded,
        response_model=EmbedResponse,
        summary="Embed one image: JSON {imageUrl, useCache}, or the image itself as the body",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": EmbedRequest.model_json_schema()},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def embed(request: Request) -> dict[str, Any]:
        body = await request.body()
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            try:
                asked = EmbedRequest.model_validate_json(body)
            except ValueError as exc:
                expected = "expected {'imageUrl': 's3://…', 'useCache': true}"
                raise HTTPException(422, f"{expected}: {_first(exc)}") from None
            data = await run_in_threadpool(searcher.read_image_url, asked.imageUrl)
            use_cache = asked.useCache
        else:
            data, use_cache = body, request.query_params.get("useCache", "true").lower() != "false"
        if not data:
            raise HTTPException(400, "no image: send JSON {'imageUrl': …} or the image bytes as the body")
        return {"data": await run_in_threadpool(searcher.embed, data, use_cache=use_cache)}

    # -- what the CLI's read commands print ---------------------------------------------------------

    @app.get(
        "/api/status", dependencies=guarded, summary="Documents, vectors and model of the index (imgvec status --json)"
    )
    def status() -> dict[str, Any]:
        return searcher.status()

    @app.get("/api/progress", dependencies=guarded, summary="The latest ingest run (imgvec progress --json)")
    def progress() -> dict[str, Any]:
        return searcher.progress()

    @app.get(
        "/api/failures",
        dependencies=guarded,
        summary="Files that failed, with stage and reason (imgvec failures --json)",
    )
    def failures(
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> list[dict[str, Any]]:
        return searcher.failures(offset, limit)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="The process answers (the store and the model may still be unavailable)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -- the page -----------------------------------------------------------------------------------

    static = resources.files("imgvec.service") / "static"

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _filter(ext: list[str] | None, path_prefix: str | None) -> SearchFilter:
    """``ext=jpg&ext=png`` or ``ext=jpg,png`` (the stores make '.JPG' and 'jpg' the same)."""
    extensions = tuple(part.strip() for value in ext or () for part in value.split(",") if part.strip())
    return SearchFilter(extensions=extensions, path_prefix=path_prefix or None)


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


def _first(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    return str(exc)
