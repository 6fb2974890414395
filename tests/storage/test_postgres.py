"""The PostgreSQL catalog's own features: nodes sharing one index, the schema and its
version, per-node serialisation, reconnection, and its errors.

Theory of operation: every test opens catalogs on a fresh schema of the session's
temporary PostgreSQL (``postgres_url``, tests/conftest.py) as one or several nodes; the
tests that stop a server start one of their own. What every catalog must do is
test_catalog.py's and test_query.py's (they run against PostgreSQL too).
"""

from __future__ import annotations

import threading
import time

import msgspec
import psycopg
import pytest

from storage import SCHEMA, CatalogBusy, CatalogError, CatalogQuery, CatalogUnavailable, IndexStats, Match, open_catalog
from storage import InstanceRecord, redact_url
from storage._postgres import SCHEMA_VERSION, PostgresCatalog
from tests.storage import record


def rows_of(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(sql, params).fetchall()


def test_the_schema_is_created_versioned_and_has_sqlite_s_columns(postgres_url: str) -> None:
    with open_catalog(postgres_url, node="a"):
        pass
    assert rows_of(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    columns = [name for (name,) in rows_of(
        postgres_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'instances' "
        "AND table_schema = current_schema() ORDER BY ordinal_position")]
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    assert columns == [row[1] for row in db.execute("PRAGMA table_info(instances)")]
    collations = {c for (c,) in rows_of(
        postgres_url, "SELECT collation_name FROM information_schema.columns WHERE table_name = 'instances' "
        "AND table_schema = current_schema() AND data_type = 'text'")}
    assert collations == {"C"}  # byte order, whatever the database's locale
    with open_catalog(postgres_url, node="b") as again:  # a second node finds it and uses it
        again.apply([record(1)])
        assert again.count() == 1


def test_nodes_starting_together_create_the_schema_once(postgres_url: str) -> None:
    errors: list[BaseException] = []

    def start(n: int) -> None:
        try:
            with open_catalog(postgres_url, node=f"n{n}") as catalog:
                catalog.apply([record(n)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert rows_of(postgres_url, "SELECT COUNT(*) FROM schema_version") == [(1,)]
    assert rows_of(postgres_url, "SELECT COUNT(*) FROM instances") == [(6,)]


def test_a_version_2_schema_is_upgraded_by_a_node_not_by_a_reader(postgres_url: str) -> None:
    with open_catalog(postgres_url, node="a") as catalog:
        catalog.apply([record(1)])
    with psycopg.connect(postgres_url, autocommit=True) as db:  # back to version 2
        db.execute("ALTER TABLE instances DROP COLUMN calling_address, DROP COLUMN specific_character_set")
        db.execute("UPDATE schema_version SET version = 2")
    with pytest.raises(CatalogError, match="start a node once") as refused:
        PostgresCatalog(postgres_url, node="a", read_only=True).count()
    assert "\n" not in str(refused.value)
    with open_catalog(postgres_url, node="a") as catalog:
        assert catalog.get("1.2.3.1") == record(1)  # the old row, with the default ""
        catalog.apply([msgspec.structs.replace(record(2), calling_address="192.0.2.7",
                                               specific_character_set="ISO_IR 144")])
        got = catalog.get("1.2.3.2")
        assert got is not None and got.calling_address == "192.0.2.7"
        assert got.specific_character_set == "ISO_IR 144"
    assert rows_of(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_version_2_node_still_running_indexes_into_the_upgraded_schema(postgres_url: str) -> None:
    """What a node of the previous version does with each batch (COPY of its own columns
    into a temporary table made LIKE instances, then a merge naming them) still works
    after another node upgraded the schema under it."""
    with open_catalog(postgres_url, node="new"):
        pass  # the schema, version 3
    v2 = [name for name in InstanceRecord.__struct_fields__
          if name not in ("calling_address", "specific_character_set")]
    row = record(7)
    with psycopg.connect(postgres_url) as db:
        db.execute("CREATE TEMP TABLE instances_batch (LIKE instances) ON COMMIT DELETE ROWS")
        with db.cursor() as cur:
            with cur.copy(f"COPY instances_batch ({', '.join(v2)}, node) FROM STDIN") as copy:
                copy.write_row(tuple(getattr(row, name) for name in v2) + ("old",))
            cur.execute(f"INSERT INTO instances ({', '.join(v2)}, node) SELECT {', '.join(v2)}, node "
                        "FROM instances_batch")
    with open_catalog(postgres_url, node="old") as catalog:
        got = catalog.get(row.sop_instance_uid)
    assert got == msgspec.structs.replace(row, calling_address="", specific_character_set=None)


def test_a_newer_or_foreign_schema_is_a_one_line_error(postgres_url: str, postgres_database: str) -> None:
    with open_catalog(postgres_url, node="a"):
        pass
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(CatalogError) as newer:
        open_catalog(postgres_url, node="a")
    assert "newer" in str(newer.value) and "\n" not in str(newer.value)
    with psycopg.connect(postgres_database, autocommit=True) as db:
        db.execute("CREATE TABLE instances (id integer)")
    with pytest.raises(CatalogError) as foreign:
        open_catalog(postgres_database, node="a")
    assert "not an scpfleet index" in str(foreign.value) and "\n" not in str(foreign.value)


def test_read_only_creates_nothing_and_writes_nothing(postgres_url: str) -> None:
    with pytest.raises(CatalogError, match="no scpfleet index"):
        open_catalog(postgres_url, read_only=True)
    with open_catalog(postgres_url, node="a") as writer:
        writer.apply([record(1)])
    with open_catalog(postgres_url, node="a", read_only=True) as reader:
        assert reader.get("1.2.3.1") == record(1)
        with pytest.raises(CatalogError):
            reader.apply([record(2)])


def test_two_nodes_share_one_index_without_colliding(postgres_url: str) -> None:
    same = record(1)
    with open_catalog(postgres_url, node="a") as a, open_catalog(postgres_url, node="b") as b:
        a.apply([same, record(2, size=10)], {"w0-1-1": 100})
        b.apply([msgspec.structs.replace(same, size=7), record(3)], {"w0-1-1": 5})
        # Rows are keyed by (node, UID): the same instance on two nodes is two rows.
        assert a.count() == b.count() == 4
        assert a.get("1.2.3.1") == same and b.get("1.2.3.1").size == 7
        assert a.contains("1.2.3.2") and not b.contains("1.2.3.2")
        assert [r.sop_instance_uid for r in a.find({})] == ["1.2.3.1", "1.2.3.2"]
        assert [r.sop_instance_uid for r in b.find({"sop_instance_uid": ["1.2.3.1", "1.2.3.2"]})] == ["1.2.3.1"]
        # Journal progress is each node's: the same segment name does not collide.
        assert a.progress("w0-1-1") == 100 and b.progress("w0-1-1") == 5
        b.forget_journal("w0-1-1")
        assert a.journal_progress() == {"w0-1-1": 100} and b.journal_progress() == {}
        # Removing is a node's own business.
        assert b.remove(["1.2.3.1", "1.2.3.2"]) == 1
        assert a.get("1.2.3.1") == same and b.get("1.2.3.1") is None
        assert {n: s.instances for n, s in a.node_stats().items()} == {"a": 2, "b": 1}
        assert a.stats() == IndexStats(instances=3, bytes=210, studies=1, series=1, patients=1)
        assert [r.sop_instance_uid for r in a.list(limit=10)] == ["1.2.3.3", "1.2.3.2", "1.2.3.1"]


def test_queries_answer_for_the_cluster_one_row_per_instance(postgres_url: str) -> None:
    with open_catalog(postgres_url, node="a") as a, open_catalog(postgres_url, node="b") as b:
        a.apply([record(1), record(2)])
        b.apply([msgspec.structs.replace(record(1), path="elsewhere.dcm"), record(3, study=1)])
        image = CatalogQuery("IMAGE", aggregates=frozenset({"nodes"}))
        for me, path in ((a, "1.2.4.0/1.2.4.0.0/1.2.3.1.dcm"), (b, "elsewhere.dcm")):
            rows = me.query(image).fetch(100)
            assert [r["sop_instance_uid"] for r in rows] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
            assert rows[0]["path"] == path  # the asking node's copy first
            assert [r["nodes"] for r in rows] == [["a", "b"], ["a"], ["b"]]
        study = CatalogQuery("STUDY", (Match("patient_id", "equal", ("P1",)),),
                             frozenset({"related_instances", "related_series"}))
        rows = a.query(study).fetch(10)
        assert [(r["study_instance_uid"], r["related_instances"]) for r in rows] == [("1.2.4.0", 2), ("1.2.4.1", 1)]
        with open_catalog(postgres_url) as cluster:  # no node: the tools' view
            assert cluster.count() == 4
            assert [r["sop_instance_uid"] for r in cluster.query(image).fetch(10)] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
            with pytest.raises(CatalogError, match="without a node"):
                cluster.apply([record(9)])
            with pytest.raises(CatalogError, match="without a node"):
                cluster.progress("w0-1-1")


def test_case_folding_is_ascii_only_whatever_the_locale(postgres_url: str) -> None:
    with open_catalog(postgres_url, node="a") as catalog:
        catalog.apply([msgspec.structs.replace(record(1), patient_name="MÜLLER^Anna"),
                       msgspec.structs.replace(record(2), patient_name="müller^anna")])
        query = CatalogQuery("IMAGE", (Match("patient_name", "pattern", ("müller*",), fold_case=True),))
        assert [r["sop_instance_uid"] for r in catalog.query(query).fetch(10)] == ["1.2.3.2"]  # Ü is no ü


def test_batches_of_one_node_are_serialised_other_nodes_are_not(postgres_url: str) -> None:
    with open_catalog(postgres_url, node="a") as a:
        a.apply([record(1)])
    key = PostgresCatalog(postgres_url, node="a", lazy=True)._node_lock
    with psycopg.connect(postgres_url) as holder:  # another indexer of node a, mid-batch
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        with open_catalog(postgres_url, node="a", timeout_s=0.3) as blocked:
            started = time.monotonic()
            with pytest.raises(CatalogBusy):
                blocked.apply([record(2)])
            assert time.monotonic() - started < 5
        with open_catalog(postgres_url, node="b", timeout_s=0.3) as other:
            other.apply([record(2)])  # another node's batch does not wait
        holder.rollback()
    with open_catalog(postgres_url, node="a") as a:
        a.apply([record(3)])
        assert a.count() == 3


def test_nul_characters_are_stored_as_replacement_characters(postgres_url: str) -> None:
    with open_catalog(postgres_url, node="a") as catalog:
        catalog.apply([msgspec.structs.replace(record(1), patient_name="Doe\x00^Jane")])
        assert catalog.get("1.2.3.1").patient_name == "Doe\ufffd^Jane"


def test_a_catalog_outlives_a_database_restart() -> None:
    from bench.postgres import TemporaryPostgres

    server = TemporaryPostgres().start()
    try:
        catalog = open_catalog(server.url, node="a")
        catalog.apply([record(1)], {"w0-1-1": 10})
        query = CatalogQuery("IMAGE")
        assert len(catalog.query(query).fetch(10)) == 1  # a pooled read connection
        server.stop()
        with pytest.raises(CatalogError):
            catalog.apply([record(2)], {"w0-1-1": 20})
        with pytest.raises(CatalogError):
            catalog.progress("w0-1-1")
        server.start()
        time.sleep(1.1)  # past the pause after a failed connection attempt
        catalog.apply([record(2)], {"w0-1-1": 20})
        assert catalog.progress("w0-1-1") == 20
        assert len(catalog.query(query).fetch(10)) == 2
        catalog.close()
    finally:
        server.destroy()


def test_lazy_catalog_connects_on_first_use_and_errors_are_catalog_errors(postgres: object) -> None:
    from bench.postgres import free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    catalog = open_catalog(url, node="a", lazy=True)  # nothing listens there: no error yet
    with pytest.raises(CatalogError) as failed:
        catalog.count()
    assert isinstance(failed.value, CatalogUnavailable)
    assert type(failed.value.__cause__).__module__.startswith("psycopg")
    catalog.close()
    with pytest.raises(CatalogError):
        open_catalog(url, node="a")
    with pytest.raises(CatalogError, match="not a PostgreSQL URL"):
        open_catalog("postgresql://host/db?nonsense=1", lazy=True)


def test_a_password_never_shows_in_the_catalog_s_name() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://h/db?user=u&password=secret") == "postgresql://h/db?user=u&password=***"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    catalog = PostgresCatalog("postgresql://u:secret@127.0.0.1:1/db", node="a", lazy=True)
    assert "secret" not in catalog.path
