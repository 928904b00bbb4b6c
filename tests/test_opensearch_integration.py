"""The OpenSearch store and pipeline against a live cluster: create, fill, search, migrate, roll back; sync and watch.

The cluster is OPENSEARCH_URL, or the node scripts/opensearch.sh starts (conftest.py). That node has no k-NN native
libraries, so every index here uses the lucene engine. Throwaway index names, deleted afterwards.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from imgvec.documents import ImageDocument, SourceItem
from imgvec.pipeline.continuous.watch import Watcher, WatchOptions
from imgvec.pipeline.indexer import Indexer
from imgvec.pipeline.migrate import migrate, rollback
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.sync import SyncResult, reconcile
from imgvec.sources.index import IndexDocuments
from imgvec.sources.local import LocalFolder
from imgvec.stores.opensearch import OpenSearchStore
from imgvec.stores.opensearch_aliases import OpenSearchAliases
from imgvec.stores.opensearch_client import OpenSearchConnection, connect
from imgvec.stores.opensearch_mapping import KnnIndexSettings
from tests.helpers import photo

pytestmark = pytest.mark.opensearch
LIVE = KnnIndexSettings(engine="lucene", shards=1, replicas=0)
"""A node without the k-NN native libraries dies at the first refresh of a faiss index: lucene only."""


@pytest.fixture
def cluster(opensearch_url: str):
    options = OpenSearchConnection(
        url=opensearch_url,
        username=os.environ.get("IMGVEC_OPENSEARCH_USER"),
        password=os.environ.get("IMGVEC_OPENSEARCH_PASSWORD"),
        verify_certs=os.environ.get("IMGVEC_OPENSEARCH_VERIFY_CERTS", "true").lower() != "false",
    )
    client = connect(options)
    prefix = f"imgvec-test-{uuid.uuid4().hex[:8]}"
    yield client, prefix, options.serverless
    client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)


def test_create_fill_search_migrate_rollback(cluster, tiny_embedder, tmp_path: Path):
    client, prefix, serverless = cluster
    folder = tmp_path / "nas"
    folder.mkdir()
    for n in range(6):
        photo(n).save(folder / f"photo{n}.jpg")

    first = OpenSearchStore(client, f"{prefix}-v1", serverless=serverless)
    first.ensure_index(tiny_embedder.identity, config=LIVE)
    report = Indexer(LocalFolder(str(folder)), first, tiny_embedder, PipelineOptions(workers=0)).run()
    assert report.embedded == 6 and first.verify(tiny_embedder.identity) == []
    hits = first.search(tiny_embedder.embed_texts(["a photo"])[0], 3)
    assert len(hits) == 3 and all(-1.0 <= h.score <= 1.0 for h in hits)

    # a worker document without a vector, filled in place
    extra = folder / "late.jpg"
    photo(99).save(extra)
    worker_fields = {"file_name": extra.name, "file_path": str(extra), "file_extension": "jpg"}
    client.index(index=first.index, id=f"worker-{prefix}", body=worker_fields | {"file_size": extra.stat().st_size})
    first.optimize()
    assert first.stats().without_vector == 1
    filled = Indexer(IndexDocuments(first), first, tiny_embedder, PipelineOptions(workers=0)).run()
    assert filled.embedded + filled.cache_hits == 1
    first.optimize()
    assert first.stats().without_vector == 0

    second = OpenSearchStore(client, f"{prefix}-v2", serverless=serverless)
    aliases = OpenSearchAliases(client)
    alias = f"{prefix}-current"
    result = migrate(
        first,
        second,
        aliases,
        alias=alias,
        identity=tiny_embedder.identity,
        config=LIVE,
        fill=lambda: Indexer(IndexDocuments(second), second, tiny_embedder, PipelineOptions(workers=0)).run(),
    )
    assert result.switched and result.target_stats.with_vector == 7
    assert aliases.target(alias) == second.index
    via_alias = OpenSearchStore(client, alias, serverless=serverless)
    query = tiny_embedder.embed_images(tiny_embedder.preprocessor(photo(2).convert("RGB"))[None])[0]
    assert via_alias.search(query, 1)[0].document["file_path"] == str(folder / "photo2.jpg")
    assert rollback(aliases, alias, lambda name: OpenSearchStore(client, name, serverless=serverless)) == (
        second.index,
        first.index,
    )


def test_sync_and_watch_delete_and_move_documents_in_the_cluster(cluster, tiny_embedder, tmp_path: Path):
    client, prefix, serverless = cluster
    folder = tmp_path / "nas"
    folder.mkdir()
    for n in range(4):
        photo(n).save(folder / f"photo{n}.jpg")
    store = OpenSearchStore(client, f"{prefix}-sync", serverless=serverless)
    store.ensure_index(tiny_embedder.identity, config=LIVE)
    source = LocalFolder(str(folder))

    def paths() -> set[str]:
        store.optimize()
        return {fields["file_path"] for _, fields in store.documents()}

    def sync_once() -> SyncResult:
        run = Indexer(source, store, tiny_embedder, PipelineOptions(workers=0))
        with run.session():
            return reconcile(run, source)

    assert sync_once().deleted == 0 and len(paths()) == 4
    (folder / "photo0.jpg").unlink()
    (folder / "photo1.jpg").rename(folder / "renamed.jpg")
    assert sync_once().deleted == 2
    assert paths() == {str(p) for p in folder.glob("*.jpg")}

    run = Indexer(source, store, tiny_embedder, PipelineOptions(workers=0))
    watcher = Watcher(source, run, WatchOptions(settle_seconds=0.3, initial_sync=False), log=lambda _: None)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        time.sleep(1.0)
        (folder / "renamed.jpg").rename(folder / "moved-again.jpg")
        (folder / "photo2.jpg").unlink()
        deadline = time.monotonic() + 60
        while paths() != {str(p) for p in folder.glob("*.jpg")} and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        watcher.stop()
        thread.join(timeout=60)
    assert paths() == {str(p) for p in folder.glob("*.jpg")}
    assert run.report.moved == 1 and run.report.deleted == 1 and run.report.embedded == 0


def test_filling_a_document_its_writer_deleted_fails_that_file_and_creates_nothing(cluster, tiny_embedder):
    client, prefix, serverless = cluster
    if serverless:
        pytest.skip("Serverless has no custom ids to update")
    store = OpenSearchStore(client, f"{prefix}-gone", serverless=serverless)
    store.ensure_index(tiny_embedder.identity, config=LIVE)
    vector = tiny_embedder.embed_texts(["a photo"])[0]
    kept = ImageDocument(SourceItem.of_path("/nas/kept.jpg", 1, 0.0, doc_id="worker-kept"), vector)
    gone = ImageDocument(SourceItem.of_path("/nas/gone.jpg", 1, 0.0, doc_id="worker-gone"), vector)
    client.index(index=store.index, id="worker-kept", body={"file_path": "/nas/kept.jpg"}, refresh=True)
    rejected = store.upsert([kept, gone])  # worker-gone was deleted after the listing saw it
    assert set(rejected) == {"worker-gone"} and "404" in rejected["worker-gone"]
    store.optimize()
    assert store.stats().documents == 1 and store.stats().with_vector == 1


def test_an_index_from_before_the_picture_fields_gains_them_and_serves_the_duplicates_view(cluster, tiny_embedder):
    """The mapping of an index made before ``perceptual_hash``, ``width``, ``height`` and ``taken_at`` gets them
    typed (a dynamic mapping would guess, and a field's type never changes); the view reads it by scan pages."""
    from imgvec.documents import Picture
    from imgvec.duplicates import find_duplicates
    from imgvec.stores.opensearch_mapping import PICTURE_PROPERTIES, index_body

    client, prefix, serverless = cluster
    store = OpenSearchStore(client, f"{prefix}-old", serverless=serverless)
    body = index_body(tiny_embedder.identity, LIVE, serverless=serverless)
    for name in PICTURE_PROPERTIES:
        del body["mappings"]["properties"][name]
    client.indices.create(index=store.index, body=body)

    store.ensure_index(tiny_embedder.identity)  # what every writer does first
    properties = store.mapping()["properties"]
    assert {name: properties[name] for name in PICTURE_PROPERTIES} == PICTURE_PROPERTIES

    # 2,100 documents with vectors (past the 1,000-document page of a scan with vectors twice), 8,500 without (past
    # the 5,000-document page of a scan of fields twice); one picture stored twice with a vector, one without
    with_vectors, total = 2100, 10_600
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((with_vectors, tiny_embedder.identity.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[with_vectors - 1] = vectors[7]
    taken = datetime(2019, 5, 1, 9, 0, tzinfo=UTC)
    documents = [
        ImageDocument(
            SourceItem.of_path(f"/nas/{n // 100}/{n}.jpg", 1000 + n, 0.0),
            vectors[n] if n < with_vectors else None,
            hashlib.sha256(str(3 if n == total - 1 else n).encode()).hexdigest(),
            tiny_embedder.identity.model,
            Picture(perceptual_hash=-(2**63) + n * 2**40, width=4000, height=3000, taken_at=taken),
        )
        for n in range(total)
    ]
    assert store.upsert(documents) == {}
    store.optimize()

    read = list(store.scan(["perceptual_hash", "taken_at"], with_vector=True))
    assert [page.num_rows for page in read] == [1000, 1000, 100]
    assert len({doc_id for page in read for doc_id in page.column("id").to_pylist()}) == with_vectors  # each once
    assert read[0].column("taken_at").type == pa.timestamp("us", tz="UTC")
    assert read[0].column("taken_at")[0].as_py() == taken
    assert [page.num_rows for page in store.scan(["content_hash"])] == [5000, 5000, 600]

    near = find_duplicates(store, "similar", threshold=0.999)
    assert (near.documents, len(near)) == (with_vectors, 1)
    group = near.page()[0]
    assert sorted(member.file_path for member in group.members) == ["/nas/0/7.jpg", "/nas/20/2099.jpg"]
    assert group.keeper.file_path == "/nas/0/7.jpg" and group.members[1].score >= 0.999  # the shorter path kept
    assert group.keeper.taken_at == taken and (group.keeper.width, group.keeper.height) == (4000, 3000)
    copies = find_duplicates(store, "exact")
    assert (copies.documents, len(copies)) == (total, 1)
    assert [member.file_path for member in copies.page()[0].members] == ["/nas/0/3.jpg", "/nas/105/10599.jpg"]
    fetched = store.get_many([doc.id for doc in documents[:700]])
    assert len(fetched) == 700 and fetched[documents[3].id]["perceptual_hash"] == -(2**63) + 3 * 2**40
