"""The Catalog port's contract, run against every implementation.

Theory of operation: each entry of :data:`IMPLEMENTATIONS` opens a fresh, empty catalog
under a test's temporary directory (and opens the same one again, for persistence);
every test here runs once per entry. The PostgreSQL catalog runs against the session's
temporary server (tests/conftest.py), in a schema of its own per test, as node
``node-a``. Tests of one implementation's own features (SQLite's schema, WAL, views;
PostgreSQL's nodes, schema versions, locks) live beside it (test_sqlite.py,
test_postgres.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from storage import FIND_KEYS, Catalog, CatalogError, IndexStats, open_catalog
from tests.storage import record


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Catalog:
    return open_catalog(tmp_path / "catalog.sqlite")


def _postgres(tmp_path: Path, request: pytest.FixtureRequest) -> Catalog:
    url = request.getfixturevalue("postgres_url")  # one schema per test, however often opened
    return open_catalog(url, node="node-a")


#: name -> opener(tmp_path, request): the test's catalog (the same one on every call).
IMPLEMENTATIONS: dict[str, Callable[[Path, pytest.FixtureRequest], Catalog]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Catalog]:
    factory = IMPLEMENTATIONS[request.param]
    return lambda: factory(tmp_path, request)


@pytest.fixture
def catalog(opener: Callable[[], Catalog]) -> Iterator[Catalog]:
    with opener() as opened:
        yield opened


def uids(records) -> list[str]:
    return [r.sop_instance_uid for r in records]


def test_is_a_catalog(catalog: Catalog) -> None:
    assert isinstance(catalog, Catalog)
    assert catalog.count() == 0 and catalog.journal_progress() == {}


def test_apply_get_contains_count_list(catalog: Catalog) -> None:
    catalog.apply([record(n, study=n % 2) for n in range(10)])
    assert catalog.count() == 10
    assert catalog.get("1.2.3.4") == record(4, study=0)
    assert catalog.get("9.9") is None
    assert catalog.contains("1.2.3.9") and not catalog.contains("9.9")
    assert uids(catalog.list(limit=3)) == ["1.2.3.9", "1.2.3.8", "1.2.3.7"]  # newest first
    odd = catalog.list(limit=100, study="1.2.4.1")
    assert len(odd) == 5 and all(r.study_instance_uid == "1.2.4.1" for r in odd)


def test_apply_takes_any_iterable(catalog: Catalog) -> None:
    catalog.apply(record(n) for n in range(3))
    assert catalog.count() == 3


def test_replace_keeps_one_record_per_instance(catalog: Catalog) -> None:
    catalog.apply([record(1, size=10)])
    catalog.apply([record(1, size=20)])
    assert catalog.count() == 1
    got = catalog.get("1.2.3.1")
    assert got is not None and got.size == 20


def test_progress_commits_with_the_records(catalog: Catalog) -> None:
    assert catalog.progress("w0-1-1") == 0
    catalog.apply([record(1)], {"w0-1-1": 123})
    assert catalog.progress("w0-1-1") == 123
    catalog.apply([], {"w0-1-1": 456, "w1-2-1": 7})
    assert (catalog.progress("w0-1-1"), catalog.progress("w1-2-1")) == (456, 7)
    assert catalog.journal_progress() == {"w0-1-1": 456, "w1-2-1": 7}
    catalog.forget_journal("w1-2-1")
    assert catalog.progress("w1-2-1") == 0 and catalog.journal_progress() == {"w0-1-1": 456}


def test_sync_keeps_everything_committed(opener: Callable[[], Catalog]) -> None:
    """sync() (made before a journal segment is deleted) changes nothing a reader sees."""
    with opener() as catalog:
        catalog.apply([record(1)], {"w0-1-1": 10})
        catalog.sync()
        catalog.sync()  # nothing new: still fine
    with opener() as again:
        assert again.get("1.2.3.1") == record(1) and again.progress("w0-1-1") == 10


def test_a_failed_apply_commits_nothing(catalog: Catalog) -> None:
    catalog.apply([record(1)], {"j": 10})
    bad = msgspec.structs.replace(record(2), sop_class_uid=None)  # a record no catalog can keep
    with pytest.raises(CatalogError):
        catalog.apply([record(3), bad], {"j": 99})
    assert catalog.count() == 1 and catalog.progress("j") == 10 and not catalog.contains("1.2.3.3")
    catalog.apply([record(4)], {"j": 20})  # usable afterwards
    assert catalog.count() == 2 and catalog.progress("j") == 20


def test_stats(catalog: Catalog) -> None:
    assert catalog.stats() == IndexStats(0, 0, 0, 0, 0)
    catalog.apply(
        [record(1, study=1, series=1, patient="A", size=10), record(2, study=1, series=2, patient="A", size=20)]
        + [record(3, study=2, series=1, patient="B", size=30), record(4, study=3, series=1, patient=None, size=40)]
        + [record(5, study=4, series=1, patient="", size=0)]
    )
    # Patients counts distinct non-empty Patient IDs.
    assert catalog.stats() == IndexStats(instances=5, bytes=100, studies=4, series=5, patients=2)


def test_find_equality_one_of_and_both(catalog: Catalog) -> None:
    catalog.apply(
        [record(n, study=n % 3, series=n % 2, patient=f"P{n % 4}") for n in range(12)]
    )
    study1 = list(catalog.find({"study_instance_uid": "1.2.4.1"}))
    assert uids(study1) == sorted(f"1.2.3.{n}" for n in range(12) if n % 3 == 1)
    assert study1[0] == record(1, study=1, series=1, patient="P1")
    either = catalog.find({"sop_instance_uid": ["1.2.3.5", "1.2.3.2", "9.9"]})
    assert uids(either) == ["1.2.3.2", "1.2.3.5"]
    both = catalog.find({"study_instance_uid": ["1.2.4.0", "1.2.4.2"], "patient_id": "P0"})
    assert uids(both) == sorted(f"1.2.3.{n}" for n in range(12) if n % 3 != 1 and n % 4 == 0)
    series = catalog.find({"series_instance_uid": "1.2.4.2.0", "study_instance_uid": "1.2.4.2"})
    assert uids(series) == sorted(f"1.2.3.{n}" for n in (2, 8))


def test_find_edges(catalog: Catalog) -> None:
    catalog.apply([record(n) for n in range(5)])
    assert uids(catalog.find({})) == [f"1.2.3.{n}" for n in range(5)]  # every record, by UID
    assert uids(catalog.find({}, limit=2)) == ["1.2.3.0", "1.2.3.1"]
    assert list(catalog.find({"sop_instance_uid": []})) == []  # one of nothing: nothing
    assert list(catalog.find({"patient_id": "nobody"})) == []
    assert uids(catalog.find({"sop_instance_uid": ("1.2.3.3",)})) == ["1.2.3.3"]  # any sequence
    with pytest.raises(ValueError):
        catalog.find({"path": "x"})
    assert "sop_instance_uid" in FIND_KEYS and "path" not in FIND_KEYS


def test_records_survive_reopening(opener: Callable[[], Catalog]) -> None:
    with opener() as first:
        first.apply([record(1), record(2)], {"w0-1-1": 64})
    with opener() as again:
        assert again.get("1.2.3.2") == record(2)
        assert again.count() == 2 and again.progress("w0-1-1") == 64


def test_remove_deletes_only_the_named_rows(catalog: Catalog) -> None:
    catalog.apply([record(n) for n in range(1, 6)])
    assert catalog.remove(["1.2.3.2", "1.2.3.4", "1.2.3.99"]) == 2
    assert uids(catalog.find({})) == ["1.2.3.1", "1.2.3.3", "1.2.3.5"]
    assert catalog.remove([]) == 0


def test_apply_with_files_decides_against_the_disk(catalog: Catalog, tmp_path: Path) -> None:
    """Contract: with a FileCheck, a record whose file is not the one at its path never
    replaces a row (the rules themselves are tests/storage/test_integrity.py's)."""
    import os

    import msgspec

    from storage import FileCheck

    root = tmp_path / "files"
    current = msgspec.structs.replace(record(7), generation=10**18 + 2, size=3)
    stale = msgspec.structs.replace(record(7, patient="OLD"), generation=10**18 + 1, size=3)
    path = root / current.path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"abc")
    os.utime(path, ns=(current.generation, current.generation))
    catalog.apply([current], files=FileCheck(root))
    catalog.apply([stale], files=FileCheck(root))
    assert catalog.get("1.2.3.7") == current
