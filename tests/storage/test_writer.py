"""InstanceWriter and Publisher: paths only from valid UIDs, every durability publishes a
readable, byte-identical Part 10 file carrying the configured identity, batches group
their syncs, duplicates follow the policy, and every failure is refused with its kind
and leaves nothing behind."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pydicom
import pytest
import xxhash

from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storage import (
    QUARANTINE_DIR,
    TEMP_DIR,
    DurableDirs,
    InstanceRecord,
    InstanceWriter,
    JournalReader,
    JournalWriter,
    Publisher,
    Refusal,
    SqliteCatalog,
    StorageConfig,
    StoreRefused,
    WriterStateError,
    is_valid_uid,
    new_digest,
    publish_now,
    read_file_meta,
    replay,
    sweep_temp,
)
from storage._writer import _FanOut
from tests.storage import ALL_SYNTAXES, DEFLATED, EXPLICIT, encode, fragments, make_config
from tests.storage.test_meta import EXPECTED, tricky_dataset

# Some tests put invalid UIDs in data sets on purpose; pydicom warns when it writes them.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
    pytest.mark.filterwarnings("ignore:The value length"),
]

CLASS = EXPECTED.sop_class_uid or ""
STUDY = EXPECTED.study_instance_uid or ""
SERIES = EXPECTED.series_instance_uid or ""


def dataset(sop: str = EXPECTED.sop_instance_uid or "", **overrides: object) -> pydicom.Dataset:
    ds = tricky_dataset()
    ds.SOPInstanceUID = sop
    for key, value in overrides.items():
        setattr(ds, key, value)
    return ds


def make_writer(config: StorageConfig, sop: str, ts: str = EXPLICIT, sop_class: str = CLASS) -> InstanceWriter:
    return InstanceWriter(config, sop_class, sop, ts, "MODALITY  ", "ARCHIVE", received_at=1_700_000_000.5)


def stream(writer: InstanceWriter, data: bytes, size: int = 4096) -> InstanceWriter:
    writer.begin()
    for chunk in fragments(data, [size]):
        writer.write(chunk)
    return writer


def leftovers(root: Path) -> tuple[list[str], list[str]]:
    """(files in .tmp, every .dcm under root)."""
    tmp = root / TEMP_DIR
    temps = sorted(os.listdir(tmp)) if tmp.exists() else []
    return temps, sorted(str(p.relative_to(root)) for p in root.rglob("*.dcm"))


# ------------------------------------------------------------------------------ UIDs


@pytest.mark.parametrize(
    "uid", ["0", "1", "0.0", "1.2.3", "1.2.840.10008.5.1.4.1.1.2", "2.25.1234567890", "1." + "2" * 62]
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "..",
        "../x",
        "../../etc/passwd",
        "/abs/path",
        "1.2/3",
        "1..2",
        ".1",
        "1.",
        "1.02",
        "01.2",
        "1.2.a",
        "1.2.3 ",
        "1.2\n",
        "1.2\x00",
        "１.２",  # full-width digits: \d would accept them
        "1." + "2" * 63,  # 65 characters
        "1.2\\3",
        None,
        12,
    ],
)
def test_invalid_uids(uid: object) -> None:
    assert not is_valid_uid(uid)


# ------------------------------------------------------------------------------ config


def test_config_validation_and_decoding() -> None:
    with pytest.raises(ValueError):
        make_config("/x", durability="sometimes")
    with pytest.raises(ValueError):
        make_config("/x", duplicate_policy="merge")
    with pytest.raises(ValueError):
        make_config("/x", batch_max=0)
    with pytest.raises(ValueError):
        StorageConfig(root="/x", implementation_class_uid="not.a.uid", implementation_version_name="X")
    with pytest.raises(ValueError):
        StorageConfig(root="/x", implementation_class_uid="1.2.3", implementation_version_name="x" * 17)
    identity = {"implementation_class_uid": "1.2.3", "implementation_version_name": "X"}
    config = msgspec.convert({"root": "/srv", "durability": "batch", "batch_window_ms": 5, **identity}, StorageConfig)
    assert config.durability == "batch" and config.batch_window_ms == 5.0
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"root": "/srv", "durability": "maybe", **identity}, StorageConfig)


def test_storage_has_no_identity_of_its_own() -> None:
    """The Implementation Class UID and Version Name are required: storage defines none."""
    with pytest.raises(TypeError):
        StorageConfig(root="/x")  # type: ignore[call-arg]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"root": "/srv"}, StorageConfig)


# ------------------------------------------------------------------------------ publishing


def _check_published(root: Path, record: InstanceRecord, data: bytes, ts: str) -> None:
    path = root / record.path
    assert record.path == f"{STUDY}/{SERIES}/{record.sop_instance_uid}.dcm"
    assert path.is_file()
    raw = path.read_bytes()
    meta = read_file_meta(path)
    assert raw[meta.dataset_offset :] == data  # byte-identical data set
    assert record.size == len(raw)
    hasher = new_digest(record.digest_algorithm)
    hasher.update(data)
    assert record.digest == hasher.hexdigest()
    assert meta.transfer_syntax_uid == ts
    assert meta.implementation_class_uid == IMPLEMENTATION_CLASS_UID  # the one the node advertises
    assert meta.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert meta.source_ae_title == "MODALITY" and meta.receiving_ae_title == "ARCHIVE"
    read = pydicom.dcmread(path)
    assert read.file_meta.MediaStorageSOPInstanceUID == record.sop_instance_uid
    assert read.SOPInstanceUID == record.sop_instance_uid
    assert read.PatientID == EXPECTED.patient_id
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    assert (
        record.study_instance_uid,
        record.series_instance_uid,
        record.patient_name,
        record.modality,
        record.instance_number,
        record.calling_ae,
        record.called_ae,
        record.received_at,
    ) == (STUDY, SERIES, EXPECTED.patient_name, "CT", "17", "MODALITY", "ARCHIVE", 1_700_000_000.5)


@pytest.mark.parametrize("ts", ALL_SYNTAXES)
def test_publish_now_every_transfer_syntax(tmp_path: Path, ts: str) -> None:
    config = make_config(tmp_path)
    data = encode(dataset(), ts)
    writer = stream(make_writer(config, EXPECTED.sop_instance_uid or "", ts), data)
    record = publish_now(writer)
    _check_published(tmp_path, record, data, ts)
    assert leftovers(tmp_path)[0] == []


def test_the_record_carries_the_query_attributes(tmp_path: Path) -> None:
    """The query/retrieve fields of the record are filled from the streamed data set."""
    config = make_config(tmp_path)
    data = encode(dataset(StudyTime="0930", AccessionNumber="ACC1", StudyID="S1",
                          StudyDescription="Head", ReferringPhysicianName="Ref^Rita",
                          PatientBirthDate="19800202", PatientSex="M", SeriesNumber="4",
                          SeriesDescription="Axial", BodyPartExamined="HEAD"), EXPLICIT)
    record = publish_now(stream(make_writer(config, EXPECTED.sop_instance_uid or ""), data))
    assert (record.study_time, record.accession_number, record.study_id, record.study_description,
            record.referring_physician_name, record.patient_birth_date, record.patient_sex,
            record.series_number, record.series_description, record.body_part_examined) == (
        "0930", "ACC1", "S1", "Head", "Ref^Rita", "19800202", "M", "4", "Axial", "HEAD")
    assert (record.patient_id, record.study_date) == (EXPECTED.patient_id, EXPECTED.study_date)


@pytest.mark.parametrize("durability", ["fsync", "batch", "none"])
def test_publisher_every_durability_with_journal(tmp_path: Path, durability: str) -> None:
    config = make_config(tmp_path, durability=durability, batch_window_ms=1)  # type: ignore[arg-type]
    journal = JournalWriter(tmp_path, "w-1-1")
    uids = [f"1.2.826.0.1.3680043.8.498.{900 + i}" for i in range(5)]
    payloads = {uid: encode(dataset(uid), EXPLICIT) for uid in uids}

    async def main() -> list[InstanceRecord]:
        publisher = Publisher(config, asyncio.get_running_loop(), journal=journal)
        records = []
        for uid in uids:
            records.append(await publisher.publish(stream(make_writer(config, uid), payloads[uid])))
        await publisher.aclose()
        return records

    records = asyncio.run(main())
    for record in records:
        _check_published(tmp_path, record, payloads[record.sop_instance_uid], EXPLICIT)
    assert [r for r, _ in JournalReader(journal.path).read_from()] == records
    with SqliteCatalog(tmp_path / "index.sqlite") as index:
        assert replay(tmp_path, index) == 5
        assert index.get(uids[0]) == records[0]
    assert leftovers(tmp_path)[0] == []


class SyncCounter:
    """Counts fsync calls on files and on directories, and fdatasync calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files = self.dirs = self.datasyncs = 0
        real_fsync, real_fdatasync = os.fsync, os.fdatasync

        def fsync(fd: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                self.dirs += 1
            else:
                self.files += 1
            real_fsync(fd)

        def fdatasync(fd: int) -> None:
            self.datasyncs += 1
            real_fdatasync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)


