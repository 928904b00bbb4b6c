"""`ingest --dry-run`: what a run would do and how long it would take, writing nothing anywhere."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import numpy as np

from imgvec.embed.base import Embedder
from imgvec.embed.decode import decode_image
from imgvec.errors import ImageDecodeError
from imgvec.pipeline.ingest import LOOKUP_WINDOW, IngestOptions, unchanged
from imgvec.pipeline.state import RunState
from imgvec.sources.base import Source, SourceItem
from imgvec.stores.base import Store

CALIBRATION_FILES = 16


@dataclass(slots=True)
class Plan:
    would_process: int = 0
    would_process_bytes: int = 0
    unchanged: int = 0
    known_failures: int = 0
    listing_errors: int = 0
    images_per_second: float | None = None
    rate_basis: str = "none"
    """last-run (the previous run's measured rate) or calibration (a few files decoded and embedded now)."""
    estimated_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    source: Source,
    store: Store,
    embedder: Embedder | None,
    options: IngestOptions,
    state: RunState | None,
) -> Plan:
    """Count what would be processed; estimate the time from the last run's rate, or by calibrating."""
    if store.exists():
        identity = store.identity()
        if identity is not None and embedder is not None:
            identity.require_compatible(embedder.identity)
    result = Plan()
    sample: list[SourceItem] = []

    def on_error(_: object) -> None:
        result.listing_errors += 1

    listing = source.scan(on_error)
    if options.max_files is not None:
        listing = islice(listing, options.max_files)
    while window := list(islice(listing, LOOKUP_WINDOW)):
        stored = store.lookup([i.id for i in window]) if store.exists() else {}
        failed = state.known_failures([i.uri for i in window]) if state and not options.retry_failed else {}
        for item in window:
            if unchanged(stored.get(item.id), item):
                result.unchanged += 1
            elif failed.get(item.uri) == (item.file_size, item.mtime):
                result.known_failures += 1
            else:
                result.would_process += 1
                result.would_process_bytes += item.file_size
                if len(sample) < CALIBRATION_FILES:
                    sample.append(item)

    last = state.latest() if state else None
    if last is not None and last[0].rate > 0:
        result.images_per_second, result.rate_basis = last[0].rate, "last-run"
    elif embedder is not None and sample:
        result.images_per_second, result.rate_basis = _calibrate(source, embedder, sample), "calibration"
    if result.images_per_second:
        result.estimated_seconds = result.would_process / result.images_per_second
    return result


def _calibrate(source: Source, embedder: Embedder, sample: list[SourceItem]) -> float | None:
    """Decode and embed a few real files, one after another (a pessimistic, single-core figure)."""
    began = time.perf_counter()
    pixels = []
    for item in sample:
        try:
            pixels.append(embedder.preprocessor(decode_image(source.read(item))))
        except (OSError, ImageDecodeError):
            continue
    if not pixels:
        return None
    embedder.embed_images(np.stack(pixels))
    return len(pixels) / (time.perf_counter() - began)
