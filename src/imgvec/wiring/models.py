"""Which model embeds for an index: one rule, written once, for every command and the service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgvec.embed.modelspec import DEFAULT_MODEL
from imgvec.errors import ModelLoadError
from imgvec.settings import Settings
from imgvec.stores.base import Store
from imgvec.wiring.build import load_embedder

if TYPE_CHECKING:
    from imgvec.embed.base import Embedder
    from imgvec.identity import IndexIdentity


def embedder_for(settings: Settings, store: Store) -> Embedder:
    """The one rule for which model embeds: the flag's, else the one the index was built with, else the default;
    checked against the index's identity before any work."""
    identity = store.identity()
    embedder = load_embedder(settings, settings.model or (identity.model if identity else DEFAULT_MODEL))
    if identity is not None:
        identity.require_compatible(embedder.identity, action="use this index")
    return embedder


def embedder_for_plan(settings: Settings, store: Store) -> tuple[Embedder | None, str | None]:
    """A dry run's model: the embedder, or None and why it cannot load (weights not on this machine, offline).
    Counting files and bytes needs no model; only the time estimate does, and the plan says so."""
    try:
        return embedder_for(settings, store), None
    except ModelLoadError as exc:
        return None, str(exc)


def requested_identity(settings: Settings) -> IndexIdentity | None:
    """The identity of the model the user named with ``--model``, if any (``index verify`` compares with it)."""
    return load_embedder(settings, settings.model).identity if settings.model else None
