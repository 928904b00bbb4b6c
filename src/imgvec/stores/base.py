"""The store protocol: everything the pipeline and the front ends may ask of an index.

Kept this small on purpose (lancedb's table API is the model) so that a second backend, OpenSearch, is a
few hundred lines rather than a rewrite, and the pipeline never learns which one it talks to.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from imgvec.documents import ImageDocument, StoredFile
from imgvec.identity import IndexIdentity

if TYPE_CHECKING:
    import pyarrow as pa


@functools.cache
def field_types() -> dict[str, pa.DataType]:
    """The Arrow type of each of ``DOCUMENT_FIELDS``: the embedded store's columns, and both stores' ``scan`` pages.
    A function, so that a process that never scans (the Lambda) never imports pyarrow, a third of its size."""
    import pyarrow as pa

    return {
        "file_name": pa.string(),
        "file_path": pa.string(),
        "file_extension": pa.string(),
        "file_size": pa.int64(),
        "bucket": pa.string(),
        "file_key": pa.string(),
        "s3_url": pa.string(),
        "indexed_at": pa.timestamp("us", tz="UTC"),
        "mtime": pa.float64(),
        "content_hash": pa.string(),
        "etag": pa.string(),
        "model": pa.string(),
        "perceptual_hash": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "taken_at": pa.timestamp("us", tz="UTC"),
        "camera_make": pa.string(),
        "camera_model": pa.string(),
        "latitude": pa.float64(),
        "longitude": pa.float64(),
        "picture_version": pa.int32(),
    }


EARTH_RADIUS_KM = 6371.0088
"""The mean radius (IUGG): what OpenSearch's geo_distance uses too, so both stores draw the same circle."""


@dataclass(frozen=True, slots=True)
class Circle:
    """Within ``km`` of a point (degrees, WGS 84), along the earth's surface."""

    latitude: float
    longitude: float
    km: float

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(south, north, west, east) around the circle, for a range scan a scalar index serves before the exact
        distance is computed; None where the box would cross a pole or the antimeridian (the distance alone
        decides there)."""
        spread = math.degrees(self.km / EARTH_RADIUS_KM)
        south, north = self.latitude - spread, self.latitude + spread
        if south <= -90 or north >= 90:
            return None
        widen = spread / math.cos(math.radians(max(abs(south), abs(north))))
        west, east = self.longitude - widen, self.longitude + widen
        if west <= -180 or east >= 180:
            return None
        return south, north, west, east


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Applied inside the k-NN search (pre-filter), so k results come back when k exist. Every condition given must
    hold (``filters.build_filter`` makes one from what a person typed)."""

    extensions: tuple[str, ...] = ()
    path_prefix: str | None = None
    taken_from: datetime | None = None
    """Taken at or after (UTC)."""
    taken_before: datetime | None = None
    """Taken before (UTC): an exclusive bound, so "to 2019" is "before 2020" and nothing on 31 December is lost."""
    cameras: tuple[str, ...] = ()
    """EXIF Make or Model, exactly as stored (``search.resolve_cameras`` maps what a person typed to these)."""
    near: Circle | None = None

    @property
    def pictures_only(self) -> bool:
        """Whether the filter reads what a picture says (documents without it never match)."""
        return bool(self.taken_from or self.taken_before or self.cameras or self.near)


@dataclass(frozen=True, slots=True)
class Camera:
    make: str | None
    model: str | None
    count: int

    @property
    def name(self) -> str:
        """How a person names it: the model alone when it already says the make ("Canon EOS R5")."""
        make, model = self.make or "", self.model or ""
        if not model:
            return make
        return model if not make or model.lower().startswith(make.split()[0].lower()) else f"{make} {model}"


@dataclass(frozen=True, slots=True)
class Facets:
    """The values an index holds for the filters a page offers: its cameras (most photos first), the span of its
    capture times, its extensions, and how many documents have a place."""

    cameras: tuple[Camera, ...]
    taken_first: datetime | None
    taken_last: datetime | None
    extensions: tuple[tuple[str, int], ...]
    located: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "cameras": [{"make": c.make, "model": c.model, "name": c.name, "count": c.count} for c in self.cameras],
            "taken_first": self.taken_first.isoformat() if self.taken_first else None,
            "taken_last": self.taken_last.isoformat() if self.taken_last else None,
            "extensions": [{"extension": e, "count": n} for e, n in self.extensions],
            "located": self.located,
        }


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    score: float
    """Cosine similarity in [-1, 1]; 1.0 is the same picture."""
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IndexStats:
    index: str
    documents: int
    with_vector: int
    dimension: int | None
    model: str | None
    random_weights: bool = False
    """The model's weights are seeded random (``NAME/random``): its vectors find nothing meaningful."""

    @property
    def without_vector(self) -> int:
        return self.documents - self.with_vector

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "documents": self.documents,
            "with_vector": self.with_vector,
            "without_vector": self.without_vector,
            "dimension": self.dimension,
            "model": self.model,
            "random_weights": self.random_weights,
        }


