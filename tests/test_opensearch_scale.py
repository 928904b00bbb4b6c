"""The worker's index at its real size, against the live node: past every page, bulk and scroll size, with blocks of
failing documents, a `--follow` whose passes keep failing, and a migration while the worker keeps writing through
the alias. Thousands of documents over a handful of image files: the content cache embeds each picture once.

Sizes: the listing pages 500 documents (``PAGE_SIZE``), bulk requests carry 500, ``_reindex`` copies 1,000 a batch,
the skip step looks up 1,024 at a time; every test here crosses the ones it touches at least twice.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgvec.cli.render import format_progress
from imgvec.pipeline.report import Progress
from imgvec.stores.opensearch import PAGE_SIZE
from tests.helpers import encode, photo, run_cli, worker_fields
from tests.s3server import SeaweedServer, seaweed_with

pytestmark = pytest.mark.opensearch
LUCENE = ["--engine", "lucene", "--shards", "2", "--replicas", "0"]
BUCKET = "nas-scale"
PICTURES = 5
REINDEX_BATCH = 1000
"""_reindex's default scroll size: the copy crosses it twice."""
WITH_VECTOR = {"query": {"exists": {"field": "image_vector"}}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    pictures = {f"pictures/p{n}.jpg": encode(photo(n, (64, 48))) for n in range(PICTURES)}
    server = seaweed_with(tmp_path_factory.mktemp("seaweed"), BUCKET, pictures)
    yield server
    server.stop()


def worker_document(n: int, *, missing: bool = False) -> dict[str, object]:
    """The worker's eight fields for file n: its object is one of the few pictures, or one that is not there."""
    key = f"pictures/gone{n}.jpg" if missing else f"pictures/p{n % PICTURES}.jpg"
    return worker_fields(BUCKET, key, f"/nas/{n:05d}/{key.rsplit('/', 1)[-1]}", 1000 + n)


def bulk_write(client, index: str, documents: dict[str, dict[str, object]]) -> None:
    lines = []
    for doc_id, source in documents.items():
        lines += [json.dumps({"index": {"_index": index, "_id": doc_id}}), json.dumps(source)]
    for start in range(0, len(lines), 1000):
        response = client.bulk(body="\n".join(lines[start : start + 1000]) + "\n")
        assert not response["errors"], response["items"][:2]
    client.indices.refresh(index=index)


def count(client, index: str, body: dict | None = None) -> int:
    client.indices.refresh(index=index)
    return client.count(index=index, body=body)["count"]


def cli(env: dict[str, str], *args: str, index: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli([*(["--index", index] if index else []), *args], env, timeout=600)


def test_missing_fills_thousands_of_worker_documents_past_a_block_of_failures_in_one_run(
    live_env, opensearch_client, live_prefix
) -> None:
    """The worker writes no ``doc_id``; the listing paged on it stopped at 500. ``a-`` ids sort first: their
    objects are gone, more than two pages of them, so a listing that stops early never reaches the rest."""
    index = f"{live_prefix}-v3"
    assert cli(live_env, "index", "create", index, *LUCENE).returncode == 0
    failing, valid = 2 * PAGE_SIZE + 100, 5 * PAGE_SIZE + 123
    documents = {f"a-{n:05d}": worker_document(n, missing=True) for n in range(failing)}
    documents |= {f"b-{n:05d}": worker_document(n) for n in range(valid)}
    documents["c-no-location"] = {"file_name": "x.jpg", "indexed_at": "2024-05-01T10:00:00Z"}
    bulk_write(opensearch_client, index, documents)

    filled = cli(live_env, "ingest", "--missing", "--json", index=index)
    assert filled.returncode == 3, filled.stderr  # partial: some files failed, each recorded
    report = json.loads(filled.stdout)
    assert report["embedded"] + report["cache_hits"] == valid
    assert report["embedded"] <= PICTURES  # the content cache: each picture embedded once
    assert report["failed"] == failing + 1
    assert count(opensearch_client, index, WITH_VECTOR) == valid
    assert count(opensearch_client, index) == len(documents)  # filled in place: no document added

    status = json.loads(cli(live_env, "status", "--json", index=index).stdout)
    assert (status["documents"], status["with_vector"]) == (len(documents), valid)
    failures = json.loads(cli(live_env, "failures", "--json", index=index).stdout)
    assert len(failures) == failing + 1
    assert {f["stage"] for f in failures} == {"read", "list"}
    progress = json.loads(cli(live_env, "progress", "--json", index=index).stdout)
    listed = valid + failing  # the document with no location is not a listed file
    assert (progress["processed"], progress["total"], progress["listing_failures"]) == (listed, listed, 1)
    assert progress["succeeded"] + progress["failed"] - progress["listing_failures"] == progress["processed"]
    shown = format_progress(Progress(**progress))  # the line a run prints as it goes
    assert shown.startswith(f"{listed}/{listed} processed: {valid} ok, {failing} failed, 0 skipped, 1 not listed;")

    again = cli(live_env, "ingest", "--missing", "--json", index=index)  # nothing left but the failures, tried again
    assert json.loads(again.stdout)["embedded"] + json.loads(again.stdout)["cache_hits"] == 0
    assert json.loads(again.stdout)["failed"] == failing + 1

    # every filled document got its picture's facts; the duplicates view reads them past every page of the scan and
    # of the members' details (thousands of documents over a handful of pictures: five groups)
    assert count(opensearch_client, index, {"query": {"exists": {"field": "perceptual_hash"}}}) == valid
    for kind in ("exact", "resaved"):
        shown = cli(live_env, "duplicates", "--kind", kind, "--json", index=index)
        assert shown.returncode == 0, shown.stderr
        found = json.loads(shown.stdout)
        assert (found["documents"], found["groups_total"], found["unhashed"]) == (len(documents), PICTURES, 0)
        groups = found["groups"]
        assert sum(len(group["members"]) for group in groups) == valid
        assert {member["width"] for group in groups for member in group["members"]} == {64}
        sizes = [sum(m["file_size"] for m in group["members"]) - group["members"][0]["file_size"] for group in groups]
        assert [group["saving"] for group in groups] == sizes == sorted(sizes, reverse=True)


def test_follow_counts_each_bad_document_once_and_turns_unhealthy_while_passes_fail(
    live_env, opensearch_client, live_prefix, cli_env
) -> None:
    index = f"{live_prefix}-followed"
    assert cli(live_env, "index", "create", index, *LUCENE).returncode == 0
    failing = PAGE_SIZE + 50
    documents = {f"a-{n:05d}": worker_document(n, missing=True) for n in range(failing)}
    documents["c-no-location"] = {"file_name": "x.jpg"}
    bulk_write(opensearch_client, index, documents)
    args = ["--index", index, "ingest", "--missing", "--follow", "--interval", "0.5s", "--workers", "0"]
    log = Path(cli_env["IMGVEC_STORE"] + "-follow.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stderr:
        follower = subprocess.Popen([sys.executable, "-m", "imgvec.cli", *args], env=live_env, stderr=stderr)
    try:
        deadline = time.monotonic() + 180
        health: dict = {}
        while time.monotonic() < deadline:
            shown = cli(live_env, "progress", "--json", index=index)
            if shown.returncode == 0:
                progress = json.loads(shown.stdout)
                health = progress.get("health") or {}
                if health.get("errors_in_a_row", 0) >= 2:
                    break
            time.sleep(0.5)
        assert health.get("errors_in_a_row", 0) >= 2, log.read_text()  # every pass failed: unhealthy
        assert f"{failing + 1} documents failed and none was filled, e.g. /nas/" in health["last_error"]
        assert progress["failed"] == failing + 1  # each bad document once, however many passes met it

        bulk_write(opensearch_client, index, {f"b-{n:05d}": worker_document(n) for n in range(3)})
        deadline = time.monotonic() + 120
        while count(opensearch_client, index, WITH_VECTOR) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert count(opensearch_client, index, WITH_VECTOR) == 3, log.read_text()
    finally:
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(timeout=60)
    assert code == 0, log.read_text()
    failures = json.loads(cli(live_env, "failures", "--json", index=index).stdout)
    assert len(failures) == failing + 1
    [listing] = [f for f in failures if f["stage"] == "list"]
    assert listing["attempts"] == 1  # recorded once, not again on every pass


def test_migration_under_a_live_writer_ends_with_every_document_in_the_new_index(
    live_env, opensearch_client, live_prefix
) -> None:
    """The worker keeps writing through the alias, new documents and a replaced one, from before the copy until
    after the switch. The new index must hold every document the old one got, the replaced one as it is now."""
    old, new, alias = f"{live_prefix}-v2", f"{live_prefix}-v3", f"{live_prefix}-current"
    assert cli(live_env, "index", "create", old, *LUCENE).returncode == 0
    start = 2 * REINDEX_BATCH + 7  # _reindex copies 1,000 a batch; the listing pages 500
    bulk_write(opensearch_client, old, {f"w-{n:05d}": worker_document(n) for n in range(start)})
    opensearch_client.indices.put_alias(index=old, name=alias)

    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        n = start
        while not stop.is_set():
            doc_id = f"w-{n:05d}"
            opensearch_client.index(index=alias, id=doc_id, body=worker_document(n))
            written.append(doc_id)
            if n == start + 5:  # the worker re-indexes a changed file: same id, new fields
                opensearch_client.index(index=alias, id="w-00001", body=worker_document(1) | {"file_size": 4242})
            n += 1
            time.sleep(0.2)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        migrated = cli(live_env, "migrate", "--from", alias, "--to", new, "--alias", alias, *LUCENE, "--json")
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert migrated.returncode == 0, migrated.stderr
    report = json.loads(migrated.stdout)
    assert report["switched"] and report["alias_was"] == old
    assert set(opensearch_client.indices.get_alias(name=alias)) == {new}
    assert len(written) > 10

    old_ids = ids(opensearch_client, old)
    new_ids = ids(opensearch_client, new)
    assert old_ids <= new_ids, (sorted(old_ids - new_ids)[:5], report["steps"], len(written), written[-3:])
    assert set(written) <= new_ids
    assert opensearch_client.get(index=new, id="w-00001")["_source"]["file_size"] == 4242
    with_vector = ids(opensearch_client, new, WITH_VECTOR["query"])
    assert old_ids <= with_vector  # everything the old index got is filled; later writes await --follow

    shown = cli(live_env, "alias", "show", alias)
    assert shown.stdout.strip() == f"{alias} → {new} (migrated from {old})"
    back = cli(live_env, "alias", "rollback", alias)
    assert back.returncode == 0, back.stderr
    assert set(opensearch_client.indices.get_alias(name=alias)) == {old}


def ids(client, index: str, query: dict | None = None) -> set[str]:
    client.indices.refresh(index=index)
    found: set[str] = set()
    body: dict = {"size": 1000, "query": query or {"match_all": {}}, "_source": False, "sort": [{"_id": "asc"}]}
    while True:
        hits = client.search(index=index, body=body)["hits"]["hits"]
        found |= {hit["_id"] for hit in hits}
        if len(hits) < 1000:
            return found
        body["search_after"] = hits[-1]["sort"]
