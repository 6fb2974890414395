"""The indexer in one process, built without spawning: it tails live segments (waiting at
a frame being written), keeps failed commits pending with back-off and reads no more
meanwhile, finishes and retires the segments of writers that are gone (ignoring a torn
tail), follows its shard ``k % M`` only, shares its reads among segments, leaves an idle
segment unread, and a new indexer resumes from the progress; plus the crash
reconciliation of files that reached the disk but not the journal."""

from __future__ import annotations

import fcntl
import os
import socket
import time

from storage import CatalogBusy, JournalWriter, journal_dir, open_catalog
from tests.workers.test_ipc import record
from workers import indexer as indexer_module
from workers.config import load_config
from workers.indexer import Indexer, segment_worker
from workers.ipc import Spec
from workers.recovery import reconcile


def _indexer(root, indexers: int = 1, j: int = 0) -> Indexer:
    config = load_config(None, {"storage": str(root), "indexers": indexers})
    a, _b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Indexer(Spec(role="indexer", index=j, config=config, lock_fd=-1), a)


def _live_segment(root, name: str) -> tuple[JournalWriter, int]:
    """A segment whose writer is alive: its lock is held (as a worker holds it)."""
    os.makedirs(journal_dir(root), exist_ok=True)
    lock = os.open(os.path.join(journal_dir(root), name + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return JournalWriter(root, name), lock


def _dead_segment(root, name: str, *records) -> str:
    """A segment whose writer is gone (its lock released); its path."""
    writer, lock = _live_segment(root, name)
    writer.append_many(records)
    writer.close()
    os.close(lock)
    return writer.path


def _frame(tmp_path, rec) -> bytes:
    """One journal frame, as a writer's write(2) puts it in the file."""
    scratch = JournalWriter(tmp_path / "scratch", f"s-{rec.instance_number}-0")
    scratch.append_many([rec])
    scratch.close()
    with open(scratch.path, "rb") as fp:
        return fp.read()


def _rows(root) -> set[str]:
    with open_catalog(os.path.join(root, "index.sqlite")) as index:
        return {r.sop_instance_uid for r in index.list(limit=1000)}


def _uids(*numbers: int) -> set[str]:
    return {f"1.2.3.{n}" for n in numbers}


def test_live_segment_is_tailed_and_a_frame_being_written_waits(tmp_path):
    root = str(tmp_path)
    journal, lock = _live_segment(root, "w0-10-1")
    ix = _indexer(root)
    now = time.monotonic()
    assert ix.poll(now) == 0 and "w0-10-1" in ix.segments  # found, nothing in it yet
    end1 = journal.append_many([record(1), record(2)])
    assert ix.poll(now) == 2 and ix.commit()
    assert _rows(root) == _uids(1, 2) and ix.index.progress("w0-10-1") == end1
    # The writer is in the middle of its next write(2): the reader sees half a frame.
    frame = _frame(tmp_path, record(3))
    with open(journal.path, "ab") as fp:
        fp.write(frame[:9])
        fp.flush()
        tail = ix.segments["w0-10-1"].tail
        for _ in range(3):
            now += indexer_module._LIVENESS_S  # idle polls ask about the writer: alive
            assert ix.poll(now) == 0 and not ix.pending
            assert tail.stalled and tail.offset == end1 and not ix.segments["w0-10-1"].dead
        assert os.path.exists(journal.path)
        # ... and finishes it: the next poll reads it from the same offset.
        fp.write(frame[9:])
    assert ix.poll(now) == 1 and ix.commit()
    assert _rows(root) == _uids(1, 2, 3) and ix.index.progress("w0-10-1") == end1 + len(frame)
    # A new indexer (after a restart) resumes from the progress: nothing twice.
    again = _indexer(root)
    assert again.poll(time.monotonic()) == 0 and again.segments["w0-10-1"].tail.offset == end1 + len(frame)
    os.close(lock)


def test_failed_commits_keep_records_retry_with_back_off_and_read_no_more(tmp_path, monkeypatch):
    root = str(tmp_path)
    journal, lock = _live_segment(root, "w0-10-1")
    journal.append_many([record(n) for n in range(1, 6)])
    monkeypatch.setattr(indexer_module, "_BATCH_MAX", 3)
    ix = _indexer(root)
    real_apply = ix.index.apply
    down = [True]

    def apply(records, progress, files=None):
        if down[0]:
            raise CatalogBusy("database is locked")
        return real_apply(records, progress, files)

    monkeypatch.setattr(ix.index, "apply", apply)
    now = time.monotonic()
    assert ix.poll(now) == 3 and ix.behind  # one batch, no more
    waits = []
    for _ in range(6):
        assert not ix.commit()
        waits.append(ix.retry_s)
        assert ix.retry_at > time.monotonic()
        assert ix.poll(now) == 0 and len(ix.pending) == 3  # bounded: reading stops
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert ix.stats.commit_errors == 6
    # The writer is not slowed: the journal grows meanwhile.
    journal.append_many([record(6)])
    down[0] = False
    assert ix.commit() and ix.retry_s == 0.0
    assert _rows(root) == _uids(1, 2, 3)
    while ix.poll(time.monotonic()):
        assert ix.commit()
    assert _rows(root) == _uids(1, 2, 3, 4, 5, 6)
    assert ix.index.progress("w0-10-1") == journal.offset
    assert ix.stats.indexed == 6
    os.close(lock)


def test_dead_writers_segment_with_a_torn_tail_is_finished_and_retired(tmp_path):
    root = str(tmp_path)
    journal, lock = _live_segment(root, "w0-10-1")
    journal.append_many([record(1)])
    ix = _indexer(root)
    now = time.monotonic()
    assert ix.poll(now) == 1 and ix.commit()
    # The writer appends one more, is killed halfway through the next, and its lock goes.
    journal.append_many([record(2)])
    with open(journal.path, "ab") as fp:
        fp.write(_frame(tmp_path, record(3))[:12])
    journal.close()
    os.close(lock)
    assert ix.poll(now) == 1 and ix.commit()  # what it appended since
    assert os.path.exists(journal.path)
    now += indexer_module._LIVENESS_S
    assert ix.poll(now) == 0 and ix.segments["w0-10-1"].dead and ix.behind  # asked: gone
    assert ix.poll(now) == 0  # read to its end (the torn frame is not a record): retired
    assert "w0-10-1" not in ix.segments
    assert not os.path.exists(journal.path)
    assert not os.path.exists(os.path.join(journal_dir(root), "w0-10-1.lock"))
    assert ix.index.progress("w0-10-1") == 0  # forgotten
    assert _rows(root) == _uids(1, 2) and ix.stats.retired == 1


def test_a_segment_is_retired_only_once_its_records_are_committed(tmp_path, monkeypatch):
    root = str(tmp_path)
    path = _dead_segment(root, "w0-1-1", record(1))
    ix = _indexer(root)

    def locked(records, progress, files=None):
        raise CatalogBusy("database is locked")

    monkeypatch.setattr(ix.index, "apply", locked)
    ix._finish()  # at stop: the commit fails, the segment stays for the supervisor's replay
    assert os.path.exists(path) and len(ix.pending) == 1
    monkeypatch.undo()
    ix.commit()
    ix._finish()
    assert not os.path.exists(path) and _rows(root) == _uids(1)


def test_a_finished_segment_is_deleted_only_after_the_index_is_synced(tmp_path, monkeypatch):
    """The index's commits may not be on disk yet (SQLite syncs its WAL at checkpoints):
    the segment that could replay them goes only after Catalog.sync; a sync that fails
    leaves it for a later try."""
    root = str(tmp_path)
    path = _dead_segment(root, "w0-1-1", record(1))
    ix = _indexer(root)
    events = []

    def failing_sync():
        events.append("sync failed")
        raise CatalogBusy("disk I/O error")

    monkeypatch.setattr(ix.index, "sync", failing_sync)
    ix._finish()
    assert os.path.exists(path) and events == ["sync failed"] and _rows(root) == _uids(1)
    assert ix.stats.retired == 0
    real_unlink = os.unlink

    def unlink(p, *args, **kwargs):
        events.append(f"unlink {os.path.basename(p)}")
        return real_unlink(p, *args, **kwargs)

    monkeypatch.setattr(ix.index, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(os, "unlink", unlink)
    ix._finish()
    monkeypatch.undo()
    assert not os.path.exists(path) and ix.stats.retired == 1
    assert events[1:3] == ["sync", "unlink w0-1-1.log"]


def test_each_indexer_follows_its_shard_only(tmp_path):
    root = str(tmp_path)
    for k in range(4):
        _dead_segment(root, f"w{k}-{k + 1}-1", record(10 + k))
    live, lock = _live_segment(root, "w2-9-9")
    live.append_many([record(20)])
    other = JournalWriter(root, "worker-1-1")  # no worker's: the supervisor replays it
    other.append_many([record(30)])
    other.close()
    first = _indexer(root, indexers=2, j=0)
    first._finish()
    assert _rows(root) == _uids(10, 12, 20)
    left = sorted(os.listdir(journal_dir(root)))
    assert left == ["w1-2-1.lock", "w1-2-1.log", "w2-9-9.lock", "w2-9-9.log", "w3-4-1.lock", "w3-4-1.log",
                    "worker-1-1.log"]
    second = _indexer(root, indexers=2, j=1)
    second._finish()
    assert _rows(root) == _uids(10, 11, 12, 13, 20)
    assert sorted(os.listdir(journal_dir(root))) == ["w2-9-9.lock", "w2-9-9.log", "worker-1-1.log"]
    assert segment_worker("w12-5-6") == 12 and segment_worker("worker-1-1") is None
    os.close(lock)


def test_a_segment_with_a_backlog_starves_no_other(tmp_path, monkeypatch):
    root = str(tmp_path)
    monkeypatch.setattr(indexer_module, "_BATCH_MAX", 5)
    first, lock1 = _live_segment(root, "w0-1-1")
    first.append_many([record(n) for n in range(100, 120)])
    second, lock2 = _live_segment(root, "w1-2-2")
    second.append_many([record(n) for n in range(200, 220)])
    ix = _indexer(root)
    now = time.monotonic()
    for _ in range(2):
        assert ix.poll(now) == 5 and ix.behind and ix.commit()
    assert ix.index.progress("w0-1-1") > 0 and ix.index.progress("w1-2-2") > 0
    os.close(lock1)
    os.close(lock2)


def test_an_idle_segment_is_looked_at_not_read(tmp_path, monkeypatch):
    root = str(tmp_path)
    journal, lock = _live_segment(root, "w0-10-1")
    journal.append_many([record(1)])
    ix = _indexer(root)
    now = time.monotonic()
    assert ix.poll(now) == 1 and ix.commit()
    reads = []
    tail = ix.segments["w0-10-1"].tail
    monkeypatch.setattr(tail, "read", lambda *a, **k: reads.append(a) or [])
    for _ in range(30):
        assert ix.poll(now) == 0
    assert reads == []  # the size did not change: nothing is read
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
