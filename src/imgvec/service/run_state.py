"""The latest run of the index, as ``imgvec progress``, ``failures`` and ``metrics`` read it: from the run journal,
which the running ingest (on this machine) keeps; no store and no model needed, so these answer while the store is
down or the model not loaded."""

from __future__ import annotations

from typing import Any

from imgvec import wiring
from imgvec.errors import ImgvecError
from imgvec.settings import Settings


class RunState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def progress(self) -> dict[str, Any]:
        run_progress, _ = wiring.latest_run(self.settings)
        return run_progress.as_dict()

    def run_metrics(self) -> dict[str, Any] | None:
        """The latest run's metrics snapshot, or None before any run (for /metrics)."""
        try:
            return wiring.latest_run(self.settings)[1]
        except ImgvecError:
            return None

    def failures(self, offset: int, limit: int) -> list[dict[str, Any]]:
        records = wiring.journal_for(self.settings, create=False).failures(offset=offset, limit=limit)
        return [record.record_dict() for record in records]
