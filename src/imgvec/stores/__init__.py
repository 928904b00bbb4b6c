"""Where vectors live. ``open_store`` picks the backend from the ``--store`` value, like lancedb.connect."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from imgvec.errors import StoreError
from imgvec.stores.base import Aliases, IndexStats, SearchFilter, SearchHit, Store
from imgvec.stores.opensearch_client import OpenSearchConnection

__all__ = [
    "Aliases",
    "IndexStats",
    "OpenSearchConnection",
    "SearchFilter",
    "SearchHit",
    "Store",
    "is_remote",
    "open_aliases",
    "open_store",
]


def is_remote(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def open_store(location: str, index: str, opensearch: OpenSearchConnection | None = None) -> Store:
    """A directory → the embedded store; an http(s) URL → an OpenSearch cluster.

    In the embedded store an alias name resolves to its index here; OpenSearch resolves its own aliases.
    """
    if is_remote(location):
        from imgvec.stores.opensearch import OpenSearchStore
        from imgvec.stores.opensearch_client import check_reachable, connect

        options = opensearch or OpenSearchConnection(url=location)
        check_reachable(options, index)
        return OpenSearchStore(
            connect(options),
            index,
            serverless=options.serverless,
            label=options.safe_url(),
            write_client=connect(replace(options, max_retries=0)),  # the write path retries whole requests itself
        )
    if "://" in location:
        raise StoreError(f"--store {location}: unknown scheme; give a directory or an http(s):// URL")
    from imgvec.stores.embedded import EmbeddedStore
    from imgvec.stores.embedded_aliases import EmbeddedAliases

    return EmbeddedStore(Path(location), EmbeddedAliases(location).target(index) or index)


def open_aliases(location: str, opensearch: OpenSearchConnection | None = None) -> Aliases:
    if is_remote(location):
        from imgvec.stores.opensearch_aliases import OpenSearchAliases
        from imgvec.stores.opensearch_client import connect

        return OpenSearchAliases(connect(opensearch or OpenSearchConnection(url=location)))
    from imgvec.stores.embedded_aliases import EmbeddedAliases

    return EmbeddedAliases(location)
