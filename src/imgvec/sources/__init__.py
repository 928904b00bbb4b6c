"""Where images come from. Each source lists items (streaming) and reads one item's bytes."""

from imgvec.sources.base import IMAGE_EXTENSIONS, ListingError, Source, SourceItem
from imgvec.sources.local import LocalFolder

__all__ = ["IMAGE_EXTENSIONS", "ListingError", "LocalFolder", "Source", "SourceItem"]
