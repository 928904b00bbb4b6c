"""Index a source into a store: list → skip unchanged → read → decode → embed in batches → upsert.

Each batch is committed as one atomic upsert, so a run stopped at any moment keeps every batch it finished and
the next run skips those files (same size and mtime). One bad file becomes a ``Failure`` with its stage and
reason; it never stops the run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from imgvec.documents import ImageDocument, document_id
from imgvec.embed.base import Embedder
from imgvec.embed.decode import DEFAULT_MAX_PIXELS, decode_image
from imgvec.errors import ImageDecodeError
from imgvec.sources.base import ListingError, Source, SourceItem
from imgvec.stores.base import Store


@dataclass(frozen=True, slots=True)
class Failure:
    file_path: str
    stage: str
    """list, read, decode, embed or write."""
    reason: str


@dataclass(slots=True)
class IngestReport:
    seen: int = 0
    embedded: int = 0
    unchanged: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class IngestOptions:
    batch_size: int = 32
    decode_threads: int = max(1, min(8, os.cpu_count() or 1))
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int | None = None


ProgressCallback = Callable[[IngestReport], None]
LOOKUP_WINDOW = 1024


@dataclass(slots=True)
class _Prepared:
    item: SourceItem
    pixels: np.ndarray
    content_hash: str


def ingest(
    source: Source,
    store: Store,
    embedder: Embedder,
    options: IngestOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    options = options or IngestOptions()
    store.ensure_index(embedder.identity)  # refuses a model/dimension mismatch before any work is done
    report = IngestReport()
    started = time.monotonic()

    def on_listing_error(error: ListingError) -> None:
        report.failures.append(Failure(error.path, "list", error.reason))

    items = source.scan(on_listing_error)
    if options.max_files is not None:
        items = islice(items, options.max_files)

    with ThreadPoolExecutor(options.decode_threads, thread_name_prefix="imgvec-decode") as pool:
        # Look up a wide window per store query (one query per LOOKUP_WINDOW files, not per batch), then
        # decode and embed the changed files in model-sized batches.
        for window in _batched(items, max(LOOKUP_WINDOW, options.batch_size)):
            report.seen += len(window)
            for batch in _batched(_changed(window, store, report), options.batch_size):
                prepared = []
                for result in pool.map(lambda item: _prepare(source, embedder, item, options.max_pixels), batch):
                    if isinstance(result, Failure):
                        report.failures.append(result)
                    else:
                        prepared.append(result)
                if prepared:
                    _embed_and_write(prepared, store, embedder, report)
                report.seconds = time.monotonic() - started
                if on_progress:
                    on_progress(report)
            report.seconds = time.monotonic() - started
            if on_progress:
                on_progress(report)
    store.optimize()
    report.seconds = time.monotonic() - started
    return report


def _changed(chunk: Sequence[SourceItem], store: Store, report: IngestReport) -> list[SourceItem]:
    known = store.lookup([document_id(item.uri) for item in chunk])
    todo = []
    for item in chunk:
        state = known.get(document_id(item.uri))
        if state and state.has_vector and state.file_size == item.file_size and state.mtime == item.mtime:
            report.unchanged += 1
        else:
            todo.append(item)
    return todo


def _prepare(source: Source, embedder: Embedder, item: SourceItem, max_pixels: int) -> _Prepared | Failure:
    try:
        data = source.read(item)
    except OSError as exc:
        return Failure(item.file_path, "read", f"cannot read file: {exc.strerror or exc}")
    try:
        image = decode_image(data, max_pixels=max_pixels)
        pixels = embedder.preprocessor(image)
    except ImageDecodeError as exc:
        return Failure(item.file_path, "decode", str(exc))
    except (OSError, ValueError, MemoryError) as exc:  # Pillow's last-resort errors on exotic files
        return Failure(item.file_path, "decode", f"cannot decode image: {exc}")
    return _Prepared(item, pixels, hashlib.sha256(data).hexdigest())


def _embed_and_write(prepared: list[_Prepared], store: Store, embedder: Embedder, report: IngestReport) -> None:
    vectors = embedder.embed_images(np.stack([p.pixels for p in prepared]))
    documents = []
    for entry, vector in zip(prepared, vectors, strict=True):
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm < 1e-6:
            report.failures.append(Failure(entry.item.file_path, "embed", "model produced a zero or NaN vector"))
            continue
        documents.append(_document(entry, vector, embedder.identity.model))
    try:
        store.upsert(documents)
    except Exception as exc:  # noqa: BLE001 - the batch is lost, each file recorded; the next run retries
        report.failures.extend(Failure(d.file_path, "write", f"store write failed: {exc}") for d in documents)
        return
    report.embedded += len(documents)


def _document(entry: _Prepared, vector: np.ndarray, model: str) -> ImageDocument:
    item = entry.item
    return ImageDocument(
        file_name=item.file_name,
        file_path=item.file_path,
        file_extension=item.file_extension,
        file_size=item.file_size,
        mtime=item.mtime,
        bucket=item.bucket,
        file_key=item.file_key,
        s3_url=item.s3_url,
        content_hash=entry.content_hash,
        model=model,
        vector=vector,
    )


def _batched(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
