"""An existing index as a source: its documents that have no vector yet (``imgvec ingest --missing``).

Each document already says where its image lives (``s3_url``, ``bucket`` + ``file_key``, or ``file_path``);
the item keeps the document's id, so the vector is written into that same document.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from imgvec.documents import Failure, SourceItem, extension_of
from imgvec.errors import SourceError
from imgvec.sources.base import OnListingError
from imgvec.sources.reader import LocationReader
from imgvec.sources.s3 import S3Connection
from imgvec.stores.base import Store


class IndexDocuments:
    """The documents of ``store`` without a vector, read by the locations they hold."""

    def __init__(self, store: Store, s3: S3Connection | None = None) -> None:
        self.store = store
        self.s3 = s3 or S3Connection()
        self._reader: LocationReader | None = None

    @property
    def location(self) -> str:
        return f"index:{self.store.index} (documents without a vector or picture facts)"

    @property
    def scope(self) -> str:
        raise SourceError("an index lists documents, not files: sync a folder or an s3:// location instead")

    def scan(self, on_error: OnListingError) -> Iterator[SourceItem]:
        for doc_id, fields in self.store.documents(unfinished=True):
            item = item_of_document(doc_id, fields)
            if item is None:
                on_error(Failure.listing(f"document {doc_id}", "has no s3_url, bucket+file_key or file_path to read"))
                continue
            yield item

    def read(self, item: SourceItem) -> bytes:
        if self._reader is None:  # made on first use in each worker: a boto3 client does not cross processes
            self._reader = LocationReader(self.s3)
        return self._reader.read(item.uri)

    def __getstate__(self) -> dict[str, Any]:
        # Decode workers only read; the store (a database handle or an HTTP client) stays in this process.
        return {"store": None, "s3": self.s3, "_reader": None}


def item_of_document(doc_id: str, fields: dict[str, Any]) -> SourceItem | None:
    bucket, key = fields.get("bucket"), fields.get("file_key")
    uri = fields.get("s3_url") or (f"s3://{bucket}/{key}" if bucket and key else None) or fields.get("file_path")
    if not uri:
        return None
    path = fields.get("file_path") or uri
    name = fields.get("file_name") or str(path).rstrip("/").rsplit("/", 1)[-1]
    return SourceItem(
        uri=uri,
        file_path=path,
        file_name=name,
        file_extension=(fields.get("file_extension") or extension_of(name)).lower().lstrip("."),
        file_size=int(fields.get("file_size") or 0),
        mtime=float(fields.get("mtime") or 0.0),
        bucket=bucket,
        file_key=key,
        s3_url=fields.get("s3_url"),
        etag=fields.get("etag"),
        doc_id=doc_id,
        indexed_at=_timestamp(fields.get("indexed_at")),
    )


def _timestamp(value: Any) -> datetime | None:
    """A document's ``indexed_at`` as the store holds it: a datetime (embedded) or ISO 8601 text (OpenSearch)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None  # a format imgvec cannot read: the fill stamps its own time rather than fail the file
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
