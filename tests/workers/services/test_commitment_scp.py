"""Storage Commitment SCP against pynetdicom: the report on the same association and on
a new one, failures with their reasons, answered after a restart, refusals, and a peer
that will not take the report.

Theory of operation: each test has a node of its own over a copy of the filled root
(conftest). pynetdicom runs in a subprocess (_pynetdicom_qr.py): ``commit`` is the SCU
(N-ACTION, and the report when it comes on that association), ``listen`` the AE the node
reports to on a new association, accepting the node's SCP role (role selection). A
"restart" is a new node over the same storage root: its first sweep reports what the
previous one left pending.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pydicom
import pytest

from bench.qrnode import QRNode
from engine.dimse import NActionRQ
from tests.peers import _Proc
from tests.workers.services.conftest import Instance, exchange

pytestmark = pytest.mark.interop

PEER = Path(__file__).with_name("_pynetdicom_qr.py")
COMMITMENT = "1.2.840.10008.1.20.1"
INSTANCE = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
WAIT_S = 30.0
#: The commitment grace of the tests whose decision waits for a reference that the test
#: indexes later: far longer than any of them runs, so only the test ends the wait.
GRACE_S = 120.0


def refs(instances: list[Instance]) -> list[list[str]]:
    return [[str(i.ds.SOPClassUID), i.uid] for i in instances]


def index_without_file(node: QRNode, like: Instance, uid: str) -> None:
    """Give the catalog a row for ``uid`` (a copy of ``like``'s) whose file does not exist.

    A request naming ``uid`` waits for it (up to the node's grace); once the row appears
    its decision is made within a second, and the reference fails (0x0110: no file). The
    tests below put the row in only after the SCU has released, so that the report
    cannot go on the requesting association, whatever the machine's load."""
    record = node.call(lambda: node.catalog.get(like.uid))  # type: ignore[union-attr]
    folder = record.path.rsplit("/", 1)[0]
    node.apply([msgspec.structs.replace(record, sop_instance_uid=uid, path=f"{folder}/{uid}.dcm")])


def commit(node: QRNode, tmp_path: Path, transaction: str, references: list[list[str]], *,
           aet: str = "SCU1", early: bool = False) -> dict[str, Any]:
    request = tmp_path / f"request-{transaction}.json"
    request.write_text(json.dumps({"transaction": transaction, "references": references}))
    argv = [sys.executable, str(PEER), "commit", "--host", node.host, "--port", str(node.port),
            "--aec", node.ae_title, "--aet", aet, "--request", str(request), "--wait", str(WAIT_S)]
    if early:
        argv.append("--early-release")
    result = _Proc("pynetdicom-commit", argv, log_dir=tmp_path).finish(time.monotonic() + 90, 90)
    return json.loads(result.stdout.strip().splitlines()[-1])


class Listener:
    """A pynetdicom AE taking reports on new associations (``listen`` mode)."""

    def __init__(self, tmp_path: Path, aet: str = "SCU1", *, count: int = 1, reject: bool = False) -> None:
        ready = tmp_path / f"listen-{aet}-{time.monotonic_ns()}.json"
        argv = [sys.executable, str(PEER), "listen", "--aet", aet, "--ready-file", str(ready),
                "--wait", str(WAIT_S), "--count", str(count)]
        if reject:
            argv.append("--reject")
        self.proc = _Proc("pynetdicom-listen", argv, log_dir=tmp_path)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert self.proc.popen.poll() is None and time.monotonic() < deadline, self.proc.describe()
            time.sleep(0.05)
        self.port = int(json.loads(ready.read_text())["port"])

    def reports(self) -> list[dict[str, Any]]:
        result = self.proc.finish(time.monotonic() + WAIT_S + 10, WAIT_S + 10)
        return json.loads(result.stdout.strip().splitlines()[-1])["reports"]

    def stop(self) -> None:
        self.proc.kill()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    started: list[Listener] = []
    yield started
    for listener in started:
        listener.stop()


# ------------------------------------------------------------------ the same association


def test_all_committed_reported_on_the_same_association(copy_of_filled: Path, corpus: list[Instance],
                                                        tmp_path: Path) -> None:
    with QRNode(copy_of_filled) as node:
        out = commit(node, tmp_path, "1.2.3.100", refs(corpus))
        assert out["action_status"] == 0
        (report,) = out["reports"]
        assert (report["via"], report["event_type"], report["transaction"]) == ("same", 1, "1.2.3.100")
        assert sorted(map(tuple, report["committed"])) == sorted(map(tuple, refs(corpus)))
        assert report["failed"] == []
        assert node.pending_commitments() == []  # removed once reported


def test_failures_carry_their_reasons(copy_of_filled: Path, corpus: list[Instance], tmp_path: Path) -> None:
    ct = next(i for i in corpus if str(i.ds.SOPClassUID) == CT)
    good = refs(corpus[:2])
    wanted = good + [
        [CT, "1.2.3.4.5.404"],  # never stored
        [MR, ct.uid],  # stored, as CT
        [CT, "1.2.x.y"],  # not a UID
        ["not-a-class", "1.2.3.4.5.405"],
    ]
    with QRNode(copy_of_filled) as node:
        out = commit(node, tmp_path, "1.2.3.101", wanted)
    (report,) = out["reports"]
    assert report["event_type"] == 2
    assert sorted(map(tuple, report["committed"])) == sorted(map(tuple, good))
    assert sorted(map(tuple, report["failed"])) == sorted([
        (CT, "1.2.3.4.5.404", 0x0112), (MR, ct.uid, 0x0119), (CT, "1.2.x.y", 0x0112),
        ("not-a-class", "1.2.3.4.5.405", 0x0122)])


@pytest.mark.parametrize("verify", [False, True])
def test_damaged_and_truncated_files(copy_of_filled: Path, corpus: list[Instance], tmp_path: Path,
                                     verify: bool) -> None:
    damaged, truncated, intact = corpus[0], corpus[1], corpus[2]
    with QRNode(copy_of_filled, commitment_verify=verify) as node:
        for inst, cut in ((damaged, False), (truncated, True)):
            path = copy_of_filled / node.call(lambda inst=inst: node.catalog.get(inst.uid)).path
            data = bytearray(path.read_bytes())
            if cut:
                del data[-100:]
            else:
                data[-10] ^= 0xFF  # same size, one pixel byte changed
            path.write_bytes(bytes(data))
        out = commit(node, tmp_path, "1.2.3.102", refs([damaged, truncated, intact]))
    (report,) = out["reports"]
    failed = {uid: reason for _, uid, reason in report["failed"]}
    assert failed.pop(truncated.uid) == 0x0110  # the size alone shows it
    if verify:
        assert failed == {damaged.uid: 0x0110}
        assert [uid for _, uid in report["committed"]] == [intact.uid]
    else:
        assert failed == {}
        assert sorted(uid for _, uid in report["committed"]) == sorted([damaged.uid, intact.uid])


# ------------------------------------------------------------------ a new association


def test_short_association_gets_its_report_on_a_new_one(copy_of_filled: Path, corpus: list[Instance],
                                                         tmp_path: Path, listeners: list[Listener]) -> None:
    """The SCU releases right after the N-ACTION-RSP; the report goes on a new
    association. One reference is to an instance not indexed yet, so the decision waits
    for it; it is indexed (without a file) only once the SCU has gone."""
    listener = Listener(tmp_path, "SCU1")
    listeners.append(listener)
    missing = [refs(corpus[:1])[0][0], "1.2.826.0.1.3680043.8.498.103103"]
    with QRNode(copy_of_filled, ae_table={"SCU1": ("127.0.0.1", listener.port)},
                commitment_grace_s=GRACE_S) as node:
        out = commit(node, tmp_path, "1.2.3.103", refs(corpus[:3]) + [missing], early=True)
        assert out["action_status"] == 0 and out["reports"] == []
        index_without_file(node, corpus[0], missing[1])
        (report,) = listener.reports()
        assert (report["via"], report["event_type"], report["transaction"]) == ("new", 2, "1.2.3.103")
        assert sorted(map(tuple, report["committed"])) == sorted(map(tuple, refs(corpus[:3])))
        assert [tuple(f[:2]) for f in report["failed"]] == [tuple(missing)]
        deadline = time.monotonic() + 10
        while node.pending_commitments() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.pending_commitments() == []


def test_answered_after_a_restart(copy_of_filled: Path, corpus: list[Instance], tmp_path: Path,
                                  listeners: list[Listener]) -> None:
    """A report the first node could not deliver (the SCU left, its AE unknown) is kept;
    the next node over the same storage root delivers it. One reference is to an instance
    not indexed yet, so the first node's decision waits for it; it is indexed (without a
    file) only once the SCU has released, so the report cannot go on its association."""
    missing = [refs(corpus[:1])[0][0], "1.2.826.0.1.3680043.8.498.104104"]
    references = refs(corpus[:2]) + [missing]
    with QRNode(copy_of_filled, commitment_grace_s=GRACE_S) as node:
        out = commit(node, tmp_path, "1.2.3.104", references, aet="SCU2", early=True)
        assert out["action_status"] == 0 and out["reports"] == []
        assert node.pending_commitments() == ["1.2.3.104"]
        index_without_file(node, corpus[0], missing[1])
        time.sleep(3.0)  # the decision (within a second) and the failed delivery
        assert node.pending_commitments() == ["1.2.3.104"]
    listener = Listener(tmp_path, "SCU2")
    listeners.append(listener)
    with QRNode(copy_of_filled, ae_table={"SCU2": ("127.0.0.1", listener.port)}) as node:
        (report,) = listener.reports()
        assert (report["via"], report["event_type"], report["transaction"]) == ("new", 2, "1.2.3.104")
        assert sorted(map(tuple, report["committed"])) == sorted(map(tuple, refs(corpus[:2])))
        assert [tuple(f[:2]) for f in report["failed"]] == [tuple(missing)]
        deadline = time.monotonic() + 10
        while node.pending_commitments() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.pending_commitments() == []


def test_a_peer_refusing_the_report_association_loses_nothing(copy_of_filled: Path, corpus: list[Instance],
                                                               tmp_path: Path, listeners: list[Listener]) -> None:
    """The reference not indexed yet holds the decision until the SCU has released, so
    the report must go to the refusing listener (tests above)."""
    refusing = Listener(tmp_path, "SCU3", reject=True)
    listeners.append(refusing)
    missing = [refs(corpus[:1])[0][0], "1.2.826.0.1.3680043.8.498.105105"]
    with QRNode(copy_of_filled, ae_table={"SCU3": ("127.0.0.1", refusing.port)},
                commitment_grace_s=GRACE_S) as node:
        out = commit(node, tmp_path, "1.2.3.105", refs(corpus[:1]) + [missing], aet="SCU3", early=True)
        assert out["action_status"] == 0 and out["reports"] == []
        index_without_file(node, corpus[0], missing[1])
        time.sleep(3.0)  # the decision (within a second) and the refused delivery
        assert node.pending_commitments() == ["1.2.3.105"]
        assert node.sweep() == 0  # a retry is not due yet: nothing is sent twice at once
    refusing.stop()
    accepting = Listener(tmp_path, "SCU3")
    listeners.append(accepting)
    with QRNode(copy_of_filled, ae_table={"SCU3": ("127.0.0.1", accepting.port)}) as node:
        (report,) = accepting.reports()
        assert (report["transaction"], report["event_type"]) == ("1.2.3.105", 2)
        assert sorted(map(tuple, report["committed"])) == sorted(map(tuple, refs(corpus[:1])))
        assert [tuple(f[:2]) for f in report["failed"]] == [tuple(missing)]


def test_a_pending_transaction_uid_again_fails_every_reference_0131(copy_of_filled: Path, corpus: list[Instance],
                                                                     tmp_path: Path) -> None:
    """The first request's reference to an instance not indexed holds its decision for
    the whole test (the grace is longer), so its report cannot go on its own association
    (which would end it): it stays pending. NOWHERE is not in the AE table."""
    missing = [refs(corpus[:1])[0][0], "1.2.826.0.1.3680043.8.498.106106"]
    with QRNode(copy_of_filled, commitment_grace_s=GRACE_S) as node:
        first = commit(node, tmp_path, "1.2.3.106", refs(corpus[:1]) + [missing], aet="NOWHERE", early=True)
        assert first["action_status"] == 0 and first["reports"] == []
        assert node.pending_commitments() == ["1.2.3.106"]
        again = commit(node, tmp_path, "1.2.3.106", refs(corpus[1:3]), aet="NOWHERE")
        (report,) = again["reports"]
        assert report["event_type"] == 2 and report["committed"] == []
        assert sorted(map(tuple, report["failed"])) == sorted((c, i, 0x0131) for c, i in refs(corpus[1:3]))
        assert node.pending_commitments() == ["1.2.3.106"]  # the first one still waits


# ------------------------------------------------------------------ refusals


def _action_information(**attributes: Any) -> bytes:
    from engine.dataset import encode_dataset

    ds = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return encode_dataset(ds, "1.2.840.10008.1.2.1")


def _item(sop_class: str, sop_instance: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


@pytest.mark.parametrize(
    ("instance", "action", "data", "status"),
    [
        ("1.2.3.4", 1, _action_information(TransactionUID="1.2.3", ReferencedSOPSequence=[_item(CT, "1.2.3.4")]),
         0x0112),
        (INSTANCE, 2, _action_information(TransactionUID="1.2.3", ReferencedSOPSequence=[_item(CT, "1.2.3.4")]),
         0x0123),
        (INSTANCE, 1, _action_information(ReferencedSOPSequence=[_item(CT, "1.2.3.4")]), 0x0115),
        (INSTANCE, 1, _action_information(TransactionUID="1.2.3", ReferencedSOPSequence=[]), 0x0115),
        (INSTANCE, 1, _action_information(TransactionUID="1.2.3"), 0x0115),
        (INSTANCE, 1, b"\x08\x00\x95\x11UI\xff\x00garbage", 0x0115),
        (INSTANCE, 1, None, 0x0115),
    ],
    ids=["other-instance", "action-type-2", "no-transaction", "no-references", "no-sequence", "garbage", "no-data"],
)
def test_n_action_refusals(copy_of_filled: Path, instance: str, action: int, data: bytes | None,
                           status: int) -> None:
    with QRNode(copy_of_filled) as node:
        rq = NActionRQ(message_id=3, requested_sop_class_uid=COMMITMENT, requested_sop_instance_uid=instance,
                       action_type_id=action, command_data_set_type=0x0101 if data is None else 0x0000)
        rsp, _, _ = exchange(node, COMMITMENT, rq, data)
        assert rsp.status == status, rsp
        assert node.pending_commitments() == []


# ------------------------------------------------------------------ digests


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3-128", "md5"])
def test_file_check_by_each_digest_algorithm(copy_of_filled: Path, corpus: list[Instance], algorithm: str) -> None:
    """The record's digest_algorithm decides how the data set is hashed; one this node
    cannot compute fails the reference (it cannot be verified), never crashes."""
    import hashlib

    import msgspec

    from storage import PosixInstanceStore, SqliteCatalog, read_file_meta
    from tests.storage import make_config
    from workers.services.commitment_scp import _check_file

    with SqliteCatalog(copy_of_filled / "index.sqlite") as catalog:
        record = catalog.get(corpus[0].uid)
    assert record is not None
    store = PosixInstanceStore(make_config(copy_of_filled))
    with open(store.path_of(record), "rb") as fp:
        read_file_meta(fp)
        data = fp.read()
    if algorithm == "xxh3-128":
        xxhash = pytest.importorskip("xxhash")
        digest = xxhash.xxh3_128(data).hexdigest()
    else:
        digest = hashlib.new(algorithm, data).hexdigest()
    record = msgspec.structs.replace(record, digest_algorithm=algorithm, digest=digest)
    expected = None if algorithm != "md5" else 0x0110
    assert _check_file(store, record, verify=True) == expected
    assert _check_file(store, msgspec.structs.replace(record, digest="0" * len(digest)), verify=True) == 0x0110
    assert _check_file(store, record, verify=False) is None
