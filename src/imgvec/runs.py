"""The wiring every front end shares: from ``Settings`` to a store, a model, pipeline options, a run journal and
lock, an ``Indexer``; and signals scoped to a run.

The CLI calls these and only prints; any other front end calls the same ones, so a rule such as "which model
embeds for this index" is written once, here.
"""

from __future__ import annotations

import signal
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from imgvec.embed.modelspec import DEFAULT_MODEL
from imgvec.errors import ImgvecError, NoRunError, UsageError
from imgvec.settings import Settings
from imgvec.stores.base import Store

if TYPE_CHECKING:
    from imgvec.embed.base import Embedder
    from imgvec.identity import IndexIdentity
    from imgvec.pipeline.executor import ExecutorFactory
    from imgvec.pipeline.indexer import Indexer, ProgressCallback
    from imgvec.pipeline.journal import RunJournal
    from imgvec.pipeline.lock import IndexLock
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.pipeline.report import Progress
    from imgvec.sources.base import Source

PipelineFlags = Mapping[str, Any]
"""Pipeline flags as given, by ``PipelineOptions`` field name; None: left to the machine (``tune``)."""
FOLDER_READS, S3_READS = 8, 32
"""Reads in flight when ``--io-concurrency`` is not given: S3 is latency-bound and wants many."""


# -- the model --------------------------------------------------------------------------------------


def embedder_for(settings: Settings, store: Store) -> Embedder:
    """The one rule for which model embeds: the flag's, else the one the index was built with, else the default;
    checked against the index's identity before any work."""
    identity = store.identity()
    embedder = settings.load_embedder(settings.model or (identity.model if identity else DEFAULT_MODEL))
    if identity is not None:
        identity.require_compatible(embedder.identity, action="use this index")
    return embedder


def embedder_for_plan(settings: Settings, store: Store) -> tuple[Embedder | None, str | None]:
    """A dry run's model: the embedder, or None and why it cannot load (weights not on this machine, offline).
    Counting files and bytes needs no model; only the time estimate does, and the plan says so."""
    from imgvec.errors import ModelLoadError

    try:
        return embedder_for(settings, store), None
    except ModelLoadError as exc:
        return None, str(exc)


def requested_identity(settings: Settings) -> IndexIdentity | None:
    """The identity of the model the user named with ``--model``, if any (``index verify`` compares with it)."""
    return settings.load_embedder(settings.model).identity if settings.model else None


# -- the pipeline -----------------------------------------------------------------------------------


def pipeline_options(settings: Settings, flags: PipelineFlags, *, remote: bool) -> tuple[Settings, PipelineOptions]:
    """Flags → options, what the user left out tuned for this machine; the settings come back with the
    inference threads that tuning chose. ``remote``: the images are read over the network (S3, an index)."""
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.pipeline.tuning import tune

    try:
        tuning = tune(
            settings.runtime_choice(),
            workers=flags.get("workers"),
            threads=settings.threads,
            batch_size=flags.get("batch_size"),
        )
    except ImgvecError as exc:  # e.g. --device cuda without a GPU: a flag that cannot be honoured
        raise UsageError(str(exc)) from None
    asked = flags.get("workers")
    if asked is not None and asked > tuning.workers:
        warnings.warn(
            f"--workers {asked} is more than this machine can run: {tuning.workers} decode workers", stacklevel=2
        )
    _check_executor(flags)
    given = {name: value for name, value in flags.items() if value is not None}
    given |= {"workers": tuning.workers, "batch_size": tuning.batch_size, "workers_tuned": asked is None}
    given.setdefault("io_concurrency", S3_READS if remote else FOLDER_READS)
    return replace(settings, threads=tuning.threads), PipelineOptions(**given)


def _check_executor(flags: PipelineFlags) -> None:
    executor = flags.get("executor") or "local"
    if executor not in ("local", "ray"):
        raise UsageError(f"--executor {executor!r}: choose local or ray")
    if executor == "ray":
        from imgvec.pipeline.ray_executor import import_ray

        import_ray()  # not installed: said now, before a model loads
    else:
        given = [name for name in ("ray_address", "ray_workers") if flags.get(name) is not None]
        given += ["ray_gpus_per_worker"] if flags.get("ray_gpus_per_worker") else []
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} goes with --executor ray")


