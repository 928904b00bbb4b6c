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

from imgvec.errors import ImgvecError
from imgvec.pipeline.indexer import Indexer
from imgvec.pipeline.recovery import Recovery
from imgvec.sources.base import Source


@dataclass(frozen=True, slots=True)
class FollowOptions:
    interval: float = 30.0
    """Seconds between passes; a pass that finds nothing costs one query."""


class PassFailed(ImgvecError):
    """Every document a pass tried failed: counted as an error in a row, so the health says so."""


class Follower:
    """Runs passes over ``source`` (the index's documents without a vector) until ``stop()``."""

    def __init__(
        self, source: Source, indexer: Indexer, options: FollowOptions, log: Callable[[str], None] = print
    ) -> None:
        self.source = source
        self.indexer = indexer
        self.options = options
        self.log = log
        self.recovery = Recovery(log, then=", then a pass catches up")
        self._last_pass_at: str | None = None

    def stop(self) -> None:
        self.indexer.stop()

    @property
    def stopping(self) -> bool:
        return self.indexer.stopping

    def run(self) -> None:
        with self.indexer.session(mode="follow"):
            try:
                while not self.stopping:
                    self.recovery.attempt(self._pass)
                    self._heartbeat()
                    self.indexer.wait(self.recovery.pause(self.options.interval))
            finally:
                self._heartbeat()

    def _pass(self) -> None:
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

    def _heartbeat(self) -> None:
        health = {
            "last_pass_at": self._last_pass_at,
            "interval_seconds": self.options.interval,
            "heartbeat_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.recovery.health(),
        }
        self.indexer.show_health(health, 0, force=True)
