"""What the HTTP service does, without HTTP: the routes in ``routes.py`` only parse, call one method here, and answer.

The store is opened once and the model loaded once for the life of the process (the CLI pays both on every
query). The model loads on first need, not at start-up, so that a service started before its index exists, or
while the store is unreachable, still answers /healthz and /api/status, and says what is wrong.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgvec import wiring
from imgvec.allocator import release_free_memory
from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS, DecodeBudget
from imgvec.errors import NotInIndexError, NoVectorError, UsageError
from imgvec.filters import resolve_cameras
from imgvec.search import (
    check_compatible,
    document_json,
    embedding_json,
    hit_json,
    image_pixels,
    neighbours,
    stored_vector,
)
from imgvec.service.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_SECONDS, ModelBatcher
from imgvec.service.duplicate_views import DuplicateViews
from imgvec.service.thumbnails import Thumbnails
from imgvec.settings import Settings
from imgvec.sources.locations import parse_s3_url
from imgvec.sources.reader import LocationReader
from imgvec.stores import is_remote
from imgvec.stores.base import Facets, SearchFilter, Store

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 64 << 20
"""Larger than any camera JPEG or phone HEIC; a request over it is refused before it is read in full."""
DEFAULT_DECODE_MEMORY = 1 << 30
"""One 196 MP picture at a time (the pixel limit's worst case), a hundred phone photos at once."""
FACETS_TTL_SECONDS = 60.0
"""How long the page's pickers (and the camera names searches are matched to) may lag an ingest: counting them
scans the embedded store's columns, too slow to repeat per request on a million photos."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    token: str | None = None
    """When set, requests that cost model or decode time, or write, need ``Authorization: Bearer TOKEN``."""
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    body_timeout: float = 30.0
    """Seconds a client may take to send each part of a request body before it gets 408."""
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_memory_bytes: int = DEFAULT_DECODE_MEMORY
    """Decoding in flight at once, in bytes (``DecodeBudget``): requests for huge pictures take turns."""
    allowed_hosts: frozenset[str] = frozenset({"*"})
    """Names a request's ``Host`` header may give (``service/hosts.py``); ``*``: any."""
    thumbnail_dir: Path | None = None
    """None: ``thumbnails/<index>`` in the store's state folder."""


class Searcher:
    def __init__(
        self, settings: Settings, config: ServiceConfig, *, on_batch: Callable[[str, int, float], None] | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self._store: Store | None = None
        self._opening = threading.Lock()
        self.reader = LocationReader(wiring.s3_connection(settings))
        folder = config.thumbnail_dir or settings.state_dir / "thumbnails" / wiring.state_name(settings)
        self.decodes = DecodeBudget(config.decode_memory_bytes, release=release_free_memory)
        self.thumbnails = Thumbnails(folder, self.reader, max_pixels=config.max_pixels, budget=self.decodes)
        self._embedder: Embedder | None = None
        self._batcher: ModelBatcher | None = None
        self._loading = threading.Lock()
        self._on_batch = on_batch
        self.duplicate_views = DuplicateViews(lambda: self.store)
        self._facets: tuple[float, str, Facets] | None = None
        self._facets_lock = threading.Lock()

    @property
    def store(self) -> Store:
        """Opened on first use, so the service starts while OpenSearch is down and says so per request; opened
        again when an embedded store's alias now names another index (`imgvec migrate` switched it while the
        service ran). OpenSearch resolves its aliases itself."""
        with self._opening:
            if self._store is None or self._store.index != self._embedded_target():
                self._store = wiring.open_store(self.settings)
            return self._store

    def _embedded_target(self) -> str | None:
        if self._store is None or is_remote(self.settings.store):
            return self._store.index if self._store is not None else None
        return wiring.open_aliases(self.settings).target(self.settings.index) or self.settings.index

    # -- the model ----------------------------------------------------------------------------------

    def model(self) -> tuple[Embedder, ModelBatcher]:
        """The embedder and its batcher, loaded on first use by the same rule as the CLI (``wiring.embedder_for``)."""
        with self._loading:
            if self._batcher is None:
                embedder = wiring.embedder_for(self.settings, self.store)
                log.info("text queries run on %s", embedder.prepare_texts())  # measured now, not in a request
                self._embedder = embedder
                self._batcher = ModelBatcher(
                    embedder, max_batch=self.config.max_batch, max_wait=self.config.max_wait, on_batch=self._on_batch
                )
                log.info("model loaded: %s", embedder.identity.describe())
            assert self._embedder is not None
            return self._embedder, self._batcher

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    # -- queries ------------------------------------------------------------------------------------

    def search_text(self, text: str, k: int, where: SearchFilter) -> list[dict[str, Any]]:
        if not text.strip():
            raise UsageError("the query text is empty")
        embedder, batcher = self.model()
        store = self.store
        check_compatible(store, embedder)
        where = self.resolve(where, store)
        return [hit_json(hit) for hit in store.search(batcher.embed_text(text), k, where)]

    def search_image(self, data: bytes, k: int, where: SearchFilter) -> list[dict[str, Any]]:
        embedder, batcher = self.model()
        store = self.store
        check_compatible(store, embedder)
        where = self.resolve(where, store)
        vector = batcher.embed_image(image_pixels(embedder, data, self.config.max_pixels, self.decodes))
        return [hit_json(hit) for hit in store.search(vector, k, where)]

    def similar(self, doc_id: str, k: int, where: SearchFilter) -> list[dict[str, Any]]:
        store = self.store
        where = self.resolve(where, store)
        _, vector = self._document(doc_id, store)
        if vector is None:
            raise NoVectorError(f"document {doc_id!r} has no vector yet (`imgvec ingest --missing` embeds it)")
        return [hit_json(hit) for hit in neighbours(store, doc_id, vector, k, where)]

    # -- the filters' values -----------------------------------------------------------------------

    def facets(self, store: Store | None = None, *, fresh: bool = False) -> Facets:
        """The index's cameras, capture span and extensions, counted at most once a ``FACETS_TTL_SECONDS``."""
        store = store or self.store
        with self._facets_lock:
            cached = self._facets
            if fresh or cached is None or cached[1] != store.index or time.monotonic() - cached[0] > FACETS_TTL_SECONDS:
                cached = (time.monotonic(), store.index, store.facets())
                self._facets = cached
            return cached[2]

    def resolve(self, where: SearchFilter, store: Store) -> SearchFilter:
        """Camera names as the index spells them; a name not among the cached ones is looked for once more in
        fresh counts (a camera whose first photo was just ingested) before it is refused."""
        if not where.cameras:
            return where
        try:
            return resolve_cameras(where, self.facets(store), store.index)
        except UsageError:
            return resolve_cameras(where, self.facets(store, fresh=True), store.index)

    def document(self, doc_id: str) -> dict[str, Any]:
        return document_json(self._document(doc_id)[0])

    def thumbnail(self, doc_id: str, size: int) -> bytes:
        fields, _ = self._document(doc_id)
        return self.thumbnails.get(doc_id, fields, size)

    def _document(self, doc_id: str, store: Store | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        store = store or self.store
        found = store.get(doc_id)
        if found is None:
            raise NotInIndexError(f"no document {doc_id!r} in index {store.index!r}")
        return found

    # -- the worker's embedding endpoint ------------------------------------------------------------

    def read_image_url(self, url: str) -> bytes:
        """The bytes of an S3 object the worker names. Only S3 locations: a local path or any other URL is refused
        (a client must not make the service read its files or call arbitrary hosts)."""
        if parse_s3_url(url, self.settings.s3_endpoint_url) is None:
            raise UsageError(f"imageUrl must be an s3://bucket/key or S3 https URL, not {url[:200]!r}")
        return self.reader.read(url, max_bytes=self.config.max_upload_bytes)

    def embed(self, data: bytes, *, use_cache: bool) -> dict[str, Any]:
        """``{"embedding", "dimension", "model", "cached"}``. ``use_cache``: identical bytes already in the index
        (same sha256 as an ingest records) return their stored vector without a model call."""
        embedder, batcher = self.model()
        vector = None
        if use_cache:
            vector = stored_vector(self.store, embedder.identity, hashlib.sha256(data).hexdigest())
        cached = vector is not None
        if vector is None:
            vector = batcher.embed_image(image_pixels(embedder, data, self.config.max_pixels, self.decodes))
        return embedding_json(vector, embedder.identity, cached=cached)

    # -- what `imgvec duplicates --json` prints ----------------------------------------------------------

    def duplicates(
        self, kind: str, threshold: float | None, path_prefix: str | None, offset: int, limit: int
    ) -> dict[str, Any]:
        return self.duplicate_views.page(kind, threshold, path_prefix, offset, limit)

    # -- what `imgvec status` prints -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.store.stats().as_dict()
