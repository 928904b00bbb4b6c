"""`--executor ray` against a real two-node Ray cluster on 127.0.0.1 (``raycluster.py``): the same documents and
vectors as the in-process pipeline, from a folder and from S3; a lost node and a killed driver end with every
image once; an image that kills its worker twice is one failure record."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from imgvec import wiring
from imgvec.errors import RayWorkersError
from imgvec.pipeline.executors.ray import WORKER_DIED, RayExecutor
from imgvec.pipeline.indexer import index_source
from imgvec.pipeline.options import PipelineOptions
from imgvec.sources.local import LocalFolder
from imgvec.stores.embedded import EmbeddedStore
from imgvec.stores.opensearch_client import OpenSearchConnection, connect
from tests import test_opensearch_live as live
from tests.conftest import TINY_MODEL
from tests.helpers import CrashingFolder, encode, kill_when, photo, run_cli
from tests.raycluster import RayCluster
from tests.s3server import SeaweedServer

pytestmark = pytest.mark.ray
PHOTOS = 40
MANY = 300


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(PHOTOS):
        (root / f"day{i % 3}").mkdir(exist_ok=True)
        (root / f"day{i % 3}" / f"img{i:03d}.jpg").write_bytes(encode(photo(9000 + i)))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def ray_flags(cluster: RayCluster) -> list[str]:
    return ["--executor", "ray", "--ray-address", cluster.address, "--ray-workers", "2"]


def env_for(cli_env: dict[str, str], cluster: RayCluster, store: Path, **extra: str) -> dict[str, str]:
    return {**cli_env, **cluster.driver_env, "IMGVEC_STORE": str(store), "IMGVEC_MODEL": TINY_MODEL, **extra}


def stored(store: Path) -> dict[str, tuple[np.ndarray, str]]:
    rows = EmbeddedStore(store, "images")._open().to_arrow().select(["file_path", "vector", "content_hash"])
    return {
        row["file_path"]: (np.asarray(row["vector"], dtype=np.float32), row["content_hash"]) for row in rows.to_pylist()
    }


def assert_same_index(local: Path, remote: Path, count: int) -> None:
    expected, got = stored(local), stored(remote)
    assert len(expected) == count and set(got) == set(expected)
    for path, (vector, content_hash) in expected.items():
        other, other_hash = got[path]
        assert other_hash == content_hash
        assert float(vector @ other) >= 0.9999, path  # rows are L2-normalised: the dot product is the cosine


def progress(env: dict[str, str]) -> dict:
    result = run_cli(["progress", "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_folder_on_the_cluster_gives_the_in_process_documents_and_vectors(
    tmp_path: Path, folder: Path, cluster: RayCluster, cli_env: dict[str, str]
) -> None:
    local_env = env_for(cli_env, cluster, tmp_path / "local")
    ray_env = env_for(cli_env, cluster, tmp_path / "ray")
    local = run_cli(["ingest", str(folder), "--json"], local_env)
    assert local.returncode == 3, local.stderr  # the corrupt file
    remote = run_cli(["ingest", str(folder), "--json", "--batch-size", "8", *ray_flags(cluster)], ray_env)
    assert remote.returncode == 3, remote.stderr
    report = json.loads(remote.stdout)
    assert report["embedded"] == PHOTOS
    assert [(Path(f["file_path"]).name, f["stage"]) for f in report["failures"]] == [("corrupt.jpg", "decode")]
    assert_same_index(tmp_path / "local", tmp_path / "ray", PHOTOS)

    shown = progress(ray_env)
    assert shown["executor"] == "ray" and shown["state"] == "finished"
    assert shown["runtime"].endswith(" on cpu") and shown["decode_workers"] is None
    workers = shown["workers"]
    assert len(workers) == 2 and sum(worker["images"] for worker in workers) == PHOTOS + 1
    assert len({worker["node"] for worker in workers}) == 2  # one actor per node
    assert any(worker["images"] > 0 and worker["rate"] > 0 for worker in workers)  # the first up may take all
    assert 1000 < shown["bytes_per_image"] < 20_000  # item records out, vectors back: never the image bytes

    again = run_cli(["ingest", str(folder), "--json", *ray_flags(cluster)], ray_env)
    assert json.loads(again.stdout)["unchanged"] == PHOTOS  # skipped on the driver: no worker even started
    metrics = run_cli(["metrics"], ray_env).stdout
    assert 'executor="ray"' in metrics and 'imgvec_workers_alive{index="images"} 0.0' in metrics

    # sync on the cluster: a new file embedded there, a deleted one's document removed here.
    (folder / "day0" / "img000.jpg").rename(tmp_path / "moved-away.jpg")
    (folder / "new.jpg").write_bytes(encode(photo(9999)))
    try:
        synced = run_cli(["sync", str(folder), "--json", *ray_flags(cluster)], ray_env)
    finally:
        (tmp_path / "moved-away.jpg").rename(folder / "day0" / "img000.jpg")
        (folder / "new.jpg").unlink()
    assert synced.returncode == 3, synced.stderr  # the corrupt file, still
    result = json.loads(synced.stdout)
    assert (result["embedded"], result["deleted"]) == (1, 1)
    assert progress(ray_env)["executor"] == "ray"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    client = server.client()
    client.create_bucket(Bucket="nas")
    for i in range(PHOTOS):
        client.put_object(Bucket="nas", Key=f"mirror/{i:03d}.jpg", Body=encode(photo(9500 + i)))
    client.put_object(Bucket="nas", Key="mirror/broken.png", Body=b"\x89PNG\r\n\x1a\n broken")
    client.create_bucket(Bucket=live.BUCKET)  # what the file-index worker's documents point at
    for n in range(live.PHOTOS):
        client.put_object(Bucket=live.BUCKET, Key=f"2024/trip/photo{n}.jpg", Body=encode(photo(n)))
    yield server
    server.stop()


def test_an_s3_prefix_on_the_cluster_is_read_by_the_workers_themselves(
    tmp_path: Path, s3: SeaweedServer, cluster: RayCluster, cli_env: dict[str, str]
) -> None:
    # The driver's S3 settings (credentials, endpoint) reach the workers through Ray's runtime environment.
    local_env = env_for(cli_env, cluster, tmp_path / "local", **s3.env())
    ray_env = env_for(cli_env, cluster, tmp_path / "ray", **s3.env())
    assert run_cli(["ingest", "s3://nas/mirror/"], local_env).returncode == 3
    remote = run_cli(["ingest", "s3://nas/mirror/", "--json", *ray_flags(cluster)], ray_env)
    assert remote.returncode == 3, remote.stderr
    report = json.loads(remote.stdout)
    assert report["embedded"] == PHOTOS and [f["stage"] for f in report["failures"]] == ["decode"]
    assert_same_index(tmp_path / "local", tmp_path / "ray", PHOTOS)
    assert progress(ray_env)["bytes_per_image"] < 20_000


def workers_alive(env: dict[str, str]) -> int | None:
    result = run_cli(["progress", "--json"], env)
    return json.loads(result.stdout)["workers_alive"] if result.returncode == 0 else None


@pytest.mark.opensearch
def test_a_migration_fills_the_worker_documents_on_the_cluster(
    s3: SeaweedServer, cluster: RayCluster, cli_env: dict[str, str], opensearch_url: str
) -> None:
    """`migrate`'s fill is an `ingest --missing`: the actors read each document's s3_url themselves."""
    client = connect(OpenSearchConnection(url=opensearch_url))
    prefix = f"ray-{uuid.uuid4().hex[:8]}"
    old, new, alias = f"{prefix}-v2", f"{prefix}-v3", f"{prefix}-current"
    live.create_old_index(client, old, ("file_name", "file_path", "bucket", "file_key", "s3_url"))
    documents = {f"worker-{n}": live.worker_document(n) for n in range(live.PHOTOS)}
    live.write_worker_documents(client, old, documents)
    client.indices.put_alias(index=old, name=alias)
    env = {**cli_env, **cluster.driver_env, **s3.env(), "IMGVEC_STORE": opensearch_url, "IMGVEC_MODEL": TINY_MODEL}
    try:
        migrated = run_cli(
            ["migrate", "--from", old, "--to", new, "--alias", alias, *live.LUCENE, "--json", *ray_flags(cluster)],
            env,
        )
        assert migrated.returncode == 0, migrated.stderr
        assert set(client.indices.get_alias(name=alias)) == {new}
        for doc_id in documents:
            assert len(client.get(index=new, id=doc_id)["_source"]["image_vector"]) == 512
        assert progress({**env, "IMGVEC_INDEX": new})["executor"] == "ray"
    finally:
        client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)


def start_ingest(folder: Path, env: dict[str, str], cluster: RayCluster) -> subprocess.Popen[str]:
    command = ["ingest", str(folder), "--batch-size", "8", "--rate-limit", "20", "--json", *ray_flags(cluster)]
    return subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def count(store: Path) -> int:
    try:
        return EmbeddedStore(store, "images").stats().documents
    except Exception:  # noqa: BLE001 - not created yet
        return 0


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(MANY):
        (root / f"img{i:03d}.jpg").write_bytes(encode(photo(20_000 + i)))
    return root


def test_a_node_lost_mid_run_has_its_batches_run_on_the_other(
    tmp_path: Path, many: Path, cluster: RayCluster, cli_env: dict[str, str]
) -> None:
    env = env_for(cli_env, cluster, tmp_path / "store")
    run = start_ingest(many, env, cluster)
    try:
        # Both workers are up and have work in hand before the second node goes.
        wait_for(lambda: run.poll() is not None or (count(tmp_path / "store") > 0 and workers_alive(env) == 2))
        assert run.poll() is None, "the run ended before both workers were up"
        cluster.kill_worker_node()
        out, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
        if cluster.worker_raylet is None:  # lost: the next tests get their second node back
            cluster.wait_for_nodes(1)
            cluster.start_worker_node()
    assert run.returncode == 0, err
    report = json.loads(out)
    assert report["embedded"] == MANY and report["failed"] == 0
    rows = EmbeddedStore(tmp_path / "store", "images")._open().to_arrow()["file_path"].to_pylist()
    assert len(rows) == len(set(rows)) == MANY  # every image exactly once
    workers = progress(env)["workers"]
    # The lost worker's unfinished batches were counted once, by the worker that finished them; a third worker was
    # asked for in its place (it waits for room: the surviving node's one CPU is taken).
    assert sum(worker["images"] for worker in workers) == MANY and len(workers) == 3


def test_a_killed_driver_resumes_with_every_image_once(
    tmp_path: Path, many: Path, cluster: RayCluster, cli_env: dict[str, str]
) -> None:
    env = env_for(cli_env, cluster, tmp_path / "store")
    run = start_ingest(many, env, cluster)
    kill_when(run, lambda: count(tmp_path / "store") >= 16)
    assert progress(env)["state"] == "interrupted"
    committed = count(tmp_path / "store")
    assert 16 <= committed < MANY
    # The killed driver's actors die with it (Ray ends an owner's actors): the next run gets both CPUs again.
    final = run_cli(["ingest", str(many), "--json", *ray_flags(cluster)], env, timeout=240)
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["unchanged"] == committed and report["embedded"] == MANY - committed
    rows = EmbeddedStore(tmp_path / "store", "images")._open().to_arrow()["file_path"].to_pylist()
    assert len(rows) == len(set(rows)) == MANY
    assert progress(env)["workers_alive"] == 0 and len(progress(env)["workers"]) == 2


@pytest.fixture
def driver(cluster: RayCluster, settings, monkeypatch: pytest.MonkeyPatch):
    """This process as a driver of the test cluster, through the library rather than the CLI: the cluster's token
    in the environment, and the tiny model loaded (the index's identity comes from it)."""
    for name, value in cluster.driver_env.items():
        monkeypatch.setenv(name, value)
    with pytest.warns(UserWarning, match="random weights"):
        return wiring.load_embedder(settings, TINY_MODEL)


def test_an_image_that_kills_its_worker_twice_is_one_failure(
    tmp_path: Path, cluster: RayCluster, settings, driver
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(12):
        (root / f"img{i:02d}.jpg").write_bytes(encode(photo(30_000 + i)))
    (root / "crash-me.jpg").write_bytes(encode(photo(30_999)))
    store = EmbeddedStore(tmp_path / "store", "images")
    options = PipelineOptions(batch_size=4, executor="ray", ray_address=cluster.address, ray_workers=2)
    executor = partial(RayExecutor, model=wiring.model_config(settings, TINY_MODEL))
    report = index_source(CrashingFolder(root), store, driver, options, executor=executor)
    assert [(Path(f.file_path).name, f.stage, f.reason) for f in report.failures] == [
        ("crash-me.jpg", "worker", WORKER_DIED)
    ]
    assert report.embedded == 12 and store.stats().documents == 12


def test_ray_flags_need_the_ray_executor(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "IMGVEC_MODEL": TINY_MODEL}
    result = run_cli(["ingest", str(tmp_path), "--ray-workers", "2"], env)
    assert result.returncode == 2 and "--ray-workers goes with --executor ray" in result.stderr
    result = run_cli(["ingest", str(tmp_path), "--executor", "spark"], env)
    assert result.returncode == 2 and "choose local, ray or lambda" in result.stderr


def test_an_unreachable_cluster_is_one_line_within_seconds(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(encode(photo(1)))
    env = {**cli_env, "IMGVEC_MODEL": TINY_MODEL}
    began = time.monotonic()
    result = run_cli(["ingest", str(tmp_path / "photos"), "--executor", "ray", "--ray-address", "127.0.0.1:1"], env)
    assert result.returncode == 1 and time.monotonic() - began < 60
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr


def test_workers_that_cannot_load_the_model_stop_the_run_with_one_line(
    tmp_path: Path, cluster: RayCluster, settings, driver
) -> None:
    """The model is missing on the nodes (here: its config folder is not there): no image is to blame."""
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(encode(photo(1)))
    elsewhere = replace(settings, model_config_dir=str(tmp_path / "not-on-the-nodes"))
    options = PipelineOptions(executor="ray", ray_address=cluster.address, ray_workers=1)
    executor = partial(RayExecutor, model=wiring.model_config(elsewhere, TINY_MODEL))
    store = EmbeddedStore(tmp_path / "store", "images")
    cannot_start = r"^a Ray worker could not start: model config directory .* does not exist$"
    with pytest.raises(RayWorkersError, match=cannot_start) as raised:
        index_source(LocalFolder(root), store, driver, options, executor=executor)
    assert "\n" not in str(raised.value)
