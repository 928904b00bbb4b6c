"""The few numbers per document that grouping needs, read from a store's ``scan`` a page at a time.

The id and six numbers a document, never the documents themselves (the memory a million take is in
docs/duplicates.md). The vectors of the ``similar`` kind go to a float16 scratch file that the pair search
reads through a memory map, so they never sit in this process's memory at once.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgvec.stores.base import SearchFilter, Store

FIELDS = ("content_hash", "perceptual_hash", "file_size", "width", "height", "taken_at", "file_path")
NO_TIME = np.iinfo(np.int64).max
"""A capture time nobody has: sorts after every real one, so a dated copy is kept before an undated one."""


@dataclass
class Catalogue:
    ids: pa.Array
    content: np.ndarray
    """The first 64 bits of each content hash (SHA-256), 0 where none; groups are checked on the whole hash."""
    perceptual: np.ndarray
    hashed: np.ndarray
    """Which rows have a perceptual hash (documents stored before imgvec kept one have not, until a run fills it)."""
    size: np.ndarray
    pixels: np.ndarray
    taken: np.ndarray
    """Capture time in µs since 1970 (UTC), ``NO_TIME`` where the picture does not say."""
    path_length: np.ndarray
    vectors: np.ndarray | None = None
    """Unit vectors, float16, memory-mapped from the scratch file (``similar`` only)."""

    def __len__(self) -> int:
        return len(self.ids)


def read_catalogue(
    store: Store, where: SearchFilter | None, *, with_vectors: bool, scratch: Path | None = None
) -> Catalogue:
    """One pass over the index. ``with_vectors``: only documents with a vector, whose vectors are kept (in a file
    under ``scratch``, the system's temporary folder by default, deleted when the catalogue is)."""
    ids: list[pa.Array] = []
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("content", "perceptual", "hashed", "size")}
    columns |= {name: [] for name in ("pixels", "taken", "path_length")}
    spill = _VectorSpill(scratch) if with_vectors else None
    for page in store.scan(FIELDS, where=where, with_vector=with_vectors):
        if not page.num_rows:
            continue
        ids.append(page.column("id").combine_chunks())
        for name, values in _numbers(page).items():
            columns[name].append(values)
        if spill is not None:
            spill.add(page.column("vector"))
    joined = {name: np.concatenate(parts) if parts else np.empty(0, np.int64) for name, parts in columns.items()}
    return Catalogue(
        ids=pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
        vectors=spill.vectors() if spill is not None else None,
        **joined,
    )


def _numbers(page: pa.Table) -> dict[str, np.ndarray]:
    def integers(name: str, missing: int = 0) -> np.ndarray:
        return pc.fill_null(page.column(name).cast(pa.int64()), missing).to_numpy()

    content = pc.utf8_slice_codeunits(pc.fill_null(page.column("content_hash"), ""), 0, 16).to_pylist()
    taken = page.column("taken_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return {
        "content": np.array([int(h, 16) if len(h) == 16 else 0 for h in content], dtype=np.uint64).view(np.int64),
        "perceptual": integers("perceptual_hash"),
        "hashed": page.column("perceptual_hash").is_valid().to_numpy(zero_copy_only=False),
        "size": integers("file_size"),
        "pixels": integers("width") * integers("height"),
        "taken": pc.fill_null(taken, NO_TIME).to_numpy(),
        "path_length": pc.fill_null(pc.utf8_length(page.column("file_path")), 0).to_numpy().astype(np.int32),
    }


class _VectorSpill:
    def __init__(self, scratch: Path | None) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="imgvec-duplicates-", dir=scratch)
        self._path = Path(self._folder.name) / "vectors.f16"
        self._file = self._path.open("wb")
        self._dimension = 0
        self._rows = 0

    def add(self, column: pa.ChunkedArray) -> None:
        values = column.combine_chunks()
        self._dimension = values.type.list_size
        block = values.flatten().to_numpy().reshape(len(values), self._dimension).astype(np.float32)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        self._file.write(block.astype(np.float16).tobytes())
        self._rows += len(values)

    def vectors(self) -> np.ndarray:
        self._file.close()
        if not self._rows:
            return np.empty((0, 0), np.float16)
        mapped = np.memmap(self._path, dtype=np.float16, mode="r", shape=(self._rows, self._dimension))
        mapped._imgvec_scratch = self._folder  # type: ignore[attr-defined] # the folder lives as long as the map
        return mapped
