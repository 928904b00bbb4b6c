"""The service's routes: each parses, calls one ``Searcher`` method, and answers.

Routes are plain functions, which FastAPI runs in its thread pool: decoding and the store's calls block, and the
model runs on the batcher's own thread. The searcher, the run state, the configuration and the metrics are the app's
(``app.state``), read through dependencies, so the routes hold no state and the same router serves any app
(``create_app`` in ``app.py``; tests drive it in-process as well as over TCP).
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from imgvec.filters import build_filter
from imgvec.service.run_state import RunState
from imgvec.service.searcher import Searcher
from imgvec.service.thumbnails import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE
from imgvec.stores.base import SearchFilter

CHALLENGE = {"WWW-Authenticate": "Bearer"}
MAX_K = 1000
MAX_QUERY_CHARS = 1000
MAX_ID_CHARS = 512
"""Longer than any id a store holds (imgvec's are 40 hex digits; OpenSearch caps _id at 512 bytes)."""
STATIC = resources.files("imgvec.service") / "static"

ID = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="A document id from a search result.")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="How many results.")]
EXT = Annotated[list[str] | None, Query(max_length=50, description="Only these extensions (repeatable).")]
PREFIX = Annotated[str | None, Query(max_length=4096, description="Only files under this path.")]
TAKEN_FROM = Annotated[
    str | None, Query(max_length=64, description="Taken in or after this year, month, day or instant (2019-07).")
]
TAKEN_TO = Annotated[
    str | None, Query(max_length=64, description="Taken in or before this year, month, day or instant (2019).")
]
CAMERA = Annotated[
    list[str] | None, Query(max_length=50, description="Taken with this camera: a make or a model (repeatable).")
]
NEAR = Annotated[str | None, Query(max_length=64, description="LAT,LON in degrees: taken near this place.")]
WITHIN = Annotated[float | None, Query(gt=0, description="Kilometres from `near` (default 10).")]


def search_filter(
    ext: EXT = None,
    path_prefix: PREFIX = None,
    taken_from: TAKEN_FROM = None,
    taken_to: TAKEN_TO = None,
    camera: CAMERA = None,
    near: NEAR = None,
    within: WITHIN = None,
) -> SearchFilter:
    """The filter parameters every search route takes (``filters.build_filter``: the CLI's flags read the same)."""
    return build_filter(
        extensions=ext or (),
        path_prefix=path_prefix,
        taken_from=taken_from,
        taken_to=taken_to,
        cameras=camera or (),
        near=near,
        within_km=within,
    )


FilterDep = Annotated[SearchFilter, Depends(search_filter)]


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


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> None:
    """With a token set, every call under /api needs it: searches and embeddings cost model time, and documents,
    neighbours, failures and progress show the collection's paths and contents. /healthz and /metrics stay open."""
    token: str | None = request.app.state.config.token
    if not token:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "a valid token is needed: Authorization: Bearer TOKEN", CHALLENGE)


def the_searcher(request: Request) -> Searcher:
    return request.app.state.searcher


SearcherDep = Annotated[Searcher, Depends(the_searcher)]


def the_run_state(request: Request) -> RunState:
    return request.app.state.run_state


RunStateDep = Annotated[RunState, Depends(the_run_state)]

api = APIRouter(dependencies=[Depends(require_token)])
"""Everything under /api: guarded by the token when one is set."""
public = APIRouter()
"""Health, metrics and the page: open (the page asks for the token itself)."""


# -- search -------------------------------------------------------------------------------------


@api.get("/api/search", summary="Text → image search, best first")
def search_text(
    searcher: SearcherDep,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
    where: FilterDep,
    k: K = 10,
) -> list[dict[str, Any]]:
    return searcher.search_text(q, k, where)


@api.post("/api/search", summary="Image → image search (multipart field 'image')")
def search_image(
    searcher: SearcherDep,
    image: Annotated[UploadFile, File(description="The query picture.")],
    where: FilterDep,
    k: K = 10,
) -> list[dict[str, Any]]:
    return searcher.search_image(image.file.read(), k, where)


@api.get("/api/similar/{doc_id}", summary="Neighbours of an indexed document, the document first")
def similar(searcher: SearcherDep, doc_id: ID, where: FilterDep, k: K = 10) -> list[dict[str, Any]]:
    return searcher.similar(doc_id, k, where)


@api.get("/api/facets", summary="The cameras, capture span and extensions the index holds, for filter pickers")
def facets(searcher: SearcherDep) -> dict[str, Any]:
    return searcher.facets().as_dict()


@api.get("/api/documents/{doc_id}", summary="An indexed document, without its vector")
def document(searcher: SearcherDep, doc_id: ID) -> dict[str, Any]:
    return searcher.document(doc_id)


@api.get(
    "/api/thumbnail/{doc_id}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
    summary="A JPEG thumbnail of an indexed document's image (made once, then cached on disk)",
)
def thumbnail(
    searcher: SearcherDep, doc_id: ID, size: Annotated[int, Query(ge=MIN_SIZE, le=MAX_SIZE)] = DEFAULT_SIZE
) -> Response:
    data = searcher.thumbnail(doc_id, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@api.get("/api/duplicates", summary="Groups of duplicates, largest saving first (imgvec duplicates --json), paged")
def duplicates(
    searcher: SearcherDep,
    kind: Annotated[Literal["exact", "resaved", "similar"], Query(description="Which kind of duplicate.")] = "resaved",
    threshold: Annotated[
        float | None, Query(ge=0, le=64, description="resaved: bits apart, at most; similar: cosine, at least.")
    ] = None,
    path_prefix: PREFIX = None,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Groups to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Groups in this page.")] = 20,
) -> dict[str, Any]:
    return searcher.duplicates(kind, threshold, path_prefix or None, offset, limit)


# -- the worker's embedding endpoint ------------------------------------------------------------


@api.post(
    "/api/embed",
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
async def embed(request: Request, searcher: SearcherDep) -> dict[str, Any]:
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


@api.get("/api/status", summary="Documents, vectors and model of the index (imgvec status --json)")
def status(searcher: SearcherDep) -> dict[str, Any]:
    return searcher.status()


@api.get("/api/progress", summary="The latest ingest run (imgvec progress --json)")
def progress(runs: RunStateDep) -> dict[str, Any]:
    return runs.progress()


@api.get(
    "/api/failures",
    summary="Files that failed, with stage and reason (imgvec failures --json)",
)
def failures(
    runs: RunStateDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    return runs.failures(offset, limit)


@public.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return request.app.state.metrics.exposition()


@public.get("/healthz", summary="The process answers (the store and the model may still be unavailable)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


# -- the page -----------------------------------------------------------------------------------


@public.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


def _first(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    return str(exc)