def _publish_concurrently(tmp_path: Path, durability: str, count: int) -> tuple[Publisher, list[InstanceRecord]]:
    config = make_config(tmp_path, durability=durability, batch_window_ms=50)  # type: ignore[arg-type]
    journal = JournalWriter(tmp_path, f"w-{durability}")

    async def one(publisher: Publisher, uid: str) -> InstanceRecord:
        writer = stream(make_writer(config, uid), encode(dataset(uid), EXPLICIT))
        await asyncio.sleep(0)
        return await publisher.publish(writer)

    async def main() -> tuple[Publisher, list[InstanceRecord]]:
        publisher = Publisher(config, journal=journal)
        uids = [f"1.2.826.0.1.3680043.8.498.{len(durability)}{i}" for i in range(count)]
        records = await asyncio.gather(*(one(publisher, uid) for uid in uids))
        await publisher.aclose()
        return publisher, list(records)

    publisher, records = asyncio.run(main())
    assert len(list(JournalReader(journal.path).read_from())) == count
    return publisher, records


def test_batch_groups_concurrent_publishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = 20
    per_instance = SyncCounter(monkeypatch)
    _publish_concurrently(tmp_path / "fsync", "fsync", count)
    monkeypatch.undo()
    grouped = SyncCounter(monkeypatch)
    publisher, records = _publish_concurrently(tmp_path / "batch", "batch", count)
    assert len(records) == count and all((tmp_path / "batch" / r.path).is_file() for r in records)
    assert publisher.groups < count
    # Every file is fsynced once either way (its data must be durable) ...
    assert grouped.files == per_instance.files == count
    # ... but directories and the journal are synced once per group, not per instance.
    assert grouped.dirs + grouped.datasyncs < count
    assert grouped.datasyncs == publisher.groups
    assert per_instance.datasyncs == count
    assert grouped.files + grouped.dirs + grouped.datasyncs < per_instance.files + per_instance.dirs + per_instance.datasyncs


