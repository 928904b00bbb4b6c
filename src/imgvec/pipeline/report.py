"""What a run did (``RunReport``: the one set of counts) and where it stands (``Progress``: the JSON contract)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from imgvec.documents import Failure


@dataclass(slots=True)
class RunReport:
    """The counts of one run. Only ``BatchWriter`` and the skip step change them; progress and metrics are
    derived from them (``metrics.snapshot``)."""

    seen: int = 0
    embedded: int = 0
    cache_hits: int = 0
    unchanged: int = 0
    known_failures: int = 0
    deleted: int = 0
    moved: int = 0
    batches: int = 0
    failures: list[Failure] = field(default_factory=list)
    listing_failures: int = 0
    """Of ``failures``, folders and entries the listing could not read or would not take: not listed files."""
    seconds: float = 0.0
    interrupted: bool = False
    last_id: str | None = None
    """The id of the last document written (a progress state file's ``last_processed_id``)."""

    @property
    def succeeded(self) -> int:
        return self.embedded + self.cache_hits

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def skipped(self) -> int:
        return self.unchanged + self.known_failures

    @property
    def processed(self) -> int:
        """Listed files handled so far; listing failures are not among them (nor in the total), so a run with
        unreadable folders still ends at total/total."""
        return self.succeeded + self.failed - self.listing_failures + self.skipped

    @property
    def ok(self) -> bool:
        """Everything listed is in the index: nothing failed now, and nothing is left over from earlier failures."""
        return not self.failures and not self.known_failures and not self.interrupted

    def as_dict(self) -> dict[str, Any]:
        """The report part of `ingest --json` (and of sync's and migrate's)."""
        return {
            "seen": self.seen,
            "embedded": self.embedded,
            "cache_hits": self.cache_hits,
            "unchanged": self.unchanged,
            "known_failures": self.known_failures,
            "deleted": self.deleted,
            "moved": self.moved,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "failures": [failure.as_dict() for failure in self.failures],
        }


@dataclass(slots=True)
class Progress:
    """Where a run stands. Field names are the `imgvec progress --json` contract."""

    state: str = "running"
    """running, finished, interrupted (stopped by a signal or killed), or failed (a set-up error)."""
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    """Every failure recorded, those of the listing included."""
    listing_failures: int = 0
    """Of ``failed``, entries the listing could not read or take (a folder it cannot open, a document with no
    location): not among ``processed`` or ``total``, which count listed files."""
    skipped: int = 0
    remaining: int | None = None
    rate: float = 0.0
    eta_seconds: float | None = None
    started_at: str = ""
    total: int | None = None
    cache_hits: int = 0
    pid: int | None = None
    source: str = ""
    mode: str = "batch"
    """batch (ingest, sync), or watch / follow (``ingest --missing --follow``): runs until stopped, with ``health``."""
    deleted: int = 0
    """Documents removed because their files are gone (sync, watch)."""
    moved: int = 0
    """Documents moved to a file's new path with their vector kept (watch)."""
    runtime: str = ""
    """What embeds, e.g. ``openvino bf16 on cpu``; ``runtime_reason`` says why (measured, or asked for by name)."""
    runtime_reason: str = ""
    decode_workers: int | None = None
    """Decode worker processes (0: threads), from ``--workers`` or from the measured decode and model costs."""
    decode_lanes: dict[str, Any] | None = None
    """With a GPU decode lane: ``gpu_share``, ``gpu_files``, ``cpu_files``, ``gpu_rate``, ``cpu_rate`` (files/s),
    ``gpu_decoded``, ``gpu_refused``, and ``gpu_off`` (why the lane was switched off, if it was; ``gpu_lane.py``)."""
    executor: str = "local"
    """local (this machine), ray (actors on a Ray cluster read, decode and embed), or lambda (an AWS Lambda function
    does)."""
    workers_alive: int | None = None
    """local: the decode workers; ray: the actors that have their model loaded and are not lost."""
    workers: list[dict[str, Any]] | None = None
    """ray only: per actor, ``worker``, ``node``, ``alive``, ``images`` and ``rate`` (images/s since it started)."""
    bytes_per_image: float | None = None
    """ray, lambda: bytes sent and received between this process and the actors (or the function), per image."""
    invocations: int | None = None
    """lambda only: invocations of the function so far, throttled and failed ones included."""
    throttles: int | None = None
    """lambda only: invocations refused with 429 (the function's concurrency used up)."""
    concurrency: int | None = None
    """lambda only: invocations the driver allows at once now (adaptive: halved on a throttle)."""
    health: dict[str, Any] | None = None
    """watch only: source_available, observer, pending_changes, last_change_at, last_reconcile_at, heartbeat_at,
    errors_in_a_row, last_error."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
