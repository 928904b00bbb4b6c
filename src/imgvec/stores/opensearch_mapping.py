"""What an imgvec k-NN index looks like in OpenSearch, and how to tell whether a live index is one.

Request bodies are built here and nowhere else, so the contract tests can check every one of them against the
OpenSearch API specification. Facts behind the defaults (docs/opensearch.md): nmslib is deprecated since 2.19 and
refused for new indexes on 3.x, faiss is the default engine, faiss takes ``ef_search`` in ``method.parameters``
(lucene has none: its candidate list is the query's k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgvec.documents import PICTURE_VERSION
from imgvec.errors import StoreError
from imgvec.identity import IndexIdentity
from imgvec.stores.base import SearchFilter

VECTOR_FIELD = "image_vector"
META_KEY = "imgvec"
"""The mapping's ``_meta.imgvec``: the model identity (and where a migration came from), readable by any client."""
ENGINES = ("faiss", "lucene", "nmslib")
DEFAULT_ENGINE = "faiss"
SPACE_TYPE = "cosinesimil"
KEYWORD_FIELDS = ("doc_id", "file_extension", "bucket", "file_key", "s3_url", "content_hash", "etag", "model")
"""``doc_id`` repeats the document id as a field: Serverless assigns ``_id`` itself, and a unique sortable keyword
pages through any index with ``search_after`` on every version (``_shard_doc`` needs 3.3)."""


PICTURE_PROPERTIES: dict[str, dict[str, str]] = {
    "perceptual_hash": {"type": "long"},
    "width": {"type": "integer"},
    "height": {"type": "integer"},
    "taken_at": {"type": "date"},
    "camera_make": {"type": "keyword"},
    "camera_model": {"type": "keyword"},
    "latitude": {"type": "double"},
    "longitude": {"type": "double"},
    "location": {"type": "geo_point"},
    "picture_version": {"type": "integer"},
}
"""``documents.PICTURE_FIELDS``, added to indexes made before them (``added_properties``). ``location`` is the one
field only this store has: latitude and longitude again, as the geo_point a ``geo_distance`` filter needs (the
documents keep ``latitude``/``longitude`` so that both stores read back the same fields)."""
FACET_CAMERAS = 1_000
"""Camera models a facets request returns at most (a collection of a million photos holds a few hundred)."""


