"""Two decoders at once (``pipeline/executors/gpu_lane.py``): the split between the CPU workers and a GPU decode
lane, and whole runs with the lane beside the workers. The lane runs on CPU tensors here (the same torch code as on
a GPU); a run with it must index what a run without it indexes, fail the same files for the same reasons, and
send every file the lane cannot match to the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from imgvec.documents import Failure
from imgvec.embed.loading import ModelConfig
from imgvec.embed.perceptual import hamming
from imgvec.pipeline.executors.gpu_lane import REFUSED_BEFORE_GIVING_UP, SHARE_BOUNDS, GpuDecodeLane, LaneSplit
from imgvec.pipeline.executors.local import LocalExecutor
from imgvec.pipeline.executors.ray.actor import EmbedWorker
from imgvec.pipeline.indexer import Indexer, index_source
from imgvec.pipeline.metrics import prometheus_text, snapshot
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.report import RunReport
from imgvec.sources import LocalFolder
from imgvec.stores.embedded import EmbeddedStore
from tests.conftest import TINY_MODEL
from tests.helpers import encode, exif_photo, textured_photo
from tests.test_gpu_decode import CPU_CASES

ROOT = Path(__file__).resolve().parents[1]
LANE_BATCH = 8
"""The lane's batch in these runs: the folder's JPEGs cross it many times over."""


def test_the_split_follows_the_measured_rates_and_adapts() -> None:
    split = LaneSplit(cpu_workers=3)
    assert split.share == 0.5  # nothing measured yet
    assert [split.take() for _ in range(4)] == [False, True, False, True]
    split.cpu_decoded(0.1)  # 3 workers at 0.1 s a file: 30 files/s
    assert split.share == 0.5  # the GPU not measured yet
    split.gpu_decoded(64, 0.64)  # 100 files/s
    assert split.share == pytest.approx(100 / 130)
    taken = sum(split.take() for _ in range(1300))
    assert taken == pytest.approx(1000, abs=1)
    for _ in range(40):  # the GPU lane slows to 10 files/s (larger files, a busy device): it gets less
        split.gpu_decoded(10, 1.0)
    assert split.share == pytest.approx(10 / 40, abs=0.01)
    for _ in range(40):  # far faster than the CPU: still a share left to the CPU, so both stay measured
        split.gpu_decoded(1000, 0.01)
    assert split.share == SHARE_BOUNDS[1]
    described = split.describe()
    assert described["gpu_files"] + described["cpu_files"] == 4 + 1300
    assert described["cpu_rate"] == 30.0


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEGs the lane takes (some turned by EXIF, some with camera facts, greyscale, progressive, small and large),
    every odd kind it must leave to the CPU, and broken files: a JPEG cut short (it passes the header check and
    the decoder refuses it), one that is not an image at all."""
    folder = tmp_path_factory.mktemp("mixed")
    for i in range(60):
        size = [(320, 240), (240, 320), (640, 480), (96, 72), (1200, 900)][i % 5]
        if i % 3 == 0:
            data = exif_photo(i, size=size, orientation=1 + i % 8, make="Canon", model="EOS R5")
        elif i % 7 == 0:
            data = encode(textured_photo(i, size).convert("L"), quality=85)
        else:
            data = encode(textured_photo(i, size), quality=85, progressive=i % 2 == 0)
        (folder / f"photo-{i:03d}.jpg").write_bytes(data)
    for case, (make, _why) in CPU_CASES.items():
        suffix = {"png": "png", "webp": "webp"}.get(case, "jpg")
        (folder / f"odd-{case}.{suffix}").write_bytes(make())
    good = encode(textured_photo(99, (640, 480)), quality=85)
    for i in range(4):  # first in the listing: the even ones go to the lane before anything is measured
        (folder / f"000-cut-{i}.jpg").write_bytes(good[: int(len(good) * 0.7)])
    (folder / "notes.jpg").write_bytes(b"not a picture at all")
    return folder