def test_batch_max_starts_a_group_without_waiting(tmp_path: Path) -> None:
    config = make_config(tmp_path, durability="batch", batch_window_ms=60_000, batch_max=3)

    async def main() -> Publisher:
        publisher = Publisher(config)
        uids = [f"1.2.3.{i}" for i in range(3)]
        writers = [stream(make_writer(config, u), encode(dataset(u), EXPLICIT)) for u in uids]
        await asyncio.wait_for(asyncio.gather(*(publisher.publish(w) for w in writers)), 10)
        return publisher

    assert asyncio.run(main()).groups == 1


class SlowGroups:
    """Makes every group commit take ``delay`` seconds longer and records the groups'
    SOP Instance UIDs, in the order they started; ``fail`` names an instance whose
    group breaks (an unexpected error in the committer thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float, fail: str | None = None) -> None:
        import storage._writer as writer_module

        self.groups: list[list[str]] = []
        real = writer_module._commit_group
        lock = threading.Lock()

        def slow(writers: list[InstanceWriter], *args: object) -> object:
            uids = [w.sop_instance_uid for w in writers]
            with lock:
                self.groups.append(uids)
            time.sleep(delay)
            if fail in uids:
                raise RuntimeError("a bug")
            return real(writers, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(writer_module, "_commit_group", slow)

    @property
    def sizes(self) -> list[int]:
        return [len(g) for g in self.groups]


def _writers(config: StorageConfig, n: int) -> list[InstanceWriter]:
    return [stream(make_writer(config, f"1.2.3.{i}"), encode(dataset(f"1.2.3.{i}"), EXPLICIT)) for i in range(n)]


@pytest.mark.parametrize("batch_max, expected", [(256, [1, 1, 4]), (2, [1, 1, 2, 2])])
def test_a_lone_publish_starts_at_once_and_the_rest_gathers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_max: int, expected: list[int]
) -> None:
    """No group in flight: a publish starts its group at once (no window to wait out),
    and a second one may start beside a small one. Publishes arriving while two are in
    flight go together as the next group, in groups of at most batch_max."""
    config = make_config(tmp_path, durability="batch", batch_max=batch_max)
    journal = JournalWriter(tmp_path, "w-1-1")
    slow = SlowGroups(monkeypatch, 0.05)

    async def main() -> Publisher:
        publisher = Publisher(config, journal=journal)
        writers = _writers(config, 6)
        first = publisher.submit(writers[0])
        assert publisher.groups == 1  # started before anything was awaited
        second = publisher.submit(writers[1])
        assert publisher.groups == 2  # beside a small group in flight
        rest = [publisher.submit(w) for w in writers[2:]]
        assert publisher.groups == 2  # gathering behind the two in flight
        await asyncio.wait_for(asyncio.gather(first, second, *rest), 10)  # type: ignore[arg-type]
        await publisher.aclose()
        return publisher

    publisher = asyncio.run(main())
    monkeypatch.undo()
    assert slow.sizes == expected and publisher.groups == len(expected)
    assert sorted(r.sop_instance_uid for r, _ in JournalReader(journal.path).read_from()) == [
        f"1.2.3.{i}" for i in range(6)]


def test_a_large_group_in_flight_holds_the_next_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside a group of _SMALL_GROUP or more, nothing starts: the next group waits and
    grows."""
    config = make_config(tmp_path, durability="batch", batch_window_ms=60_000, batch_max=4)
    slow = SlowGroups(monkeypatch, 0.05)

    async def main() -> None:
        publisher = Publisher(config)
        writers = _writers(config, 9)
        futures = [publisher.submit(w) for w in writers[:4]]  # batch_max reached: a group of 4
        assert publisher.groups == 1
        futures += [publisher.submit(w) for w in writers[4:]]
        assert publisher.groups == 1
        await asyncio.wait_for(asyncio.gather(*futures), 10)  # type: ignore[arg-type]
        await publisher.aclose()

    asyncio.run(main())
    monkeypatch.undo()
    assert slow.sizes == [4, 4, 1]


