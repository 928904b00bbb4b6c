"""The wiring every front end shares: from ``Settings`` to a store, a model, a source, an executor, a run's
journal and lock, an ``Indexer``; and signals scoped to a run.

The CLI calls these and only prints; the service and the benchmarks call the same ones, so a rule such as "which
model embeds for this index" or "refuse a busy index before loading a model" is written once, here:
``build.py`` builds objects, ``models.py`` chooses the model, ``setup.py`` prepares a run, ``state.py`` finds its
journal and lock, ``signals.py`` stops it cleanly.
"""

from imgvec.wiring.build import (
    executor_for,
    indexer,
    load_embedder,
    missing_vectors,
    model_config,
    open_aliases,
    open_source,
    open_store,
    opensearch_connection,
    s3_connection,
    scratch_store,
    settings_runtime,
    store_label,
)
from imgvec.wiring.models import embedder_for, embedder_for_plan, requested_identity
from imgvec.wiring.setup import PipelineFlags, RunSetup, fit_to_model, pipeline_options, prepare_run
from imgvec.wiring.signals import stop_on_signals
from imgvec.wiring.state import (
    existing_journal,
    journal_for,
    latest_run,
    lock_for,
    refuse_if_busy,
    state_name,
)

__all__ = [
    "PipelineFlags",
    "RunSetup",
    "embedder_for",
    "embedder_for_plan",
    "executor_for",
    "existing_journal",
    "fit_to_model",
    "indexer",
    "journal_for",
    "latest_run",
    "load_embedder",
    "lock_for",
    "missing_vectors",
    "model_config",
    "open_aliases",
    "open_source",
    "open_store",
    "opensearch_connection",
    "pipeline_options",
    "prepare_run",
    "refuse_if_busy",
    "requested_identity",
    "s3_connection",
    "scratch_store",
    "settings_runtime",
    "state_name",
    "stop_on_signals",
    "store_label",
]
