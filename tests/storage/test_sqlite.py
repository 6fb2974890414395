"""The SQLite catalog's own features: schema matches InstanceRecord, WAL, views, and
every sqlite3 error translated into the port's errors (corrupt file, lock held too
long, read-only). The port's contract is tested in test_catalog.py."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec
import pytest

from storage import (
    CatalogBusy,
    CatalogCorrupt,
    CatalogError,
    InstanceRecord,
    SqliteCatalog,
    open_catalog,
)
from storage._sqlite import SCHEMA_VERSION
from tests.storage import record


def test_schema_columns_follow_the_record(tmp_path: Path) -> None:
    SqliteCatalog(tmp_path / "index.sqlite").close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    columns = [row[1] for row in db.execute("PRAGMA table_info(instances)")]
    assert tuple(columns) == (*InstanceRecord.__struct_fields__, "node")
    assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='view'")} == {
        "studies",
        "series",
        "patients",
    }
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# The first layout (schema version 0): what an archive written before version 2 holds.
_V0_SCHEMA = """
CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY NOT NULL, sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL, series_instance_uid TEXT NOT NULL, patient_id TEXT,
    patient_name TEXT, modality TEXT, study_date TEXT, instance_number TEXT,
    transfer_syntax_uid TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, calling_ae TEXT NOT NULL, called_ae TEXT NOT NULL,
    received_at REAL NOT NULL);