@pytest.fixture(scope="module")
def without_lane(
    mixed_folder: Path, tmp_path_factory: pytest.TempPathFactory, tiny_embedder
) -> tuple[EmbeddedStore, RunReport]:
    store = EmbeddedStore(tmp_path_factory.mktemp("cpu") / "store", "images")
    report = index_source(LocalFolder(mixed_folder), store, tiny_embedder, PipelineOptions(workers=0, batch_size=16))
    return store, report


def _by_path(store: EmbeddedStore) -> dict[str, tuple[dict, np.ndarray]]:
    found = {}
    for doc_id, _fields in store.documents():
        fields, vector = store.get(doc_id)
        found[fields["file_path"]] = (fields, vector)
    return found


def _failures(report: RunReport) -> dict[str, tuple[str, str]]:
    return {Path(failure.file_path).name: (failure.stage, failure.reason) for failure in report.failures}


@pytest.mark.parametrize("workers", [0, 1], ids=["threads", "one-worker-process"])
def test_a_run_with_the_lane_indexes_what_a_run_without_it_does(
    workers: int, mixed_folder: Path, without_lane: tuple[EmbeddedStore, RunReport], tiny_embedder, tmp_path: Path
) -> None:
    reference_store, reference_report = without_lane
    options = PipelineOptions(workers=workers, batch_size=16)
    lane = GpuDecodeLane(tiny_embedder.preprocessor, "cpu", LaneSplit(max(1, workers)), max_batch=LANE_BATCH)
    store = EmbeddedStore(tmp_path / "store", "images")
    indexer = Indexer(
        LocalFolder(mixed_folder), store, tiny_embedder, options, executor=partial(LocalExecutor, lane=lane)
    )
    lanes: dict = {}
    with indexer.session() as run:
        run.process(run.listing())
        lanes = run.executor_status().decode_lanes
        run.save(force=True)
    report = indexer.report
    # What a run's progress and /metrics say of the lanes (one gauge: a label per count would be a new series each).
    assert indexer.progress.decode_lanes == lanes
    summary = snapshot(report, indexer.metrics, indexer.progress, elapsed=1.0, total=None)
    exposition = prometheus_text(summary, {"index": "images"})
    assert f'imgvec_gpu_decode_share{{index="images"}} {lanes["gpu_share"]}' in exposition
    assert "decode_lanes" not in exposition

    reference = _by_path(reference_store)
    ours = _by_path(store)
    assert set(ours) == set(reference)
    for path, (fields, vector) in ours.items():
        expected_fields, expected_vector = reference[path]
        assert float(vector @ expected_vector) >= 0.999, path
        for name in ("width", "height", "taken_at", "camera_make", "camera_model", "content_hash"):
            assert fields.get(name) == expected_fields.get(name), (path, name)
        assert hamming(fields["perceptual_hash"] % 2**64, expected_fields["perceptual_hash"] % 2**64) <= 4, path

    failures = _failures(report)
    assert failures == _failures(reference_report)
    assert {f"000-cut-{i}.jpg" for i in range(4)} | {"notes.jpg"} <= set(failures)

    # Both decoders worked, in the lane's batches; the lane refused the cut files it was given, and no odd kind
    # ever reached it (they are decoded, or failed, by the CPU exactly as without the lane).
    assert lanes["gpu_files"] > 0 and lanes["cpu_files"] > 0
    assert lane.decoded >= 2 * LANE_BATCH
    assert lane.refused >= 1
    assert lane.decoded + lane.refused <= 60 + 4
    assert lanes["gpu_rate"] and lanes["cpu_rate"]


