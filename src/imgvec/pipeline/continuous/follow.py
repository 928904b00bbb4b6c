"""`imgvec ingest --missing --follow`: keep filling the documents another writer (the file-index worker) adds.

One indexer session (lock, journal, decode workers) for the whole service; every ``interval`` a pass lists the
index's documents that have no vector and fills them in place. A document the worker adds meanwhile is filled by
the next pass. A cluster that goes away (restarted, unreachable) fails a pass: it is logged, the next pass waits
longer (``Recovery``), and the first pass after it catches up on everything. Files whose write failed during the
outage are tried again by that pass (only decode and embed failures are skipped until the file changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imgvec.errors import ImgvecError
from imgvec.pipeline.continuous.loop import ContinuousRun
from imgvec.pipeline.indexer import Indexer
from imgvec.sources.base import Source


@dataclass(frozen=True, slots=True)
class FollowOptions:
    interval: float = 30.0
    """Seconds between passes; a pass that finds nothing costs one query."""


class PassFailed(ImgvecError):
    """Every document a pass tried failed: counted as an error in a row, so the health says so."""


class Follower(ContinuousRun):
    """Runs passes over ``source`` (the index's documents without a vector) until ``stop()``."""

    mode = "follow"

    def __init__(
        self, source: Source, indexer: Indexer, options: FollowOptions, log: Callable[[str], None] = print
    ) -> None:
        super().__init__(indexer, log, then=", then a pass catches up")
        self.source = source
        self.options = options
        self._last_pass_at: str | None = None

    def interval(self) -> float:
        return self.options.interval

    def step(self) -> None:
        """One pass."""
        report, writer = self.indexer.report, self.indexer.writer
        before = (report.succeeded, writer.failure_events)
        self.indexer.process(self.source.scan(self.indexer.record_listing_error))
        self._last_pass_at = datetime.now(UTC).isoformat(timespec="seconds")
        filled, failed = report.succeeded - before[0], writer.failure_events - before[1]
        if filled:
            self.indexer.writer.optimize()  # searchable now, not at the cluster's next refresh
        if not failed:
            if filled:
                self.log(f"filled {filled} documents")
            return
        example = writer.last_failure
        why = f", e.g. {example.file_path}: {example.reason}" if example else ""
        if filled:
            self.log(f"filled {filled} documents, {failed} failed{why}")
            return
        raise PassFailed(f"{failed} documents failed and none was filled{why}")

    def heartbeat(self, *, force: bool = False) -> None:
        super().heartbeat(force=True)  # once a pass: a pass is seconds apart, never too often to write

    def health(self) -> dict[str, Any]:
        return {
            "last_pass_at": self._last_pass_at,
            "interval_seconds": self.options.interval,
            "heartbeat_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
