"""The SQLite catalog: one database file describing every stored SOP instance.

Theory of operation: :class:`SqliteCatalog` implements the :class:`~storage.Catalog`
port over table ``instances``, one row per SOP Instance UID, in the columns of
:class:`~storage.InstanceRecord`. Rows are only ever written by
:meth:`SqliteCatalog.apply`, which stores a batch of records *and* the journal offsets
they were read up to in one transaction, so replaying a journal after a crash neither
loses nor doubles a row (``INSERT OR REPLACE`` makes a replay of the same record
idempotent as well).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is durable once the WAL
is synced at checkpoint, and a crash loses at most the last transactions -- which the
journal replays; before a journal segment is deleted, :meth:`SqliteCatalog.sync` syncs
the WAL, so nothing it held can be lost afterwards. One connection per process; a
read-only one (metrics) never creates or changes anything. The database never decides
where files live, it records the paths the writer chose. This is the only module that
imports ``sqlite3``: every ``sqlite3.Error`` leaves it as a
:class:`~storage.CatalogError`.
"""

from __future__ import annotations

import contextlib
import operator
import json
import os
import pathlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence

from ._integrity import FileCheck, resolve, uids
from ._ports import FIND_KEYS, NO_PROGRESS, CatalogBusy, CatalogCorrupt, CatalogError
from ._query import CatalogQuery
from ._record import IndexStats, InstanceRecord
from ._sqlquery import page_statement, row_dict

__all__ = ["SqliteCatalog", "SCHEMA"]

_COLUMNS = InstanceRecord.__struct_fields__

#: The schema version this module writes (``PRAGMA user_version``). 0 is the first
#: layout (no version recorded); 2 renames ``sha256`` to ``digest`` and adds the
#: record's version-2 fields, the node column and the query indexes; 3 adds the record's
#: ``calling_address`` and ``specific_character_set``.
SCHEMA_VERSION = 3