def fit_to_model(options: PipelineOptions, embedder: Embedder) -> PipelineOptions:
    """Decode workers from measured costs, when ``--workers`` was left out and this CPU has measured the model's
    runtime (``embed/probe.py``): a model several times faster than torch needs more cores decoding. Not for
    ``--executor ray``, whose workers decode and embed on their own nodes (and measure there)."""
    from imgvec.pipeline.tuning import split_workers

    if options.executor != "local":
        return options

    measured = getattr(embedder, "costs", None)
    costs = measured() if options.workers_tuned and measured is not None else None
    if costs is None:
        return options
    return replace(options, workers=split_workers(costs.decode_core_seconds, costs.model_core_seconds))


def open_source(settings: Settings, location: str, options: PipelineOptions) -> Source:
    from imgvec.sources import open_source as open_location

    return open_location(location, settings.s3_options(options.io_concurrency), follow_external=options.follow_external)


def missing_vectors(settings: Settings, store: Store, options: PipelineOptions) -> Source:
    """The documents of ``store`` that have no vector yet, as a source (``ingest --missing``, a migration's fill)."""
    from imgvec.sources.index import IndexDocuments

    if not store.exists():
        raise ImgvecError(f"no index {store.index!r} in {settings.store} to fill")
    return IndexDocuments(store, settings.s3_options(options.io_concurrency))


def indexer(
    settings: Settings,
    source: Source,
    store: Store,
    embedder: Embedder,
    options: PipelineOptions,
    *,
    label: str,
    on_progress: ProgressCallback | None = None,
) -> Indexer:
    """An Indexer that keeps its journal and takes the index's lock (``ingest``, ``sync``, ``watch``, a fill)."""
    from imgvec.pipeline.indexer import Indexer

    return Indexer(
        source,
        store,
        embedder,
        options,
        journal=journal_for(settings),
        lock=lock_for(settings),
        label=label,
        on_progress=on_progress,
        executor=executor_for(settings, options, embedder),
    )


def executor_for(settings: Settings, options: PipelineOptions, embedder: Embedder) -> ExecutorFactory:
    """``--executor``: this machine, or actors on a Ray cluster that load the run's model themselves."""
    from imgvec.pipeline.executor import LocalExecutor

    if options.executor == "local":
        return LocalExecutor
    from imgvec.pipeline.ray_executor import RayExecutor

    return partial(RayExecutor, settings=settings, model=embedder.identity.model)


@contextmanager
def scratch_store() -> Iterator[Store]:
    """A throw-away embedded store for a calibration run, removed afterwards."""
    from imgvec.stores.embedded import EmbeddedStore

    with tempfile.TemporaryDirectory(prefix="imgvec-calibrate-") as scratch:
        yield EmbeddedStore(Path(scratch), "calibration")


# -- run journal and lock ---------------------------------------------------------------------------


def state_name(settings: Settings) -> str:
    """The index that ``--index`` names, an alias resolved: an ingest through the alias and one through the index
    itself take one lock and keep one journal. The name as given when the store cannot be asked (a read of the
    journal then still works offline)."""
    from imgvec.stores import is_remote, open_aliases
    from imgvec.stores.opensearch_client import quick_options

    key = (settings.store, settings.index)
    if key not in _state_names:
        try:
            options = quick_options(settings.opensearch_options()) if is_remote(settings.store) else None
            _state_names[key] = open_aliases(settings.store, options).target(settings.index) or settings.index
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


# -- signals ----------------------------------------------------------------------------------------


class Stoppable(Protocol):
    def stop(self) -> None: ...

    @property
    def stopping(self) -> bool: ...


@contextmanager
def stop_on_signals(run: Stoppable, announce: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM finish the batch in hand, save state and end cleanly; a second Ctrl-C aborts
    (KeyboardInterrupt). The handlers are the previous ones again afterwards."""

    def stop(signum: int, _frame: object) -> None:
        if run.stopping:
            raise KeyboardInterrupt
        announce(f"{signal.Signals(signum).name}: finishing the current batch, then stopping")
        run.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
