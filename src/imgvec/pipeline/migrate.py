"""Move an index's documents to a new imgvec index, fill their vectors, and switch an alias to it.

Each step is idempotent, so a stopped migration is resumed by running the same command: the copy only adds what is
missing, the fill is an ``ingest --missing`` (resumable like any ingest), and the alias moves only when the new index
holds every document of the old one with a vector, save those recorded as failed with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imgvec.errors import ImgvecError, IndexNotFoundError, StoreError
from imgvec.identity import IndexIdentity
from imgvec.pipeline.report import RunReport
from imgvec.stores.base import Aliases, IndexStats, Store


class MigrationError(ImgvecError):
    """The new index is not ready: the alias was left where it was."""


@dataclass(slots=True)
class MigrationReport:
    origin: str
    target: str
    alias: str
    copied: int = 0
    origin_stats: IndexStats | None = None
    target_stats: IndexStats | None = None
    fill: RunReport | None = None
    previous: str | None = None
    switched: bool = False
    steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.origin,
            "to": self.target,
            "alias": self.alias,
            "copied": self.copied,
            "source": self.origin_stats.as_dict() if self.origin_stats else None,
            "target": self.target_stats.as_dict() if self.target_stats else None,
            "failed": self.fill.failed + self.fill.known_failures if self.fill else 0,
            "alias_was": self.previous,
            "switched": self.switched,
            "steps": self.steps,
        }


def migrate(
    origin: Store,
    target: Store,
    aliases: Aliases,
    *,
    alias: str,
    identity: IndexIdentity,
    fill: Callable[[], RunReport],
    config: object | None = None,
    on_step: Callable[[str], None] = lambda _step: None,
) -> MigrationReport:
    """Copy ``origin`` into ``target``, fill the vectors with ``fill`` (an ``ingest --missing`` on ``target`` that
    the caller builds: model, workers, journal, signals), then switch ``alias``. ``config``: the backend's settings
    for a new index (``Store.ensure_index``)."""
    report = MigrationReport(origin.index, target.index, alias)

    def step(text: str) -> None:
        report.steps.append(text)
        on_step(text)

    if not origin.exists():
        raise IndexNotFoundError(f"no index {origin.index!r} to migrate from")
    if origin.index == target.index:
        raise StoreError("--from and --to name the same index")
    report.origin_stats = origin.stats()
    created = not target.exists()
    target.ensure_index(identity, migrated_from=origin.index, config=config)
    step(f"{'created' if created else 'reusing'} {target.index!r} for {identity.describe()}")

    if target.stats().documents < report.origin_stats.documents:
        report.copied = target.copy_from(origin.index)
        target.optimize()
        step(f"copied {report.copied} documents from {origin.index!r} without their vectors")
    else:
        step("documents already copied")

    report.fill = fill()
    step(
        f"filled vectors: {report.fill.embedded} embedded, {report.fill.cache_hits} reused, "
        f"{report.fill.failed + report.fill.known_failures} failed"
    )
    if report.fill.interrupted:
        raise MigrationError("stopped while filling vectors; the alias was not switched: run the same command again")
    target.optimize()
    report.target_stats = target.stats()
    problems = _not_ready(report)
    if problems:
        raise MigrationError(f"not switching {alias!r}: {'; '.join(problems)}. Run the same command again to resume.")
    report.previous = aliases.switch(alias, target.index)
    report.switched = True
    step(f"alias {alias!r} → {target.index!r} (was {report.previous or 'unset'}); `imgvec alias rollback {alias}`")
    return report


def rollback(aliases: Aliases, alias: str, open_index: Callable[[str], Store]) -> tuple[str, str]:
    """Point ``alias`` back at the index the current one was migrated from. Returns (from, to)."""
    current = aliases.target(alias)
    if current is None:
        raise StoreError(f"no alias {alias!r}")
    origin = open_index(current).origin()
    if origin is None:
        raise StoreError(f"{current!r} (behind {alias!r}) was not made by `imgvec migrate`: nothing to roll back to")
    if not open_index(origin).exists():
        raise StoreError(f"{current!r} was migrated from {origin!r}, which no longer exists")
    aliases.switch(alias, origin)
    return current, origin


def _not_ready(report: MigrationReport) -> list[str]:
    origin, target, fill = report.origin_stats, report.target_stats, report.fill
    assert origin is not None and target is not None and fill is not None
    problems = []
    if target.documents != origin.documents:
        problems.append(
            f"{report.target!r} holds {target.documents} documents, {report.origin!r} {origin.documents} "
            "(on Serverless new documents take up to a minute to become countable)"
        )
    recorded = fill.failed + fill.known_failures
    if target.without_vector > recorded:
        problems.append(
            f"{target.without_vector} documents have no vector but only {recorded} are recorded as failed "
            "(`imgvec failures` lists them)"
        )
    return problems
