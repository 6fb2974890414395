"""Micro-benchmarks of the PDU codec hot paths (engine/_pdu.py).

Run with ``pytest bench/test_bench_pdu.py``; CI runs them once each with
``--benchmark-disable`` as a smoke test.
"""

from __future__ import annotations

from engine._pdu import (
    APPLICATION_CONTEXT_NAME,
    PDV,
    AAssociateRQ,
    PDataTF,
    PDUDecoder,
    PresentationContextRQ,
    UserInformation,
    encode_pdu,
    pdata_header,
)

# A typical negotiated Maximum Length (PS3.8 D.1) payload per PDU: 16 KiB.
PAYLOAD = 16 * 1024
# 64 PDUs of 16 KiB: a 1 MiB slice of one C-STORE data set.
PDU_COUNT = 64
# A multi-modality SCU offers about this many presentation contexts.
CONTEXT_COUNT = 20
# A common socket read size, so PDUs straddle chunk boundaries.
READ_SIZE = 65536

_PDATA_PDU = pdata_header(1, False, False, PAYLOAD) + bytes(PAYLOAD)
PDATA_STREAM = _PDATA_PDU * PDU_COUNT
PDATA_CHUNKS = [PDATA_STREAM[i : i + READ_SIZE] for i in range(0, len(PDATA_STREAM), READ_SIZE)]

ASSOCIATE_RQ = encode_pdu(
    AAssociateRQ(
        b"STORE-SCP",
        b"MODALITY",
        APPLICATION_CONTEXT_NAME,
        tuple(
            PresentationContextRQ(
                2 * i + 1,
                f"1.2.840.10008.5.1.4.1.1.{i + 1}",
                ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"),
            )
            for i in range(CONTEXT_COUNT)
        ),
        UserInformation(
            max_length=PAYLOAD + 6,
            implementation_class_uid="1.2.826.0.1.3680043.10.1",
            implementation_version_name="SCPFLEET",
        ),
    )
)


def _decode_pdata_stream() -> int:
    return len(PDUDecoder().feed(PDATA_STREAM))


def _decode_pdata_chunks() -> int:
    decoder = PDUDecoder()
    count = 0
    for chunk in PDATA_CHUNKS:
        count += len(decoder.feed(chunk))
    return count


def test_bench_decode_pdata_stream_one_chunk(benchmark) -> None:
    assert benchmark(_decode_pdata_stream) == PDU_COUNT


def test_bench_decode_pdata_stream_64k_reads(benchmark) -> None:
    assert benchmark(_decode_pdata_chunks) == PDU_COUNT


def test_bench_decode_associate_rq_20_contexts(benchmark) -> None:
    (rq,) = benchmark(lambda: PDUDecoder().feed(ASSOCIATE_RQ))
    assert len(rq.presentation_contexts) == CONTEXT_COUNT


def test_bench_pdata_header(benchmark) -> None:
    assert len(benchmark(pdata_header, 1, False, True, PAYLOAD)) == 12


def test_bench_encode_pdata_tf(benchmark) -> None:
    pdu = PDataTF((PDV(1, False, True, memoryview(bytes(PAYLOAD))),))
    assert len(benchmark(encode_pdu, pdu)) == PAYLOAD + 12
