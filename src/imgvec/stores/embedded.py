"""The embedded store: LanceDB tables in a local directory. The default, with nothing to start.

Why LanceDB (figures in docs/architecture.md): every write is an atomic, versioned commit (a killed writer
leaves the last committed version readable), one call does upsert (merge_insert) / delete / filtered k-NN, and
its IVF indexes serve a million 512-dim vectors on a laptop. Rows whose vector is null are the documents
still waiting for one; nulls never take part in a search.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgvec.documents import (
    DOCUMENT_FIELDS,
    PICTURE_FIELDS,
    PICTURE_VERSION,
    ImageDocument,
    Picture,
    StoredFile,
    usable_vector,
)
from imgvec.errors import IdentityMismatchError, IndexNotFoundError, StoreError
from imgvec.identity import IndexIdentity
from imgvec.stores.base import EARTH_RADIUS_KM, Camera, Circle, Facets, IndexStats, SearchFilter, SearchHit, field_types
from imgvec.stores.embedded_indexes import build_missing_indexes, tune_search, vector_index

if TYPE_CHECKING:
    import lancedb
    import lancedb.table
    from lancedb.index import IndexConfig

IDENTITY_KEY = b"imgvec.identity"
ORIGIN_KEY = b"imgvec.migrated_from"
METADATA_CACHE_BYTES = 64 * 2**20
KEEP_VERSIONS_FOR = timedelta(minutes=10)
"""Superseded versions are deleted after this. Lance keeps them 7 days by default, doubling the disk of a
store that is rewritten by compaction; readers here always move to the latest version, so minutes suffice."""
LOOKUP_CHUNK = 2_000
DOCUMENTS_PER_RANGE = 4096
"""``documents()`` reads the index in id ranges of about this many rows, each from the latest version."""
ADDED_COLUMNS = (
    ("etag", pa.string()),
    ("perceptual_hash", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("taken_at", pa.timestamp("us", tz="UTC")),
    ("camera_make", pa.string()),
    ("camera_model", pa.string()),
    ("latitude", pa.float64()),
    ("longitude", pa.float64()),
    ("picture_version", pa.int32()),
    ("hit", pa.string()),
)
"""Columns added after the first schema, in order; older tables get them (all null) when first opened."""
HIT_COLUMN = "hit"
"""Every field of a document but the vector, as one JSON string, written with the fields by the one write path
(``_to_arrow``): what a search returns. Lance takes each column of a result row separately, and a search that took
the twenty-odd field columns of its hits spent most of its time doing so (docs/architecture.md). Not a document
field: reads of the fields never return it (``_field_columns``)."""
EVERY_PARTITION = 1 << 24
"""As many probes as any IVF index has partitions (lance probes what there is): exact among the matching rows."""
_INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _schema(identity: IndexIdentity, migrated_from: str | None = None) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            *(pa.field(name, field_types()[name]) for name in DOCUMENT_FIELDS),
            pa.field("vector", pa.list_(pa.float32(), identity.dimension), nullable=True),
            pa.field(HIT_COLUMN, pa.string()),
        ],
        metadata={IDENTITY_KEY: identity.to_json().encode()}
        | ({ORIGIN_KEY: migrated_from.encode()} if migrated_from else {}),
    )


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class EmbeddedStore:
    def __init__(self, path: str | Path, index: str) -> None:
        if not _INDEX_NAME.match(index):
            raise StoreError(f"invalid index name {index!r}: use letters, digits, '.', '_' and '-'")
        self.path = Path(path).expanduser()
        self.index = index
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"cannot open the embedded store at {self.path}: it is a file, not a directory")
        self._connection: lancedb.DBConnection | None = None
        self._table: lancedb.table.Table | None = None

    def _db(self, *, create: bool = False) -> lancedb.DBConnection | None:
        """Connected lazily: lancedb.connect creates the directory, and reading (status, --dry-run) must not."""
        if self._connection is None:
            if not create and not self.path.is_dir():
                return None
            import lancedb

            try:
                self.path.mkdir(parents=True, exist_ok=True)
                # Without a consistency interval a handle never sees other processes' commits: a long-lived
                # reader (a second terminal, a process that runs for days) would report stale counts forever.
                # Lance caches the metadata of every version it has seen, and an ingest commits one version per
                # batch: uncapped, memory grew with every file (docs/architecture.md). The cap keeps RSS flat; the
                # index cache, which search latency depends on, keeps its default.
                self._connection = lancedb.connect(
                    self.path,
                    read_consistency_interval=timedelta(0),
                    session=lancedb.Session(metadata_cache_size_bytes=METADATA_CACHE_BYTES),
                )
            except OSError as exc:
                raise StoreError(f"cannot open the embedded store at {self.path}: {exc}") from exc
        return self._connection

    # -- identity -----------------------------------------------------------------------------------

    def exists(self) -> bool:
        db = self._db()
        return db is not None and self.index in db.list_tables(limit=1_000_000).tables

    def _open(self) -> lancedb.table.Table:
        if self._table is None:
            if not self.exists():
                raise IndexNotFoundError(
                    f"no index {self.index!r} in the embedded store {self.path}; "
                    f"create it with `imgvec ingest FOLDER` (or pick another with --index)"
                )
            self._table = self._db().open_table(self.index)
        return self._table

    @staticmethod
    def _upgrade(table: lancedb.table.Table) -> None:
        """Add the columns later versions introduced, as nulls, so an index made by an older imgvec keeps working.
        Only writers do this (from ensure_index): a reader never commits, and tolerates the missing columns."""
        for name, kind in ADDED_COLUMNS:
            if name not in table.schema.names:
                table.add_columns(pa.field(name, kind))

    def identity(self) -> IndexIdentity | None:
        if not self.exists():
            return None
        raw = (self._open().schema.metadata or {}).get(IDENTITY_KEY)
        return IndexIdentity.from_json(raw.decode()) if raw else None

    def origin(self) -> str | None:
        raw = (self._open().schema.metadata or {}).get(ORIGIN_KEY)
        return raw.decode() if raw else None

    def verify(self, expected: IndexIdentity | None = None) -> list[str]:
        table = self._open()
        identity = self.identity()
        if identity is None:
            return ["no model identity recorded: imgvec cannot tell which model made its vectors"]
        problems = []
        dimension = table.schema.field("vector").type.list_size
        if dimension != identity.dimension:
            problems.append(f"the vector column has {dimension} dimensions but the identity says {identity.describe()}")
        if expected is not None:
            try:
                identity.require_compatible(expected, action="use")
            except IdentityMismatchError as exc:
                problems.append(str(exc))
        return problems

    def ensure_index(
        self, identity: IndexIdentity, *, migrated_from: str | None = None, config: object | None = None
    ) -> None:
        if config is not None:
            raise StoreError(f"the embedded store takes no index settings (given {type(config).__name__})")
        if self.exists():
            current = self.identity()
            if current is None:
                raise IdentityMismatchError(
                    f"index {self.index!r} has no recorded model identity; imgvec will not guess what its "
                    "vectors mean. Write to a new index."
                )
            current.require_compatible(identity)
            self._upgrade(self._open())
            return
        self._table = self._db(create=True).create_table(self.index, schema=_schema(identity, migrated_from))

    # -- writes -------------------------------------------------------------------------------------

    def upsert(self, documents: Sequence[ImageDocument]) -> dict[str, str]:
        """One atomic commit: all of the documents or, on an error, none of them."""
        if not documents:
            return {}
        table = self._open()
        identity = self.identity()
        batch = self._to_arrow(documents, identity, table.schema)
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            # lancedb reads a null vector as "variable length"; dimensions were checked in _to_arrow, so
            # the only rows this touches are the intended nulls.
            .execute(batch, on_bad_vectors="null")
        )
        return {}

    def delete(self, ids: Sequence[str]) -> None:
        table = self._open()
        for chunk in _chunks(ids, LOOKUP_CHUNK):
            table.delete(f"id IN ({', '.join(_sql_str(i) for i in chunk)})")

    @staticmethod
    def _to_arrow(documents: Sequence[ImageDocument], identity: IndexIdentity | None, schema: pa.Schema) -> pa.Table:
        dimension = schema.field("vector").type.list_size
        block = np.zeros((len(documents), dimension), dtype=np.float32)
        missing = np.ones(len(documents), dtype=bool)
        for row, doc in enumerate(documents):
            if doc.vector is None:
                continue
            vector = np.asarray(doc.vector, dtype=np.float32).reshape(-1)
            if identity is not None:
                identity.require_dimension(vector.shape[0])
            elif vector.shape[0] != dimension:
                raise IdentityMismatchError(f"refusing {vector.shape[0]}-dim vector for a {dimension}-dim index")
            if not usable_vector(vector):
                raise StoreError(f"refusing a zero or non-finite vector for {doc.file_path}")
            block[row] = vector
            missing[row] = False
        rows = [doc.fields() for doc in documents]
        columns: dict[str, Any] = {"id": [doc.id for doc in documents]}
        columns |= {name: [row[name] for row in rows] for name in DOCUMENT_FIELDS if name in schema.names}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(
            pa.array(block.reshape(-1)), dimension, mask=pa.array(missing)
        )
        if HIT_COLUMN in schema.names:
            columns[HIT_COLUMN] = _packed_hits([doc.id for doc in documents], rows, schema.names)
        return pa.table(columns, schema=schema)

    # -- reads --------------------------------------------------------------------------------------

    def lookup(self, ids: Sequence[str]) -> dict[str, StoredFile]:
        if not ids or not self.exists():
            return {}
        table = self._open()
        columns = ["id", "file_size", "mtime", "content_hash", "vector"]
        # an index from before these columns, not yet opened by a writer, lacks them
        columns += [name for name in ("etag", *PICTURE_FIELDS) if name in table.schema.names]
        found: dict[str, StoredFile] = {}
        for chunk in _chunks(ids, LOOKUP_CHUNK):
            rows = (
                table.search()
                .where(f"id IN ({', '.join(_sql_str(i) for i in chunk)})")
                .select(columns)
                .limit(len(chunk))
                .to_arrow()
            )
            vectors = rows.column("vector").is_valid().to_pylist()
            for i, row in enumerate(rows.drop_columns(["vector"]).to_pylist()):
                found[row["id"]] = StoredFile(
                    file_size=row["file_size"],
                    mtime=row["mtime"],
                    content_hash=row["content_hash"],
                    has_vector=vectors[i],
                    etag=row.get("etag"),
                    picture=Picture.of_fields(row),
                )
        return found

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids or not self.exists():
            return {}
        table = self._open()
        columns = _field_columns(table)
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), LOOKUP_CHUNK):
            where = f"id IN ({', '.join(_sql_str(i) for i in chunk)})"
            for row in table.search().where(where).select(columns).limit(len(chunk)).to_arrow().to_pylist():
                found[row["id"]] = row
        return found

    def get(self, doc_id: str) -> tuple[dict[str, Any], np.ndarray | None] | None:
        if not self.exists():
            return None
        table = self._open()
        rows = table.search().where(f"id = {_sql_str(doc_id)}").select([*_field_columns(table), "vector"])
        rows = rows.limit(1).to_arrow()
        if not rows.num_rows:
            return None
        vector = rows.column("vector")[0].values
        fields = rows.drop_columns(["vector"]).to_pylist()[0]
        return fields, None if vector is None else vector.to_numpy(zero_copy_only=False).astype(np.float32)

    def vectors_by_hash(self, content_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        if not content_hashes or not self.exists():
            return {}
        table = self._open()
        found: dict[str, np.ndarray] = {}
        for chunk in _chunks(sorted(set(content_hashes)), LOOKUP_CHUNK):
            rows = (
                table.search()
                .where(f"content_hash IN ({', '.join(_sql_str(h) for h in chunk)}) AND vector IS NOT NULL")
                .select(["content_hash", "vector"])
                .limit(len(chunk) * 4)
                .to_arrow()
            )
            if rows.num_rows:
                vectors = rows.column("vector").combine_chunks().flatten().to_numpy().reshape(rows.num_rows, -1)
                for content_hash, vector in zip(rows.column("content_hash").to_pylist(), vectors, strict=True):
                    found[content_hash] = vector
        return found

    def documents(
        self, *, unfinished: bool = False, where: SearchFilter | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        table = self._open() if self.exists() else None
        if table is None:
            return
        columns = _field_columns(table)
        condition = None
        if unfinished:
            condition = "vector IS NULL"
            if "picture_version" in columns:
                condition += f" OR picture_version IS NULL OR picture_version < {PICTURE_VERSION}"
        for page in self._ranges(table, columns, where, condition):
            for row in page.to_pylist():
                yield row["id"], row

    def scan(
        self, fields: Sequence[str], *, where: SearchFilter | None = None, with_vector: bool = False
    ) -> Iterator[pa.Table]:
        if not self.exists():
            return
        table = self._open()
        present = [name for name in fields if name in table.schema.names]
        columns = ["id", *present, *(["vector"] if with_vector else [])]
        for page in self._ranges(table, columns, where, "vector IS NOT NULL" if with_vector else None):
            for name in fields:
                if name not in present:  # a column an older index lacks reads as nulls
                    page = page.append_column(name, pa.nulls(page.num_rows, field_types()[name]))
            yield page

    @staticmethod
    def _ranges(
        table: lancedb.table.Table, columns: list[str], where: SearchFilter | None, condition: str | None
    ) -> Iterator[pa.Table]:
        """The rows in id ranges, each read from the latest version: a scan pinned to one version for a long
        ``--missing`` run would outlive that version's files once compaction cleans them up."""
        # ~4,096 rows a range: one query for a small index (watch deletes a folder in milliseconds), up to 256
        # for a large one (a page stays small, whatever the size).
        parts = min(256, max(1, table.count_rows() // DOCUMENTS_PER_RANGE))
        bounds = [None, *(f"{i * 256 // parts:02x}" for i in range(1, parts)), None]
        filtered = _filter_sql(where)
        for low, high in itertools.pairwise(bounds):
            clauses = [f"({condition})"] if condition else []
            if filtered:
                clauses.append(filtered)
            if low is not None:
                clauses.append(f"id >= {_sql_str(low)}")
            if high is not None:
                clauses.append(f"id < {_sql_str(high)}")
            query = table.search().select(columns)
            if clauses:
                query = query.where(" AND ".join(clauses))
            yield query.limit(None).to_arrow()

    def copy_from(self, origin_index: str) -> int:
        """Inserts the documents this index lacks; returns how many that was."""
        table = self._open()
        copied = 0
        rows: list[dict[str, Any]] = []
        for _, row in EmbeddedStore(self.path, origin_index).documents():
            rows.append(row)
            if len(rows) >= LOOKUP_CHUNK:
                copied += self._insert_rows(table, rows)
                rows = []
        return copied + self._insert_rows(table, rows)

    def change_mark(self) -> dict[str, int] | None:
        return None  # every writer of an embedded index is an imgvec run holding its lock: migrate refuses then

    def copy_changes(self, origin_index: str, since: dict[str, int]) -> int:
        raise StoreError("the embedded store keeps no change marks: its writers hold the index's lock")

    @staticmethod
    def _insert_rows(table: lancedb.table.Table, rows: list[dict[str, Any]]) -> int:
        if rows:
            names = table.schema.names
            batch = pa.Table.from_pylist([{n: r.get(n) for n in names if n != "vector"} for r in rows])
            if HIT_COLUMN in names:  # the origin's fields, as the write path would have packed them
                hits = pa.array(_packed_hits([r["id"] for r in rows], rows, names), pa.string())
                batch = batch.set_column(batch.schema.get_field_index(HIT_COLUMN), HIT_COLUMN, hits)
            batch = batch.append_column("vector", pa.nulls(len(rows), table.schema.field("vector").type))
            batch = batch.select(names)  # the table's column order (``hit`` follows ``vector`` in a new table)
            # insert only: a re-run of a migration must not wipe the vectors it has filled in since
            merge = table.merge_insert("id").when_not_matched_insert_all()
            return int(merge.execute(batch.cast(table.schema), on_bad_vectors="null").num_inserted_rows)
        return 0

    def search(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> list[SearchHit]:
        table = self._open()
        identity = self.identity()
        query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if identity is not None:
            identity.require_dimension(query_vector.shape[0])
        condition = _filter_sql(where)
        packed = HIT_COLUMN in table.schema.names
        columns = ["id", HIT_COLUMN] if packed else _field_columns(table)
        index = vector_index(table)
        # how many match, roughly (a place by its bounding box, which its indexes count at once): it sizes the probes
        matching = table.count_rows(_filter_sql(where, rough=True)) if condition and index is not None else None
        if matching == 0:
            return []
        share = matching / max(1, index.num_indexed_rows) if matching is not None and index is not None else None
        rows = self._nearest(table, query_vector, k, condition, columns, index, share)
        if matching is not None and rows.num_rows < min(k, matching):
            # the probed partitions held fewer than k of the matches: every partition (exact among the matches)
            rows = self._nearest(table, query_vector, k, condition, columns, index, share, every_partition=True)
        found = rows.to_pylist()
        unpacked = self.get_many([row["id"] for row in found if packed and row[HIT_COLUMN] is None])
        hits = []
        for row in found:
            if packed:  # a row written before the column existed has none: its fields, read the slow way
                document = json.loads(row[HIT_COLUMN]) if row[HIT_COLUMN] is not None else unpacked[row["id"]]
            else:
                document = {name: row[name] for name in columns}
            hits.append(SearchHit(id=row["id"], score=1.0 - float(row["_distance"]), document=document))
        return hits

    @staticmethod
    def _nearest(
        table: lancedb.table.Table,
        vector: np.ndarray,
        k: int,
        condition: str | None,
        columns: list[str],
        index: IndexConfig | None,
        share: float | None,
        *,
        every_partition: bool = False,
    ) -> pa.Table:
        """Filtered or not, through the IVF index once there is one: a filter is applied to the probed partitions'
        rows through the scalar indexes (an exact scan of the matching rows instead reads the whole vector column:
        docs/architecture.md)."""
        query = table.search(vector, vector_column_name="vector").distance_type("cosine")
        query = tune_search(query, table, index, share)
        if every_partition:
            query = query.nprobes(EVERY_PARTITION)
        if condition:
            query = query.where(condition, prefilter=True)
        return query.select(columns).limit(k).to_arrow()

    def stats(self) -> IndexStats:
        identity = self.identity()
        table = self._open()
        return IndexStats(
            index=self.index,
            documents=table.count_rows(),
            with_vector=table.count_rows("vector IS NOT NULL"),
            dimension=identity.dimension if identity else table.schema.field("vector").type.list_size,
            model=identity.model if identity else None,
            random_weights=bool(identity and identity.random_weights),
        )

    def facets(self) -> Facets:
        table = self._open()
        present = set(table.schema.names)
        wanted = ["file_extension", "camera_make", "camera_model", "taken_at", "latitude"]
        columns = [name for name in wanted if name in present]
        counts: dict[str, Counter[Any]] = {"ext": Counter(), "camera": Counter()}
        first = last = None
        located = 0
        for page in self._ranges(table, columns, None, None):
            page = _with_nulls(page, wanted)
            counts["ext"].update(page.column("file_extension").to_pylist())
            makes, models = page.column("camera_make").to_pylist(), page.column("camera_model").to_pylist()
            counts["camera"].update(pair for pair in zip(makes, models, strict=True) if pair != (None, None))
            taken = pc.min_max(page.column("taken_at"))
            if taken["min"].is_valid:
                low, high = taken["min"].as_py(), taken["max"].as_py()
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
            located += page.num_rows - page.column("latitude").null_count
        return Facets(
            cameras=tuple(Camera(make, model, n) for (make, model), n in counts["camera"].most_common()),
            taken_first=first,
            taken_last=last,
            extensions=tuple((ext, n) for ext, n in counts["ext"].most_common() if ext),
            located=located,
        )

    # -- housekeeping -------------------------------------------------------------------------------

    def optimize(self) -> None:
        table = self._open()
        table.optimize(cleanup_older_than=KEEP_VERSIONS_FOR)  # compacts, folds new rows into indexes
        build_missing_indexes(table)
        # A fresh connection (and Lance session) after each compaction. Lance keys cache entries by table version
        # and does not evict them when cleanup deletes that version (lance-format/lance#7718), so one session
        # grows with every commit (figures in docs/architecture.md).
        self._table = None
        self._connection = None


def _field_columns(table: lancedb.table.Table) -> list[str]:
    """The id and the document's fields: every column but the vector and the packed ``hit``."""
    return [name for name in table.schema.names if name not in ("vector", HIT_COLUMN)]


def _packed_hits(ids: Sequence[str], rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """The packed ``hit`` column: each id with the fields the table has, timestamps as ISO 8601 text (as OpenSearch
    returns them)."""
    present = [name for name in DOCUMENT_FIELDS if name in names]

    def text(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else value

    return [
        json.dumps({"id": doc_id, **{name: text(row.get(name)) for name in present}}, separators=(",", ":"))
        for doc_id, row in zip(ids, rows, strict=True)
    ]


def _with_nulls(page: pa.Table, names: Sequence[str]) -> pa.Table:
    """A column an older index lacks reads as nulls."""
    for name in names:
        if name not in page.column_names:
            page = page.append_column(name, pa.nulls(page.num_rows, field_types()[name]))
    return page


def _filter_sql(where: SearchFilter | None, *, rough: bool = False) -> str | None:
    """The filter as Lance SQL, each condition in the form its scalar index serves (``embedded_indexes``). ``rough``:
    a place as its bounding box alone, a superset that the indexes count without computing a distance."""
    if where is None:
        return None
    clauses = []
    if where.extensions:
        exts = ", ".join(_sql_str(e.lower().lstrip(".")) for e in where.extensions)
        clauses.append(f"file_extension IN ({exts})")
    if where.path_prefix:
        clauses.append(f"starts_with(file_path, {_sql_str(where.path_prefix)})")
    if where.taken_from is not None:
        clauses.append(f"taken_at >= {_sql_time(where.taken_from)}")
    if where.taken_before is not None:
        clauses.append(f"taken_at < {_sql_time(where.taken_before)}")
    if where.cameras:
        names = ", ".join(_sql_str(name) for name in where.cameras)
        clauses.append(f"(camera_model IN ({names}) OR camera_make IN ({names}))")
    if where.near is not None:
        clauses.append(_circle_sql(where.near, rough=rough))
    return " AND ".join(clauses) or None


def _sql_time(moment: datetime) -> str:
    return f"TIMESTAMP {_sql_str(moment.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f'))}"


def _circle_sql(circle: Circle, *, rough: bool = False) -> str:
    """The bounding box first (a range on two indexed columns), then the haversine distance on what is left."""
    lat, lon = repr(float(circle.latitude)), repr(float(circle.longitude))
    half_chord = (
        f"power(sin(radians(latitude - {lat}) / 2), 2) + "
        f"cos(radians(latitude)) * cos(radians({lat})) * power(sin(radians(longitude - {lon}) / 2), 2)"
    )
    distance = f"2 * {EARTH_RADIUS_KM!r} * asin(sqrt(least({half_chord}, 1.0)))"
    box = circle.bounds()
    if box is None:
        return f"(latitude IS NOT NULL AND {distance} <= {float(circle.km)!r})"
    south, north, west, east = (repr(float(v)) for v in box)
    if rough:
        return f"(latitude >= {south} AND latitude <= {north} AND longitude >= {west} AND longitude <= {east})"
    return (
        f"(latitude >= {south} AND latitude <= {north} AND longitude >= {west} AND longitude <= {east} "
        f"AND {distance} <= {float(circle.km)!r})"
    )


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
