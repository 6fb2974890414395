"""The instance index: one SQLite database describing every stored SOP instance.

Theory of operation: :class:`InstanceRecord` is the one description of a stored
instance; the writer makes it, the journal carries it (as compact msgpack arrays), and
:class:`Index` keeps it in table ``instances``, one row per SOP Instance UID. Rows are
only ever written by :meth:`Index.insert_batch`, which stores a batch of records *and*
the journal offsets they were read up to in one transaction, so replaying a journal
after a crash neither loses nor doubles a row (``INSERT OR REPLACE`` makes a replay of
the same record idempotent as well).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is durable once the WAL
is synced at checkpoint, and a crash loses at most the last transactions -- which the
journal replays. One connection per process; the database never decides where files
live, it records the paths the writer chose.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping

import msgspec

__all__ = ["InstanceRecord", "IndexStats", "Index", "SCHEMA"]


class InstanceRecord(msgspec.Struct, frozen=True, array_like=True):
    """One stored instance. Field order is the msgpack array layout of the journal:
    append new fields at the end, with defaults, so old journals still decode.

    ``path`` is relative to the storage root; ``size`` counts the whole file (File Meta
    included); ``sha256`` is the hex digest of the data set bytes as received;
    ``received_at`` is Unix time given by the caller.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    modality: str | None
    study_date: str | None
    instance_number: str | None
    transfer_syntax_uid: str
    path: str
    size: int
    sha256: str
    calling_ae: str
    called_ae: str
    received_at: float


class IndexStats(msgspec.Struct, frozen=True):
    """Totals over the index. ``patients`` counts distinct non-empty Patient IDs."""

    instances: int
    bytes: int
    studies: int
    series: int
    patients: int


_COLUMNS = InstanceRecord.__struct_fields__

#: The whole schema, applied idempotently at open.
#:  - ``instances``: one row per SOP instance (PS3.3 C.12.1 SOP Instance UID is unique),
#:    the columns of :class:`InstanceRecord` in the same order;
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
    sha256              TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    called_ae           TEXT NOT NULL,
    received_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_instance_uid);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id);
CREATE TABLE IF NOT EXISTS journal_progress (
    journal TEXT PRIMARY KEY NOT NULL,
    offset  INTEGER NOT NULL
);
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

_INSERT = f"INSERT OR REPLACE INTO instances ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_PROGRESS = "INSERT OR REPLACE INTO journal_progress (journal, offset) VALUES (?, ?)"
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM instances"
# A writer holding the database (another process's batch) is waited for this long
# before SQLITE_BUSY surfaces: batches commit in milliseconds, 10 s means trouble.
_BUSY_TIMEOUT_MS = 10_000


def _row(record: InstanceRecord) -> tuple[object, ...]:
    return tuple(getattr(record, name) for name in _COLUMNS)


class Index:
    """The SQLite index at ``path`` (created with :data:`SCHEMA` when new)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def insert_batch(self, records: Iterable[InstanceRecord], progress: Mapping[str, int] | None = None) -> None:
        """Store ``records`` and the journal offsets in ``progress`` in one transaction.

        Either all of them are committed or none is, which is what makes journal replay
        exactly-once: the offsets say how far the rows already reflect each journal.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, map(_row, records))
            if progress:
                db.executemany(_PROGRESS, progress.items())
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def progress(self, journal: str) -> int:
        """Byte offset up to which ``journal``'s records are indexed (0 when unknown)."""
        row = self._db.execute("SELECT offset FROM journal_progress WHERE journal = ?", (journal,)).fetchone()
        return int(row[0]) if row else 0

    def forget_journal(self, journal: str) -> None:
        """Drop the progress row of a retired journal segment."""
        self._db.execute("DELETE FROM journal_progress WHERE journal = ?", (journal,))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        row = self._db.execute(f"{_SELECT} WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return InstanceRecord(*row) if row else None

    def list(self, limit: int = 100, study: str | None = None) -> list[InstanceRecord]:
        """Up to ``limit`` records, most recently received first, optionally of one study."""
        if study is None:
            rows = self._db.execute(f"{_SELECT} ORDER BY received_at DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                f"{_SELECT} WHERE study_instance_uid = ? ORDER BY received_at DESC LIMIT ?", (study, limit)
            )
        return [InstanceRecord(*row) for row in rows]

    def stats(self) -> IndexStats:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT study_instance_uid),"
            " COUNT(DISTINCT series_instance_uid), COUNT(DISTINCT NULLIF(patient_id, '')) FROM instances"
        ).fetchone()
        return IndexStats(*(int(v) for v in row))
