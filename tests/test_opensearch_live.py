"""The real `imgvec` command against a live OpenSearch node: the workflow the file-index worker's users run.

index create → verify; the worker's documents (its own ids, its eight fields, no vector) filled in place from S3 by
`ingest --missing`; status and search; migrate from the old 1024-dim index with an alias switch and rollback; a write
the cluster rejects; `kill -9` during a fill, then resume. The node is the one conftest.py starts (lucene only).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import encode, photo, run_cli, worker_fields
from tests.s3server import SeaweedServer, seaweed_with

pytestmark = pytest.mark.opensearch
LUCENE = ["--engine", "lucene", "--shards", "1", "--replicas", "0"]
BUCKET = "nas-mirror"
PHOTOS = 6


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    photos = {f"2024/trip/photo{n}.jpg": encode(photo(n)) for n in range(PHOTOS)}
    server = seaweed_with(tmp_path_factory.mktemp("seaweed"), BUCKET, photos)
    yield server
    server.stop()


@pytest.fixture
def client(opensearch_client):
    return opensearch_client


@pytest.fixture
def prefix(live_prefix: str) -> str:
    return live_prefix


@pytest.fixture
def env(live_env: dict[str, str]) -> dict[str, str]:
    return live_env


def worker_document(n: int, *, file_path: str | None = None) -> dict[str, object]:
    """What the file-index worker writes for one NAS file: its eight fields, no vector."""
    key = f"2024/trip/photo{n}.jpg"
    return worker_fields(BUCKET, key, file_path or f"/nas/photos/{key}", 1000 + n)


def write_worker_documents(client, index: str, documents: dict[str, dict[str, object]]) -> None:
    for doc_id, source in documents.items():
        client.index(index=index, id=doc_id, body=source)
    client.indices.refresh(index=index)


def create_old_index(client, name: str, keywords: tuple[str, ...]) -> None:
    """An index like the organisation's old one: 1024-dim l2 vectors, made without imgvec."""
    vector = {
        "type": "knn_vector",
        "dimension": 1024,
        "method": {"name": "hnsw", "space_type": "l2", "engine": "lucene"},
    }
    properties = {**{field: {"type": "keyword"} for field in keywords}, "image_vector": vector}
    client.indices.create(
        index=name,
        body={"settings": {"index": {"knn": True, "number_of_replicas": 0}}, "mappings": {"properties": properties}},
    )


