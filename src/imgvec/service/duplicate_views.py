"""The duplicates view of the service: groups computed once, then served a page at a time.

Grouping reads the whole index (seconds for a hundred thousand documents, minutes for the ``similar`` kind at a
million: docs/duplicates.md), which no page of a view may wait for each time. A computed view is kept while the
index's document count stays what it was and for ``FRESH_SECONDS`` at most, so a new copy shows within a minute
of its ingest; only the members of the page asked for are read from the store.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from imgvec.duplicates import Duplicates, find_duplicates
from imgvec.stores.base import SearchFilter, Store

FRESH_SECONDS = 60.0
VIEWS_KEPT = 8
"""Distinct (kind, threshold, prefix) views kept; each holds a few numbers per document of the index."""

Key = tuple[str, str, float | None, str | None]


class DuplicateViews:
    def __init__(self, store: Callable[[], Store], *, fresh_seconds: float = FRESH_SECONDS) -> None:
        self._store = store
        self._fresh = fresh_seconds
        self._views: OrderedDict[Key, tuple[Duplicates, int, float]] = OrderedDict()
        self._computing = threading.Lock()
        """One grouping at a time: two at once would only share the same two cores."""

    def page(
        self, kind: str, threshold: float | None, path_prefix: str | None, offset: int, limit: int
    ) -> dict[str, Any]:
        store = self._store()
        documents = store.stats().documents
        key = (store.index, kind, threshold, path_prefix)
        with self._computing:
            kept = self._views.get(key)
            if kept is None or kept[1] != documents or time.monotonic() - kept[2] > self._fresh:
                found = find_duplicates(store, kind, threshold=threshold, where=SearchFilter(path_prefix=path_prefix))
                kept = (found, documents, time.monotonic())
                self._views[key] = kept
            self._views.move_to_end(key)
            while len(self._views) > VIEWS_KEPT:
                self._views.popitem(last=False)
        return kept[0].as_dict(offset, limit)
