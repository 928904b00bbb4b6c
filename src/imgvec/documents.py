"""The document imgvec stores per image.

The first eight fields are exactly those the organisation's file-index worker already writes to OpenSearch,
so a document imgvec writes and one the worker wrote are the same shape and can live in one index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

METADATA_FIELDS = (
    "file_name",
    "file_path",
    "file_extension",
    "file_size",
    "bucket",
    "file_key",
    "s3_url",
    "indexed_at",
)


def document_id(uri: str) -> str:
    """A stable id from where the file lives.

    Hashing keeps ids short (OpenSearch caps ``_id`` at 512 bytes, long NAS paths exceed it) and identical
    for the same file across runs and processes, which is what makes upserts and resumes idempotent.
    """
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class ImageDocument:
    """One image: where it lives, what it was when read, and its vector (None until embedded)."""

    file_name: str
    file_path: str
    file_extension: str
    file_size: int
    mtime: float
    bucket: str | None = None
    file_key: str | None = None
    s3_url: str | None = None
    content_hash: str | None = None
    etag: str | None = None
    model: str | None = None
    vector: np.ndarray | None = None
    indexed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    doc_id: str | None = None
    """The id of a document that already exists under another id (one the file-index worker wrote)."""

    @property
    def uri(self) -> str:
        return self.s3_url or self.file_path

    @property
    def id(self) -> str:
        return self.doc_id or document_id(self.uri)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What the store remembers of a file, enough to decide whether it must be embedded again."""

    file_size: int
    mtime: float
    content_hash: str | None
    has_vector: bool
    etag: str | None = None
