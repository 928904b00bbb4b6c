"""Text → image and image → image queries against any store, checked against the index's identity.

The CLI and the HTTP service both query through here; the service only swaps the model call for its batched one.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS, DecodeBudget, decode_image
from imgvec.errors import IndexNotFoundError, SourceError
from imgvec.identity import IndexIdentity
from imgvec.sources.reader import LocationReader
from imgvec.stores.base import SearchFilter, SearchHit, Store


def check_compatible(store: Store, embedder: Embedder) -> None:
    """A query vector of another model would return confident nonsense: refuse it before any search."""
    identity = store.identity()
    if identity is None:
        raise IndexNotFoundError(f"index {store.index!r} does not exist or has no model identity")
    identity.require_compatible(embedder.identity, action="search")


def image_pixels(
    embedder: Embedder, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, budget: DecodeBudget | None = None
) -> np.ndarray:
    """One image file's bytes → the model's (3, H, W) uint8 input, through the same guarded decoder as an ingest (bomb
    guard, corrupt files → ImageDecodeError with a reason). ``budget``: the service's bound on decode memory."""
    preprocessor = embedder.preprocessor
    decode = budget.decode if budget is not None else decode_image
    return preprocessor.pixels(decode(data, max_pixels=max_pixels, reduce_for=preprocessor.reduce_for))


def search_text(
    store: Store, embedder: Embedder, text: str, k: int = 10, where: SearchFilter | None = None
) -> list[SearchHit]:
    check_compatible(store, embedder)
    return store.search(embedder.embed_texts([text])[0], k, where)


def search_image(
    store: Store,
    embedder: Embedder,
    image: str | Path,
    k: int = 10,
    where: SearchFilter | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reader: LocationReader | None = None,
) -> list[SearchHit]:
    """``image``: a local path, ``s3://bucket/key`` or an S3 https URL (what a document's s3_url holds)."""
    check_compatible(store, embedder)
    reader = reader or LocationReader()
    try:
        data = reader.read(str(image))
    except OSError as exc:
        raise SourceError(f"cannot read query image {image}: {exc.strerror or exc}") from exc
    pixels = image_pixels(embedder, data, max_pixels)
    return store.search(embedder.embed_images(pixels[None])[0], k, where)


def neighbours(
    store: Store, doc_id: str, vector: np.ndarray, k: int, where: SearchFilter | None = None
) -> list[SearchHit]:
    """The k nearest documents to an indexed one, that document first (an identical copy scores the same 1.0, and
    an approximate index may rank it second)."""
    hits = store.search(vector, k, where)
    own = [hit for hit in hits if hit.id == doc_id]
    return (own + [hit for hit in hits if hit.id != doc_id])[:k] if own else hits


def hit_json(hit: SearchHit) -> dict[str, Any]:
    """One result as `search --json` prints it and the HTTP API returns it: ``id``, ``file_path`` and ``score``
    first, then the document's fields."""
    doc = document_json(hit.document)  # the embedded store's timestamps; OpenSearch gives the stored strings
    return {"id": hit.id, "file_path": doc.get("file_path"), "score": hit.score, **doc}


def document_json(fields: dict[str, Any]) -> dict[str, Any]:
    """A stored document's fields as JSON (timestamps as ISO 8601 text)."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in fields.items()}


# -- the worker's embedding function (``POST /api/embed`` and the Lambda) ------------------------------


def stored_vector(store: Store, identity: IndexIdentity, content_hash: str) -> np.ndarray | None:
    """The vector an ingest stored for bytes with this SHA-256, if the index holds this model's vectors (another
    model's never stand in)."""
    stored = store.identity()
    if stored is None or not stored.compatible(identity):
        return None
    return store.vectors_by_hash([content_hash]).get(content_hash)


def embedding_json(vector: np.ndarray, identity: IndexIdentity, *, cached: bool) -> dict[str, Any]:
    """The worker's embedding answer's ``data``: the same shape from the HTTP API and from the Lambda."""
    values = np.asarray(vector, dtype=np.float32).tolist()
    return {"embedding": values, "dimension": len(values), "model": identity.model, "cached": cached}
