"""The one skip rule, shared by every run and by the dry run: a file is skipped when the store already holds a
vector of these same bytes, or when it failed before and has not changed since (until ``--retry-failed``)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from imgvec.documents import SourceItem, StoredFile
from imgvec.pipeline.journal import RunJournal
from imgvec.stores.base import Store


class Verdict(Enum):
    TODO = "todo"
    UNCHANGED = "unchanged"
    FAILED_BEFORE = "failed-before"


def unchanged(stored: StoredFile | None, item: SourceItem) -> bool:
    """Already embedded from these same bytes: same ETag where the source has one (S3), else same size+mtime. A
    document stored before imgvec kept what the picture says (``Picture``) is read again to fill it in: the
    content cache finds its own vector, so the model does not run for it."""
    if stored is None or not stored.has_vector or stored.picture is None or stored.file_size != item.file_size:
        return False
    if item.etag is not None and stored.etag is not None:
        return stored.etag == item.etag
    return stored.mtime == item.mtime


def judge(
    window: Sequence[SourceItem], store: Store, journal: RunJournal | None, *, retry_failed: bool
) -> list[Verdict]:
    """One store look-up (and one journal look-up) for a window of items; a verdict per item, in order."""
    stored = store.lookup([item.id for item in window])
    failed = journal.known_failures([item.uri for item in window]) if journal is not None and not retry_failed else {}
    verdicts = []
    for item in window:
        if unchanged(stored.get(item.id), item):
            verdicts.append(Verdict.UNCHANGED)
        elif failed.get(item.uri) == (item.file_size, item.mtime):
            verdicts.append(Verdict.FAILED_BEFORE)
        else:
            verdicts.append(Verdict.TODO)
    return verdicts