@dataclass(frozen=True, slots=True)
class KnnIndexSettings:
    """``imgvec index create`` flags. Shards and replicas are ignored by Serverless, which sizes itself."""

    shards: int = 2
    replicas: int = 1
    engine: str = DEFAULT_ENGINE
    m: int = 16
    ef_construction: int = 128
    ef_search: int = 100

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise StoreError(f"unknown k-NN engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        for name in ("m", "ef_construction", "ef_search"):
            if getattr(self, name) < 2:
                raise StoreError(f"--{name.replace('_', '-')} must be at least 2")


def index_body(
    identity: IndexIdentity, options: KnnIndexSettings, *, migrated_from: str | None = None, serverless: bool = False
) -> dict[str, Any]:
    """The ``PUT /<index>`` body: metadata fields typed, the vector as HNSW cosine, the identity in ``_meta`` (with
    the index a migration copied from, which ``imgvec alias rollback`` switches back to)."""
    method: dict[str, Any] = {
        "name": "hnsw",
        "space_type": SPACE_TYPE,
        "engine": options.engine,
        "parameters": {"m": options.m, "ef_construction": options.ef_construction},
    }
    if options.engine == "faiss":  # lucene refuses the parameter (2.19: "Unknown parameter 'ef_search'")
        method["parameters"]["ef_search"] = options.ef_search
    index_settings: dict[str, Any] = {"knn": True}
    if options.engine == "nmslib":
        index_settings["knn.algo_param.ef_search"] = options.ef_search  # nmslib reads only the index setting
    if not serverless:
        index_settings["number_of_shards"] = options.shards
        index_settings["number_of_replicas"] = options.replicas
    properties: dict[str, Any] = {name: {"type": "keyword"} for name in KEYWORD_FIELDS}
    properties["file_path"] = {"type": "keyword", "fields": {"text": {"type": "text"}}}
    properties["file_name"] = {"type": "keyword", "fields": {"text": {"type": "text"}}}
    properties["file_size"] = {"type": "long"}
    properties["mtime"] = {"type": "double"}
    properties["indexed_at"] = {"type": "date"}
    properties.update(PICTURE_PROPERTIES)
    properties[VECTOR_FIELD] = {"type": "knn_vector", "dimension": identity.dimension, "method": method}
    meta: dict[str, Any] = {"identity": identity.to_json()}
    if migrated_from:
        meta["migrated_from"] = migrated_from
    return {"settings": {"index": index_settings}, "mappings": {"_meta": {META_KEY: meta}, "properties": properties}}


def added_properties(mapping: dict[str, Any]) -> dict[str, Any] | None:
    """The ``PUT /<index>/_mapping`` body that types the fields later versions added, or None when none is missing.
    Without it a first document would map them dynamically (``taken_at`` as text on a cluster without date
    detection), and a field's type never changes afterwards."""
    present = mapping.get("properties") or {}
    missing = {name: spec for name, spec in PICTURE_PROPERTIES.items() if name not in present}
    return {"properties": missing} if missing else None


def identity_of(mapping: dict[str, Any]) -> IndexIdentity | None:
    raw = ((mapping.get("_meta") or {}).get(META_KEY) or {}).get("identity")
    return IndexIdentity.from_json(raw) if raw else None


def origin_of(mapping: dict[str, Any]) -> str | None:
    return ((mapping.get("_meta") or {}).get(META_KEY) or {}).get("migrated_from")


def vector_fields(mapping: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every knn_vector field of a mapping: the old index's vectors must not be copied into the new one."""
    return {name: spec for name, spec in (mapping.get("properties") or {}).items() if spec.get("type") == "knn_vector"}


def mapping_problems(mapping: dict[str, Any], expected: IndexIdentity | None = None) -> list[str]:
    """Each way a live mapping differs from what imgvec needs, as sentences a user can act on."""
    problems: list[str] = []
    vector = (mapping.get("properties") or {}).get(VECTOR_FIELD)
    others = sorted(set(vector_fields(mapping)) - {VECTOR_FIELD})
    if vector is None:
        hint = f" (it has knn_vector field(s) {', '.join(others)})" if others else ""
        problems.append(f"no field {VECTOR_FIELD!r}{hint}: this is not an imgvec index; migrate to a new one")
        return problems
    if vector.get("type") != "knn_vector":
        problems.append(f"{VECTOR_FIELD!r} is of type {vector.get('type')!r}, not knn_vector")
        return problems
    identity = identity_of(mapping)
    dimension = vector.get("dimension")
    method = vector.get("method") or {}
    space = method.get("space_type") or vector.get("space_type") or "l2"
    engine = method.get("engine") or "the cluster default"
    if identity is None:
        problems.append(
            f"no model identity in the mapping's _meta.{META_KEY}: imgvec cannot tell which model made its vectors"
        )
    elif dimension != identity.dimension:
        problems.append(f"the mapping says {dimension} dimensions but its _meta says {identity.describe()}")
    if expected is not None:
        if dimension != expected.dimension:
            problems.append(
                f"{VECTOR_FIELD!r} has {dimension} dimensions but {expected.model} produces {expected.dimension}; "
                "a dimension never changes on an existing field: migrate to a new index"
            )
        if identity is not None and (identity.architecture, identity.pretrained) != (
            expected.architecture,
            expected.pretrained,
        ):
            problems.append(f"the index holds vectors of {identity.describe()}, not of {expected.describe()}")
    if space != SPACE_TYPE:
        problems.append(f"space_type is {space!r}; imgvec reads scores as cosine similarity and needs {SPACE_TYPE}")
    if method and method.get("name") != "hnsw":
        problems.append(f"method is {method.get('name')!r}, not hnsw")
    if engine == "nmslib":
        problems.append("engine is nmslib: deprecated since OpenSearch 2.19 and refused for new indexes on 3.x")
    properties = mapping.get("properties") or {}
    for name in ("file_key", "doc_id"):
        kind = (properties.get(name) or {}).get("type")
        if kind not in (None, "keyword"):
            problems.append(f"{name!r} is of type {kind!r}; exact lookups need keyword")
    for name, spec in PICTURE_PROPERTIES.items():
        kind = (properties.get(name) or {}).get("type")
        if kind is not None and kind != spec["type"]:
            problems.append(
                f"{name!r} is of type {kind!r}, not {spec['type']!r} (mapped before imgvec typed it): searches "
                "cannot filter by it; migrate to a new index"
            )
    return problems


def search_filter(where: SearchFilter | None) -> dict[str, Any] | None:
    """The filter as one bool of filter clauses: what a k-NN query takes inside its clause (efficient filtering)."""
    if where is None:
        return None
    clauses: list[dict[str, Any]] = []
    if where.extensions:
        clauses.append({"terms": {"file_extension": [e.lower().lstrip(".") for e in where.extensions]}})
    if where.path_prefix:
        clauses.append({"prefix": {"file_path": where.path_prefix}})
    if where.taken_from is not None or where.taken_before is not None:
        span: dict[str, str] = {}
        if where.taken_from is not None:
            span["gte"] = where.taken_from.isoformat()
        if where.taken_before is not None:
            span["lt"] = where.taken_before.isoformat()
        clauses.append({"range": {"taken_at": span}})
    if where.cameras:
        names = list(where.cameras)
        clauses.append(
            {
                "bool": {
                    "should": [{"terms": {"camera_model": names}}, {"terms": {"camera_make": names}}],
                    "minimum_should_match": 1,
                }
            }
        )
    if where.near is not None:
        circle = where.near
        clauses.append(
            {
                "geo_distance": {
                    "distance": f"{circle.km}km",
                    "location": {"lat": circle.latitude, "lon": circle.longitude},
                }
            }
        )
    return {"bool": {"filter": clauses}} if clauses else None


def unfinished_query() -> dict[str, Any]:
    """Documents a run has to finish: no vector, or not read by this version of the picture reading."""
    read = {"range": {"picture_version": {"gte": PICTURE_VERSION}}}
    return {
        "bool": {
            "should": [
                {"bool": {"must_not": [{"exists": {"field": VECTOR_FIELD}}]}},
                {"bool": {"must_not": [read]}},
            ],
            "minimum_should_match": 1,
        }
    }


def facets_body() -> dict[str, Any]:
    """One aggregation request for ``Store.facets``: no hits, the cameras with their makes, the capture span."""
    return {
        "size": 0,
        "track_total_hits": False,
        "aggs": {
            "models": {
                "terms": {"field": "camera_model", "size": FACET_CAMERAS},
                "aggs": {"makes": {"terms": {"field": "camera_make", "size": 3}}},
            },
            "makes_alone": {
                "filter": {"bool": {"must_not": [{"exists": {"field": "camera_model"}}]}},
                "aggs": {"makes": {"terms": {"field": "camera_make", "size": FACET_CAMERAS}}},
            },
            "first": {"min": {"field": "taken_at"}},
            "last": {"max": {"field": "taken_at"}},
            "extensions": {"terms": {"field": "file_extension", "size": 100}},
            "located": {"filter": {"exists": {"field": "location"}}},
        },
    }
