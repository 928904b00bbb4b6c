"""`ingest --dry-run`: what a run would do and how long it would take, writing nothing anywhere."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import Any

from imgvec.documents import SourceItem
from imgvec.embed.base import Embedder
from imgvec.pipeline.executors.base import ExecutorFactory
from imgvec.pipeline.executors.local import LocalExecutor
from imgvec.pipeline.indexer import LOOKUP_WINDOW, Indexer
from imgvec.pipeline.journal import RunJournal
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.skip import Verdict, judge
from imgvec.sources.base import Source
from imgvec.stores.base import Store

CALIBRATION_FILES = 48
WARM_UP_FILES = 8

ScratchStore = Callable[[], AbstractContextManager[Store]]
"""Opens a throw-away store for a calibration run, removed on exit: the user's index is never written."""


@dataclass(slots=True)
class Plan:
    listed: int = 0
    listed_bytes: int = 0
    would_process: int = 0
    would_process_bytes: int = 0
    unchanged: int = 0
    known_failures: int = 0
    listing_errors: int = 0
    images_per_second: float | None = None
    rate_basis: str = "none"
    """last-run (the previous run's measured rate) or calibration (a sample run through the pipeline now)."""
    estimated_seconds: float | None = None
    calibration_files: int = 0
    function_seconds_per_image: float | None = None
    """With ``--executor lambda``: the function's invocation time per image in the calibration."""
    model_unavailable: str | None = None
    """Why the model could not load (a dry run goes on without it): the counts stand, the time is unknown."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    source: Source,
    store: Store,
    embedder: Embedder | None,
    options: PipelineOptions,
    journal: RunJournal | None,
    *,
    scratch_store: ScratchStore | None = None,
    sample_size: int = CALIBRATION_FILES,
    prefer_last_run: bool = True,
    executor: ExecutorFactory = LocalExecutor,
) -> Plan:
    """Count what would be processed, streaming; estimate the time from the last run's rate, or by calibrating on
    a random sample of the files that would be processed (reservoir sampling: one pass, ``sample_size`` items
    held, every file equally likely, so one folder of thumbnails cannot stand for a folder of raw scans).
    Without ``scratch_store`` nothing is calibrated. ``executor``: what the calibration runs on (a Lambda function
    measures its own per-image time too)."""
    if store.exists():
        identity = store.identity()
        if identity is not None and embedder is not None:
            identity.require_compatible(embedder.identity)
    result = Plan()
    sample: list[SourceItem] = []
    chooser = random.Random(0)

    def on_error(_: object) -> None:
        result.listing_errors += 1

    listing = source.scan(on_error)
    if options.max_files is not None:
        listing = islice(listing, options.max_files)
    while window := list(islice(listing, LOOKUP_WINDOW)):
        verdicts = judge(window, store, journal, retry_failed=options.retry_failed)
        for item, verdict in zip(window, verdicts, strict=True):
            result.listed += 1
            result.listed_bytes += item.file_size
            if verdict is Verdict.UNCHANGED:
                result.unchanged += 1
            elif verdict is Verdict.FAILED_BEFORE:
                result.known_failures += 1
            else:
                result.would_process += 1
                result.would_process_bytes += item.file_size
                if len(sample) < sample_size:
                    sample.append(item)
                elif (slot := chooser.randrange(result.would_process)) < sample_size:
                    sample[slot] = item

    last = journal.latest() if journal and prefer_last_run else None
    if last is not None and last[0].rate > 0:
        result.images_per_second, result.rate_basis = last[0].rate, "last-run"
    elif embedder is not None and sample and scratch_store is not None:
        with scratch_store() as scratch:
            calibration = calibrate(source, scratch, embedder, options, sample, executor)
            result.images_per_second, result.function_seconds_per_image = calibration
        result.rate_basis, result.calibration_files = "calibration", len(sample)
    if result.images_per_second:
        result.estimated_seconds = result.would_process / result.images_per_second
    return result


def calibrate(
    source: Source,
    scratch: Store,
    embedder: Embedder,
    options: PipelineOptions,
    sample: list[SourceItem],
    executor: ExecutorFactory = LocalExecutor,
) -> tuple[float | None, float | None]:
    """Images per second of the real pipeline (decode workers, batches, overlap) on ``sample``, writing into the
    ``scratch`` store. The first few files warm the workers up and are not timed, or a 40-file sample would mostly
    measure process start-up. Returns the rate and, on a Lambda function, its invocation time per image."""
    warm, timed = sample[: min(WARM_UP_FILES, len(sample) // 4)], sample[min(WARM_UP_FILES, len(sample) // 4) :]
    run = Indexer(source, scratch, embedder, replace(options, max_files=None), executor=executor)
    with run.session():
        run.process(warm)
        began, before = time.perf_counter(), run.report.succeeded + run.report.failed
        run.process(timed)
        done = run.report.succeeded + run.report.failed - before
        seconds = time.perf_counter() - began
        function_seconds = run.executor_status().function_seconds_per_image
    return (done / seconds if done and seconds > 0 else None), function_seconds
