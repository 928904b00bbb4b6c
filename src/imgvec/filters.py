"""A search filter from what a person typed, the same for the CLI's flags and the API's query parameters.

Dates are read as the period they name ("2019", "2019-07", "2019-07-14", or an instant), so ``--taken-to 2019``
keeps the whole of 2019; times without an offset are UTC, as capture times without one are stored
(``embed/picture.py``). Camera names are matched to the index's own values by ``resolve_cameras``, without regard
to case, so a person need not know how a firmware capitalised its name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from imgvec.errors import UsageError
from imgvec.stores.base import Circle, Facets, SearchFilter

DEFAULT_WITHIN_KM = 10.0
"""``--near`` without ``--within``: a town and its surroundings."""
MAX_WITHIN_KM = 20_037.5
"""Half the earth's circumference: every point is within it."""
_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")


def build_filter(
    *,
    extensions: Iterable[str] = (),
    path_prefix: str | None = None,
    taken_from: str | None = None,
    taken_to: str | None = None,
    cameras: Iterable[str] = (),
    near: str | None = None,
    within_km: float | None = None,
) -> SearchFilter:
    """Raises ``UsageError`` naming the value and the form it takes. Extensions may be repeated or comma-separated
    (``--ext jpg --ext png``, ``ext=jpg,png``); cameras only repeated, since makers' names hold commas."""
    start = period(taken_from, "--taken-from")[0] if taken_from else None
    end = period(taken_to, "--taken-to")[1] if taken_to else None
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--taken-from {taken_from} is after --taken-to {taken_to}")
    if within_km is not None and not near:
        raise UsageError("--within needs --near LAT,LON")
    circle = None
    if near:
        latitude, longitude = point(near)
        km = DEFAULT_WITHIN_KM if within_km is None else float(within_km)
        if not (math.isfinite(km) and 0 < km <= MAX_WITHIN_KM):
            raise UsageError(f"--within {within_km}: give a distance in km above 0 and at most {MAX_WITHIN_KM:g}")
        circle = Circle(latitude, longitude, km)
    return SearchFilter(
        extensions=_split(extensions),
        path_prefix=path_prefix or None,
        taken_from=start,
        taken_before=end,
        cameras=tuple(dict.fromkeys(name.strip() for name in cameras if name.strip())),
        near=circle,
    )


def period(text: str, flag: str) -> tuple[datetime, datetime]:
    """The [start, end) a date or an instant names, in UTC."""
    text = text.strip()
    match = _PERIOD.match(text)
    try:
        if match is not None:
            year, month, day = (int(part) if part else None for part in match.groups())
            if month is None:
                start = datetime(year, 1, 1, tzinfo=UTC)  # type: ignore[arg-type]
                return start, start.replace(year=start.year + 1)
            if day is None:
                start = datetime(year, month, 1, tzinfo=UTC)  # type: ignore[arg-type]
                return start, (start + timedelta(days=32)).replace(day=1)
            start = datetime(year, month, day, tzinfo=UTC)  # type: ignore[arg-type]
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        return moment, moment + timedelta(seconds=1)
    except (ValueError, OverflowError):  # not a date, or one at the calendar's edge (9999-12, 0001-01-01T00:00+01:00)
        raise UsageError(
            f"{flag} {text!r}: give a year (2019), a month (2019-07), a day (2019-07-14) or an instant "
            "(2019-07-14T18:30:00+02:00)"
        ) from None


def point(text: str) -> tuple[float, float]:
    """``LAT,LON`` in degrees (``48.8584,2.2945``)."""
    parts = text.replace(" ", "").split(",")
    try:
        latitude, longitude = (float(part) for part in parts)
    except ValueError:
        raise UsageError(f"--near {text!r}: give LAT,LON in degrees, e.g. 48.8584,2.2945") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise UsageError(f"--near {text!r}: latitude is within ±90 and longitude within ±180")
    return latitude, longitude


def resolve_cameras(where: SearchFilter, facets: Facets, index: str) -> SearchFilter:
    """The filter with each camera a person named replaced by the index's own spellings of it: a make ("apple"),
    a model ("iphone 12 pro"), or both as the page shows them ("Apple iPhone 12 Pro"). A name the index does not
    hold is an error that lists what it does hold, rather than a search that silently finds nothing."""
    if not where.cameras:
        return where
    known: dict[str, set[str]] = {}
    for camera in facets.cameras:
        for name, values in (
            (camera.make, [camera.make]),
            (camera.model, [camera.model]),
            (camera.name, [camera.model or camera.make]),
        ):
            if name:
                known.setdefault(name.casefold(), set()).update(v for v in values if v)
    resolved: list[str] = []
    for given in where.cameras:
        values = known.get(given.casefold())
        if not values:
            held = ", ".join(camera.name for camera in facets.cameras[:8]) or "no camera at all"
            more = f" and {len(facets.cameras) - 8} more" if len(facets.cameras) > 8 else ""
            raise UsageError(f"no photo in index {index!r} says it was taken with {given!r}; it has {held}{more}")
        resolved.extend(sorted(values))
    return replace(where, cameras=tuple(dict.fromkeys(resolved)))


def _split(values: Iterable[str]) -> tuple[str, ...]:
    parts = [part.strip().lower().lstrip(".") for value in values for part in value.split(",")]
    return tuple(dict.fromkeys(part for part in parts if part))
