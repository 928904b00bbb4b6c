"""imgvec as the `cis-image-embedding` Lambda, under AWS's real runtime (the Runtime Interface Emulator with
awslambdaric), reading a real S3 server; and ``--executor lambda`` fanning a backfill out to several function
instances behind a front that throttles and injects faults as Lambda does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from imgvec.embed.bundle import export_bundle
from imgvec.stores.embedded import EmbeddedStore
from tests.conftest import TINY_MODEL
from tests.helpers import encode, kill_when, photo, run_cli, worker_fields
from tests.lambdaemu import Emulator, Fault, Front, lambda_client
from tests.motoserver import MotoServer
from tests.s3server import SeaweedServer, seaweed_with

PHOTOS = 130
"""Past the executor's batch of 20 several times, and its default of 100 once."""
CORRUPT = ("mirror/broken.jpg", "mirror/truncated.png")
POISON = "mirror/poison.jpg"
"""A valid image whose every invocation fails (the front's fault): it ends as that image's failure alone."""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    objects = {f"mirror/{i:03d}.jpg": encode(photo(7000 + i)) for i in range(PHOTOS)}
    objects[CORRUPT[0]] = b"\xff\xd8\xff\xe0 not really a jpeg"
    objects[CORRUPT[1]] = encode(photo(1), "PNG")[:300]
    objects[POISON] = encode(photo(7999))
    server = seaweed_with(tmp_path_factory.mktemp("seaweed"), "nas", objects)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_embedder) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "model"
    export_bundle(tiny_embedder, folder)
    return folder