#: The whole schema, applied idempotently at open.
#:  - ``instances``: one row per SOP instance (PS3.3 C.12.1 SOP Instance UID is unique),
#:    the columns of :class:`InstanceRecord` in the same order, then ``node``: the node
#:    whose storage holds the file (one node writes a SQLite catalog);
#:  - ``journal_progress``: for each journal segment, the byte offset up to which its
#:    records are in ``instances`` (written in the same transaction as those rows);
#:  - views ``studies``, ``series``, ``patients``: aggregates for browsing, computed on
#:    read (no triggers to keep in step).
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    patient_id          TEXT,
    patient_name        TEXT,
    modality            TEXT,
    study_date          TEXT,
    instance_number     TEXT,
    transfer_syntax_uid TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    digest              TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    called_ae           TEXT NOT NULL,
    received_at         REAL NOT NULL,
    generation          INTEGER NOT NULL DEFAULT 0,
    digest_algorithm    TEXT NOT NULL DEFAULT 'sha256',
    study_time          TEXT,
    accession_number    TEXT,
    study_id            TEXT,
    study_description   TEXT,
    referring_physician_name TEXT,
    patient_birth_date  TEXT,
    patient_sex         TEXT,
    series_number       TEXT,
    series_description  TEXT,
    body_part_examined  TEXT,
    calling_address     TEXT NOT NULL DEFAULT '',
    specific_character_set TEXT,
    node                TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS journal_progress (
    journal TEXT PRIMARY KEY NOT NULL,
    offset  INTEGER NOT NULL
);
"""

#: Indexes and views, created after any migration (their columns exist by then).
_DERIVED = """
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_instance_uid);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id);
CREATE INDEX IF NOT EXISTS instances_patient_name ON instances (patient_name);
CREATE INDEX IF NOT EXISTS instances_patient_name_ci ON instances (patient_name COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS instances_study_date ON instances (study_date);
CREATE INDEX IF NOT EXISTS instances_accession ON instances (accession_number);
CREATE INDEX IF NOT EXISTS instances_received ON instances (received_at);
CREATE VIEW IF NOT EXISTS studies AS
    SELECT study_instance_uid,
           MAX(patient_id) AS patient_id,
           MAX(patient_name) AS patient_name,
           MAX(study_date) AS study_date,
           COUNT(DISTINCT series_instance_uid) AS series,
           COUNT(*) AS instances,
           SUM(size) AS bytes,
           MAX(received_at) AS last_received_at
    FROM instances GROUP BY study_instance_uid;
CREATE VIEW IF NOT EXISTS series AS
    SELECT series_instance_uid,
           MAX(study_instance_uid) AS study_instance_uid,
           MAX(modality) AS modality,
           COUNT(*) AS instances,
           SUM(size) AS bytes,
           MAX(received_at) AS last_received_at
    FROM instances GROUP BY series_instance_uid;
CREATE VIEW IF NOT EXISTS patients AS
    SELECT patient_id,
           MAX(patient_name) AS patient_name,
           COUNT(DISTINCT study_instance_uid) AS studies,
           COUNT(*) AS instances,
           SUM(size) AS bytes
    FROM instances GROUP BY patient_id;
"""

#: Columns version 2 added to a version-0 table, with their declarations.
_V2_COLUMNS = (
    ("generation", "INTEGER NOT NULL DEFAULT 0"),
    ("digest_algorithm", "TEXT NOT NULL DEFAULT 'sha256'"),
    *((name, "TEXT") for name in (
        "study_time", "accession_number", "study_id", "study_description",
        "referring_physician_name", "patient_birth_date", "patient_sex", "series_number",
        "series_description", "body_part_examined",
    )),
    ("node", "TEXT NOT NULL DEFAULT ''"),
)

#: Columns version 3 added.
_V3_COLUMNS = (("calling_address", "TEXT NOT NULL DEFAULT ''"), ("specific_character_set", "TEXT"))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction (no data moves:
    version 2 renames one column and adds others with their defaults, version 3 adds two
    columns with their defaults)."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"index schema version {version} is newer than this scpfleet supports "
            f"({SCHEMA_VERSION}); upgrade scpfleet or use another index"
        )
    if version == SCHEMA_VERSION:
        db.executescript(_DERIVED)
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
        if "sha256" in columns and "digest" not in columns:
            db.execute("ALTER TABLE instances RENAME COLUMN sha256 TO digest")
        for name, declaration in (*_V2_COLUMNS, *_V3_COLUMNS):
            if name not in columns:
                db.execute(f"ALTER TABLE instances ADD COLUMN {name} {declaration}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.executescript(_DERIVED)


#: The page size of a new index file (SQLite's default is 4096). Measured on the node
#: (2 workers, tiny instances): 1.6 to 0.7 ``pwrite`` per instance, 4% less CPU per
#: instance; C-FIND latency over a million rows unchanged.
_PAGE_SIZE = 16384
#: A writer's page cache, in KiB (SQLite's default is 2000 KiB, 125 pages of 16 KiB),
#: and the WAL size, in pages, at which a commit checkpoints it into the database
#: (default 1000). With many studies arriving at once, each batch's rows land on leaf
#: pages scattered over the eight query indexes: with the defaults those pages are read
#: back and the WAL checkpointed ever more often. ``python -m bench.indexcost`` (32
#: studies in flight, batches of 160): 0.53x the defaults' CPU per row over a million
#: rows, 36.9 against 69.6 us; one study at a time 0.94x. On a fresh index a row costs
#: about 0.5 us more (a larger WAL is a little slower to look pages up in). The WAL
#: grows to 64 MiB between checkpoints.
_WRITER_CACHE_KIB = 64 * 1024
_WAL_AUTOCHECKPOINT_PAGES = 4000

_INSERT = (f"INSERT OR REPLACE INTO instances ({', '.join(_COLUMNS)}, node) "
           f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})")
_PROGRESS = "INSERT OR REPLACE INTO journal_progress (journal, offset) VALUES (?, ?)"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM instances"
# Bound parameters per statement: SQLite's default limit is 999 in older builds.
_MAX_PARAMETERS = 500
# A writer holding the database (another process's batch) is waited for this long
# before SQLITE_BUSY surfaces: batches commit in milliseconds, 10 s means trouble.
_BUSY_TIMEOUT_S = 10.0
# Primary result codes (https://www.sqlite.org/rescode.html) that have an error of their own.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26


_fields = operator.attrgetter(*_COLUMNS)


def _catalog_error(exc: sqlite3.Error, at_open: bool = False) -> CatalogError:
    """The port's error for a driver error. At open, any database error that is not
    operational (locked, cannot open) means the file is no SQLite database."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or (
        at_open and isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
    ):
        error: CatalogError = CatalogCorrupt(str(exc))
    elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        error = CatalogBusy(str(exc))
    else:
        error = CatalogError(str(exc))
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _catalog_error(exc) from exc


