"""Every form of S3 location the existing documents hold resolves to the same bucket and key."""

from __future__ import annotations

import pyarrow as pa
import pytest

from imgvec.documents import ImageDocument, Picture, StoredFile, document_id
from imgvec.errors import SourceError
from imgvec.identity import IndexIdentity
from imgvec.pipeline.skip import unchanged
from imgvec.sources import LocationReader, ObjectLocation, SourceItem, parse_s3_url
from imgvec.stores.embedded import EmbeddedStore


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://photos/2024/a b.jpg", "photos", "2024/a b.jpg"),
        ("s3://photos/", "photos", ""),
        ("https://photos.s3.amazonaws.com/2024/a+b.jpg", "photos", "2024/a b.jpg"),
        ("https://photos.s3.eu-west-1.amazonaws.com/2024/a%20b.jpg", "photos", "2024/a b.jpg"),
        ("https://photos.s3-eu-west-1.amazonaws.com/x%2By.jpg", "photos", "x+y.jpg"),
        ("https://my.dotted.bucket.s3.dualstack.us-east-2.amazonaws.com/k.jpg", "my.dotted.bucket", "k.jpg"),
        ("https://s3.eu-west-1.amazonaws.com/photos/2024/%C3%BC.jpg", "photos", "2024/ü.jpg"),
        ("https://s3.amazonaws.com/photos/k.jpg", "photos", "k.jpg"),
        ("https://photos.s3.cn-north-1.amazonaws.com.cn/k.jpg", "photos", "k.jpg"),
    ],
)
def test_s3_url_forms(url: str, bucket: str, key: str) -> None:
    assert parse_s3_url(url) == ObjectLocation(bucket, key)


def test_an_s3_compatible_endpoint_is_read_path_style() -> None:
    endpoint = "http://127.0.0.1:8333"
    assert parse_s3_url(f"{endpoint}/photos/a%20b.jpg", endpoint) == ObjectLocation("photos", "a b.jpg")
    assert parse_s3_url(f"{endpoint}/photos/a.jpg") is None  # without the endpoint, just some web address


@pytest.mark.parametrize("url", ["https://example.com/photos/a.jpg", "/nas/photos/a.jpg", "s3://", "ftp://x/y.jpg"])
def test_not_s3(url: str) -> None:
    assert parse_s3_url(url) is None


def test_reader_refuses_what_it_cannot_fetch(tmp_path) -> None:
    reader = LocationReader()
    with pytest.raises(SourceError, match="not an S3 URL or a local path"):
        reader.read("ftp://host/a.jpg")
    with pytest.raises(SourceError, match="names a bucket"):
        reader.read("s3://photos/")
    with pytest.raises(FileNotFoundError):
        reader.read(str(tmp_path / "missing.jpg"))


def _item(size: int = 10, mtime: float = 1.0, etag: str | None = None) -> SourceItem:
    return SourceItem("s3://b/k.jpg", "s3://b/k.jpg", "k.jpg", "jpg", size, mtime, "b", "k.jpg", "s3://b/k.jpg", etag)


def test_unchanged_prefers_the_etag_where_there_is_one() -> None:
    picture = Picture(perceptual_hash=-5, width=4, height=3)
    stored = StoredFile(file_size=10, mtime=1.0, content_hash="h", has_vector=True, etag="e1", picture=picture)
    assert unchanged(stored, _item(etag="e1", mtime=99.0))  # re-uploaded, same bytes: nothing to do
    assert not unchanged(stored, _item(etag="e2"))  # same size and time, other content
    assert unchanged(stored, _item())  # a source without ETags: size + mtime
    assert not unchanged(stored, _item(size=11, etag="e1"))
    assert not unchanged(None, _item())
    assert not unchanged(StoredFile(10, 1.0, "h", has_vector=False, etag="e1", picture=picture), _item(etag="e1"))
    # stored before imgvec kept the picture's facts: read again (its vector comes from the content cache)
    assert not unchanged(StoredFile(10, 1.0, "h", has_vector=True, etag="e1"), _item(etag="e1"))


def test_an_index_made_before_the_etag_column_gains_it(tmp_path) -> None:
    import lancedb
    import numpy as np

    identity = IndexIdentity("imgvec-tiny/random", "imgvec-tiny", "random", 512)
    store = EmbeddedStore(tmp_path, "old")
    store.ensure_index(identity)
    db = lancedb.connect(tmp_path)
    db.open_table("old").drop_columns(["etag"])  # what the first release wrote
    assert "etag" not in db.open_table("old").schema.names

    reader = EmbeddedStore(tmp_path, "old")
    assert reader.lookup([document_id("/p/a.jpg")]) == {} and reader.stats().documents == 0
    assert "etag" not in db.open_table("old").schema.names  # reading never commits

    reopened = EmbeddedStore(tmp_path, "old")
    reopened.ensure_index(identity)  # what every writer does first
    vector = np.ones(512, dtype=np.float32) / np.sqrt(512)
    item = SourceItem("/p/a.jpg", "/p/a.jpg", "a.jpg", "jpg", 3, 1.0, etag="e")
    doc = ImageDocument(item, vector, content_hash="h", model="m")
    reopened.upsert([doc])
    assert reopened.lookup([document_id("/p/a.jpg")])[document_id("/p/a.jpg")].etag == "e"
    assert pa.types.is_string(db.open_table("old").schema.field("etag").type)
