"""The one place that builds: stores, aliases, models, sources, executors and indexers, from ``Settings``.

``Settings`` is data; every front end (the CLI, the service, a benchmark) builds through these, so what a
store, model or source needs from the settings is read in one place, and a remote worker is handed only the
``ModelConfig`` it needs, never the settings with their credentials.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from imgvec.embed.loading import ModelConfig, runtime_choice
from imgvec.errors import ImgvecError
from imgvec.settings import Settings
from imgvec.stores import OpenSearchConnection, is_remote
from imgvec.stores.base import Aliases, Store

if TYPE_CHECKING:
    from imgvec.embed.base import Embedder
    from imgvec.embed.clip import ClipEmbedder
    from imgvec.embed.runtime import RuntimeChoice
    from imgvec.pipeline.executors.base import ExecutorFactory
    from imgvec.pipeline.indexer import Indexer, ProgressCallback
    from imgvec.pipeline.options import PipelineOptions
    from imgvec.pipeline.publishing import Publishing
    from imgvec.sources.base import Source
    from imgvec.sources.s3 import S3Connection


# -- stores -----------------------------------------------------------------------------------------


def opensearch_connection(settings: Settings, *, quick: bool = False) -> OpenSearchConnection:
    """How to reach the cluster ``--store`` names. ``quick``: one short try (``quick_connection``), for a request a
    command can do without."""
    from imgvec.stores.opensearch_client import quick_connection

    options = OpenSearchConnection(
        url=settings.store,
        username=settings.opensearch_user,
        password=settings.opensearch_password,
        aws_service=settings.aws_service,
        aws_region=settings.aws_region,
        verify_certs=settings.verify_certs,
        ca_certs=settings.ca_certs,
    )
    return quick_connection(options) if quick else options


def open_store(settings: Settings, index: str | None = None) -> Store:
    """The store ``--store`` names, at ``index`` (default ``--index``); an embedded alias resolved."""
    from imgvec.stores import open_store as open_location

    options = opensearch_connection(settings) if is_remote(settings.store) else None
    return open_location(settings.store, index or settings.index, options)


def open_aliases(settings: Settings, *, quick: bool = False) -> Aliases:
    from imgvec.stores import open_aliases as open_location

    options = opensearch_connection(settings, quick=quick) if is_remote(settings.store) else None
    return open_location(settings.store, options)


def store_label(settings: Settings) -> str:
    """The store as messages name it: a cluster's URL without its credentials, or the folder."""
    return opensearch_connection(settings).safe_url() if is_remote(settings.store) else settings.store


# -- models -----------------------------------------------------------------------------------------


def model_config(settings: Settings, model: str) -> ModelConfig:
    return ModelConfig(
        model=model,
        device=settings.device,
        runtime=settings.runtime,
        precision=settings.precision,
        threads=settings.threads,
        cache_dir=settings.cache_dir,
        model_config_dir=settings.model_config_dir,
    )


def load_embedder(settings: Settings, model: str) -> ClipEmbedder:
    from imgvec.embed.loading import load_embedder as load

    return load(model_config(settings, model))


def settings_runtime(settings: Settings) -> RuntimeChoice:
    """What ``--device``, ``--runtime`` and ``--precision`` choose on this machine."""
    return runtime_choice(settings.device, settings.runtime, settings.precision)


# -- sources ----------------------------------------------------------------------------------------


def s3_connection(settings: Settings, connections: int = 32) -> S3Connection:
    from imgvec.sources.s3 import S3Connection

    return S3Connection(endpoint_url=settings.s3_endpoint_url, max_connections=max(10, connections))


def open_source(settings: Settings, location: str, options: PipelineOptions) -> Source:
    """A folder or ``s3://bucket/prefix``: ``sources`` tells which."""
    from imgvec.sources import open_source as open_location

    return open_location(
        location, s3_connection(settings, options.io_concurrency), follow_external=options.follow_external
    )


def missing_vectors(settings: Settings, store: Store, options: PipelineOptions) -> Source:
    """The documents of ``store`` that have no vector yet, as a source (``ingest --missing``, a migration's fill)."""
    from imgvec.sources.index import IndexDocuments

    if not store.exists():
        raise ImgvecError(f"no index {store.index!r} in {settings.store} to fill")
    return IndexDocuments(store, s3_connection(settings, options.io_concurrency))


# -- a run ------------------------------------------------------------------------------------------


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
    from imgvec.wiring.state import journal_for, lock_for

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
        publishing=publishing_for(settings, options),
    )


def publishing_for(settings: Settings, options: PipelineOptions) -> Publishing | None:
    """``--cloudwatch`` and ``--state-file``: where else the run's progress goes, if anywhere."""
    from imgvec.pipeline.publishing import Publisher, Publishing
    from imgvec.wiring.state import state_name

    publishers: list[Publisher] = []
    if options.cloudwatch:
        from imgvec.pipeline.publishing.cloudwatch import CloudWatchPublisher

        publishers.append(CloudWatchPublisher(options.cloudwatch, state_name(settings)))
    if options.state_file:
        from imgvec.pipeline.publishing.state_file import StateFilePublisher

        publishers.append(StateFilePublisher(options.state_file, state_name(settings), s3_connection(settings)))
    return Publishing(publishers) if publishers else None


def executor_for(settings: Settings, options: PipelineOptions, embedder: Embedder) -> ExecutorFactory:
    """``--executor``: this machine, actors on a Ray cluster that load the run's model themselves, or a Lambda
    function that holds it (checked against the run's on its first answer)."""
    from imgvec.pipeline.executors.local import LocalExecutor

    if options.executor == "local":
        return LocalExecutor
    if options.executor == "lambda":
        from imgvec.pipeline.executors.aws_lambda.executor import LambdaExecutor

        return LambdaExecutor
    from imgvec.pipeline.executors.ray import RayExecutor

    return partial(RayExecutor, model=model_config(settings, embedder.identity.model))


@contextmanager
def scratch_store() -> Iterator[Store]:
    """A throw-away embedded store for a calibration run, removed afterwards."""
    from imgvec.stores.embedded import EmbeddedStore

    with tempfile.TemporaryDirectory(prefix="imgvec-calibrate-") as scratch:
        yield EmbeddedStore(Path(scratch), "calibration")