def test_a_ray_actor_on_a_gpu_uses_the_same_lane(
    mixed_folder: Path, without_lane: tuple[EmbeddedStore, RunReport], model_config_dir: Path, cache_dir: Path
) -> None:
    """``--ray-gpus-per-worker``: the actor's own GPU decodes beside its threads. The actor is plain Python, run
    here as one, with its lane on CPU tensors; each call returns what a run without the lane stores."""
    model = ModelConfig(TINY_MODEL, device="cpu", cache_dir=cache_dir, model_config_dir=str(model_config_dir))
    source = LocalFolder(mixed_folder)
    with pytest.warns(UserWarning, match="random weights"):
        worker = EmbedWorker(model, source, PipelineOptions(workers=0))
    assert worker.lane is None  # a CPU actor has none
    worker.lane = GpuDecodeLane(worker.embedder.preprocessor, "cpu", LaneSplit(2), max_batch=LANE_BATCH)
    items = sorted(source.scan(lambda failure: None), key=lambda item: item.file_path)
    reference = _by_path(without_lane[0])
    embedded, failed = 0, set()
    for start in range(0, len(items), 20):  # the driver's batches
        for outcome in worker.embed(items[start : start + 20]):
            if isinstance(outcome, Failure):
                failed.add(Path(outcome.file_path).name)
                continue
            embedded += 1
            assert float(outcome.vector @ reference[outcome.item.file_path][1]) >= 0.999
    assert embedded == len(reference)
    assert failed == set(_failures(without_lane[1]))
    assert worker.lane.decoded > 0 and worker.lane.refused >= 1 and worker.lane.split.to_cpu > 0


def test_the_gpu_benchmark_runs_end_to_end_on_the_cpu(model_config_dir: Path, tmp_path: Path) -> None:
    """``benchmarks/gpu.py --device cpu``: every stage of the GPU machine's one prepared run, on CPU tensors, so
    that the run a short GPU loan allows does not fail on a typo. Its figures here mean nothing."""
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--model", TINY_MODEL]
    command += ["--model-config-dir", str(model_config_dir), "--work", str(tmp_path / "work")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "CI": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"gpu e2e/bound 12MP \d+\.\d\d; 1080p \d+\.\d\d; 0\.3MP \d+\.\d\d", lines[-1]), lines[-1]
    assert "torch bf16" in result.stdout and "chosen: torch" in result.stdout
    assert result.stdout.count("the lane adds") == 3


def test_a_lane_that_refuses_everything_is_switched_off(tiny_embedder, tmp_path: Path) -> None:
    """A lane that cannot decode at all (a torchvision without nvJPEG, a device that refuses) must not make every
    file it is offered go through a worker twice: after ``REFUSED_BEFORE_GIVING_UP`` files and none decoded, it is
    off for the run. Here the first files are JPEGs cut short, which pass the header check and which the decoder
    refuses; the run still fails exactly those, by the CPU's reasons, and indexes the rest on the CPU."""
    folder = tmp_path / "cut"
    folder.mkdir()
    good = encode(textured_photo(7, (96, 72)), quality=85)
    for i in range(3 * REFUSED_BEFORE_GIVING_UP):
        (folder / f"a-cut-{i:03d}.jpg").write_bytes(good[: int(len(good) * 0.7)])
    for i in range(12):
        (folder / f"b-photo-{i:02d}.jpg").write_bytes(encode(textured_photo(100 + i, (96, 72)), quality=85))
    lane = GpuDecodeLane(tiny_embedder.preprocessor, "cpu", LaneSplit(1), max_batch=LANE_BATCH)
    options = PipelineOptions(workers=0, batch_size=16)
    indexer = Indexer(
        LocalFolder(folder),
        EmbeddedStore(tmp_path / "store", "images"),
        tiny_embedder,
        options,
        executor=partial(LocalExecutor, lane=lane),
    )
    with indexer.session() as run:
        run.process(run.listing())
        lanes = run.executor_status().decode_lanes
    assert lanes["gpu_off"] and "refused the first" in lanes["gpu_off"] and lanes["gpu_share"] == 0.0
    assert lane.decoded == 0 and REFUSED_BEFORE_GIVING_UP <= lane.refused < 3 * REFUSED_BEFORE_GIVING_UP
    assert indexer.report.embedded == 12
    assert {failure.stage for failure in indexer.report.failures} == {"decode"}
    assert len(indexer.report.failures) == 3 * REFUSED_BEFORE_GIVING_UP
