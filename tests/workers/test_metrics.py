"""Metrics in one process: the index lag measured from the journal, per indexer, and
the summary line that shows it."""

from __future__ import annotations

import os

from storage import JournalWriter, open_catalog
from tests.workers.test_ipc import record
from workers.metrics import NodeMetrics, index_lag


def test_index_lag_per_indexer_from_journal_sizes_and_progress(tmp_path):
    root = str(tmp_path)
    index_path = os.path.join(root, "index.sqlite")
    w0 = JournalWriter(root, "w0-1-1")
    indexed = w0.append_many([record(1), record(2)])
    w0.append_many([record(3)])
    w1 = JournalWriter(root, "w1-2-1")
    w1.append_many([record(4), record(5)])
    w2 = JournalWriter(root, "w2-3-1")
    w2.append_many([record(6)])
    JournalWriter(root, "worker-9-9").append_many([record(7)])  # no worker's: not an indexer's lag
    assert index_lag(root, index_path, 2) == {0: (4, w0.offset + w2.offset), 1: (2, w1.offset)}
    with open_catalog(index_path) as index:
        index.apply([record(1), record(2)], {"w0-1-1": indexed})
    assert index_lag(root, index_path, 2) == {0: (2, w0.offset - indexed + w2.offset), 1: (2, w1.offset)}
    assert index_lag(root, index_path, 1) == {0: (4, w0.offset - indexed + w1.offset + w2.offset)}
    assert index_lag(str(tmp_path / "nothing"), index_path, 2) == {0: (0, 0), 1: (0, 0)}
    metrics = NodeMetrics(root, index_path, 2)
    assert " index lag 4 records (" in metrics.summary() and "; i0=2 i1=2)" in metrics.summary()
    families = {f.name: f for f in metrics.families()}
    assert {s.labels["indexer"]: s.value for s in families["scpfleet_index_lag_records"].samples} == {
        "0": 2, "1": 2
    }
    assert "scpfleet_index_queue_bytes" not in families


def test_health_follows_the_node_s_life(tmp_path):
    from workers.ipc import WorkerStats

    metrics = NodeMetrics(str(tmp_path), os.path.join(str(tmp_path), "index.sqlite"), 1, node="n1")
    assert metrics.health() == (503, {"status": "starting", "node": "n1", "workers": 0, "active_associations": 0})
    metrics.state, metrics.running_workers, metrics.listening = "ready", 2, True
    metrics.update("worker", 0, WorkerStats(active=3))
    assert metrics.health() == (200, {"status": "ready", "node": "n1", "workers": 2, "active_associations": 3})
    metrics.listening = False  # the listener restarting: nobody accepts
    assert metrics.health()[1]["status"] == "degraded" and metrics.health()[0] == 503
    metrics.listening = True
    metrics.state = "draining"
    assert metrics.health()[0] == 503 and metrics.health()[1]["status"] == "draining"
    families = {f.name: f for f in metrics.families()}
    assert [s.value for s in families["scpfleet_ready"].samples] == [0]
    lag = families["scpfleet_index_lag_records"].samples
    assert {s.labels["node"] for s in lag} == {"n1"}