class SqliteCatalog:
    """The SQLite catalog at ``path`` (created with :data:`SCHEMA` when new, unless
    ``read_only``). ``timeout_s``: how long to wait for another writer (default 10 s).
    Raises :class:`~storage.CatalogCorrupt` when the file is not an SQLite database."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        timeout_s: float | None = None,
        node: str = "",
    ) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        #: The node whose files this catalog's rows describe (the ``node`` column).
        self.node = node
        busy_ms = int((_BUSY_TIMEOUT_S if timeout_s is None else timeout_s) * 1000)
        self._busy_ms = busy_ms
        db = None
        try:
            if read_only:
                uri = pathlib.Path(self.path).resolve().as_uri() + "?mode=ro"
                db = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                db = sqlite3.connect(self.path, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if read_only:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version != SCHEMA_VERSION:
                    raise CatalogError(
                        f"index schema version {version}, this scpfleet reads {SCHEMA_VERSION}: "
                        "start the node once to upgrade it" if version < SCHEMA_VERSION else
                        f"index schema version {version} is newer than this scpfleet supports"
                    )
            else:
                # Only a new file takes it (an existing one keeps its page size). Fewer,
                # larger pages per batch: with eight indexes on the table a commit of a
                # few dozen rows writes about half the pages it would at 4 KiB.
                db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute(f"PRAGMA cache_size = -{_WRITER_CACHE_KIB}")
                db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
                _migrate(db)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise _catalog_error(exc, at_open=True) from exc
        except CatalogError:
            if db is not None:
                db.close()
            raise
        self._db = db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply(
        self,
        records: Iterable[InstanceRecord],
        progress: Mapping[str, int] = NO_PROGRESS,
        files: FileCheck | None = None,
    ) -> None:
        """Store ``records`` and the journal offsets in ``progress`` in one transaction.

        Either all of them are committed or none is, which is what makes journal replay
        exactly-once: the offsets say how far the rows already reflect each journal.
        With ``files``, the batch is decided by :func:`~storage.resolve` against the
        rows it meets, inside the transaction (``BEGIN IMMEDIATE`` serialises every
        writer, so no two decisions interleave), and losing copies are moved away
        before the commit (a crash in between is healed by replaying the same batch).
        """
        db = self._db
        records = list(records)
        with _translated():
            db.execute("BEGIN IMMEDIATE")
            try:
                if files is not None:
                    records = self._resolve(records, files)
                node = (self.node,)
                db.executemany(_INSERT, [_fields(r) + node for r in records])
                if progress:
                    db.executemany(_PROGRESS, progress.items())
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def _resolve(self, records: list[InstanceRecord], files: FileCheck) -> list[InstanceRecord]:
        existing = {}
        wanted = uids(records)
        for start in range(0, len(wanted), _MAX_PARAMETERS):
            chunk = wanted[start:start + _MAX_PARAMETERS]
            marks = ", ".join("?" * len(chunk))
            for row in self._db.execute(f"{_SELECT} WHERE sop_instance_uid IN ({marks})", chunk):
                record = InstanceRecord(*row)
                existing[record.sop_instance_uid] = record
        if not existing and len(wanted) == len(records):
            return records  # every instance new and once: nothing to decide
        written, superseded = resolve(records, existing, files)
        for record in superseded:
            files.supersede(record)
        return written

    def progress(self, journal: str) -> int:
        """Byte offset up to which ``journal``'s records are indexed (0 when unknown)."""
        with _translated():
            row = self._db.execute("SELECT offset FROM journal_progress WHERE journal = ?", (journal,)).fetchone()
        return int(row[0]) if row else 0

    def journal_progress(self) -> dict[str, int]:
        with _translated():
            return {str(j): int(o) for j, o in self._db.execute("SELECT journal, offset FROM journal_progress")}

    def forget_journal(self, journal: str) -> None:
        """Drop the progress row of a retired journal segment."""
        with _translated():
            self._db.execute("DELETE FROM journal_progress WHERE journal = ?", (journal,))

    def sync(self) -> None:
        """``synchronous=NORMAL`` syncs the WAL only at checkpoints: fsync it, and the
        database file, now (what ``synchronous=FULL`` would do at every commit)."""
        for path in (self.path + "-wal", self.path):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # no WAL: everything committed is in the database file
            except OSError as exc:
                raise CatalogError(f"cannot sync the index: {exc}") from exc
            try:
                os.fsync(fd)
            except OSError as exc:
                raise CatalogError(f"cannot sync the index: {exc}") from exc
            finally:
                os.close(fd)

    def count(self) -> int:
        with _translated():
            return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        with _translated():
            row = self._db.execute(f"{_SELECT} WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return InstanceRecord(*row) if row else None

    def contains(self, sop_instance_uid: str) -> bool:
        with _translated():
            row = self._db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return row is not None

    def remove(self, sop_instance_uids: Iterable[str]) -> int:
        wanted = list(sop_instance_uids)
        removed = 0
        with _translated():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(wanted), _MAX_PARAMETERS):
                    chunk = wanted[start:start + _MAX_PARAMETERS]
                    marks = ", ".join("?" * len(chunk))
                    removed += self._db.execute(
                        f"DELETE FROM instances WHERE sop_instance_uid IN ({marks})", chunk).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        return removed

    def list(self, limit: int = 100, study: str | None = None) -> list[InstanceRecord]:
        """Up to ``limit`` records, most recently received first, optionally of one study."""
        with _translated():
            if study is None:
                rows = self._db.execute(f"{_SELECT} ORDER BY received_at DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute(
                    f"{_SELECT} WHERE study_instance_uid = ? ORDER BY received_at DESC LIMIT ?", (study, limit)
                ).fetchall()
        return [InstanceRecord(*row) for row in rows]

    def find(self, filters: Mapping[str, str | Sequence[str]], limit: int | None = None) -> Iterator[InstanceRecord]:
        """Records matching every filter, by SOP Instance UID (see :meth:`Catalog.find`).

        A list is passed as one JSON array parameter (``json_each``), so its length is
        not bounded by SQLite's limit on parameters.
        """
        clauses = []
        params: list[object] = []
        for key, value in filters.items():
            if key not in FIND_KEYS:
                raise ValueError(f"cannot match on {key!r}; one of {', '.join(sorted(FIND_KEYS))}")
            if isinstance(value, str):
                clauses.append(f"{key} = ?")
                params.append(value)
                continue
            values = [str(v) for v in value]
            if not values:
                return iter(())
            clauses.append(f"{key} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values))
        sql = _SELECT
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY sop_instance_uid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self._rows(sql, params)

    def _rows(self, sql: str, params: list[object]) -> Iterator[InstanceRecord]:
        with _translated():
            for row in self._db.execute(sql, params):
                yield InstanceRecord(*row)

    def stats(self) -> IndexStats:
        with _translated():
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT study_instance_uid),"
                " COUNT(DISTINCT series_instance_uid), COUNT(DISTINCT NULLIF(patient_id, '')) FROM instances"
            ).fetchone()
        return IndexStats(*(int(v) for v in row))

    def node_stats(self) -> dict[str, IndexStats]:
        """The totals of each ``node`` value (one, normally: a SQLite index is one node's)."""
        with _translated():
            rows = self._db.execute(
                "SELECT node, COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT study_instance_uid),"
                " COUNT(DISTINCT series_instance_uid), COUNT(DISTINCT NULLIF(patient_id, ''))"
                " FROM instances GROUP BY node ORDER BY node"
            ).fetchall()
        return {str(row[0]): IndexStats(*(int(v) for v in row[1:])) for row in rows}

    def query(self, query: CatalogQuery) -> _QueryCursor:
        """The rows answering ``query``, page by page (see :class:`~storage.QueryCursor`).

        The cursor reads through a read-only connection of its own, opened on its first
        :meth:`~_QueryCursor.fetch`, so it may be read from a worker thread while this
        catalog's connection stays with its owner; each page is one statement
        (:func:`~storage._sqlquery.page_statement`). A catalog in memory has no file to
        open a second connection to: its cursor uses the catalog's own connection and
        must be read from the catalog's thread.
        """
        if not isinstance(query, CatalogQuery):
            raise TypeError(f"not a CatalogQuery: {query!r}")
        shared = self._db if self.path in ("", ":memory:") else None
        return _QueryCursor(self.path, query, shared, self._busy_ms)


