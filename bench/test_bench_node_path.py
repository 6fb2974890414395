"""Benchmark of a worker's whole per-instance path, in one process and without sockets.

An established acceptor association of the engine, with the node's services
(:func:`workers.services.build_services`: Verification and the Storage SCP) over a
journalled :class:`storage.PosixInstanceStore` (durability ``none``), is fed through an
in-memory transport the bytes DCMTK ``storescu`` sends for tiny C-STOREs, one instance
at a time: each is decoded, streamed to its temporary file with its metadata walked and
digested, renamed into place, journalled, and answered, before the next is fed. What is
measured is the Python a worker spends per instance -- engine, services and storage --
with the kernel's socket work, the event loop's polling and the indexer left out (the
whole node's CPU per instance, those included, is ``python -m bench.cpucost``'s).
Every round stores fresh SOP Instance UIDs. Run with ``pytest
bench/test_bench_node_path.py --benchmark-enable``; with the default
``--benchmark-disable`` each body runs once as a smoke test.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from bench.corpus import dataset_bytes, make_dataset, write_part10
from bench.memory_transport import MemoryTransport
from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, aio, build_context
from engine._acse import AcceptorPolicy, build_request
from engine._dimse import CStoreRQ, encode_command, fragment_message, iter_dataset_pdus
from engine._pdu import encode_pdu
from engine.presentation import assign_context_ids
from storage import PosixInstanceStore, StorageConfig
from workers.services import build_services

EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Instances per benchmark round.
BATCH = 200
#: What DCMTK storescu offers as its maximum PDU by default.
MAX_PDU = 16384
#: Every instance's UID is this prefix and a 13-digit number (no leading zero, PS3.5
#: 9.1), all of one length, so it replaces the template's in place.
_UID_PREFIX = "1.2.826.0.1.3680043.8.498.77."
_UID_BASE = 10**12


def test_bench_tiny_instances_through_the_node_services(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """200 tiny (~2 KiB) C-STOREs, each answered before the next, stored and journalled."""
    template_uid = f"{_UID_PREFIX}{_UID_BASE}"
    ds = make_dataset("tiny", seed=1, sop_instance_uid=template_uid)
    template = dataset_bytes(write_part10(ds, tmp_path / "template.dcm"))
    sop_class = str(ds.SOPClassUID)
    assert template.count(template_uid.encode()) == 1

    loop = aio.new_event_loop()
    config = StorageConfig(root=str(tmp_path / "store"), durability="none",
                           implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                           implementation_version_name=IMPLEMENTATION_VERSION_NAME)
    store = PosixInstanceStore(config, loop, segment_label="w0", segment_bytes=256 << 20)
    services = build_services(store, called_ae="BENCH")
    policy = AcceptorPolicy(ae_title=b"BENCH".ljust(16), supported_contexts=services.contexts,
                            implementation_class_uid=IMPLEMENTATION_CLASS_UID)
    server = aio.AssociationServer(aio.ServerConfig(policy=policy, services=services.registry,
                                                    maximum_associations=None, network_timeout=600.0), loop=loop)
    assoc = server.new_association()
    transport = MemoryTransport()
    assoc.link.made(transport)
    rq = build_request(called_ae_title=b"BENCH".ljust(16), calling_ae_title=b"STORESCU".ljust(16),
                       contexts=assign_context_ids([build_context(sop_class, EXPLICIT_LE)]),
                       maximum_pdu_size=MAX_PDU, implementation_class_uid="1.2.826.0.1.3680043.8.498.10",
                       implementation_version_name=None)
    assoc.link.data_received(encode_pdu(rq))
    assert assoc.is_established
    answered_before = transport.writes  # the A-ASSOCIATE-AC
    numbers = itertools.count(1)

    def fresh_round() -> tuple[tuple[list[bytes]], dict[str, Any]]:
        chunks = []
        for _ in range(BATCH):
            n = next(numbers)
            uid = f"{_UID_PREFIX}{_UID_BASE + n}"
            command = CStoreRQ(message_id=n % 65535 + 1, affected_sop_class_uid=sop_class,
                               affected_sop_instance_uid=uid)
            data = template.replace(template_uid.encode(), uid.encode())
            chunks.append(b"".join(bytes(b) for b in fragment_message(1, encode_command(command), None, MAX_PDU))
                          + b"".join(bytes(b) for pdus in iter_dataset_pdus(1, [data], MAX_PDU) for b in pdus))
        return (chunks,), {}

    async def store_all(chunks: list[bytes]) -> None:
        feed = assoc.link.data_received
        for chunk in chunks:
            transport.waiter = loop.create_future()
            feed(chunk)
            await transport.waiter

    def round_(chunks: list[bytes]) -> None:
        loop.run_until_complete(store_all(chunks))

    try:
        benchmark.pedantic(round_, setup=fresh_round, rounds=20, warmup_rounds=1)
        stored = next(numbers) - 1
        assert transport.writes - answered_before == stored  # every C-STORE answered ...
        assert len(list((tmp_path / "store").rglob("*.dcm"))) == stored  # ... and stored
        assert assoc.is_established
    finally:
        loop.run_until_complete(store.aclose())
        loop.close()
