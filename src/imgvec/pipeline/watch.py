"""`imgvec watch`: a folder's changes reach the index as they happen, through the batch pipeline.

    watchdog events ─→ ChangeTracker (one entry per path, settled after a quiet spell)
                    ─→ Watcher, every tick: moved files keep their vectors, the rest go through the
                       pipeline (skip unchanged → read → decode → embed → write), vanished files are deleted

Decisions are made from what the filesystem holds when a change settles, not from the event's name: events
coalesce, arrive out of order, and are lost on network shares, but a stat at processing time is the truth. The
one thing an event adds is where a moved file came from, so its document moves with its vector instead of being
read and embedded again.

A watched folder that vanishes (an unmounted NAS share, a deleted or renamed folder) is "unavailable", never
"empty": nothing is deleted; when it comes back the watch restarts and a reconcile pass catches up on whatever
changed meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from stat import S_ISDIR

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from imgvec.documents import document_id
from imgvec.errors import IdentityMismatchError, SourceError
from imgvec.pipeline.ingest import Ingest, document_for, unchanged
from imgvec.pipeline.sync import owned_uri, reconcile
from imgvec.sources.base import SourceItem, extension_of
from imgvec.sources.local import LocalFolder
from imgvec.stores.base import SearchFilter

TICK_SECONDS = 0.25
ERROR_BACKOFF_SECONDS = 2.0
ERROR_BACKOFF_MAX_SECONDS = 300.0
OPTIMIZE_EVERY_SECONDS = 600.0
"""Compact the store this often while changes trickle in (each small write or delete adds a version)."""
FUTURE_MTIME_SLACK = 60.0
"""A NAS clock ahead of ours gives mtimes in the future; past this slack the recency check ignores them."""
IGNORED_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})
"""Opening or reading a file changes nothing, and imgvec's own reads would otherwise feed back as changes."""


@dataclass(frozen=True, slots=True)
class WatchOptions:
    settle_seconds: float = 2.0
    """A path is handled once no event has touched it, and its file has not been modified, for this long: a
    file still being copied is embedded once, when complete."""
    reconcile_every: float | None = None
    """Seconds between reconcile passes (for changes no event reported); None: only at start and remount."""
    initial_sync: bool = True
    """Reconcile at start: catches up on whatever changed while no watcher ran."""
    polling: bool = False
    """Poll the tree instead of inotify: network shares deliver no events for changes made by other machines."""
    poll_interval: float = 30.0
    max_delete_percent: float = 50.0


@dataclass(slots=True)
class Change:
    path: str
    is_dir: bool
    last_event: float
    moved_from: str | None = None
    """Where the file (or folder) was before a move: its documents hold vectors to keep."""
    also_delete: set[str] = field(default_factory=set)
    """Old locations (of moves) whose documents go once this change is applied."""


