"""Filesystem events, coalesced per path until the path has been quiet (``imgvec watch``).

Decisions are made later, from what the filesystem holds when a change settles, not from the event's name: events
coalesce, arrive out of order, and are lost on network shares, but a stat at processing time is the truth. The
one thing an event adds is where a moved file came from, so its document moves with its vector instead of being
read and embedded again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)

from imgvec.documents import extension_of
from imgvec.paths import to_text

IGNORED_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})
"""Opening or reading a file changes nothing, and imgvec's own reads would otherwise feed back as changes."""


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
    """Coalesces events per path (called on the observer's thread) until the path has been quiet. Paths are held
    as text (``paths.to_text``), like every stored path; ``root`` too."""

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
        src = to_text(os.fsdecode(event.src_path))
        if src == self.root:  # the root itself: its availability is checked by the watcher
            return
        with self._lock:
            if event.event_type == EVENT_TYPE_MOVED:
                self._moved(src, to_text(os.fsdecode(event.dest_path)), is_dir=event.is_directory)
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
