"""The source protocol: list what is there, read one item. The pipeline knows nothing more of a source."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif"})


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One image file as listed, before it is read. ``uri`` is what identifies it across runs."""

    uri: str
    file_path: str
    file_name: str
    file_extension: str
    """Lower case, without the dot: ``jpg``."""
    file_size: int
    mtime: float
    bucket: str | None = None
    file_key: str | None = None
    s3_url: str | None = None
    etag: str | None = None
    """The object's ETag where the source has one (S3): a change of content that size and mtime can miss."""
    doc_id: str | None = None
    """Set when the item is a document already in the index (``ingest --missing``): its vector goes there."""

    @property
    def id(self) -> str:
        """The document id the item is stored under."""
        from imgvec.documents import document_id

        return self.doc_id or document_id(self.uri)


@dataclass(frozen=True, slots=True)
class ListingError:
    """A path the listing could not enter or stat; recorded as a failure, the listing goes on."""

    path: str
    reason: str


OnListingError = Callable[[ListingError], None]


class Source(Protocol):
    @property
    def location(self) -> str:
        """What the user named: a folder path or s3://bucket/prefix (run state and progress show it)."""
        ...

    @property
    def scope(self) -> str:
        """The ``file_path`` prefix of every item this source lists: ``sync`` deletes only documents under it."""
        ...

    def scan(self, on_error: OnListingError) -> Iterator[SourceItem]:
        """Every image item, lazily: never the whole listing in memory."""
        ...

    def read(self, item: SourceItem) -> bytes: ...


def extension_of(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot else ""
