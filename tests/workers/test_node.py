"""The node end to end: ``scpfleet serve`` as a real process group, real peers.

Theory of operation: each test starts a node on an ephemeral port with its storage in
tmp_path, drives it with DCMTK tools or the engine's own requestor (which tells exactly
which C-STOREs were acknowledged), and checks the three truths against each other:
files on disk, rows in the SQLite index, and what the peer was told.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from storage import new_digest
from tests import peers
from tests.dicomdata import dataset_bytes, make_files, make_large_file
from tests.workers.nodes import HOST, associate, run, scpfleet, sop_uid, store_files

pytestmark = pytest.mark.interop


def _check_identical(node, files: list[Path], digest: str = "xxh3-128") -> None:
    stored = node.stored_files()
    rows = node.index_rows()
    digests = node.index_digests()
    assert len(stored) == len(files), f"{len(stored)} files stored, {len(files)} sent"
    assert len(rows) == len(files), f"{len(rows)} index rows, {len(files)} sent"
    for f in files:
        uid = sop_uid(f)
        data = dataset_bytes(f)
        assert dataset_bytes(stored[uid]) == data, f"{uid}: data set differs"
        assert rows[uid][0] == str(stored[uid].relative_to(node.storage))
        hasher = new_digest(digest)
        hasher.update(data)
        assert digests[uid] == (digest, hasher.hexdigest()), f"{uid}: digest of another data set"


def test_thousand_instances_over_two_workers(node_factory, thousand_files, peer_log_dir):
    """(1) 1000 instances, 8 storescu associations, 2 workers: all stored byte-identical,
    all indexed, and both workers served associations (per the per-association lines)."""
    peers.require_dcmtk()
    node = node_factory("--workers", "2", "--durability", "batch")
    started = time.monotonic()
    results = peers.run_storescu_parallel(HOST, node.port, thousand_files, 8, aec="SCPFLEET",
                                          log_dir=peer_log_dir)
    elapsed = time.monotonic() - started
    for result in results:
        result.check_ok()
    node.wait_for(lambda: len(node.index_rows()) == 1000, what="1000 index rows")
    _check_identical(node, thousand_files)
    lines = node.association_lines()
    stores = [line for line in lines if "calling=STORESCU" in line]
    assert len(stores) == 8, "\n".join(lines)
    by_worker: dict[str, int] = {}
    for line in stores:
        worker = re.search(r" worker=(\d+) ", line).group(1)
        instances = int(re.search(r" instances=(\d+) ", line).group(1))
        assert "outcome=released" in line and " failed=0 " in line, line
        by_worker[worker] = by_worker.get(worker, 0) + instances
    assert set(by_worker) == {"0", "1"}, by_worker
    assert sum(by_worker.values()) == 1000
    print(f"1000 instances over 8 associations in {elapsed:.2f} s (storescu start included)")
    assert node.stop() == 0


def test_sigterm_drains_a_store_in_flight(node_factory, tmp_path):
    """(3) SIGTERM while a 64 MiB instance is streaming: it completes with success, the
    node exits 0, and the index holds it."""
    big = make_large_file(tmp_path / "big.dcm", 64 << 20, unique=True)
    node = node_factory("--workers", "1", "--drain-timeout", "30")
    temp_dir = node.storage / ".tmp"

    def signal_when_streaming() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(p.stat().st_size > (1 << 20) for p in temp_dir.glob("*.part")):
                node.popen.send_signal(signal.SIGTERM)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=signal_when_streaming)
    killer.start()
    results = run(store_files(node.port, [big]))
    killer.join()
    assert results[0][1] == 0x0000, node.log()
    assert node.popen.wait(30) == 0, node.log()
    rows = node.index_rows()
    assert sop_uid(big) in rows, node.log()
    assert "SIGTERM received" in node.log()
    assert not list(temp_dir.iterdir())


def test_association_limit_rejects_transient_local_limit(node_factory, tiny_files):
    """(4) --max-associations 2, over 2 workers: the third gets A-ASSOCIATE-RJ (2, 3, 2);
    releasing one frees its slot; a killed worker's slots are given back."""
    node = node_factory("--workers", "2", "--max-associations", "2")
    files = tiny_files[:4]

    async def scenario() -> None:
        from tests.workers.nodes import _contexts

        contexts = _contexts(files)
        first = await associate(node.port, contexts)
        second = await associate(node.port, contexts)
        assert first.is_established and second.is_established
        third = await associate(node.port, contexts)
        assert third.is_rejected, node.log()
        rj = third.rejection
        assert (rj.result, rj.source, rj.reason) == (2, 3, 2)
        await first.release()
        fourth = await associate(node.port, contexts)
        assert fourth.is_established, node.log()
        status = await fourth.send_c_store(files[0])
        assert status.Status == 0
        # Kill every worker holding an association: its slots must come back.
        holders = set(node.worker_pids().values())
        for pid in holders:
            import os

            os.kill(pid, signal.SIGKILL)
        node.wait_for(lambda: not holders & set(node.worker_pids().values())
                      and len(node.worker_pids()) == 2, what="workers restarted")
        again = [await associate(node.port, contexts) for _ in range(2)]
        assert all(a.is_established for a in again), node.log()
        for a in again:
            await a.release()
        second.abort()
        fourth.abort()

    run(scenario())
    assert any("outcome=rejected" in line and "local-limit-exceeded" in line for line in node.association_lines())
    assert node.stop() == 0


