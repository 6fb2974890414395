"""The indexer's bookkeeping in one process: gaps filled from the journal, duplicates
skipped, progress monotonic, dead segments finished and retired, and the crash
reconciliation of files that reached the disk but not the journal."""

from __future__ import annotations

import fcntl
import os
import socket

from storage import JournalWriter, journal_dir, open_catalog
from tests.workers.test_ipc import record
from workers.config import load_config
from workers.indexer import Indexer, segment_worker
from workers.ipc import IndexBatch, IndexHello, Spec
from workers.recovery import reconcile


def _indexer(root, indexers: int = 1, j: int = 0) -> Indexer:
    config = load_config(None, {"storage": str(root), "indexers": indexers})
    a, _b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Indexer(Spec(role="indexer", index=j, config=config, lock_fd=-1), a)


def _live_segment(root, name: str) -> tuple[JournalWriter, int]:
    os.makedirs(journal_dir(root), exist_ok=True)
    lock = os.open(os.path.join(journal_dir(root), name + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return JournalWriter(root, name), lock


def _rows(root) -> set[str]:
    with open_catalog(os.path.join(root, "index.sqlite")) as index:
        return {r.sop_instance_uid for r in index.list(limit=1000)}


def test_gap_filled_from_journal_and_duplicates_skipped(tmp_path):
    root = str(tmp_path)
    journal, lock = _live_segment(root, "w0-10-1")
    ix = _indexer(root)
    end1 = journal.append_many([record(1)])
    end2 = journal.append_many([record(2), record(3)])
    # Only the second batch arrives (the first was on a lost stream): r1 comes from the file.
    ix._on_frame(None, IndexBatch("w0-10-1", end1, end2, [record(2), record(3)]))
    assert ix.commit()
    assert _rows(root) == {"1.2.3.1", "1.2.3.2", "1.2.3.3"}
    assert ix.index.progress("w0-10-1") == end2
    # A late duplicate changes nothing, progress never moves back.
    ix._on_frame(None, IndexBatch("w0-10-1", 0, end1, [record(1)]))
    assert not ix.pending and ix.index.progress("w0-10-1") == end2
    # A new stream's hello catches up on what was journalled meanwhile.
    end3 = journal.append_many([record(4)])

    class Stream:
        segment = None

    ix._on_frame(Stream(), IndexHello("w0-10-1"))
    assert ix.commit() and ix.index.progress("w0-10-1") == end3
    assert "1.2.3.4" in _rows(root)
    # The writer still holds its segment: not finished yet.
    assert ix._finish("w0-10-1") is None
    assert os.path.exists(journal.path)
    # Its writer dies after one more append: the rest is indexed, the segment retired.
    journal.append_many([record(5)])
    journal.close()
    os.close(lock)
    assert ix._finish("w0-10-1") is True
    assert not os.path.exists(journal.path)
    assert not os.path.exists(os.path.join(journal_dir(root), "w0-10-1.lock"))
    assert ix.index.progress("w0-10-1") == 0
    assert len(_rows(root)) == 5


def test_sweep_finds_orphans_of_its_shard_only(tmp_path):
    root = str(tmp_path)
    for name in ("w0-1-1", "w1-2-2", "w2-3-3"):
        writer = JournalWriter(root, name)
        writer.append_many([record(int(name[1]) + 10)])
        writer.close()
    live, lock = _live_segment(root, "w2-4-4")
    ix = _indexer(root, indexers=2, j=0)
    ix._sweep()
    assert set(ix.finishing) == {"w0-1-1", "w2-3-3", "w2-4-4"}
    ix._try_finishing()
    assert not ix.finishing  # the live one is dropped, not retried
    assert os.path.exists(live.path) and os.path.exists(os.path.join(journal_dir(root), "w1-2-2.log"))
    assert _rows(root) == {"1.2.3.10", "1.2.3.12"}
    assert segment_worker("w12-5-6") == 12 and segment_worker("other") is None
    os.close(lock)


def test_reconcile_indexes_unjournalled_files(tmp_path, tiny_files):
    import shutil

    import pydicom

    root = tmp_path / "archive"
    src = tiny_files[0]
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    target = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True)
    shutil.copy(src, target)
    with open_catalog(root / "index.sqlite") as index:
        assert reconcile(str(root), index, 0.0) == 1
        row = index.get(ds.SOPInstanceUID)
        assert row is not None and row.size == target.stat().st_size
        assert row.study_instance_uid == ds.StudyInstanceUID and row.path.endswith(".dcm")
        assert reconcile(str(root), index, 0.0) == 0  # already indexed