def cli(env: dict[str, str], *args: str, index: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli([*(["--index", index] if index else []), *args], env)


def test_create_then_verify_and_verify_explains_the_old_index(env, client, prefix) -> None:
    created = cli(env, "index", "create", f"{prefix}-new", *LUCENE)
    assert created.returncode == 0, created.stderr
    verified = cli(env, "index", "verify", f"{prefix}-new")
    assert verified.returncode == 0 and "✓" in verified.stdout

    old = f"{prefix}-old"
    create_old_index(client, old, ("file_path",))
    report = cli(env, "index", "verify", old, "--json")
    assert report.returncode == 1
    problems = json.loads(report.stdout)["problems"]
    text = " ".join(problems)
    assert "1024" in text and "l2" in text and "identity" in text, problems
    assert len(problems) >= 3


def test_worker_documents_are_filled_in_place_from_s3_then_searched(env, client, prefix) -> None:
    index = f"{prefix}-v3"
    assert cli(env, "index", "create", index, *LUCENE).returncode == 0
    documents = {f"worker-{n}": worker_document(n) for n in range(PHOTOS)}
    write_worker_documents(client, index, documents)

    filled = cli(env, "ingest", "--missing", "--json", index=index)
    assert filled.returncode == 0, filled.stderr
    assert json.loads(filled.stdout)["embedded"] + json.loads(filled.stdout)["cache_hits"] == PHOTOS

    client.indices.refresh(index=index)
    assert client.count(index=index)["count"] == PHOTOS  # filled in place: no document added
    for doc_id, written in documents.items():
        source = client.get(index=index, id=doc_id)["_source"]
        assert len(source["image_vector"]) == 512
        for field, value in written.items():
            assert source[field] == value, (doc_id, field)  # the worker's fields are kept as it wrote them

    status = json.loads(cli(env, "status", "--json", index=index).stdout)
    assert (status["documents"], status["with_vector"], status["dimension"]) == (PHOTOS, PHOTOS, 512)

    hits = json.loads(cli(env, "search", "a photo", "-k", "3", "--json", index=index).stdout)
    assert len(hits) == 3 and all(-1.0 <= hit["score"] <= 1.0 for hit in hits)
    query = f"s3://{BUCKET}/2024/trip/photo2.jpg"
    same = json.loads(cli(env, "search", "--image", query, "-k", "2", "--json", index=index).stdout)
    assert same[0]["file_key"] == "2024/trip/photo2.jpg" and same[0]["score"] == pytest.approx(1.0, abs=1e-3)
    filtered = cli(env, "search", "a photo", "--ext", "png", "--json", index=index)
    assert json.loads(filtered.stdout) == []  # the filter runs inside the k-NN clause
    under = json.loads(
        cli(env, "search", "a photo", "--path-prefix", "/nas/photos/2024/", "-k", "10", "--json", index=index).stdout
    )
    assert len(under) == PHOTOS


def test_migrate_from_the_old_index_switches_the_alias_and_rolls_back(env, client, prefix) -> None:
    old, new, alias = f"{prefix}-v2-knn", f"{prefix}-v3-knn-512", f"{prefix}-current"
    create_old_index(client, old, ("file_name", "file_path", "bucket", "file_key", "s3_url"))
    documents = {f"worker-{n}": worker_document(n) for n in range(PHOTOS)}
    documents["worker-0"] = {**documents["worker-0"], "image_vector": [0.01] * 1024}  # one old sample vector
    write_worker_documents(client, old, documents)
    client.indices.put_alias(index=old, name=alias)

    migrated = cli(env, "migrate", "--from", old, "--to", new, "--alias", alias, *LUCENE, "--json")
    assert migrated.returncode == 0, migrated.stderr
    report = json.loads(migrated.stdout)
    assert report["switched"] and report["alias_was"] == old and report["target"]["with_vector"] == PHOTOS
    assert set(client.indices.get_alias(name=alias)) == {new}
    for doc_id in documents:
        assert len(client.get(index=new, id=doc_id)["_source"]["image_vector"]) == 512  # same ids, new vectors

    through_alias = cli(env, "search", "a photo", "-k", "2", "--json", index=alias)
    assert through_alias.returncode == 0, through_alias.stderr
    assert len(json.loads(through_alias.stdout)) == 2

    back = cli(env, "alias", "rollback", alias)
    assert back.returncode == 0 and set(client.indices.get_alias(name=alias)) == {old}
    again = cli(env, "alias", "rollback", alias)
    assert again.returncode == 1 and "nothing to roll back" in again.stderr


def test_a_cluster_that_refuses_writes_stops_the_run_and_the_next_run_completes(env, client, prefix, tmp_path):
    index = f"{prefix}-blocked"
    folder = tmp_path / "nas"
    folder.mkdir()
    for n in range(4):
        photo(n).save(folder / f"photo{n}.jpg")
    assert cli(env, "index", "create", index, *LUCENE).returncode == 0
    client.indices.put_settings(index=index, body={"index.blocks.write": True})
    blocked = cli(env, "ingest", str(folder), "--json", "--batch-size", "2", index=index)
    assert blocked.returncode == 1, blocked.stderr  # a set-up problem: stopped at the first batch, with one line
    [line] = [line for line in blocked.stderr.splitlines() if "cannot write to the store" in line]
    assert "cluster_block" in line and "run the same command again" in line and "Traceback" not in blocked.stderr

    client.indices.put_settings(index=index, body={"index.blocks.write": False})
    retried = cli(env, "ingest", str(folder), "--json", index=index)  # a write failure is tried again, no flag
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["embedded"] == 4
    assert json.loads(cli(env, "failures", "--json", index=index).stdout) == []


def test_kill_9_during_a_fill_then_resume_gives_every_document_one_vector(env, client, prefix, tmp_path) -> None:
    index = f"{prefix}-killed"
    folder = tmp_path / "nas"
    folder.mkdir()
    documents = {}
    for n in range(40):
        path = folder / f"photo{n}.jpg"
        photo(200 + n, (96, 72)).save(path)
        documents[f"worker-{n}"] = worker_document(n, file_path=str(path)) | {"s3_url": None, "bucket": None}
    assert cli(env, "index", "create", index, *LUCENE).returncode == 0
    write_worker_documents(client, index, {k: {f: v for f, v in d.items() if v} for k, d in documents.items()})

    args = ["--index", index, "ingest", "--missing", "--batch-size", "4", "--rate-limit", "8"]
    run = subprocess.Popen([sys.executable, "-m", "imgvec.cli", *args], env=env, stderr=subprocess.DEVNULL)
    with_vector = {"query": {"exists": {"field": "image_vector"}}}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        client.indices.refresh(index=index)
        if client.count(index=index, body=with_vector)["count"] >= 8:
            break
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    client.indices.refresh(index=index)
    assert client.count(index=index, body=with_vector)["count"] < 40, "the fill finished before it was killed"

    resumed = cli(env, "ingest", "--missing", "--json", index=index)
    assert resumed.returncode == 0, resumed.stderr
    client.indices.refresh(index=index)
    assert client.count(index=index)["count"] == 40  # no document added
    for doc_id in documents:
        source = client.get(index=index, id=doc_id)["_source"]
        assert len(source["image_vector"]) == 512 and source["file_path"] == documents[doc_id]["file_path"]


def test_follow_fills_what_the_worker_adds_and_survives_a_node_restart(
    env, client, prefix, opensearch_node, cli_env
) -> None:
    if opensearch_node is None:
        pytest.skip("OPENSEARCH_URL names an outside cluster: the tests do not restart it")
    index = f"{prefix}-followed"
    assert cli(env, "index", "create", index, *LUCENE).returncode == 0
    write_worker_documents(client, index, {f"worker-{n}": worker_document(n) for n in range(2)})
    args = ["--index", index, "ingest", "--missing", "--follow", "--interval", "1s", "--workers", "0"]
    log = cli_env["IMGVEC_STORE"] + "-follow.log"
    with open(log, "w") as stderr:
        follower = subprocess.Popen([sys.executable, "-m", "imgvec.cli", *args], env=env, stderr=stderr)

    def filled() -> int:
        client.indices.refresh(index=index)
        return client.count(index=index, body={"query": {"exists": {"field": "image_vector"}}})["count"]

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and filled() < count:
            time.sleep(0.5)
        assert filled() == count, Path(log).read_text()

    try:
        wait_for(2)
        write_worker_documents(client, index, {f"worker-{n}": worker_document(n) for n in range(2, 4)})
        wait_for(4)  # added while it runs: filled by a later pass

        opensearch_node.stop()
        time.sleep(4)  # a pass or two fail meanwhile
        progress = json.loads(cli(env, "progress", "--json", index=index).stdout)
        assert progress["state"] == "running" and progress["mode"] == "follow"
        assert progress["health"]["errors_in_a_row"] >= 1 and "reach" in progress["health"]["last_error"]
        opensearch_node.start()
        write_worker_documents(client, index, {f"worker-{n}": worker_document(n) for n in range(4, PHOTOS)})
        wait_for(PHOTOS)  # caught up after the outage
        health = json.loads(cli(env, "progress", "--json", index=index).stdout)["health"]
        assert health["errors_in_a_row"] == 0 and health["last_pass_at"]
    finally:
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(timeout=60)
    text = Path(log).read_text()
    assert code == 0, text  # SIGTERM drains, then exits 0
    assert "recovered" in text and "stopped:" in text
    assert client.count(index=index)["count"] == PHOTOS  # never a second document
    assert json.loads(cli(env, "progress", "--json", index=index).stdout)["state"] == "finished"


def test_sync_and_watch_delete_and_move_documents_of_the_live_index(env, client, prefix, tmp_path) -> None:
    index = f"{prefix}-folder"
    folder = tmp_path / "nas"
    folder.mkdir()
    for n in range(4):
        photo(n).save(folder / f"photo{n}.jpg")
    assert cli(env, "index", "create", index, *LUCENE).returncode == 0

    def paths() -> set[str]:
        client.indices.refresh(index=index)
        hits = client.search(index=index, body={"size": 100, "_source": ["file_path"]})["hits"]["hits"]
        return {hit["_source"]["file_path"] for hit in hits}

    assert cli(env, "sync", str(folder), index=index).returncode == 0
    (folder / "photo0.jpg").unlink()
    (folder / "photo1.jpg").rename(folder / "renamed.jpg")
    synced = cli(env, "sync", str(folder), "--json", index=index)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["sync"]["deleted"] == 2 and json.loads(synced.stdout)["embedded"] == 0
    assert paths() == {str(p) for p in folder.glob("*.jpg")}

    args = ["--index", index, "watch", str(folder), "--settle", "0.3s", "--no-initial-sync", "--workers", "0"]
    watcher = subprocess.Popen([sys.executable, "-m", "imgvec.cli", *args], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # until its first heartbeat: the watch is in place
        while time.monotonic() < deadline:
            shown = cli(env, "progress", "--json", index=index)
            if shown.returncode == 0 and (json.loads(shown.stdout).get("health") or {}).get("heartbeat_at"):
                break
            time.sleep(0.5)
        (folder / "renamed.jpg").rename(folder / "moved-again.jpg")
        (folder / "photo2.jpg").unlink()
        deadline = time.monotonic() + 60
        while paths() != {str(p) for p in folder.glob("*.jpg")} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert paths() == {str(p) for p in folder.glob("*.jpg")}
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=60) == 0
    progress = json.loads(cli(env, "progress", "--json", index=index).stdout)
    assert (progress["moved"], progress["deleted"], progress["mode"]) == (1, 1, "watch")


def test_a_run_dir_the_node_user_cannot_enter_is_one_line_not_a_jvm_trace(opensearch_node, tmp_path) -> None:
    import os

    if opensearch_node is None or os.geteuid() != 0:
        pytest.skip("the node runs as another user only when started by root")
    private = tmp_path / "private"  # pytest's tmp folder, like a mktemp -d, is root's alone
    private.mkdir(mode=0o700)
    started = subprocess.run(
        ["bash", str(opensearch_node.SCRIPT), "start", "--run-dir", str(private / "node")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 1
    [line] = started.stderr.strip().splitlines()[-1:]
    assert "cannot enter it" in line and "--run-dir" in line and "Exception" not in started.stderr
