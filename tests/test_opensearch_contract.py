"""Every request imgvec sends to OpenSearch, checked against the official API specification.

No OpenSearch can run here: the recorder in ``opensearch_contract.py`` stands in for the socket only. Set
OPENSEARCH_URL to run the same flows against a real cluster (``test_opensearch_integration.py``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgvec.documents import PICTURE_VERSION, ImageDocument, SourceItem
from imgvec.errors import IdentityMismatchError, StoreError
from imgvec.identity import IndexIdentity
from imgvec.stores import opensearch as opensearch_store
from imgvec.stores import opensearch_bulk
from imgvec.stores.base import Circle, SearchFilter
from imgvec.stores.opensearch import OpenSearchStore
from imgvec.stores.opensearch_aliases import OpenSearchAliases
from imgvec.stores.opensearch_client import OpenSearchConnection, connect
from imgvec.stores.opensearch_mapping import KnnIndexSettings, index_body
from tests.opensearch_contract import (
    SPEC_FILE,
    RecordedCluster,
    Request,
    SpecValidator,
    load_spec,
    recording_connection,
)

pytestmark = pytest.mark.skipif(
    not SPEC_FILE.exists(),
    reason=f"the OpenSearch API specification is not at {SPEC_FILE} (set OPENSEARCH_API_SPEC to its folder)",
)

CLIP = IndexIdentity("ViT-B-32/openai", "ViT-B-32", "openai", 512, preprocess={"image_size": 224})
INDEX = "file-index-v3-knn-512"
URL = "https://search.example.org:9200"


@pytest.fixture(scope="module")
def validator() -> SpecValidator:
    return SpecValidator(load_spec())


@pytest.fixture
def cluster(validator: SpecValidator):
    recorded = RecordedCluster(validator)
    yield recorded
    assert not recorded.violations, "requests or answers outside the OpenSearch API spec:\n" + "\n".join(
        recorded.violations
    )


def client_for(cluster: RecordedCluster, **options: Any):
    return connect(OpenSearchConnection(url=URL, **options), connection_class=recording_connection(cluster))


def store_for(cluster: RecordedCluster, *, serverless: bool = False, index: str = INDEX, **options: Any):
    return OpenSearchStore(client_for(cluster, **options), index, serverless=serverless)


def existing_index(cluster: RecordedCluster, mappings: dict[str, Any], index: str = INDEX) -> None:
    cluster.on("HEAD", f"/{index}", (200, None))
    cluster.on("GET", f"/{index}/_mapping", (200, {index: {"mappings": mappings}}))


def documents_hold(cluster: RecordedCluster, fields: set[str], total: int, index: str = INDEX) -> None:
    """``_count`` as the listing asks it: how many listed documents lack a field (none lack ``fields``)."""

    def count(request: Request) -> tuple[int, Any]:
        lacking = request.body["query"]["bool"]["must_not"][0]["exists"]["field"]
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        return 200, {"count": 0 if lacking in fields else total, "_shards": shards}

    cluster.on("POST", f"/{index}/_count", count)


def ours(**options: Any) -> dict[str, Any]:
    return index_body(CLIP, KnnIndexSettings(**options))["mappings"]


def unit_vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def doc(n: int, vector: bool = True) -> ImageDocument:
    item = SourceItem.of_path(f"/nas/photos/img{n}.jpg", 1000 + n, 1_700_000_000.0 + n)
    return ImageDocument(item, unit_vector(n) if vector else None, content_hash=f"{n:064x}", model=CLIP.model)


def bulk_ok(request) -> tuple[int, Any]:
    items = []
    for line in request.body:
        kind = next(iter(line))
        if kind in ("index", "create", "update", "delete"):
            meta = line[kind]
            items.append(
                {kind: {"_index": meta["_index"], "_id": meta.get("_id", "srv-1"), "status": 200, "result": "updated"}}
            )
    return 200, {"took": 3, "errors": False, "items": items}


# -- the validator itself can fail --------------------------------------------------------------------------------


def test_validator_catches_typos_wrong_paths_and_unknown_parameters(validator: SpecValidator):
    from tests.opensearch_contract import Request

    good = Request("POST", f"/{INDEX}/_search", {}, {"query": {"knn": {"image_vector": {"vector": [0.1], "k": 3}}}}, {})
    assert validator.errors(good) == []
    typo = Request("POST", f"/{INDEX}/_search", {}, {"query": {"knn": {"image_vector": {"vectr": [0.1], "k": 3}}}}, {})
    assert any("vectr" in e or "vector" in e for e in validator.errors(typo))
    wrong_type = Request(
        "POST", f"/{INDEX}/_search", {}, {"query": {"knn": {"image_vector": {"vector": [0.1], "k": "x"}}}}, {}
    )
    assert validator.errors(wrong_type)
    unknown_param = Request("POST", "/_bulk", {"refreshh": "true"}, [{"delete": {"_index": INDEX, "_id": "1"}}], {})
    assert any("refreshh" in e for e in validator.errors(unknown_param))
    bad_mapping = index_body(CLIP, KnnIndexSettings())
    bad_mapping["mappings"]["properties"]["image_vector"]["dimensoin"] = 512
    assert any("dimensoin" in e for e in validator.errors(Request("PUT", f"/{INDEX}", {}, bad_mapping, {})))
    with pytest.raises(AssertionError, match="no such operation"):
        validator.errors(Request("POST", f"/{INDEX}/_knn_search_typo/x/y", {}, None, {}))


# -- index management ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["faiss", "lucene", "nmslib"])
def test_create_index_sends_a_valid_knn_mapping(cluster: RecordedCluster, engine: str):
    cluster.on("HEAD", f"/{INDEX}", (404, None))
    cluster.on("PUT", f"/{INDEX}", (200, {"acknowledged": True, "shards_acknowledged": True, "index": INDEX}))
    store = store_for(cluster)
    store.ensure_index(CLIP, config=KnnIndexSettings(shards=3, replicas=0, engine=engine, m=24, ef_construction=200))
    (create,) = cluster.of("indices.create")
    vector = create.body["mappings"]["properties"]["image_vector"]
    assert vector["type"] == "knn_vector" and vector["dimension"] == 512
    assert vector["method"]["name"] == "hnsw" and vector["method"]["space_type"] == "cosinesimil"
    assert vector["method"]["engine"] == engine and vector["method"]["parameters"]["m"] == 24
    settings = create.body["settings"]["index"]
    assert settings["knn"] is True and settings["number_of_shards"] == 3 and settings["number_of_replicas"] == 0
    if engine == "nmslib":
        assert settings["knn.algo_param.ef_search"] == 100
    elif engine == "faiss":
        assert vector["method"]["parameters"]["ef_search"] == 100
    else:  # a live 2.19 node refuses ef_search for lucene, whose candidate list is the query's k
        assert "ef_search" not in vector["method"]["parameters"]
    assert IndexIdentity.from_json(create.body["mappings"]["_meta"]["imgvec"]["identity"]) == CLIP
    for name in ("file_key", "bucket", "file_extension", "doc_id"):
        assert create.body["mappings"]["properties"][name]["type"] == "keyword"
    assert create.body["mappings"]["properties"]["indexed_at"]["type"] == "date"


def test_serverless_index_has_no_shard_settings(cluster: RecordedCluster):
    cluster.on("HEAD", f"/{INDEX}", (404, None))
    cluster.on("PUT", f"/{INDEX}", (200, {"acknowledged": True, "shards_acknowledged": True, "index": INDEX}))
    store_for(cluster, serverless=True).ensure_index(CLIP)
    (create,) = cluster.of("indices.create")
    assert "number_of_shards" not in create.body["settings"]["index"]


def test_old_1024_dim_index_is_refused_with_both_dimensions_named(cluster: RecordedCluster):
    old = {
        "properties": {
            "file_path": {"type": "keyword"},
            "image_vector": {"type": "knn_vector", "dimension": 1024, "method": {"name": "hnsw", "engine": "nmslib"}},
        }
    }
    existing_index(cluster, old)
    store = store_for(cluster)
    with pytest.raises(IdentityMismatchError, match="1024") as error:
        store.ensure_index(CLIP)
    assert "512" in str(error.value) and "migrate" in str(error.value)
    problems = store.verify(CLIP)
    assert any("1024 dimensions" in p and "512" in p for p in problems)
    assert any("nmslib" in p for p in problems)
    assert any("space_type is 'l2'" in p for p in problems)


def test_verify_passes_an_index_imgvec_created_and_names_a_model_mismatch(cluster: RecordedCluster):
    existing_index(cluster, ours())
    store = store_for(cluster)
    assert store.verify(CLIP) == []
    other = IndexIdentity("ViT-B-32/laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k", 512)
    assert any("not of ViT-B-32/laion2b" in p for p in store.verify(other))


# -- writes -------------------------------------------------------------------------------------------------------


def test_upsert_updates_by_id_with_the_vector_and_records_partial_failures(cluster: RecordedCluster, monkeypatch):
    monkeypatch.setattr(opensearch_bulk, "BULK_BACKOFF", 0.0)
    existing_index(cluster, ours())
    docs = [doc(1), doc(2), doc(3)]
    attempts = {"n": 0}

    def bulk(request):
        attempts["n"] += 1
        items = []
        for line in request.body[::2]:
            meta = line["update"]
            if meta["_id"] == docs[1].id:
                items.append(
                    {
                        "update": {
                            "_index": INDEX,
                            "_id": meta["_id"],
                            "status": 400,
                            "error": {
                                "type": "mapper_parsing_exception",
                                "reason": "failed to parse field [image_vector]",
                            },
                        }
                    }
                )
            elif meta["_id"] == docs[2].id and attempts["n"] == 1:
                items.append(
                    {
                        "update": {
                            "_index": INDEX,
                            "_id": meta["_id"],
                            "status": 429,
                            "error": {"type": "es_rejected_execution_exception", "reason": "queue full"},
                        }
                    }
                )
            else:
                items.append({"update": {"_index": INDEX, "_id": meta["_id"], "status": 200, "result": "updated"}})
        return 200, {"took": 1, "errors": True, "items": items}

    cluster.on("POST", "/_bulk", bulk)
    rejected = store_for(cluster).upsert(docs)
    assert rejected == {docs[1].id: "HTTP 400: mapper_parsing_exception: failed to parse field [image_vector]"}
    first, retry = cluster.of("bulk")
    assert [line["update"]["_id"] for line in first.body[::2]] == [d.id for d in docs]
    assert [line["update"]["_id"] for line in retry.body[::2]] == [docs[2].id]  # only the throttled one again
    payload = first.body[1]
    assert payload["doc_as_upsert"] is True and payload["doc"]["doc_id"] == docs[0].id
    assert len(payload["doc"]["image_vector"]) == 512
    assert payload["doc"]["file_path"] == "/nas/photos/img1.jpg" and payload["doc"]["indexed_at"].endswith("+00:00")


def test_bulk_requests_are_sized_by_bytes(cluster: RecordedCluster, monkeypatch):
    monkeypatch.setattr(opensearch_bulk, "BULK_BYTES", 64 * 1024)
    existing_index(cluster, ours())
    cluster.on("POST", "/_bulk", bulk_ok)
    assert store_for(cluster).upsert([doc(n) for n in range(40)]) == {}
    bulks = cluster.of("bulk")
    assert len(bulks) > 1
    assert sum(len(r.body) // 2 for r in bulks) == 40
    for request in bulks:
        assert sum(len(json.dumps(line)) + 1 for line in request.body) <= 64 * 1024 + 2 * len(request.body)


def test_zero_and_wrong_dimension_vectors_never_reach_the_cluster(cluster: RecordedCluster):
    existing_index(cluster, ours())
    store = store_for(cluster)
    zero = doc(1)
    zero.vector = np.zeros(512, dtype=np.float32)
    with pytest.raises(StoreError, match="zero"):
        store.upsert([zero])
    short = doc(2)
    short.vector = np.ones(1024, dtype=np.float32)
    with pytest.raises(IdentityMismatchError, match="1024"):
        store.upsert([short])
    assert not cluster.of("bulk")


def test_serverless_upsert_never_sends_an_id_and_replaces_the_old_document(cluster: RecordedCluster):
    existing_index(cluster, ours())
    new = doc(1)
    cluster.on(
        "POST",
        f"/{INDEX}/_search",
        (
            200,
            {
                "took": 1,
                "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {
                    "total": {"value": 1, "relation": "eq"},
                    "max_score": 1.0,
                    "hits": [
                        {
                            "_index": INDEX,
                            "_id": "1%3A0%3AaBcD",
                            "_score": 1.0,
                            "_source": {"doc_id": new.id, "file_path": new.file_path, "owner": "nas-worker"},
                        }
                    ],
                },
            },
        ),
    )
    cluster.on("POST", "/_bulk", bulk_ok)
    assert store_for(cluster, serverless=True).upsert([new]) == {}
    write, delete = cluster.of("bulk")
    assert write.body[0] == {"index": {"_index": INDEX}}
    assert write.body[1]["owner"] == "nas-worker" and write.body[1]["doc_id"] == new.id  # other fields kept
    assert delete.body == [{"delete": {"_index": INDEX, "_id": "1%3A0%3AaBcD"}}]
    assert not cluster.of("indices.refresh")


# -- reads --------------------------------------------------------------------------------------------------------


def search_answer(hits: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "took": 2,
        "timed_out": False,
        "_shards": {"total": 2, "successful": 2, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": None, "hits": hits},
        **extra,
    }


def test_knn_search_filters_inside_the_clause_and_returns_cosine(cluster: RecordedCluster):
    existing_index(cluster, ours())
    cluster.on(
        "POST",
        f"/{INDEX}/_search",
        (
            200,
            search_answer(
                [{"_index": INDEX, "_id": "a", "_score": 0.9, "_source": {"doc_id": "a", "file_path": "/nas/a.jpg"}}]
            ),
        ),
    )
    hits = store_for(cluster).search(unit_vector(0), 5, SearchFilter(extensions=("JPG", ".png"), path_prefix="/nas/"))
    (request,) = cluster.of("search")
    knn = request.body["query"]["knn"]["image_vector"]
    assert knn["k"] == 5 and len(knn["vector"]) == 512
    assert knn["filter"] == {
        "bool": {"filter": [{"terms": {"file_extension": ["jpg", "png"]}}, {"prefix": {"file_path": "/nas/"}}]}
    }
    assert request.body["_source"] == {"excludes": ["image_vector", "location"]}
    assert hits[0].id == "a" and hits[0].score == pytest.approx(0.8)  # (1 + cos) / 2 = 0.9

    where = SearchFilter(
        taken_from=datetime(2019, 1, 1, tzinfo=UTC),
        taken_before=datetime(2020, 1, 1, tzinfo=UTC),
        cameras=("Canon", "iPhone 12 Pro"),
        near=Circle(48.85, 2.35, 12.5),
    )
    store_for(cluster).search(unit_vector(0), 5, where)  # every clause passes the spec's validation
    clauses = cluster.of("search")[-1].body["query"]["knn"]["image_vector"]["filter"]["bool"]["filter"]
    assert clauses == [
        {"range": {"taken_at": {"gte": "2019-01-01T00:00:00+00:00", "lt": "2020-01-01T00:00:00+00:00"}}},
        {
            "bool": {
                "should": [
                    {"terms": {"camera_model": ["Canon", "iPhone 12 Pro"]}},
                    {"terms": {"camera_make": ["Canon", "iPhone 12 Pro"]}},
                ],
                "minimum_should_match": 1,
            }
        },
        {"geo_distance": {"distance": "12.5km", "location": {"lat": 48.85, "lon": 2.35}}},
    ]


def test_facets_are_one_aggregation_request(cluster: RecordedCluster):
    existing_index(cluster, ours())
    buckets = {
        "models": {
            "buckets": [
                {"key": "iPhone 8", "doc_count": 3, "makes": {"buckets": [{"key": "Apple", "doc_count": 3}]}},
                {"key": "EOS R5", "doc_count": 7, "makes": {"buckets": [{"key": "Canon", "doc_count": 7}]}},
            ]
        },
        "makes_alone": {"doc_count": 2, "makes": {"buckets": [{"key": "Leica", "doc_count": 2}]}},
        "first": {"value": 1.5e12, "value_as_string": "2017-07-14T02:40:00.000Z"},
        "last": {"value": None},
        "extensions": {"buckets": [{"key": "jpg", "doc_count": 12}]},
        "located": {"doc_count": 4},
    }
    cluster.on("POST", f"/{INDEX}/_search", (200, search_answer([], aggregations=buckets)))
    facets = store_for(cluster).facets()
    (request,) = cluster.of("search")
    assert request.body["size"] == 0 and set(request.body["aggs"]) == set(buckets)
    assert [(c.name, c.count) for c in facets.cameras] == [("Canon EOS R5", 7), ("Apple iPhone 8", 3), ("Leica", 2)]
    assert (facets.taken_first, facets.taken_last) == (datetime(2017, 7, 14, 2, 40, tzinfo=UTC), None)
    assert (facets.extensions, facets.located) == ((("jpg", 12),), 4)


def test_status_counts_documents_with_and_without_vectors(cluster: RecordedCluster):
    existing_index(cluster, ours())
    cluster.on(
        "POST",
        f"/{INDEX}/_count",
        lambda r: (
            200,
            {
                "count": 7 if r.body and "exists" in json.dumps(r.body) else 10,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            },
        ),
    )
    cluster.on(
        "GET",
        f"/{INDEX}/_count",
        (200, {"count": 10, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
    )
    stats = store_for(cluster).stats()
    assert stats.as_dict() == {
        "index": INDEX,
        "documents": 10,
        "with_vector": 7,
        "without_vector": 3,
        "dimension": 512,
        "model": CLIP.model,
        "random_weights": False,
    }


def test_get_finds_a_worker_document_by_its_id_and_splits_off_the_vector(cluster: RecordedCluster):
    existing_index(cluster, ours())
    source = {"file_path": "/nas/a.jpg", "image_vector": [0.5] * 4}
    cluster.on(
        "POST",
        f"/{INDEX}/_search",
        (200, search_answer([{"_index": INDEX, "_id": "w1", "_score": 1.0, "_source": source}])),
    )
    fields, vector = store_for(cluster).get("w1")
    assert fields == {"file_path": "/nas/a.jpg", "id": "w1"}
    assert vector is not None and vector.dtype == np.float32 and vector.tolist() == [0.5] * 4
    assert cluster.of("search")[0].body["query"]["bool"]["should"][1] == {"ids": {"values": ["w1"]}}
    cluster.on("POST", f"/{INDEX}/_search", (200, search_answer([])))
    assert store_for(cluster).get("absent") is None


def test_lookup_matches_by_doc_id_or_worker_id(cluster: RecordedCluster):
    existing_index(cluster, ours())

    def search(request):
        if "exists" in json.dumps(request.body):
            return 200, search_answer([{"_index": INDEX, "_id": "w1", "_score": 0.0, "_source": {}}])
        return 200, search_answer(
            [
                {"_index": INDEX, "_id": "w1", "_score": 1.0, "_source": {"file_size": 5, "content_hash": "h"}},
                {
                    "_index": INDEX,
                    "_id": "x",
                    "_score": 1.0,
                    "_source": {"doc_id": "mine", "file_size": 6, "mtime": 2.5, "etag": "e"},
                },
            ]
        )

    cluster.on("POST", f"/{INDEX}/_search", search)
    found = store_for(cluster).lookup(["w1", "mine", "absent"])
    assert set(found) == {"w1", "mine"}
    assert found["w1"].has_vector and found["w1"].file_size == 5
    assert not found["mine"].has_vector and found["mine"].etag == "e" and found["mine"].mtime == 2.5
    query = cluster.of("search")[0].body["query"]["bool"]["should"]
    assert query == [{"terms": {"doc_id": ["w1", "mine", "absent"]}}, {"ids": {"values": ["w1", "mine", "absent"]}}]


def test_missing_vectors_are_paged_with_pit_and_search_after(cluster: RecordedCluster, monkeypatch):
    monkeypatch.setattr(opensearch_store, "PAGE_SIZE", 2)
    existing_index(cluster, ours())
    documents_hold(cluster, {"file_path"}, 3)  # the worker's documents: no doc_id, no s3_url
    cluster.on(
        "POST",
        f"/{INDEX}/_search/point_in_time",
        (
            200,
            {
                "pit_id": "pit-1",
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "creation_time": 1,
            },
        ),
    )
    cluster.on("DELETE", "/_search/point_in_time", (200, {"pits": [{"pit_id": "pit-1", "successful": True}]}))
    pages = [
        [
            {
                "_index": INDEX,
                "_id": f"w{n}",
                "_score": None,
                "_source": {"file_path": f"/nas/{n}.jpg"},
                "sort": [f"/nas/{n}.jpg"],
            }
            for n in (1, 2)
        ],
        [
            {
                "_index": INDEX,
                "_id": "w3",
                "_score": None,
                "_source": {"file_path": "/nas/3.jpg"},
                "sort": ["/nas/3.jpg"],
            }
        ],
    ]

    def page(request: Request) -> tuple[int, Any]:
        answer = search_answer(pages[1 if "search_after" in request.body else 0], pit_id="pit-1")
        answer["hits"]["total"]["value"] = 3  # the snapshot's total, on the first page
        return 200, answer

    cluster.on("POST", "/_search", page)
    found = list(store_for(cluster).documents(unfinished=True))
    assert [i for i, _ in found] == ["w1", "w2", "w3"]
    first, second = cluster.of("search")
    # no vector, or read by an older imgvec (before the hash, or the camera and place): both finished by the run
    read = {"range": {"picture_version": {"gte": PICTURE_VERSION}}}
    lacking_either = [{"bool": {"must_not": [{"exists": {"field": "image_vector"}}]}}, {"bool": {"must_not": [read]}}]
    missing = {"bool": {"filter": [{"bool": {"should": lacking_either, "minimum_should_match": 1}}]}}
    assert first.body["query"] == missing
    assert first.body["pit"] == {"id": "pit-1", "keep_alive": "5m"} and first.body["track_total_hits"] is True
    # doc_id would sort them all as null, and search_after [null] ends the listing at one page
    assert first.body["sort"] == [{"file_path": "asc"}]
    assert second.body["search_after"] == ["/nas/2.jpg"] and second.body["track_total_hits"] is False
    lacking = [r.body["query"]["bool"]["must_not"][0]["exists"]["field"] for r in cluster.of("count")]
    assert lacking == ["doc_id", "s3_url", "file_path"]
    assert all(r.body["query"]["bool"]["filter"] == [missing] for r in cluster.of("count"))
    assert cluster.of("delete_pit")[0].body == {"pit_id": ["pit-1"]}
    assert not cluster.of("scroll")


def test_a_scan_reads_doc_values_in_large_pages_and_the_vectors_from_the_source(cluster: RecordedCluster, monkeypatch):
    monkeypatch.setattr(opensearch_store, "SCAN_PAGE_SIZE_WITH_VECTORS", 2)
    existing_index(cluster, ours())
    documents_hold(cluster, {"doc_id"}, 3)
    shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
    opened = {"pit_id": "pit-2", "_shards": shards, "creation_time": 1}
    cluster.on("POST", f"/{INDEX}/_search/point_in_time", (200, opened))
    cluster.on("DELETE", "/_search/point_in_time", (200, {"pits": [{"pit_id": "pit-2", "successful": True}]}))

    def hit(n: int) -> dict[str, Any]:
        fields = {"doc_id": [f"d{n}"], "perceptual_hash": [-5 - n], "taken_at": ["2019-05-01T09:00:00.000Z"]}
        source = {"image_vector": unit_vector(n).tolist()}
        return {"_index": INDEX, "_id": f"d{n}", "_score": None, "_source": source, "fields": fields, "sort": [f"d{n}"]}

    def page(request: Request) -> tuple[int, Any]:
        after = request.body.get("search_after")
        hits = [hit(3)] if after else [hit(1), hit(2)]
        answer = search_answer(hits, pit_id="pit-2")
        answer["hits"]["total"]["value"] = 3
        return 200, answer

    cluster.on("POST", "/_search", page)
    pages = list(store_for(cluster).scan(["perceptual_hash", "taken_at"], with_vector=True))
    assert [p.num_rows for p in pages] == [2, 1]
    assert pages[0].column("id").to_pylist() == ["d1", "d2"]
    assert pages[0].column("perceptual_hash").to_pylist() == [-6, -7]
    assert pages[1].column("taken_at")[0].as_py() == datetime(2019, 5, 1, 9, 0, tzinfo=UTC)
    assert np.allclose(pages[1].column("vector")[0].values.to_numpy(), unit_vector(3))
    first = cluster.of("search")[0].body
    assert first["docvalue_fields"] == ["doc_id", "perceptual_hash", "taken_at"]
    assert first["_source"] == {"includes": ["image_vector"]} and first["size"] == 2
    assert first["query"] == {"bool": {"filter": [{"exists": {"field": "image_vector"}}]}}


def test_a_listing_pages_on_id_when_no_unique_field_is_complete_and_refuses_to_end_early(
    cluster: RecordedCluster, monkeypatch
):
    monkeypatch.setattr(opensearch_store, "PAGE_SIZE", 2)
    existing_index(cluster, ours())
    documents_hold(cluster, set(), 5)
    cluster.on(
        "POST",
        f"/{INDEX}/_search/point_in_time",
        (200, {"pit_id": "p", "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}, "creation_time": 1}),
    )
    cluster.on("DELETE", "/_search/point_in_time", (200, {"pits": [{"pit_id": "p", "successful": True}]}))
    hits = [{"_index": INDEX, "_id": f"w{n}", "_score": None, "_source": {}, "sort": [f"w{n}"]} for n in range(3)]

    def page(request: Request) -> tuple[int, Any]:
        shown = hits[:2] if "search_after" not in request.body else hits[2:]
        answer = search_answer(shown, pit_id="p")
        answer["hits"]["total"]["value"] = 5  # two documents the pages never gave
        return 200, answer

    cluster.on("POST", "/_search", page)
    listed = []
    with pytest.raises(StoreError, match="stopped after 3 of 5 documents"):
        for doc_id, _ in store_for(cluster).documents(unfinished=True):
            listed.append(doc_id)
    assert listed == ["w0", "w1", "w2"]
    assert cluster.of("search")[0].body["sort"] == [{"_id": "asc"}]
    assert cluster.of("delete_pit")  # the point in time is closed all the same


def test_sync_finds_a_folders_documents_by_prefix_and_deletes_them_by_id(cluster: RecordedCluster):
    """What `sync` and `watch` send to delete the documents of files that are gone."""
    existing_index(cluster, ours())
    cluster.on(
        "POST",
        f"/{INDEX}/_search/point_in_time",
        (200, {"pit_id": "pit-2", "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
    )
    cluster.on("DELETE", "/_search/point_in_time", (200, {"pits": [{"pit_id": "pit-2", "successful": True}]}))
    documents_hold(cluster, {"doc_id", "s3_url", "file_path"}, 1)
    hit = {"_index": INDEX, "_id": "d1", "_score": None, "_source": {"file_path": "/nas/old/1.jpg"}, "sort": ["d1"]}
    cluster.on("POST", "/_search", (200, search_answer([hit], pit_id="pit-2")))
    cluster.on("POST", "/_bulk", bulk_ok)
    store = store_for(cluster)
    found = list(store.documents(where=SearchFilter(path_prefix="/nas/old/")))
    assert [doc_id for doc_id, _ in found] == ["d1"]
    [search] = cluster.of("search")
    assert search.body["query"] == {"bool": {"filter": [{"prefix": {"file_path": "/nas/old/"}}]}}
    store.delete(["d1"])
    [bulk] = cluster.of("bulk")
    assert bulk.body == [{"delete": {"_index": INDEX, "_id": "d1"}}]


def test_scroll_is_the_fallback_where_pit_is_unavailable(cluster: RecordedCluster):
    existing_index(cluster, ours())
    documents_hold(cluster, {"doc_id"}, 1)
    cluster.on(
        "POST",
        f"/{INDEX}/_search/point_in_time",
        (404, {"error": {"type": "invalid_index_name_exception", "reason": "no such endpoint"}, "status": 404}),
    )
    cluster.on(
        "POST",
        f"/{INDEX}/_search",
        (
            200,
            search_answer(
                [{"_index": INDEX, "_id": "w1", "_score": None, "_source": {"file_path": "/a.jpg"}}], _scroll_id="s1"
            ),
        ),
    )
    cluster.on("POST", "/_search/scroll", (200, search_answer([], _scroll_id="s1")))
    cluster.on("DELETE", "/_search/scroll", (200, {"succeeded": True, "num_freed": 1}))
    assert [i for i, _ in store_for(cluster).documents()] == ["w1"]
    assert cluster.of("scroll")


# -- migration ----------------------------------------------------------------------------------------------------


OLD = "file-index-v2-knn"
OLD_MAPPING = {
    "properties": {
        "file_path": {"type": "keyword"},
        "file_key": {"type": "keyword"},
        "image_vector": {"type": "knn_vector", "dimension": 1024},
    }
}


def test_writes_after_a_mark_are_copied_per_shard_in_sequence_order(cluster: RecordedCluster):
    """What a migration sends to catch up with a writer that kept writing to the old index (pipeline/migrate.py)."""
    existing_index(cluster, ours())
    existing_index(cluster, OLD_MAPPING, OLD)
    shard = {"routing": {"state": "STARTED", "primary": True, "node": "n1", "relocating_node": None}}
    replica = {"routing": {"state": "STARTED", "primary": False, "node": "n2", "relocating_node": None}}
    cluster.on(
        "GET",
        f"/{OLD}/_stats/docs",
        (
            200,
            {
                "_shards": {"total": 3, "successful": 3, "failed": 0},
                "_all": {"primaries": {}, "total": {}},
                "indices": {
                    OLD: {
                        "uuid": "u",
                        "primaries": {},
                        "total": {},
                        "shards": {
                            "0": [
                                {**shard, "seq_no": {"max_seq_no": 9, "local_checkpoint": 9, "global_checkpoint": 8}},
                                {**replica, "seq_no": {"max_seq_no": 9, "local_checkpoint": 7, "global_checkpoint": 7}},
                            ],
                            "1": [
                                {**shard, "seq_no": {"max_seq_no": 4, "local_checkpoint": 4, "global_checkpoint": 4}}
                            ],
                        },
                    }
                },
            },
        ),
    )
    cluster.on("POST", f"/{OLD}/_refresh", (200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}))
    hit = {"_index": OLD, "_id": "w7", "_score": None, "_source": {"file_path": "/nas/7.jpg"}, "sort": [12]}
    cluster.on(
        "POST",
        f"/{OLD}/_search",
        lambda r: (200, search_answer([hit] if r.params["preference"] == "_shards:0" else [])),
    )
    cluster.on("POST", "/_bulk", bulk_ok)
    old, new = store_for(cluster, index=OLD), store_for(cluster)
    mark = old.change_mark()
    assert mark == {"0": 8, "1": 4}  # the primaries' global checkpoints: every write up to them is on every copy
    assert cluster.of("indices.stats")[0].params == {"level": "shards"}
    assert new.copy_changes(OLD, {"0": 3, "1": 4}) == 1
    first, second = cluster.of("search")
    assert first.params == {"preference": "_shards:0"} and second.params == {"preference": "_shards:1"}
    assert first.body["query"] == {"range": {"_seq_no": {"gt": 3}}} and first.body["sort"] == [{"_seq_no": "asc"}]
    assert second.body["query"] == {"range": {"_seq_no": {"gt": 4}}}
    [bulk] = cluster.of("bulk")
    assert bulk.body == [{"index": {"_index": INDEX, "_id": "w7"}}, {"file_path": "/nas/7.jpg", "doc_id": "w7"}]
    assert store_for(cluster, serverless=True, index=OLD).change_mark() is None


def test_reindex_copies_without_the_old_vectors_and_keeps_filled_ones(cluster: RecordedCluster):
    existing_index(cluster, ours())
    existing_index(cluster, OLD_MAPPING, OLD)
    cluster.on("POST", "/_reindex", (200, {"task": "node-1:42"}))
    polls = iter([False, True])
    cluster.on(
        "GET",
        "/_tasks/node-1(:|%3A)42",
        lambda _r: (
            200,
            {
                "completed": next(polls),
                "task": {
                    "node": "node-1",
                    "id": 42,
                    "headers": {},
                    "type": "transport",
                    "action": "indices:data/write/reindex",
                    "start_time_in_millis": 1,
                    "running_time_in_nanos": 1,
                    "cancellable": True,
                },
                "response": {
                    "took": 5,
                    "timed_out": False,
                    "total": 3,
                    "created": 3,
                    "updated": 0,
                    "deleted": 0,
                    "batches": 1,
                    "version_conflicts": 0,
                    "noops": 0,
                    "retries": {"bulk": 0, "search": 0},
                    "throttled_millis": 0,
                    "requests_per_second": -1.0,
                    "throttled_until_millis": 0,
                    "failures": [],
                },
            },
        ),
    )
    assert store_for(cluster).copy_from(OLD, poll_seconds=0) == 3
    (reindex,) = cluster.of("reindex")
    assert reindex.body["source"] == {"index": OLD}
    assert reindex.body["script"]["params"] == {"drop": ["image_vector"]}
    assert "ctx._source.remove" in reindex.body["script"]["source"]
    assert reindex.body["dest"] == {"index": INDEX, "op_type": "create"} and reindex.body["conflicts"] == "proceed"
    assert reindex.params == {"wait_for_completion": "false", "refresh": "true"}


def test_serverless_copy_streams_documents_and_sets_doc_id(cluster: RecordedCluster):
    existing_index(cluster, ours())
    existing_index(cluster, OLD_MAPPING, OLD)
    cluster.on(
        "POST",
        f"/{INDEX}/_count",
        (200, {"count": 0, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
    )
    cluster.on(
        "GET",
        f"/{INDEX}/_count",
        (200, {"count": 0, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
    )
    documents_hold(cluster, {"file_path"}, 1, index=OLD)
    cluster.on(
        "POST",
        f"/{OLD}/_search/point_in_time",
        (200, {"pit_id": "p", "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}, "creation_time": 1}),
    )
    cluster.on("DELETE", "/_search/point_in_time", (200, {"pits": [{"pit_id": "p", "successful": True}]}))
    cluster.on(
        "POST",
        "/_search",
        (
            200,
            search_answer(
                [
                    {
                        "_index": OLD,
                        "_id": "w1",
                        "_score": None,
                        "_source": {"file_path": "/nas/1.jpg", "file_key": "1.jpg"},
                        "sort": ["/nas/1.jpg"],
                    }
                ],
                pit_id="p",
            ),
        ),
    )
    cluster.on("POST", "/_bulk", bulk_ok)
    assert store_for(cluster, serverless=True).copy_from(OLD) == 1
    search = cluster.of("search")[0]
    assert search.body["sort"] == [{"file_path": "asc"}] and search.body["_source"] == {"excludes": ["image_vector"]}
    (bulk,) = cluster.of("bulk")
    assert bulk.body == [{"index": {"_index": INDEX}}, {"file_path": "/nas/1.jpg", "file_key": "1.jpg", "doc_id": "w1"}]
    assert not cluster.of("reindex")


def test_alias_switch_is_one_atomic_call(cluster: RecordedCluster):
    cluster.on("GET", "/_alias/file-index-current", (200, {OLD: {"aliases": {"file-index-current": {}}}}))
    cluster.on("POST", "/_aliases", (200, {"acknowledged": True}))
    previous = OpenSearchAliases(client_for(cluster)).switch("file-index-current", INDEX)
    assert previous == OLD
    (update,) = cluster.of("indices.update_aliases")
    assert update.body == {
        "actions": [
            {"remove": {"index": OLD, "alias": "file-index-current"}},
            {"add": {"index": INDEX, "alias": "file-index-current"}},
        ]
    }


# -- auth ---------------------------------------------------------------------------------------------------------


def test_sigv4_signs_for_serverless_with_the_aoss_service(cluster: RecordedCluster, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    cluster.on("HEAD", f"/{INDEX}", (200, None))
    options = OpenSearchConnection(url="https://abc123.us-west-2.aoss.amazonaws.com")
    assert options.serverless and options.region == "us-west-2"
    client = connect(options, connection_class=recording_connection(cluster))
    assert OpenSearchStore(client, INDEX, serverless=True).exists()
    headers = cluster.requests[0].headers
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/us-west-2/aoss/aws4_request" in headers["authorization"]
    assert "x-amz-date" in headers and "x-amz-content-sha256" in headers


def test_basic_auth_and_errors_name_the_cluster_without_the_password(cluster: RecordedCluster):
    cluster.on("HEAD", f"/{INDEX}", (401, None))
    store = OpenSearchStore(client_for(cluster, username="admin", password="s3cret!"), INDEX, label=URL)
    with pytest.raises(StoreError, match="refused the credentials") as error:
        store.exists()
    assert "s3cret" not in str(error.value)
    assert cluster.requests[0].headers["authorization"].startswith("Basic ")


def test_unreachable_cluster_is_one_clear_error():
    store = OpenSearchStore(
        connect(OpenSearchConnection(url="http://127.0.0.1:9", timeout=2), connection_class=None),
        INDEX,
        label="http://127.0.0.1:9",
    )
    store.client.transport.max_retries = 0
    with pytest.raises(StoreError, match=r"cannot reach http://127\.0\.0\.1:9"):
        store.exists()


# -- the whole fill, from the pipeline down to the bulk body ------------------------------------------------------


def test_ingest_missing_fills_worker_documents_in_place(cluster: RecordedCluster, tiny_embedder, tmp_path: Path):
    from imgvec.pipeline.indexer import Indexer
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.sources.index import IndexDocuments

    files = []
    for n in range(3):
        path = tmp_path / f"photo{n}.jpg"
        Image.new("RGB", (40 + n, 30), (n * 60, 90, 200)).save(path)
        files.append(path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    worker_docs = [
        {
            "_index": INDEX,
            "_id": f"w{n}",
            "_score": None,
            "sort": [f"w{n}"],
            "_source": {
                "file_name": p.name,
                "file_path": str(p),
                "file_extension": "jpg",
                "file_size": p.stat().st_size,
            },
        }
        for n, p in enumerate([*files, tmp_path / "broken.jpg"])
    ]
    identity = tiny_embedder.identity
    existing_index(cluster, index_body(identity, KnnIndexSettings())["mappings"])
    documents_hold(cluster, {"file_path"}, len(worker_docs))
    cluster.on(
        "POST",
        f"/{INDEX}/_search/point_in_time",
        (200, {"pit_id": "p", "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}, "creation_time": 1}),
    )
    cluster.on("DELETE", "/_search/point_in_time", (200, {"pits": [{"pit_id": "p", "successful": True}]}))
    cluster.on("POST", "/_search", (200, search_answer(worker_docs, pit_id="p")))
    cluster.on("POST", f"/{INDEX}/_search", (200, search_answer([])))  # lookups and the content cache: nothing yet
    cluster.on("POST", "/_bulk", bulk_ok)
    cluster.on("POST", f"/{INDEX}/_refresh", (200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}))
    store = store_for(cluster)
    report = Indexer(
        IndexDocuments(store), store, tiny_embedder, PipelineOptions(workers=0, batch_size=8, io_concurrency=2)
    ).run()
    assert report.embedded == 3 and [f.file_path for f in report.failures] == [str(tmp_path / "broken.jpg")]
    updates = {
        line["update"]["_id"]: payload
        for line, payload in zip(cluster.of("bulk")[0].body[::2], cluster.of("bulk")[0].body[1::2], strict=True)
    }
    assert set(updates) == {"w0", "w1", "w2"}  # the worker's own ids: vectors land in its documents
    for n, path in enumerate(files):
        fields = updates[f"w{n}"]["doc"]
        assert fields["doc_id"] == f"w{n}" and fields["file_path"] == str(path)
        assert len(fields["image_vector"]) == 512 and fields["model"] == identity.model
        assert fields["content_hash"] and np.linalg.norm(fields["image_vector"]) == pytest.approx(1.0, abs=1e-4)
    assert cluster.of("indices.refresh")


def test_an_index_from_before_the_picture_fields_is_given_their_types_once(cluster: RecordedCluster):
    from imgvec.stores.opensearch_mapping import PICTURE_PROPERTIES

    older = ours()
    for name in PICTURE_PROPERTIES:
        del older["properties"][name]
    existing_index(cluster, older)
    cluster.on("PUT", f"/{INDEX}/_mapping", (200, {"acknowledged": True}))
    store_for(cluster).ensure_index(CLIP)
    (added,) = cluster.of("indices.put_mapping")
    assert added.body == {"properties": PICTURE_PROPERTIES}

    current = RecordedCluster(cluster.validator)
    existing_index(current, ours())
    store_for(current).ensure_index(CLIP)
    assert not current.of("indices.put_mapping")  # an index that has them is left alone