def test_a_group_commit_that_breaks_fails_each_of_its_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in a committer thread reaches every publish of its group
    (their writers aborted, nothing left behind), and the other groups commit."""
    config = make_config(tmp_path, durability="batch")
    slow = SlowGroups(monkeypatch, 0.02, fail="1.2.3.0")

    async def main() -> list[object]:
        publisher = Publisher(config)
        # The first two go alone, one beside the other; the rest as the next group.
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(publisher.publish(w) for w in _writers(config, 4)), return_exceptions=True), 10)
        await publisher.aclose()
        return outcomes

    outcomes = asyncio.run(main())
    monkeypatch.undo()
    assert slow.sizes == [1, 1, 2]
    assert [type(o) for o in outcomes] == [RuntimeError, InstanceRecord, InstanceRecord, InstanceRecord]
    assert leftovers(tmp_path) == ([], sorted(o.path for o in outcomes[1:]))  # type: ignore[union-attr]


def test_fan_out_only_when_the_syncs_would_take_long() -> None:
    """A group's syncs run in the calling thread while they are quick (as measured so
    far), from several threads once doing them in turn would take long; results keep
    the items' order either way."""
    fanout = _FanOut(threads=4)
    where: list[str] = []

    def sync(item: int) -> int:
        where.append(threading.current_thread().name)
        return item * 10

    try:
        assert fanout.map(sync, list(range(6))) == [i * 10 for i in range(6)]
        assert set(where) == {threading.current_thread().name}
        assert fanout.sync_s < 0.0005
        fanout.sync_s = 0.01  # as if each sync took 10 ms
        where.clear()
        assert fanout.map(sync, list(range(10))) == [i * 10 for i in range(10)]
        assert all(name.startswith("scpfleet-fsync") for name in where) and len(where) == 10
        assert fanout.map(sync, []) == []
    finally:
        fanout.close()


def test_batch_errors_are_per_instance(tmp_path: Path) -> None:
    config = make_config(tmp_path, durability="batch", batch_window_ms=20, duplicate_policy="reject")

    async def main() -> list[object]:
        publisher = Publisher(config)
        a = stream(make_writer(config, "1.2.3.1"), encode(dataset("1.2.3.1"), EXPLICIT))
        b = stream(make_writer(config, "1.2.3.1"), encode(dataset("1.2.3.1"), EXPLICIT))  # same instance
        c = stream(make_writer(config, "1.2.3.2"), encode(dataset("1.2.3.2"), EXPLICIT))
        return await asyncio.gather(*(publisher.publish(w) for w in (a, b, c)), return_exceptions=True)

    a, b, c = asyncio.run(main())
    assert isinstance(a, InstanceRecord) and isinstance(c, InstanceRecord)
    assert isinstance(b, StoreRefused) and b.kind == Refusal.DUPLICATE
    assert leftovers(tmp_path) == ([], sorted([a.path, c.path]))


