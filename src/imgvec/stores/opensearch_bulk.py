"""Bulk writes to OpenSearch: requests sized by count and bytes, each result mapped back to its document."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

BULK_DOCUMENTS = 500
BULK_BYTES = 8 * 2**20
"""Under the 10 MiB request cap of some managed instance types (docs/opensearch.md)."""
BULK_RETRIES = 6
BULK_BACKOFF = 1.0
BULK_MAX_BACKOFF = 60.0


@dataclass(frozen=True, slots=True)
class BulkItem:
    doc_id: str
    action: dict[str, Any]
    """The action line: ``{"update": {"_index", "_id"}}``, ``{"index": {"_index"}}``, ``{"delete": ...}``."""
    source: dict[str, Any] | None = None

    def lines(self) -> str:
        """The item as NDJSON, serialised once: its length sizes the request, and the text is what is sent."""
        action = json.dumps(self.action)
        return f"{action}\n{json.dumps(self.source)}\n" if self.source is not None else f"{action}\n"


def _chunks_by_size(items: list[BulkItem]) -> Iterator[list[tuple[BulkItem, str]]]:
    chunk: list[tuple[BulkItem, str]] = []
    size = 0
    for item in items:
        text = item.lines()
        if chunk and (len(chunk) >= BULK_DOCUMENTS or size + len(text) > BULK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((item, text))
        size += len(text)
    if chunk:
        yield chunk


def send_bulk(send: Callable[[str], dict[str, Any]], items: list[BulkItem]) -> dict[str, str]:
    """Bulk requests sized by count and bytes; rejected items retried on 429 with exponential backoff.

    Not opensearch-py's ``streaming_bulk``: when it retries a 429 it reorders its results and, for an
    ``index`` without ``_id`` (Serverless), nothing in a result says which document it was. Bulk responses list
    items in request order, so here each result maps back to its document id exactly.
    Returns the documents rejected for good, by id, with the cluster's reason.
    """
    rejected: dict[str, str] = {}
    pending = items
    for attempt in range(BULK_RETRIES + 1):
        throttled: list[BulkItem] = []
        for chunk in _chunks_by_size(pending):
            response = send("".join(text for _, text in chunk))
            for (item, _), result in zip(chunk, response["items"], strict=True):
                outcome = next(iter(result.values()))
                status = int(outcome.get("status", 500))
                if status == 429 and attempt < BULK_RETRIES:
                    throttled.append(item)
                elif not 200 <= status < 300:
                    error = outcome.get("error")
                    if isinstance(error, dict):
                        error = f"{error.get('type')}: {error.get('reason')}"
                    rejected[item.doc_id] = f"HTTP {status}: {error}"
        if not throttled:
            break
        pending = throttled
        time.sleep(min(BULK_MAX_BACKOFF, BULK_BACKOFF * 2**attempt) * random.uniform(0.5, 1.0))
    return rejected
