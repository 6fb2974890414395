"""The PostgreSQL catalog: one database describing the instances of every node of a cluster.

Theory of operation: :class:`PostgresCatalog` implements the :class:`~storage.Catalog`
port over table ``instances``, whose rows are keyed by *(node, SOP Instance UID)*: the
same instance stored on two nodes is two files and two rows. A catalog object speaks
for one node (``node``): it writes only that node's rows and journal progress, and
:meth:`~PostgresCatalog.get`, :meth:`~PostgresCatalog.contains`,
:meth:`~PostgresCatalog.find` and :meth:`~PostgresCatalog.remove` see only its rows,
because they are paired with that node's files and journals (recovery, verification,
commitment's file checks). :meth:`~PostgresCatalog.list`,
:meth:`~PostgresCatalog.count`, :meth:`~PostgresCatalog.stats` and
:meth:`~PostgresCatalog.query` answer for the whole cluster. Opened without a node
(``scpfleet ls``/``stats``) a catalog reads everything and writes nothing.

:meth:`~PostgresCatalog.apply` writes a batch and its journal offsets in one
transaction that first takes ``pg_advisory_xact_lock`` on a key derived from the node
id: two indexers of one node never decide batches side by side (the rule
:func:`~storage.resolve` needs), while the nodes of a cluster never wait for each other.
The rows go in by ``COPY`` into a temporary table of the connection, merged with one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE``: at the indexer's batch of 2000 rows,
about 5 times as fast as multi-row ``INSERT ... VALUES`` statements and twice as fast as
a pipelined ``executemany`` (README, "The index on PostgreSQL").

The schema is created by the first node that connects and versioned in table
``schema_version`` (:data:`SCHEMA_VERSION`, the same as SQLite's: the same columns);
every text column has the ``"C"`` collation, so order and ranges are byte order, as in
SQLite, whatever the database's locale. A database whose schema is newer, or that has
an ``instances`` table scpfleet did not make, is refused with a one-line
:class:`~storage.CatalogError`.

Connections are made on demand and made again after a failure, so a catalog outlives a
database restart: one for writes, and a few pooled ones for reads (queries are read
from worker threads). After a failed connection attempt the next one waits
``_RECONNECT_S``, so a caller on an event loop is not held for a connect timeout on
every call while the database is down. PostgreSQL text cannot hold NUL characters: a
value with one is stored with U+FFFD in its place. This is the only module importing
the driver (psycopg 3); every driver error leaves it as a :class:`~storage.CatalogError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as exc:  # pragma: no cover - the optional extra is missing
    raise ImportError("a postgresql:// index needs psycopg: pip install 'scpfleet[postgresql]'") from exc

from ._integrity import FileCheck, resolve, uids
from ._ports import FIND_KEYS, NO_PROGRESS, CatalogBusy, CatalogCorrupt, CatalogError, CatalogUnavailable, redact_url
from ._query import CatalogQuery
from ._record import IndexStats, InstanceRecord
from ._sqlquery import POSTGRESQL, page_statement, row_dict

__all__ = ["PostgresCatalog", "POSTGRES_SCHEMA", "SCHEMA_VERSION"]

_COLUMNS = InstanceRecord.__struct_fields__

#: The schema version this module writes (table ``schema_version``); the columns are
#: those of SQLite's version of the same number. Version 3 adds ``calling_address`` and
#: ``specific_character_set``; a node that finds version 2 adds them (:data:`_UPGRADES`).
SCHEMA_VERSION = 3

_TYPES = {"size": "BIGINT NOT NULL", "received_at": "DOUBLE PRECISION NOT NULL",
          "generation": "BIGINT NOT NULL DEFAULT 0",
          # No NOT NULL: a node of version 2 still running after another upgraded the
          # schema copies its batches into a table made LIKE this one, without the column.
          "calling_address": "TEXT COLLATE \"C\" DEFAULT ''"}
_REQUIRED = frozenset(("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid",
                       "transfer_syntax_uid", "path", "digest", "calling_ae", "called_ae", "digest_algorithm"))


def _column(name: str) -> str:
    if name in _TYPES:
        return f"{name} {_TYPES[name]}"
    return f'{name} TEXT COLLATE "C"' + (" NOT NULL" if name in _REQUIRED else "")


#: The whole schema, created in one transaction by the first node that connects:
#:  - ``instances``: one row per (node, SOP instance), the columns of
#:    :class:`InstanceRecord` in the same order, then ``node``;
#:  - ``journal_progress``: for each node's journal segment, the byte offset up to which
#:    its records are in ``instances`` (written in the same transaction as those rows);
#:  - views ``studies``, ``series``, ``patients`` as in SQLite, over every node.
POSTGRES_SCHEMA = f"""
CREATE TABLE instances (
    {(','.join(chr(10) + '    ' + _column(name) for name in _COLUMNS)).lstrip()},
    node TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (node, sop_instance_uid)
);
CREATE TABLE journal_progress (
    node     TEXT COLLATE "C" NOT NULL,
    journal  TEXT COLLATE "C" NOT NULL,
    "offset" BIGINT NOT NULL,
    PRIMARY KEY (node, journal)
);
CREATE INDEX instances_uid ON instances (sop_instance_uid);
CREATE INDEX instances_study ON instances (study_instance_uid);
CREATE INDEX instances_series ON instances (series_instance_uid);
CREATE INDEX instances_patient ON instances (patient_id);
CREATE INDEX instances_patient_name ON instances (patient_name);
CREATE INDEX instances_patient_name_ci ON instances
    (translate(patient_name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'));
CREATE INDEX instances_study_date ON instances (study_date);
CREATE INDEX instances_accession ON instances (accession_number);
CREATE INDEX instances_received ON instances (received_at);
CREATE VIEW studies AS
    SELECT study_instance_uid,
           MAX(patient_id) AS patient_id,
           MAX(patient_name) AS patient_name,
           MAX(study_date) AS study_date,
           COUNT(DISTINCT series_instance_uid) AS series,
           COUNT(*) AS instances,
           SUM(size) AS bytes,
           MAX(received_at) AS last_received_at
    FROM instances GROUP BY study_instance_uid;
CREATE VIEW series AS
    SELECT series_instance_uid,
           MAX(study_instance_uid) AS study_instance_uid,
           MAX(modality) AS modality,
           COUNT(*) AS instances,
           SUM(size) AS bytes,
           MAX(received_at) AS last_received_at
    FROM instances GROUP BY series_instance_uid;
CREATE VIEW patients AS
    SELECT patient_id,
           MAX(patient_name) AS patient_name,
           COUNT(DISTINCT study_instance_uid) AS studies,
           COUNT(*) AS instances,
           SUM(size) AS bytes
    FROM instances GROUP BY patient_id;
CREATE TABLE schema_version (version INTEGER NOT NULL);
"""

#: From an older version to the next: the statements, run under the schema lock in the
#: transaction that records the new version. Only additions, so older nodes' rows stay.
_UPGRADES = {
    2: ("ALTER TABLE instances ADD COLUMN IF NOT EXISTS calling_address " + _TYPES["calling_address"],
        "ALTER TABLE instances ADD COLUMN IF NOT EXISTS " + _column("specific_character_set")),
}

_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM instances"
# The batch table: one per connection, emptied by every commit (or rollback).
_BATCH_TABLE = "CREATE TEMP TABLE IF NOT EXISTS instances_batch (LIKE instances) ON COMMIT DELETE ROWS"
_COPY = f"COPY instances_batch ({', '.join(_COLUMNS)}, node) FROM STDIN"
_MERGE = (f"INSERT INTO instances ({', '.join(_COLUMNS)}, node) "
          f"SELECT {', '.join(_COLUMNS)}, node FROM instances_batch "
          "ON CONFLICT (node, sop_instance_uid) DO UPDATE SET "
          + ", ".join(f"{name} = EXCLUDED.{name}" for name in _COLUMNS if name != "sop_instance_uid"))
_PROGRESS = ('INSERT INTO journal_progress (node, journal, "offset") VALUES (%s, %s, %s) '
             'ON CONFLICT (node, journal) DO UPDATE SET "offset" = EXCLUDED."offset"')
# Rows per page when find() walks a large answer (keyset pages: no transaction held).
_FIND_PAGE = 5000
# Waits for a lock held by another transaction (the schema's, a node's batch): batches
# commit in milliseconds, 10 s means trouble (as SQLite's busy timeout).
_LOCK_TIMEOUT_S = 10.0
# A server that does not answer the connection within this long is taken as down
# (libpq counts whole seconds, at least 2).
_CONNECT_TIMEOUT_S = 5
# After a failed connection attempt, calls fail at once for this long instead of
# waiting for another connect timeout each.
_RECONNECT_S = 1.0
# Idle read connections kept for queries: a worker reads from two threads at most.
_IDLE_READERS = 4
# TCP keepalive: a server that vanished mid-statement is noticed within ~30 s.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}

_fields = operator.attrgetter(*_COLUMNS)
_T = TypeVar("_T")


def _lock_key(text: str) -> int:
    """A signed 64-bit advisory lock key for ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


_SCHEMA_LOCK = _lock_key("scpfleet schema")


def _catalog_error(exc: BaseException) -> CatalogError:
    if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled, pg_errors.DeadlockDetected,
                        pg_errors.SerializationFailure)):
        error: CatalogError = CatalogBusy(_one_line(exc))
    elif isinstance(exc, (pg_errors.DataCorrupted, pg_errors.IndexCorrupted)):
        error = CatalogCorrupt(_one_line(exc))
    elif isinstance(exc, psycopg.OperationalError):
        error = CatalogUnavailable(_one_line(exc))
    else:
        error = CatalogError(_one_line(exc))
    error.__cause__ = exc
    return error


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _clean(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``row`` with NUL characters (which PostgreSQL text cannot hold) as U+FFFD."""
    if any(isinstance(v, str) and "\x00" in v for v in row):
        return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)
    return row


class PostgresCatalog:
    """The PostgreSQL catalog at ``url`` as node ``node`` (see the module doc).

    ``read_only``: never create or change anything (a missing schema is an error).
    ``timeout_s``: how long to wait for a lock another transaction holds (default 10 s).
    ``lazy``: do not connect now (the first call does); otherwise the schema is created
    or checked here and a database that cannot be reached raises at once.
    """

    def __init__(
        self,
        url: str,
        *,
        node: str | None = None,
        read_only: bool = False,
        timeout_s: float | None = None,
        lazy: bool = False,
    ) -> None:
        self.url = url
        self.path = redact_url(url)  # how the catalog is named in messages
        self.node = node
        self.read_only = read_only
        self._lock_timeout_ms = int((_LOCK_TIMEOUT_S if timeout_s is None else timeout_s) * 1000)
        self._connect_timeout = max(2, min(_CONNECT_TIMEOUT_S, int(timeout_s or _CONNECT_TIMEOUT_S)))
        self._node_lock = _lock_key(f"scpfleet node {node}") if node is not None else 0
        self._db: psycopg.Connection[Any] | None = None
        self._batch_table: psycopg.Connection[Any] | None = None  # the connection that has one
        self._readers: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()  # the idle readers and the reconnect gate
        self._schema_checked = False
        self._retry_at = 0.0
        self._last_failure: CatalogError | None = None
        self._closed = False
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise CatalogError(f"not a PostgreSQL URL: {_one_line(exc)}") from None
        if not lazy:
            self._writer()

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A new connection with the session settings; the schema checked once."""
        if self._closed:
            raise CatalogError("catalog closed")
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at and self._last_failure is not None:
                raise CatalogUnavailable(f"{self._last_failure} (not retried for {_RECONNECT_S:.0f} s)")
        try:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=self._connect_timeout,
                                 application_name="scpfleet", **_KEEPALIVE)
        except psycopg.Error as exc:
            error = _catalog_error(exc)
            with self._lock:
                self._retry_at = time.monotonic() + _RECONNECT_S
                self._last_failure = error
            raise error from exc
        try:
            db.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
            if self.read_only:
                db.execute("SET default_transaction_read_only = on")
            if not self._schema_checked:
                self._check_schema(db)
                self._schema_checked = True
        except BaseException:
            db.close()
            raise
        return db

    def _writer(self) -> psycopg.Connection[Any]:
        db = self._db
        if db is None or db.closed or db.broken:
            if db is not None:
                with contextlib.suppress(psycopg.Error):
                    db.close()
                self._db = None
            try:
                self._db = db = self._connect()
            except psycopg.Error as exc:
                raise _catalog_error(exc) from exc
        return db

    def _read(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """``work(connection)`` on a pooled read connection; once more on a new one when a
        reused connection turns out dead (the server restarted since it was pooled)."""
        for attempt in (0, 1):
            with self._lock:
                db = self._readers.pop() if self._readers else None
            reused = db is not None
            try:
                if db is None:
                    db = self._connect()
                result = work(db)
            except psycopg.OperationalError as exc:
                if db is not None:
                    with contextlib.suppress(psycopg.Error):
                        db.close()
                if reused and attempt == 0:
                    continue
                raise _catalog_error(exc) from exc
            except psycopg.Error as exc:
                if db is not None and (db.broken or db.closed):
                    db = None
                self._give_back(db)
                raise _catalog_error(exc) from exc
            except BaseException:
                if db is not None:
                    with contextlib.suppress(psycopg.Error):
                        db.close()
                raise
            self._give_back(db)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_back(self, db: psycopg.Connection[Any] | None) -> None:
        if db is None:
            return
        with self._lock:
            if not self._closed and len(self._readers) < _IDLE_READERS and not db.broken:
                self._readers.append(db)
                return
        with contextlib.suppress(psycopg.Error):
            db.close()

    def _check_schema(self, db: psycopg.Connection[Any]) -> None:
        """Create the schema in an empty database (under a lock: nodes starting together),
        or check its version. Raises :class:`CatalogError` in one line."""
        with db.transaction():
            if not self.read_only:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            versioned, instances = db.execute(
                "SELECT to_regclass('schema_version') IS NOT NULL, to_regclass('instances') IS NOT NULL"
            ).fetchone()
            if not versioned:
                if instances:
                    raise CatalogError(f"{self.path} has an instances table that is not an scpfleet index "
                                       "(no schema_version table): use another database")
                if self.read_only:
                    raise CatalogError(f"no scpfleet index in {self.path} yet (a node creates it at start)")
                db.execute(POSTGRES_SCHEMA)
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
                return
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if isinstance(version, int) and version < SCHEMA_VERSION and all(
                    v in _UPGRADES for v in range(version, SCHEMA_VERSION)):
                if self.read_only:
                    raise CatalogError(f"index schema version {version}, this scpfleet reads {SCHEMA_VERSION}: "
                                       "start a node once to upgrade it")
                for step in range(version, SCHEMA_VERSION):
                    for statement in _UPGRADES[step]:
                        db.execute(statement)
                db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
                return
            if version != SCHEMA_VERSION:
                raise CatalogError(
                    f"index schema version {version} is newer than this scpfleet supports ({SCHEMA_VERSION}); "
                    "upgrade scpfleet or use another database" if isinstance(version, int) and version > SCHEMA_VERSION
                    else f"index schema version {version} is not one this scpfleet reads ({SCHEMA_VERSION})"
                )

    def close(self) -> None:
        self._closed = True
        with self._lock:
            readers, self._readers = self._readers, []
        for db in [self._db, *readers]:
            if db is not None:
                with contextlib.suppress(psycopg.Error):
                    db.close()
        self._db = None

    def __enter__(self) -> PostgresCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _own_node(self) -> str:
        if self.node is None:
            raise CatalogError("this catalog was opened without a node id: it reads the cluster, "
                               "it cannot write or follow journals")
        if self.read_only:
            raise CatalogError("catalog opened read-only")
        return self.node

    # -- writes --------------------------------------------------------------------------

    def apply(
        self,
        records: Iterable[InstanceRecord],
        progress: Mapping[str, int] = NO_PROGRESS,
        files: FileCheck | None = None,
    ) -> None:
        """Store ``records`` as this node's rows, and its journal offsets in ``progress``,
        in one transaction serialised per node (see :meth:`storage.Catalog.apply`)."""
        node = self._own_node()
        records = list(records)
        db = self._writer()
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (self._node_lock,))
                if files is not None and records:
                    records = self._resolve(db, node, records, files)
                latest = {r.sop_instance_uid: r for r in records}  # a later copy replaces an earlier one
                if latest:
                    if self._batch_table is not db:
                        db.execute(_BATCH_TABLE)
                        self._batch_table = db
                    with db.cursor() as cur:
                        with cur.copy(_COPY) as copy:
                            for record in latest.values():
                                copy.write_row(_clean(_fields(record) + (node,)))
                        cur.execute(_MERGE)
                if progress:
                    with db.cursor() as cur:
                        cur.executemany(_PROGRESS, [(node, journal, offset) for journal, offset in progress.items()])
        except BaseException as exc:
            self._batch_table = None  # its creation may have been rolled back with the rest
            if isinstance(exc, psycopg.Error):
                raise _catalog_error(exc) from exc
            raise

    def _resolve(self, db: psycopg.Connection[Any], node: str, records: list[InstanceRecord],
                 files: FileCheck) -> list[InstanceRecord]:
        wanted = uids(records)
        existing = {}
        for row in db.execute(f"{_SELECT} WHERE node = %s AND sop_instance_uid = ANY(%s)", (node, wanted)):
            record = InstanceRecord(*row)
            existing[record.sop_instance_uid] = record
        if not existing and len(wanted) == len(records):
            return records  # every instance new and once: nothing to decide
        written, superseded = resolve(records, existing, files)
        for record in superseded:
            files.supersede(record)
        return written

    def remove(self, sop_instance_uids: Iterable[str]) -> int:
        node = self._own_node()
        wanted = list(sop_instance_uids)
        if not wanted:
            return 0
        db = self._writer()
        try:
            with db.transaction():
                cur = db.execute("DELETE FROM instances WHERE node = %s AND sop_instance_uid = ANY(%s)",
                                 (node, wanted))
                return cur.rowcount
        except psycopg.Error as exc:
            raise _catalog_error(exc) from exc

    def forget_journal(self, journal: str) -> None:
        node = self._own_node()
        try:
            self._writer().execute("DELETE FROM journal_progress WHERE node = %s AND journal = %s", (node, journal))
        except psycopg.Error as exc:
            raise _catalog_error(exc) from exc

    def sync(self) -> None:
        """Nothing to do: a COMMIT returns once it is durable (the server's default,
        ``synchronous_commit = on``; a server set otherwise gives that up itself)."""

    # -- this node's rows ----------------------------------------------------------------

    def progress(self, journal: str) -> int:
        node = self._journal_node()
        row = self._read(lambda db: db.execute(
            'SELECT "offset" FROM journal_progress WHERE node = %s AND journal = %s', (node, journal)).fetchone())
        return int(row[0]) if row else 0

    def journal_progress(self) -> dict[str, int]:
        node = self._journal_node()
        rows = self._read(lambda db: db.execute(
            'SELECT journal, "offset" FROM journal_progress WHERE node = %s', (node,)).fetchall())
        return {str(j): int(o) for j, o in rows}

    def _journal_node(self) -> str:
        if self.node is None:
            raise CatalogError("journal progress is a node's: this catalog was opened without a node id")
        return self.node

    def _scope(self) -> tuple[str, list[Any]]:
        """The WHERE condition limiting reads to this node's rows (none without a node)."""
        if self.node is None:
            return "TRUE", []
        return "node = %s", [self.node]

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        scope, params = self._scope()
        row = self._read(lambda db: db.execute(
            f"{_SELECT} WHERE {scope} AND sop_instance_uid = %s ORDER BY node LIMIT 1",
            [*params, sop_instance_uid]).fetchone())
        return InstanceRecord(*row) if row else None

    def contains(self, sop_instance_uid: str) -> bool:
        scope, params = self._scope()
        row = self._read(lambda db: db.execute(
            f"SELECT 1 FROM instances WHERE {scope} AND sop_instance_uid = %s LIMIT 1",
            [*params, sop_instance_uid]).fetchone())
        return row is not None

    def find(self, filters: Mapping[str, str | Sequence[str]], limit: int | None = None) -> Iterator[InstanceRecord]:
        """This node's records matching every filter, by SOP Instance UID (see
        :meth:`storage.Catalog.find`), read in keyset pages."""
        scope, base = self._scope()
        clauses = [scope]
        params: list[Any] = list(base)
        for key, value in filters.items():
            if key not in FIND_KEYS:
                raise ValueError(f"cannot match on {key!r}; one of {', '.join(sorted(FIND_KEYS))}")
            if isinstance(value, str):
                clauses.append(f"{key} = %s")
                params.append(value)
                continue
            values = [str(v) for v in value]
            if not values:
                return iter(())
            clauses.append(f"{key} = ANY(%s)")
            params.append(values)
        return self._pages(" AND ".join(clauses), params, limit)

    def _pages(self, where: str, params: list[Any], limit: int | None) -> Iterator[InstanceRecord]:
        after: tuple[str, str] | None = None
        left = limit
        while left is None or left > 0:
            page = _FIND_PAGE if left is None else min(left, _FIND_PAGE)
            condition = where
            args = list(params)
            if after is not None:
                condition += " AND (sop_instance_uid, node) > (%s, %s)"
                args.extend(after)
            sql = (f"SELECT {', '.join(_COLUMNS)}, node FROM instances WHERE {condition} "
                   f"ORDER BY sop_instance_uid, node LIMIT %s")
            rows = self._read(lambda db: db.execute(sql, [*args, page]).fetchall())
            for row in rows:
                yield InstanceRecord(*row[:-1])
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][-1])
            if left is not None:
                left -= len(rows)

    # -- the cluster ---------------------------------------------------------------------

    def count(self) -> int:
        return int(self._read(lambda db: db.execute("SELECT COUNT(*) FROM instances").fetchone())[0])

    def list(self, limit: int = 100, study: str | None = None) -> list[InstanceRecord]:
        """Up to ``limit`` records of every node, most recently received first."""
        if study is None:
            sql, params = f"{_SELECT} ORDER BY received_at DESC, node LIMIT %s", [limit]
        else:
            sql, params = (f"{_SELECT} WHERE study_instance_uid = %s ORDER BY received_at DESC, node LIMIT %s",
                           [study, limit])
        rows = self._read(lambda db: db.execute(sql, params).fetchall())
        return [InstanceRecord(*row) for row in rows]

    def stats(self) -> IndexStats:
        row = self._read(lambda db: db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT study_instance_uid),"
            " COUNT(DISTINCT series_instance_uid), COUNT(DISTINCT NULLIF(patient_id, '')) FROM instances"
        ).fetchone())
        return IndexStats(*(int(v) for v in row))

    def node_stats(self) -> dict[str, IndexStats]:
        """The totals of each node's rows."""
        rows = self._read(lambda db: db.execute(
            "SELECT node, COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT study_instance_uid),"
            " COUNT(DISTINCT series_instance_uid), COUNT(DISTINCT NULLIF(patient_id, ''))"
            " FROM instances GROUP BY node ORDER BY node"
        ).fetchall())
        return {str(row[0]): IndexStats(*(int(v) for v in row[1:])) for row in rows}

    def query(self, query: CatalogQuery) -> _QueryCursor:
        """The entities of the whole cluster answering ``query``, page by page (a
        :class:`~storage.QueryCursor`; each page one statement on a pooled connection, so
        it may be read from any thread). An instance on several nodes is one IMAGE row,
        this node's when it holds one."""
        if not isinstance(query, CatalogQuery):
            raise TypeError(f"not a CatalogQuery: {query!r}")
        return _QueryCursor(self, query)


class _QueryCursor:
    """One query's pages (a :class:`~storage.QueryCursor`)."""

    __slots__ = ("catalog", "query", "_after", "_started", "_done")

    def __init__(self, catalog: PostgresCatalog, query: CatalogQuery) -> None:
        self.catalog = catalog
        self.query = query
        self._after: object = None
        self._started = False
        self._done = False

    def fetch(self, n: int) -> list[dict[str, object]]:
        if self._done or n < 1:
            return []
        query = self.query
        sql, params = page_statement(query, self._after, self._started, n, POSTGRESQL, self.catalog.node)
        rows = self.catalog._read(lambda db: db.execute(sql, params).fetchall())
        self._started = True
        if len(rows) < n:
            self._done = True
        if rows:
            self._after = rows[-1][query.fields.index(query.key)]
        return [row_dict(query, row) for row in rows]

    def close(self) -> None:
        self._done = True
