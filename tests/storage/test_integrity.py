"""The index always describes the file on disk (storage/_integrity.py and the catalog).

Theory of operation: unit tests of :class:`Generations`, :class:`FileCheck` and
:func:`resolve` on real files in a temporary root; then the catalog applying batches
of racing copies in every order (SQLite, and PostgreSQL with another node's row of the
same instance beside them); then a Hypothesis state machine that runs the real
writer, journals, SQLite catalog and recovery through interleavings of receive,
publish (rename), journal, index, crash, and checks after every step that once the node
settles -- the journals of live workers written, every journal replayed, recovery run
when a worker crashed -- every row's file is the file at its path, every instance file
has exactly one row, and every journalled (acknowledged) instance has a row. The settle
runs on a copy of the root, so the machine itself goes on from the unsettled state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydicom.dataset import Dataset

from storage import (
    SUPERSEDED_DIR,
    FileCheck,
    Generations,
    InstanceRecord,
    InstanceWriter,
    JournalWriter,
    SqliteCatalog,
    open_catalog,
    StoreRefused,
    build_file_meta,
    new_digest,
    read_file_meta,
    replay,
    resolve,
)
from tests.storage import EXPLICIT, encode, make_config, record
from workers.recovery import reconcile

CT = "1.2.840.10008.5.1.4.1.1.2"


# ----------------------------------------------------------------- generations, files


def test_generations_strictly_increase_across_threads() -> None:
    gen = Generations()
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        values = [gen.next() for _ in range(2000)]
        with lock:
            seen.extend(values)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen) == 8000


def place(root: Path, rec: InstanceRecord, content: bytes) -> InstanceRecord:
    """Write ``content`` at ``rec.path`` stamped with ``rec.generation``; the record of it."""
    path = root / rec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, ns=(rec.generation, rec.generation))
    return msgspec.structs.replace(rec, size=len(content))


def test_file_check_tells_copies_apart(tmp_path: Path) -> None:
    files = FileCheck(tmp_path)
    first = place(tmp_path, msgspec.structs.replace(record(1), generation=10**18 + 1), b"a" * 10)
    assert files.is_current(first)
    second = place(tmp_path, msgspec.structs.replace(record(1), generation=10**18 + 2), b"b" * 10)
    assert files.is_current(second) and not files.is_current(first)  # same size, other copy
    legacy = msgspec.structs.replace(second, generation=0)
    assert files.is_current(legacy)  # before generations: the size is all there is
    (tmp_path / second.path).unlink()
    assert not files.is_current(second)


@pytest.mark.parametrize("algorithm", ["xxh3-128", "sha256"])
def test_coarse_timestamps_are_settled_by_the_records_digest(tmp_path: Path, algorithm: str) -> None:
    """Where the file system cannot tell two copies' times apart, the data set digest
    decides, by the algorithm the record names."""
    files = FileCheck(tmp_path)
    files._precision = 1_000_000_000  # one-second timestamps

    def placed(generation: int, content: bytes) -> InstanceRecord:
        digest = new_digest(algorithm)
        digest.update(content)
        rec = msgspec.structs.replace(record(1), generation=generation, digest=digest.hexdigest(),
                                      digest_algorithm=algorithm)
        rec = place(tmp_path, rec, bytes(_META) + content)
        os.utime(tmp_path / rec.path, ns=(10**18, 10**18))  # what such a file system keeps
        return rec

    first = placed(10**18 + 1, b"a" * 10)
    assert files.is_current(first)
    second = placed(10**18 + 2, b"b" * 10)  # same size, same second: only the digest differs
    assert files.is_current(second) and not files.is_current(first)


_META = build_file_meta("1.2.3", "1.2.3.1", EXPLICIT, "1.2.3.4")


def test_supersede_moves_only_the_records_own_file(tmp_path: Path) -> None:
    files = FileCheck(tmp_path)
    old = place(tmp_path, msgspec.structs.replace(record(1), generation=10**18 + 1), b"a" * 10)
    assert files.supersede(old)
    assert not (tmp_path / old.path).exists()
    moved = list((tmp_path / SUPERSEDED_DIR).iterdir())
    assert [p.read_bytes() for p in moved] == [b"a" * 10]
    # The path now holds another copy: superseding the old record leaves it alone.
    new = place(tmp_path, msgspec.structs.replace(record(1), generation=10**18 + 2), b"b" * 10)
    assert not files.supersede(old)
    assert (tmp_path / new.path).read_bytes() == b"b" * 10
    assert len(list((tmp_path / SUPERSEDED_DIR).iterdir())) == 1


def copies(root: Path, n: int = 1) -> tuple[InstanceRecord, InstanceRecord]:
    """Two copies of instance ``n`` at one path, renamed in order: the second is current."""
    a = place(root, msgspec.structs.replace(record(n, patient="A"), generation=10**18 + 1), b"a" * 7)
    b = place(root, msgspec.structs.replace(record(n, patient="B"), generation=10**18 + 2), b"b" * 9)
    return a, b


@pytest.mark.parametrize("order", ["current-last", "current-first"])
def test_resolve_same_path_the_disk_decides(tmp_path: Path, order: str) -> None:
    a, b = copies(tmp_path)
    batch = [a, b] if order == "current-last" else [b, a]
    written, superseded = resolve(batch, {}, FileCheck(tmp_path))
    assert written == [b] and superseded == []
    # Against a row: the stale copy never replaces the current one.
    assert resolve([a], {b.sop_instance_uid: b}, FileCheck(tmp_path)) == ([], [])
    assert resolve([b], {a.sop_instance_uid: a}, FileCheck(tmp_path)) == ([b], [])


@pytest.mark.parametrize("policy", ["overwrite", "keep", "reject"])
def test_resolve_two_paths_the_generation_decides(tmp_path: Path, policy: str) -> None:
    """The instance re-sent with another study: overwrite keeps the newer copy, keep and
    reject the first; the loser is superseded whichever record comes first."""
    first = place(tmp_path, msgspec.structs.replace(record(1, study=1), generation=10**18 + 1), b"1" * 5)
    second = place(tmp_path, msgspec.structs.replace(record(1, study=2), generation=10**18 + 2), b"2" * 5)
    winner, loser = (second, first) if policy == "overwrite" else (first, second)
    files = FileCheck(tmp_path, policy)
    for batch in ([first, second], [second, first]):
        written, superseded = resolve(batch, {}, files)
        assert written == [winner] and superseded == [loser]
    assert resolve([loser], {winner.sop_instance_uid: winner}, files) == ([], [loser])


def test_resolve_replay_of_the_row_writes_nothing(tmp_path: Path) -> None:
    _, b = copies(tmp_path)
    assert resolve([b, b], {b.sop_instance_uid: b}, FileCheck(tmp_path)) == ([], [])


@pytest.mark.parametrize("order", ["current-last", "current-first", "split"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_catalog_applies_racing_copies_to_describe_the_file(
    tmp_path: Path, order: str, kind: str, request: pytest.FixtureRequest
) -> None:
    """Two indexers (two connections) applying the journals of two workers in any
    order: the row ends as the copy on disk (the data-integrity bug of the first round).
    On PostgreSQL, another node's row of the same instance is never touched."""
    a, b = copies(tmp_path)
    files = FileCheck(tmp_path)
    if kind == "sqlite":
        location: str | Path = tmp_path / "index.sqlite"
    else:
        location = request.getfixturevalue("postgres_url")
    with open_catalog(location, node="n1") as one, open_catalog(location, node="n1") as two:
        if kind == "postgresql":
            with open_catalog(location, node="n2") as other:
                other.apply([a])  # the same UID on another node: its own file, its own row
        if order == "current-last":
            one.apply([a], files=files)
            two.apply([b], files=files)
        elif order == "current-first":
            one.apply([b], files=files)
            two.apply([a], files=files)
        else:
            one.apply([b, a], files=files)
        assert one.get(b.sop_instance_uid) == b
    if kind == "postgresql":
        with open_catalog(location, node="n2") as other:
            assert other.get(a.sop_instance_uid) == a
    # Without the file check, the last applied wins: what the bug looked like.
    with SqliteCatalog(tmp_path / "unchecked.sqlite") as plain:
        plain.apply([b])
        plain.apply([a])
        assert plain.get(a.sop_instance_uid) == a