def test_ls_stats_and_metrics(node_factory, tiny_files):
    """(8) ls and stats read the index after a store; /metrics counters move."""
    node = node_factory("--workers", "1", "--metrics-port", "0", "--durability", "none")
    url = f"http://{HOST}:{node.metrics_port}/metrics"

    def metric(text: str, name: str) -> float:
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + "{") or line.startswith(name + " ")]
        return sum(values)

    before = urllib.request.urlopen(url, timeout=10).read().decode()
    assert metric(before, "scpfleet_instances_received_total") == 0
    files = tiny_files[:20]
    results = run(store_files(node.port, files))
    assert all(status == 0 for _, status, _ in results)
    node.wait_for(lambda: len(node.index_rows()) == 20, what="20 index rows")

    def moved() -> bool:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return metric(text, "scpfleet_instances_received_total") == 20

    node.wait_for(moved, what="metrics to count 20 instances")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert metric(text, "scpfleet_bytes_received_total") > 0
    assert metric(text, "scpfleet_store_latency_seconds_count") == 20
    assert "scpfleet_active_associations{" in text
    assert "scpfleet_index_lag_records" in text
    node.wait_for(lambda: metric(urllib.request.urlopen(url, timeout=10).read().decode(),
                                 "scpfleet_indexed_records_total") == 20, what="indexed counter")

    listing = scpfleet("ls", "--storage", str(node.storage), "--limit", "5")
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.strip().splitlines()) == 6  # header + 5
    study = node.index_rows()[sop_uid(files[0])][0].split("/")[0]
    by_study = scpfleet("ls", "--storage", str(node.storage), "--study", study, "--json")
    assert by_study.returncode == 0 and by_study.stdout.count("\n") >= 1
    assert all(study in line for line in by_study.stdout.splitlines())
    stats = scpfleet("stats", "--storage", str(node.storage))
    assert stats.returncode == 0, stats.stderr
    assert "instances: 20" in stats.stdout
    assert re.search(r"studies: [1-9]", stats.stdout) and re.search(r"patients: [1-9]", stats.stdout)
    assert node.stop() == 0


