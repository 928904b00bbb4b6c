"""The embedded store: upsert, lookup, delete, counts, filters, identity refusal, ANN path, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgvec.documents import ImageDocument, SourceItem
from imgvec.errors import IdentityMismatchError, IndexNotFoundError, StoreError
from imgvec.identity import IndexIdentity
from imgvec.stores import SearchFilter, embedded_indexes, open_store
from imgvec.stores.embedded import EmbeddedStore

CLIP_512 = IndexIdentity("ViT-B-32/openai", "ViT-B-32", "openai", 512)
OLD_1024 = IndexIdentity("legacy-1024/unknown", "legacy-1024", "unknown", 1024)


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def doc(path: str, vector: np.ndarray | None, **fields: object) -> ImageDocument:
    item = SourceItem.of_path(path, int(fields.pop("file_size", 100)), float(fields.pop("mtime", 1.0)))
    return ImageDocument(item, vector, **fields)


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    s = EmbeddedStore(tmp_path / "store", "images")
    s.ensure_index(CLIP_512)
    return s


def test_upsert_lookup_counts_and_delete(store: EmbeddedStore) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, 3)
    docs = [doc("/p/a.jpg", vectors[0]), doc("/p/b.png", vectors[1]), doc("/p/c.jpg", None)]
    store.upsert(docs)
    stats = store.stats()
    assert (stats.documents, stats.with_vector, stats.without_vector) == (3, 2, 1)
    assert (stats.dimension, stats.model) == (512, "ViT-B-32/openai")

    store.upsert([doc("/p/c.jpg", vectors[2], file_size=200)])  # same id: replaced, not duplicated
    assert store.stats().documents == 3 and store.stats().with_vector == 3
    known = store.lookup([d.id for d in docs] + ["no-such-id"])
    assert set(known) == {d.id for d in docs}
    assert known[docs[2].id].file_size == 200 and known[docs[2].id].has_vector

    store.delete([docs[0].id])
    assert store.stats().documents == 2
    assert docs[0].id not in store.lookup([docs[0].id])


def test_get_returns_one_document_and_its_vector(store: EmbeddedStore) -> None:
    vector = unit(np.random.default_rng(3), 1)[0]
    with_vector, without = doc("/p/a.jpg", vector), doc("/p/b.jpg", None)
    store.upsert([with_vector, without])
    fields, stored = store.get(with_vector.id)
    assert fields["file_path"] == "/p/a.jpg" and "vector" not in fields
    assert stored is not None and stored.dtype == np.float32 and np.allclose(stored, vector)
    assert store.get(without.id)[1] is None
    assert store.get("no-such-id") is None and store.get("x' OR '1'='1") is None  # an id is a value, never SQL
    assert EmbeddedStore(store.path, "absent").get(with_vector.id) is None


def test_a_reader_sees_commits_made_after_it_opened(store: EmbeddedStore, tmp_path: Path) -> None:
    reader = EmbeddedStore(tmp_path / "store", "images")
    assert reader.stats().documents == 0
    store.upsert([doc("/p/new.jpg", unit(np.random.default_rng(9), 1)[0])])
    assert reader.stats().documents == 1
    assert reader.search(unit(np.random.default_rng(9), 1)[0], 1)[0].document["file_path"] == "/p/new.jpg"


def test_search_returns_cosine_similarity_best_first(store: EmbeddedStore) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50)
    store.upsert([doc(f"/p/{i}.jpg", v) for i, v in enumerate(vectors)])
    hits = store.search(vectors[7], k=5)
    assert len(hits) == 5
    assert hits[0].document["file_path"] == "/p/7.jpg"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    second = int(hits[1].document["file_name"][:-4])
    assert hits[1].score == pytest.approx(float(vectors[7] @ vectors[second]), abs=1e-5)


def test_documents_without_vectors_never_appear_in_search(store: EmbeddedStore) -> None:
    rng = np.random.default_rng(2)
    store.upsert([doc("/p/has.jpg", unit(rng, 1)[0]), doc("/p/none.jpg", None)])
    hits = store.search(unit(rng, 1)[0], k=10)
    assert [h.document["file_path"] for h in hits] == ["/p/has.jpg"]


def test_filters_apply_inside_the_search(store: EmbeddedStore) -> None:
    rng = np.random.default_rng(3)
    paths = ["/nas/2024/x.jpg", "/nas/2024/y.png", "/nas/it's 100%_odd/z.jpg", "/other/w.jpg"]
    vectors = unit(rng, len(paths))
    store.upsert([doc(p, v) for p, v in zip(paths, vectors, strict=True)])
    q = vectors[3]
    by_ext = store.search(q, 10, SearchFilter(extensions=("PNG",)))
    assert [h.document["file_path"] for h in by_ext] == ["/nas/2024/y.png"]
    by_prefix = store.search(q, 10, SearchFilter(path_prefix="/nas/it's 100%"))
    assert [h.document["file_path"] for h in by_prefix] == ["/nas/it's 100%_odd/z.jpg"]
    both = store.search(q, 10, SearchFilter(extensions=("jpg",), path_prefix="/nas/"))
    assert {h.document["file_path"] for h in both} == {"/nas/2024/x.jpg", "/nas/it's 100%_odd/z.jpg"}


def test_identity_is_recorded_and_mismatch_refused(tmp_path: Path) -> None:
    old = EmbeddedStore(tmp_path / "s", "file-index-v2-knn")
    old.ensure_index(OLD_1024)
    reopened = EmbeddedStore(tmp_path / "s", "file-index-v2-knn")
    assert reopened.identity() == OLD_1024
    with pytest.raises(IdentityMismatchError, match=r"legacy-1024.*1024-dim.*ViT-B-32/openai.*512-dim"):
        reopened.ensure_index(CLIP_512)
    rng = np.random.default_rng(4)
    with pytest.raises(IdentityMismatchError, match="512-dim vectors into an index of legacy-1024"):
        reopened.upsert([doc("/p/a.jpg", unit(rng, 1)[0])])
    with pytest.raises(IdentityMismatchError):
        reopened.search(unit(rng, 1)[0], 5)
    assert reopened.stats().documents == 0


def test_zero_and_nan_vectors_are_refused(store: EmbeddedStore) -> None:
    with pytest.raises(StoreError, match="zero or non-finite"):
        store.upsert([doc("/p/zero.jpg", np.zeros(512, dtype=np.float32))])
    nan = np.full(512, np.nan, dtype=np.float32)
    with pytest.raises(StoreError, match="zero or non-finite"):
        store.upsert([doc("/p/nan.jpg", nan)])
    assert store.stats().documents == 0


def test_missing_index_and_bad_locations_are_clear(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="imgvec ingest"):
        EmbeddedStore(tmp_path, "nope").stats()
    with pytest.raises(StoreError, match="invalid index name"):
        EmbeddedStore(tmp_path, "../escape")
    with pytest.raises(StoreError, match="unknown scheme"):
        open_store("ftp://somewhere", "images")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StoreError, match="cannot open the embedded store"):
        open_store(str(tmp_path / "a-file"), "images")
    with pytest.raises(StoreError, match="cannot open the embedded store"):
        open_store(str(tmp_path / "a-file" / "store"), "images").ensure_index(CLIP_512)
    reader = open_store(str(tmp_path / "not-yet"), "images")
    assert not reader.exists() and not (tmp_path / "not-yet").exists()  # reading creates nothing


@pytest.mark.parametrize(("sq_max", "kind"), [(10_000, "IvfSq"), (1_000, "IvfPq")])
def test_ann_index_is_built_and_used(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch, sq_max: int, kind: str
) -> None:
    monkeypatch.setattr(embedded_indexes, "SQ_INDEX_MAX_ROWS", sq_max)
    monkeypatch.setattr(embedded_indexes, "VECTOR_INDEX_MIN_ROWS", 2_000)
    monkeypatch.setattr(embedded_indexes, "ID_INDEX_MIN_ROWS", 2_000)
    rng = np.random.default_rng(5)
    vectors = unit(rng, 3_000)
    store.upsert([doc(f"/p/{i}.jpg", v) for i, v in enumerate(vectors)])
    store.optimize()
    index = embedded_indexes.vector_index(store._open())
    assert index is not None and index.index_type == kind
    assert {tuple(ix.columns) for ix in store._open().list_indices()} >= {("id",), ("vector",)}
    for i in (0, 1234, 2999):
        hits = store.search(vectors[i], 3)
        assert hits[0].document["file_path"] == f"/p/{i}.jpg"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    # rows added after the index was built are still found (searched exactly until the next optimize)
    late = unit(rng, 1)[0]
    store.upsert([doc("/p/late.jpg", late)])
    assert store.search(late, 1)[0].document["file_path"] == "/p/late.jpg"


def test_vectors_too_alike_to_partition_are_searched_exactly(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tens of thousands of copies of one picture (a placeholder, a scanned blank page) give one vector, and k-means
    cannot form IVF partitions from it once Lance samples its training set (over 256 rows a partition): the run's
    final optimize raised Lance's error after every batch was committed."""
    monkeypatch.setattr(embedded_indexes, "VECTOR_INDEX_MIN_ROWS", 2_000)
    monkeypatch.setattr(embedded_indexes, "ID_INDEX_MIN_ROWS", 2_000)
    same = unit(np.random.default_rng(3), 1)[0]
    for start in range(0, 70_000, 10_000):
        store.upsert([doc(f"/p/{i}.jpg", same) for i in range(start, start + 10_000)])
    store.optimize()
    assert embedded_indexes.vector_index(store._open()) is None  # no index: an exact scan, never wrong
    assert store.search(same, 1)[0].score == pytest.approx(1.0, abs=1e-4)
    varied = unit(np.random.default_rng(4), 10_000)  # later, distinct vectors: the index is built after all
    store.upsert([doc(f"/q/{i}.jpg", v) for i, v in enumerate(varied)])
    store.optimize()
    assert embedded_indexes.vector_index(store._open()) is not None