def function_env(s3: SeaweedServer, bundle: Path, **extra: str) -> dict[str, str]:
    """What the function's configuration gives it: its bundle, S3, and nothing of this machine's imgvec settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("IMGVEC_", "AWS_"))}
    return {**env, **s3.env(), "IMGVEC_MODEL_BUNDLE": str(bundle), "IMGVEC_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory, s3: SeaweedServer, bundle: Path) -> Iterator[Emulator]:
    instance = Emulator(tmp_path_factory.mktemp("rie") / "rie.log", function_env(s3, bundle)).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory, s3: SeaweedServer, module_env: dict[str, str]) -> Path:
    """The mirror ingested in-process: imgvec's own vectors, which the function's must match."""
    store = tmp_path_factory.mktemp("local") / "store"
    env = {**module_env, **s3.env(), "IMGVEC_STORE": str(store)}
    result = run_cli(["ingest", "s3://nas/mirror/", "--json"], env)
    assert result.returncode == 3, result.stderr  # the two corrupt files
    return store


def stored(store: Path) -> dict[str, tuple[np.ndarray, str]]:
    rows = EmbeddedStore(store, "images")._open().to_arrow().select(["file_key", "vector", "content_hash"])
    return {
        row["file_key"]: (np.asarray(row["vector"], dtype=np.float32), row["content_hash"]) for row in rows.to_pylist()
    }


def invoke(endpoint: str, event: object) -> dict:
    """The file-index worker's call, exactly: boto3's invoke, FunctionName "function" on the emulator."""
    response = lambda_client(endpoint).invoke(FunctionName="function", Payload=json.dumps(event))
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    return json.loads(response["Payload"].read())


# -- the worker's call --------------------------------------------------------------------------------


def test_the_workers_call_returns_imgvecs_own_vector(emulator: Emulator, s3: SeaweedServer, local_store: Path) -> None:
    ours = stored(local_store)
    for key in ("mirror/000.jpg", "mirror/129.jpg"):
        answer = invoke(emulator.endpoint, {"imageUrl": f"s3://nas/{key}", "useCache": True})
        assert list(answer) == ["data"] and list(answer["data"]) == ["embedding", "dimension", "model", "cached"]
        data = answer["data"]
        assert data["dimension"] == 512 and len(data["embedding"]) == 512 and data["model"] == TINY_MODEL
        assert data["cached"] is False  # this function has no store
        assert float(np.asarray(data["embedding"], dtype=np.float32) @ ours[key][0]) >= 0.999
    # The object's https URL, as the worker's documents hold it (path-style under the S3 endpoint).
    answer = invoke(emulator.endpoint, {"imageUrl": f"{s3.endpoint}/nas/mirror/000.jpg", "useCache": False})
    assert float(np.asarray(answer["data"]["embedding"]) @ ours["mirror/000.jpg"][0]) >= 0.999


@pytest.mark.parametrize(
    ("event", "kind", "says"),
    [
        ({"imageUrl": "s3://nas/mirror/broken.jpg", "useCache": True}, "ImageDecodeError", "image"),
        ({"imageUrl": "s3://nas/mirror/truncated.png"}, "ImageDecodeError", "image"),
        ({"imageUrl": "s3://nas/mirror/gone.jpg", "useCache": True}, "ObjectNotFound", "no longer exists"),
        ({"imageUrl": "s3://no-such-bucket/a.jpg"}, "ObjectNotFound", "does not exist"),
        ({"imageUrl": "file:///etc/passwd"}, "InvalidRequest", "must be an s3://bucket/key"),
        ({"imageUrl": "http://169.254.169.254/latest/meta-data/"}, "InvalidRequest", "must be an s3://bucket/key"),
        ({"imageUrl": "s3://nas/"}, "InvalidRequest", "must be an s3://bucket/key"),
        ({"imageUrl": "s3://nas/mirror/000.jpg", "useCache": "yes"}, "InvalidRequest", "useCache"),
        ({"url": "s3://nas/mirror/000.jpg"}, "InvalidRequest", "expected"),
        ([1, 2, 3], "InvalidRequest", "expected"),
    ],
)
def test_a_bad_request_is_an_error_payload_and_the_runtime_lives_on(
    emulator: Emulator, event: object, kind: str, says: str
) -> None:
    answer = invoke(emulator.endpoint, event)
    assert list(answer) == ["error"] and answer["error"]["type"] == kind, answer
    assert says in answer["error"]["message"] and "\n" not in answer["error"]["message"]
    assert "Traceback" not in json.dumps(answer)
    after = invoke(emulator.endpoint, {"imageUrl": "s3://nas/mirror/001.jpg", "useCache": True})
    assert after["data"]["dimension"] == 512


def test_use_cache_answers_from_the_index_from_a_cold_start(
    tmp_path: Path, s3: SeaweedServer, bundle: Path, local_store: Path
) -> None:
    ours = stored(local_store)
    cold = Emulator(tmp_path / "rie.log", function_env(s3, bundle, IMGVEC_STORE=str(local_store))).start()
    try:
        first = invoke(cold.endpoint, {"imageUrl": "s3://nas/mirror/005.jpg", "useCache": True})["data"]
        assert first["cached"] is True
        assert np.array_equal(np.asarray(first["embedding"], dtype=np.float32), ours["mirror/005.jpg"][0])
        fresh = invoke(cold.endpoint, {"imageUrl": "s3://nas/mirror/005.jpg", "useCache": False})["data"]
        assert fresh["cached"] is False
        assert float(np.asarray(fresh["embedding"]) @ ours["mirror/005.jpg"][0]) >= 0.999
        # Embedded Metric Format on stdout: CloudWatch Logs makes metrics of it.
        lines = [json.loads(line) for line in cold.stdout().splitlines() if line.startswith('{"_aws"')]
        assert [line["CacheHits"] for line in lines] == [1, 0]
        assert lines[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "imgvec"
    finally:
        cold.stop()


def test_a_function_without_its_model_answers_why(tmp_path: Path, s3: SeaweedServer) -> None:
    broken = Emulator(tmp_path / "rie.log", function_env(s3, tmp_path / "no-bundle")).start()
    try:
        for _ in range(2):
            answer = invoke(broken.endpoint, {"imageUrl": "s3://nas/mirror/000.jpg", "useCache": True})
            assert answer["error"]["type"] == "ModelLoadError" and "no model bundle at" in answer["error"]["message"]
    finally:
        broken.stop()


def test_the_handler_never_imports_torch(s3: SeaweedServer, bundle: Path) -> None:
    code = (
        "import sys, json; from imgvec.aws.lambda_handler import handler\n"
        "one = handler({'imageUrl': 's3://nas/mirror/003.jpg', 'useCache': True})\n"
        "many = handler({'items': [{'id': 'a', 'bucket': 'nas', 'key': 'mirror/004.jpg'}]})\n"
        "print(json.dumps([one['data']['dimension'], many['items'][0]['id'], "
        "[m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=function_env(s3, bundle), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [512, "a", []]


# -- the executor -------------------------------------------------------------------------------------


@contextmanager
def started_fleet(folder: Path, env: dict[str, str], instances: int = 3) -> Iterator[Front]:
    """Function instances behind one front: at most that many invocations at once, as a reserved concurrency."""
    emulators = [Emulator(folder / f"rie{i}.log", env).start() for i in range(instances)]
    front = Front(emulators)
    try:
        yield front
    finally:
        front.close()
        for emulator in emulators:
            emulator.stop()


@pytest.fixture
def fleet(tmp_path: Path, s3: SeaweedServer, bundle: Path) -> Iterator[Front]:
    with started_fleet(tmp_path, function_env(s3, bundle)) as front:
        yield front


def driver_env(module_env: dict[str, str], s3: SeaweedServer, store: Path) -> dict[str, str]:
    return {**module_env, **s3.env(), "IMGVEC_STORE": str(store)}


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto.log").start()
    yield server
    server.stop()


def test_a_backfill_through_lambda_ends_like_the_in_process_run(
    tmp_path: Path, fleet: Front, s3: SeaweedServer, local_store: Path, module_env: dict[str, str], moto: MotoServer
) -> None:
    for kind, times in (("500", 2), ("502", 1), ("429", 2), ("error", 1), ("timeout", 1), ("too_large", 1)):
        fleet.inject(Fault(kind, times=times))
    fleet.inject(Fault("slow", times=3, seconds=1.0))
    poisoned = lambda request: any(item.get("key") == POISON for item in request.get("items", []))  # noqa: E731
    fleet.inject(Fault("error", times=1000, when=poisoned))
    env = {**driver_env(module_env, s3, tmp_path / "store"), **moto.env()}
    flags = fleet.flags("--lambda-batch-size", "20", "--lambda-concurrency", "6", "--cloudwatch", "imgvec")
    result = run_cli(["ingest", "s3://nas/mirror/", "--json", *flags], env)
    assert result.returncode == 3, result.stderr  # files failed, the run finished
    report = json.loads(result.stdout)
    failures = {failure["file_path"]: failure for failure in report["failures"]}
    assert set(failures) == {f"s3://nas/{key}" for key in (*CORRUPT, POISON)}, failures
    assert {failures[f"s3://nas/{key}"]["stage"] for key in CORRUPT} == {"decode"}
    assert "failed twice on this image alone" in failures[f"s3://nas/{POISON}"]["reason"]
    assert report["embedded"] == PHOTOS
    ours, theirs = stored(local_store), stored(tmp_path / "store")
    assert set(theirs) == set(ours) - {POISON} and len(theirs) == PHOTOS
    for key, (vector, content_hash) in theirs.items():
        assert content_hash == ours[key][1]
        assert float(vector @ ours[key][0]) >= 0.999, key
    progress = json.loads(run_cli(["progress", "--json"], env).stdout)
    assert progress["executor"] == "lambda" and progress["invocations"] >= 7
    assert progress["throttles"] >= 2  # the injected ones, and six callers on three instances
    assert fleet.counts.concurrent_peak == 3 and fleet.counts.throttled + 2 <= progress["throttles"] + 2
    assert progress["bytes_per_image"] < 10_000
    dims = {"Index": "images", "Executor": "lambda"}
    assert moto.latest("imgvec", "LambdaInvocations", dims) == progress["invocations"]
    assert moto.latest("imgvec", "TotalImagesProcessed", dims) == PHOTOS + 3
    metrics = run_cli(["metrics"], env).stdout
    assert "imgvec_lambda_invocations_total" in metrics and "imgvec_lambda_throttles_total" in metrics


def test_a_killed_driver_resumes_with_every_image_once(
    tmp_path: Path, fleet: Front, s3: SeaweedServer, module_env: dict[str, str]
) -> None:
    fleet.inject(Fault("slow", times=1000, seconds=0.7))  # every batch: the run lasts long enough to be killed
    env = driver_env(module_env, s3, tmp_path / "store")
    command = [
        "ingest",
        "s3://nas/mirror/",
        "--json",
        *fleet.flags("--lambda-batch-size", "10", "--lambda-concurrency", "2"),
    ]
    run = subprocess.Popen(
        [sys.executable, "-m", "imgvec.cli", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kill_when(run, lambda: count(tmp_path / "store") >= 30)
    committed = count(tmp_path / "store")
    assert 30 <= committed < PHOTOS
    final = run_cli(command[:3] + fleet.flags(), env, timeout=240)  # the default batch of 100
    assert final.returncode == 3, final.stderr
    report = json.loads(final.stdout)
    assert report["unchanged"] == committed and report["embedded"] == PHOTOS + 1 - committed
    keys = EmbeddedStore(tmp_path / "store", "images")._open().to_arrow()["file_key"].to_pylist()
    assert len(keys) == len(set(keys)) == PHOTOS + 1


def test_estimate_measures_the_functions_own_time_per_image(
    tmp_path: Path, fleet: Front, s3: SeaweedServer, module_env: dict[str, str]
) -> None:
    env = driver_env(module_env, s3, tmp_path / "store")
    flags = ["--lambda-images-per-request", "10", "--lambda-concurrency", "3", "--sample", "40"]
    result = run_cli(["estimate", "s3://nas/mirror/", "--json", *fleet.flags(), *flags], env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["per_image_basis"] == "measured through the Lambda function on 40 images"
    assert 0 < found["per_image_seconds"] < 5 and found["serverless_compute_cost"] > 0
    sizes = [len(request["items"]) for request in fleet.counts.requests if "items" in request]
    assert sum(sizes) == 40 and max(sizes) == 10  # invoked as the modelled run would be
    assert not (tmp_path / "store").exists()  # nothing written to the index


@pytest.mark.opensearch
def test_the_workers_documents_are_filled_through_the_function_which_then_answers_from_them(
    tmp_path: Path,
    s3: SeaweedServer,
    bundle: Path,
    module_env: dict[str, str],
    opensearch_url: str,
    opensearch_client,
    live_prefix: str,
) -> None:
    """The seed's whole flow on a live node: the worker's documents (no vector) filled by `ingest --missing
    --executor lambda` past the default batch of 100, then the worker's call answered from the index (useCache)."""
    index = f"{live_prefix}-files"
    env = {**module_env, **s3.env(), "IMGVEC_STORE": opensearch_url, "IMGVEC_INDEX": index}
    created = run_cli(["index", "create", index, "--engine", "lucene", "--shards", "1", "--replicas", "0"], env)
    assert created.returncode == 0, created.stderr
    objects = s3.client().list_objects_v2(Bucket="nas", Prefix="mirror/")["Contents"]
    for entry in objects:
        fields = worker_fields("nas", entry["Key"], f"/nas/photos/{entry['Key']}", entry["Size"])
        opensearch_client.index(index=index, id="worker-" + entry["Key"].replace("/", "-"), body=fields)
    opensearch_client.indices.refresh(index=index)
    function = function_env(s3, bundle, IMGVEC_STORE=opensearch_url, IMGVEC_INDEX=index)
    with started_fleet(tmp_path, function, instances=2) as front:
        filled = run_cli(["ingest", "--missing", "--json", *front.flags()], env)
        assert filled.returncode == 3, filled.stderr
        report = json.loads(filled.stdout)
        assert report["embedded"] + report["cache_hits"] == PHOTOS + 1  # the poison image is valid here
        assert sorted(f["file_path"] for f in report["failures"]) == [f"/nas/photos/{key}" for key in CORRUPT]
        opensearch_client.indices.refresh(index=index)
        assert opensearch_client.count(index=index)["count"] == len(objects)  # filled in place
        stored = opensearch_client.get(index=index, id="worker-mirror-042.jpg")["_source"]
        assert len(stored["image_vector"]) == 512 and stored["file_path"] == "/nas/photos/mirror/042.jpg"
        # The worker's own call, with the URL its document holds (virtual-hosted, read through the S3 endpoint).
        answer = invoke(front.endpoint, {"imageUrl": stored["s3_url"], "useCache": True})["data"]
        assert answer["cached"] is True
        assert np.allclose(answer["embedding"], stored["image_vector"], atol=1e-6)

        # A migration to a new index behind an alias, its fill through the function.
        alias, target = f"{live_prefix}-current", f"{live_prefix}-files-v2"
        args = ["migrate", "--from", index, "--to", target, "--alias", alias, "--json"]
        migrated = run_cli([*args, "--engine", "lucene", "--shards", "1", "--replicas", "0", *front.flags()], env)
        assert migrated.returncode == 0, migrated.stderr
        report = json.loads(migrated.stdout)
        assert report["switched"] and report["failed"] == len(CORRUPT)
        assert report["target"]["documents"] == len(objects) and report["target"]["with_vector"] == PHOTOS + 1

        # The worker goes on adding documents: `--follow` fills them through the function as they come.
        follow = ["--index", alias, "ingest", "--missing", "--follow", "--interval", "1s", *front.flags()]
        log = tmp_path / "follow.log"
        with open(log, "w") as stderr:
            follower = subprocess.Popen([sys.executable, "-m", "imgvec.cli", *follow], env=env, stderr=stderr)
        try:
            for n, entry in enumerate(objects[:3]):
                fields = worker_fields("nas", entry["Key"], f"/nas/copies/{n}.jpg", entry["Size"])
                opensearch_client.index(index=target, id=f"copy-{n}", body=fields)

            def filled() -> int:
                opensearch_client.indices.refresh(index=target)
                query = {"query": {"exists": {"field": "image_vector"}}}
                return opensearch_client.count(index=target, body=query)["count"]

            deadline = time.monotonic() + 120
            while filled() < PHOTOS + 4 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert filled() == PHOTOS + 4, log.read_text()
        finally:
            follower.send_signal(signal.SIGTERM)
            assert follower.wait(timeout=60) == 0, log.read_text()