class ChangeTracker(FileSystemEventHandler):
    """Coalesces events per path (called on the observer's thread) until the path has been quiet."""

    def __init__(
        self, root: str, extensions: frozenset[str], settle_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.root = root
        self.extensions = extensions
        self.settle_seconds = settle_seconds
        self.clock = clock
        self.last_event_at: float | None = None
        """Wall-clock time of the latest relevant event (health)."""
        self._pending: dict[str, Change] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED_EVENTS:
            return
        src = os.fsdecode(event.src_path)
        if src == self.root:  # the root itself: its availability is checked by the watcher
            return
        with self._lock:
            if event.event_type == EVENT_TYPE_MOVED:
                self._moved(src, os.fsdecode(event.dest_path), is_dir=event.is_directory)
            elif event.is_directory:
                # A folder's own "modified" only says its entries changed, and those come as their own events.
                if event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_DELETED):
                    self._touch(src, is_dir=True)
            elif self._is_image(src):
                self._touch(src, is_dir=False)

    def _moved(self, src: str, dst: str, *, is_dir: bool) -> None:
        if dst == self.root or not dst.startswith(self.root + os.sep):  # moved out of the tree: gone
            if is_dir or self._is_image(src):
                self._touch(src, is_dir=is_dir)
            return
        if not is_dir and not self._is_image(dst):
            if self._is_image(src):
                self._touch(src, is_dir=False)  # renamed to a non-image name: its document goes
            return
        earlier = self._pending.pop(src, None)
        change = self._touch(dst, is_dir=is_dir)
        if is_dir or self._is_image(src):
            change.moved_from = earlier.moved_from if earlier is not None and earlier.moved_from else src
            change.also_delete.add(src)
        if earlier is not None:
            change.also_delete |= earlier.also_delete

    def _touch(self, path: str, *, is_dir: bool) -> Change:
        now = self.clock()
        self.last_event_at = time.time()
        change = self._pending.get(path)
        if change is None or change.is_dir != is_dir:
            change = self._pending[path] = Change(path, is_dir, now)
        change.last_event = now
        return change

    def _is_image(self, path: str) -> bool:
        return extension_of(os.path.basename(path)) in self.extensions

    def settled(self) -> list[Change]:
        """Take the changes that have been quiet for the settle time, folders first."""
        now = self.clock()
        with self._lock:
            ready = [c for c in self._pending.values() if now - c.last_event >= self.settle_seconds]
            for change in ready:
                del self._pending[change.path]
        return sorted(ready, key=lambda c: (not c.is_dir, c.path))

    def is_pending(self, path: str) -> bool:
        with self._lock:
            return path in self._pending

    def requeue(self, change: Change) -> None:
        """Back in the queue (its file is still being written), unless a newer event has replaced it."""
        with self._lock:
            newer = self._pending.get(change.path)
            if newer is None:
                change.last_event = self.clock()
                self._pending[change.path] = change
            else:
                newer.also_delete |= change.also_delete
                newer.moved_from = newer.moved_from or change.moved_from

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()


