"""Fetch one image by the location a document already holds (the OpenSearch fill and `search --image` use it)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imgvec.errors import SourceError
from imgvec.sources.local import read_regular_file
from imgvec.sources.locations import parse_s3_url
from imgvec.sources.s3 import S3Client, S3Connection, make_client, read_object


class LocationReader:
    """Reads an image by whatever location a document holds; the S3 client is made on first use."""

    def __init__(self, s3: S3Connection | None = None, *, client: S3Client | None = None) -> None:
        self.s3 = s3 or S3Connection()
        self._client = client

    def read(self, location: str, max_bytes: int | None = None) -> bytes:
        """``max_bytes``: an S3 object over it is refused before its body is read."""
        remote = parse_s3_url(location, self.s3.endpoint_url)
        if remote is not None:
            if not remote.key:
                raise SourceError(f"{location!r} names a bucket, not an object")
            if self._client is None:
                self._client = make_client(self.s3)
            return read_object(self._client, remote, max_bytes)
        if re.match(r"^[a-z][a-z0-9+.-]*://", location) and not location.startswith("file://"):
            raise SourceError(f"cannot read {location!r}: not an S3 URL or a local path")
        path = Path(unquote(urlsplit(location).path) if location.startswith("file://") else location).expanduser()
        return read_regular_file(str(path))