# ------------------------------------------------------------------------------ duplicates


@pytest.mark.parametrize("policy", ["overwrite", "keep", "reject"])
def test_duplicate_policies(tmp_path: Path, policy: str) -> None:
    config = make_config(tmp_path, duplicate_policy=policy)  # type: ignore[arg-type]
    first = encode(dataset(PatientID="FIRST"), EXPLICIT)
    second = encode(dataset(PatientID="SECOND"), EXPLICIT)
    record = publish_now(stream(make_writer(config, EXPECTED.sop_instance_uid or ""), first))
    again = stream(make_writer(config, EXPECTED.sop_instance_uid or ""), second)
    if policy == "reject":
        with pytest.raises(StoreRefused) as refused:
            publish_now(again)
        assert refused.value.kind == Refusal.DUPLICATE
    else:
        publish_now(again)
        assert again.duplicate == (policy == "keep")
    stored = pydicom.dcmread(tmp_path / record.path)
    assert stored.PatientID == ("SECOND" if policy == "overwrite" else "FIRST")
    assert leftovers(tmp_path) == ([], [record.path])


def test_keep_policy_race_detected_at_link(tmp_path: Path) -> None:
    """Both copies pass finish() before either is linked: link(2) still refuses to clobber."""
    config = make_config(tmp_path, duplicate_policy="keep")
    data = encode(dataset(), EXPLICIT)
    a = stream(make_writer(config, EXPECTED.sop_instance_uid or ""), data)
    b = stream(make_writer(config, EXPECTED.sop_instance_uid or ""), data)
    a.finish()
    b.finish()
    publish_now(a)
    publish_now(b)
    assert not a.duplicate and b.duplicate
    assert leftovers(tmp_path)[0] == []


