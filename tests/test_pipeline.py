"""The batch pipeline in-process: content cache, failure records, retry policy, lock, run state, metrics."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgvec.errors import IndexBusyError
from imgvec.pipeline.indexer import index_source
from imgvec.pipeline.journal import RunJournal
from imgvec.pipeline.lock import IndexLock
from imgvec.pipeline.metrics import prometheus_text
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.retry import RetryPolicy, is_transient_os_error
from imgvec.sources import LocalFolder
from imgvec.stores.embedded import EmbeddedStore
from tests.helpers import CRASH_SIZE, CrashingPreprocessor, encode, photo

THREADS = PipelineOptions(workers=0, batch_size=4)


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    return EmbeddedStore(tmp_path / "store", "images")


@pytest.fixture
def state(tmp_path: Path) -> RunJournal:
    return RunJournal(tmp_path / "state" / "images.sqlite")


def test_identical_bytes_reuse_the_stored_vector(tmp_path: Path, store: EmbeddedStore, tiny_embedder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(encode(photo(300 + i)))
    first = index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    assert (first.embedded, first.cache_hits) == (5, 0)

    shutil.copy(folder / "p0.jpg", folder / "copy-of-p0.jpg")  # a copy
    (folder / "p1.jpg").rename(folder / "renamed-p1.jpg")  # a rename: new path, same bytes
    (folder / "twin-a.jpg").write_bytes(encode(photo(400)))  # two identical new files in one run
    shutil.copy(folder / "twin-a.jpg", folder / "twin-b.jpg")
    second = index_source(LocalFolder(folder), store, tiny_embedder, THREADS)
    assert second.cache_hits == 3 and second.embedded == 1
    vectors = {
        row["file_name"]: np.asarray(row["vector"])
        for row in store._open().search().select(["file_name", "vector"]).limit(100).to_arrow().to_pylist()
    }
    np.testing.assert_array_equal(vectors["copy-of-p0.jpg"], vectors["p0.jpg"])
    np.testing.assert_array_equal(vectors["twin-a.jpg"], vectors["twin-b.jpg"])


def test_failures_are_recorded_skipped_then_retried(
    tmp_path: Path, store: EmbeddedStore, state: RunJournal, tiny_embedder
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(encode(photo(1)))
    bad = folder / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    report = index_source(LocalFolder(folder), store, tiny_embedder, THREADS, journal=state)
    assert [(f.file_path, f.stage) for f in report.failures] == [(str(bad), "decode")]
    records = state.failures()
    assert [(r.file_path, r.stage, r.attempts) for r in records] == [(str(bad), "decode", 1)]
    assert "not a recognised image format" in records[0].reason

    again = index_source(LocalFolder(folder), store, tiny_embedder, THREADS, journal=state)
    assert (again.known_failures, again.unchanged, len(again.failures)) == (1, 1, 0)

    forced = index_source(
        LocalFolder(folder), store, tiny_embedder, PipelineOptions(workers=0, retry_failed=True), journal=state
    )
    assert len(forced.failures) == 1 and state.failures()[0].attempts == 2

    bad.write_bytes(encode(photo(2)))  # fixed: it changed, so it is tried again without any flag
    os.utime(bad, (1_800_000_000, 1_800_000_000))
    fixed = index_source(LocalFolder(folder), store, tiny_embedder, THREADS, journal=state)
    assert fixed.embedded == 1 and not fixed.failures
    assert state.failures() == []


def test_retry_policy_backs_off_on_transient_errors_only() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EIO, "I/O error")
        return "ok"

    policy = RetryPolicy(attempts=5, base_seconds=0.5, max_seconds=30)
    assert policy.call(flaky, is_transient_os_error, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0  # full jitter under a doubling cap

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError(errno.ENOENT, "gone")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        policy.call(missing, is_transient_os_error, sleep=sleeps.append)
    assert len(calls) == 1  # a missing file is not retried

    def always() -> None:
        raise OSError(errno.ETIMEDOUT, "timed out")

    sleeps.clear()
    with pytest.raises(OSError, match="timed out"):
        policy.call(always, is_transient_os_error, sleep=sleeps.append)
    assert len(sleeps) == 4
    assert all(policy.delay(a) <= min(30, 0.5 * 2**a) for a in range(12))


def test_lock_allows_one_holder_and_frees_on_release(tmp_path: Path) -> None:
    first, second = IndexLock(tmp_path / "i.lock"), IndexLock(tmp_path / "i.lock")
    assert not second.is_held()
    with first:
        assert second.is_held()
        with pytest.raises(IndexBusyError, match=f"pid {os.getpid()}"):
            second.acquire()
    assert not second.is_held()
    second.acquire()
    second.release()


def test_run_state_records_progress_and_metrics(
    tmp_path: Path, store: EmbeddedStore, state: RunJournal, tiny_embedder
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.jpg").write_bytes(encode(photo(500 + i)))
    (folder / "bad.png").write_bytes(b"")
    lock = IndexLock(tmp_path / "state" / "images.lock")
    index_source(LocalFolder(folder), store, tiny_embedder, THREADS, journal=state, lock=lock)
    progress, metrics = state.latest(lock)
    assert progress.state == "finished"
    assert (progress.processed, progress.succeeded, progress.failed, progress.skipped) == (7, 6, 1, 0)
    assert progress.remaining == 0 and progress.eta_seconds == 0.0 and progress.rate > 0
    assert progress.started_at and progress.total == 7
    assert metrics["images_embedded"] == 6 and metrics["images_failed"] == 1
    assert metrics["success_rate"] == pytest.approx(6 / 7) and metrics["error_rate"] == pytest.approx(1 / 7)
    assert metrics["embedding_seconds_per_image_mean"] > 0
    assert metrics["embedding_seconds_per_image_p95"] >= metrics["embedding_seconds_per_image_mean"] * 0.5
    assert set(metrics["stage_seconds"]) == {"list", "read", "decode", "embed", "write"}

    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(metrics, {"index": "images"}))}
    embedded = families["imgvec_images_embedded"]
    assert embedded.type == "counter"
    assert [(s.name, s.labels, s.value) for s in embedded.samples] == [
        ("imgvec_images_embedded_total", {"index": "images"}, 6)
    ]
    stages = {s.labels["stage"]: s.value for s in families["imgvec_stage_seconds"].samples}
    assert set(stages) == {"list", "read", "decode", "embed", "write"} and stages["embed"] > 0
    assert families["imgvec_success_rate"].samples[0].value == pytest.approx(6 / 7)


def test_a_run_recorded_running_without_its_lock_reads_as_interrupted(tmp_path: Path, state: RunJournal) -> None:
    from imgvec.pipeline.report import Progress

    state.start_run("/photos", pid=999_999)
    state.save(Progress(state="running", processed=3), {})
    lock = IndexLock(tmp_path / "state" / "images.lock")
    assert state.latest(lock)[0].state == "interrupted"
    with lock:
        assert state.latest(lock)[0].state == "running"


@pytest.mark.parametrize("io_concurrency", [0, 4], ids=["workers-read", "io-threads-read"])
def test_a_file_that_kills_its_worker_fails_alone(
    tmp_path: Path, store: EmbeddedStore, tiny_embedder, io_concurrency: int
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        (folder / f"p{i}.jpg").write_bytes(encode(photo(700 + i)))
    (folder / "crash-me.jpg").write_bytes(encode(photo(799, CRASH_SIZE)))
    crashing = copy.copy(tiny_embedder)
    crashing.preprocessor = CrashingPreprocessor(tiny_embedder.preprocessor)
    options = PipelineOptions(workers=1, batch_size=4, io_concurrency=io_concurrency)
    report = index_source(LocalFolder(folder), store, crashing, options)
    assert [(Path(f.file_path).name, f.stage) for f in report.failures] == [("crash-me.jpg", "worker")]
    assert "worker died" in report.failures[0].reason
    assert report.embedded == 10 and store.stats().documents == 10


def test_long_runs_compact_the_store_as_they_go(
    tmp_path: Path, store: EmbeddedStore, tiny_embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgvec.pipeline import writer as writer_module

    monkeypatch.setattr(writer_module, "OPTIMIZE_EVERY_BATCHES", 4)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(18):
        (folder / f"p{i:02d}.jpg").write_bytes(encode(photo(900 + i, (64, 48))))
    optimized: list[int] = []
    original = EmbeddedStore.optimize

    def counting_optimize(self: EmbeddedStore) -> None:
        optimized.append(self.stats().documents)
        original(self)

    monkeypatch.setattr(EmbeddedStore, "optimize", counting_optimize)
    report = index_source(LocalFolder(folder), store, tiny_embedder, PipelineOptions(workers=0, batch_size=1))
    assert report.embedded == 18
    assert optimized == [4, 8, 12, 16, 18]  # every 4 batches during the run, and once at the end
    assert store._open().stats()["fragment_stats"]["num_fragments"] < 18  # one commit per batch, compacted


ARROW_POOL = (
    "from imgvec.allocator import limit_heap_growth; limit_heap_growth(); "
    "import lancedb, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tuning is for glibc")
@pytest.mark.parametrize(("user_setting", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_arrow_allocates_through_the_tuned_system_allocator(user_setting: str | None, expected: str) -> None:
    """Arrow's bundled mimalloc kept 48-66 MiB of a store-only run resident (see allocator.py); a user's own
    ARROW_DEFAULT_MEMORY_POOL still wins."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if user_setting:
        env["ARROW_DEFAULT_MEMORY_POOL"] = user_setting
    out = subprocess.run([sys.executable, "-c", ARROW_POOL], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_only_failures_of_the_files_bytes_stay_skipped_and_others_for_a_few_runs(state: RunJournal) -> None:
    """A read or write failure comes from the environment (a NAS dropped, a cluster restarted): the next runs try the
    file again, RETRIES_BEFORE_STICKY times, then skip it like a file that cannot be decoded, saying why."""
    from imgvec.documents import Failure
    from imgvec.pipeline.journal import RETRIES_BEFORE_STICKY

    read = Failure("/p/a.jpg", "read", "Input/output error", "/p/a.jpg", 10, 1.0)
    decode = Failure("/p/b.jpg", "decode", "not a recognised image format", "/p/b.jpg", 10, 1.0)
    state.record_failures([read, decode])
    assert set(state.known_failures(["/p/a.jpg", "/p/b.jpg"])) == {"/p/b.jpg"}
    for _ in range(RETRIES_BEFORE_STICKY - 1):
        state.record_failures([read])
    assert set(state.known_failures(["/p/a.jpg", "/p/b.jpg"])) == {"/p/a.jpg", "/p/b.jpg"}
    reasons = {f.file_path: f.reason for f in state.failures()}
    assert (
        reasons["/p/a.jpg"].startswith("Input/output error")
        and f"failed {RETRIES_BEFORE_STICKY} times" in (reasons["/p/a.jpg"])
    )
    assert reasons["/p/b.jpg"] == "not a recognised image format"
