"""Where vectors live. ``open_store`` picks the backend from the ``--store`` value, like lancedb.connect."""

from __future__ import annotations

from pathlib import Path

from imgvec.errors import StoreError
from imgvec.stores.base import IndexStats, SearchFilter, SearchHit, Store

__all__ = ["IndexStats", "SearchFilter", "SearchHit", "Store", "open_store"]


def open_store(location: str, index: str) -> Store:
    """A directory → the embedded store; an http(s) URL → an OpenSearch cluster."""
    if location.startswith(("http://", "https://")):
        raise StoreError(
            f"--store {location}: the OpenSearch backend is not part of this version yet; "
            "use a directory for the embedded store"
        )
    if "://" in location:
        raise StoreError(f"--store {location}: unknown scheme; give a directory or an http(s):// URL")
    from imgvec.stores.embedded import EmbeddedStore

    return EmbeddedStore(Path(location), index)
