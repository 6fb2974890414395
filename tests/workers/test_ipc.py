"""The node's plumbing in one process: control messages, shared slots, the C-STORE
status of each storage refusal, and the contexts a worker accepts. (Workers and
indexers share no channel: the journal is the index queue, tests/workers/test_indexer.py.)"""

from __future__ import annotations

import os
import socket

from engine import status
from storage import InstanceRecord, Refusal
from workers.config import load_config
from workers.ipc import Attach, IndexerStats, SharedSlots, Spec, WorkerStats, recv_control, send_control
from workers.worker import TRANSFER_SYNTAXES, refusal_status, supported_contexts


def record(n: int) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        study_instance_uid="1.2.3", series_instance_uid="1.2.3.1", patient_id="P1", patient_name="DOE^J",
        modality="OT", study_date="20240101", instance_number=str(n), transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"1.2.3/1.2.3.1/1.2.3.{n}.dcm", size=100 + n, digest="0" * 64, calling_ae="A", called_ae="B",
        received_at=1.0,
    )


def test_control_messages_carry_descriptors(tmp_path):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spec = Spec(role="worker", index=3, config=load_config(None, {"storage": str(tmp_path)}), lock_fd=7)
    send_control(a, spec)
    got, fd = recv_control(b)
    assert got == spec and fd is None
    r, w = os.pipe()
    send_control(a, Attach(3), r)
    got, fd = recv_control(b)
    assert got == Attach(3) and fd is not None
    os.write(w, b"ok")
    assert os.read(fd, 2) == b"ok"
    for f in (r, w, fd):
        os.close(f)
    send_control(a, WorkerStats(instances=5))
    assert recv_control(b)[0].instances == 5
    send_control(a, IndexerStats(indexed=7, polls=30))
    assert recv_control(b)[0] == IndexerStats(indexed=7, polls=30)
    a.close()
    assert recv_control(b) is None


def test_shared_slots_admit_release_reset():
    slots = SharedSlots.create(3)
    try:
        assert slots.try_admit(0, 2) and slots.try_admit(1, 2)
        assert not slots.try_admit(2, 2)
        slots.release(0)
        assert slots.try_admit(2, 2)
        assert slots.held() == 2
        slots.reset(1)  # a dead worker's share comes back
        assert slots.held() == 1 and slots.try_admit(0, 2)
        slots.connection_done(2)
        assert slots.done(2) == 1
        # Another mapping of the same memory (as a child process has) sees the same cells.
        other = SharedSlots(slots.fd, 3)
        assert other.held() == 2 and not other.try_admit(1, 2)
    finally:
        os.close(slots.fd)


def test_every_refusal_has_its_c_store_status():
    """The statuses on the wire for each storage refusal (PS3.4 Table B.2-1)."""
    assert {kind: refusal_status(kind) for kind in Refusal} == {
        Refusal.OUT_OF_RESOURCES: 0xA700,
        Refusal.DATASET_MISMATCH: 0xA900,
        Refusal.UNREADABLE: 0xC000,
        Refusal.INVALID_INSTANCE_UID: 0x0117,
        Refusal.INVALID_SOP_CLASS_UID: 0x0122,
        Refusal.DUPLICATE: 0xC111,
    }
    assert all(status.status_category(refusal_status(kind)) == "Failure" for kind in Refusal)


def test_supported_contexts_accept_everything_storable():
    contexts = supported_contexts()
    assert str(contexts[0].abstract_syntax) == "1.2.840.10008.1.1"
    assert len(contexts) > 100
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"):
        assert uid in TRANSFER_SYNTAXES
    assert "1.2.840.10008.1.2.6.1" not in TRANSFER_SYNTAXES  # MIME encapsulation is not a data set encoding
