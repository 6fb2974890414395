"""The node's plumbing in one process: control messages, shared slots, the C-STORE
status of each storage refusal, and the contexts a worker accepts. (Workers and
indexers share no channel: the journal is the index queue, tests/workers/test_indexer.py.)"""

from __future__ import annotations

import os
import socket

from storage import InstanceRecord
from workers.config import load_config
from workers.ipc import Attach, IndexerStats, SharedSlots, Spec, WorkerStats, recv_control, send_control


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
