"""Tests of the Upper Layer PDU codec (engine/_pdu.py, PS3.8 9.3 and Annex D)."""

from __future__ import annotations

import ast
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._errors import RemoteProtocolError
from engine._pdu import (
    APPLICATION_CONTEXT_NAME,
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUDecoder,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtended,
    SOPClassExtended,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_pdu,
    encode_pdu,
    pdata_header,
)

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# --------------------------------------------------------------------------
# Hand-built byte fixtures (layouts from PS3.8 Tables 9-11..9-26, Annex D)
# --------------------------------------------------------------------------

# Application Context item 10H: "1.2.840.10008.3.1.1.1" (21 bytes).
APP_CONTEXT_ITEM = b"\x10\x00\x00\x15" + b"1.2.840.10008.3.1.1.1"
# Abstract Syntax sub-item 30H: Verification SOP Class (17 bytes).
AS_VERIFICATION = b"\x30\x00\x00\x11" + b"1.2.840.10008.1.1"
# Transfer Syntax sub-item 40H: Implicit VR Little Endian (17 bytes).
TS_IMPLICIT = b"\x40\x00\x00\x11" + b"1.2.840.10008.1.2"
# Presentation Context item 20H: ID 1, 3 reserved bytes, AS + one TS (4+21+21 = 46).
PC_RQ_ITEM = b"\x20\x00\x00\x2e" + b"\x01\x00\x00\x00" + AS_VERIFICATION + TS_IMPLICIT
# Presentation Context item 21H: ID 1, reserved, result 0 (acceptance), reserved, TS.
PC_AC_ITEM = b"\x21\x00\x00\x19" + b"\x01\x00\x00\x00" + TS_IMPLICIT
# User Information item 50H (31 bytes): max length 16382 (51H), implementation
# class UID "1.2.3.4" (52H), implementation version name "SCPFLEET" (55H).
USER_INFO_ITEM = (
    b"\x50\x00\x00\x1f"
    + b"\x51\x00\x00\x04\x00\x00\x3f\xfe"
    + b"\x52\x00\x00\x07"
    + b"1.2.3.4"
    + b"\x55\x00\x00\x08"
    + b"SCPFLEET"
)
# A-ASSOCIATE fixed fields: protocol version 1, reserved, called AE "ANY-SCP",
# calling AE "ECHOSCU" (space padded to 16), 32 reserved bytes.
ASSOC_FIXED = b"\x00\x01\x00\x00" + b"ANY-SCP".ljust(16) + b"ECHOSCU".ljust(16) + bytes(32)
# A-ASSOCIATE-RQ: PDU type 01H, PDU-length 0xB2 = 68 + 25 + 50 + 35 = 178:
# one Verification context with Implicit VR LE, max length 16382.
ASSOC_RQ = (
    b"\x01\x00\x00\x00\x00\xb2" + ASSOC_FIXED + APP_CONTEXT_ITEM + PC_RQ_ITEM + USER_INFO_ITEM
)
ASSOC_RQ_VALUE = AAssociateRQ(
    called_ae_title=b"ANY-SCP         ",
    calling_ae_title=b"ECHOSCU         ",
    application_context_name=APPLICATION_CONTEXT_NAME,
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),),
    user_information=UserInformation(
        max_length=16382,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="SCPFLEET",
    ),
)
# A-ASSOCIATE-AC: PDU type 02H, PDU-length 0x9D = 68 + 25 + 29 + 35 = 157:
# context 1 accepted with Implicit VR LE, same user information.
ASSOC_AC = (
    b"\x02\x00\x00\x00\x00\x9d" + ASSOC_FIXED + APP_CONTEXT_ITEM + PC_AC_ITEM + USER_INFO_ITEM
)
ASSOC_AC_VALUE = AAssociateAC(
    called_ae_title=b"ANY-SCP         ",
    calling_ae_title=b"ECHOSCU         ",
    application_context_name=APPLICATION_CONTEXT_NAME,
    presentation_contexts=(PresentationContextAC(1, 0, IMPLICIT_LE),),
    user_information=ASSOC_RQ_VALUE.user_information,
)
# A-ASSOCIATE-RJ: length 4, reserved, result 1 (permanent), source 1 (service
# user), reason 7 (called AE title not recognized).
ASSOC_RJ = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07"
# A-RELEASE-RQ and A-RELEASE-RP: length 4, four reserved bytes.
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# A-ABORT: length 4, two reserved bytes, source 2 (provider), reason 6 (invalid parameter).
ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
# P-DATA-TF, PDU-length 0x16 = 22, two PDVs on context 3: a last command fragment
# "CMD" (item length 5, control header 03H) and a non-last data fragment
# "DATA..." (item length 9, control header 00H).
PDATA = (
    b"\x04\x00\x00\x00\x00\x16"
    + b"\x00\x00\x00\x05\x03\x03"
    + b"CMD"
    + b"\x00\x00\x00\x09\x03\x00"
    + b"DATA..."
)
PDATA_VALUE = PDataTF(
    (
        PDV(3, True, True, memoryview(b"CMD")),
        PDV(3, False, False, memoryview(b"DATA...")),
    )
)

