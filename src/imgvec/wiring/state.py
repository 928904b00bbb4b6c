"""A run's journal and lock: where they live for an index (an alias resolved), and reading the latest run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgvec.errors import NoRunError
from imgvec.settings import Settings
from imgvec.wiring.build import open_aliases

if TYPE_CHECKING:
    from imgvec.pipeline.journal import RunJournal
    from imgvec.pipeline.lock import IndexLock
    from imgvec.pipeline.report import Progress


def state_name(settings: Settings) -> str:
    """The index that ``--index`` names, an alias resolved: an ingest through the alias and one through the index
    itself take one lock and keep one journal. The name as given when the store cannot be asked (a read of the
    journal then still works offline)."""
    key = (settings.store, settings.index)
    if key not in _state_names:
        try:
            _state_names[key] = open_aliases(settings, quick=True).target(settings.index) or settings.index
        except Exception:  # noqa: BLE001 - unreachable or refused: the command itself will say so, if it needs the store
            return settings.index
    return _state_names[key]


_state_names: dict[tuple[str, str], str] = {}
"""Resolved once per process: a lock taken under one name is released under the same."""


def lock_for(settings: Settings) -> IndexLock:
    from imgvec.pipeline.lock import IndexLock

    return IndexLock(settings.state_dir / f"{state_name(settings)}.lock")


def journal_for(settings: Settings, *, create: bool = True) -> RunJournal:
    """The index's run journal. ``create`` False: an existing one, opened read-only (``progress``, ``failures``
    and ``metrics`` work on a read-only store, and never create state)."""
    from imgvec.pipeline.journal import RunJournal

    path = _journal_path(settings)
    if create:
        return RunJournal(path)
    if not path.exists():
        raise NoRunError(f"no ingest has run for index {settings.index!r} in {settings.store}")
    return RunJournal.read_only(path)


def existing_journal(settings: Settings) -> RunJournal | None:
    """The journal, read-only, if a run ever happened here (a dry run must not create one)."""
    return journal_for(settings, create=False) if _journal_path(settings).exists() else None


def latest_run(settings: Settings) -> tuple[Progress, dict[str, Any]]:
    """The newest run's progress and metrics; a run whose process is gone reads as interrupted."""
    latest = journal_for(settings, create=False).latest(lock_for(settings))
    if latest is None:
        raise NoRunError(f"no ingest has run for index {settings.index!r}")
    return latest


def refuse_if_busy(settings: Settings) -> None:
    """Fail now, before a model loads for nothing, when another run holds the index."""
    lock = lock_for(settings)
    if lock.is_held():
        lock.acquire()  # raises IndexBusyError with the holder's pid


def _journal_path(settings: Settings) -> Path:
    return settings.state_dir / f"{state_name(settings)}.sqlite"