def test_rows_stay_findable_as_later_optimizes_reshape_the_index(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long ingest builds the IVF index once, then each optimize folds new rows in and may split or join
    partitions. Every row, old or new, must still be indexed and found. (Lance's partition join, which logs
    "partition index is N but the number of partitions is M, skip loading it", shows up only after hundreds of
    small commits, too slow for here; a 25k-document store-only run that logged it found 300 of 300 sampled
    rows as their own top hit.)"""
    monkeypatch.setattr(embedded_indexes, "VECTOR_INDEX_MIN_ROWS", 2_000)
    monkeypatch.setattr(embedded_indexes, "ID_INDEX_MIN_ROWS", 2_000)
    rng = np.random.default_rng(11)
    vectors = unit(rng, 6_000)
    store.upsert([doc(f"/p/{i}.jpg", v) for i, v in enumerate(vectors[:3_000])])
    store.optimize()
    assert embedded_indexes.vector_index(store._open()) is not None
    for start in range(3_000, 6_000, 1_000):  # three optimizes after the build, as an ingest makes them
        for batch in range(start, start + 1_000, 100):
            store.upsert([doc(f"/p/{i}.jpg", vectors[i]) for i in range(batch, batch + 100)])
        store.optimize()
    stats = store._open().index_stats(embedded_indexes.vector_index(store._open()).name)
    assert stats.num_indexed_rows == 6_000 and stats.num_unindexed_rows == 0
    for i in rng.choice(6_000, 150, replace=False):
        assert store.search(vectors[i], 1)[0].document["file_path"] == f"/p/{i}.jpg"


WRITER = """
import sys, numpy as np
from imgvec.documents import ImageDocument, SourceItem
from imgvec.identity import IndexIdentity
from imgvec.stores.embedded import EmbeddedStore
store = EmbeddedStore(sys.argv[1], "images")
store.ensure_index(IndexIdentity("ViT-B-32/openai", "ViT-B-32", "openai", 512))
rng = np.random.default_rng(0)
for batch in range(10_000):
    v = rng.standard_normal((500, 512)).astype(np.float32)
    store.upsert([ImageDocument(SourceItem.of_path(f"/p/{batch}-{i}.jpg", 1, 0.0), v[i]) for i in range(500)])
    print(batch, flush=True)
"""


def test_killed_writer_leaves_a_readable_store(tmp_path: Path) -> None:
    location = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(location)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    for _ in range(4):  # let a few batches commit, then kill it mid-write
        writer.stdout.readline()
    time.sleep(0.15)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)

    store = EmbeddedStore(location, "images")
    stats = store.stats()
    assert stats.documents >= 2_000 and stats.documents % 500 == 0  # whole batches only
    assert stats.with_vector == stats.documents
    store.upsert([doc("/p/after-crash.jpg", unit(np.random.default_rng(6), 1)[0])])
    assert store.stats().documents == stats.documents + 1
