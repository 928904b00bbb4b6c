"""A run's progress where other machines read it: CloudWatch metrics (moto's server) and the seed's
batch-progress.json on S3 (SeaweedFS), read back the way a dashboard and a second machine read them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgvec.pipeline.publishing import Publishing
from imgvec.pipeline.publishing.cloudwatch import CloudWatchPublisher
from imgvec.pipeline.publishing.state_file import StateFilePublisher
from imgvec.pipeline.report import Progress
from imgvec.sources.s3 import S3Connection
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import encode, photo, run_cli
from tests.motoserver import MotoServer
from tests.s3server import SeaweedServer, seaweed_with

PHOTOS = 40


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    objects = {f"mirror/{i:03d}.jpg": encode(photo(6000 + i)) for i in range(PHOTOS)}
    server = seaweed_with(tmp_path_factory.mktemp("seaweed"), "nas", {**objects, "mirror/broken.jpg": b"not a jpeg"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


def test_cloudwatch_and_the_state_file_hold_the_runs_counts(
    tmp_path: Path, s3: SeaweedServer, moto: MotoServer, module_env: dict[str, str]
) -> None:
    env = {**module_env, **s3.env(), **moto.env(), "IMGVEC_STORE": str(tmp_path / "store")}
    flags = ["--cloudwatch", "imgvec-test", "--state-file", "s3://nas/state/run.json"]
    result = run_cli(["ingest", "s3://nas/mirror/", "--json", *flags], env)
    assert result.returncode == 3, result.stderr  # the corrupt file
    report = json.loads(result.stdout)
    assert report["embedded"] == PHOTOS and len(report["failures"]) == 1
    assert "cannot publish" not in result.stderr
    dims = {"Index": "images", "Executor": "local"}
    attempted = PHOTOS + 1
    assert moto.latest("imgvec-test", "TotalImagesProcessed", dims) == attempted
    assert moto.latest("imgvec-test", "IndexingSuccessRate", dims) == pytest.approx(100 * PHOTOS / attempted)
    assert moto.latest("imgvec-test", "ErrorRate", dims) == pytest.approx(100 / attempted)
    assert moto.latest("imgvec-test", "CacheHitRate", dims) == 0
    assert moto.latest("imgvec-test", "RemainingImages", dims, "Minimum") == 0
    assert moto.latest("imgvec-test", "EmbeddingGenerationTime", dims) > 0
    assert moto.latest("imgvec-test", "LambdaInvocations", dims) is None  # not a Lambda run

    # From "another machine": only the state file's URL and S3 access.
    elsewhere = {**module_env, **s3.env(), "IMGVEC_STORE": str(tmp_path / "not-here")}
    shown = run_cli(["progress", "--state-file", "s3://nas/state/run.json", "--json"], elsewhere)
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    ids = set(EmbeddedStore(tmp_path / "store", "images")._open().to_arrow()["id"].to_pylist())
    assert state["last_processed_id"] in ids
    assert (state["total_processed"], state["total_remaining"]) == (attempted, 0)
    assert (state["success_count"], state["failure_count"]) == (PHOTOS, 1)
    assert state["start_time"] and state["estimated_completion"] is None and state["progress"]["state"] == "finished"
    text = run_cli(["progress", "--state-file", "s3://nas/state/run.json"], elsewhere).stdout
    assert "success_count: 40" in text and "state: finished" in text


def test_cloudwatch_down_is_one_warning_and_the_run_goes_on(
    tmp_path: Path, s3: SeaweedServer, module_env: dict[str, str]
) -> None:
    env = {**module_env, **s3.env(), "IMGVEC_STORE": str(tmp_path / "store")}
    env["AWS_ENDPOINT_URL_CLOUDWATCH"] = "http://127.0.0.1:9"
    result = run_cli(["ingest", "s3://nas/mirror/", "--cloudwatch", "imgvec-test"], env)
    assert result.returncode == 3, result.stderr
    said = [line for line in result.stderr.splitlines() if "CloudWatch" in line]
    assert len(said) == 1 and "cannot publish" in said[0] and "the run goes on" in said[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_state_file_locations_are_refused_before_any_work(tmp_path: Path, module_env: dict[str, str]) -> None:
    env = {**module_env, "IMGVEC_STORE": str(tmp_path / "store")}
    (tmp_path / "photos").mkdir()
    for location, says in (
        (str(tmp_path / "no" / "such" / "state.json"), "does not exist"),
        ("s3://bucket-only", "name an object"),
        ("https://example.com/state.json", "an s3:// URL or a local path"),
    ):
        result = run_cli(["ingest", str(tmp_path / "photos"), "--state-file", location], env)
        assert result.returncode == 2 and says in result.stderr, result.stderr
    result = run_cli(["progress", "--state-file", str(tmp_path / "none.json")], env)
    assert result.returncode == 1 and "no state file at" in result.stderr


def test_publishers_keep_their_own_pace_and_an_outage_is_said_once(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**moto.env(), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    said: list[str] = []
    state_path = tmp_path / "state.json"
    publishing = Publishing(
        [
            StateFilePublisher(str(state_path), "images", S3Connection(), every=0.2),
            CloudWatchPublisher("imgvec-pace", "images", every=0.2),
        ],
        warn=said.append,
    )
    progress = Progress(processed=5, succeeded=5, executor="local", started_at="2026-12-05T00:00:00+00:00")
    try:
        publishing.offer(progress, {"images_processed": 5})
        _wait(lambda: state_path.exists() and json.loads(state_path.read_text())["total_processed"] == 5)
        moto.stop()
        progress.processed = 7
        publishing.offer(progress, {"images_processed": 7})
        _wait(lambda: json.loads(state_path.read_text())["total_processed"] == 7)  # the file does not wait on it
        _wait(lambda: len(said) == 1)
        time.sleep(1.5)  # several more failed publishes: still one line
        assert len(said) == 1 and said[0].startswith("CloudWatch namespace imgvec-pace: cannot publish")
        moto.start()
        _wait(lambda: len(said) == 2)
        assert said[1] == "CloudWatch namespace imgvec-pace: publishing again"
        progress.state = "finished"
        publishing.offer(progress, {"images_processed": 7})  # the end: published before offer returns
        assert json.loads(state_path.read_text())["progress"]["state"] == "finished"
        assert moto.latest("imgvec-pace", "TotalImagesProcessed", {"Index": "images", "Executor": "local"}) == 7
    finally:
        publishing.close()


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
