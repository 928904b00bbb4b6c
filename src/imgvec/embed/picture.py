"""What a picture says about itself (``documents.Picture``): its upright size and capture time from the header, and
its perceptual hash from the pixels the pipeline decoded anyway. Nothing here decodes a pixel of its own."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from PIL import Image

from imgvec.documents import Picture, signed_hash
from imgvec.embed.perceptual import phash

ORIENTATION = 0x0112
EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
TRANSPOSED = frozenset({5, 6, 7, 8})
"""EXIF orientations that turn the picture a quarter: its upright width is the stored height."""
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


class Header:
    """Read from a just-opened image (``decode.open_image``), before a reduced decode changes its size."""

    __slots__ = ("height", "taken_at", "width")

    def __init__(self, image: Image.Image) -> None:
        width, height = image.size
        try:
            exif = image.getexif()
        except Exception:  # noqa: BLE001 - a broken EXIF block costs the capture time, never the picture
            exif = None
        if exif is not None and exif.get(ORIENTATION) in TRANSPOSED:
            width, height = height, width
        self.width = width
        self.height = height
        self.taken_at = _taken_at(exif) if exif is not None else None

    def picture(self, decoded: Image.Image) -> Picture:
        """With the hash of the upright decoded pixels (``decode.decode_opened``)."""
        return Picture(signed_hash(phash(decoded)), self.width, self.height, self.taken_at)


def _taken_at(exif: Image.Exif) -> datetime | None:
    try:
        details = exif.get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001
        return None
    raw = details.get(DATE_TIME_ORIGINAL)
    match = _EXIF_DATE.match(raw.strip()) if isinstance(raw, str) else None
    if match is None:  # absent, or "0000:00:00 00:00:00" as some cameras write when their clock is unset
        return None
    try:
        wall = datetime(*(int(part) for part in match.groups()))
    except ValueError:
        return None
    offset = _OFFSET.match(str(details.get(OFFSET_TIME_ORIGINAL) or "").strip())
    if offset is None:
        return wall.replace(tzinfo=UTC)
    sign = -1 if offset.group(1) == "-" else 1
    shift = timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3)))
    return wall.replace(tzinfo=timezone(sign * shift)).astimezone(UTC)