class _QueryCursor:
    """One query's pages over its own read-only connection (a :class:`~storage.QueryCursor`)."""

    __slots__ = ("path", "query", "_db", "_shared", "_busy_ms", "_after", "_started", "_done")

    def __init__(self, path: str, query: CatalogQuery, shared: sqlite3.Connection | None, busy_ms: int) -> None:
        self.path = path
        self.query = query
        self._shared = shared
        self._db: sqlite3.Connection | None = shared
        self._busy_ms = busy_ms
        self._after: object = None
        self._started = False
        self._done = False

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            uri = pathlib.Path(self.path).resolve().as_uri() + "?mode=ro"
            try:
                db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            except sqlite3.Error as exc:
                raise _catalog_error(exc) from exc
            self._db = db
        return self._db

    def fetch(self, n: int) -> list[dict[str, object]]:
        if self._done or n < 1:
            return []
        query = self.query
        sql, params = page_statement(query, self._after, self._started, n)
        db = self._connect()
        with _translated():
            rows = db.execute(sql, params).fetchall()
        self._started = True
        if len(rows) < n:
            self._done = True
        if rows:
            self._after = rows[-1][query.fields.index(query.key)]
        return [row_dict(query, row) for row in rows]

    def close(self) -> None:
        self._done = True
        db, self._db = self._db, None
        if db is not None and db is not self._shared:
            db.close()