FIXTURES: list[tuple[bytes, PDU]] = [
    (ASSOC_RQ, ASSOC_RQ_VALUE),
    (ASSOC_AC, ASSOC_AC_VALUE),
    (ASSOC_RJ, AAssociateRJ(1, 1, 7)),
    (RELEASE_RQ, AReleaseRQ()),
    (RELEASE_RP, AReleaseRP()),
    (ABORT, AAbort(2, 6)),
    (PDATA, PDATA_VALUE),
]
FIXTURE_IDS = ["assoc_rq", "assoc_ac", "assoc_rj", "release_rq", "release_rp", "abort", "pdata"]


def with_pdu_length(pdu: bytes) -> bytes:
    """Rewrite the PDU-length field to match the body (after a hand edit)."""
    return pdu[:2] + struct.pack(">I", len(pdu) - 6) + pdu[6:]


def feed_chunks(data: bytes, cuts: list[int], decoder: PDUDecoder | None = None) -> list[PDU]:
    decoder = decoder or PDUDecoder()
    out: list[PDU] = []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        out.extend(decoder.feed(data[a:b]))
    return out


def feed_bytewise(data: bytes, decoder: PDUDecoder | None = None) -> list[PDU]:
    return feed_chunks(data, list(range(len(data))), decoder)


def error_of(data: bytes, decoder: PDUDecoder | None = None) -> tuple[int, int]:
    with pytest.raises(RemoteProtocolError) as info:
        (decoder or PDUDecoder()).feed(data)
    return info.value.abort_source, info.value.abort_reason


# --------------------------------------------------------------------------
# Fixtures: decode, encode, chunking
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "value"), FIXTURES, ids=FIXTURE_IDS)
def test_fixture_decodes(data: bytes, value: PDU) -> None:
    assert decode_pdu(data) == value


@pytest.mark.parametrize(("data", "value"), FIXTURES, ids=FIXTURE_IDS)
def test_fixture_encodes(data: bytes, value: PDU) -> None:
    assert encode_pdu(value) == data


@pytest.mark.parametrize(("data", "value"), FIXTURES, ids=FIXTURE_IDS)
def test_fixture_whole_bytewise_and_random_chunks(data: bytes, value: PDU) -> None:
    assert PDUDecoder().feed(data) == [value]
    assert feed_bytewise(data) == [value]
    rng = random.Random(len(data))
    for _ in range(20):
        cuts = [rng.randrange(len(data)) for _ in range(rng.randrange(1, 6))]
        assert feed_chunks(data, cuts) == [value]


def test_many_pdus_in_one_chunk_and_split() -> None:
    stream = b"".join(data for data, _ in FIXTURES) * 3
    expected = [value for _, value in FIXTURES] * 3
    assert PDUDecoder().feed(stream) == expected
    assert feed_bytewise(stream) == expected
    rng = random.Random(7)
    for _ in range(20):
        cuts = [rng.randrange(len(stream)) for _ in range(rng.randrange(1, 30))]
        assert feed_chunks(stream, cuts) == expected


def test_partial_feed_returns_nothing_until_complete() -> None:
    decoder = PDUDecoder()
    assert decoder.feed(PDATA[:3]) == []
    assert decoder.buffered == 3
    assert decoder.feed(PDATA[3:10]) == []
    assert decoder.buffered == 10
    assert decoder.feed(b"") == []
    assert decoder.feed(PDATA[10:] + ABORT[:1]) == [PDATA_VALUE]
    assert decoder.buffered == 1
    assert decoder.feed(ABORT[1:]) == [AAbort(2, 6)]
    assert decoder.buffered == 0


# --------------------------------------------------------------------------
# Zero copy
# --------------------------------------------------------------------------


def test_pdv_data_is_view_of_fed_bytes() -> None:
    data = PDATA + PDATA
    pdus = PDUDecoder().feed(data)
    for pdu in pdus:
        assert isinstance(pdu, PDataTF)
        for pdv in pdu.pdvs:
            assert isinstance(pdv.data, memoryview)
            assert pdv.data.obj is data
    assert bytes(pdus[1].pdvs[1].data) == b"DATA..."
    # The single-PDV fast path too.
    single = pdata_header(5, False, True, 4) + b"abcd"
    (pdu,) = PDUDecoder().feed(single)
    assert pdu.pdvs == (PDV(5, False, True, memoryview(b"abcd")),)
    assert pdu.pdvs[0].data.obj is single


def test_readonly_memoryview_of_bytes_is_not_copied() -> None:
    data = b"xx" + PDATA
    (pdu,) = PDUDecoder().feed(memoryview(data)[2:])
    assert pdu.pdvs[0].data.obj is data


def test_bytearray_input_is_copied_once_into_bytes() -> None:
    buf = bytearray(PDATA)
    (pdu,) = PDUDecoder().feed(buf)
    buf[:] = b"\xff" * 200  # resizing/overwriting the caller's buffer is harmless
    assert type(pdu.pdvs[0].data.obj) is bytes
    assert bytes(pdu.pdvs[0].data) == b"CMD"
    assert pdu == PDATA_VALUE


def test_spanning_pdu_views_point_into_immutable_bytes() -> None:
    decoder = PDUDecoder()
    assert decoder.feed(bytearray(PDATA[:9])) == []
    (pdu,) = decoder.feed(bytearray(PDATA[9:]))
    assert all(type(pdv.data.obj) is bytes for pdv in pdu.pdvs)
    assert pdu == PDATA_VALUE


