"""A run's set-up, written once: flags → options tuned for this machine → store → source → refuse if another run
holds the index → model → decode workers fitted to the model.

Every command that runs the pipeline (``ingest``, ``sync``, ``watch``, ``estimate``, ``migrate``) calls
``prepare_run``; the rule "refuse before loading a model" (a busy index, a bad source, a flag that cannot be
honoured all fail in a second, not after a model has loaded) is kept here, not by each command.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from imgvec.errors import ImgvecError, UsageError
from imgvec.settings import Settings
from imgvec.sources import is_s3_location
from imgvec.stores.base import Store
from imgvec.wiring.build import (
    indexer,
    missing_vectors,
    open_source,
    open_store,
    settings_runtime,
)
from imgvec.wiring.models import embedder_for, embedder_for_plan
from imgvec.wiring.state import refuse_if_busy

if TYPE_CHECKING:
    from imgvec.embed.base import Embedder
    from imgvec.pipeline.indexer import Indexer, ProgressCallback
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.sources.base import Source

PipelineFlags = Mapping[str, Any]
"""Pipeline flags as given, by ``PipelineOptions`` field name; None: left to the machine (``tune``)."""
FOLDER_READS, S3_READS = 8, 32
"""Reads in flight when ``--io-concurrency`` is not given: S3 is latency-bound and wants many."""

Mode = Literal["write", "dry_run", "measure"]
"""write: the run writes (the index's lock must be free); dry_run: it plans (a model that cannot load is said,
not fatal); measure: it calibrates on a scratch store (``estimate``: no lock, the model must load)."""


@dataclass(slots=True)
class RunSetup:
    """What a command has once its run is set up; ``embedder`` is None only in a dry run whose model cannot load
    (``model_unavailable`` says why)."""

    settings: Settings
    """With the inference threads that tuning chose."""
    options: PipelineOptions
    store: Store
    source: Source | None
    """None: the run's source is the index's own documents, opened when they exist (``missing_source``)."""
    embedder: Embedder | None
    model_unavailable: str | None = None

    @property
    def model(self) -> Embedder:
        if self.embedder is None:
            raise ImgvecError(self.model_unavailable or "no model was loaded for this run")
        return self.embedder

    def missing_source(self) -> Source:
        """The store's documents without a vector, as a source (a migration's fill)."""
        return missing_vectors(self.settings, self.store, self.options)

    def indexer(
        self, *, source: Source | None = None, label: str | None = None, on_progress: ProgressCallback | None = None
    ) -> Indexer:
        """An Indexer over ``source`` (default: the run's) that keeps the journal and takes the index's lock."""
        source = source or self.source
        assert source is not None, "a run without a source names one here"
        return indexer(
            self.settings,
            source,
            self.store,
            self.model,
            self.options,
            label=label or source.location,
            on_progress=on_progress,
        )


def prepare_run(
    settings: Settings,
    flags: PipelineFlags,
    *,
    source: str | None = None,
    missing: bool = False,
    mode: Mode = "write",
    folder: bool = False,
    reconcile: bool = False,
) -> RunSetup:
    """``source``: a folder or ``s3://bucket/prefix``; ``missing``: the index's documents without a vector instead
    (neither: none yet, see ``RunSetup.source``). ``folder``: ``source`` must be a local folder (``watch``).
    ``reconcile``: the run deletes what the source no longer holds, so the source must say what it covers."""
    remote = missing or source is None or is_s3_location(source)
    settings, options = pipeline_options(settings, flags, remote=remote and not folder)
    store = open_store(settings)
    opened: Source | None = None
    if missing:
        opened = missing_vectors(settings, store, options)
    elif folder and source is not None:
        from imgvec.sources.local import LocalFolder

        opened = LocalFolder(source, follow_external=options.follow_external)
    elif source is not None:
        opened = open_source(settings, source, options)
    if reconcile and opened is not None:
        _ = opened.scope  # a source that cannot be reconciled fails here, before a model loads
    if mode == "dry_run":
        embedder, unavailable = embedder_for_plan(settings, store)
        if embedder is not None:
            options = fit_to_model(options, embedder, settle_gpu=False)
        return RunSetup(settings, options, store, opened, embedder, unavailable)
    if mode == "write":
        refuse_if_busy(settings)  # before loading a model for nothing
    embedder = embedder_for(settings, store)
    return RunSetup(settings, fit_to_model(options, embedder), store, opened, embedder)


def pipeline_options(settings: Settings, flags: PipelineFlags, *, remote: bool) -> tuple[Settings, PipelineOptions]:
    """Flags → options, what the user left out tuned for this machine; the settings come back with the
    inference threads that tuning chose. ``remote``: the images are read over the network (S3, an index)."""
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.pipeline.tuning import tune

    try:
        tuning = tune(
            settings_runtime(settings),
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
    given["batch_size_tuned"] = flags.get("batch_size") is None
    given.setdefault("io_concurrency", S3_READS if remote else FOLDER_READS)
    return replace(settings, threads=tuning.threads), PipelineOptions(**given)


def _check_executor(flags: PipelineFlags) -> None:
    executor = flags.get("executor") or "local"
    if executor not in ("local", "ray", "lambda"):
        raise UsageError(f"--executor {executor!r}: choose local, ray or lambda")
    if executor == "ray":
        from imgvec.pipeline.executors.ray import import_ray

        import_ray()  # not installed: said now, before a model loads
    if executor == "lambda" and not flags.get("lambda_function"):
        raise UsageError("--executor lambda needs --lambda-function NAME (the function running imgvec's handler)")
    given = []
    if executor != "ray":
        given += [name for name in ("ray_address", "ray_workers") if flags.get(name) is not None]
        given += ["ray_gpus_per_worker"] if flags.get("ray_gpus_per_worker") else []
    if executor != "lambda":
        given += [name for name in ("lambda_function", "lambda_rate", "lambda_endpoint") if flags.get(name) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-").replace("lambda-endpoint", "lambda-endpoint-url")
        raise UsageError(f"{flag} goes with --executor {'ray' if given[0].startswith('ray') else 'lambda'}")


def fit_to_model(options: PipelineOptions, embedder: Embedder, *, settle_gpu: bool = True) -> PipelineOptions:
    """Decode workers from measured costs, when ``--workers`` was left out and this CPU has measured the model's
    runtime (``embed/probe.py``): a model several times faster than torch needs more cores decoding. On a GPU, the
    batch size its measurement found fastest (``embed/gpu_probe.py``), when ``--batch-size`` was left out; not for
    a dry run (``settle_gpu``), which would otherwise measure for a minute. Not for ``--executor ray``, whose
    workers decode and embed on their own nodes (and measure there)."""
    from imgvec.embed.base import runs_on_gpu
    from imgvec.pipeline.tuning import split_workers

    if options.executor != "local":
        return options
    if settle_gpu and options.batch_size_tuned and runs_on_gpu(embedder):
        measured = embedder.runtime.batch_size  # measured now, once per GPU model (cached)
        if measured != options.batch_size:
            options = replace(options, batch_size=measured)

    measured = getattr(embedder, "costs", None)
    costs = measured() if options.workers_tuned and measured is not None else None
    if costs is None:
        return options
    return replace(options, workers=split_workers(costs.decode_core_seconds, costs.model_core_seconds))