@pytest.mark.parametrize("policy", ["keep", "reject"])
def test_file_system_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    def no_links(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    config = make_config(tmp_path, duplicate_policy=policy)  # type: ignore[arg-type]
    data = encode(dataset(), EXPLICIT)
    a = stream(make_writer(config, EXPECTED.sop_instance_uid or ""), data)
    b = stream(make_writer(config, EXPECTED.sop_instance_uid or ""), data)
    a.finish()
    b.finish()
    record = publish_now(a)
    if policy == "reject":
        with pytest.raises(StoreRefused) as refused:
            publish_now(b)
        assert refused.value.kind == Refusal.DUPLICATE
    else:
        publish_now(b)
        assert b.duplicate
    assert leftovers(tmp_path) == ([], [record.path])


# ------------------------------------------------------------------------------ the cost of one instance


@pytest.mark.parametrize("digest", ["xxh3-128", "sha256"])
def test_the_digest_is_the_configured_one(tmp_path: Path, digest: str) -> None:
    config = make_config(tmp_path, digest=digest)
    data = encode(dataset(), EXPLICIT)
    record = publish_now(stream(make_writer(config, EXPECTED.sop_instance_uid or ""), data))
    expected = hashlib.sha256(data).hexdigest() if digest == "sha256" else xxhash.xxh3_128(data).hexdigest()
    assert (record.digest_algorithm, record.digest) == (digest, expected)


def test_the_default_digest_is_xxh3_and_no_other_is_accepted(tmp_path: Path) -> None:
    assert make_config(tmp_path).digest == "xxh3-128"
    with pytest.raises(ValueError):
        make_config(tmp_path, digest="md5")


class CallCounter:
    """Counts the calls of some ``os`` functions (and passes them through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.calls: dict[str, list[tuple[object, ...]]] = {name: [] for name in names}
        for name in names:
            real = getattr(os, name)

            def counted(*args: object, _real=real, _name=name, **kw: object) -> object:
                self.calls[_name].append(args)
                return _real(*args, **kw)

            monkeypatch.setattr(os, name, counted)

    def count(self, name: str) -> int:
        return len(self.calls[name])


def test_a_small_instance_is_one_write_and_no_directory_call_once_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File Meta and a small data set (whatever its fragments) reach the file in one
    write; the second instance of a series makes and examines no directory, and the
    temporary name costs no system call."""
    config = make_config(tmp_path, durability="none")
    publish_now(stream(make_writer(config, "1.2.3.1"), encode(dataset("1.2.3.1"), EXPLICIT)))
    calls = CallCounter(monkeypatch, "write", "writev", "mkdir", "stat", "makedirs", "urandom")
    data = encode(dataset("1.2.3.2"), EXPLICIT)
    record = publish_now(stream(make_writer(config, "1.2.3.2"), data, 100))
    monkeypatch.undo()
    assert {name: calls.count(name) for name in calls.calls} == {
        "write": 1, "writev": 0, "mkdir": 0, "stat": 0, "makedirs": 0, "urandom": 0}
    _check_published(tmp_path, record, data, EXPLICIT)


def test_large_fragments_are_written_as_they_come(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The File Meta goes out with the first large fragment (one writev); later large
    fragments are written one call each, as received; small ones are gathered."""
    config = make_config(tmp_path, durability="none")
    big = dataset()
    big.PixelData = bytes(300_000)
    data = encode(big, EXPLICIT)
    calls = CallCounter(monkeypatch, "write", "writev")
    writer = make_writer(config, EXPECTED.sop_instance_uid or "")
    writer.begin()
    pieces = fragments(data, [1 << 17, 100, 100, 1 << 17])
    for piece in pieces:
        writer.write(piece)
    record = publish_now(writer)
    monkeypatch.undo()
    assert [len(p) for p in pieces][:4] == [1 << 17, 100, 100, 1 << 17] and len(pieces) == 5
    # File Meta + the first large fragment; the two small ones + the second large one;
    # the small tail, by finish().
    assert (calls.count("writev"), calls.count("write")) == (2, 1)
    _check_published(tmp_path, record, data, EXPLICIT)


def test_temporary_names_are_unique_and_skip_a_leftover(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = stream(make_writer(config, "1.2.3.1"), b"")
    second = stream(make_writer(config, "1.2.3.2"), b"")
    assert first.temp_path != second.temp_path
    name = os.path.basename(second.temp_path or "")
    assert name.startswith(f"{os.getpid()}-") and name.endswith(".part")
    # A leftover of an earlier process that had our pid holds the next name: skipped.
    prefix, number = name[: -len(".part")].rsplit("-", 1)
    (tmp_path / TEMP_DIR / f"{prefix}-{int(number) + 1}.part").write_bytes(b"old")
    third = stream(make_writer(config, "1.2.3.3"), b"")
    assert os.path.basename(third.temp_path or "") == f"{prefix}-{int(number) + 2}.part"
    for writer in (first, second, third):
        writer.abort()


@pytest.mark.parametrize("removed", ["before finish", "after finish"])
@pytest.mark.parametrize("policy", ["overwrite", "keep"])
@pytest.mark.parametrize("durability", ["none", "fsync"])
def test_a_directory_removed_behind_our_back_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, durability: str, removed: str
) -> None:
    """Directories are made once per process; one removed since (by an operator, a
    cleanup) is made again where its absence shows (finish() examining it, or the
    rename or link into it), and with a syncing durability its parents are synced
    again, as those of new directories."""
    config = make_config(tmp_path, durability=durability, duplicate_policy=policy)
    durable = DurableDirs()
    publish_now(stream(make_writer(config, "1.2.3.1"), encode(dataset("1.2.3.1"), EXPLICIT)), durable=durable)
    writer = stream(make_writer(config, "1.2.3.2"), encode(dataset("1.2.3.2"), EXPLICIT))
    if removed == "before finish":
        shutil.rmtree(tmp_path / STUDY)
    writer.finish()
    if removed == "after finish":
        shutil.rmtree(tmp_path / STUDY)
    syncs = SyncCounter(monkeypatch)
    second = publish_now(writer, durable=durable)
    monkeypatch.undo()
    assert leftovers(tmp_path) == ([], [second.path])
    if durability == "fsync":
        assert syncs.dirs == 3  # series, study and root: the new entries are durable
    # and again, with the directories now known under their new identity
    third = publish_now(stream(make_writer(config, "1.2.3.3"), encode(dataset("1.2.3.3"), EXPLICIT)), durable=durable)
    assert leftovers(tmp_path) == ([], sorted([second.path, third.path]))


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "sop, sop_class, ts, kind",
    [
        ("../../escape", CLASS, EXPLICIT, Refusal.INVALID_INSTANCE_UID),
        ("/etc/passwd", CLASS, EXPLICIT, Refusal.INVALID_INSTANCE_UID),
        ("1." + "2" * 80, CLASS, EXPLICIT, Refusal.INVALID_INSTANCE_UID),
        ("1.2.abc", CLASS, EXPLICIT, Refusal.INVALID_INSTANCE_UID),
        ("1.2.3", "../x", EXPLICIT, Refusal.INVALID_SOP_CLASS_UID),
        ("1.2.3", CLASS, "not/a/uid", Refusal.UNREADABLE),
    ],
)
def test_invalid_command_uids_refused_before_any_file(
    tmp_path: Path, sop: str, sop_class: str, ts: str, kind: Refusal
) -> None:
    writer = make_writer(make_config(tmp_path), sop, ts, sop_class)
    with pytest.raises(StoreRefused) as refused:
        writer.begin()
    assert refused.value.kind == kind
    assert writer.temp_path is None
    with pytest.raises(StoreRefused):  # the refusal sticks
        writer.write(b"\x00\x00")
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    "overrides, kind",
    [
        ({"SOPInstanceUID": "1.2.3.999"}, Refusal.DATASET_MISMATCH),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, Refusal.DATASET_MISMATCH),
        ({"StudyInstanceUID": "../../../tmp/evil"}, Refusal.DATASET_MISMATCH),
        ({"StudyInstanceUID": "/abs"}, Refusal.DATASET_MISMATCH),
        ({"SeriesInstanceUID": "1.2." + "3" * 70}, Refusal.DATASET_MISMATCH),
        ({"SeriesInstanceUID": "1.2.x"}, Refusal.DATASET_MISMATCH),
        ({"StudyInstanceUID": None}, Refusal.DATASET_MISMATCH),
    ],
)
def test_data_set_not_matching_is_refused_without_a_path(tmp_path: Path, overrides: dict, kind: Refusal) -> None:
    ds = dataset()
    for key, value in overrides.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    writer = stream(make_writer(make_config(tmp_path), EXPECTED.sop_instance_uid or ""), encode(ds, EXPLICIT))
    with pytest.raises(StoreRefused) as refused:
        publish_now(writer)
    assert refused.value.kind == kind
    assert writer.final_path is None
    assert leftovers(tmp_path) == ([], [])
    assert sorted(os.listdir(tmp_path)) == [TEMP_DIR]  # no directory was made either


@pytest.mark.parametrize(
    "overrides",
    [{"StudyInstanceUID": None}, {"SeriesInstanceUID": "1.2.x"}, {"StudyInstanceUID": "../../../tmp/evil"}],
)
def test_incomplete_data_set_quarantined_when_configured(tmp_path: Path, overrides: dict) -> None:
    ds = dataset()
    for key, value in overrides.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    sop = EXPECTED.sop_instance_uid or ""
    data = encode(ds, EXPLICIT)
    writer = stream(make_writer(make_config(tmp_path, incomplete="quarantine"), sop), data)
    record = publish_now(writer)
    assert record.path == f"{QUARANTINE_DIR}/{sop}.dcm"
    assert writer.final_path == f"{tmp_path}/{QUARANTINE_DIR}/{sop}.dcm"
    # What is a UID is kept; what is not is left empty, never used in a path.
    for key, field in (("StudyInstanceUID", "study_instance_uid"), ("SeriesInstanceUID", "series_instance_uid")):
        value = getattr(record, field)
        assert value == (str(getattr(ds, key)) if key not in overrides else "")
    assert record.patient_id == ds.PatientID and record.sop_instance_uid == sop
    assert pydicom.dcmread(tmp_path / record.path).SOPInstanceUID == sop
    assert sorted(os.listdir(tmp_path)) == sorted([TEMP_DIR, QUARANTINE_DIR])
    assert leftovers(tmp_path)[0] == []
    # A complete data set of the same configuration still goes to its series directory.
    other = dataset("1.2.3.4.5")
    complete = publish_now(stream(make_writer(make_config(tmp_path, incomplete="quarantine"), "1.2.3.4.5"),
                                  encode(other, EXPLICIT)))
    assert complete.path == f"{other.StudyInstanceUID}/{other.SeriesInstanceUID}/1.2.3.4.5.dcm"


def test_incomplete_must_be_refuse_or_quarantine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="incomplete"):
        make_config(tmp_path, incomplete="keep")


def test_unreadable_data_set_is_cannot_understand(tmp_path: Path) -> None:
    writer = stream(make_writer(make_config(tmp_path), "1.2.3", DEFLATED), b"\xff" * 64)
    with pytest.raises(StoreRefused) as refused:
        writer.finish()
    assert refused.value.kind == Refusal.UNREADABLE
    assert leftovers(tmp_path) == ([], [])


def test_abort_and_context_manager(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    writer = stream(make_writer(config, "1.2.3"), encode(dataset("1.2.3"), EXPLICIT))
    assert len(leftovers(tmp_path)[0]) == 1
    writer.abort()
    writer.abort()  # idempotent
    assert leftovers(tmp_path) == ([], [])
    with pytest.raises(RuntimeError):
        with stream(make_writer(config, "1.2.3"), b"\x08\x00") as w:
            raise RuntimeError("association aborted")
    assert w.temp_path is not None and leftovers(tmp_path) == ([], [])
    with pytest.raises(WriterStateError):
        make_writer(config, "1.2.3").write(b"xx")


# ------------------------------------------------------------------------------ I/O failures


def _enospc_after(monkeypatch: pytest.MonkeyPatch, name: str, calls_ok: int) -> None:
    real = getattr(os, name)
    seen = 0

    def failing(*args: object):
        nonlocal seen
        seen += 1
        if seen > calls_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize(
    "name, calls_ok, step, size",
    [
        ("open", 0, "begin", 256),  # the temporary file
        ("write", 0, "publish", 256),  # File Meta and a small data set, written by finish()
        ("writev", 0, "write", 1 << 16),  # File Meta and the first large fragment
        ("write", 0, "write", 1 << 16),  # a later large fragment
        ("mkdir", 0, "publish", 256),
        ("fsync", 0, "publish", 256),
        ("rename", 0, "publish", 256),
    ],
)
def test_io_errors_refuse_with_out_of_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, calls_ok: int, step: str, size: int
) -> None:
    config = make_config(tmp_path, durability="fsync")
    (tmp_path / TEMP_DIR).mkdir()
    big = dataset()
    big.PixelData = bytes(3 << 16)
    data = encode(big if size > 256 else dataset(), EXPLICIT)
    writer = make_writer(config, EXPECTED.sop_instance_uid or "")
    with pytest.raises(StoreRefused) as refused:
        if step != "begin":
            stream_ok = step != "write"
            if stream_ok:
                stream(writer, data, size)
            _enospc_after(monkeypatch, name, calls_ok)
            if not stream_ok:
                stream(writer, data, size)
            else:
                publish_now(writer)
        else:
            _enospc_after(monkeypatch, name, calls_ok)
            writer.begin()
    monkeypatch.undo()
    assert refused.value.kind == Refusal.OUT_OF_RESOURCES
    assert "No space left" in refused.value.reason
    assert leftovers(tmp_path) == ([], [])
    assert writer.refused is refused.value


def test_journal_failure_refuses_and_keeps_the_journal_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    journal = JournalWriter(tmp_path, "w-1-1")
    writer = stream(make_writer(config, "1.2.3.1"), encode(dataset("1.2.3.1"), EXPLICIT))
    writer.finish()
    _enospc_after(monkeypatch, "fdatasync", 0)
    with pytest.raises(StoreRefused) as refused:
        publish_now(writer, journal)
    monkeypatch.undo()
    assert refused.value.kind == Refusal.OUT_OF_RESOURCES
    ok = publish_now(stream(make_writer(config, "1.2.3.2"), encode(dataset("1.2.3.2"), EXPLICIT)), journal)
    assert [r for r, _ in JournalReader(journal.path).read_from()][-1] == ok


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, when this process may mount one (root in a permissive container)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mountpoint = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "scpfleet-test", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_real_disk_full(tiny_fs: Path) -> None:
    config = make_config(tiny_fs)
    sweep_temp(tiny_fs)
    small = publish_now(stream(make_writer(config, "1.2.3.1"), encode(dataset("1.2.3.1"), EXPLICIT)))
    big = dataset("1.2.3.2")
    big.PixelData = bytes(1 << 20)
    writer = make_writer(config, "1.2.3.2")
    with pytest.raises(StoreRefused) as refused:
        stream(writer, encode(big, EXPLICIT), 64 << 10)
    assert refused.value.kind == Refusal.OUT_OF_RESOURCES
    assert leftovers(tiny_fs) == ([], [small.path])
    # space is back: the next store succeeds
    publish_now(stream(make_writer(config, "1.2.3.3"), encode(dataset("1.2.3.3"), EXPLICIT)))


def test_sweep_temp(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    stream(make_writer(config, "1.2.3"), encode(dataset("1.2.3"), EXPLICIT))  # left open: a crash
    old = tmp_path / TEMP_DIR / "old.part"
    old.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert sweep_temp(tmp_path, min_age_s=3600) == 1
    assert len(leftovers(tmp_path)[0]) == 1
    assert sweep_temp(tmp_path) == 1
    assert leftovers(tmp_path) == ([], [])
