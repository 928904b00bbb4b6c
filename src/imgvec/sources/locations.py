"""Where one image lives, as the documents already say it: ``s3://bucket/key``, an S3 https URL, or a path.

The file-index worker's documents hold ``s3_url`` in whatever form it was written (virtual-hosted or path-style
https, or s3://), plus ``bucket``/``file_key`` and the NAS ``file_path``. Any of them is enough to fetch the bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus, urlsplit

_VIRTUAL_HOST = re.compile(r"^(?P<bucket>.+)\.s3[.-](?:[a-z0-9-]+\.)*amazonaws\.com(?:\.cn)?$")
_PATH_HOST = re.compile(r"^s3[.-](?:[a-z0-9-]+\.)*amazonaws\.com(?:\.cn)?$")
"""Both also match the legacy global hosts (bucket.s3.amazonaws.com, s3.amazonaws.com): the region part is optional."""


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    bucket: str
    key: str

    @property
    def s3_url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str, endpoint_url: str | None = None) -> ObjectLocation | None:
    """The bucket and key an S3 URL names, or None if it is not one.

    https keys are percent-decoded, with '+' read as a space as the S3 console writes it (a literal '+' is %2B).
    A URL under ``endpoint_url`` (an S3-compatible server) is read path-style: endpoint/bucket/key.
    """
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://") :].partition("/")
        return ObjectLocation(bucket, key) if bucket else None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    path = parts.path.lstrip("/")
    if endpoint_url and url.startswith(endpoint_url.rstrip("/") + "/"):
        bucket, _, key = url[len(endpoint_url.rstrip("/")) + 1 :].partition("/")
        return ObjectLocation(unquote(bucket), unquote(key)) if bucket else None
    if _PATH_HOST.match(host):
        bucket, _, key = path.partition("/")
        return ObjectLocation(bucket, unquote_plus(key)) if bucket else None
    match = _VIRTUAL_HOST.match(host)
    if match:
        return ObjectLocation(match.group("bucket"), unquote_plus(path))
    return None
