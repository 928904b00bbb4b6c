"""Ingest a real folder with the tiny model: bad files recorded, unchanged files skipped, query image first."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from imgvec.documents import Failure
from imgvec.errors import IdentityMismatchError, SourceError
from imgvec.identity import IndexIdentity
from imgvec.pipeline.indexer import index_source
from imgvec.pipeline.options import PipelineOptions
from imgvec.search import search_image, search_text
from imgvec.sources import LocalFolder
from imgvec.stores import SearchFilter
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import encode, photo

GOOD = {
    "a/beach.jpg": ("JPEG", 1),
    "a/b/forest.PNG": ("PNG", 2),
    "a/b/c/city.webp": ("WEBP", 3),
    "d/old scan.tiff": ("TIFF", 4),
    "d/phone.heic": ("HEIF", 5),
    "really-a-png.jpg": ("PNG", 6),
    "top.jpeg": ("JPEG", 7),
    "anim.gif": ("GIF", 8),
}


def make_folder(root: Path) -> Path:
    for rel, (fmt, seed) in GOOD.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(photo(seed), fmt))
    jpeg = encode(photo(99, (640, 480)), quality=95)
    (root / "bad").mkdir()
    (root / "bad" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "bad" / "random.jpg").write_bytes(os.urandom(4096))
    (root / "bad" / "notes-named.jpg").write_text("not a picture\n")
    (root / "notes.txt").write_text("skipped: not an image extension")
    (root / "a" / "b" / "loop").symlink_to(root / "a")  # a symlink loop must not hang the walk
    return root


THREADS = PipelineOptions(workers=0)
BAD = {"truncated.jpg", "empty.png", "random.jpg", "notes-named.jpg"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "photos")


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    return EmbeddedStore(tmp_path / "store", "images")


def test_walk_lists_images_once_despite_symlink_loop(folder: Path) -> None:
    errors: list[Failure] = []
    items = list(LocalFolder(folder).scan(errors.append))
    names = sorted(i.file_name for i in items)
    assert names == sorted([Path(p).name for p in GOOD] + list(BAD))
    assert not errors
    forest = next(i for i in items if i.file_name == "forest.PNG")
    assert forest.file_extension == "png" and forest.file_size == (folder / "a/b/forest.PNG").stat().st_size


def test_missing_or_non_folder_source_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        LocalFolder(tmp_path / "nope")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="is not a folder"):
        LocalFolder(tmp_path / "f.jpg")


def test_ingest_indexes_good_files_and_records_bad_ones(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    report = index_source(LocalFolder(folder), store, tiny_embedder, PipelineOptions(batch_size=3, workers=1))
    assert report.seen == len(GOOD) + len(BAD)
    assert report.embedded == len(GOOD)
    failed = {Path(f.file_path).name: f for f in report.failures}
    assert set(failed) == BAD
    assert all(f.stage == "decode" for f in failed.values())
    assert "truncated" in failed["truncated.jpg"].reason
    assert "empty file" in failed["empty.png"].reason
    assert "not a recognised image format" in failed["notes-named.jpg"].reason

    stats = store.stats()
    assert (stats.documents, stats.with_vector, stats.dimension) == (len(GOOD), len(GOOD), 512)
    assert stats.model == "imgvec-tiny/random"
    hit = store.search(tiny_embedder.embed_texts(["x"])[0], 100)
    doc = next(h.document for h in hit if h.document["file_name"] == "beach.jpg")
    assert doc["file_path"] == str(folder / "a" / "beach.jpg")
    assert doc["file_extension"] == "jpg" and doc["file_size"] == (folder / "a/beach.jpg").stat().st_size
    assert doc["content_hash"] and len(doc["content_hash"]) == 64
    assert doc["bucket"] is None and doc["indexed_at"] is not None


def test_second_run_skips_unchanged_and_reembeds_changed(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    again = index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    assert (again.embedded, again.unchanged) == (0, len(GOOD))

    changed = folder / "top.jpeg"
    changed.write_bytes(encode(photo(1234)))
    os.utime(changed, (1_700_000_000, 1_700_000_000))
    third = index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    assert (third.embedded, third.unchanged) == (1, len(GOOD) - 1)
    assert store.stats().documents == len(GOOD)


def test_max_files_stops_early(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    report = index_source(LocalFolder(folder), store, tiny_embedder, PipelineOptions(max_files=3, workers=0))
    assert report.seen == 3


def test_query_image_comes_back_first(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    for rel in ("a/beach.jpg", "a/b/c/city.webp", "d/phone.heic"):
        hits = search_image(store, tiny_embedder, folder / rel, k=5)
        assert hits[0].document["file_path"] == str(folder / rel)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[1].score < hits[0].score
    only_png = search_image(store, tiny_embedder, folder / "a/beach.jpg", 10, SearchFilter(extensions=("png",)))
    assert {h.document["file_extension"] for h in only_png} == {"png"}
    texts = search_text(store, tiny_embedder, "a forest", k=4)
    assert len(texts) == 4 and all(-1.0 <= h.score <= 1.0 for h in texts)


def test_other_model_is_refused_before_any_work(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    store.ensure_index(IndexIdentity("legacy/unknown", "legacy", "unknown", 1024))
    with pytest.raises(IdentityMismatchError, match=r"1024-dim.*imgvec-tiny/random \(512-dim"):
        index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    assert store.stats().documents == 0


def test_unreadable_file_is_a_read_failure(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    if os.geteuid() == 0:
        # root reads through permissions; a dangling symlink is unreadable for everyone
        (folder / "gone.jpg").symlink_to(folder / "deleted-target.jpg")
        report = index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
        failed = {Path(f.file_path).name: f for f in report.failures}
        assert failed["gone.jpg"].stage == "list"
        assert "cannot stat" in failed["gone.jpg"].reason
    else:
        locked = folder / "top.jpeg"
        locked.chmod(0)
        report = index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
        failed = {Path(f.file_path).name: f for f in report.failures}
        assert failed["top.jpeg"].stage == "read"
    assert report.embedded >= len(GOOD) - 1


def test_vectors_match_embedding_the_file_directly(folder: Path, store: EmbeddedStore, tiny_embedder) -> None:
    from imgvec.embed.decode import decode_image

    index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    path = folder / "a" / "beach.jpg"
    direct = tiny_embedder.embed_images(tiny_embedder.preprocessor(decode_image(path.read_bytes()))[None])[0]
    stored = store._open().search().where(f"file_path = '{path}'").limit(1).to_arrow()["vector"][0].as_py()
    np.testing.assert_allclose(np.asarray(stored), direct, atol=1e-5)


def test_small_lookup_windows_and_batches_give_the_same_result(
    folder: Path, store: EmbeddedStore, tiny_embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgvec.pipeline import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "LOOKUP_WINDOW", 2)
    progress: list[int] = []
    report = index_source(
        LocalFolder(folder),
        store,
        tiny_embedder,
        PipelineOptions(batch_size=1, workers=0),
        on_progress=lambda p: progress.append(p.processed),
    )
    assert report.embedded == len(GOOD) and len(report.failures) == len(BAD)
    assert progress == sorted(progress) and progress[-1] == len(GOOD) + len(BAD)
    assert store.stats().documents == len(GOOD)
