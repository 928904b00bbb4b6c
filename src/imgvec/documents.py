"""What imgvec knows of one image file: as listed (``SourceItem``), as stored (``ImageDocument``, ``StoredFile``),
and as failed (``Failure``).

The first eight stored fields are exactly those the organisation's file-index worker already writes to OpenSearch,
so a document imgvec writes and one the worker wrote are the same shape and can live in one index. Both stores
serialise a document from ``DOCUMENT_FIELDS`` and nothing else.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from imgvec.paths import fs_bytes, to_text

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
"""The file-index worker's fields."""
PICTURE_FIELDS = (
    "perceptual_hash",
    "width",
    "height",
    "taken_at",
    "camera_make",
    "camera_model",
    "latitude",
    "longitude",
    "picture_version",
)
"""What the picture says about itself (``Picture``): added after the first schema, filled in by a later run."""
PICTURE_VERSION = 2
"""What a reading of a picture's header found out, as a number stored with the fields: 1 read the hash, size and
capture time; 2 also the camera and the place. A document read by an older version is read again by the next run
(``Picture.of_fields`` is None for it), since a camera that is null could be absent or merely never looked for."""
DOCUMENT_FIELDS = (*METADATA_FIELDS, "mtime", "content_hash", "etag", "model", *PICTURE_FIELDS)
"""Every stored field but the id and the vector, in the stores' column order."""
MIN_VECTOR_NORM = 1e-6
"""Below this a vector is a failed embedding (CLIP's are unit length): it would match nothing, or everything, and
OpenSearch's cosine space rejects a zero vector outright."""


def document_id(uri: str) -> str:
    """A stable id from where the file lives.

    Hashing keeps ids short (OpenSearch caps ``_id`` at 512 bytes, long NAS paths exceed it) and identical
    for the same file across runs and processes, which is what makes upserts and resumes idempotent. A path's id
    comes from the file system's bytes, so a name that is not valid UTF-8 has one too (``paths``).
    """
    return hashlib.sha1(fs_bytes(uri)).hexdigest()


def extension_of(name: str) -> str:
    """Lower case, without the dot: ``IMG_1.JPG`` → ``jpg``."""
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot else ""


def usable_vector(vector: np.ndarray) -> bool:
    """The one rule for a vector worth storing: finite and not (near) zero."""
    norm = float(np.linalg.norm(vector))
    return bool(np.isfinite(norm)) and norm >= MIN_VECTOR_NORM


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
    indexed_at: datetime | None = None
    """When that document was indexed (by the file-index worker, say): kept as it was when its vector is added."""

    @classmethod
    def of_path(cls, path: str, file_size: int, mtime: float, *, doc_id: str | None = None) -> SourceItem:
        """A file on a local or mounted disk, whose path is its identity. ``path`` as the file system gave it: it
        is held as text from here on (``paths.to_text``)."""
        path = to_text(path)
        name = os.path.basename(path)
        return cls(path, path, name, extension_of(name), file_size, mtime, doc_id=doc_id)

    @property
    def id(self) -> str:
        """The document id the item is stored under."""
        return self.doc_id or document_id(self.uri)


