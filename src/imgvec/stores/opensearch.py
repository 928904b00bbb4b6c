"""The OpenSearch store: the same protocol as the embedded store, over opensearch-py.

Designed within what Serverless allows (docs/opensearch.md): it never relies on a custom ``_id`` there (a
document is found by its ``doc_id`` keyword, indexed anew, and the old copy deleted), never calls ``_refresh``,
``_reindex`` or scroll there, and pages with point-in-time + ``search_after``. Every request body is built in this
module or in ``opensearch_mapping``, and the contract tests check each one against the OpenSearch API spec.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from imgvec.documents import PICTURE_FIELDS, ImageDocument, Picture, StoredFile, usable_vector
from imgvec.errors import IdentityMismatchError, IndexNotFoundError, StoreError
from imgvec.identity import IndexIdentity
from imgvec.stores.base import Camera, Facets, IndexStats, SearchFilter, SearchHit, field_types
from imgvec.stores.opensearch_bulk import BulkItem, send_bulk
from imgvec.stores.opensearch_client import request
from imgvec.stores.opensearch_copy import PAGE_SIZE, IndexCopying
from imgvec.stores.opensearch_mapping import (
    DEFAULT_ENGINE,
    VECTOR_FIELD,
    KnnIndexSettings,
    added_properties,
    facets_body,
    identity_of,
    index_body,
    mapping_problems,
    origin_of,
    search_filter,
    unfinished_query,
    vector_fields,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from opensearchpy import OpenSearch

LUCENE_CANDIDATES = 100
"""Candidates a lucene query collects, as faiss's default ef_search does (recall figures in docs/opensearch.md)."""
PIT_KEEP_ALIVE = "5m"
STATE_FIELDS = ["doc_id", "file_size", "mtime", "content_hash", "etag", *PICTURE_FIELDS]
SCAN_PAGE_SIZE = 5_000
"""Documents per page of ``scan`` (the id and a few doc values each)."""
SCAN_PAGE_SIZE_WITH_VECTORS = 1_000
"""With the vectors: about 10 MB of JSON a page at 512 dimensions."""
DOC_VALUE_TYPES = frozenset({"keyword", "long", "integer", "short", "byte", "double", "float", "date", "boolean"})
"""Mapping types whose values ``scan`` reads from doc values rather than the source."""
UNIQUE_SORT_FIELDS = ("doc_id", "s3_url", "file_path")
"""Keyword fields unique per document: a listing pages on the first one that every listed document holds (doc values,
cheap); otherwise on ``_id``. A field some documents lack sorts them as ``null``, and ``search_after: [null]`` finds
nothing after them: the worker writes no ``doc_id``, so sorting its documents on it ended every listing at one page."""


