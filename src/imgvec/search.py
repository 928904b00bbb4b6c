"""Text → image and image → image queries against any store, checked against the index's identity."""

from __future__ import annotations

from pathlib import Path

from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS, decode_image
from imgvec.errors import IndexNotFoundError, SourceError
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
    image_path: str | Path,
    k: int = 10,
    where: SearchFilter | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[SearchHit]:
    _checked(store, embedder)
    path = Path(image_path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read query image {path}: {exc.strerror or exc}") from exc
    pixels = embedder.preprocessor(decode_image(data, max_pixels=max_pixels))
    return store.search(embedder.embed_images(pixels[None])[0], k, where)
