"""Ingest from S3, against a real S3-compatible server (SeaweedFS) started on 127.0.0.1 by the tests.

No moto and no stubbed boto3: every request below is signed, sent over HTTP and answered by the server.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError

from imgvec.documents import document_id
from imgvec.pipeline.indexer import index_source
from imgvec.pipeline.journal import RunJournal
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources import LocationReader, S3Bucket, S3Connection, SourceItem
from imgvec.sources.s3 import describe_s3_error
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import encode, photo, run_cli
from tests.s3server import SeaweedServer

pytestmark = pytest.mark.s3

MANY = 1_005
"""Just past S3's 1,000 keys per listing page, so the listing must follow a continuation token."""
ODD_KEYS = ("odd/with space.jpg", "odd/ünïcödé 写真.png", "odd/plus+sign.jpeg", "odd/deep/a/b/c.webp")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(server: SeaweedServer) -> str:
    """A bucket: 1,005 small photos under many/, odd keys, a non-image, a folder marker, a corrupt .jpg."""
    client = server.client()
    client.create_bucket(Bucket="photos")
    body = encode(photo(1, (24, 18)))  # one image's bytes for the page test; the content cache reuses its vector
    for i in range(MANY):
        client.put_object(Bucket="photos", Key=f"many/{i:05d}.jpg", Body=body)
    for i, key in enumerate(ODD_KEYS):
        fmt = {"png": "PNG", "webp": "WEBP"}.get(key.rsplit(".", 1)[1], "JPEG")
        client.put_object(Bucket="photos", Key=key, Body=encode(photo(100 + i, (64, 48)), fmt))
    client.put_object(Bucket="photos", Key="odd/notes.txt", Body=b"not an image")
    client.put_object(Bucket="photos", Key="odd/folder/", Body=b"")
    client.put_object(Bucket="photos", Key="odd/broken.jpg", Body=b"\xff\xd8\xff garbage")
    return "photos"


@pytest.fixture
def env(cli_env: dict[str, str], server: SeaweedServer) -> dict[str, str]:
    return {**cli_env, **server.env(), "IMGVEC_MODEL": "imgvec-tiny/random"}