CREATE INDEX instances_study ON instances (study_instance_uid);
CREATE TABLE journal_progress (journal TEXT PRIMARY KEY NOT NULL, offset INTEGER NOT NULL);
CREATE VIEW studies AS SELECT study_instance_uid FROM instances GROUP BY study_instance_uid;
"""


def test_a_version_0_index_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_V0_SCHEMA)
    db.execute("INSERT INTO instances VALUES ('1.2.3', '1.2', '1.2.3.1', '1.2.3.2', 'P1', 'Doe',"
               " 'CT', '20250101', '1', '1.2.840.10008.1.2.1', 'a/b/1.2.3.dcm', 10, 'ab', 'A', 'B', 5.0)")
    db.execute("INSERT INTO journal_progress VALUES ('w0-1-2', 99)")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="start the node once"):
        SqliteCatalog(path, read_only=True)
    with SqliteCatalog(path) as catalog:
        row = catalog.get("1.2.3")
        assert row is not None and row.digest == "ab" and row.digest_algorithm == "sha256"
        assert row.generation == 0 and row.patient_name == "Doe" and row.accession_number is None
        assert catalog.progress("w0-1-2") == 99
    with SqliteCatalog(path, read_only=True) as catalog:
        assert catalog.count() == 1


def test_a_new_index_has_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    SqliteCatalog(tmp_path / "new.sqlite").close()
    old = sqlite3.connect(tmp_path / "old.sqlite")  # made before, with 4 KiB pages
    old.execute("PRAGMA page_size = 4096")
    old.execute("CREATE TABLE unrelated (x)")
    old.commit()
    old.close()
    with SqliteCatalog(tmp_path / "old.sqlite") as catalog:
        catalog.apply([record(1)])
        assert catalog.get("1.2.3.1") == record(1)
    sizes = {}
    for name in ("new", "old"):
        db = sqlite3.connect(tmp_path / f"{name}.sqlite")
        sizes[name] = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
    assert sizes == {"new": 16384, "old": 4096}


def test_a_version_2_index_gains_the_version_3_columns(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with SqliteCatalog(path) as catalog:
        catalog.apply([record(1)])
    db = sqlite3.connect(path)  # back to version 2: the column it did not have
    db.execute("ALTER TABLE instances DROP COLUMN calling_address")
    db.execute("ALTER TABLE instances DROP COLUMN specific_character_set")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="start the node once"):
        SqliteCatalog(path, read_only=True)
    with SqliteCatalog(path) as catalog:
        assert catalog.get("1.2.3.1") == record(1)  # the old row, with the default ""
        catalog.apply([msgspec.structs.replace(record(2), calling_address="192.0.2.7",
                                               specific_character_set="ISO_IR 144")])
    with SqliteCatalog(path, read_only=True) as catalog:
        got = catalog.get("1.2.3.2")
        assert got is not None and got.calling_address == "192.0.2.7"
        assert got.specific_character_set == "ISO_IR 144"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    SqliteCatalog(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="newer than this scpfleet supports") as info:
        SqliteCatalog(path)
    assert "\n" not in str(info.value)


def test_open_catalog_of_a_path_is_sqlite(tmp_path: Path) -> None:
    for location in (tmp_path / "a.sqlite", str(tmp_path / "b.sqlite")):
        with open_catalog(location) as catalog:
            assert isinstance(catalog, SqliteCatalog)


def test_unknown_scheme_is_a_catalog_error_without_the_url(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as error:
        open_catalog("nosuchdb://user:secret@db.example/archive")
    assert "nosuchdb://" in str(error.value) and "secret" not in str(error.value)


def test_wal_mode_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with SqliteCatalog(path) as catalog:
        catalog.apply([record(1)])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with SqliteCatalog(path) as catalog:  # schema creation is idempotent
        assert catalog.get("1.2.3.1") == record(1)


def test_a_writer_keeps_a_large_cache_and_wal_and_a_reader_the_defaults(tmp_path: Path) -> None:
    """The index's writers (indexers, replay) get a 64 MiB page cache and checkpoint the
    WAL at 4000 pages; read-only connections (every worker's) keep SQLite's defaults."""
    path = tmp_path / "index.sqlite"

    def settings(catalog: SqliteCatalog) -> tuple[int, int]:
        db = catalog._db
        return db.execute("PRAGMA cache_size").fetchone()[0], db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    plain = sqlite3.connect(":memory:")
    defaults = (plain.execute("PRAGMA cache_size").fetchone()[0], plain.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    plain.close()
    with SqliteCatalog(path) as writer:
        assert settings(writer) == (-64 * 1024, 4000)
        with SqliteCatalog(path, read_only=True) as reader:
            assert settings(reader) == defaults


def test_sync_fsyncs_the_wal_and_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With synchronous=NORMAL a commit reaches the disk at the next checkpoint: sync()
    fsyncs the WAL (and the database file) so that a power loss keeps every commit."""
    path = tmp_path / "index.sqlite"
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    with SqliteCatalog(path) as catalog:
        catalog.apply([record(1)], {"w0-1-1": 10})
        wal = os.stat(f"{path}-wal")
        assert wal.st_size > 0  # the commit is in the WAL, not yet checkpointed
        monkeypatch.setattr(os, "fsync", recording_fsync)
        catalog.sync()
        monkeypatch.undo()
    db = os.stat(path)
    assert (wal.st_dev, wal.st_ino) in synced and (db.st_dev, db.st_ino) in synced


def test_views(tmp_path: Path) -> None:
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        catalog.apply(
            [record(1, study=1, series=1, patient="A", size=10), record(2, study=1, series=2, patient="A", size=20)]
            + [record(3, study=2, series=1, patient="B", size=30), record(4, study=3, series=1, patient=None, size=40)]
        )
        db = catalog._db
        studies = db.execute("SELECT study_instance_uid, series, instances, bytes FROM studies ORDER BY 1").fetchall()
        assert studies == [("1.2.4.1", 2, 2, 30), ("1.2.4.2", 1, 1, 30), ("1.2.4.3", 1, 1, 40)]
        series = db.execute("SELECT series_instance_uid, study_instance_uid, instances FROM series ORDER BY 1").fetchall()
        assert series[0] == ("1.2.4.1.1", "1.2.4.1", 1)
        patients = db.execute("SELECT patient_id, studies, instances FROM patients ORDER BY patient_id").fetchall()
        assert patients == [(None, 1, 1), ("A", 1, 2), ("B", 1, 1)]


@pytest.mark.parametrize(
    "content",
    [os.urandom(64 * 1024), b"SQLite format 3\x00" + b"\xff" * 4080, b"not a database at all\n" * 100],
    ids=["random", "destroyed-header", "text"],
)
def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(content)
    with pytest.raises(CatalogCorrupt) as error:
        open_catalog(path)
    assert isinstance(error.value, CatalogError)
    assert not isinstance(error.value.__cause__, CatalogError)  # the driver's error, kept as the cause
    assert path.read_bytes() == content  # nothing was written into it


def test_a_lock_held_too_long_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with SqliteCatalog(path, timeout_s=0.05) as catalog:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(CatalogBusy) as error:
                catalog.apply([record(1)], {"j": 1})
            assert "locked" in str(error.value) or "busy" in str(error.value)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        catalog.apply([record(1)], {"j": 1})  # the same connection works once the lock is gone
        assert catalog.count() == 1


def test_read_only(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with pytest.raises(CatalogError):
        open_catalog(path, read_only=True)
    assert not path.exists()  # a reader never creates the catalog
    with open_catalog(path) as writer:
        writer.apply([record(1)], {"w0-1-1": 99})
        with open_catalog(path, read_only=True, timeout_s=1.0) as reader:
            assert reader.journal_progress() == {"w0-1-1": 99}
            assert reader.get("1.2.3.1") == record(1)
            with pytest.raises(CatalogError):
                reader.apply([record(2)])
    with open_catalog(path) as again:
        assert again.journal_progress() == {"w0-1-1": 99}


def test_find_with_more_values_than_sqlite_has_parameters(tmp_path: Path) -> None:
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        catalog.apply([record(n) for n in range(50)])
        wanted = [f"1.2.3.{n}" for n in range(40_000)]  # past SQLITE_MAX_VARIABLE_NUMBER
        assert len(list(catalog.find({"sop_instance_uid": wanted}))) == 50
