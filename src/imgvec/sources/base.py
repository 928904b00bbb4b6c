"""The source protocol: list what is there, read one item. The pipeline knows nothing more of a source."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from imgvec.documents import Failure, SourceItem

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif"})

OnListingError = Callable[[Failure], None]
"""Told of each path the listing could not enter or stat (a ``Failure`` at stage ``list``); the listing goes on."""


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