@dataclass(frozen=True, slots=True)
class Picture:
    """What a decoded picture says about itself, read once at ingest: the duplicates view groups and ranks by it,
    searches filter by it.

    ``perceptual_hash`` is the 64-bit pHash (``embed/perceptual.py``) held as a signed 64-bit integer, the type both
    stores have (``signed_hash``). ``width`` and ``height`` are the full picture's, upright (a portrait photo whose
    EXIF says "rotate" is taller than wide). ``taken_at`` is EXIF DateTimeOriginal (with its offset where the camera
    wrote one; wall-clock time read as UTC where it did not), never the file's mtime: None when the file does not say.
    ``camera_make``/``camera_model`` are EXIF Make and Model as the camera wrote them (trimmed); ``latitude`` and
    ``longitude`` the GPS position in degrees (WGS 84), None without a fix.
    """

    perceptual_hash: int
    width: int
    height: int
    taken_at: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    latitude: float | None = None
    longitude: float | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def fields(self) -> dict[str, Any]:
        return {
            "perceptual_hash": self.perceptual_hash,
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at,
            "camera_make": self.camera_make,
            "camera_model": self.camera_model,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "picture_version": PICTURE_VERSION,
        }

    @classmethod
    def of_fields(cls, fields: dict[str, Any]) -> Picture | None:
        """From stored fields; None for a document stored before the fields existed, read by an older version
        (``PICTURE_VERSION``), or never decoded."""
        if fields.get("perceptual_hash") is None or fields.get("width") is None:
            return None
        if int(fields.get("picture_version") or 0) < PICTURE_VERSION:
            return None
        taken = fields.get("taken_at")
        if isinstance(taken, str):
            taken = datetime.fromisoformat(taken)
        return cls(
            int(fields["perceptual_hash"]),
            int(fields["width"]),
            int(fields["height"] or 0),
            taken,
            fields.get("camera_make"),
            fields.get("camera_model"),
            _float_or_none(fields.get("latitude")),
            _float_or_none(fields.get("longitude")),
        )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def signed_hash(value: int) -> int:
    """A 64-bit hash as the signed integer a store's int64/long holds (two's complement); the bits are unchanged."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(slots=True)
class ImageDocument:
    """One image in an index: the item it was read as, plus what embedding added (None until embedded)."""

    item: SourceItem
    vector: np.ndarray | None = None
    content_hash: str | None = None
    model: str | None = None
    picture: Picture | None = None
    indexed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    """Now, for a new document; the existing document's own time when its vector is filled in."""

    def __post_init__(self) -> None:
        if self.item.indexed_at is not None:
            self.indexed_at = self.item.indexed_at

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def uri(self) -> str:
        return self.item.uri

    @property
    def file_path(self) -> str:
        return self.item.file_path

    def fields(self) -> dict[str, Any]:
        """The stored fields, named and ordered as ``DOCUMENT_FIELDS``."""
        item = self.item
        return {
            "file_name": item.file_name,
            "file_path": item.file_path,
            "file_extension": item.file_extension,
            "file_size": item.file_size,
            "bucket": item.bucket,
            "file_key": item.file_key,
            "s3_url": item.s3_url,
            "indexed_at": self.indexed_at.astimezone(UTC),
            "mtime": item.mtime,
            "content_hash": self.content_hash,
            "etag": item.etag,
            "model": self.model,
            **(self.picture.fields() if self.picture else dict.fromkeys(PICTURE_FIELDS)),
        }


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What the store remembers of a file, enough to decide whether it must be embedded again."""

    file_size: int
    mtime: float
    content_hash: str | None
    has_vector: bool
    etag: str | None = None
    picture: Picture | None = None
    """None for a document stored before imgvec kept these: a later run reads the file again to fill them."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One file that could not be indexed, at one stage, with the reason a person reads."""

    file_path: str
    stage: str
    """list, read, decode, embed or write."""
    reason: str
    uri: str = ""
    """The file's identity (``SourceItem.uri``); empty: the same as ``file_path``."""
    file_size: int | None = None
    mtime: float | None = None
    """Size and mtime when it failed: the file is skipped until these change (or ``--retry-failed``)."""
    attempts: int = 1

    @classmethod
    def of(cls, item: SourceItem, stage: str, reason: str) -> Failure:
        return cls(item.file_path, stage, reason, item.uri, item.file_size, item.mtime)

    @classmethod
    def listing(cls, path: str, reason: str) -> Failure:
        """A folder or file the listing could not enter or stat; the listing goes on."""
        return cls(path, "list", reason, path)

    @property
    def key(self) -> str:
        return self.uri or self.file_path

    def as_dict(self) -> dict[str, Any]:
        return {"file_path": self.file_path, "stage": self.stage, "reason": self.reason}

    def record_dict(self) -> dict[str, Any]:
        """A failure record as `imgvec failures --json` and /api/failures show it: with the runs that met it."""
        return {**self.as_dict(), "attempts": self.attempts}
