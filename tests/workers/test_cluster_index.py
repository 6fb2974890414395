"""Two real nodes sharing one PostgreSQL index: what each stores is indexed as its rows,
queries answer for both, a retrieve fails what only the other node holds, commitment
commits both, and the tools read the whole cluster.

Theory of operation: two ``scpfleet serve`` processes on their own storage roots,
``--index`` the URL of a fresh database of the session's PostgreSQL (tests/conftest.py),
``--node-id`` alpha and beta. DCMTK storescu sends half of a corpus to each, so every
study spans both nodes; findscu, getscu and pynetdicom's commitment SCU then talk to
alpha alone. The database's rows are read with plain SQL from outside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pydicom
import pytest

from tests import peers
from tests.dicomdata import dataset_bytes
from tests.workers.nodes import HOST, scpfleet, sop_uid

pytestmark = pytest.mark.interop

_PEER = Path(__file__).parent / "services" / "_pynetdicom_qr.py"


def pg_rows(url: str) -> dict[tuple[str, str], tuple[str, int, str]]:
    """(node, sop_instance_uid) -> (path, size, digest) of every row (none before a node
    has made the schema)."""
    with psycopg.connect(url) as db:
        try:
            rows = db.execute("SELECT node, sop_instance_uid, path, size, digest FROM instances").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {(node, uid): (path, size, digest) for node, uid, path, size, digest in rows}


def study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_two_nodes_one_index(node_factory, tiny_files: list[Path], postgres_database: str, tmp_path: Path) -> None:
    url = postgres_database
    common = ("--index", url, "--workers", "1", "--durability", "none")
    alpha = node_factory(*common, "--node-id", "alpha", storage=tmp_path / "alpha")
    beta = node_factory(*common, "--node-id", "beta", storage=tmp_path / "beta")
    mine, theirs = tiny_files[:10], tiny_files[10:20]
    for node, files in ((alpha, mine), (beta, theirs)):
        result = peers.run_storescu(HOST, node.port, files, aec="SCPFLEET", log_dir=tmp_path / "logs")
        assert result.returncode == 0, result.describe()
    alpha.wait_for(lambda: len(pg_rows(url)) == 20, what="20 rows in the shared index")
    rows = pg_rows(url)
    assert {key for key in rows if key[0] == "alpha"} == {("alpha", sop_uid(p)) for p in mine}
    assert {key for key in rows if key[0] == "beta"} == {("beta", sop_uid(p)) for p in theirs}

    # C-FIND on alpha answers for the cluster.
    study = study_of(mine[0])
    in_study = {sop_uid(p): p for p in mine + theirs if study_of(p) == study}
    assert {sop_uid(p) for p in theirs} & set(in_study), "the study must span both nodes"
    def find(keys: list[str], attribute: str) -> set[str]:
        out = tmp_path / f"find-{len(list(tmp_path.glob('find-*')))}"
        found = peers.run_findscu(HOST, alpha.port, keys, aec="SCPFLEET", out_dir=out, log_dir=tmp_path / "logs")
        assert "Received Final Find Response (Success)" in found.stdout + found.stderr, found.describe()
        return {str(getattr(pydicom.dcmread(p, force=True), attribute)) for p in out.glob("rsp*.dcm")}

    uids: set[str] = set()
    for series in find(["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID"],
                       "SeriesInstanceUID"):
        uids |= find(["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}",
                      "SOPInstanceUID"], "SOPInstanceUID")
    assert uids == set(in_study)

    # C-GET on alpha sends what alpha holds and fails what only beta holds.
    got = tmp_path / "got"
    peers.run_getscu(HOST, alpha.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"], got,
                     aec="SCPFLEET", log_dir=tmp_path / "logs")
    received = {sop_uid(p): p for p in got.iterdir()} if got.exists() else {}
    ours = {uid for uid, p in in_study.items() if p in mine}
    assert set(received) == ours
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(in_study[uid])
    assert "held only by other nodes" in alpha.log() and " on beta" in alpha.log()

    # Storage Commitment on alpha commits both nodes' instances (beta's on the index's word).
    refs = []
    for path in mine[:3] + theirs[:3]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs.append([str(ds.SOPClassUID), str(ds.SOPInstanceUID)])
    request = tmp_path / "commit.json"
    request.write_text(json.dumps({"references": refs, "transaction": "1.2.826.0.1.3680043.8.498.777"}))
    done = subprocess.run(
        [sys.executable, str(_PEER), "commit", "--host", HOST, "--port", str(alpha.port), "--aec", "SCPFLEET",
         "--aet", "COMMITSCU", "--request", str(request)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = json.loads(done.stdout.strip().splitlines()[-1])["reports"]
    assert report["event_type"] == 1 and sorted(map(tuple, report["committed"])) == sorted(map(tuple, refs))

    # The tools read the whole cluster, and each node's share.
    stats = scpfleet("stats", "--index", url, "--json")
    assert stats.returncode == 0, stats.stderr
    totals = json.loads(stats.stdout)
    assert totals["instances"] == 20
    assert {node: s["instances"] for node, s in totals["nodes"].items()} == {"alpha": 10, "beta": 10}
    listed = scpfleet("ls", "--index", url, "--json", "--limit", "100")
    assert {json.loads(line)["sop_instance_uid"] for line in listed.stdout.splitlines()} == {
        sop_uid(p) for p in mine + theirs}
    verified = scpfleet("verify", "--storage", str(alpha.storage), "--index", url, "--node-id", "alpha")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "10 instance file(s), 10 row(s), 0 disagreement(s)" in verified.stdout
    assert alpha.stop() == 0 and beta.stop() == 0


def test_a_node_starts_and_stores_while_its_database_is_down(node_factory, tiny_files: list[Path],
                                                             tmp_path: Path) -> None:
    """The database is not on the store path: a node whose index cannot be reached starts
    after a few tries, stores and acknowledges; once the database is there, its indexer
    creates the schema and carries the journal into it."""
    from bench.postgres import TemporaryPostgres

    server = TemporaryPostgres().start()
    try:
        url = server.url
        server.stop()
        node = node_factory("--index", url, "--node-id", "lonely", "--workers", "1", "--durability", "none",
                            "--metrics-port", "0", storage=tmp_path / "lonely")
        assert "unreachable" in node.log() and "serving without it" in node.log()
        files = tiny_files[:15]
        result = peers.run_storescu(HOST, node.port, files, aec="SCPFLEET", log_dir=tmp_path / "logs")
        assert result.returncode == 0, result.describe()  # every C-STORE acknowledged
        assert len(node.stored_files()) == 15
        server.start()
        node.wait_for(lambda: len(pg_rows(url)) == 15, timeout=60, what="the journal carried into the index")
        assert {uid for _, uid in pg_rows(url)} == {sop_uid(p) for p in files}
        assert node.stop() == 0
    finally:
        server.destroy()


def test_a_newer_schema_stops_the_node_in_one_line(postgres_database: str, tmp_path: Path) -> None:
    from storage import open_catalog

    with open_catalog(postgres_database, node="someone"):
        pass  # the schema, as a node makes it
    with psycopg.connect(postgres_database, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = version + 1")
    import os

    from tests.workers.nodes import REPO

    done = subprocess.run([sys.executable, "-m", "workers.cli", "serve", "--host", HOST, "--port", "0",
                           "--storage", str(tmp_path / "s"), "--workers", "1"], capture_output=True, text=True,
                          timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "SCPFLEET_INDEX": postgres_database})
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("scpfleet: error:")]
    assert len(errors) == 1 and "newer than this scpfleet supports" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
