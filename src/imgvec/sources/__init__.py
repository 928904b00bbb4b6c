"""Where images come from. Each source lists items (streaming) and reads one item's bytes."""

from __future__ import annotations

from imgvec.documents import SourceItem
from imgvec.sources.base import IMAGE_EXTENSIONS, Source
from imgvec.sources.local import LocalFolder
from imgvec.sources.locations import ObjectLocation, parse_s3_url
from imgvec.sources.reader import LocationReader
from imgvec.sources.s3 import S3Bucket, S3Connection


def is_s3_location(location: str) -> bool:
    """``s3://bucket/prefix`` is a bucket; anything else is a local (or mounted) folder."""
    return location.startswith("s3://")


def open_source(location: str, s3: S3Connection | None = None, *, follow_external: bool = False) -> Source:
    if is_s3_location(location):
        return S3Bucket(location, s3)
    return LocalFolder(location, follow_external=follow_external)


__all__ = [
    "IMAGE_EXTENSIONS",
    "LocalFolder",
    "LocationReader",
    "ObjectLocation",
    "S3Bucket",
    "S3Connection",
    "Source",
    "SourceItem",
    "is_s3_location",
    "open_source",
    "parse_s3_url",
]