# ----------------------------------------------------------------- the state machine

STUDIES = ("1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11")
UIDS = tuple(f"1.2.826.0.1.3680043.8.498.2{i}" for i in range(3))


def dataset_bytes(uid: str, study: str, patient: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    ds.PatientID = patient
    ds.Modality = "CT"
    return encode(ds, EXPLICIT)


def file_digest(path: Path, algorithm: str = "xxh3-128") -> tuple[int, str]:
    with open(path, "rb") as fp:
        read_file_meta(fp)
        data = fp.read()
    digest = new_digest(algorithm)
    digest.update(data)
    return path.stat().st_size, digest.hexdigest()


def check_invariant(root: Path, catalog: SqliteCatalog, acknowledged: set[str]) -> None:
    """The issue's invariant, on a settled root."""
    on_disk: dict[str, list[Path]] = {}
    for path in root.rglob("*.dcm"):
        relative = path.relative_to(root)
        if relative.parts[0] in (".tmp", SUPERSEDED_DIR, ".journal"):
            continue
        on_disk.setdefault(path.stem, []).append(path)
    rows = {r.sop_instance_uid: r for r in catalog.find({})}
    for uid, paths in on_disk.items():
        assert len(paths) == 1, f"{uid}: {len(paths)} files {paths}"
        row = rows.get(uid)
        assert row is not None, f"{uid}: a file without a row"
        assert row.path == paths[0].relative_to(root).as_posix()
        size, digest = file_digest(paths[0], row.digest_algorithm)
        assert (row.size, row.digest) == (size, digest), f"{uid}: the row describes another copy"
        assert row.generation == paths[0].stat().st_mtime_ns
    for uid in rows:
        assert uid in on_disk, f"{uid}: a row without its file"
    assert acknowledged <= set(rows), f"acknowledged but lost: {acknowledged - set(rows)}"


class Publishing(RuleBasedStateMachine):
    """Two workers racing copies of three instances through the real storage code."""

    @initialize(policy=st.sampled_from(["overwrite", "keep", "reject"]))
    def setup(self, policy: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="integrity-")
        self.root = Path(self.dir) / "root"
        self.policy = policy
        self.config = make_config(self.root, durability="none", duplicate_policy=policy)
        self.catalog_path = self.root / "index.sqlite"
        self.root.mkdir()
        SqliteCatalog(self.catalog_path).close()
        self.journals = [JournalWriter(self.root, f"w{k}-1-1") for k in range(2)]
        self.pending: list[tuple[int, InstanceWriter]] = []  # received, not yet visible
        self.unjournalled: list[list[InstanceRecord]] = [[], []]  # visible, not journalled
        self.crashed = False
        self.acknowledged: set[str] = set()  # journalled: the C-STORE was answered Success

    def teardown(self) -> None:
        for journal in self.journals:
            journal.close()
        for _, writer in self.pending:
            writer.abort()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(worker=st.integers(0, 1), uid=st.sampled_from(UIDS), study=st.sampled_from(STUDIES),
          patient=st.sampled_from(["P1", "P2", "P3"]))
    def receive(self, worker: int, uid: str, study: str, patient: str) -> None:
        writer = InstanceWriter(self.config, CT, uid, EXPLICIT, "MOD", "ARCHIVE")
        writer.begin()
        writer.write(dataset_bytes(uid, study, patient))
        try:
            writer.finish()
        except StoreRefused:
            return
        self.pending.append((worker, writer))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        worker, writer = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        writer._sync_file(False)
        try:
            writer._commit()
        except StoreRefused:
            return  # reject: refused, nothing visible
        if not writer.duplicate and writer.record is not None:
            self.unjournalled[worker].append(writer.record)

    @precondition(lambda self: any(self.unjournalled))
    @rule(data=st.data())
    def journal(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([k for k in (0, 1) if self.unjournalled[k]]))
        # Publisher threads may append in another order than they renamed.
        queue = self.unjournalled[worker]
        rec = queue.pop(data.draw(st.integers(0, len(queue) - 1)))
        self.journals[worker].append_many([rec])
        self.acknowledged.add(rec.sop_instance_uid)

    @rule()
    def index(self) -> None:
        with SqliteCatalog(self.catalog_path) as catalog:
            replay(self.root, catalog, files=FileCheck(self.root, self.policy))

    @precondition(lambda self: any(self.unjournalled))
    @rule(worker=st.integers(0, 1))
    def crash(self, worker: int) -> None:
        """kill -9 between rename and journal append: visible, never acknowledged."""
        if self.unjournalled[worker]:
            self.unjournalled[worker].clear()
            self.crashed = True

    @invariant()
    def settled_index_describes_the_disk(self) -> None:
        if not hasattr(self, "root"):
            return
        copy = Path(tempfile.mkdtemp(prefix="settle-", dir=self.dir))
        try:
            root = copy / "root"
            shutil.copytree(self.root, root, ignore=shutil.ignore_patterns("*.part"))
            for src in (self.root / ".journal").iterdir():
                os.utime(root / ".journal" / src.name, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))
            for path in self.root.rglob("*.dcm"):  # copytree keeps mtimes; make sure
                target = root / path.relative_to(self.root)
                if target.exists():
                    os.utime(target, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
            journals = [JournalWriter(root, f"settle-w{k}") for k in (0, 1)]
            acknowledged = set(self.acknowledged)
            for k in (0, 1):
                records = list(self.unjournalled[k])
                if records:
                    journals[k].append_many(records)
                    acknowledged.update(r.sop_instance_uid for r in records)
                journals[k].close()
            files = FileCheck(root, self.policy)
            with SqliteCatalog(root / "index.sqlite") as catalog:
                replay(root, catalog, files=files)
                if self.crashed:
                    reconcile(str(root), catalog, since=0.0, files=files)
                check_invariant(root, catalog, acknowledged)
        finally:
            shutil.rmtree(copy, ignore_errors=True)


TestPublishing = Publishing.TestCase
TestPublishing.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