def test_sync_through_lambda_at_a_capped_rate_indexes_and_deletes(
    tmp_path: Path, fleet: Front, s3: SeaweedServer, module_env: dict[str, str]
) -> None:
    env = driver_env(module_env, s3, tmp_path / "store")
    flags = fleet.flags("--lambda-batch-size", "25", "--lambda-rate", "4")
    first = run_cli(["sync", "s3://nas/mirror/", "--json", *flags], env)
    assert first.returncode == 3, first.stderr
    assert json.loads(first.stdout)["embedded"] == PHOTOS + 1
    arrivals = np.asarray(fleet.counts.arrivals)
    # At most 4 invocations a second: any 5 in a row span a second, less the jitter of a thread and a connection.
    assert len(arrivals) >= 6 and (arrivals[4:] - arrivals[:-4]).min() >= 0.8
    s3.client().copy_object(Bucket="nas", Key="mirror/new.jpg", CopySource={"Bucket": "nas", "Key": "mirror/000.jpg"})
    s3.client().delete_object(Bucket="nas", Key="mirror/001.jpg")
    try:
        second = run_cli(["sync", "s3://nas/mirror/", "--json", *flags], env)
        assert second.returncode == 3, second.stderr  # the corrupt files, known
        report = json.loads(second.stdout)
        assert report["deleted"] == 1 and report["embedded"] + report["cache_hits"] == 1
    finally:
        s3.client().put_object(Bucket="nas", Key="mirror/001.jpg", Body=encode(photo(7001)))
        s3.client().delete_object(Bucket="nas", Key="mirror/new.jpg")