class Store(Protocol):
    """One index in one backend."""

    index: str

    def exists(self) -> bool: ...

    def identity(self) -> IndexIdentity | None:
        """What the index's vectors mean, or None for an index imgvec did not create."""
        ...

    def ensure_index(
        self, identity: IndexIdentity, *, migrated_from: str | None = None, config: object | None = None
    ) -> None:
        """Create the index for ``identity``, or check that the existing one matches it.

        ``migrated_from``: the index a migration copies from, recorded for ``alias rollback``. ``config``: the
        backend's own settings for a new index (OpenSearch: ``KnnIndexSettings``); a backend that has none takes
        None, and refuses another backend's.
        """
        ...

    def verify(self, expected: IndexIdentity | None = None) -> list[str]:
        """Each way the live index differs from what imgvec needs (and from ``expected``); empty when sound."""
        ...

    def origin(self) -> str | None:
        """The index a migration copied this one from, which ``alias rollback`` returns to."""
        ...

    def upsert(self, documents: Sequence[ImageDocument]) -> dict[str, str]:
        """Insert or replace by document id. Returns the documents the backend rejected (id → reason);
        a failure of the whole call raises instead."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def lookup(self, ids: Sequence[str]) -> dict[str, StoredFile]:
        """What the store holds for these ids (missing ids are absent), to skip unchanged files."""
        ...

    def get(self, doc_id: str) -> tuple[dict[str, Any], np.ndarray | None] | None:
        """One document by id: its fields (without the vector) and its vector, or None when the index does not
        hold it (the HTTP service serves documents, thumbnails and neighbours only of what this returns)."""
        ...

    def vectors_by_hash(self, content_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of documents with these content hashes: identical bytes need no second embedding."""
        ...

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The fields (without the vector) of the documents with these ids that the index holds."""
        ...

    def documents(
        self, *, unfinished: bool = False, where: SearchFilter | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every document (or only those a run has to finish: no vector, or none of ``PICTURE_FIELDS``; or those
        under a path) as (id, fields without the vector), streamed: ``ingest --missing`` and the deletions of
        ``sync`` and ``watch``."""
        ...

    def scan(
        self, fields: Sequence[str], *, where: SearchFilter | None = None, with_vector: bool = False
    ) -> Iterator[pa.Table]:
        """A few fields of every document, a page at a time as Arrow columns (``id`` first, a field the index lacks
        as nulls): what the duplicates view reads a million documents by without holding them. ``with_vector``:
        only documents that have one, with a ``vector`` column of fixed-size float32 lists."""
        ...

    def copy_from(self, origin_index: str) -> int:
        """Copy another index of this backend here, without its vectors (a migration's first step)."""
        ...

    def change_mark(self) -> dict[str, int] | None:
        """Where this index's writes stand now, for ``copy_changes`` (OpenSearch: per shard, the sequence number
        up to which every write is on every copy, made searchable before it returns); None where the store cannot
        say (Serverless, the embedded store, whose writers take the index's lock)."""
        ...

    def copy_changes(self, origin_index: str, since: dict[str, int]) -> int:
        """Copy the documents ``origin_index`` gained or changed after ``since`` (its ``change_mark``), without
        their vectors, replacing this index's copies: what another writer put in the origin during a migration."""
        ...

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[SearchHit]: ...

    def stats(self) -> IndexStats: ...

    def facets(self) -> Facets:
        """What the page's pickers offer, counted by the store (OpenSearch aggregates; the embedded store scans four
        columns): callers that ask often cache it."""
        ...

    def optimize(self) -> None:
        """Housekeeping after a bulk write: compact, and build or refresh the ANN index."""
        ...


class Aliases(Protocol):
    """Names that point at one index, switched atomically: readers use the alias and never see a gap."""

    def target(self, alias: str) -> str | None: ...

    def switch(self, alias: str, index: str) -> str | None:
        """Point ``alias`` at ``index`` in one step; returns the index it pointed to before."""
        ...