# --------------------------------------------------------------------------
# Unknown items are skipped (PS3.8 9.3.1)
# --------------------------------------------------------------------------


def test_unknown_items_and_sub_items_are_skipped() -> None:
    unknown_item = b"\x7f\x00\x00\x03abc"
    unknown_sub = b"\x5f\x00\x00\x02zz"
    unknown_pc_sub = b"\x3f\x00\x00\x01q"
    pc = b"\x20\x00\x00\x33" + b"\x01\x00\x00\x00" + AS_VERIFICATION + unknown_pc_sub + TS_IMPLICIT
    user = b"\x50\x00\x00\x25" + unknown_sub + USER_INFO_ITEM[4:]
    # An AC-form presentation context (21H) in an RQ is not an item of the RQ.
    stray = PC_AC_ITEM
    data = with_pdu_length(
        b"\x01\x00\x00\x00\x00\x00" + ASSOC_FIXED + unknown_item + APP_CONTEXT_ITEM + pc
        + stray + user + unknown_item
    )
    assert decode_pdu(data) == ASSOC_RQ_VALUE
    assert feed_bytewise(data) == [ASSOC_RQ_VALUE]


def test_reserved_fields_not_tested() -> None:
    rq = bytearray(ASSOC_RQ)
    rq[1] = 0xFF  # PDU reserved byte
    rq[8:10] = b"\xff\xff"  # reserved after protocol version
    rq[42:74] = b"\xee" * 32  # 32 reserved bytes
    assert decode_pdu(bytes(rq)) == ASSOC_RQ_VALUE
    assert decode_pdu(b"\x07\xaa\x00\x00\x00\x04\xbb\xcc\x00\x02") == AAbort(0, 2)
    # Message control header bits 2-7 are not tested (PS3.8 Annex E.2).
    (pdu,) = PDUDecoder().feed(b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\xfe")
    assert pdu.pdvs[0] == PDV(1, False, True, memoryview(b""))


def test_protocol_version_is_decoded_not_judged() -> None:
    data = ASSOC_RQ[:6] + b"\x00\x02" + ASSOC_RQ[8:]
    assert decode_pdu(data).protocol_version == 2


def test_uid_padding_stripped() -> None:
    ts = b"\x40\x00\x00\x12" + b"1.2.840.10008.1.2\x00"
    pc = b"\x20\x00\x00\x2f" + b"\x01\x00\x00\x00" + AS_VERIFICATION + ts
    data = with_pdu_length(
        b"\x01\x00\x00\x00\x00\x00" + ASSOC_FIXED + APP_CONTEXT_ITEM + pc + USER_INFO_ITEM
    )
    assert decode_pdu(data) == ASSOC_RQ_VALUE


# --------------------------------------------------------------------------
# Malformed PDUs -> RemoteProtocolError(source, reason)
# --------------------------------------------------------------------------


def assoc_rq(*items: bytes) -> bytes:
    return with_pdu_length(b"\x01\x00\x00\x00\x00\x00" + ASSOC_FIXED + b"".join(items))


def assoc_ac(*items: bytes) -> bytes:
    return with_pdu_length(b"\x02\x00\x00\x00\x00\x00" + ASSOC_FIXED + b"".join(items))


def user_info(*subs: bytes) -> bytes:
    body = b"".join(subs)
    return struct.pack(">BxH", 0x50, len(body)) + body


def pc_rq(*subs: bytes, context_id: int = 1) -> bytes:
    body = bytes([context_id, 0, 0, 0]) + b"".join(subs)
    return struct.pack(">BxH", 0x20, len(body)) + body


def pc_ac(result: int, *subs: bytes) -> bytes:
    body = bytes([1, 0, result, 0]) + b"".join(subs)
    return struct.pack(">BxH", 0x21, len(body)) + body


def sub(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(body)) + body


UI_OK = USER_INFO_ITEM

MALFORMED: dict[str, tuple[bytes, int]] = {
    "unknown PDU type 08H": (b"\x08\x00\x00\x00\x00\x04\x00\x00\x00\x00", 1),
    "unknown PDU type 00H": (b"\x00\x00\x00\x00\x00\x00", 1),
    "unknown PDU type FFH": (b"\xff\x00\x00\x00\x00\x00", 1),
    "release rq length 5": (b"\x05\x00\x00\x00\x00\x05" + bytes(5), 6),
    "release rp length 0": (b"\x06\x00\x00\x00\x00\x00", 6),
    "abort length 3": (b"\x07\x00\x00\x00\x00\x03\x00\x00\x00", 6),
    "rj length 6": (b"\x03\x00\x00\x00\x00\x06" + bytes(6), 6),
    "associate shorter than fixed fields": (b"\x01\x00\x00\x00\x00\x0a" + bytes(10), 6),
    "pdata with zero PDVs": (b"\x04\x00\x00\x00\x00\x00", 6),
    "pdata truncated PDV header": (b"\x04\x00\x00\x00\x00\x03\x00\x00\x00", 6),
    "PDV item length 1": (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x01\x01\x03", 6),
    "PDV item length 0": (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x00\x01\x03", 6),
    "PDV overruns PDU": (b"\x04\x00\x00\x00\x00\x07\x00\x00\x00\x04\x01\x03x", 6),
    "second PDV truncated": (
        b"\x04\x00\x00\x00\x00\x0b\x00\x00\x00\x03\x01\x03x\x00\x00\x00\x05",
        6,
    ),
    "item overruns PDU": (assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, UI_OK[:-1]), 6),
    "truncated item header": (assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, UI_OK, b"\x10\x00"), 6),
    "sub-item overruns presentation context": (
        assoc_rq(APP_CONTEXT_ITEM, b"\x20\x00\x00\x08\x01\x00\x00\x00\x30\x00\x00\x09", UI_OK),
        6,
    ),
    "presentation context item too short": (
        assoc_rq(APP_CONTEXT_ITEM, b"\x20\x00\x00\x02\x01\x00", UI_OK),
        6,
    ),
    "no abstract syntax": (assoc_rq(APP_CONTEXT_ITEM, pc_rq(TS_IMPLICIT), UI_OK), 6),
    "no transfer syntax": (assoc_rq(APP_CONTEXT_ITEM, pc_rq(AS_VERIFICATION), UI_OK), 6),
    "two abstract syntaxes": (
        assoc_rq(APP_CONTEXT_ITEM, pc_rq(AS_VERIFICATION, AS_VERIFICATION, TS_IMPLICIT), UI_OK),
        6,
    ),
    "no application context": (assoc_rq(PC_RQ_ITEM, UI_OK), 6),
    "two application contexts": (
        assoc_rq(APP_CONTEXT_ITEM, APP_CONTEXT_ITEM, PC_RQ_ITEM, UI_OK),
        6,
    ),
    "no user information": (assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM), 6),
    "two user information items": (assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, UI_OK, UI_OK), 6),
    "non-ASCII abstract syntax": (
        assoc_rq(APP_CONTEXT_ITEM, pc_rq(sub(0x30, b"1.2.\xff"), TS_IMPLICIT), UI_OK),
        6,
    ),
    "non-ASCII transfer syntax": (
        assoc_rq(APP_CONTEXT_ITEM, pc_rq(AS_VERIFICATION, sub(0x40, b"\x80")), UI_OK),
        6,
    ),
    "non-ASCII application context": (assoc_rq(sub(0x10, b"1.\xc3\xa9"), PC_RQ_ITEM, UI_OK), 6),
    "non-ASCII implementation class UID": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x52, b"\xfe"))),
        6,
    ),
    "max length sub-item 3 bytes": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x51, b"\x00\x40\x00"))),
        6,
    ),
    "max length sub-item 5 bytes": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x51, b"\x00\x00\x40\x00\x00"))),
        6,
    ),
    "two max length sub-items": (
        assoc_rq(
            APP_CONTEXT_ITEM,
            PC_RQ_ITEM,
            user_info(sub(0x51, b"\x00\x00\x40\x00"), sub(0x51, b"\x00\x00\x40\x00")),
        ),
        6,
    ),
    "async window 2 bytes": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x53, b"\x00\x01"))),
        6,
    ),
    "sub-item overruns user information": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(b"\x52\x00\x00\x09" + b"1.2")),
        6,
    ),
    "role selection UID overruns": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x54, b"\x00\x09" + b"1.2\x01\x01"))),
        6,
    ),
    "role selection too short": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x54, b"\x00"))),
        6,
    ),
    "role selection role value 2": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x54, b"\x00\x03" + b"1.2\x02\x01"))),
        6,
    ),
    "SOP class extended UID overruns": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x56, b"\x00\x09" + b"1.2"))),
        6,
    ),
    "common extended trailing bytes": (
        assoc_rq(
            APP_CONTEXT_ITEM,
            PC_RQ_ITEM,
            user_info(sub(0x57, b"\x00\x01" + b"1" + b"\x00\x01" + b"2" + b"\x00\x00" + b"!")),
        ),
        6,
    ),
    "common extended related UID overruns list": (
        assoc_rq(
            APP_CONTEXT_ITEM,
            PC_RQ_ITEM,
            user_info(sub(0x57, b"\x00\x01" + b"1\x00\x01" + b"2\x00\x03" + b"\x00\x02" + b"3")),
        ),
        6,
    ),
    "common extended missing service class": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x57, b"\x00\x01" + b"1"))),
        6,
    ),
    "user identity trailing bytes": (
        assoc_rq(
            APP_CONTEXT_ITEM,
            PC_RQ_ITEM,
            user_info(sub(0x58, b"\x01\x00\x00\x01" + b"u" + b"\x00\x00" + b"!")),
        ),
        6,
    ),
    "user identity missing secondary length": (
        assoc_rq(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x58, b"\x01\x00\x00\x01" + b"u"))),
        6,
    ),
    "user identity positive-response 7": (
        assoc_rq(
            APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info(sub(0x58, b"\x01\x07\x00\x00\x00\x00"))
        ),
        6,
    ),
    "user identity AC response overruns": (
        assoc_ac(APP_CONTEXT_ITEM, PC_AC_ITEM, user_info(sub(0x59, b"\x00\x05" + b"ok"))),
        6,
    ),
    "accepted AC context without transfer syntax": (
        assoc_ac(APP_CONTEXT_ITEM, pc_ac(0), UI_OK),
        6,
    ),
    "accepted AC context with two transfer syntaxes": (
        assoc_ac(APP_CONTEXT_ITEM, pc_ac(0, TS_IMPLICIT, TS_IMPLICIT), UI_OK),
        6,
    ),
    "accepted AC context with non-ASCII transfer syntax": (
        assoc_ac(APP_CONTEXT_ITEM, pc_ac(0, sub(0x40, b"\xff")), UI_OK),
        6,
    ),
    "AC presentation context too short": (
        assoc_ac(APP_CONTEXT_ITEM, b"\x21\x00\x00\x03\x01\x00\x00", UI_OK),
        6,
    ),
}


