"""Benchmark of the acceptor's whole per-instance path in the engine, without sockets.

One established acceptor :class:`~engine._assoc.Association` on a loop, fed through an
in-memory transport the bytes of C-STORE-RQs (command PDU and data PDU, as a peer sends
them) and answering them through a provider that keeps nothing: what is measured is the
engine's CPU per instance -- PDU framing, the state machine, DIMSE assembly, the
dispatcher, the response's encoding and the adapter -- with storage and the kernel left
out. Run with ``pytest bench/test_bench_association.py --benchmark-enable``; with the
default ``--benchmark-disable`` each body runs once as a smoke test.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.memory_transport import MemoryTransport
from engine import StoragePresentationContexts, aio, build_context
from engine._acse import AcceptorPolicy, build_request, evaluate_request
from engine._dimse import C_STORE_RQ, CStoreRQ, encode_command, fragment_message, iter_dataset_pdus
from engine._pdu import encode_pdu
from engine.presentation import assign_context_ids
from engine.services import Request, ServiceRegistry

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Instances per benchmark round: enough to amortise the round's set-up.
BATCH = 200
TINY = bytes(2048)  # a tiny instance's data set size; its content is never parsed here
CT_SLICE = bytes(512 * 1024)


class _Null:
    """A C-STORE provider that counts bytes and answers Success inline."""

    holds_reading = True

    def __init__(self) -> None:
        self.bytes = 0
        self.count = 0

    def start(self, request: Request) -> "_Null":
        return self

    def write(self, data: memoryview) -> None:
        self.bytes += len(data)

    def finish(self) -> int:
        self.count += 1
        return 0

    def abort(self) -> None:
        pass


def _established(max_pdu: int) -> tuple[Any, Any, _Null, asyncio.AbstractEventLoop]:
    loop = aio.new_event_loop()
    null = _Null()
    policy = AcceptorPolicy(
        ae_title=b"BENCH".ljust(16),
        supported_contexts=[build_context(CT, EXPLICIT_LE)],
        maximum_pdu_size=max_pdu,
        implementation_class_uid="1.2.826.0.1.3680043.8.498.9",
    )
    config = aio.ServerConfig(policy=policy, services=ServiceRegistry().add(null, [C_STORE_RQ]),
                              maximum_associations=None, network_timeout=60.0)
    server = aio.AssociationServer(config, loop=loop)
    assoc = server.new_association()
    assoc.link.made(MemoryTransport())
    rq = build_request(
        called_ae_title=b"BENCH".ljust(16),
        calling_ae_title=b"SCU".ljust(16),
        contexts=assign_context_ids([build_context(CT, EXPLICIT_LE)]),
        maximum_pdu_size=max_pdu,
        implementation_class_uid="1.2.826.0.1.3680043.8.498.10",
        implementation_version_name=None,
    )
    assoc.link.data_received(encode_pdu(rq))
    assert assoc.is_established
    return assoc, server, null, loop


def _stores(count: int, dataset: bytes, max_pdu: int) -> list[bytes]:
    """The bytes a peer sends for ``count`` C-STOREs, one bytes object per instance."""
    out = []
    for i in range(count):
        rq = CStoreRQ(message_id=i % 65535 + 1, affected_sop_class_uid=CT,
                      affected_sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}")
        buffers = fragment_message(1, encode_command(rq), None, max_pdu)
        command = b"".join(bytes(b) for b in buffers)
        data = b"".join(bytes(b) for b in _data_pdus(dataset, max_pdu))
        out.append(command + data)
    return out


def _data_pdus(dataset: bytes, max_pdu: int) -> list[bytes | memoryview]:
    return [b for pdus in iter_dataset_pdus(1, [dataset], max_pdu) for b in pdus]


def _bench(benchmark: Any, dataset: bytes, max_pdu: int) -> None:
    assoc, server, null, loop = _established(max_pdu)
    chunks = _stores(BATCH, dataset, max_pdu)
    feed = assoc.link.data_received

    def round_() -> None:
        for chunk in chunks:
            feed(chunk)

    try:
        benchmark(round_)
        assert null.count >= BATCH and null.bytes >= BATCH * len(dataset)
        assert assoc.is_established
    finally:
        loop.close()


def test_bench_tiny_instances(benchmark) -> None:  # type: ignore[no-untyped-def]
    """200 tiny (2 KiB) C-STOREs, one chunk each, at our advertised 256 KiB PDU."""
    _bench(benchmark, TINY, 262144)


def test_bench_ct_instances_16k_pdus(benchmark) -> None:  # type: ignore[no-untyped-def]
    """200 CT-sized (512 KiB) C-STOREs cut at DCMTK's and pynetdicom's 16 KiB PDU."""
    _bench(benchmark, CT_SLICE, 16384)


def test_bench_evaluate_a_storescu_sized_request(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The acceptor's answer to an A-ASSOCIATE-RQ of 128 storage contexts, each with
    three transfer syntaxes (what DCMTK storescu proposes by default): paid once per
    association, so it weighs on loads of one instance per association."""
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]
    proposed = [build_context(cx.abstract_syntax, syntaxes) for cx in StoragePresentationContexts[:128]]
    policy = AcceptorPolicy(
        ae_title=b"BENCH".ljust(16),
        supported_contexts=[build_context(cx.abstract_syntax, syntaxes) for cx in StoragePresentationContexts],
        implementation_class_uid="1.2.826.0.1.3680043.8.498.9",
    )
    rq = build_request(called_ae_title=b"BENCH".ljust(16), calling_ae_title=b"SCU".ljust(16),
                       contexts=assign_context_ids(proposed), maximum_pdu_size=16384,
                       implementation_class_uid="1.2.826.0.1.3680043.8.498.10",
                       implementation_version_name=None)
    answer, contexts = benchmark(evaluate_request, rq, policy)
    assert len(contexts) == 128 and all(cx.result == 0 for cx in contexts)
