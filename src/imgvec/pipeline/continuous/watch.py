"""`imgvec watch`: a folder's changes reach the index as they happen, through the batch pipeline.

    watchdog events ─→ ChangeTracker (one entry per path, settled after a quiet spell)
                    ─→ Watcher, every tick: moved files keep their vectors, the rest go through the
                       pipeline (skip unchanged → read → decode → embed → write), vanished files are deleted

Decisions are made from what the filesystem holds when a change settles (changes.py says why).

A watched folder that vanishes (an unmounted NAS share, a deleted or renamed folder) is "unavailable", never
"empty": nothing is deleted; when it comes back the watch restarts and a reconcile pass catches up on whatever
changed meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from stat import S_ISDIR
from typing import Any

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from imgvec.documents import SourceItem, document_id
from imgvec.errors import SourceError
from imgvec.paths import fs_path
from imgvec.pipeline.continuous.changes import Change, ChangeTracker
from imgvec.pipeline.continuous.loop import ContinuousRun
from imgvec.pipeline.indexer import Indexer
from imgvec.pipeline.sync import owned_uri, reconcile
from imgvec.sources.local import LocalFolder
from imgvec.stores.base import SearchFilter

TICK_SECONDS = 0.25
OPTIMIZE_EVERY_SECONDS = 600.0
"""Compact the store this often while changes trickle in (each small write or delete adds a version)."""
FUTURE_MTIME_SLACK = 60.0
"""A NAS clock ahead of ours gives mtimes in the future; past this slack the recency check ignores them."""


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


class Watcher(ContinuousRun):
    """Runs until ``stop()``: events → pipeline, plus reconcile passes at start, on schedule and after a remount."""

    mode = "watch"

    def __init__(
        self, folder: LocalFolder, indexer: Indexer, options: WatchOptions, log: Callable[[str], None] = print
    ) -> None:
        super().__init__(indexer, log, then=", then a reconcile pass catches up")
        self.folder = folder
        self.writer = indexer.writer
        self.options = options
        self.root = str(folder.root)
        self.tracker = ChangeTracker(folder.location, folder.extensions, options.settle_seconds)
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

    def start(self) -> None:
        self._start_observer()  # before the first pass: a change made during it is not missed
        self.heartbeat(force=True)
        self._catch_up = self.options.initial_sync
        self._schedule_reconcile()

    def finish(self) -> None:
        self._stop_observer()

    def interval(self) -> float:
        return TICK_SECONDS

    def step(self) -> None:
        """One tick: the source checked, a reconcile pass when due, the settled changes applied."""
        if not self._check_source():
            return
        if self._catch_up:
            self._reconcile("start" if self._last_reconcile_at is None else "catch-up")
            self._catch_up = False
            self.heartbeat(force=True)
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

    def after_error(self) -> None:
        self._catch_up = True
        self.heartbeat(force=True)

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
                    f"the inotify watch limit is reached for {self.folder.location}: raise fs.inotify.max_user_watches "
                    f"(sysctl) or use --polling"
                ) from None
            raise SourceError(f"cannot watch {self.folder.location}: {exc.strerror or exc}") from None
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
                self.log(
                    f"{self.folder.location} is unavailable (unmounted, moved or deleted?): nothing is deleted; waiting"
                )
                self.heartbeat(force=True)
            return False
        watching = self._observer is not None and all(e.is_alive() for e in self._observer.emitters)
        if self._available and watching and root == self._root_id:
            return True
        why = "is back" if not self._available else "was replaced" if root != self._root_id else "lost its watch"
        self.log(f"{self.folder.location} {why}: watching again and reconciling")
        self._available = True
        self._stop_observer()
        self.tracker.clear()
        self._start_observer()
        self.heartbeat(force=True)
        self._reconcile("remount")
        self._catch_up = False  # that pass was the catch-up
        return True

    # -- passes -------------------------------------------------------------------------------------

    def _schedule_reconcile(self) -> None:
        every = self.options.reconcile_every
        self._next_reconcile = time.monotonic() + every if every else None

    def _reconcile(self, why: str) -> None:
        report = self.indexer.report
        before = (report.succeeded, report.failed)
        result = reconcile(self.indexer, self.folder, max_delete_percent=self.options.max_delete_percent)
        self._last_reconcile_at = _now_iso()
        added, failed = report.succeeded - before[0], report.failed - before[1]
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
                if os.path.isdir(fs_path(change.path)):
                    for item in self.folder.scan(self.indexer.record_listing_error, under=fs_path(change.path)):
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
            items = self.writer.move(items, moved_from)
        self.indexer.process(items)
        if not self.stopping and self._root_now() is not None:  # deletions only while the tree is really there
            gone = {p for p in gone if p not in upserts and not os.path.lexists(fs_path(p))}
            self._delete(gone, gone_folders, origins=set(moved_from.values()))
        self.heartbeat(force=True)  # a second terminal sees each applied group at once

    def _delete(self, files: set[str], folders: set[str], origins: set[str]) -> None:
        """Delete the documents of vanished files and folders; ``origins`` (old paths of moves) are not counted as
        deletions: their files were moved, not deleted."""
        uris = {document_id(path): path for path in files}
        # A folder moved back or recreated keeps its documents: its files arrive as changes of their own.
        vanished = sorted(folder for folder in folders if not os.path.isdir(fs_path(folder)))
        for folder in vanished:
            for doc_id, fields in self.indexer.store.documents(where=SearchFilter(path_prefix=folder + os.sep)):
                uri = owned_uri(doc_id, fields)
                if uri is not None and not os.path.lexists(fs_path(uri)):
                    uris[doc_id] = uri
        present = sorted(self.indexer.store.lookup(sorted(uris)))
        self.writer.delete(present, counted=sum(1 for doc_id in present if uris[doc_id] not in origins))
        self.writer.forget_failures(sorted(files))
        for folder in vanished:  # also the failures of files that never had a document
            self.writer.forget_failures_under(folder + os.sep)

    def _optimize_now_and_then(self) -> None:
        report = self.indexer.report
        written = report.succeeded + report.deleted + report.moved
        if written == self._written_at_optimize or time.monotonic() - self._last_optimize < OPTIMIZE_EVERY_SECONDS:
            return
        self.writer.optimize()
        self._last_optimize = time.monotonic()
        self._written_at_optimize = written

    # -- health -------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        last_event = self.tracker.last_event_at
        return {
            "source_available": self._available,
            "observer": "polling" if self.options.polling else "inotify",
            "pending_changes": len(self.tracker),
            "last_change_at": _iso(last_event) if last_event else None,
            "last_reconcile_at": self._last_reconcile_at,
            "heartbeat_at": _now_iso(),
        }

    def pending(self) -> int:
        return len(self.tracker)


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