class OpenSearchStore(IndexCopying):
    def __init__(
        self,
        client: OpenSearch,
        index: str,
        *,
        serverless: bool = False,
        label: str = "",
        write_client: OpenSearch | None = None,
    ) -> None:
        """``write_client``: the same cluster without transport retries, for ``upsert`` and ``delete``, whose
        caller (the write path's ``RetryPolicy``) owns the retries of a whole failed request (docs/opensearch.md,
        "Who retries what"); None: ``client`` serves both."""
        self.client = client
        self.write_client = write_client or client
        self.index = index
        self.serverless = serverless
        self.label = label or "OpenSearch"
        self._identity: IndexIdentity | None = None
        self._vector_engine: str | None = None

    # -- identity -----------------------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self._call(self.client.indices.exists, index=self.index))

    def mapping(self) -> dict[str, Any]:
        """The live mapping of the index (or of the one index an alias points to)."""
        from opensearchpy import NotFoundError

        try:
            response = self._call(self.client.indices.get_mapping, index=self.index)
        except NotFoundError:
            raise IndexNotFoundError(f"no index {self.index!r} in {self.label}") from None
        if len(response) != 1:
            raise StoreError(f"{self.index!r} names {len(response)} indexes ({', '.join(sorted(response))}); use one")
        return next(iter(response.values())).get("mappings") or {}

    def identity(self) -> IndexIdentity | None:
        if self._identity is None and self.exists():
            self._identity = identity_of(self.mapping())
        return self._identity

    def _engine(self) -> str | None:
        """The k-NN engine of the vector field, read once."""
        if self._vector_engine is None:
            method = vector_fields(self.mapping()).get(VECTOR_FIELD, {}).get("method") or {}
            self._vector_engine = str(method.get("engine") or DEFAULT_ENGINE)
        return self._vector_engine

    def origin(self) -> str | None:
        return origin_of(self.mapping())

    def verify(self, expected: IndexIdentity | None = None) -> list[str]:
        return mapping_problems(self.mapping(), expected)

    def ensure_index(
        self, identity: IndexIdentity, *, migrated_from: str | None = None, config: object | None = None
    ) -> None:
        if config is not None and not isinstance(config, KnnIndexSettings):
            raise StoreError(f"an OpenSearch index takes KnnIndexSettings, not {type(config).__name__}")
        if self.exists():
            mapping = self.mapping()
            current = identity_of(mapping)
            if current is None:
                problems = "; ".join(mapping_problems(mapping, identity))
                raise IdentityMismatchError(
                    f"index {self.index!r} was not created by imgvec ({problems}). "
                    f"Create a new one with `imgvec index create`, or `imgvec migrate --from {self.index} --to NEW`."
                )
            current.require_compatible(identity)
            self._identity = current
            added = added_properties(mapping)
            if added is not None:
                self._call(self.client.indices.put_mapping, index=self.index, body=added)
            return
        body = index_body(
            identity, config or KnnIndexSettings(), migrated_from=migrated_from, serverless=self.serverless
        )
        self._call(self.client.indices.create, index=self.index, body=body)
        self._identity = identity

    # -- writes -------------------------------------------------------------------------------------

    def upsert(self, documents: Sequence[ImageDocument]) -> dict[str, str]:
        """Returns the documents the cluster rejected, by id, with its reason; the others are written."""
        if not documents:
            return {}
        identity = self.identity()
        sources = {doc.id: self._source(doc, identity) for doc in documents}
        filling = {doc.id for doc in documents if doc.item.doc_id is not None}
        if not self.serverless:
            return self._bulk(
                [
                    BulkItem(
                        doc_id,
                        {"update": {"_index": self.index, "_id": doc_id}},
                        # a document being filled (--missing) is only updated: if its writer deleted it meanwhile,
                        # the update fails with 404 for that file alone instead of making a document of our own
                        {"doc": source, "doc_as_upsert": doc_id not in filling},
                    )
                    for doc_id, source in sources.items()
                ],
                self.write_client,
            )
        # Serverless assigns ids itself: write the new version, then delete the old one(s).
        existing = self._existing(list(sources), self.write_client)
        writes = []
        for doc_id, source in sources.items():
            old = existing.get(doc_id, [])
            merged = {**(old[0][1] if old else {}), **source}  # keep fields another writer added
            writes.append(BulkItem(doc_id, {"index": {"_index": self.index}}, merged))
        rejected = self._bulk(writes, self.write_client)
        stale = [
            BulkItem(doc_id, {"delete": {"_index": self.index, "_id": hit_id}})
            for doc_id, hits in existing.items()
            if doc_id not in rejected
            for hit_id, _ in hits
        ]
        rejected.update(self._bulk(stale, self.write_client))
        return rejected

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        if self.serverless:
            existing = self._existing(list(ids), self.write_client)
            targets = [(doc_id, hit_id) for doc_id, hits in existing.items() for hit_id, _ in hits]
        else:
            targets = [(doc_id, doc_id) for doc_id in ids]
        deletes = [BulkItem(d, {"delete": {"_index": self.index, "_id": h}}) for d, h in targets]
        failed = self._bulk(deletes, self.write_client)
        failed = {i: reason for i, reason in failed.items() if not reason.startswith("HTTP 404")}  # already gone
        if failed:
            raise StoreError(f"{len(failed)} deletes failed, e.g. {next(iter(failed.values()))}")

    def _source(self, doc: ImageDocument, identity: IndexIdentity | None) -> dict[str, Any]:
        source: dict[str, Any] = {"doc_id": doc.id, **doc.fields()}
        if doc.item.indexed_at is None:
            source["indexed_at"] = source["indexed_at"].isoformat()
        else:  # filling a document that exists: a partial update leaves its indexed_at exactly as written
            del source["indexed_at"]
        if isinstance(source.get("taken_at"), datetime):
            source["taken_at"] = source["taken_at"].isoformat()
        if source.get("latitude") is not None and source.get("longitude") is not None:
            source["location"] = {"lat": source["latitude"], "lon": source["longitude"]}
        if doc.vector is not None:
            vector = np.asarray(doc.vector, dtype=np.float32).reshape(-1)
            if identity is not None:
                identity.require_dimension(vector.shape[0])
            if not usable_vector(vector):  # cosinesimil rejects zero vectors; NaN is a failed embedding
                raise StoreError(f"refusing a zero or non-finite vector for {doc.file_path}")
            source[VECTOR_FIELD] = vector.tolist()
        return {key: value for key, value in source.items() if value is not None}

    def _bulk(self, items: list[BulkItem], client: OpenSearch | None = None) -> dict[str, str]:
        """``client``: the write client for the write path; a migration's copy keeps the transport's retries."""
        client = client or self.client
        return send_bulk(lambda body: self._call(client.bulk, body=body), items)

    # -- reads --------------------------------------------------------------------------------------

    def _id_query(self, ids: list[str]) -> dict[str, Any]:
        """Matches documents by ``doc_id`` (what imgvec writes) or ``_id`` (documents another writer made)."""
        return {"bool": {"should": [{"terms": {"doc_id": ids}}, {"ids": {"values": ids}}], "minimum_should_match": 1}}

    def _existing(self, ids: list[str], client: OpenSearch) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        if not ids or not self.exists():
            return found
        body = {
            "query": self._id_query(ids),
            "size": len(ids) * 2,
            "_source": {"excludes": [VECTOR_FIELD]},
        }
        for hit in self._call(client.search, index=self.index, body=body)["hits"]["hits"]:
            doc_id = hit["_source"].get("doc_id") or hit["_id"]
            found.setdefault(doc_id, []).append((hit["_id"], hit["_source"]))
        return found

    def lookup(self, ids: Sequence[str]) -> dict[str, StoredFile]:
        if not ids or not self.exists():
            return {}
        ids = list(ids)
        query = self._id_query(ids)
        states = self._search({"query": query, "size": len(ids), "_source": STATE_FIELDS})["hits"]["hits"]
        with_vector_body = {
            "query": {"bool": {"filter": [query, {"exists": {"field": VECTOR_FIELD}}]}},
            "size": len(ids),
            "_source": ["doc_id"],
        }
        with_vector = {
            hit["_source"].get("doc_id") or hit["_id"] for hit in self._search(with_vector_body)["hits"]["hits"]
        }
        found = {}
        for hit in states:
            source = hit["_source"]
            doc_id = source.get("doc_id") or hit["_id"]
            found[doc_id] = StoredFile(
                file_size=int(source.get("file_size") or 0),
                mtime=float(source.get("mtime") or 0.0),
                content_hash=source.get("content_hash"),
                has_vector=doc_id in with_vector,
                etag=source.get("etag"),
                picture=Picture.of_fields(source),
            )
        return found

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids or not self.exists():
            return {}
        found: dict[str, dict[str, Any]] = {}
        ids = list(ids)
        for start in range(0, len(ids), PAGE_SIZE):
            chunk = ids[start : start + PAGE_SIZE]
            body = {"query": self._id_query(chunk), "size": len(chunk) * 2, "_source": {"excludes": [VECTOR_FIELD]}}
            for hit in self._search(body)["hits"]["hits"]:
                document = dict(hit["_source"])
                doc_id = document.get("doc_id") or hit["_id"]
                document.setdefault("id", doc_id)
                found[doc_id] = document
        return found

    def get(self, doc_id: str) -> tuple[dict[str, Any], np.ndarray | None] | None:
        if not self.exists():
            return None
        hits = self._search({"query": self._id_query([doc_id]), "size": 1})["hits"]["hits"]
        if not hits:
            return None
        document = dict(hits[0]["_source"])
        vector = document.pop(VECTOR_FIELD, None)
        document.setdefault("id", document.get("doc_id") or hits[0]["_id"])
        return document, None if vector is None else np.asarray(vector, dtype=np.float32)

    def vectors_by_hash(self, content_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        if not content_hashes or not self.exists():
            return {}
        hashes = sorted(set(content_hashes))
        body = {
            "query": {"bool": {"filter": [{"terms": {"content_hash": hashes}}, {"exists": {"field": VECTOR_FIELD}}]}},
            "size": len(hashes) * 4,
            "_source": ["content_hash", VECTOR_FIELD],
        }
        return {
            hit["_source"]["content_hash"]: np.asarray(hit["_source"][VECTOR_FIELD], dtype=np.float32)
            for hit in self._search(body)["hits"]["hits"]
        }

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[SearchHit]:
        identity = self.identity()
        if identity is None:
            raise IndexNotFoundError(f"index {self.index!r} does not exist or has no model identity")
        query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        identity.require_dimension(query_vector.shape[0])
        # lucene's candidate list is the query's k (it has no ef_search): ask for more, keep the best ``size``
        candidates = max(k, LUCENE_CANDIDATES) if self._engine() == "lucene" else k
        knn: dict[str, Any] = {"vector": query_vector.tolist(), "k": candidates}
        condition = search_filter(where)
        if condition is not None:
            knn["filter"] = condition  # inside the k-NN clause: k results come back when k match
        # ``location`` repeats latitude and longitude for geo filters: a hit has the fields the embedded store's have
        body = {"size": k, "query": {"knn": {VECTOR_FIELD: knn}}, "_source": {"excludes": [VECTOR_FIELD, "location"]}}
        hits = []
        for hit in self._search(body)["hits"]["hits"]:
            document = dict(hit["_source"])
            doc_id = document.get("doc_id") or hit["_id"]
            document.setdefault("id", doc_id)
            # cosinesimil scores are (1 + cos) / 2; users compare cosine similarities across backends
            hits.append(SearchHit(id=doc_id, score=2.0 * float(hit["_score"]) - 1.0, document=document))
        return hits

    def stats(self) -> IndexStats:
        mapping = self.mapping()
        identity = identity_of(mapping)
        # an imgvec index has image_vector; a foreign one is described by its first knn_vector field
        fields = vector_fields(mapping)
        vector_name = VECTOR_FIELD if VECTOR_FIELD in fields else next(iter(fields), VECTOR_FIELD)
        vector = fields.get(vector_name, {})
        documents = self._count(None)
        with_vector = self._count({"exists": {"field": vector_name}})
        return IndexStats(
            index=self.index,
            documents=documents,
            with_vector=with_vector,
            dimension=vector.get("dimension"),
            model=identity.model if identity else None,
            random_weights=bool(identity and identity.random_weights),
        )

    def facets(self) -> Facets:
        aggs = self._search(facets_body())["aggregations"]
        cameras = [
            Camera(next((m["key"] for m in bucket["makes"]["buckets"]), None), bucket["key"], bucket["doc_count"])
            for bucket in aggs["models"]["buckets"]
        ]
        cameras += [Camera(b["key"], None, b["doc_count"]) for b in aggs["makes_alone"]["makes"]["buckets"]]
        cameras.sort(key=lambda camera: -camera.count)

        def moment(name: str) -> datetime | None:
            value = aggs[name].get("value_as_string") if aggs[name].get("value") is not None else None
            return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

        return Facets(
            cameras=tuple(cameras),
            taken_first=moment("first"),
            taken_last=moment("last"),
            extensions=tuple((b["key"], b["doc_count"]) for b in aggs["extensions"]["buckets"]),
            located=int(aggs["located"]["doc_count"]),
        )

    def _count(self, query: dict[str, Any] | None) -> int:
        body = {"query": query} if query is not None else None
        return int(self._call(self.client.count, index=self.index, body=body)["count"])

    def documents(
        self, *, unfinished: bool = False, where: SearchFilter | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every document (or those a run has to finish, or under a path) as (id, fields without vectors), one page
        in memory."""
        if not self.exists():
            return
        mapping = self.mapping()
        properties = mapping.get("properties") or {}
        excluded = sorted(vector_fields(mapping)) or [VECTOR_FIELD]
        query = _query(search_filter(where), unfinished_query() if unfinished else None)
        for hit in self._pages(query, self._sort_for(query, properties), {"excludes": excluded}):
            yield hit["_source"].get("doc_id") or hit["_id"], hit["_source"]

    def scan(
        self, fields: Sequence[str], *, where: SearchFilter | None = None, with_vector: bool = False
    ) -> Iterator[pa.Table]:
        """Fields with doc values are read from them (the cluster need not parse each document's source, vector and
        all); large pages: both halve the time of a scan (docs/duplicates.md)."""
        if not self.exists():
            return
        properties = self.mapping().get("properties") or {}
        query = _query(search_filter(where), {"exists": {"field": VECTOR_FIELD}} if with_vector else None)
        valued = [name for name in ("doc_id", *fields) if (properties.get(name) or {}).get("type") in DOC_VALUE_TYPES]
        sourced = [name for name in fields if name not in valued] + ([VECTOR_FIELD] if with_vector else [])
        size = SCAN_PAGE_SIZE_WITH_VECTORS if with_vector else SCAN_PAGE_SIZE
        hits = self._pages(
            query, self._sort_for(query, properties), {"includes": sourced} if sourced else False, size, valued
        )
        while page := list(itertools.islice(hits, size)):
            yield _arrow_page(page, fields, with_vector)

    def _sort_for(self, query: dict[str, Any], properties: dict[str, Any]) -> list[dict[str, str]]:
        """A total order over the documents ``query`` matches, for search_after (see ``UNIQUE_SORT_FIELDS``)."""
        for name in UNIQUE_SORT_FIELDS:
            if (properties.get(name) or {}).get("type") != "keyword":
                continue
            lacking = {"bool": {"filter": [query], "must_not": [{"exists": {"field": name}}]}}
            if self._count(lacking) == 0:
                return [{name: "asc"}]
        return [{"_id": "asc"}]

    def _pages(
        self,
        query: dict[str, Any],
        sort: list[dict[str, str]],
        source: dict[str, list[str]] | bool,
        size: int | None = None,
        docvalue_fields: list[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Point-in-time + search_after (what Serverless and 2.4+ support); scroll where PIT is unavailable.

        The snapshot's total is checked against what the pages gave: a listing that ends early is an error, never
        a run that exits 0 with documents left behind."""
        from opensearchpy import NotFoundError, RequestError

        size = size or PAGE_SIZE
        body: dict[str, Any] = {"size": size, "query": query, "_source": source, "sort": sort}
        if docvalue_fields:
            body["docvalue_fields"] = docvalue_fields
        try:
            pit = self._call(self.client.create_pit, index=self.index, params={"keep_alive": PIT_KEEP_ALIVE})
        except (NotFoundError, RequestError):
            if self.serverless:
                raise
            yield from self._scroll(body)
            return
        pit_id = pit["pit_id"]
        try:
            after: list[Any] | None = None
            total: int | None = None
            listed = 0
            while True:
                page = {**body, "pit": {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE}, "track_total_hits": total is None}
                if after is not None:
                    page["search_after"] = after
                response = self._call(self.client.search, body=page)
                pit_id = response.get("pit_id", pit_id)
                if total is None:
                    total = int(response["hits"]["total"]["value"])
                hits = response["hits"]["hits"]
                listed += len(hits)
                yield from hits
                if len(hits) < size:
                    break
                after = hits[-1]["sort"]
            if listed < total:
                raise StoreError(
                    f"listing {self.index!r} stopped after {listed} of {total} documents (paging on "
                    f"{', '.join(next(iter(s)) for s in sort)}): nothing after them was read"
                )
        finally:
            self._call(self.client.delete_pit, body={"pit_id": [pit_id]})

    def _scroll(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from opensearchpy import helpers

        scan_body = {key: value for key, value in body.items() if key != "sort"}
        yield from helpers.scan(self.client, query=scan_body, index=self.index, size=PAGE_SIZE, scroll="5m")

    def _search(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.client.search, index=self.index, body=body)

    # -- housekeeping -------------------------------------------------------------------------------

    def optimize(self) -> None:
        """Make the writes searchable now; Serverless refreshes on its own (and answers _refresh with 404)."""
        if not self.serverless:
            self._call(self.client.indices.refresh, index=self.index)

    def _other(self, index: str) -> OpenSearchStore:
        """Another index of the same cluster, reached the same way."""
        return OpenSearchStore(
            self.client, index, serverless=self.serverless, label=self.label, write_client=self.write_client
        )

    def _call(self, method: Any, **kwargs: Any) -> Any:
        return request(method, self.label, self.index, **kwargs)


def _query(*clauses: dict[str, Any] | None) -> dict[str, Any]:
    """Every clause given (None: none), as one filter; all documents when there is none."""
    given: list[dict[str, Any]] = []
    for clause in clauses:
        if clause is not None and set(clause) == {"bool"} and set(clause["bool"]) == {"filter"}:
            given.extend(clause["bool"]["filter"])  # a filter of filters is the filters
        elif clause is not None:
            given.append(clause)
    return {"bool": {"filter": given}} if given else {"match_all": {}}


def _arrow_page(hits: list[dict[str, Any]], fields: Sequence[str], with_vector: bool) -> pa.Table:
    import pyarrow as pa

    """A page of hits as ``Store.scan`` returns it; dates as the embedded store types them."""

    def value(hit: dict[str, Any], name: str) -> Any:
        valued = (hit.get("fields") or {}).get(name)
        return valued[0] if valued else (hit.get("_source") or {}).get(name)

    columns: dict[str, pa.Array] = {"id": pa.array([value(hit, "doc_id") or hit["_id"] for hit in hits], pa.string())}
    for name in fields:
        values = [value(hit, name) for hit in hits]
        kind = field_types().get(name)
        if kind is not None and pa.types.is_timestamp(kind):
            values = [None if v is None else datetime.fromisoformat(str(v).replace("Z", "+00:00")) for v in values]
        columns[name] = pa.array(values, type=kind)
    if with_vector:
        block = np.asarray([hit["_source"][VECTOR_FIELD] for hit in hits], dtype=np.float32)
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
    return pa.table(columns)
