"""What a picture says about itself (``documents.Picture``): its upright size, capture time, camera and place from
the header, and its perceptual hash from the pixels the pipeline decoded anyway. Nothing here decodes a pixel of its
own. A broken or hostile EXIF block costs the facts it garbles, never the picture."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

from PIL import Image

from imgvec.documents import Picture, signed_hash
from imgvec.embed.perceptual import phash

MAKE = 0x010F
MODEL = 0x0110
ORIENTATION = 0x0112
EXIF_IFD = 0x8769
GPS_IFD = 0x8825
GPS_STATUS = 0x0009
"""'V' (void): the receiver had no fix when the photo was taken, whatever position it wrote."""
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4
CAMERA_NAME_MAX = 64
"""Longer Make/Model strings are garbage (a corrupt block, or padding some firmware writes), not a camera."""
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
TRANSPOSED = frozenset({5, 6, 7, 8})
"""EXIF orientations that turn the picture a quarter: its upright width is the stored height."""
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


class Header:
    """Read from a just-opened image (``decode.open_image``), before a reduced decode changes its size."""

    __slots__ = ("camera_make", "camera_model", "height", "latitude", "longitude", "orientation", "taken_at", "width")

    def __init__(self, image: Image.Image) -> None:
        width, height = image.size
        try:
            exif = image.getexif()
        except Exception:  # noqa: BLE001 - a broken EXIF block costs the capture time, never the picture
            exif = None
        orientation = exif.get(ORIENTATION, 1) if exif is not None else 1
        self.orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
        """EXIF orientation 1-8 (1: stored upright); what a GPU decode lane applies to the pixels."""
        if self.orientation in TRANSPOSED:
            width, height = height, width
        self.width = width
        self.height = height
        self.taken_at = _taken_at(exif) if exif is not None else None
        self.camera_make = _camera_name(exif.get(MAKE)) if exif is not None else None
        self.camera_model = _camera_name(exif.get(MODEL)) if exif is not None else None
        self.latitude, self.longitude = _position(exif) if exif is not None else (None, None)

    def picture(self, decoded: Image.Image) -> Picture:
        """With the hash of the upright decoded pixels (``decode.decode_opened``)."""
        return self.with_hash(phash(decoded))

    def with_hash(self, perceptual_hash: int) -> Picture:
        """With a hash computed elsewhere (a GPU decode lane's, ``perceptual.phash_of_grey``)."""
        return Picture(
            signed_hash(perceptual_hash),
            self.width,
            self.height,
            self.taken_at,
            self.camera_make,
            self.camera_model,
            self.latitude,
            self.longitude,
        )


def _camera_name(raw: object) -> str | None:
    """Make or Model as a person reads it: ASCII padded with NULs and spaces by many firmwares."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        return None
    name = " ".join(raw.replace("\x00", " ").split())
    if not name or len(name) > CAMERA_NAME_MAX or not name.isprintable():
        return None
    return name


def _position(exif: Image.Exif) -> tuple[float | None, float | None]:
    """GPS latitude and longitude in signed degrees, or (None, None): without a fix, out of range, or (0, 0), which
    receivers write when they have none (no photo collection is shot at null island)."""
    try:
        gps = exif.get_ifd(GPS_IFD)
    except Exception:  # noqa: BLE001
        return None, None
    if not gps or str(gps.get(GPS_STATUS) or "").strip().upper() == "V":
        return None, None
    latitude = _degrees(gps.get(GPS_LATITUDE), gps.get(GPS_LATITUDE_REF), "S")
    longitude = _degrees(gps.get(GPS_LONGITUDE), gps.get(GPS_LONGITUDE_REF), "W")
    if latitude is None or longitude is None or not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None, None
    if latitude == 0 and longitude == 0:
        return None, None
    return latitude, longitude


def _degrees(value: object, ref: object, negative: str) -> float | None:
    """EXIF's (degrees, minutes, seconds) rationals → degrees, negative south or west of the reference."""
    try:
        parts = [float(part) for part in value]  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or len(parts) > 3 or not all(math.isfinite(part) and part >= 0 for part in parts):
        return None
    degrees = sum(part / 60**power for power, part in enumerate(parts))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    return -degrees if str(ref or "").strip().upper().startswith(negative) else degrees


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
