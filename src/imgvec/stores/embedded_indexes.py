"""The indexes of an embedded table: when to build which, and how a query uses them.

Below ``VECTOR_INDEX_MIN_ROWS`` an exact scan is fast and never wrong; above it, IVF. Scalar indexes on ``id`` and
``content_hash`` serve the skip checks and the content cache once a table is large enough for a scan to hurt; those
on the filtered fields (``FILTER_INDEXES``) let a filtered search read only the rows that match.
Sizes and recall are measured by benchmarks/store.py (docs/architecture.md).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import lancedb.table
    from lancedb.index import IndexConfig

VECTOR_INDEX_MIN_ROWS = 100_000
"""Below this an exact scan is fast enough and never wrong; above it, build IVF."""
SQ_INDEX_MAX_ROWS = 2_000_000
"""IVF_SQ (8-bit scalars, a quarter of the vectors' size, re-ranked exactly) up to here; IVF-PQ with exact re-rank
above. Tables indexed by an older imgvec keep their IVF_FLAT index, searched as before."""
ID_INDEX_MIN_ROWS = 10_000
PROBE_SHARE = 0.04
"""Share of the √n IVF partitions each query probes (recall measured by benchmarks/store.py, docs/architecture.md)."""
PQ_REFINE_FACTOR = 50
SQ_REFINE_FACTOR = 4
"""IVF_SQ's candidates re-ranked on the exact vectors: what the quantisation costs in recall, back for about a
millisecond (benchmarks/search.py --sweep; figures in docs/performance.md)."""
FILTER_REFERENCE_SHARE = 0.25
"""A filter keeping at least this share of the rows is searched with the unfiltered probe count (its recall is the
unfiltered one: docs/performance.md); a rarer one probes proportionally more partitions."""
FILTER_INDEXES = {
    "file_extension": "bitmap",
    "camera_make": "bitmap",
    "camera_model": "bitmap",
    "taken_at": "btree",
    "latitude": "btree",
    "longitude": "btree",
}
"""Few distinct values: a bitmap; ranges: a B-tree (lancedb's advice, and what the filtered benchmark measured)."""

Query = TypeVar("Query")
log = logging.getLogger(__name__)


def build_missing_indexes(table: lancedb.table.Table) -> None:
    """After a compaction: the scalar indexes once the table is large enough, the vector index once enough rows
    have vectors (built once; later optimizes fold new rows into it)."""
    from lancedb.index import Bitmap, BTree

    indexed = {tuple(ix.columns) for ix in table.list_indices()}
    if table.count_rows() >= ID_INDEX_MIN_ROWS:
        # skip checks and the content cache look rows up by id and content_hash; searches filter by the rest
        kinds = {"id": "btree", "content_hash": "btree", **FILTER_INDEXES}
        for column, kind in kinds.items():
            if (column,) not in indexed and column in table.schema.names:
                table.create_index(column, config=Bitmap() if kind == "bitmap" else BTree(), replace=True)
    with_vector = table.count_rows("vector IS NOT NULL")
    if ("vector",) not in indexed and with_vector >= VECTOR_INDEX_MIN_ROWS:
        build_vector_index(table, with_vector)


def build_vector_index(table: lancedb.table.Table, rows: int) -> None:
    """IVF with ~sqrt(n) partitions: SQ (a byte a dimension, re-ranked exactly at query time) while its copy of the
    vectors is affordable, PQ (64 bytes a vector, re-ranked likewise) beyond that. SQ answers faster than FLAT at the
    same recall, from a quarter of the index (docs/performance.md)."""
    from lancedb.index import IvfPq, IvfSq

    partitions = max(16, int(rows**0.5))
    if rows <= SQ_INDEX_MAX_ROWS:
        config = IvfSq(distance_type="cosine", num_partitions=partitions)
    else:
        dimension = table.schema.field("vector").type.list_size
        sub_vectors = dimension // 8 if dimension % 8 == 0 else 1
        config = IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors)
    try:
        table.create_index("vector", config=config, replace=True)
    except RuntimeError as exc:
        if "non-empty clusters" not in str(exc):
            raise
        # Vectors too alike to partition (thousands of copies of one picture): searches keep scanning every
        # vector, exact and never wrong, and the next optimize tries again with what has been added since.
        log.info("no vector index yet: %s", str(exc).split(": ", 2)[-1][:200])


def tune_search(
    query: Query, table: lancedb.table.Table, index: IndexConfig | None = None, matching: float | None = None
) -> Query:
    """Probe a share of the IVF partitions; re-rank SQ's and PQ's approximate distances on the exact vectors.
    ``matching``: the share of rows a filter keeps, when there is one: the rarer the matches, the more partitions
    are probed, so that the probed ones hold about as many matches as at ``FILTER_REFERENCE_SHARE`` (a rare
    filter's best matches are otherwise left in partitions nobody probed)."""
    index = index or vector_index(table)
    if index is None:
        return query
    partitions = max(1, int(index.num_indexed_rows**0.5))
    probes = max(20, round(PROBE_SHARE * partitions))
    if matching is not None and 0 < matching < FILTER_REFERENCE_SHARE:
        probes = min(partitions, math.ceil(probes * FILTER_REFERENCE_SHARE / matching))
    query = query.nprobes(probes)
    refine = {"IvfSq": SQ_REFINE_FACTOR, "IvfPq": PQ_REFINE_FACTOR}.get(index.index_type)
    return query.refine_factor(refine) if refine else query


def vector_index(table: lancedb.table.Table) -> IndexConfig | None:
    """The table's vector index, or None while the table is searched exactly."""
    return next((ix for ix in table.list_indices() if tuple(ix.columns) == ("vector",)), None)