@pytest.mark.parametrize(("data", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_raises_with_abort_reason(data: bytes, reason: int) -> None:
    assert error_of(data) == (2, reason)
    with pytest.raises(RemoteProtocolError) as info:
        feed_bytewise(data)
    assert (info.value.abort_source, info.value.abort_reason) == (2, reason)
    with pytest.raises(RemoteProtocolError):
        decode_pdu(data)


def test_rejected_ac_context_transfer_syntax_not_significant() -> None:
    # Result 3 (abstract syntax not supported) with no TS sub-item, an empty one,
    # a non-ASCII one, and two of them: all decode, the TS is not significant.
    cases = [
        (pc_ac(3), ""),
        (pc_ac(3, sub(0x40, b"")), ""),
        (pc_ac(4, sub(0x40, b"\xff\xfe")), ""),
        (pc_ac(1, TS_IMPLICIT, TS_IMPLICIT), IMPLICIT_LE),
    ]
    for item, ts in cases:
        pdu = decode_pdu(assoc_ac(APP_CONTEXT_ITEM, item, UI_OK))
        assert pdu.presentation_contexts[0].transfer_syntax == ts


def test_rejected_ac_context_encodes_empty_ts_sub_item() -> None:
    value = AAssociateAC(
        b"A", b"B", APPLICATION_CONTEXT_NAME, (PresentationContextAC(1, 3, ""),), UserInformation()
    )
    data = encode_pdu(value)
    assert pc_ac(3, b"\x40\x00\x00\x00") in data
    assert decode_pdu(data) == AAssociateAC(
        b"A".ljust(16), b"B".ljust(16), APPLICATION_CONTEXT_NAME, value.presentation_contexts,
        UserInformation(),
    )


def test_oversized_pdata_refused_from_header_alone() -> None:
    decoder = PDUDecoder(max_pdata_length=16384)
    assert decoder.feed(b"\x04\x00\x00\x00\x40\x00") == []  # exactly the limit: waits for body
    assert error_of(b"\x04\x00\x00\x00\x40\x01", PDUDecoder(max_pdata_length=16384)) == (2, 6)
    # Also when the header itself arrives in pieces.
    decoder = PDUDecoder(max_pdata_length=16384)
    assert decoder.feed(b"\x04\x00\x00") == []
    assert error_of(b"\x00\x40\x01", decoder) == (2, 6)
    # 0 means no limit (PS3.8 D.1).
    assert PDUDecoder(max_pdata_length=0).feed(b"\x04\x00\xff\xff\xff\xff") == []


def test_max_pdata_length_setter() -> None:
    decoder = PDUDecoder()
    decoder.max_pdata_length = 8
    assert decoder.max_pdata_length == 8
    assert error_of(b"\x04\x00\x00\x00\x00\x09", decoder) == (2, 6)


def test_pdata_at_limit_accepted() -> None:
    payload = bytes(range(256)) * 4
    data = encode_pdu(PDataTF((PDV(1, False, True, memoryview(payload)),)))
    (pdu,) = PDUDecoder(max_pdata_length=len(payload) + 6).feed(data)
    assert bytes(pdu.pdvs[0].data) == payload


def test_oversized_associate_refused_from_header_alone() -> None:
    assert error_of(b"\x01\x00\x00\x00\x03\xe9", PDUDecoder(max_associate_length=1000)) == (2, 6)
    assert error_of(b"\x02\x00\x00\x10\x00\x01") == (2, 6)  # default 1 MiB cap
    assert PDUDecoder(max_associate_length=1000).feed(b"\x01\x00\x00\x00\x03\xe8") == []


def test_decoder_is_dead_after_error() -> None:
    decoder = PDUDecoder()
    assert error_of(b"\x09\x00\x00\x00\x00\x04", decoder) == (2, 1)
    assert error_of(RELEASE_RQ, decoder) == (2, 1)
    assert error_of(b"", decoder) == (2, 1)


def test_decode_pdu_requires_exactly_one_pdu() -> None:
    for data in (b"", RELEASE_RQ + RELEASE_RP, RELEASE_RQ[:-1], RELEASE_RQ + b"\x05"):
        with pytest.raises(RemoteProtocolError) as info:
            decode_pdu(data)
        assert (info.value.abort_source, info.value.abort_reason) == (2, 6)


# --------------------------------------------------------------------------
# Round trips of every PDU, item and sub-item
# --------------------------------------------------------------------------

FULL_USER_INFO_RQ = UserInformation(
    max_length=0,
    implementation_class_uid="1.2.826.0.1.3680043.10.1",
    implementation_version_name="SCPFLEET_01",
    async_ops_window=(0, 1),
    role_selections=(
        RoleSelection(CT_STORAGE, False, True),
        RoleSelection("1.2.840.10008.5.1.4.1.1.4", True, False),
    ),
    sop_class_extended=(SOPClassExtended(CT_STORAGE, b"\x01\x00\x01"),),
    sop_class_common_extended=(
        SOPClassCommonExtended(
            "1.2.840.10008.5.1.4.1.1.88.40",
            "1.2.840.10008.4.2",
            ("1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.11"),
        ),
        SOPClassCommonExtended("1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.4.2"),
    ),
    user_identity_rq=UserIdentityRQ(2, True, b"user", b"p\xe4ss"),
)
FULL_USER_INFO_AC = UserInformation(
    max_length=0xFFFFFFFF,
    implementation_class_uid="1.2.3",
    implementation_version_name="X",
    async_ops_window=(65535, 65535),
    role_selections=(RoleSelection(CT_STORAGE, False, False),),
    sop_class_extended=(SOPClassExtended(CT_STORAGE, b""),),
    user_identity_ac=UserIdentityAC(b"kerberos-ticket\x00\xff"),
)


@pytest.mark.parametrize(
    "value",
    [
        AAssociateRQ(
            b"STORE-SCP       ",
            b"MODALITY1       ",
            APPLICATION_CONTEXT_NAME,
            (
                PresentationContextRQ(1, CT_STORAGE, (EXPLICIT_LE, IMPLICIT_LE)),
                PresentationContextRQ(255, VERIFICATION, (IMPLICIT_LE,)),
            ),
            FULL_USER_INFO_RQ,
        ),
        AAssociateAC(
            b"STORE-SCP       ",
            b"MODALITY1       ",
            APPLICATION_CONTEXT_NAME,
            (
                PresentationContextAC(1, 0, EXPLICIT_LE),
                PresentationContextAC(3, 1, ""),
                PresentationContextAC(5, 2, ""),
                PresentationContextAC(7, 3, IMPLICIT_LE),
                PresentationContextAC(9, 4, ""),
            ),
            FULL_USER_INFO_AC,
        ),
        AAssociateRQ(b"A" * 16, b"B" * 16, "1.2", (), UserInformation(), protocol_version=0xFFFF),
        AAssociateRJ(2, 3, 2),
        AReleaseRQ(),
        AReleaseRP(),
        AAbort(0, 0),
        PDataTF(
            (
                PDV(1, True, False, memoryview(b"")),
                PDV(1, True, True, memoryview(b"c" * 300)),
                PDV(3, False, False, memoryview(bytes(range(256)))),
                PDV(3, False, True, memoryview(b"z")),
            )
        ),
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_every_pdu(value: PDU) -> None:
    data = encode_pdu(value)
    assert decode_pdu(data) == value
    assert feed_bytewise(data) == [value]
    assert encode_pdu(decode_pdu(data)) == data


# --------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context_id", "is_command", "is_last", "length"),
    [(1, True, True, 0), (3, False, False, 16372), (255, False, True, 0xFFFFFFF9)],
)
def test_pdata_header_matches_encode_pdu(
    context_id: int, is_command: bool, is_last: bool, length: int
) -> None:
    header = pdata_header(context_id, is_command, is_last, length)
    assert len(header) == 12
    control = is_command | is_last << 1
    expected = struct.pack(">BxIIBB", 4, length + 6, length + 2, context_id, control)
    assert header == expected
    if length < 100_000:
        payload = bytes(length)
        pdv = PDV(context_id, is_command, is_last, memoryview(payload))
        assert header + payload == encode_pdu(PDataTF((pdv,)))


def test_pdata_header_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        pdata_header(256, True, True, 10)
    with pytest.raises(ValueError):
        pdata_header(1, True, True, 0xFFFFFFFA)  # PDU-length would not fit 32 bits


def test_encode_pdata_accepts_bytes_and_wide_views() -> None:
    wide = memoryview(b"\x01\x00\x02\x00").cast("H")
    raw = PDV(1, False, True, b"ab")  # type: ignore[arg-type]
    data = encode_pdu(PDataTF((PDV(1, False, True, wide), raw)))
    (pdu,) = PDUDecoder().feed(data)
    assert [bytes(p.data) for p in pdu.pdvs] == [b"\x01\x00\x02\x00", b"ab"]


def test_ae_title_padding_and_limits() -> None:
    value = AAssociateRQ(b"SCP", b"", APPLICATION_CONTEXT_NAME, (), UserInformation())
    decoded = decode_pdu(encode_pdu(value))
    assert decoded.called_ae_title == b"SCP" + b" " * 13
    assert decoded.calling_ae_title == b" " * 16
    with pytest.raises(ValueError):
        encode_pdu(AAssociateRQ(b"X" * 17, b"", APPLICATION_CONTEXT_NAME, (), UserInformation()))


@pytest.mark.parametrize(
    "value",
    [
        AAssociateRQ(b"A", b"B", "1.2.\u00e9", (), UserInformation()),
        AAssociateRQ(b"A", b"B", "1", (PresentationContextRQ(1, "1.2", ()),), UserInformation()),
        AAssociateRQ(
            b"A", b"B", "1", (PresentationContextRQ(256, "1.2", ("1",)),), UserInformation()
        ),
        AAssociateRQ(b"A", b"B", "1" * 70000, (), UserInformation()),
        AAssociateRQ(b"A", b"B", "1", (), UserInformation(implementation_version_name="X" * 17)),
        AAssociateRQ(b"A", b"B", "1", (), UserInformation(implementation_version_name="")),
        AAssociateRQ(b"A", b"B", "1", (), UserInformation(max_length=-1)),
        AAssociateRQ(b"A", b"B", "1", (), UserInformation(async_ops_window=(70000, 1))),
        AAssociateAC(b"A", b"B", "1", (PresentationContextAC(1, 0, "\u00e9"),), UserInformation()),
        PDataTF(()),
        AAbort(256, 0),
        AAssociateRJ(1, 1, -1),
    ],
)
def test_encoder_rejects_unencodable_values(value: PDU) -> None:
    with pytest.raises(ValueError):
        encode_pdu(value)


def test_encoder_rejects_non_pdu() -> None:
    with pytest.raises(TypeError):
        encode_pdu(PDV(1, True, True, memoryview(b"")))  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Interoperability with pynetdicom (a test peer only)
# --------------------------------------------------------------------------

PYNETDICOM_FIXTURES = [
    "a_associate_rq",
    "a_associate_rq_user_async",
    "a_associate_rq_role",
    "a_associate_rq_user_id_user_pass",
    "a_associate_rq_user_id_ext_neg",
    "a_associate_rq_com_ext_neg",
    "a_associate_rq_called",
    "a_associate_rq_calling",
    "a_associate_ac",
    "a_associate_ac_zero_ts",
    "a_associate_ac_no_ts",
    "a_associate_rj",
    "a_release_rq",
    "a_release_rp",
    "a_abort",
    "a_p_abort",
    "p_data_tf",
    "p_data_tf_rq",
    "p_data_tf_n_event_report",
]


@pytest.mark.parametrize("name", PYNETDICOM_FIXTURES)
def test_decode_pynetdicom_fixtures(name: str) -> None:
    encoded = pytest.importorskip("pynetdicom.tests.encoded_pdu_items")
    data = getattr(encoded, name)
    value = decode_pdu(data)
    assert feed_bytewise(data) == [value]
    # Our encoding may order user-information sub-items differently; the value survives.
    assert decode_pdu(encode_pdu(value)) == value


def test_pynetdicom_fixture_values() -> None:
    encoded = pytest.importorskip("pynetdicom.tests.encoded_pdu_items")
    rq = decode_pdu(encoded.a_associate_rq_user_async)
    assert rq.user_information.async_ops_window == (5, 5)
    assert rq.user_information.user_identity_rq == UserIdentityRQ(1, True, b"pynetdicom", b"")
    role = decode_pdu(encoded.a_associate_rq_role).user_information.role_selections
    assert role == (RoleSelection(CT_STORAGE, False, True),)
    ac = decode_pdu(encoded.a_associate_ac_no_ts)
    assert ac.presentation_contexts == (PresentationContextAC(1, 3, ""),)
    # pynetdicom's a_associate_ac_user keeps a stale PDU-length (0xB8) after
    # appending a 59H sub-item, so its user information item overruns the PDU.
    assert error_of(encoded.a_associate_ac_user) == (2, 6)
    fixed = decode_pdu(with_pdu_length(encoded.a_associate_ac_user))
    assert fixed.user_information.user_identity_ac == UserIdentityAC(b"Accepted")


def _pynetdicom_decode(data: bytes):
    pdu_mod = pytest.importorskip("pynetdicom.pdu")
    cls = {
        1: pdu_mod.A_ASSOCIATE_RQ,
        2: pdu_mod.A_ASSOCIATE_AC,
        3: pdu_mod.A_ASSOCIATE_RJ,
        4: pdu_mod.P_DATA_TF,
        5: pdu_mod.A_RELEASE_RQ,
        6: pdu_mod.A_RELEASE_RP,
        7: pdu_mod.A_ABORT_RQ,
    }[data[0]]
    pdu = cls()
    pdu.decode(data)
    return pdu


@pytest.mark.parametrize(
    "value",
    [
        ASSOC_RQ_VALUE,
        ASSOC_AC_VALUE,
        AAssociateRQ(
            b"STORE-SCP",
            b"MODALITY1",
            APPLICATION_CONTEXT_NAME,
            (PresentationContextRQ(1, CT_STORAGE, (EXPLICIT_LE, IMPLICIT_LE)),),
            FULL_USER_INFO_RQ,
        ),
        AAssociateRJ(1, 2, 2),
        AReleaseRQ(),
        AReleaseRP(),
        AAbort(2, 4),
        PDATA_VALUE,
    ],
    ids=lambda v: type(v).__name__,
)
def test_pynetdicom_reencodes_our_bytes_identically(value: PDU) -> None:
    data = encode_pdu(value)
    assert _pynetdicom_decode(data).encode() == data


def test_pynetdicom_reads_our_fields() -> None:
    peer = _pynetdicom_decode(encode_pdu(ASSOC_RQ_VALUE))
    assert peer.called_ae_title == "ANY-SCP"
    assert peer.application_context_name == APPLICATION_CONTEXT_NAME
    (ctx,) = peer.presentation_context
    assert ctx.context_id == 1
    assert ctx.abstract_syntax == VERIFICATION
    assert ctx.transfer_syntax == [IMPLICIT_LE]
    assert peer.user_information.maximum_length == 16382
    pdata = _pynetdicom_decode(encode_pdu(PDATA_VALUE))
    items = pdata.presentation_data_value_items
    assert [(i.presentation_context_id, i.presentation_data_value) for i in items] == [
        (3, b"\x03CMD"),
        (3, b"\x00DATA..."),
    ]


# --------------------------------------------------------------------------
# Hypothesis: round trip, chunking, and "parse or RemoteProtocolError"
# --------------------------------------------------------------------------

uids = st.text(alphabet="0123456789.", min_size=1, max_size=64)
names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=16)
u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=40)


def tuples_of(
    elements: st.SearchStrategy, min_size: int = 0, max_size: int = 3
) -> st.SearchStrategy:
    return st.lists(elements, min_size=min_size, max_size=max_size).map(tuple)


user_infos = st.builds(
    UserInformation,
    max_length=st.none() | st.integers(0, 0xFFFFFFFF),
    implementation_class_uid=st.none() | uids,
    implementation_version_name=st.none() | names,
    async_ops_window=st.none() | st.tuples(u16, u16),
    role_selections=tuples_of(st.builds(RoleSelection, uids, st.booleans(), st.booleans())),
    sop_class_extended=tuples_of(st.builds(SOPClassExtended, uids, small_bytes), max_size=2),
    sop_class_common_extended=tuples_of(
        st.builds(SOPClassCommonExtended, uids, uids, tuples_of(uids)), max_size=2
    ),
    user_identity_rq=st.none()
    | st.builds(UserIdentityRQ, u8, st.booleans(), small_bytes, small_bytes),
    user_identity_ac=st.none() | st.builds(UserIdentityAC, small_bytes),
)
ae_titles = st.binary(min_size=16, max_size=16)
contexts_rq = st.builds(PresentationContextRQ, u8, uids, tuples_of(uids, min_size=1))
contexts_ac = st.one_of(
    st.builds(PresentationContextAC, u8, st.just(0), uids),
    st.builds(PresentationContextAC, u8, st.integers(1, 4), st.just("") | uids),
)
rq_contexts = tuples_of(contexts_rq, max_size=4)
ac_contexts = tuples_of(contexts_ac, max_size=4)
pdvs = st.builds(
    lambda cid, cmd, last, data: PDV(cid, cmd, last, memoryview(data)),
    u8,
    st.booleans(),
    st.booleans(),
    st.binary(max_size=64),
)
pdus = st.one_of(
    st.builds(AAssociateRQ, ae_titles, ae_titles, uids, rq_contexts, user_infos, u16),
    st.builds(AAssociateAC, ae_titles, ae_titles, uids, ac_contexts, user_infos, u16),
    st.builds(AAssociateRJ, u8, u8, u8),
    st.builds(AReleaseRQ),
    st.builds(AReleaseRP),
    st.builds(AAbort, u8, u8),
    st.builds(PDataTF, tuples_of(pdvs, min_size=1, max_size=4)),
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(pdus, min_size=1, max_size=4), st.lists(st.integers(0, 4000), max_size=8))
def test_hypothesis_round_trip_and_chunking(values: list[PDU], cuts: list[int]) -> None:
    stream = b"".join(encode_pdu(v) for v in values)
    assert PDUDecoder().feed(stream) == values
    assert feed_chunks(stream, cuts) == values
    assert feed_bytewise(stream) == values


def outcome(data: bytes, cuts: list[int]) -> tuple[str, object]:
    """Decode ``data`` in the given chunks: the PDUs, or the error's (source, reason)."""
    try:
        return "ok", feed_chunks(data, cuts)
    except RemoteProtocolError as exc:
        return "error", (exc.abort_source, exc.abort_reason)


def assert_parse_or_remote_error(data: bytes) -> None:
    whole = outcome(data, [])
    bytewise = outcome(data, list(range(len(data))))
    # Errors are found at the same place however the bytes arrive; the only
    # difference is that bytewise feeding returns earlier PDUs before raising.
    assert whole[0] == bytewise[0]
    if whole[0] == "error":
        assert whole[1] == bytewise[1]
    else:
        assert whole == bytewise


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_hypothesis_random_bytes(data: bytes) -> None:
    assert_parse_or_remote_error(data)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 7), st.binary(max_size=200))
def test_hypothesis_random_body_with_valid_header(pdu_type: int, body: bytes) -> None:
    assert_parse_or_remote_error(struct.pack(">BxI", pdu_type, len(body)) + body)


@st.composite
def mutated_pdus(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_pdu(draw(pdus)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "length"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(u8)
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif kind == "length" and len(data) >= pos + 2:
            # Rewrite a 16-bit length-ish field to stress container checks.
            data[pos : pos + 2] = struct.pack(">H", draw(u16))
    if draw(st.booleans()) and len(data) >= 6:
        data = bytearray(with_pdu_length(bytes(data)))  # so the body parser sees it
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_pdus())
def test_hypothesis_mutated_pdus(data: bytes) -> None:
    assert_parse_or_remote_error(data)


# --------------------------------------------------------------------------
# Module hygiene
# --------------------------------------------------------------------------


def test_module_is_sans_io() -> None:
    import engine._pdu as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "threading", "time", "selectors", "pynetdicom"}
    assert not any(isinstance(node, ast.Assert) for node in ast.walk(tree))


def test_pdu_alias_covers_seven_types() -> None:
    for _, value in FIXTURES:
        assert isinstance(value, PDU)