@pytest.mark.parametrize("durability", ["none", "batch"])
def test_digest_sha256_on_request(node_factory, tiny_files, durability):
    """--digest sha256: every row carries the SHA-256 of its data set as received, and
    verify --digests checks the files by it."""
    node = node_factory("--workers", "1", "--durability", durability, "--digest", "sha256")
    files = tiny_files[:10]
    results = run(store_files(node.port, files))
    assert all(status == 0 for _, status, _ in results)
    node.wait_for(lambda: len(node.index_rows()) == 10, what="10 index rows")
    _check_identical(node, files, digest="sha256")
    checked = scpfleet("verify", "--storage", str(node.storage), "--digests")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert node.stop() == 0


def test_journal_segments_rotate_and_retire(node_factory, tiny_files):
    """A worker's journal rotates past --journal-segment-bytes; full segments are indexed
    and deleted while it runs, so the journal stays small."""
    node = node_factory("--workers", "1", "--journal-segment-bytes", "8192", "--durability", "none")
    results = run(store_files(node.port, tiny_files, associations=2))
    assert all(status == 0 for _f, status, _p in results)
    node.wait_for(lambda: len(node.index_rows()) == len(tiny_files), what="every row")
    journal = node.storage / ".journal"
    node.wait_for(lambda: len(list(journal.glob("*.log"))) <= 2, what="full segments retired")
    assert node.log().count("full, continuing in") >= 3
    assert node.stop() == 0
    assert not list(journal.iterdir())


def test_kill_whole_node_mid_load_then_recover(node_factory, tmp_path):
    """(9) kill -9 of every process mid-load; after a restart: rows == files on disk ⊇
    acknowledged, and nothing temporary is visible as an instance."""
    files = make_files(tmp_path / "load", {"tiny": 400})
    node = node_factory("--workers", "2")
    acknowledged: list[Path] = []
    killed = threading.Event()

    def on_status(f: Path, status: int | None) -> None:
        if status == 0:
            acknowledged.append(f)
        if len(acknowledged) == 150 and not killed.is_set():
            killed.set()
            node.kill_all()

    run(store_files(node.port, files, associations=4, on_status=on_status))
    assert killed.is_set(), "the load finished before the kill"
    assert not node.running
    node.start()
    stored = node.stored_files()
    rows = node.index_rows()
    assert set(rows) == set(stored), f"{len(rows)} rows, {len(stored)} files"
    missing = {sop_uid(f) for f in acknowledged} - set(stored)
    assert not missing, f"{len(missing)} acknowledged instance(s) lost"
    assert not list((node.storage / ".tmp").iterdir())
    for f in acknowledged:
        assert dataset_bytes(stored[sop_uid(f)]) == dataset_bytes(f)
    assert node.stop() == 0


def test_pure_python_metadata_walk_indexes_what_the_c_walk_does(node_factory, dicom_files, tmp_path):
    """The node with the metadata walk in pure Python (SCPFLEET_PURE_PYTHON=1) and the
    node with it in C (storage._speedups, which the install builds) store every kind of
    the corpus (implicit, big endian, deflated, encapsulated, ...) alike: the same files,
    the same index rows, field for field."""
    import storage

    try:
        import storage._speedups  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"storage._speedups is not built ({exc}): `pip install -e .` needs a C compiler")
    columns = ("path", "size", "digest", "transfer_syntax_uid", "study_instance_uid", "series_instance_uid",
               *storage.QUERY_FIELDS)
    indexes = []
    for env in ({"SCPFLEET_PURE_PYTHON": ""}, {"SCPFLEET_PURE_PYTHON": "1"}):
        node = node_factory("--workers", "1", "--durability", "none",
                            storage=tmp_path / f"archive-{len(indexes)}", env=env)
        results = run(store_files(node.port, dicom_files))
        assert all(status == 0 for _, status, _ in results), results
        node.wait_for(lambda: len(node.index_rows()) == len(dicom_files), what="every file indexed")
        _check_identical(node, dicom_files)
        indexes.append(node._index(*columns))
        assert node.stop() == 0
    c, pure = indexes
    assert c == pure
    assert all(row[columns.index("study_instance_uid")] for row in c.values())
