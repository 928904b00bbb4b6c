"""Aliases in an OpenSearch cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgvec.errors import StoreError
from imgvec.stores.opensearch_client import cluster_reason, request

if TYPE_CHECKING:
    from opensearchpy import OpenSearch


class OpenSearchAliases:
    """Aliases in one cluster. A switch is a single ``_aliases`` call, so readers never see no index."""

    def __init__(self, client: OpenSearch) -> None:
        self.client = client

    def target(self, alias: str) -> str | None:
        from opensearchpy import NotFoundError

        try:
            response = self.client.indices.get_alias(name=alias)
        except NotFoundError:
            return None
        names = sorted(response)
        if len(names) > 1:
            raise StoreError(f"alias {alias!r} points to {len(names)} indexes ({', '.join(names)}); imgvec expects one")
        return names[0] if names else None

    def switch(self, alias: str, index: str) -> str | None:
        previous = self.target(alias)
        actions: list[dict[str, Any]] = []
        if previous is not None:
            actions.append({"remove": {"index": previous, "alias": alias}})
        actions.append({"add": {"index": index, "alias": alias}})
        from opensearchpy import RequestError

        try:
            request(self.client.indices.update_aliases, "OpenSearch", alias, body={"actions": actions})
        except RequestError as exc:
            raise StoreError(f"cannot point {alias!r} at {index!r}: {cluster_reason(exc)}") from None
        return previous
