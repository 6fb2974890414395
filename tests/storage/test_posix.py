"""PosixInstanceStore through the InstanceStore port, end to end in one process: open,
write, finish, abort under each durability; refusals with their kinds; duplicates; the
journal reported in file order and rotated while stores are in flight; a cancelled wait
that does not make the store forget a publication; and close."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from storage import (
    InstanceRecord,
    InstanceStore,
    InstanceUnavailable,
    JournalReader,
    PosixInstanceStore,
    Refusal,
    SqliteCatalog,
    StorageError,
    StoreRefused,
    Upload,
    UploadRequest,
    journal_dir,
    read_file_meta,
    replay,
)
from tests.storage import EXPLICIT, encode, fragments, make_config
from tests.storage.test_segments import Events, locked
from tests.storage.test_writer import CLASS, dataset, leftovers

pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]


def request(sop: str, **overrides: Any) -> UploadRequest:
    fields = dict(
        sop_class_uid=CLASS,
        sop_instance_uid=sop,
        transfer_syntax_uid=EXPLICIT,
        calling_ae="MODALITY",
        called_ae="ARCHIVE",
        received_at=1_700_000_000.5,
    )
    fields.update(overrides)
    return UploadRequest(**fields)


def upload(store: PosixInstanceStore, sop: str, data: bytes | None = None, **overrides: Any) -> Upload:
    """An upload of ``sop`` with its whole data set written."""
    opened = store.open(request(sop, **overrides))
    for chunk in fragments(encode(dataset(sop), EXPLICIT) if data is None else data, [1000]):
        opened.write(chunk)
    return opened


async def finished(opened: Upload) -> InstanceRecord:
    result = opened.finish()
    return result if isinstance(result, InstanceRecord) else await result


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{n}"


def journal_records(root: Path) -> list[str]:
    out = []
    for name in sorted(os.listdir(journal_dir(root))):
        if name.endswith(".log"):
            out += [r.sop_instance_uid for r, _ in JournalReader(os.path.join(journal_dir(root), name)).read_from()]
    return out


@pytest.mark.parametrize("durability", ["fsync", "batch", "none"])
def test_every_durability_end_to_end(tmp_path: Path, durability: str) -> None:
    events = Events()

    async def main() -> list[InstanceRecord]:
        store = PosixInstanceStore(
            make_config(tmp_path, durability=durability, batch_window_ms=1),
            segment_label="w0", segment_bytes=1 << 20, on_append=events.append, on_rotate=events.rotate,
        )
        assert isinstance(store, InstanceStore)
        records = []
        for n in range(3):
            opened = upload(store, uid(n))
            assert isinstance(opened, Upload)
            result = opened.finish()
            if durability == "none":
                assert isinstance(result, InstanceRecord)  # published inline, nothing to await
            else:
                assert isinstance(result, asyncio.Future)
                result = await result
            assert opened.size == result.size and not opened.duplicate
            opened.abort()  # after finish: nothing happens
            records.append(result)
        await store.aclose()
        return records

    records = asyncio.run(main())
    store = PosixInstanceStore(make_config(tmp_path))
    for n, record in enumerate(records):
        assert record.sop_instance_uid == uid(n) and record.received_at == 1_700_000_000.5
        with store.open_instance(record) as fp:
            raw = fp.read()
        assert len(raw) == record.size and store.path_of(record) == str(tmp_path / record.path)
        assert read_file_meta(store.path_of(record)).transfer_syntax_uid == EXPLICIT
    assert leftovers(tmp_path)[0] == []
    assert journal_records(tmp_path) == [uid(n) for n in range(3)]
    assert [e[4] for e in events.seen] == [[uid(n)] for n in range(3)]
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        assert replay(tmp_path, catalog) == 3 and catalog.get(uid(1)) == records[1]


def test_without_a_journal(tmp_path: Path) -> None:
    async def main() -> InstanceRecord:
        store = PosixInstanceStore(make_config(tmp_path, durability="fsync"))
        assert store.segment_name is None and store.segments is None
        record = await finished(upload(store, uid(1)))
        await store.aclose()
        return record

    record = asyncio.run(main())
    assert (tmp_path / record.path).is_file() and not os.path.exists(journal_dir(tmp_path))


def test_abort_leaves_no_trace(tmp_path: Path) -> None:
    store = PosixInstanceStore(make_config(tmp_path, durability="none"))
    opened = upload(store, uid(1))
    assert len(leftovers(tmp_path)[0]) == 1
    opened.abort()
    opened.abort()
    assert leftovers(tmp_path) == ([], [])
    with pytest.raises(StoreRefused):
        store.open(request(uid(2))).finish()  # no data set: unreadable, and gone
    assert leftovers(tmp_path) == ([], [])


def test_received_at_zero_means_now(tmp_path: Path) -> None:
    store = PosixInstanceStore(make_config(tmp_path, durability="none"))
    before = time.time()
    record = upload(store, uid(1), received_at=0.0).finish()
    assert isinstance(record, InstanceRecord) and before <= record.received_at <= time.time()


@pytest.mark.parametrize(
    "overrides, kind",
    [
        ({"sop_instance_uid": "../../escape"}, Refusal.INVALID_INSTANCE_UID),
        ({"sop_class_uid": "1.2.x"}, Refusal.INVALID_SOP_CLASS_UID),
        ({"transfer_syntax_uid": "not/a/uid"}, Refusal.UNREADABLE),
    ],
)
def test_open_refuses_before_any_file(tmp_path: Path, overrides: dict, kind: Refusal) -> None:
    store = PosixInstanceStore(make_config(tmp_path))
    with pytest.raises(StoreRefused) as refused:
        store.open(request(uid(1), **overrides))
    assert refused.value.kind is kind and refused.value.reason
    assert list(tmp_path.rglob("*.part")) == [] and list(tmp_path.rglob("*.dcm")) == []


def test_finish_refuses_a_mismatch_synchronously(tmp_path: Path) -> None:
    async def main() -> None:
        store = PosixInstanceStore(make_config(tmp_path, durability="fsync"), segment_label="w0", segment_bytes=1024)
        opened = upload(store, uid(1), data=encode(dataset(uid(2)), EXPLICIT))  # the data set is another instance
        with pytest.raises(StoreRefused) as refused:
            opened.finish()
        assert refused.value.kind is Refusal.DATASET_MISMATCH
        assert store.inflight == 0
        await store.aclose()

    asyncio.run(main())
    assert leftovers(tmp_path) == ([], []) and journal_records(tmp_path) == []


@pytest.mark.parametrize("durability", ["fsync", "batch", "none"])
def test_duplicates_reject_and_keep(tmp_path: Path, durability: str) -> None:
    async def main() -> None:
        for policy, root in (("reject", tmp_path / "reject"), ("keep", tmp_path / "keep")):
            store = PosixInstanceStore(
                make_config(root, durability=durability, duplicate_policy=policy, batch_window_ms=1),
                segment_label="w0", segment_bytes=1 << 20,
            )
            first = await finished(upload(store, uid(1)))
            again = upload(store, uid(1))
            if policy == "reject":
                with pytest.raises(StoreRefused) as refused:
                    await finished(again)
                assert refused.value.kind is Refusal.DUPLICATE
            else:
                kept = await finished(again)
                # The same instance; only the generation of the discarded copy differs.
                assert again.duplicate and kept.generation > first.generation
                assert msgspec.structs.replace(kept, generation=first.generation) == first
            await store.aclose()
            assert leftovers(root) == ([], [first.path])
            assert journal_records(root) == [uid(1)]  # the kept duplicate is not journalled again

    asyncio.run(main())


class GatedExecutor(concurrent.futures.Executor):
    """Runs each submitted job only when told to, in a thread of its own (as a
    publisher thread would), so a test decides the order publications land in."""

    def __init__(self) -> None:
        self.jobs: list[tuple[concurrent.futures.Future, Callable[..., Any], tuple]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.append((future, fn, args))
        return future

    def run(self, i: int) -> None:
        future, fn, args = self.jobs[i]

        def go() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(target=go)
        thread.start()
        thread.join()


def test_rotation_with_stores_in_flight(tmp_path: Path) -> None:
    """Two stores enter segment 1; the first one's append fills it: the store continues
    in segment 2 (reported after that append), segment 1 stays open and locked until the
    second store has appended into it and left, then closes and releases its lock."""
    events = Events()
    gate = GatedExecutor()

    async def main() -> None:
        store = PosixInstanceStore(
            make_config(tmp_path, durability="fsync"), None, gate,
            segment_label="w1", segment_bytes=1, on_append=events.append, on_rotate=events.rotate,
        )
        first = store.segment_name
        a = upload(store, uid(1)).finish()
        b = upload(store, uid(2)).finish()
        assert store.inflight == 2 and len(gate.jobs) == 2
        gate.run(0)
        await a
        second = store.segment_name
        assert second != first and locked(tmp_path, first)
        gate.run(1)
        await b
        await asyncio.sleep(0)
        assert not locked(tmp_path, first) and locked(tmp_path, second)
        c = upload(store, uid(3)).finish()  # goes to segment 2, which it fills in turn
        gate.run(2)
        await c
        third = store.segment_name
        assert not locked(tmp_path, second) and locked(tmp_path, third)
        await store.aclose()
        assert not locked(tmp_path, third)
        assert events.seen == [
            ("append", first, 0, events.seen[0][3], [uid(1)]),
            ("rotate", second),
            ("append", first, events.seen[0][3], events.seen[2][3], [uid(2)]),
            ("append", second, 0, events.seen[3][3], [uid(3)]),
            ("rotate", third),
        ]

    asyncio.run(main())


def test_appends_reported_in_file_order_under_concurrency(tmp_path: Path) -> None:
    events = Events()
    count = 40

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(8) as executor:
            store = PosixInstanceStore(
                make_config(tmp_path, durability="fsync"), None, executor,
                segment_label="w2", segment_bytes=2048, on_append=events.append, on_rotate=events.rotate,
            )
            for wave in range(0, count, 8):  # eight at a time, so rotations fall between waves
                uploads = [upload(store, uid(n)) for n in range(wave, wave + 8)]
                await asyncio.gather(*(finished(u) for u in uploads))
            await store.aclose()

    asyncio.run(main())
    rotations = [e[1] for e in events.seen if e[0] == "rotate"]
    assert len(rotations) > 1, "2 KiB segments rotate"
    ends: dict[str, int] = {}
    order: list[str] = []
    for i, event in enumerate(events.seen):
        if event[0] == "append":
            _, name, start, end, _uids = event
            assert start == ends.get(name, 0)  # contiguous within each segment
            ends[name] = end
            if name not in order:
                order.append(name)
                # A new segment's first append comes after the report of its rotation.
                assert not order[1:] or ("rotate", name) in events.seen[:i]
    assert order[1:] == rotations[: len(order) - 1]
    for name, end in ends.items():
        assert os.path.getsize(os.path.join(journal_dir(tmp_path), name + ".log")) == end
    assert sorted(journal_records(tmp_path)) == sorted(uid(n) for n in range(count))
    assert os.listdir(journal_dir(tmp_path)) and not any(locked(tmp_path, n) for n in ends)


def test_cancelled_wait_does_not_forget_the_publication(tmp_path: Path) -> None:
    gate = GatedExecutor()

    async def main() -> None:
        store = PosixInstanceStore(make_config(tmp_path, durability="fsync"), None, gate,
                                   segment_label="w0", segment_bytes=1 << 20)
        segment = store.segment_name
        waiting = upload(store, uid(1)).finish()
        waiting.cancel()  # the peer went away
        assert store.inflight == 1
        closing = asyncio.ensure_future(store.aclose())
        await asyncio.sleep(0.01)
        assert not closing.done() and locked(tmp_path, segment)  # the journal stays open under the thread
        with pytest.raises(StoreRefused) as refused:
            store.open(request(uid(2)))
        assert refused.value.kind is Refusal.OUT_OF_RESOURCES
        gate.run(0)
        await closing
        assert store.inflight == 0 and not locked(tmp_path, segment)

    asyncio.run(main())
    assert journal_records(tmp_path) == [uid(1)]  # published and journalled all the same


def test_aclose_commits_a_pending_batch(tmp_path: Path) -> None:
    async def main() -> None:
        store = PosixInstanceStore(make_config(tmp_path, durability="batch", batch_window_ms=60_000),
                                   segment_label="w0", segment_bytes=1 << 20)
        futures = [upload(store, uid(n)).finish() for n in range(3)]
        await asyncio.wait_for(store.aclose(), 10)
        assert all(f.done() and isinstance(f.result(), InstanceRecord) for f in futures)

    asyncio.run(main())
    assert journal_records(tmp_path) == [uid(n) for n in range(3)]


def test_path_of_and_open_instance(tmp_path: Path) -> None:
    store = PosixInstanceStore(make_config(tmp_path, durability="none"))
    record = upload(store, uid(1)).finish()
    assert isinstance(record, InstanceRecord)
    for bad in ("/etc/passwd", "../a/b.dcm", "a/../b.dcm", "a/b", "a//b.dcm", "a/b/c/d.dcm"):
        with pytest.raises(StorageError):
            store.path_of(msgspec.structs.replace(record, path=bad))
    os.unlink(store.path_of(record))
    with pytest.raises(InstanceUnavailable):
        store.open_instance(record)
