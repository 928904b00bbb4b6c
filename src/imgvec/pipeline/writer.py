"""The one write path of a run: every document a run writes, moves or deletes, and every count it changes, goes
through here.

    prepared batch → content cache (identical bytes reuse a stored vector) → model for the rest → vector check
      → upsert with the retry policy → failure records for what the store rejected → counts

``ingest``, ``sync``, ``watch`` and a migration's fill all write through one ``BatchWriter``, so each of them gets
the same retries, the same refusal of zero or NaN vectors, and the same failure records. The retry policy here is
the only retry of a whole failed write (docs/opensearch.md, "Who retries what"). One write is not a run's and does
not come here: a migration's copy of the old index's documents, which the store does inside the cluster
(``Store.copy_from``, ``copy_changes``) and ``pipeline/migrate.py`` checks by counting.
"""

from __future__ import annotations

import errno
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from imgvec.documents import Failure, ImageDocument, Picture, SourceItem, document_id, usable_vector
from imgvec.embed.base import Embedder
from imgvec.embed.pixels import stack
from imgvec.errors import UNWRITABLE_HELP, IdentityMismatchError, StoreError, errno_of, reason
from imgvec.pipeline.executors.base import Embedded, Prepared
from imgvec.pipeline.journal import RunJournal
from imgvec.pipeline.metrics import Metrics
from imgvec.pipeline.report import RunReport
from imgvec.pipeline.retry import RetryPolicy
from imgvec.pipeline.skip import Verdict, unchanged
from imgvec.stores.base import Store