@pytest.fixture
def aws_env(server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's default credential chain, as a user's machine would have it, pointed at the test server."""
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)


def documents(store: Path, index: str = "images") -> list[dict]:
    table = EmbeddedStore(store, index)._open().to_arrow()
    return table.select(["file_path", "file_key", "bucket", "s3_url", "file_name", "etag"]).to_pylist()


def test_listing_streams_pages_past_1000_keys_and_keeps_only_images(server, bucket, aws_env) -> None:
    source = S3Bucket(f"s3://{bucket}/", S3Connection(endpoint_url=server.endpoint))
    errors: list = []
    keys = [item.file_key for item in source.scan(errors.append)]
    assert not errors
    assert len(keys) == MANY + len(ODD_KEYS) + 1  # + odd/broken.jpg: it is named like an image, decode will say
    assert "odd/notes.txt" not in keys and "odd/folder/" not in keys
    assert sorted(keys) == keys  # S3 lists in key order: a stable order across runs
    only_odd = S3Bucket(f"s3://{bucket}/odd/", S3Connection(endpoint_url=server.endpoint))
    assert sorted(i.file_key for i in only_odd.scan(errors.append)) == sorted([*ODD_KEYS, "odd/broken.jpg"])


def test_ingest_a_bucket_fills_the_s3_fields_and_a_second_run_skips_by_etag(server, bucket, env, tmp_path) -> None:
    result = run_cli(["ingest", f"s3://{bucket}/", "--json", "--batch-size", "64"], env)
    assert result.returncode == 3, result.stderr  # the corrupt .jpg is recorded; everything else is indexed
    report = json.loads(result.stdout)
    assert report["embedded"] + report["cache_hits"] == MANY + len(ODD_KEYS)
    assert report["cache_hits"] >= MANY - 64  # identical bytes under many/: embedded once per batch at most
    assert [(f["file_path"], f["stage"]) for f in report["failures"]] == [(f"s3://{bucket}/odd/broken.jpg", "decode")]

    docs = {d["file_key"]: d for d in documents(tmp_path / "store")}
    assert len(docs) == MANY + len(ODD_KEYS)
    odd = docs["odd/ünïcödé 写真.png"]
    assert odd["bucket"] == bucket and odd["file_name"] == "ünïcödé 写真.png"
    assert odd["s3_url"] == odd["file_path"] == f"s3://{bucket}/odd/ünïcödé 写真.png"
    assert odd["etag"] and '"' not in odd["etag"]

    again = run_cli(["ingest", f"s3://{bucket}/", "--json"], env)
    report = json.loads(again.stdout)
    assert (report["embedded"], report["cache_hits"]) == (0, 0)
    assert report["unchanged"] == MANY + len(ODD_KEYS)

    # New content under an old key (new ETag) is embedded again; a copy under a new key reuses the vector.
    client = server.client()
    client.put_object(Bucket=bucket, Key="odd/with space.jpg", Body=encode(photo(555, (64, 48))))
    client.copy_object(Bucket=bucket, Key="odd/copy.png", CopySource={"Bucket": bucket, "Key": "odd/ünïcödé 写真.png"})
    try:
        third = json.loads(run_cli(["ingest", f"s3://{bucket}/odd/", "--json"], env).stdout)
        assert (third["embedded"], third["cache_hits"]) == (1, 1)
        hits = json.loads(run_cli(["search", "--image", f"s3://{bucket}/odd/with space.jpg", "--json"], env).stdout)
        assert hits[0]["file_key"] == "odd/with space.jpg" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    finally:
        client.delete_object(Bucket=bucket, Key="odd/copy.png")
        client.put_object(Bucket=bucket, Key="odd/with space.jpg", Body=encode(photo(100, (64, 48))))


class VanishingBucket(S3Bucket):
    """One object is deleted after the listing saw it, just before its get (deterministic, unlike a race with the
    listing: the pipeline's background count scans the bucket too)."""

    victim = ""

    def read(self, item: SourceItem) -> bytes:
        if item.file_key == self.victim:
            self.client.delete_object(Bucket=self.bucket, Key=item.file_key)
        return super().read(item)


def test_an_object_deleted_between_list_and_get_is_one_failure(server, aws_env, tmp_path, tiny_embedder) -> None:
    client = server.client()
    client.create_bucket(Bucket="vanishing")
    for i in range(6):
        client.put_object(Bucket="vanishing", Key=f"p{i}.jpg", Body=encode(photo(200 + i, (40, 30))))
    source = VanishingBucket("s3://vanishing/", S3Connection(endpoint_url=server.endpoint))
    source.victim = "p3.jpg"
    store = EmbeddedStore(tmp_path / "store", "images")
    report = index_source(source, store, tiny_embedder, PipelineOptions(workers=0, batch_size=4, io_concurrency=4))
    assert report.embedded == 5
    assert [(f.file_path, f.stage) for f in report.failures] == [("s3://vanishing/p3.jpg", "read")]
    assert "no longer exists" in report.failures[0].reason


def test_bad_credentials_and_a_missing_bucket_are_one_clear_error(server, bucket, env) -> None:
    denied = run_cli(["ingest", f"s3://{bucket}/"], {**env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert denied.returncode == 1
    assert "access denied" in denied.stderr and "credentials" in denied.stderr
    assert denied.stderr.count("\n") <= 2, denied.stderr  # one message, not one per object
    unknown_key = run_cli(["ingest", f"s3://{bucket}/"], {**env, "AWS_ACCESS_KEY_ID": "nobody"})
    assert unknown_key.returncode == 1 and "access denied (InvalidAccessKeyId" in unknown_key.stderr
    missing = run_cli(["ingest", "s3://no-such-bucket/"], env)
    assert missing.returncode == 1 and "bucket does not exist" in missing.stderr
    unreachable = describe_s3_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "cannot list")
    assert "cannot reach the S3 endpoint" in unreachable and "--endpoint-url" in unreachable


def test_reader_fetches_by_any_url_form_a_document_holds(server, bucket, aws_env, tmp_path) -> None:
    reader = LocationReader(S3Connection(endpoint_url=server.endpoint))
    expected = server.client().get_object(Bucket=bucket, Key="odd/with space.jpg")["Body"].read()
    assert reader.read(f"s3://{bucket}/odd/with space.jpg") == expected
    assert reader.read(f"{server.endpoint}/{bucket}/odd/with%20space.jpg") == expected  # path-style https
    local = tmp_path / "local.jpg"
    local.write_bytes(expected)
    assert reader.read(str(local)) == expected == reader.read(local.as_uri())
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        reader.read(f"s3://{bucket}/odd/missing.jpg")


def test_server_stopped_and_restarted_mid_run_loses_nothing(tmp_path, cli_env) -> None:
    server = SeaweedServer(tmp_path / "seaweed")
    server.start()
    try:
        client = server.client()
        client.create_bucket(Bucket="outage")
        keys = [f"p{i:03d}.jpg" for i in range(90)]
        for i, key in enumerate(keys):
            client.put_object(Bucket="outage", Key=key, Body=encode(photo(300 + i, (40, 30))))
        env = {**cli_env, **server.env(), "IMGVEC_MODEL": "imgvec-tiny/random"}
        args = ["ingest", "s3://outage/", "--json", "--batch-size", "4", "--rate-limit", "6", "--workers", "0"]
        seen_at_outage: list[int] = []
        outage = threading.Thread(target=_outage, args=(server, env, seen_at_outage), daemon=True)
        outage.start()
        first = run_cli(args, env, timeout=600)
        outage.join()
        assert seen_at_outage and 8 <= seen_at_outage[0] < len(keys)  # the server went away mid-run
        report = json.loads(first.stdout)
        assert first.returncode in (0, 3), first.stderr
        if first.returncode == 3:  # reads that outlived botocore's retries: recorded, and the next run takes them
            assert {f["stage"] for f in report["failures"]} <= {"read", "list"}
            second = run_cli([*args, "--retry-failed"], env, timeout=600)
            assert second.returncode == 0, second.stderr
        docs = documents(Path(env["IMGVEC_STORE"]))
        assert sorted(d["file_key"] for d in docs) == keys  # every object, exactly once
        assert all(d["s3_url"] == f"s3://outage/{d['file_key']}" for d in docs)
    finally:
        server.stop()


def _outage(server: SeaweedServer, env: dict[str, str], seen_at_outage: list[int]) -> None:
    """Once the run has committed a few batches, stop the server for a few seconds and start it again."""
    state_dir = Path(env["IMGVEC_STORE"]) / "_imgvec"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (state_dir / "images.sqlite").exists():
            latest = RunJournal.for_index(state_dir, "images").latest()
            if latest is not None and latest[0].succeeded >= 8:
                seen_at_outage.append(latest[0].succeeded)
                break
        time.sleep(0.2)
    server.stop()
    time.sleep(4)
    server.start()


def test_documents_are_keyed_by_s3_url(server, bucket, aws_env) -> None:
    item = next(S3Bucket(f"s3://{bucket}/odd/", S3Connection(endpoint_url=server.endpoint)).scan(lambda e: None))
    assert item.uri == item.s3_url == f"s3://{bucket}/{item.file_key}"
    assert document_id(item.uri) == document_id(f"s3://{bucket}/{item.file_key}")
    assert os.path.basename(item.file_key) == item.file_name


def test_sync_a_prefix_reconciles_adds_changes_copies_and_deletes(server, env) -> None:
    """The reconcile pass for buckets (no events on S3): the index ends up holding exactly the prefix's images,
    and documents from outside the prefix are untouched."""
    client = server.client()
    client.create_bucket(Bucket="albums")
    for i in range(6):
        client.put_object(Bucket="albums", Key=f"2026/p{i}.jpg", Body=encode(photo(300 + i, (40, 30))))
    client.put_object(Bucket="albums", Key="other/keep.jpg", Body=encode(photo(399, (40, 30))))

    def sync(location: str) -> dict:
        result = run_cli(["sync", location, "--json", "--workers", "0"], env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def expected() -> set[str]:
        listed = client.list_objects_v2(Bucket="albums")["Contents"]
        return {f"s3://albums/{entry['Key']}" for entry in listed}

    assert sync("s3://albums/other/")["embedded"] == 1
    assert sync("s3://albums/2026/")["embedded"] == 6

    client.delete_object(Bucket="albums", Key="2026/p0.jpg")
    client.delete_object(Bucket="albums", Key="2026/p1.jpg")
    client.put_object(Bucket="albums", Key="2026/p2.jpg", Body=encode(photo(310, (40, 30))))  # new bytes
    client.copy_object(Bucket="albums", Key="2026/renamed.jpg", CopySource={"Bucket": "albums", "Key": "2026/p3.jpg"})
    client.delete_object(Bucket="albums", Key="2026/p3.jpg")  # an S3 "move": copy, then delete
    client.put_object(Bucket="albums", Key="2026/new.jpg", Body=encode(photo(311, (40, 30))))

    report = sync("s3://albums/2026/")
    assert report["embedded"] == 2 and report["cache_hits"] == 1 and report["unchanged"] == 2
    assert report["sync"]["deleted"] == 3
    store = Path(env["IMGVEC_STORE"])
    paths = [row["file_path"] for row in documents(store)]
    assert len(paths) == len(set(paths)) and set(paths) == expected()  # other/keep.jpg is still there