def test_a_function_with_another_model_is_refused_on_its_first_answer(
    tmp_path: Path, s3: SeaweedServer, bundle: Path, module_env: dict[str, str]
) -> None:
    other = tmp_path / "other-model"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["identity"]["pretrained"] = "laion2b"  # same architecture, other weights: other vectors
    (other / "bundle.json").write_text(json.dumps(manifest))
    with started_fleet(tmp_path, function_env(s3, other), instances=1) as front:
        result = run_cli(["ingest", "s3://nas/mirror/", *front.flags()], driver_env(module_env, s3, tmp_path / "s"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = result.stderr.splitlines()[-1]
    assert said.startswith("error: the Lambda function cis-image-embedding embeds with") and "'laion2b'" in said
    assert "needs imgvec-tiny/random (512-dim, random weights), weights 'random'" in said
    assert count(tmp_path / "s") == 0


def count(store: Path) -> int:
    try:
        return EmbeddedStore(store, "images").stats().documents
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_lambda_flags_are_checked_before_any_work(tmp_path: Path, module_env: dict[str, str]) -> None:
    env = {**module_env, "IMGVEC_STORE": str(tmp_path / "store")}
    (tmp_path / "photos").mkdir()
    result = run_cli(["ingest", str(tmp_path / "photos"), "--executor", "lambda"], env)
    assert result.returncode == 2 and "--executor lambda needs --lambda-function NAME" in result.stderr
    result = run_cli(["ingest", str(tmp_path / "photos"), "--lambda-function", "f"], env)
    assert result.returncode == 2 and "--lambda-function goes with --executor lambda" in result.stderr
    (tmp_path / "photos" / "a.jpg").write_bytes(encode(photo(1)))
    result = run_cli(["ingest", str(tmp_path / "photos"), "--executor", "lambda", "--lambda-function", "f"], env)
    assert result.returncode == 2 and "reads images from S3" in result.stderr and "Traceback" not in result.stderr


def test_no_aws_region_is_one_line(tmp_path: Path, s3: SeaweedServer, module_env: dict[str, str]) -> None:
    env = driver_env(module_env, s3, tmp_path / "store")
    del env["AWS_DEFAULT_REGION"]
    for flags, says in (
        (["--executor", "lambda", "--lambda-function", "f"], "--executor lambda needs an AWS region"),
        (["--cloudwatch", "imgvec"], "--cloudwatch needs an AWS region"),
    ):
        result = run_cli(["ingest", "s3://nas/mirror/", *flags], env)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_unreachable_lambda_endpoint_is_one_line(
    tmp_path: Path, s3: SeaweedServer, module_env: dict[str, str]
) -> None:
    env = driver_env(module_env, s3, tmp_path / "store")
    began = time.monotonic()
    flags = ["--executor", "lambda", "--lambda-function", "f", "--lambda-endpoint-url", "http://127.0.0.1:9"]
    result = run_cli(["ingest", "s3://nas/mirror/", *flags], env)
    assert result.returncode == 1 and time.monotonic() - began < 90, result.stderr
    assert "cannot reach Lambda at http://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


# -- packaging ----------------------------------------------------------------------------------------


RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath")
"""What Lambda's Python runtime has installed already, and the zip therefore leaves out."""


def test_the_package_runs_the_handler_from_its_own_files(
    tmp_path: Path, s3: SeaweedServer, module_env: dict[str, str]
) -> None:
    """scripts/lambda-package.sh builds the image context and the zip; the zip's files alone (with the runtime's
    boto3) answer the worker's call, in an interpreter that sees no site-packages. Docker cannot run here, so the
    image itself is not built: its context is checked, and it installs the same requirements the zip holds."""
    out = tmp_path / "pkg"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = {**module_env, "IMGVEC_MODEL": TINY_MODEL}
    built = subprocess.run(
        ["bash", "scripts/lambda-package.sh", "--out", str(out), "--zip", "--python", python],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    dockerfile = (out / "image" / "Dockerfile").read_text()
    assert f"FROM public.ecr.aws/lambda/python:{python}" in dockerfile
    assert 'CMD ["imgvec.aws.lambda_handler.handler"]' in dockerfile
    assert (out / "image" / "model" / "bundle.json").is_file() and list((out / "image" / "wheels").glob("imgvec-*.whl"))
    requirements = (out / "image" / "requirements.txt").read_text()
    assert "torch" not in requirements and "pyarrow" not in requirements and "lancedb" not in requirements
    assert (out / "imgvec-lambda.zip").is_file(), built.stderr

    task_root = tmp_path / "task"
    import zipfile

    with zipfile.ZipFile(out / "imgvec-lambda.zip") as archive:
        archive.extractall(task_root)
    assert not (task_root / "torch").exists() and not (task_root / "model" / "image-fp32.onnx").exists()
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    import importlib

    for name in RUNTIME_PROVIDED:
        (runtime / name).symlink_to(Path(importlib.import_module(name).__file__).parent)
    code = (
        "import sys, json; from imgvec.aws.lambda_handler import handler\n"
        "answer = handler({'imageUrl': 's3://nas/mirror/002.jpg', 'useCache': True})\n"
        "print(json.dumps([answer['data']['dimension'], sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'open_clip', 'pyarrow', 'lancedb'}), [p for p in sys.path if 'site-packages' in p]]))\n"
    )
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    function = {
        **s3.env(),
        "LAMBDA_TASK_ROOT": str(task_root),
        "PYTHONPATH": f"{task_root}:{runtime}",
        "IMGVEC_RUNTIME": "onnx",
        "IMGVEC_PRECISION": "int8",
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [str(base_python), "-S", "-c", code], env=function, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [512, [], []]
