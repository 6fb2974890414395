"""JournalSegments without a store: each segment locked before it exists, rotation past
the size (inline on the loop, hopped from a thread), appends reported in file order
before the rotation they cause, a retiring segment kept open and locked while
publications are inside it, and everything closed and unlocked at the end."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path

import pytest

from storage import JournalReader, JournalSegments, journal_dir, segment_lock_path
from tests.storage import make_config, record


def locked(root: Path, name: str) -> bool:
    """Whether some open file description holds ``name``'s lock (flock conflicts even
    within one process when the descriptions differ)."""
    fd = os.open(segment_lock_path(root, name), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Events:
    """Every on_append and on_rotate, in the order they came."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def append(self, name: str, start: int, end: int, records: list) -> None:
        self.seen.append(("append", name, start, end, [r.sop_instance_uid for r in records]))

    def rotate(self, name: str) -> None:
        self.seen.append(("rotate", name))


def make(tmp_path: Path, events: Events, segment_bytes: int = 1 << 20) -> JournalSegments:
    return JournalSegments(
        make_config(tmp_path), None, None, "w3", segment_bytes, on_append=events.append, on_rotate=events.rotate
    )


def test_first_segment_is_locked_and_named(tmp_path: Path) -> None:
    async def main() -> None:
        segments = make(tmp_path, Events())
        name = segments.name
        label, pid, ns = name.split("-")
        assert label == "w3" and int(pid) == os.getpid() and int(ns) > 0
        assert sorted(os.listdir(journal_dir(tmp_path))) == [f"{name}.lock", f"{name}.log"]
        assert locked(tmp_path, name)
        await segments.aclose()
        assert not locked(tmp_path, name) and segments.current.closed

    asyncio.run(main())


def test_rotation_waits_for_the_publications_inside(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        segments = make(tmp_path, events, segment_bytes=1)
        first = segments.name
        inside = segments.enter()  # a publication in flight in the first segment
        other = segments.enter()
        end = inside.journal.append_many([record(1)])  # past the size: rotates, inline on the loop
        second = segments.name
        assert second != first and segments.retiring == [inside]
        assert events.seen == [("append", first, 0, end, ["1.2.3.1"]), ("rotate", second)]
        assert locked(tmp_path, first) and locked(tmp_path, second)
        # The other publication still lands in the first segment, which does not rotate again.
        end2 = other.journal.append_many([record(2)])
        assert events.seen[-1] == ("append", first, end, end2, ["1.2.3.2"]) and segments.name == second
        segments.leave(inside)
        assert locked(tmp_path, first) and not inside.closed
        segments.leave(other)  # the last one out closes it and releases the lock
        assert inside.closed and not locked(tmp_path, first) and segments.retiring == []
        assert [r.sop_instance_uid for r, _ in JournalReader(inside.journal.path).read_from()] == [
            "1.2.3.1",
            "1.2.3.2",
        ]
        await segments.aclose()
        assert not locked(tmp_path, second)

    asyncio.run(main())


def test_a_full_segment_nobody_is_in_closes_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        segments = make(tmp_path, Events(), segment_bytes=1)
        first = segments.current
        first.journal.append_many([record(1)])  # an append outside any publication
        assert first.closed and not locked(tmp_path, first.name) and segments.retiring == []
        await segments.aclose()

    asyncio.run(main())


def test_rotation_from_a_thread_runs_on_the_loop_after_the_report(tmp_path: Path) -> None:
    events = Events()

    async def main() -> None:
        segments = make(tmp_path, events, segment_bytes=1)
        first = segments.enter()
        thread_ids: list[int] = []
        segments._on_rotate = lambda name: (thread_ids.append(threading.get_ident()), events.rotate(name))
        worker = threading.Thread(target=first.journal.append_many, args=([record(1)],))
        worker.start()
        worker.join()
        assert segments.current is first  # not rotated in the thread ...
        await asyncio.sleep(0)
        assert segments.current is not first  # ... but on the loop, right after
        assert thread_ids == [threading.get_ident()]
        assert [e[0] for e in events.seen] == ["append", "rotate"]
        segments.leave(first)
        await segments.aclose()

    asyncio.run(main())


def test_a_rotation_that_fails_keeps_the_segment_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = Events()
    reported: list[dict] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        segments = make(tmp_path, events, segment_bytes=1)
        first = segments.enter()
        real_open = os.open

        def no_room(path, *args, **kwargs):
            if str(path).endswith(".lock"):
                raise OSError(28, "No space left on device")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", no_room)
        first.journal.append_many([record(1)])
        assert segments.current is first and len(reported) == 1
        assert "journal segment" in reported[0]["message"] and isinstance(reported[0]["exception"], OSError)
        monkeypatch.undo()
        first.journal.append_many([record(2)])  # the next append past the size tries again
        assert segments.current is not first and [e[0] for e in events.seen] == ["append", "append", "rotate"]
        segments.leave(first)
        await segments.aclose()
        assert sorted(os.listdir(journal_dir(tmp_path))) == sorted(
            f"{s}.{ext}" for s in (first.name, segments.name) for ext in ("lock", "log")
        )

    asyncio.run(main())


def test_a_rotation_due_when_closing_does_not_happen(tmp_path: Path) -> None:
    """A thread's append past the size schedules a rotation; the segments close before
    the loop gets to it: no new segment appears after the close."""
    events = Events()

    async def main() -> None:
        segments = make(tmp_path, events, segment_bytes=1)
        first = segments.current
        worker = threading.Thread(target=first.journal.append_many, args=([record(1)],))
        worker.start()
        worker.join()
        await segments.aclose()  # does not yield before closing: the rotation is still queued
        await asyncio.sleep(0)
        assert [e[0] for e in events.seen] == ["append"] and segments.current is first and first.closed
        assert len(os.listdir(journal_dir(tmp_path))) == 2

    asyncio.run(main())
