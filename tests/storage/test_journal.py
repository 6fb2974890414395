"""Journal: frames round-trip, torn tails are ignored, appends are reported in file
order, replay into a catalog is exactly-once, retirement spares live and unindexed
segments, a failed append never strands later frames nor takes back whole ones, and a
tail follows a growing segment, waiting at a frame being written."""

from __future__ import annotations

import errno
import os
import struct
import threading
from pathlib import Path

import pytest

from storage import (
    JournalError,
    JournalReader,
    JournalTail,
    JournalWriter,
    SqliteCatalog,
    journal_dir,
    replay,
    retire,
    segment_lock_path,
    segment_name,
    segment_names,
    segment_path,
)
from tests.storage import record


def test_segment_names_are_unique_per_writer_life(tmp_path: Path) -> None:
    assert segment_name(123, 456) == "worker-123-456"
    assert segment_name(123, 457, "w") != segment_name(123, 456, "w")
    assert segment_path(tmp_path, "w0-1-2") == os.path.join(journal_dir(tmp_path), "w0-1-2.log")
    assert segment_lock_path(tmp_path, "w0-1-2") == os.path.join(journal_dir(tmp_path), "w0-1-2.lock")
    assert segment_names(tmp_path) == []  # no journal directory yet
    writer = JournalWriter(tmp_path, "w0-1-2")
    assert writer.path == segment_path(tmp_path, "w0-1-2")
    writer.close()
    open(segment_lock_path(tmp_path, "w0-1-2"), "w").close()
    assert segment_names(tmp_path) == ["w0-1-2"]


