"""The node's service providers (workers/services/) and the worker's association parts
(workers/associations.py), built without spawning a node.

Theory of operation: the status table and the contexts are checked as data; the Storage
and Verification SCPs then serve real associations on 127.0.0.1 from an
``engine.aio.AssociationServer`` built exactly as a worker builds it
(:func:`workers.services.build_services` over a ``PosixInstanceStore``), with an
``AssociationLog`` as the store observer; draining is switched like a worker does. The
admission part runs against a real ``SharedSlots`` memfd on one loop.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from engine import aio, build_context, status
from engine.sop_class import Verification
from storage import JournalReader, PosixInstanceStore, Refusal
from tests.dicomdata import make_dataset
from tests.storage import make_config
from workers.associations import Admission, AssociationLog
from workers.ipc import SharedSlots
from workers.services import build_services, store_status
from workers.services.storage_scp import TRANSFER_SYNTAXES

HOST = "127.0.0.1"
WAIT_S = 10.0


def test_every_refusal_has_its_c_store_status() -> None:
    """The statuses on the wire for each storage refusal (PS3.4 Table B.2-1)."""
    assert {kind: store_status(kind) for kind in Refusal} == {
        Refusal.OUT_OF_RESOURCES: 0xA700,
        Refusal.DATASET_MISMATCH: 0xA900,
        Refusal.UNREADABLE: 0xC000,
        Refusal.INVALID_INSTANCE_UID: 0x0117,
        Refusal.INVALID_SOP_CLASS_UID: 0x0122,
        Refusal.DUPLICATE: 0xC111,
    }
    assert all(status.status_category(store_status(kind)) == "Failure" for kind in Refusal)


def test_node_contexts_accept_everything_storable(tmp_path: Path) -> None:
    services = build_services(PosixInstanceStore(make_config(tmp_path)), called_ae="NODE")
    contexts = services.contexts
    assert str(contexts[0].abstract_syntax) == "1.2.840.10008.1.1"
    assert len(contexts) > 100
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"):
        assert uid in TRANSFER_SYNTAXES
    assert "1.2.840.10008.1.2.6.1" not in TRANSFER_SYNTAXES  # MIME encapsulation is not a data set encoding


def run(main: Any) -> Any:
    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        return runner.run(main())


def test_storage_scp_stores_reports_and_refuses_while_draining(tmp_path: Path) -> None:
    book = AssociationLog(0)
    datasets = [make_dataset("tiny", seed=n, unique=True) for n in range(3)]

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        store = PosixInstanceStore(make_config(tmp_path, durability="none"), loop,
                                   segment_label="w0", segment_bytes=1 << 20)
        services = build_services(store, called_ae="NODE", observer=book)
        policy = aio.AcceptorPolicy(ae_title=b"NODE".ljust(16), supported_contexts=services.contexts,
                                    implementation_class_uid="1.2.826.0.1.3680043.8.498.5")
        server = aio.AssociationServer(aio.ServerConfig(policy=policy, services=services.registry,
                                                        maximum_associations=None), loop=loop)
        _, port = await server.start(HOST, 0)
        try:
            contexts = [build_context(ds.SOPClassUID, "1.2.840.10008.1.2.1") for ds in datasets]
            config = aio.RequestorConfig(calling_ae_title=b"MOD".ljust(16), called_ae_title=b"NODE".ljust(16),
                                         contexts=[*contexts, build_context(Verification)],
                                         implementation_class_uid="1.2.826.0.1.3680043.8.498.6")
            assoc = await aio.associate(HOST, port, config)
            echo = await assoc.send_c_echo()
            stored = [int((await assoc.send_c_store(ds)).Status) for ds in datasets[:2]]
            services.stop_accepting()  # the worker is draining
            refused = await assoc.send_c_store(datasets[2])
            await asyncio.wait_for(asyncio.shield(assoc.closed), WAIT_S)
            return echo, stored, refused, assoc
        finally:
            await server.close(grace=1.0)
            await store.aclose()

    echo, stored, refused, assoc = run(main)
    assert echo.Status == 0 and stored == [0, 0]
    # Draining: the new store is refused (or the association is cut before its answer).
    assert "Status" not in refused or refused.Status == status.REFUSED_OUT_OF_RESOURCES
    assert assoc.is_aborted
    assert book.instances == 2 and book.failures == 1 and book.bytes > 0
    assert sum(book.latency_counts) == 2
    assert len(list(tmp_path.rglob("*.dcm"))) == 2
    # Each record names its sender: AE title and network address.
    records = [r for segment in (tmp_path / ".journal").iterdir() for r, _ in JournalReader(segment).read_from()]
    assert {(r.calling_ae, r.calling_address) for r in records} == {("MOD", HOST)} and len(records) == 2


class _Assoc:
    """Just enough of an association for the log and the admission bookkeeping."""


def test_admission_never_leaks_a_slot() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slots = SharedSlots.create(2)
        try:
            admission = Admission(slots, 0, 2, loop)
            a, b = _Assoc(), _Assoc()
            assert admission.admit()
            admission.claim(a)
            assert admission.admit()  # admitted, but its request never claimed the slot
            await asyncio.sleep(0)    # the next loop turn gives the unclaimed slot back
            assert slots.held() == 1
            assert admission.admit()
            admission.claim(b)
            assert not admission.admit() and admission.rejected == 1  # limit 2
            admission.release(a)
            admission.release(a)      # twice: one slot back, not two
            assert slots.held() == 1
            admission.accepting = False  # draining
            assert not admission.admit() and admission.rejected == 2
        finally:
            os.close(slots.fd)

    run(main)


PRIVATE_CLASS = "1.2.826.0.1.3680043.8.498.9.1.1"  # a vendor's private storage SOP class


def _store_private(tmp_path: Path, unknown: bool) -> tuple[bool, Any]:
    ds = make_dataset("tiny", seed=7, unique=True)
    ds.SOPClassUID = PRIVATE_CLASS

    async def main() -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        store = PosixInstanceStore(make_config(tmp_path, durability="none"), loop)
        services = build_services(store, called_ae="NODE", unknown_sop_classes=unknown)
        policy = aio.AcceptorPolicy(ae_title=b"NODE".ljust(16), supported_contexts=services.contexts,
                                    implementation_class_uid="1.2.826.0.1.3680043.8.498.5",
                                    any_other_context=services.any_other)
        server = aio.AssociationServer(aio.ServerConfig(policy=policy, services=services.registry,
                                                        maximum_associations=None), loop=loop)
        _, port = await server.start(HOST, 0)
        try:
            config = aio.RequestorConfig(
                calling_ae_title=b"MOD".ljust(16), called_ae_title=b"NODE".ljust(16),
                contexts=[build_context(PRIVATE_CLASS, "1.2.840.10008.1.2.1"), build_context(Verification)],
                implementation_class_uid="1.2.826.0.1.3680043.8.498.6")
            assoc = await aio.associate(HOST, port, config)
            accepted = any(str(cx.abstract_syntax) == PRIVATE_CLASS for cx in assoc.accepted_contexts)
            status_ds = await assoc.send_c_store(ds) if accepted else None
            await assoc.release()
            return accepted, status_ds
        finally:
            await server.close(grace=1.0)
            await store.aclose()

    return run(main)


def test_a_private_storage_class_is_taken_by_default(tmp_path: Path) -> None:
    accepted, answer = _store_private(tmp_path, unknown=True)
    assert accepted and answer.Status == 0
    assert len(list(tmp_path.rglob("*.dcm"))) == 1


def test_known_sop_classes_only_refuses_it_at_negotiation(tmp_path: Path) -> None:
    accepted, _ = _store_private(tmp_path, unknown=False)
    assert not accepted
    assert not list(tmp_path.rglob("*.dcm"))


def _store_without_study(tmp_path: Path, incomplete: str) -> int:
    ds = make_dataset("tiny", seed=11, unique=True)
    del ds.StudyInstanceUID

    async def main() -> int:
        loop = asyncio.get_running_loop()
        store = PosixInstanceStore(make_config(tmp_path, durability="none", incomplete=incomplete), loop)
        services = build_services(store, called_ae="NODE")
        policy = aio.AcceptorPolicy(ae_title=b"NODE".ljust(16), supported_contexts=services.contexts,
                                    implementation_class_uid="1.2.826.0.1.3680043.8.498.5")
        server = aio.AssociationServer(aio.ServerConfig(policy=policy, services=services.registry,
                                                        maximum_associations=None), loop=loop)
        _, port = await server.start(HOST, 0)
        try:
            config = aio.RequestorConfig(
                calling_ae_title=b"MOD".ljust(16), called_ae_title=b"NODE".ljust(16),
                contexts=[build_context(ds.SOPClassUID, "1.2.840.10008.1.2.1")],
                implementation_class_uid="1.2.826.0.1.3680043.8.498.6")
            assoc = await aio.associate(HOST, port, config)
            answer = await assoc.send_c_store(ds)
            await assoc.release()
            return int(answer.Status)
        finally:
            await server.close(grace=1.0)
            await store.aclose()

    return run(main)


def test_a_data_set_without_study_uid_is_refused_by_default(tmp_path: Path) -> None:
    assert _store_without_study(tmp_path, "refuse") == 0xA900
    assert not list(tmp_path.rglob("*.dcm"))


def test_a_data_set_without_study_uid_is_quarantined_when_asked(tmp_path: Path) -> None:
    assert _store_without_study(tmp_path, "quarantine") == 0
    stored = list(tmp_path.rglob("*.dcm"))
    assert [p.parent.name for p in stored] == ["quarantine"]
