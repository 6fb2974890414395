"""Index: schema matches InstanceRecord, batches commit with journal offsets, views and stats."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from storage import SCHEMA, Index, IndexStats, InstanceRecord


def record(n: int, *, study: int = 0, series: int = 0, patient: str | None = "P1", size: int = 100) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=f"1.2.4.{study}",
        series_instance_uid=f"1.2.4.{study}.{series}",
        patient_id=patient,
        patient_name="Doe^Jane" if patient else None,
        modality="CT",
        study_date="20240102",
        instance_number=str(n),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"1.2.4.{study}/1.2.4.{study}.{series}/1.2.3.{n}.dcm",
        size=size,
        sha256="ab" * 32,
        calling_ae="MODALITY",
        called_ae="ARCHIVE",
        received_at=1_700_000_000.0 + n,
    )


@pytest.fixture
def index(tmp_path: Path) -> Index:
    with Index(tmp_path / "index.sqlite") as idx:
        yield idx


def test_schema_columns_follow_the_record(tmp_path: Path) -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    columns = [row[1] for row in db.execute("PRAGMA table_info(instances)")]
    assert tuple(columns) == InstanceRecord.__struct_fields__
    assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='view'")} == {
        "studies",
        "series",
        "patients",
    }


def test_wal_mode_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with Index(path) as idx:
        idx.insert_batch([record(1)])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with Index(path) as idx:  # schema creation is idempotent
        assert idx.get("1.2.3.1") == record(1)


def test_insert_get_count_list(index: Index) -> None:
    index.insert_batch([record(n, study=n % 2) for n in range(10)])
    assert index.count() == 10
    assert index.get("1.2.3.4") == record(4, study=0)
    assert index.get("9.9") is None
    newest = index.list(limit=3)
    assert [r.sop_instance_uid for r in newest] == ["1.2.3.9", "1.2.3.8", "1.2.3.7"]
    odd = index.list(limit=100, study="1.2.4.1")
    assert len(odd) == 5 and all(r.study_instance_uid == "1.2.4.1" for r in odd)


def test_replace_keeps_one_row_per_instance(index: Index) -> None:
    index.insert_batch([record(1, size=10)])
    index.insert_batch([record(1, size=20)])
    assert index.count() == 1
    got = index.get("1.2.3.1")
    assert got is not None and got.size == 20


def test_progress_commits_with_the_rows(index: Index) -> None:
    assert index.progress("worker-1-1") == 0
    index.insert_batch([record(1)], {"worker-1-1": 123})
    assert index.progress("worker-1-1") == 123
    index.insert_batch([], {"worker-1-1": 456, "worker-2-1": 7})
    assert (index.progress("worker-1-1"), index.progress("worker-2-1")) == (456, 7)
    index.forget_journal("worker-2-1")
    assert index.progress("worker-2-1") == 0


def test_failed_batch_rolls_back_rows_and_progress(index: Index) -> None:
    index.insert_batch([record(1)], {"j": 10})
    bad = msgspec.structs.replace(record(2), sop_class_uid=None)  # NOT NULL violation
    with pytest.raises(sqlite3.IntegrityError):
        index.insert_batch([record(3), bad], {"j": 99})
    assert index.count() == 1 and index.progress("j") == 10
    index.insert_batch([record(4)], {"j": 20})  # the connection is usable afterwards
    assert index.count() == 2


def test_stats_and_views(index: Index) -> None:
    index.insert_batch(
        [record(1, study=1, series=1, patient="A", size=10), record(2, study=1, series=2, patient="A", size=20)]
        + [record(3, study=2, series=1, patient="B", size=30), record(4, study=3, series=1, patient=None, size=40)]
    )
    assert index.stats() == IndexStats(instances=4, bytes=100, studies=3, series=4, patients=2)
    db = index._db
    studies = db.execute("SELECT study_instance_uid, series, instances, bytes FROM studies ORDER BY 1").fetchall()
    assert studies == [("1.2.4.1", 2, 2, 30), ("1.2.4.2", 1, 1, 30), ("1.2.4.3", 1, 1, 40)]
    series = db.execute("SELECT series_instance_uid, study_instance_uid, instances FROM series ORDER BY 1").fetchall()
    assert series[0] == ("1.2.4.1.1", "1.2.4.1", 1)
    patients = db.execute("SELECT patient_id, studies, instances FROM patients ORDER BY patient_id").fetchall()
    assert patients == [(None, 1, 1), ("A", 1, 2), ("B", 1, 1)]


def test_empty_stats(index: Index) -> None:
    assert index.stats() == IndexStats(0, 0, 0, 0, 0)


def test_record_is_compact_msgpack() -> None:
    encoded = msgspec.msgpack.encode(record(1))
    assert encoded[0] == 0xDC or (encoded[0] & 0xF0) == 0x90  # a msgpack array, not a map
    assert msgspec.msgpack.decode(encoded, type=InstanceRecord) == record(1)
