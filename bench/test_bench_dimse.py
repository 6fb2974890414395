"""Benchmarks of the DIMSE hot path: C-STORE command sets and data set fragmentation.

Run with ``pytest bench/test_bench_dimse.py --benchmark-enable``; with the default
``--benchmark-disable`` each body runs once as a smoke test.
"""

from __future__ import annotations

from engine._dimse import CStoreRQ, CStoreRSP, decode_command, encode_command, fragment_message

STORE_RQ = CStoreRQ(
    message_id=1234,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    affected_sop_instance_uid="1.2.826.0.1.3680043.8.498.12345678901234567890123456789",
    priority=0,
)
STORE_RQ_BYTES = encode_command(STORE_RQ)
# The response a node sends for every instance it stores (PS3.7 Table 9.3-2).
STORE_RSP = CStoreRSP(
    message_id_being_responded_to=1234,
    status=0x0000,
    affected_sop_class_uid=STORE_RQ.affected_sop_class_uid,
    affected_sop_instance_uid=STORE_RQ.affected_sop_instance_uid,
)
STORE_RSP_BYTES = encode_command(STORE_RSP)
# A 512 KiB data set cut at pynetdicom's and DCMTK's default Maximum Length.
DATASET = bytes(512 * 1024)
MAX_PDU = 16382


def test_bench_encode_store_rq(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(encode_command, STORE_RQ) == STORE_RQ_BYTES


def test_bench_decode_store_rq(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(decode_command, STORE_RQ_BYTES) == STORE_RQ


def test_bench_encode_store_rsp(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(encode_command, STORE_RSP) == STORE_RSP_BYTES


def test_bench_decode_store_rsp(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(decode_command, STORE_RSP_BYTES) == STORE_RSP


def test_bench_fragment_512k(benchmark) -> None:  # type: ignore[no-untyped-def]
    buffers = benchmark(fragment_message, 1, STORE_RQ_BYTES, DATASET, MAX_PDU)
    # One command PDU, then ceil(524288 / 16376) = 33 data PDUs, header + data each.
    assert len(buffers) == 2 * (1 + 33)
    assert sum(len(b) for b in buffers) == 12 * 34 + len(STORE_RQ_BYTES) + len(DATASET)
