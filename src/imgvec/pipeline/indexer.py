"""Index a source into a store, streaming, in parallel, resumable.

    list (lazy) → skip unchanged / known failures (one store query per 1,024 files)
      → read (I/O threads, bounded look-ahead) → hash + decode + preprocess (worker processes)
      → content cache (identical bytes reuse a stored vector) → embed in batches → upsert (one atomic commit)

The main thread embeds while the workers decode the next files, so the model waits for decode only when decode
truly cannot keep up. Each batch is one atomic upsert, so a run killed at any moment keeps every batch it
finished and the next run skips those files: nothing is embedded twice and no document is duplicated (ids are
derived from the file's location). One bad file becomes a failure record with its stage and reason; only
set-up problems stop a run.

``Indexer`` runs the stages; ``DecodePools`` (pools.py) feeds them and ``BatchWriter`` (writer.py) writes and counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from imgvec.documents import Failure, SourceItem
from imgvec.embed.base import Embedder
from imgvec.errors import ImgvecError
from imgvec.pipeline.executors.base import Embedded, Executor, ExecutorFactory, ExecutorStatus, Prepared
from imgvec.pipeline.executors.local import LocalExecutor
from imgvec.pipeline.journal import RunJournal
from imgvec.pipeline.lock import IndexLock
from imgvec.pipeline.metrics import Metrics, snapshot
from imgvec.pipeline.options import PipelineOptions
from imgvec.pipeline.publishing import Publishing
from imgvec.pipeline.report import Progress, RunReport
from imgvec.pipeline.skip import Verdict, judge
from imgvec.pipeline.writer import BatchWriter
from imgvec.sources.base import Source
from imgvec.stores.base import Store

log = logging.getLogger(__name__)
LOOKUP_WINDOW = 1024
SAVE_EVERY_SECONDS = 1.0

ProgressCallback = Callable[[Progress], None]


class Indexer:
    """One run. ``stop()`` (from a signal handler) ends it cleanly after the batch in hand."""

    def __init__(
        self,
        source: Source,
        store: Store,
        embedder: Embedder,
        options: PipelineOptions | None = None,
        *,
        journal: RunJournal | None = None,
        lock: IndexLock | None = None,
        label: str = "",
        on_progress: ProgressCallback | None = None,
        executor: ExecutorFactory = LocalExecutor,
        publishing: Publishing | None = None,
    ) -> None:
        """``publishing``: where else the progress goes (CloudWatch, a state file), besides the journal."""
        self.source = source
        self.store = store
        self.embedder = embedder
        self.options = options or PipelineOptions()
        self.journal = journal
        self.lock = lock
        self.on_progress = on_progress
        self.publishing = publishing
        self.report = RunReport()
        self.metrics = Metrics()
        self.progress = Progress(pid=os.getpid(), source=label, decode_workers=self.options.workers)
        self.writer = BatchWriter(store, embedder, self.report, self.metrics, journal, self.options.retry)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._total: int | None = None
        self._started = time.monotonic()
        self.started_at = time.time()
        """Wall-clock start of the session: failure records older than this were not renewed by it."""
        self._last_save = 0.0
        self._next_admission = time.monotonic()
        self._executor_factory = executor
        self._executor: Executor | None = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on ``stop()``; True when stopping."""
        return self._stop.wait(seconds)

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> RunReport:
        """A batch run: the whole listing once, then the store is compacted and indexed."""
        with self.session(), self.counting():
            self.process(self.listing())
            if not self._stop.is_set() and self.options.max_files is None:  # the listing ran to its end
                self._forget_fixed_listing_failures()
        return self.report

    @contextmanager
    def session(self, *, mode: str = "batch") -> Iterator[Indexer]:
        """Lock, run journal and executor for one or many ``process`` calls (``watch`` keeps one for hours:
        spawning decode workers costs seconds, too much per file event). ``mode``: batch, watch or follow (the last two
        are services: a stop is how they end, not an interruption)."""
        self.store.ensure_index(self.embedder.identity)  # a model/dimension mismatch stops us before any work
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.progress.mode = mode
            self.progress.started_at = datetime.now(UTC).isoformat(timespec="seconds")
            if self.journal is not None:
                self.journal.start_run(self.progress.source, os.getpid(), self.progress)
            self._started = time.monotonic()
            self.started_at = time.time()
            self._executor = self._executor_factory(self.source, self.embedder, self.options)
            self._show_executor()
            try:
                yield self
            finally:
                self._executor.close()
            if self.report.succeeded and not self._stop.is_set():
                self.writer.optimize()
            self.report.interrupted = self._stop.is_set() and mode == "batch"
            self.progress.state = "interrupted" if self.report.interrupted else "finished"
            self.save(force=True)
        except BaseException:
            self.progress.state = "failed"
            with contextlib.suppress(ImgvecError):  # a full disk may refuse this too; the first error is the news
                self.save(force=True)
            raise
        finally:
            if self.publishing is not None:
                self.publishing.close()
            if self.lock is not None:
                self.lock.release()

    def process(self, items: Iterable[SourceItem]) -> None:
        """Skip what is unchanged, then read, decode, embed and write the rest; returns when all is committed.
        Stops early (after the work in hand) once ``stop()`` was called."""
        assert self._executor is not None, "process() runs inside session()"
        batch: list[Prepared | Embedded] = []
        for outcome in self._executor.outcomes(self._admitted(items)):
            if isinstance(outcome, Failure):
                self.writer.fail([outcome])
                continue
            for warning in outcome.warnings:
                log.info("%s: %s", outcome.item.file_path, warning)
            self.metrics.stage_seconds["read"] += outcome.read_seconds
            self.metrics.stage_seconds["decode"] += outcome.decode_seconds
            if isinstance(outcome, Embedded):
                self.metrics.record_embed(outcome.embed_seconds, 1)
            batch.append(outcome)
            if len(batch) >= self.options.batch_size:
                self._write(batch)
                batch.clear()
        if batch:
            self._write(batch)

    def _admitted(self, items: Iterable[SourceItem]) -> Iterator[SourceItem]:
        """The changed items, at the rate limit, until ``stop()``."""
        for item in self._changed_items(items):
            if self._stop.is_set():
                return
            self._admit()
            yield item

    def _write(self, batch: list[Prepared | Embedded]) -> None:
        self.writer.write(batch)
        self.save()

    # -- listing and skipping -----------------------------------------------------------------------

    def listing(self) -> Iterator[SourceItem]:
        """The source's items, with listing errors recorded as failures and ``max_files`` applied."""
        items: Iterable[SourceItem] = self.source.scan(self.record_listing_error)
        if self.options.max_files is not None:
            items = islice(items, self.options.max_files)
        return iter(items)

    def _forget_fixed_listing_failures(self) -> None:
        try:
            scope = self.source.scope
        except ImgvecError:  # an index's documents have no path scope: their listing records stay
            return
        self.writer.forget_listing_failures(scope, self.started_at)

    def record_listing_error(self, failure: Failure) -> None:
        self.writer.fail([failure])

    def _changed_items(self, items: Iterable[SourceItem]) -> Iterator[SourceItem]:
        listing = iter(items)
        while True:
            began = time.perf_counter()
            window = list(islice(listing, LOOKUP_WINDOW))
            if not window:
                return
            self.writer.listed(len(window))
            verdicts = judge(window, self.store, self.journal, retry_failed=self.options.retry_failed)
            todo = []
            for item, verdict in zip(window, verdicts, strict=True):
                if verdict is Verdict.TODO:
                    todo.append(item)
                else:
                    self.writer.skipped(verdict, item.uri)
            self.metrics.stage_seconds["list"] += time.perf_counter() - began
            self.save()
            yield from todo

    def _admit(self) -> None:
        """The rate limit: space files 1/rate seconds apart, without letting a stall bank a burst."""
        if not self.options.rate_limit:
            return
        now = time.monotonic()
        if self._next_admission > now:
            self._stop.wait(self._next_admission - now)
        self._next_admission = max(now, self._next_admission) + 1.0 / self.options.rate_limit

    # -- progress -----------------------------------------------------------------------------------

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the source in the background (no list kept), so progress can show a total and an ETA."""

        def count() -> None:
            total = 0
            for _ in self.source.scan(lambda _failure: None):
                total += 1
                if self._stop.is_set() or self._finished.is_set():
                    return
                if self.options.max_files is not None and total >= self.options.max_files:
                    break
            self._total = total

        threading.Thread(target=count, name="imgvec-count", daemon=True).start()
        try:
            yield
        finally:
            self._finished.set()  # ends the count if the source is larger than the run

    def show_health(self, health: dict[str, Any], pending: int, *, force: bool = False) -> None:
        """A watch's health and its pending changes (as ``remaining``), saved with the progress."""
        self.progress.health = health
        self.progress.remaining = pending
        self.save(force=force)

    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < SAVE_EVERY_SECONDS:
            return
        self._last_save = now
        self.report.seconds = now - self._started
        self._show_executor()
        metrics = snapshot(self.report, self.metrics, self.progress, elapsed=self.report.seconds, total=self._total)
        if self.journal is not None:
            self.journal.save(self.progress, metrics)
        if self.publishing is not None:
            self.publishing.offer(self.progress, metrics)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def executor_status(self) -> ExecutorStatus:
        """What the session's executor says of itself now (inside ``session()``)."""
        assert self._executor is not None, "executor_status() is for inside session()"
        return self._executor.status()

    def _show_executor(self) -> None:
        if self._executor is None:
            return
        status = self._executor.status()
        self.progress.executor = status.executor
        self.progress.runtime, self.progress.runtime_reason = status.runtime, status.runtime_reason
        self.progress.workers_alive, self.progress.workers = status.workers_alive, status.workers
        self.progress.bytes_per_image, self.progress.decode_workers = status.bytes_per_image, status.decode_workers
        self.progress.invocations, self.progress.throttles = status.invocations, status.throttles
        self.progress.concurrency = status.concurrency
        self.progress.decode_lanes = status.decode_lanes


def index_source(
    source: Source, store: Store, embedder: Embedder, options: PipelineOptions | None = None, **keywords: Any
) -> RunReport:
    """One call for library users and tests: an Indexer (``keywords``: its own) run to the end."""
    return Indexer(source, store, embedder, options, **keywords).run()
