"""Move an index's documents to a new imgvec index, fill their vectors, and switch an alias to it.

Each step is idempotent, so a stopped migration is resumed by running the same command: the copy only adds what is
missing, the fill is an ``ingest --missing`` (resumable like any ingest), and the alias moves only when the new index
holds every document of the old one with a vector, save those recorded as failed with a reason.

Another writer (the file-index worker) may keep writing through the alias the whole time. Its writes land in the old
index until the switch, so after the fill the documents it added or replaced since the copy began are copied and
filled in rounds (``Store.change_mark``/``copy_changes``) until a round finds none; then the alias moves, and a last
round takes what landed in the old index between that round and the switch. A failure in that last round says so
and the same command finishes it: the old index is never written again once the alias has moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from imgvec.errors import ImgvecError, IndexNotFoundError, MigrationError, StoreError
from imgvec.identity import IndexIdentity
from imgvec.pipeline.report import RunReport
from imgvec.stores.base import Aliases, IndexStats, Store

CATCH_UP_ROUNDS = 3
"""Rounds of copying the other writer's new documents before the switch, each shrinking what the last round after
the switch has to take; a writer that never pauses would never let them end."""
SETTLE_SECONDS = 30.0
"""After the switch, how long writes already under way in the old index may take to land before the last round."""


def resolve_origin(aliases: Aliases, name: str) -> str:
    """The index behind ``--from`` when it names an alias: the migration records, and a rollback returns to, an
    index; an alias would be switched away from under it."""
    return aliases.target(name) or name


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

    mark = origin.change_mark()  # before the copy: everything written after it is caught up below
    resuming = aliases.target(alias) == target.index  # switched before; the last round may not have finished
    if resuming or target.stats().documents < report.origin_stats.documents:
        report.copied = target.copy_from(origin.index)
        target.optimize()
        step(f"copied {report.copied} documents from {origin.index!r} without their vectors")
    else:
        step("documents already copied")

    report.fill = fill()
    _filled(report, step)
    for _ in range(CATCH_UP_ROUNDS):
        if mark is None or report.fill.interrupted:
            break
        counted = origin.stats().documents  # taken with the mark: the target must hold at least these
        mark, caught = origin.change_mark(), target.copy_changes(origin.index, mark)
        if not caught:
            report.origin_stats = replace(report.origin_stats, documents=counted)
            break
        step(f"copied {caught} documents written to {origin.index!r} meanwhile")
        target.optimize()
        report.fill = _add(report.fill, fill())
        _filled(report, step)
    if report.fill.interrupted:
        raise MigrationError("stopped while filling vectors; the alias was not switched: run the same command again")
    target.optimize()
    report.target_stats = target.stats()
    problems = [] if resuming else _not_ready(report)
    if problems:
        raise MigrationError(f"not switching {alias!r}: {'; '.join(problems)}. Run the same command again to resume.")
    report.switched = True
    if resuming:
        step(f"alias {alias!r} → {target.index!r} already")
    else:
        report.previous = aliases.switch(alias, target.index)
        step(f"alias {alias!r} → {target.index!r} (was {report.previous or 'unset'}); `imgvec alias rollback {alias}`")
    if mark is not None:
        _last_round(origin, target, mark, report, fill, step)
    return report


def _last_round(
    origin: Store,
    target: Store,
    mark: dict[str, int],
    report: MigrationReport,
    fill: Callable[[], RunReport],
    step: Callable[[str], None],
) -> None:
    """What the other writer put in the old index between the last round and the switch."""
    try:
        _settle(origin)
        caught = target.copy_changes(origin.index, mark)
        if caught:
            step(f"copied {caught} documents written to {origin.index!r} during the switch")
            target.optimize()
            assert report.fill is not None
            report.fill = _add(report.fill, fill())
            _filled(report, step)
    except ImgvecError as exc:
        raise MigrationError(
            f"the alias was switched, but documents written to {origin.index!r} during the switch may not be copied "
            f"yet ({exc}); they are kept there: run the same command again to copy them"
        ) from exc
    if report.fill is not None and report.fill.interrupted:
        raise MigrationError(
            "the alias was switched and the last documents copied, but filling their vectors stopped: "
            "run the same command again (or `imgvec ingest --missing`)"
        )


def _settle(origin: Store) -> None:
    """Wait until the old index's marks stop moving (writes sent before the switch have landed), at most
    ``SETTLE_SECONDS``."""
    deadline = time.monotonic() + SETTLE_SECONDS
    previous = origin.change_mark()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = origin.change_mark()
        if current == previous:
            return
        previous = current


def _filled(report: MigrationReport, step: Callable[[str], None]) -> None:
    fill = report.fill
    assert fill is not None
    step(
        f"filled vectors: {fill.embedded} embedded, {fill.cache_hits} reused, "
        f"{fill.failed + fill.known_failures} failed"
    )


def _add(before: RunReport, after: RunReport) -> RunReport:
    """Two fills as one: counts add up, the later one says whether it was interrupted."""
    total = RunReport(
        seen=before.seen + after.seen,
        embedded=before.embedded + after.embedded,
        cache_hits=before.cache_hits + after.cache_hits,
        unchanged=before.unchanged + after.unchanged,
        known_failures=after.known_failures,  # each fill meets every earlier failure again
        batches=before.batches + after.batches,
        failures=[*before.failures, *after.failures],
        listing_failures=before.listing_failures + after.listing_failures,
        seconds=before.seconds + after.seconds,
        interrupted=after.interrupted,
    )
    return total


def rollback(aliases: Aliases, alias: str, open_index: Callable[[str], Store]) -> tuple[str, str]:
    """Point ``alias`` back at the index the current one was migrated from. Returns (from, to)."""
    current = aliases.target(alias)
    if current is None:
        raise StoreError(f"no alias {alias!r}")
    origin = open_index(current).origin()
    if origin is None:
        raise StoreError(f"{current!r} (behind {alias!r}) was not made by `imgvec migrate`: nothing to roll back to")
    behind = aliases.target(origin)
    if behind is not None:  # recorded by a migrate that took an alias as --from
        raise StoreError(
            f"{current!r} was recorded as migrated from {origin!r}, which is an alias (of {behind!r}), not an index: "
            f"point {alias!r} at the old index yourself"
        )
    if not open_index(origin).exists():
        raise StoreError(f"{current!r} was migrated from {origin!r}, which no longer exists")
    aliases.switch(alias, origin)
    return current, origin


def _not_ready(report: MigrationReport) -> list[str]:
    origin, target, fill = report.origin_stats, report.target_stats, report.fill
    assert origin is not None and target is not None and fill is not None
    problems = []
    if target.documents < origin.documents:
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
