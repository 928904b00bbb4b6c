"""One reconcile pass (`imgvec sync`): afterwards the index holds exactly the source's images.

New and changed files go through the normal pipeline (unchanged ones are skipped by size+mtime or ETag; a moved
file's bytes are found in the content cache, so it is read but not embedded again). Then every document that
imgvec wrote from this source and whose file the listing did not produce is deleted.

Deletion is where a reconcile can do harm, so it is careful:
- only documents under the source's ``scope`` whose id is imgvec's own (a hash of the location); documents the
  file-index worker wrote keep their owner;
- only after a complete listing (a stopped pass deletes nothing), and never under a folder the listing could not
  read;
- not when the listing found nothing while the index holds documents from it, or when more than
  ``max_delete_percent`` of them would go: that is what an unmounted NAS share or an expired credential looks
  like, and re-embedding a million photos afterwards costs hours.

The listed locations are kept in a private on-disk SQLite database, not a Python set: a pass must stay flat in
memory like the rest of the pipeline, however many paths it lists.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from imgvec.documents import Failure, SourceItem, document_id
from imgvec.pipeline.indexer import Indexer
from imgvec.sources.base import Source
from imgvec.stores.base import SearchFilter, Store

CHUNK = 1024
MIN_GUARDED_DELETIONS = 100
"""Below this many deletions the share guard stays quiet: a small folder may lose most of its files, and the
damage of a wrong deletion that small is seconds of re-embedding."""


@dataclass(slots=True)
class SyncResult:
    in_scope: int = 0
    """Documents imgvec wrote from this source, after this pass indexed and before it deleted."""
    stale: int = 0
    """Of those, the ones whose files the listing no longer produced."""
    deleted: int = 0
    refused: str | None = None
    """Why the stale documents were kept, when they were."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ListingRecord:
    """What one listing produced (locations) and could not read (paths), on disk, and the stale documents."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a private temporary database on disk, removed on close
        self._db.execute("CREATE TABLE seen (uri TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE stale (id TEXT PRIMARY KEY, uri TEXT NOT NULL) WITHOUT ROWID")
        self.unreadable: list[str] = []
        self.listed = 0
        self.complete = False

    def close(self) -> None:
        self._db.close()

    def record(self, items: Iterable[SourceItem]) -> Iterator[SourceItem]:
        """Pass the items through, remembering each; ``complete`` once the listing has run to its end."""
        buffer: list[tuple[str]] = []
        for item in items:
            buffer.append((item.uri,))
            if len(buffer) >= CHUNK:
                self._add_seen(buffer)
            yield item
        self._add_seen(buffer)
        self.complete = True

    def on_error(self, failure: Failure) -> None:
        self.unreadable.append(failure.file_path)

    def _add_seen(self, buffer: list[tuple[str]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO seen (uri) VALUES (?)", buffer)
        self.listed += len(buffer)
        buffer.clear()

    def unseen(self, uris: list[str]) -> set[str]:
        marks = ",".join("?" * len(uris))
        seen = {row[0] for row in self._db.execute(f"SELECT uri FROM seen WHERE uri IN ({marks})", uris)}
        return set(uris) - seen

    def readable(self, path: str) -> bool:
        """False under a folder (or for a file) the listing could not read: its documents are kept."""
        return not any(path == bad or path.startswith(bad.rstrip(os.sep) + os.sep) for bad in self.unreadable)

    def add_stale(self, rows: list[tuple[str, str]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO stale (id, uri) VALUES (?, ?)", rows)

    def stale_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM stale").fetchone()[0])

    def stale_chunks(self) -> Iterator[list[tuple[str, str]]]:
        cursor = self._db.execute("SELECT id, uri FROM stale ORDER BY id")
        while rows := cursor.fetchmany(CHUNK):
            yield rows


def owned_uri(doc_id: str, fields: dict[str, Any]) -> str | None:
    """The document's location if imgvec wrote it from a file (its id is the hash of that location), else None."""
    uri = fields.get("s3_url") or fields.get("file_path")
    return uri if uri and doc_id == document_id(uri) else None


def find_stale(store: Store, scope: str, record: ListingRecord) -> int:
    """Record the documents under ``scope`` that imgvec owns and the listing did not produce; returns how many
    documents imgvec owns there in all."""
    owned = 0
    window: list[tuple[str, str]] = []

    def flush() -> None:
        unseen = record.unseen([uri for _, uri in window])
        record.add_stale([(doc_id, uri) for doc_id, uri in window if uri in unseen and record.readable(uri)])
        window.clear()

    for doc_id, fields in store.documents(where=SearchFilter(path_prefix=scope)):
        uri = owned_uri(doc_id, fields)
        if uri is None:
            continue
        owned += 1
        window.append((doc_id, uri))
        if len(window) >= CHUNK:
            flush()
    if window:
        flush()
    return owned


def deletion_refused(result: SyncResult, record: ListingRecord, location: str, max_delete_percent: float) -> str | None:
    if not result.stale or max_delete_percent >= 100:
        return None
    if record.listed == 0:
        return (
            f"the listing of {location} found no images, yet the index holds {result.in_scope} documents from it: "
            f"is it mounted, and are the credentials right? Nothing was deleted (--max-delete 100 deletes them)"
        )
    share = 100.0 * result.stale / max(result.in_scope, 1)
    if result.stale >= MIN_GUARDED_DELETIONS and share > max_delete_percent:
        return (
            f"{result.stale} of {result.in_scope} documents from {location} ({share:.0f}%) have no file any more, "
            f"more than --max-delete {max_delete_percent:g}%: nothing was deleted. If the files really are gone, "
            f"run again with a higher --max-delete"
        )
    return None


def reconcile(indexer: Indexer, source: Source, *, max_delete_percent: float = 50.0) -> SyncResult:
    """Add and re-embed through ``indexer`` (inside its session), then delete what the source no longer has."""
    record = ListingRecord()
    listed_since = time.time()
    try:

        def on_error(failure: Failure) -> None:
            record.on_error(failure)
            indexer.record_listing_error(failure)

        indexer.process(record.record(source.scan(on_error)))
        if not record.complete:
            return SyncResult(refused="stopped before the listing finished: nothing was deleted")
        indexer.writer.forget_listing_failures(source.scope, listed_since)
        result = judge_stale(record, indexer.store, source, max_delete_percent)
        if result.refused is None:
            for rows in record.stale_chunks():
                indexer.writer.delete([doc_id for doc_id, _ in rows])
                result.deleted += len(rows)
            # the deleted documents' failures, and those of files that never had a document
            failed = indexer.writer.recorded_failures(source.scope)
            for start in range(0, len(failed), CHUNK):
                indexer.writer.forget_failures(sorted(record.unseen(failed[start : start + CHUNK])))
            if result.deleted:
                indexer.writer.optimize()
        indexer.save(force=True)
        return result
    finally:
        record.close()


def count_stale(source: Source, store: Store, *, max_delete_percent: float = 50.0) -> SyncResult:
    """The deletions a pass would make, and whether it would refuse them (``sync --dry-run``); writes nothing."""
    record = ListingRecord()
    try:
        for _ in record.record(source.scan(record.on_error)):
            pass
        return judge_stale(record, store, source, max_delete_percent)
    finally:
        record.close()


def judge_stale(record: ListingRecord, store: Store, source: Source, max_delete_percent: float) -> SyncResult:
    """After a complete listing: which documents are stale, and whether deleting them is refused."""
    result = SyncResult(in_scope=find_stale(store, source.scope, record), stale=record.stale_count())
    result.refused = deletion_refused(result, record, source.location, max_delete_percent)
    return result
