"""Thumbnails of indexed documents, made once and kept on disk.

A result grid shows 20 to 100 pictures; decoding a 12 MP original for each, on every search, would cost seconds.
The cache file is named by a hash of the document id, what the document says of its file (size, mtime, content
hash) and the size asked for: a changed file gets a new thumbnail, and no name a client sends reaches the file
system. Files are written to a temporary name and renamed, so a reader never sees half a JPEG.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from imgvec.embed.decode import DEFAULT_MAX_PIXELS, DecodeBudget, decode_image, max_file_bytes
from imgvec.errors import ThumbnailError
from imgvec.sources.index import item_of_document
from imgvec.sources.reader import LocationReader

MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 32, 1024, 256
JPEG_QUALITY = 85


class Thumbnails:
    def __init__(
        self,
        folder: Path,
        reader: LocationReader,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        budget: DecodeBudget | None = None,
    ) -> None:
        self.folder = folder
        self.reader = reader
        self.max_pixels = max_pixels
        self.budget = budget

    def get(self, doc_id: str, fields: dict[str, Any], size: int) -> bytes:
        """The JPEG thumbnail (longest side ``size``) of the indexed document ``fields``."""
        path = self.folder / f"{self._key(doc_id, fields, size)}.jpg"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = self._make(doc_id, fields, size)
        self._keep(path, data)
        return data

    def _make(self, doc_id: str, fields: dict[str, Any], size: int) -> bytes:
        item = item_of_document(doc_id, fields)
        if item is None:
            raise ThumbnailError("the document has no s3_url, bucket+file_key or file_path to read")
        try:
            original = self.reader.read(item.uri, max_bytes=max_file_bytes(self.max_pixels))
        except OSError as exc:
            raise ThumbnailError(f"cannot read {item.file_path}: {exc.strerror or exc}") from None
        decode = self.budget.decode if self.budget is not None else decode_image
        image = decode(original, max_pixels=self.max_pixels, reduce_for=size)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return buffer.getvalue()

    def _keep(self, path: Path, data: bytes) -> None:
        """Best effort: a full or read-only disk costs the next request a decode, never this one its answer."""
        part = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".part", delete=False) as file:
                part = file.name
                file.write(data)
            os.replace(part, path)
        except OSError:
            if part is not None:
                with contextlib.suppress(OSError):
                    os.unlink(part)

    @staticmethod
    def _key(doc_id: str, fields: dict[str, Any], size: int) -> str:
        version = [fields.get(name) for name in ("file_size", "mtime", "content_hash", "etag")]
        return hashlib.sha256(repr((doc_id, version, size)).encode()).hexdigest()[:40]