OPTIMIZE_EVERY_BATCHES = 200
"""Compact and index the store every ~6,400 files: each batch commits one small fragment, and look-ups slow down
as fragments pile up (docs/architecture.md, "Memory and long runs")."""
FAILED_WRITES_BEFORE_STOP = 3
"""Batches in a row the store refuses before the run stops: the first batch of a run stops it at once."""
STOPPING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""A full disk or an unwritable store: no later batch can succeed, whatever came before."""
CACHE_ENTRIES = 10_000
"""Vectors remembered from this run by content hash, so copies inside one run are embedded once."""


class Vectored(NamedTuple):
    """An item ready to write: its vector (embedded here, elsewhere, or reused) and what its bytes said."""

    item: SourceItem
    content_hash: str
    vector: np.ndarray
    picture: Picture | None


class BatchWriter:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        report: RunReport,
        metrics: Metrics,
        journal: RunJournal | None,
        retry: RetryPolicy,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.report = report
        self.metrics = metrics
        self.journal = journal
        self.retry = retry
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._batches_since_optimize = 0
        self._wrote_any = False
        self._failed_writes_in_a_row = 0
        self.failure_events = 0
        """Every failure met, counted again each time: what a ``--follow`` pass judges its health by."""
        self.last_failure: Failure | None = None
        self._counted_failures: set[str] = set()
        """Keys of files counted as failed (or skipped as failed before) in this session: a ``--follow`` or
        ``watch`` that meets the same bad document on every pass counts it once."""

    # -- counts that involve no write -----------------------------------------------------------------

    def listed(self, count: int) -> None:
        self.report.seen += count

    def skipped(self, verdict: Verdict, key: str) -> None:
        if verdict is Verdict.UNCHANGED:
            self.report.unchanged += 1
        elif verdict is Verdict.FAILED_BEFORE and key not in self._counted_failures:
            self._counted_failures.add(key)
            self.report.known_failures += 1  # failed before and has not changed since: --retry-failed

    def fail(self, failures: Iterable[Failure]) -> None:
        """Record failures; one already counted in this session is not counted again. A file's read or write that
        fails again still adds an attempt to its record (after a few it is skipped until it changes); a listing
        failure (a document with no location) seen again is the same record, so it is left as it is."""
        fresh, again = [], []
        for failure in failures:
            self.failure_events += 1
            self.last_failure = failure
            if failure.key in self._counted_failures:
                if failure.stage != "list":
                    again.append(failure)
                continue
            self._counted_failures.add(failure.key)
            fresh.append(failure)
        self.report.failures.extend(fresh)
        self.report.listing_failures += sum(1 for failure in fresh if failure.stage == "list")
        if self.journal is not None and (fresh or again):
            self.journal.record_failures([*fresh, *again])

    # -- writes ---------------------------------------------------------------------------------------

    def write(self, batch: Sequence[Prepared | Embedded]) -> None:
        """Embed what the content cache does not know, and write the batch in one upsert. Items an executor
        embedded already (``Embedded``) keep their vectors."""
        prepared = [entry for entry in batch if isinstance(entry, Prepared)]
        vectors, reused = self._vectors_for(prepared) if prepared else ([], [])
        entries = [
            Vectored(entry.item, entry.content_hash, vector, entry.picture)
            for entry, vector in zip(prepared, vectors, strict=True)
        ]
        for entry in batch:
            if isinstance(entry, Embedded):
                entries.append(Vectored(entry.item, entry.content_hash, entry.vector, entry.picture))
                reused.append(False)
        self.write_vectors(entries, reused)

    def write_vectors(self, entries: Sequence[Vectored], reused: Sequence[bool]) -> None:
        """Write items whose vectors are known (embedded here or elsewhere); ``reused``: from the content cache."""
        hits = {entry.item.id for entry, was_reused in zip(entries, reused, strict=True) if was_reused}
        written = self._upsert(self._documents(entries))
        if written:
            cache_hits = sum(1 for doc in written if doc.id in hits)
            self.report.cache_hits += cache_hits
            self.report.embedded += len(written) - cache_hits
            self.report.batches += 1
            self.report.last_id = written[-1].id
            self._optimize_now_and_then()

    def move(self, items: Sequence[SourceItem], moved_from: dict[str, str]) -> list[SourceItem]:
        """Write moved files' documents with the vectors stored for their old locations (no read, no model).
        Returns the items that still need the pipeline: no old document, or the file changed on the way."""
        old = self.store.lookup([document_id(src) for src in moved_from.values()])
        known: dict[str, tuple[str, Picture | None]] = {}
        for item in items:
            src = moved_from.get(item.uri)
            stored = old.get(document_id(src)) if src else None
            if stored is not None and stored.content_hash and unchanged(stored, item):
                known[item.uri] = (stored.content_hash, stored.picture)
        if not known:
            return list(items)
        vectors = self.store.vectors_by_hash(sorted({content_hash for content_hash, _ in known.values()}))
        entries = [
            Vectored(item, known[item.uri][0], vectors[known[item.uri][0]], known[item.uri][1])
            for item in items
            if item.uri in known and known[item.uri][0] in vectors
        ]
        handled = {entry.item.uri for entry in entries}
        self.report.moved += len(self._upsert(self._documents(entries)))
        return [item for item in items if item.uri not in handled]

    def delete(self, ids: Sequence[str], *, counted: int | None = None) -> None:
        """Delete documents (with retries). ``counted``: how many of them are deletions, the rest being the old
        locations of moved files; default all."""
        if not ids:
            return
        began = time.perf_counter()
        self.retry.call(lambda: self.store.delete(ids), _worth_retrying)
        self.metrics.stage_seconds["write"] += time.perf_counter() - began
        self.report.deleted += len(ids) if counted is None else counted

    def forget_failures(self, uris: Sequence[str]) -> None:
        """Failure records of files that are gone (or written after all) go too."""
        self._counted_failures.difference_update(uris)
        if self.journal is not None:
            self.journal.clear_failures(uris)

    def forget_failures_under(self, prefix: str) -> None:
        if self.journal is not None:
            self.journal.clear_failures_under(prefix)

    def forget_listing_failures(self, prefix: str, before: float) -> None:
        """After a complete listing of ``prefix``: its listing failures that did not happen again are gone."""
        if self.journal is not None:
            self.journal.clear_listing_failures(prefix, before)

    def recorded_failures(self, prefix: str) -> list[str]:
        """The uris of files under ``prefix`` with a failure record (listing failures aside)."""
        if self.journal is None:
            return []
        return [f.key for f in self.journal.failures() if f.file_path.startswith(prefix) and f.stage != "list"]

    def _documents(self, entries: Sequence[Vectored]) -> list[ImageDocument]:
        """Documents for items with vectors; a zero or NaN vector is that item's failure, never a stored value."""
        model = self.embedder.identity.model
        documents = []
        for item, content_hash, vector, picture in entries:
            if usable_vector(vector):
                documents.append(ImageDocument(item, vector, content_hash, model, picture))
            else:
                self.fail([Failure.of(item, "embed", "model produced a zero or NaN vector")])
        return documents

    def _upsert(self, documents: list[ImageDocument]) -> list[ImageDocument]:
        """One upsert with the retry policy; what the store rejects becomes failure records. Returns what was
        written. A model/index mismatch is no file's fault and no retry fixes it: it stops the run."""
        if not documents:
            return []
        began = time.perf_counter()
        try:
            rejected = self.retry.call(lambda: self.store.upsert(documents), _worth_retrying)
        except IdentityMismatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - after retries: the batch is recorded failed, the run goes on
            self._refused(reason(exc), hopeless=errno_of(exc) in STOPPING_ERRNOS)
            self.fail(Failure.of(doc.item, "write", f"store write failed: {reason(exc)}") for doc in documents)
            return []
        finally:
            self.metrics.stage_seconds["write"] += time.perf_counter() - began
        if len(rejected) == len(documents):  # a write block, a full disk: the store said no to the whole batch
            self._refused(next(iter(rejected.values())))
        else:
            self._wrote_any = True
            self._failed_writes_in_a_row = 0
        self.fail(Failure.of(doc.item, "write", rejected[doc.id]) for doc in documents if doc.id in rejected)
        written = [doc for doc in documents if doc.id not in rejected]
        self.forget_failures([doc.uri for doc in written])
        return written

    def _refused(self, why: str, *, hopeless: bool = False) -> None:
        """A batch the store would not take. The first of a run, several in a row, or a full disk are no file's
        fault: the run stops with one line rather than embed the rest only to record each as failed."""
        self._failed_writes_in_a_row += 1
        if hopeless or not self._wrote_any or self._failed_writes_in_a_row >= FAILED_WRITES_BEFORE_STOP:
            raise StoreError(f"cannot write to the store ({why}); {UNWRITABLE_HELP}")

    def optimize(self) -> None:
        began = time.perf_counter()
        self.store.optimize()
        self.metrics.stage_seconds["write"] += time.perf_counter() - began
        self._batches_since_optimize = 0

    def _optimize_now_and_then(self) -> None:
        self._batches_since_optimize += 1
        if self._batches_since_optimize >= OPTIMIZE_EVERY_BATCHES:
            self.optimize()

    # -- the content cache ----------------------------------------------------------------------------

    def _vectors_for(self, batch: Sequence[Prepared]) -> tuple[list[np.ndarray], list[bool]]:
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
            output = self.embedder.embed_images(stack([batch[i].pixels for i in to_embed]))
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


def _worth_retrying(exc: BaseException) -> bool:
    """Every store error may pass (a busy cluster, a stalled share) except a model/index mismatch."""
    return not isinstance(exc, IdentityMismatchError)
