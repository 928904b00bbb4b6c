"""Index a source into a store, streaming, in parallel, resumable.

    list (lazy) → skip unchanged / known failures (one store query per 1,024 files)
      → read (I/O threads, bounded look-ahead) → hash + decode + preprocess (worker processes)
      → content cache (identical bytes reuse a stored vector) → embed in batches → upsert (one atomic commit)

The main thread embeds while the workers decode the next files, so the model waits for decode only when decode
truly cannot keep up. Each batch is one atomic upsert, so a run killed at any moment keeps every batch it
finished and the next run skips those files: nothing is embedded twice and no document is duplicated (ids are
derived from the file's location). One bad file becomes a failure record with its stage and reason; only
set-up problems stop a run.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import islice

import numpy as np

from imgvec.documents import ImageDocument, StoredState
from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS
from imgvec.errors import IdentityMismatchError
from imgvec.pipeline.lock import IndexLock
from imgvec.pipeline.metrics import Metrics
from imgvec.pipeline.retry import RetryPolicy
from imgvec.pipeline.state import FailureRecord, Progress, RunState
from imgvec.pipeline.tuning import default_workers
from imgvec.pipeline.workers import Prepared, PrepareFailure, WorkerConfig, init_worker, prepare, read_item
from imgvec.sources.base import ListingError, Source, SourceItem
from imgvec.stores.base import Store

LOOKUP_WINDOW = 1024
SAVE_EVERY_SECONDS = 1.0
OPTIMIZE_EVERY_BATCHES = 200
"""Compact and index the store every ~6,400 files. Each batch commits one small fragment; without this, look-ups
scan thousands of fragments and a 100k-file run slowed from ~80 to ~1 file/s (benchmarks/memory.py)."""
CACHE_ENTRIES = 10_000
"""Vectors remembered from this run by content hash, so copies inside one run are embedded once."""


@dataclass(frozen=True, slots=True)
class Failure:
    file_path: str
    stage: str
    """list, read, decode, embed or write."""
    reason: str


@dataclass(frozen=True, slots=True)
class IngestOptions:
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    """Decode worker processes; 0 decodes in threads of this process (tests, tiny runs)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int | None = None
    io_concurrency: int = 8
    """Threads reading bytes ahead of the decoders: S3 and network shares are latency-bound, so many reads in
    flight keep the decoders fed. 0: each decode worker reads its own files (fast local disks, no copy)."""
    rate_limit: float | None = None
    """At most this many files per second enter the pipeline."""
    retry_failed: bool = False
    """Retry files that failed in an earlier run (otherwise they are skipped until they change)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    full_decode: bool = False
    """Decode every image at full size, as the reference preprocessing does. Off: large images are decoded
    reduced (docs/performance.md states the tolerance), several times faster for camera JPEGs."""


@dataclass(slots=True)
class IngestReport:
    seen: int = 0
    embedded: int = 0
    cache_hits: int = 0
    unchanged: int = 0
    known_failures: int = 0
    deleted: int = 0
    moved: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def succeeded(self) -> int:
        return self.embedded + self.cache_hits

    @property
    def ok(self) -> bool:
        """Everything listed is in the index: nothing failed now, and nothing is left over from earlier failures."""
        return not self.failures and not self.known_failures and not self.interrupted


ProgressCallback = Callable[[Progress], None]
Pending = Future[Prepared | PrepareFailure]
"""A file on its way: decoding, or (with I/O threads) being read, then decoding."""


def unchanged(stored: StoredState | None, item: SourceItem) -> bool:
    """Already embedded from these same bytes: same ETag where the source has one (S3), else same size+mtime."""
    if stored is None or not stored.has_vector or stored.file_size != item.file_size:
        return False
    if item.etag is not None and stored.etag is not None:
        return stored.etag == item.etag
    return stored.mtime == item.mtime


class Ingest:
    """One run. ``stop()`` (from a signal handler) ends it cleanly after the batch in hand."""

    def __init__(
        self,
        source: Source,
        store: Store,
        embedder: Embedder,
        options: IngestOptions | None = None,
        *,
        state: RunState | None = None,
        lock: IndexLock | None = None,
        source_label: str = "",
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.embedder = embedder
        self.options = options or IngestOptions()
        self.state = state
        self.lock = lock
        self.source_label = source_label
        self.on_progress = on_progress
        self.report = IngestReport()
        self.metrics = Metrics()
        self.progress = Progress(pid=os.getpid(), source=source_label)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._batches_since_optimize = 0
        self._total: int | None = None
        self._started = time.monotonic()
        self._last_save = 0.0
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._next_admission = time.monotonic()
        self._decoders: Executor
        self._readers: ThreadPoolExecutor | None = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on ``stop()``; True when stopping."""
        return self._stop.wait(seconds)

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> IngestReport:
        """A batch run: the whole listing once, then the store is compacted and indexed."""
        with self.session(), self.counting():
            self.process(self.listing())
        return self.report

    @contextmanager
    def session(self) -> Iterator[Ingest]:
        """Lock, run state and worker pools for one or many ``process`` calls (``watch`` keeps one for hours:
        spawning decode workers costs seconds, too much per file event)."""
        self.store.ensure_index(self.embedder.identity)  # a model/dimension mismatch stops us before any work
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.progress.started_at = datetime.now(UTC).isoformat(timespec="seconds")
            if self.state is not None:
                self.state.start_run(self.source_label, os.getpid())
            self._started = time.monotonic()
            self._decoders = self._executor()
            self._readers = self._reader_pool()
            try:
                yield self
            finally:
                if self._readers is not None:
                    self._readers.shutdown(cancel_futures=True)
                self._decoders.shutdown(cancel_futures=True)
            if self.report.succeeded and not self._stop.is_set():
                self.store.optimize()
            self.report.interrupted = self._stop.is_set() and self.progress.mode == "batch"
            self.progress.state = "interrupted" if self.report.interrupted else "finished"
            self.save(force=True)
        except BaseException:
            self.progress.state = "failed"
            self.save(force=True)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def process(self, items: Iterable[SourceItem]) -> None:
        """Skip what is unchanged, then read, decode, embed and write the rest; returns when all is committed.
        Stops early (after the batch in hand) once ``stop()`` was called."""
        in_flight: deque[tuple[SourceItem, Pending]] = deque()
        look_ahead = max(2 * self.options.batch_size, 4 * max(1, self.options.workers), 2 * self.options.io_concurrency)
        batch: list[Prepared] = []
        for item in self._changed_items(items):
            if self._stop.is_set():
                break
            self._admit()
            in_flight.append((item, self._submit(item)))
            while len(in_flight) >= look_ahead:
                self._collect(in_flight, batch)
        # Drain what is already decoding, even when stopping: the signal says "finish the batch in hand".
        while in_flight:
            self._collect(in_flight, batch)
        if batch:
            self._write_batch(batch)

    def _submit(self, item: SourceItem) -> Pending:
        if self._readers is None:
            return self._decoders.submit(prepare, item)
        decoders = self._decoders  # the pool of this moment: a restarted pool never gets a stale file's work
        outcome: Pending = Future()

        def read_then_decode() -> None:
            began = time.perf_counter()
            data = read_item(self.source, item, self.options.retry)
            if isinstance(data, PrepareFailure):
                outcome.set_result(data)
                return
            try:
                decoding = decoders.submit(prepare, item, data, time.perf_counter() - began)
            except (BrokenProcessPool, RuntimeError) as exc:  # the pool broke or shut down meanwhile
                outcome.set_exception(BrokenProcessPool(str(exc)))
                return
            decoding.add_done_callback(lambda done: _chain(done, outcome))

        self._readers.submit(read_then_decode)
        return outcome

    def _collect(self, in_flight: deque[tuple[SourceItem, Pending]], batch: list[Prepared]) -> None:
        """Take the oldest result. A worker that died (a decoder crash, the OOM killer) breaks the whole pool:
        restart it and run every file that was in flight alone, so only the file that kills a worker fails."""
        item, future = in_flight.popleft()
        try:
            self._take(future.result(), batch)
            return
        except BrokenProcessPool:
            suspects = [item, *(other for other, _ in in_flight)]
            in_flight.clear()
        self._restart_pools()
        for suspect in suspects:
            try:
                result = self._submit(suspect).result()
            except BrokenProcessPool:
                self._restart_pools()
                self._fail([(suspect, "decode", "the decode worker died on this file (a crash, or out of memory)")])
                continue
            self._take(result, batch)

    def _restart_pools(self) -> None:
        """Readers first (waiting for them: none may still hand work to the old pool), then the decoders."""
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
        self._decoders.shutdown(cancel_futures=True)
        self._decoders = self._executor()
        self._readers = self._reader_pool()

    def _take(self, result: Prepared | PrepareFailure, batch: list[Prepared]) -> None:
        if isinstance(result, PrepareFailure):
            self._fail([(result.item, result.stage, result.reason)])
            return
        self.metrics.stage_seconds["read"] += result.read_seconds
        self.metrics.stage_seconds["decode"] += result.decode_seconds
        batch.append(result)
        if len(batch) >= self.options.batch_size:
            self._write_batch(batch)
            batch.clear()

    # -- listing and skipping -----------------------------------------------------------------------

    def listing(self) -> Iterator[SourceItem]:
        """The source's items, with listing errors recorded as failures and ``max_files`` applied."""
        items: Iterable[SourceItem] = self.source.scan(self.record_listing_error)
        if self.options.max_files is not None:
            items = islice(items, self.options.max_files)
        return iter(items)

    def record_listing_error(self, error: ListingError) -> None:
        item = SourceItem(error.path, error.path, error.path.rsplit("/", 1)[-1], "", 0, 0.0)
        self._fail([(item, "list", error.reason)])

    def _changed_items(self, items: Iterable[SourceItem]) -> Iterator[SourceItem]:
        listing = iter(items)
        while True:
            began = time.perf_counter()
            window = list(islice(listing, LOOKUP_WINDOW))
            if not window:
                return
            self.report.seen += len(window)
            todo = self._skip_known(window)
            self.metrics.stage_seconds["list"] += time.perf_counter() - began
            self.save()
            yield from todo

    def _skip_known(self, window: Sequence[SourceItem]) -> list[SourceItem]:
        stored = self.store.lookup([item.id for item in window])
        failed = {}
        if self.state is not None and not self.options.retry_failed:
            failed = self.state.known_failures([item.uri for item in window])
        todo = []
        for item in window:
            if unchanged(stored.get(item.id), item):
                self.report.unchanged += 1
            elif failed.get(item.uri) == (item.file_size, item.mtime):
                self.report.known_failures += 1  # failed before and has not changed since: --retry-failed
            else:
                todo.append(item)
                continue
            self.metrics.images_skipped += 1
            self.metrics.images_processed += 1
        return todo

    def _admit(self) -> None:
        """The rate limit: space files 1/rate seconds apart, without letting a stall bank a burst."""
        if not self.options.rate_limit:
            return
        now = time.monotonic()
        if self._next_admission > now:
            self._stop.wait(self._next_admission - now)
        self._next_admission = max(now, self._next_admission) + 1.0 / self.options.rate_limit

    # -- embedding and writing ----------------------------------------------------------------------

    def _write_batch(self, batch: list[Prepared]) -> None:
        vectors, reused = self._vectors_for(batch)
        keep: list[tuple[ImageDocument, bool]] = []
        failed: list[tuple[SourceItem, str, str]] = []
        model = self.embedder.identity.model
        for entry, vector, was_reused in zip(batch, vectors, reused, strict=True):
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm < 1e-6:
                failed.append((entry.item, "embed", "model produced a zero or NaN vector"))
            else:
                keep.append((document_for(entry.item, entry.content_hash, vector, model), was_reused))
        documents = [doc for doc, _ in keep]
        began = time.perf_counter()
        try:
            rejected = self.options.retry.call(
                lambda: self.store.upsert(documents), lambda exc: not isinstance(exc, IdentityMismatchError)
            )
        except IdentityMismatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - after retries: the batch is recorded failed, the run goes on
            failed.extend((_item_of(doc), "write", f"store write failed: {exc}") for doc in documents)
            keep = []
        else:
            if rejected:  # a partial bulk failure: those documents are recorded, the rest are written
                failed.extend((_item_of(d), "write", rejected[d.id]) for d in documents if d.id in rejected)
                keep = [(doc, hit) for doc, hit in keep if doc.id not in rejected]
        self.metrics.stage_seconds["write"] += time.perf_counter() - began
        if keep:
            self._batches_since_optimize += 1
            if self._batches_since_optimize >= OPTIMIZE_EVERY_BATCHES:
                self._batches_since_optimize = 0
                began = time.perf_counter()
                self.store.optimize()
                self.metrics.stage_seconds["write"] += time.perf_counter() - began
            hits = sum(1 for _, was_reused in keep if was_reused)
            self.report.cache_hits += hits
            self.report.embedded += len(keep) - hits
            self.metrics.batches += 1
            self.metrics.cache_hits += hits
            self.metrics.images_embedded += len(keep) - hits
            self.metrics.images_processed += len(keep)
            if self.state is not None:
                self.state.clear_failures([doc.uri for doc, _ in keep])
        if failed:
            self._fail(failed)
        self.save()

    def _vectors_for(self, batch: list[Prepared]) -> tuple[list[np.ndarray], list[bool]]:
        """Reuse vectors of identical bytes (this run, then the store); embed the rest in one model call.

        Returns the vectors in batch order and, for each, whether it was reused rather than embedded.
        """
        hashes = [entry.content_hash for entry in batch]
        known = {h: self._recent[h] for h in hashes if h in self._recent}
        missing = [h for h in hashes if h not in known]
        if missing:
            known.update(self.store.vectors_by_hash(missing))
        first_of: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in known:
                first_of.setdefault(h, i)  # copies inside this batch are embedded once
        to_embed = sorted(first_of.values())
        embedded: dict[int, np.ndarray] = {}
        if to_embed:
            began = time.perf_counter()
            output = self.embedder.embed_images(np.stack([batch[i].pixels for i in to_embed]))
            self.metrics.record_embed(time.perf_counter() - began, len(to_embed))
            embedded = dict(zip(to_embed, output, strict=True))
            known.update({hashes[i]: vector for i, vector in embedded.items()})
        vectors = [known[h] for h in hashes]
        for h, vector in zip(hashes, vectors, strict=True):
            self._remember(h, vector)
        return vectors, [i not in embedded for i in range(len(batch))]

    def _remember(self, content_hash: str, vector: np.ndarray) -> None:
        self._recent[content_hash] = vector
        self._recent.move_to_end(content_hash)
        while len(self._recent) > CACHE_ENTRIES:
            self._recent.popitem(last=False)

    def _fail(self, failures: list[tuple[SourceItem, str, str]]) -> None:
        for item, stage, reason in failures:
            self.report.failures.append(Failure(item.file_path, stage, reason))
        self.metrics.images_failed += len(failures)
        self.metrics.images_processed += len(failures)
        if self.state is not None:
            self.state.record_failures(
                FailureRecord(item.file_path, stage, reason, item.uri, item.file_size, item.mtime)
                for item, stage, reason in failures
            )

    # -- progress -----------------------------------------------------------------------------------

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the source in the background (no list kept), so progress can show a total and an ETA."""

        def count() -> None:
            total = 0
            for _ in self.source.scan(lambda _error: None):
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

    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < SAVE_EVERY_SECONDS:
            return
        self._last_save = now
        elapsed = max(now - self._started, 1e-9)
        report, progress = self.report, self.progress
        self.report.seconds = elapsed
        progress.succeeded = report.succeeded
        progress.failed = len(report.failures)
        progress.skipped = report.unchanged + report.known_failures
        progress.cache_hits = report.cache_hits
        progress.deleted = report.deleted
        progress.moved = report.moved
        progress.processed = progress.succeeded + progress.failed + progress.skipped
        progress.rate = (progress.succeeded + progress.failed) / elapsed
        progress.total = self._total
        if progress.state == "finished" and self._total is None:
            progress.total = progress.processed  # the run outpaced the background count: it saw everything
        if self._total is not None:
            progress.remaining = max(0, self._total - progress.processed)
            progress.eta_seconds = progress.remaining / progress.rate if progress.rate > 0 else None
        if progress.state != "running":
            progress.remaining = 0 if progress.state == "finished" else progress.remaining
            progress.eta_seconds = 0.0 if progress.state == "finished" else None
        if self.state is not None:
            self.state.save(progress, self.metrics.snapshot())
        if self.on_progress is not None:
            self.on_progress(progress)

    # -- workers ------------------------------------------------------------------------------------

    def _reader_pool(self) -> ThreadPoolExecutor | None:
        if self.options.io_concurrency <= 0:
            return None
        return ThreadPoolExecutor(max_workers=self.options.io_concurrency, thread_name_prefix="imgvec-read")

    def _executor(self) -> Executor:
        preprocessor = self.embedder.preprocessor
        reduce_for = None if self.options.full_decode else preprocessor.reduce_for
        config = WorkerConfig(self.source, preprocessor, self.options.max_pixels, self.options.retry, reduce_for)
        if self.options.workers == 0:
            init_worker(config)
            return ThreadPoolExecutor(max_workers=2, thread_name_prefix="imgvec-decode")
        # spawn, not fork: this process has torch's thread pools running, which fork does not survive safely
        return ProcessPoolExecutor(
            max_workers=self.options.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=partial(init_worker, parent_pid=os.getpid()),
            initargs=(config,),
        )


def ingest(
    source: Source,
    store: Store,
    embedder: Embedder,
    options: IngestOptions | None = None,
    *,
    state: RunState | None = None,
    lock: IndexLock | None = None,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """One call for library users and tests: run an Ingest to the end."""
    return Ingest(source, store, embedder, options, state=state, lock=lock, on_progress=on_progress).run()


def _chain(done: Pending, outcome: Pending) -> None:
    if done.cancelled():  # the pools are shutting down; nobody waits for this file any more
        outcome.cancel()
        return
    error = done.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())


def _item_of(doc: ImageDocument) -> SourceItem:
    return SourceItem(
        doc.uri,
        doc.file_path,
        doc.file_name,
        doc.file_extension,
        doc.file_size,
        doc.mtime,
        doc.bucket,
        doc.file_key,
        doc.s3_url,
        doc.etag,
        doc.doc_id,
    )


def document_for(item: SourceItem, content_hash: str, vector: np.ndarray, model: str) -> ImageDocument:
    """The document for a file whose bytes hash to ``content_hash`` and embed to ``vector``."""
    return ImageDocument(
        file_name=item.file_name,
        file_path=item.file_path,
        file_extension=item.file_extension,
        file_size=item.file_size,
        mtime=item.mtime,
        bucket=item.bucket,
        file_key=item.file_key,
        s3_url=item.s3_url,
        content_hash=content_hash,
        etag=item.etag,
        model=model,
        vector=vector,
        doc_id=item.doc_id,
    )