class Watcher:
    """Runs until ``stop()``: events → pipeline, plus reconcile passes at start, on schedule and after a remount."""

    def __init__(
        self, folder: LocalFolder, ingest: Ingest, options: WatchOptions, log: Callable[[str], None] = print
    ) -> None:
        self.folder = folder
        self.ingest = ingest
        self.options = options
        self.log = log
        self.root = str(folder.root)
        self.tracker = ChangeTracker(self.root, folder.extensions, options.settle_seconds)
        self._mount = _mount_point(self.root)
        self._observer: BaseObserver | None = None
        self._root_id: tuple[int, int] | None = None
        self._available = True
        self._next_reconcile: float | None = None
        self._last_reconcile_at: str | None = None
        self._last_optimize = time.monotonic()
        self._written_at_optimize = 0
        self._catch_up = False
        """A reconcile pass is due before the next changes: at start, and after an error."""
        self._errors_in_a_row = 0
        self._last_error: str | None = None

    def stop(self) -> None:
        self.ingest.stop()

    @property
    def stopping(self) -> bool:
        return self.ingest.stopping

    def run(self) -> None:
        self.ingest.progress.mode = "watch"
        with self.ingest.session():
            try:
                self._start_observer()  # before the first pass: a change made during it is not missed
                self._heartbeat(force=True)
                self._catch_up = self.options.initial_sync
                self._schedule_reconcile()
                while not self.stopping:
                    self._heartbeat()
                    self._guarded(self._tick)
                    self.ingest.wait(self._pause())
            finally:
                self._stop_observer()
                self._heartbeat(force=True)

    def _tick(self) -> None:
        if not self._check_source():
            return
        if self._catch_up:
            self._reconcile("start" if self._last_reconcile_at is None else "catch-up")
            self._catch_up = False
            self._heartbeat(force=True)
        elif self._next_reconcile is not None and time.monotonic() >= self._next_reconcile:
            self._reconcile("scheduled")
            self._schedule_reconcile()
        changes = self.tracker.settled()
        try:
            self._apply(changes)
        except BaseException:
            for change in changes:  # not lost: tried again after the pause (the catch-up pass covers the rest)
                self.tracker.requeue(change)
            raise
        self._optimize_now_and_then()

    def _guarded(self, step: Callable[[], None]) -> None:
        """A service outlives a store or share that fails for a while: log, pause with backoff, catch up.
        Only a model/index mismatch, which no retry can fix, ends the watch."""
        try:
            step()
        except IdentityMismatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged with its type; the watch goes on and catches up
            self._errors_in_a_row += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._catch_up = True
            self.log(f"error: {self._last_error}; retrying in {self._pause():g}s, then a reconcile pass catches up")
            self._heartbeat(force=True)
        else:
            if self._errors_in_a_row:
                self.log("recovered")
            self._errors_in_a_row = 0

    def _pause(self) -> float:
        if not self._errors_in_a_row:
            return TICK_SECONDS
        return min(ERROR_BACKOFF_MAX_SECONDS, ERROR_BACKOFF_SECONDS * 2 ** (self._errors_in_a_row - 1))

    # -- the source coming and going ----------------------------------------------------------------

    def _start_observer(self) -> None:
        observer: BaseObserver = (
            PollingObserver(timeout=self.options.poll_interval) if self.options.polling else Observer()
        )
        try:
            observer.schedule(self.tracker, self.root, recursive=True)
            observer.start()
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC from inotify_add_watch
                raise SourceError(
                    f"the inotify watch limit is reached for {self.root}: raise fs.inotify.max_user_watches "
                    f"(sysctl) or use --polling"
                ) from None
            raise SourceError(f"cannot watch {self.root}: {exc.strerror or exc}") from None
        self._observer = observer
        info = os.stat(self.root)
        self._root_id = (info.st_dev, info.st_ino)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def _root_now(self) -> tuple[int, int] | None:
        """The root's identity when it is there and reachable, else None."""
        try:
            info = os.stat(self.root)
        except OSError:
            return None
        if not S_ISDIR(info.st_mode):
            return None
        if self._mount != "/" and not os.path.ismount(self._mount):
            return None  # the share is unmounted: what is left is the empty mount-point folder
        return info.st_dev, info.st_ino

    def _check_source(self) -> bool:
        root = self._root_now()
        if root is None:
            if self._available:
                self._available = False
                self._stop_observer()
                self.tracker.clear()  # events about a vanished tree mean nothing; the catch-up pass will see
                self.log(f"{self.root} is unavailable (unmounted, moved or deleted?): nothing is deleted; waiting")
                self._heartbeat(force=True)
            return False
        watching = self._observer is not None and all(e.is_alive() for e in self._observer.emitters)
        if self._available and watching and root == self._root_id:
            return True
        why = "is back" if not self._available else "was replaced" if root != self._root_id else "lost its watch"
        self.log(f"{self.root} {why}: watching again and reconciling")
        self._available = True
        self._stop_observer()
        self.tracker.clear()
        self._start_observer()
        self._heartbeat(force=True)
        self._reconcile("remount")
        self._catch_up = False  # that pass was the catch-up
        return True

    # -- passes -------------------------------------------------------------------------------------

    def _schedule_reconcile(self) -> None:
        every = self.options.reconcile_every
        self._next_reconcile = time.monotonic() + every if every else None

    def _reconcile(self, why: str) -> None:
        before = (self.ingest.report.succeeded, len(self.ingest.report.failures))
        result = reconcile(self.ingest, self.folder, max_delete_percent=self.options.max_delete_percent)
        self._last_reconcile_at = _now_iso()
        added = self.ingest.report.succeeded - before[0]
        failed = len(self.ingest.report.failures) - before[1]
        self.log(f"reconcile ({why}): {added} indexed, {result.deleted} deleted, {failed} failed")
        if result.refused and not self.stopping:
            self.log(f"reconcile ({why}): {result.refused}")

    def _apply(self, changes: list[Change]) -> None:
        """One settled group: moves keep their vectors, files go through the pipeline, then deletions."""
        if not changes:
            return
        upserts: dict[str, SourceItem] = {}
        moved_from: dict[str, str] = {}
        gone: set[str] = set()
        gone_folders: set[str] = set()
        now = time.time()
        for change in changes:
            if change.is_dir:
                if os.path.isdir(change.path):
                    for item in self.folder.scan(self.ingest.record_listing_error, under=change.path):
                        if self.tracker.is_pending(item.uri):
                            continue  # it has a change of its own, maybe with the origin of a move: wait for it
                        upserts[item.uri] = item
                        if change.moved_from:
                            moved_from[item.uri] = change.moved_from + item.uri[len(change.path) :]
                else:
                    gone_folders.add(change.path)
                gone_folders |= change.also_delete
                continue
            item = self.folder.item(change.path)
            if item is None:
                gone.add(change.path)
            elif -FUTURE_MTIME_SLACK < now - item.mtime < self.options.settle_seconds:
                self.tracker.requeue(change)  # modified moments ago: still being written
                continue
            else:
                upserts[item.uri] = item
                if change.moved_from:
                    moved_from[item.uri] = change.moved_from
            gone |= change.also_delete
        items = list(upserts.values())
        if moved_from:
            items = self._move_documents(items, moved_from)
        self.ingest.process(items)
        if not self.stopping and self._root_now() is not None:  # deletions only while the tree is really there
            gone = {p for p in gone if p not in upserts and not os.path.lexists(p)}
            self._delete(gone, gone_folders, origins=set(moved_from.values()))
        self._heartbeat(force=True)  # a second terminal sees each applied group at once

    def _move_documents(self, items: list[SourceItem], moved_from: dict[str, str]) -> list[SourceItem]:
        """Write moved files' documents with the vectors stored for their old paths; returns the items that
        still need the pipeline (no old document, or the file changed on the way)."""
        store = self.ingest.store
        old = store.lookup([document_id(src) for src in moved_from.values()])
        hashes: dict[str, str] = {}
        for item in items:
            src = moved_from.get(item.uri)
            state = old.get(document_id(src)) if src else None
            if state is not None and state.content_hash and unchanged(state, item):  # the skip rule of ingest
                hashes[item.uri] = state.content_hash
        if not hashes:
            return items
        vectors = store.vectors_by_hash(sorted(set(hashes.values())))
        model = self.ingest.embedder.identity.model
        documents = [
            document_for(item, hashes[item.uri], vectors[hashes[item.uri]], model)
            for item in items
            if item.uri in hashes and hashes[item.uri] in vectors
        ]
        rejected = store.upsert(documents) if documents else {}
        moved = {doc.uri for doc in documents if doc.id not in rejected}
        self.ingest.report.moved += len(moved)
        if self.ingest.state is not None:
            self.ingest.state.clear_failures(sorted(moved))
        return [item for item in items if item.uri not in moved]

    def _delete(self, files: set[str], folders: set[str], origins: set[str]) -> None:
        """Delete the documents of vanished files and folders; ``origins`` (old paths of moves) are not counted as
        deletions: their files were moved, not deleted."""
        store = self.ingest.store
        uris = {document_id(path): path for path in files}
        # A folder moved back or recreated keeps its documents: its files arrive as changes of their own.
        vanished = sorted(folder for folder in folders if not os.path.isdir(folder))
        for folder in vanished:
            for doc_id, fields in store.documents(where=SearchFilter(path_prefix=folder + os.sep)):
                uri = owned_uri(doc_id, fields)
                if uri is not None and not os.path.lexists(uri):
                    uris[doc_id] = uri
        present = store.lookup(sorted(uris))
        if present:
            store.delete(sorted(present))
            self.ingest.report.deleted += sum(1 for doc_id in present if uris[doc_id] not in origins)
        if self.ingest.state is not None:
            self.ingest.state.clear_failures(sorted(files))
            for folder in vanished:  # also the failures of files that never had a document
                self.ingest.state.clear_failures_under(folder + os.sep)

    def _optimize_now_and_then(self) -> None:
        report = self.ingest.report
        written = report.succeeded + report.deleted + report.moved
        if written == self._written_at_optimize or time.monotonic() - self._last_optimize < OPTIMIZE_EVERY_SECONDS:
            return
        self.ingest.store.optimize()
        self._last_optimize = time.monotonic()
        self._written_at_optimize = written

    # -- health -------------------------------------------------------------------------------------

    def _heartbeat(self, *, force: bool = False) -> None:
        last_event = self.tracker.last_event_at
        self.ingest.progress.remaining = len(self.tracker)
        self.ingest.progress.health = {
            "source_available": self._available,
            "observer": "polling" if self.options.polling else "inotify",
            "pending_changes": len(self.tracker),
            "last_change_at": _iso(last_event) if last_event else None,
            "last_reconcile_at": self._last_reconcile_at,
            "heartbeat_at": _now_iso(),
            "errors_in_a_row": self._errors_in_a_row,
            "last_error": self._last_error,
        }
        self.ingest.save(force=force)


def _mount_point(path: str) -> str:
    """The mount point holding ``path``: when it stops being one, the share is gone."""
    current = os.path.realpath(path)
    while not os.path.ismount(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _now_iso() -> str:
    return _iso(time.time())