def test_appends_are_reported_in_file_order(tmp_path: Path) -> None:
    """Four threads append concurrently: every report starts where the previous ended,
    and the reports, in order, are the file's records."""
    reports = []
    journal = JournalWriter(tmp_path, "w0-1-1", lambda s, e, recs: reports.append((s, e, recs)))

    def append(base: int) -> None:
        for i in range(50):
            journal.append_many(iter([record(base + i)]))  # any iterable

    threads = [threading.Thread(target=append, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    offset = 0
    for start, end, recs in reports:
        assert start == offset and isinstance(recs, list)
        offset = end
    assert offset == os.path.getsize(journal.path)
    on_disk = [r for r, _ in JournalReader(journal.path).read_from(0)]
    assert on_disk == [r for _, _, recs in reports for r in recs] and len(on_disk) == 200


def test_a_failed_append_is_not_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reports = []
    journal = JournalWriter(tmp_path, "w0-1-1", lambda s, e, recs: reports.append((s, e)))

    def enospc(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(OSError):
        journal.append_many([record(1)])
    monkeypatch.undo()
    end = journal.append_many([record(2)])
    assert reports == [(0, end)]


def test_round_trip_and_offsets(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    end1 = writer.append_many([record(1), record(2)])
    end2 = writer.append_many([record(3)])
    writer.sync()
    writer.close()
    assert end2 == os.path.getsize(writer.path) and 0 < end1 < end2
    reader = JournalReader(writer.path)
    got = list(reader.read_from(0))
    assert [r for r, _ in got] == [record(1), record(2), record(3)]
    assert got[1][1] == end1 and got[2][1] == end2
    assert not reader.torn
    assert [r for r, _ in JournalReader(writer.path).read_from(end1)] == [record(3)]


def test_segment_is_never_reopened(tmp_path: Path) -> None:
    JournalWriter(tmp_path, "w-1-1").close()
    with pytest.raises(FileExistsError):
        JournalWriter(tmp_path, "w-1-1")


@pytest.mark.parametrize(
    "damage",
    ["truncate-payload", "truncate-crc", "truncate-length", "bad-crc", "huge-length", "garbage"],
)
def test_torn_tail_is_ignored(tmp_path: Path, damage: str) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    good_end = writer.append_many([record(1), record(2)])
    writer.append_many([record(3)])
    writer.close()
    raw = bytearray(Path(writer.path).read_bytes())
    if damage == "truncate-payload":
        raw = raw[: good_end + 10]
    elif damage == "truncate-crc":
        raw = raw[:-2]
    elif damage == "truncate-length":
        raw = raw[: good_end + 2]
    elif damage == "bad-crc":
        raw[-1] ^= 0xFF
    elif damage == "huge-length":
        raw[good_end : good_end + 4] = struct.pack("<I", 0xFFFFFF)
    else:
        raw = raw[:good_end] + b"\x05\x00\x00\x00hello\x00\x00\x00\x00"
    Path(writer.path).write_bytes(bytes(raw))
    reader = JournalReader(writer.path)
    got = list(reader.read_from(0))
    assert [r for r, _ in got] == [record(1), record(2)]
    assert got[-1][1] == good_end
    assert reader.torn


def test_replay_is_exactly_once(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    writer.append_many([record(n) for n in range(7)])
    other = JournalWriter(tmp_path, "w-2-1")
    other.append_many([record(100)])
    with SqliteCatalog(tmp_path / "index.sqlite") as index:
        assert replay(tmp_path, index, batch=3) == 8
        assert index.count() == 8
        assert replay(tmp_path, index) == 0  # nothing new: no duplicate work
        assert index.progress("w-1-1") == writer.offset
        writer.append_many([record(7), record(3)])  # a new record and a re-store of 3
        assert replay(tmp_path, index) == 2
        assert index.count() == 9
        rows = list(index.find({}))
        assert replay(tmp_path, index) == 0
        assert list(index.find({})) == rows


def test_replay_after_crash_between_batches(tmp_path: Path) -> None:
    """A crash after the first batch's commit: the second replay resumes at its offset."""
    writer = JournalWriter(tmp_path, "w-1-1")
    writer.append_many([record(n) for n in range(5)])
    with SqliteCatalog(tmp_path / "index.sqlite") as index:
        real = index.apply
        calls = 0

        def crash_on_second(records, progress, files=None):
            nonlocal calls
            calls += 1
            if calls == 2:
                raise KeyboardInterrupt("crash")
            real(records, progress, files)

        index.apply = crash_on_second  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            replay(tmp_path, index, batch=2)
        assert index.count() == 2
        index.apply = real  # type: ignore[method-assign]
        assert replay(tmp_path, index, batch=2) == 3
        assert index.count() == 5


def test_replay_stops_at_torn_tail_then_continues_when_completed(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    writer.append_many([record(1)])
    frame_end = writer.offset
    writer.append_many([record(2)])
    full = Path(writer.path).read_bytes()
    Path(writer.path).write_bytes(full[: frame_end + 5])  # the live writer is mid-frame
    with SqliteCatalog(tmp_path / "index.sqlite") as index:
        assert replay(tmp_path, index) == 1
        Path(writer.path).write_bytes(full)  # the frame completes
        assert replay(tmp_path, index) == 1
        assert index.count() == 2


def test_retire_syncs_the_catalog_before_it_deletes_a_segment(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a segment is gone nothing can replay its records: the catalog's commits must
    be on disk first (Catalog.sync), and the sync is made once, only when one goes."""
    for n in (1, 2):
        dead = JournalWriter(tmp_path, f"w-{n}-1")
        dead.append_many([record(n)])
        dead.close()
    events: list[str] = []
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        events.append(f"unlink {os.path.basename(path)}")
        return real_unlink(path, *args, **kwargs)

    with SqliteCatalog(tmp_path / "index.sqlite") as index:
        monkeypatch.setattr(index, "sync", lambda: events.append("sync"))
        assert retire(tmp_path, index, live=set()) == []  # nothing indexed yet: no sync
        assert events == []
        replay(tmp_path, index)
        monkeypatch.setattr(os, "unlink", unlink)
        assert retire(tmp_path, index, live=set()) == ["w-1-1", "w-2-1"]
    assert events == ["sync", "unlink w-1-1.log", "unlink w-2-1.log"]


def test_retire_only_dead_fully_indexed_segments(tmp_path: Path) -> None:
    live = JournalWriter(tmp_path, "w-1-1")
    live.append_many([record(1)])
    dead = JournalWriter(tmp_path, "w-2-1")
    dead.append_many([record(2)])
    dead.close()
    unindexed = JournalWriter(tmp_path, "w-3-1")
    unindexed.close()
    torn = JournalWriter(tmp_path, "w-4-1")
    torn.append_many([record(4)])
    torn.close()
    with open(torn.path, "ab") as fp:
        fp.write(b"\x40\x00\x00")  # the crashed writer's torn frame
    with SqliteCatalog(tmp_path / "index.sqlite") as index:
        replay(tmp_path, index)
        with open(unindexed.path, "ab") as fp:  # appears after the replay: not yet indexed
            fp.write(open(dead.path, "rb").read())
        assert sorted(retire(tmp_path, index, live={"w-1-1"})) == ["w-2-1", "w-4-1"]
        assert sorted(os.listdir(journal_dir(tmp_path))) == ["w-1-1.log", "w-3-1.log"]
        assert index.progress("w-2-1") == 0
        assert index.count() == 3
        replay(tmp_path, index)
        assert retire(tmp_path, index, live={"w-1-1"}) == ["w-3-1"]


def test_failed_append_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    writer.append_many([record(1)])
    real_write = os.write

    def half_then_enospc(fd: int, data) -> int:
        if fd == writer._fd and len(data) > 20:
            real_write(fd, bytes(data[:20]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OSError):
        writer.append_many([record(2)])
    monkeypatch.undo()
    writer.append_many([record(3)])
    assert [r.sop_instance_uid for r, _ in JournalReader(writer.path).read_from()] == ["1.2.3.1", "1.2.3.3"]


def test_uncut_append_makes_the_segment_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")

    def fail(*_args: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", fail)
    monkeypatch.setattr(os, "ftruncate", fail)
    with pytest.raises(OSError):
        writer.append_many([record(1)])
    monkeypatch.undo()
    with pytest.raises(JournalError):
        writer.append_many([record(2)])


def _frame_bytes(tmp_path: Path, *records) -> bytes:
    """The journal bytes of ``records`` (written by a scratch writer)."""
    scratch = JournalWriter(tmp_path / "scratch", "s-1-1")
    scratch.append_many(records)
    scratch.close()
    return Path(scratch.path).read_bytes()


def test_tail_reads_what_was_appended_since_it_last_looked(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    tail = JournalTail(writer.path)
    assert tail.size() == 0 and tail.read(100) == [] and not (tail.more or tail.stalled)
    end1 = writer.append_many([record(1), record(2)])
    got = tail.read(100)
    assert got == [(record(1), got[0][1]), (record(2), end1)] and tail.offset == end1
    assert tail.read(100) == [] and not (tail.more or tail.stalled)  # nothing new
    writer.append_many([record(n) for n in range(3, 13)])
    assert [r for r, _ in tail.read(4)] == [record(n) for n in range(3, 7)] and tail.more
    offset = tail.offset
    assert tail.read(0) == [] and tail.more and tail.offset == offset
    assert [r for r, _ in tail.read(100)] == [record(n) for n in range(7, 13)] and not tail.more
    assert tail.offset == writer.offset == tail.size()
    # A tail opened at an offset starts there.
    assert [r for r, _ in JournalTail(writer.path, end1).read(1)] == [record(3)]
    tail.close()
    writer.close()


@pytest.mark.parametrize("cut", [2, 4, 9, -5, -1])
def test_tail_stops_before_a_frame_being_written_and_reads_it_once_whole(tmp_path: Path, cut: int) -> None:
    """A reader can see part of a concurrent write(2): the tail stops before it, keeps
    its offset, and reads the frame once the rest has arrived."""
    root = tmp_path / "j"
    path = Path(journal_dir(root)) / "w-1-1.log"
    path.parent.mkdir(parents=True)
    first = _frame_bytes(tmp_path / "a", record(1))
    second = _frame_bytes(tmp_path / "b", record(2))
    path.write_bytes(first + second[:cut])
    tail = JournalTail(path)
    assert [r for r, _ in tail.read(100)] == [record(1)]
    assert tail.stalled and not tail.more and tail.offset == len(first)
    assert tail.read(100) == [] and tail.stalled and tail.offset == len(first)  # again, same place
    with open(path, "ab") as fp:
        fp.write(second[cut:])
    assert tail.read(100) == [(record(2), len(first) + len(second))] and not tail.stalled
    tail.close()


def test_tail_stops_at_a_bad_crc_until_the_bytes_are_right(tmp_path: Path) -> None:
    root = tmp_path / "j"
    path = Path(journal_dir(root)) / "w-1-1.log"
    path.parent.mkdir(parents=True)
    good = _frame_bytes(tmp_path / "a", record(1))
    damaged = bytearray(good)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    tail = JournalTail(path)
    assert tail.read(100) == [] and tail.stalled and tail.offset == 0
    path.write_bytes(good)
    assert [r for r, _ in tail.read(100)] == [record(1)] and not tail.stalled
    tail.close()


def test_tail_reads_a_long_segment_in_chunks(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, "w-1-1")
    writer.append_many([record(n) for n in range(1500)])  # several read chunks
    writer.close()
    assert writer.offset > 256 * 1024
    tail = JournalTail(writer.path)
    got: list = []
    reads = 0
    while True:
        more = tail.read(100_000)
        reads += 1
        got += more
        if not tail.more:
            break
    assert [r for r, _ in got] == [record(n) for n in range(1500)] and reads > 1
    assert tail.offset == writer.offset and not tail.stalled
    tail.close()


def test_failed_append_keeps_its_whole_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills in the middle of a two-frame append: the whole first frame stays
    (a tail read it meanwhile), the cut second one goes, and the next append follows
    the kept frame, so the tail stays on a frame boundary."""
    writer = JournalWriter(tmp_path, "w-1-1")
    end1 = writer.append_many([record(1)])
    tail = JournalTail(writer.path, end1)
    seen: list = []
    real_write = os.write
    calls: list[int] = []

    def frame_and_a_half_then_enospc(fd: int, data) -> int:
        if fd != writer._fd:
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            (length,) = struct.unpack_from("<I", data, 0)
            return real_write(fd, bytes(data[: length + 8 + 10]))  # a short write
        seen.extend(tail.read(100))  # an indexer polling between the two writes
        assert tail.stalled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", frame_and_a_half_then_enospc)
    with pytest.raises(OSError):
        writer.append_many([record(2), record(3)])
    monkeypatch.undo()
    assert [r for r, _ in seen] == [record(2)]
    assert writer.offset == tail.offset == os.path.getsize(writer.path)
    writer.append_many([record(4)])
    assert [r for r, _ in tail.read(100)] == [record(4)] and not tail.stalled
    assert [r.sop_instance_uid for r, _ in JournalReader(writer.path).read_from()] == [
        "1.2.3.1", "1.2.3.2", "1.2.3.4"
    ]
