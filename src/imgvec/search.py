"""Text → image and image → image queries against any store, checked against the index's identity."""

from __future__ import annotations

from pathlib import Path

from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS, decode_image
from imgvec.errors import IndexNotFoundError, SourceError
from imgvec.sources.reader import LocationReader
from imgvec.stores.base import SearchFilter, SearchHit, Store


def _checked(store: Store, embedder: Embedder) -> None:
    identity = store.identity()
    if identity is None:
        raise IndexNotFoundError(f"index {store.index!r} does not exist or has no model identity")
    identity.require_compatible(embedder.identity, action="search")


def search_text(
    store: Store, embedder: Embedder, text: str, k: int = 10, where: SearchFilter | None = None
) -> list[SearchHit]:
    _checked(store, embedder)
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
    _checked(store, embedder)
    reader = reader or LocationReader()
    try:
        data = reader.read(str(image))
    except OSError as exc:
        raise SourceError(f"cannot read query image {image}: {exc.strerror or exc}") from exc
    preprocessor = embedder.preprocessor
    pixels = preprocessor(decode_image(data, max_pixels=max_pixels, reduce_for=preprocessor.reduce_for))
    return store.search(embedder.embed_images(pixels[None])[0], k, where)
