"""The run journal: SQLite beside the index, holding each run's progress and metrics, and every failed file.

Per-item success lives in the store itself (each batch is one atomic upsert, and the next run skips files whose
size and mtime match). The journal holds what the store cannot: which files failed and why, and where the
run stands, readable from a second terminal while the run goes on (WAL mode: readers never block the writer).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from imgvec.documents import Failure
from imgvec.errors import UNWRITABLE_HELP, JournalError, reason
from imgvec.pipeline.lock import IndexLock
from imgvec.pipeline.report import Progress

SCHEMA_VERSION = 1
STICKY_STAGES = ("decode", "embed")
"""Failures of the file's own bytes: skipped until the file changes (or ``--retry-failed``)."""
STICKY_SQL = ", ".join(f"'{stage}'" for stage in STICKY_STAGES)
RETRIES_BEFORE_STICKY = 5
"""Runs (or ``--follow`` passes) that try a file whose read or write failed; after that it is skipped like a decode
failure, and its reason says so: a file gone for good is not retried forever."""
GAVE_UP = f" (failed {RETRIES_BEFORE_STICKY} times: skipped until it changes, or --retry-failed)"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    pid INTEGER NOT NULL,
    source TEXT NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    progress TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    uri TEXT PRIMARY KEY,
    file_path TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    file_size INTEGER,
    mtime REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL
);
"""


@dataclass(slots=True)
class RunJournal:
    path: Path
    writable: bool = True
    """False: opened read-only, for commands that only look (``progress``, ``failures``, a dry run)."""
    _db: sqlite3.Connection = field(init=False, repr=False)
    run_id: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.writable:
            self._db = _open_read_only(self.path)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(
                f"cannot write the run state at {self.path} ({reason(exc)}); {UNWRITABLE_HELP}"
            ) from None

    @classmethod
    def for_index(cls, state_dir: Path, index: str) -> RunJournal:
        return cls(state_dir / f"{index}.sqlite")

    @classmethod
    def read_only(cls, path: Path) -> RunJournal:
        return cls(path, writable=False)

    def close(self) -> None:
        self._db.close()

    # -- the run ------------------------------------------------------------------------------------

    def start_run(self, source: str, pid: int, progress: Progress | None = None) -> None:
        """``progress``: what a reader sees until the first save (its mode and source, from the first moment)."""
        now = time.time()
        initial = json.dumps(progress.as_dict()) if progress is not None else "{}"
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO runs (state, pid, source, started_at, updated_at, progress, metrics) "
                "VALUES ('running', ?, ?, ?, ?, ?, '{}')",
                (pid, source, now, now, initial),
            )
        self.run_id = cursor.lastrowid

    def save(self, progress: Progress, metrics: dict[str, Any]) -> None:
        finished = time.time() if progress.state != "running" else None
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET state = ?, updated_at = ?, finished_at = ?, progress = ?, metrics = ? WHERE id = ?",
                (
                    progress.state,
                    time.time(),
                    finished,
                    json.dumps(progress.as_dict()),
                    json.dumps(metrics),
                    self.run_id,
                ),
            )

    def latest(self, lock: IndexLock | None = None) -> tuple[Progress, dict[str, Any]] | None:
        """The newest run; one recorded as running whose lock is free was killed, and reads as interrupted."""
        row = self._db.execute("SELECT state, progress, metrics FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        state, progress_json, metrics_json = row
        progress = Progress(**{k: v for k, v in json.loads(progress_json).items() if k in Progress.__slots__})
        progress.state = state
        if state == "running" and lock is not None and not lock.is_held():
            progress.state = "interrupted"
        return progress, json.loads(metrics_json)

    # -- failures -----------------------------------------------------------------------------------

    def record_failures(self, failures: Iterable[Failure]) -> None:
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO failures (uri, file_path, stage, reason, file_size, mtime, attempts, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT(uri) DO UPDATE SET stage = excluded.stage, "
                f"reason = CASE WHEN failures.attempts + 1 >= {RETRIES_BEFORE_STICKY} "
                f"AND excluded.stage NOT IN ({STICKY_SQL}) THEN excluded.reason || ? ELSE excluded.reason END, "
                "file_size = excluded.file_size, mtime = excluded.mtime, "
                "attempts = failures.attempts + 1, updated_at = excluded.updated_at",
                [(f.key, f.file_path, f.stage, f.reason, f.file_size, f.mtime, now, GAVE_UP) for f in failures],
            )

    def clear_failures(self, uris: Iterable[str]) -> None:
        with self._transaction():
            self._db.executemany("DELETE FROM failures WHERE uri = ?", [(u,) for u in uris])

    def clear_failures_under(self, prefix: str) -> None:
        """A deleted folder's failures go with it: ``imgvec failures`` lists only files that still exist."""
        with self._transaction():
            self._db.execute("DELETE FROM failures WHERE substr(file_path, 1, ?) = ?", (len(prefix), prefix))

    def clear_listing_failures(self, prefix: str, before: float) -> None:
        """Listing failures under ``prefix`` not seen again since ``before``: a complete listing got past them (the
        folder became readable, the FIFO went), so ``imgvec failures`` stops listing them."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM failures WHERE stage = 'list' AND updated_at < ? AND substr(file_path, 1, ?) = ?",
                (before, len(prefix), prefix),
            )

    def known_failures(self, uris: list[str]) -> dict[str, tuple[int | None, float | None]]:
        """uri → (size, mtime) recorded when it failed, for the uris given whose failure belongs to the file's bytes
        (``STICKY_STAGES``), or that failed ``RETRIES_BEFORE_STICKY`` times. A read, write or listing failure comes
        from the environment (a NAS dropped, a cluster restarted): until then the next run tries the file again."""
        found: dict[str, tuple[int | None, float | None]] = {}
        for start in range(0, len(uris), 500):
            chunk = uris[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for uri, size, mtime in self._db.execute(
                f"SELECT uri, file_size, mtime FROM failures WHERE uri IN ({marks}) "
                f"AND (stage IN ({STICKY_SQL}) OR attempts >= {RETRIES_BEFORE_STICKY})",
                chunk,
            ):
                found[uri] = (size, mtime)
        return found

    def failures(self, *, offset: int = 0, limit: int | None = None) -> list[Failure]:
        """By path; ``offset``/``limit`` page through them (the HTTP API never loads millions at once)."""
        return [
            Failure(file_path=p, stage=s, reason=r, uri=u, file_size=z, mtime=m, attempts=a)
            for u, p, s, r, z, m, a in self._db.execute(
                "SELECT uri, file_path, stage, reason, file_size, mtime, attempts FROM failures "
                "ORDER BY file_path LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, offset),
            )
        ]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Read-only, never creating or changing a file. While a run writes (its ``-wal`` file is there) the reader
    shares its WAL; otherwise, and on a read-only mount, the file is opened immutable: a WAL reader would leave
    ``-wal`` and ``-shm`` files behind, and a dry run must write nothing."""
    live = path.with_name(path.name + "-wal").exists()
    for mode in ("ro", "ro&immutable=1") if live else ("ro&immutable=1",):
        try:
            db = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, timeout=30, check_same_thread=False)
            db.execute("SELECT count(*) FROM runs").fetchone()
            return db
        except sqlite3.Error as exc:
            error = exc
    raise JournalError(f"cannot read the run state at {path} ({error})")


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT; a full disk or a read-only file becomes one ``JournalError`` that says so."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _state_error(self._path, exc) from None

    def __exit__(self, exc_type: object, exc: BaseException | None, _traceback: object) -> None:
        if exc is not None:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _state_error(self._path, exc) from None
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            raise _state_error(self._path, error) from None


def _state_error(path: Path, exc: BaseException) -> JournalError:
    return JournalError(f"cannot write the run state at {path} ({reason(exc)}); {UNWRITABLE_HELP}")
