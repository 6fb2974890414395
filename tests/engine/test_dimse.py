"""Tests of engine._dimse: command sets (PS3.7 Annex E), assembly and fragmentation
(PS3.8 9.3.5, Annex E.2)."""

from __future__ import annotations

import ast
import io
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from engine import _dimse
from engine._dimse import (
    AE,
    AT,
    COMMAND_NAMES,
    COMMAND_TABLES,
    DATASET_ABSENT,
    DATASET_PRESENT,
    LO,
    MAX_COMMAND_LENGTH,
    MESSAGE_TYPES,
    NO_LIMIT_PDU_LENGTH,
    UI,
    US,
    VERIFICATION_SOP_CLASS,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    MessageAssembler,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    Row,
    UnknownCommand,
    UnknownResponse,
    decode_command,
    encode_command,
    fragment_message,
    is_valid_uid,
    iter_dataset_pdus,
    response_for,
)
from engine._errors import LocalProtocolError, RemoteProtocolError
from engine._pdu import PDV

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
# PS3.4 J.3.5 / J.3.6: Storage Commitment Push Model SOP Class and its well-known instance.
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


# --------------------------------------------------------------------------
# Helpers.


def pydicom_command(**elements: object) -> bytes:
    """Encode group 0000 elements with pydicom, Implicit VR LE, group length first."""

    def encode(ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        write_dataset(fp, ds)
        return fp.getvalue()

    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.CommandGroupLength = len(encode(ds))
    return encode(ds)


def pydicom_read(data: bytes) -> Dataset:
    return read_dataset(io.BytesIO(data), True, True)


def element(elem: int, value: bytes) -> bytes:
    """One Implicit VR LE group 0000 element (PS3.5 7.1.2)."""
    return struct.pack("<HHI", 0, elem, len(value)) + value


def command_set(*elements: bytes, group_length: int | None = None) -> bytes:
    body = b"".join(elements)
    length = len(body) if group_length is None else group_length
    return element(0x0000, struct.pack("<I", length)) + body


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def to_pdvs(buffers: Iterable[bytes | memoryview]) -> list[PDV]:
    """Parse the output of fragment_message / iter_dataset_pdus back into PDVs.

    Every PDU must be a P-DATA-TF (PS3.8 9.3.5) with one PDV whose item length
    matches the PDU length; a PDV's data may be spread over several buffers.
    """
    result = []
    it = iter(buffers)
    for header in it:
        raw = bytes(header)
        assert len(raw) == 12
        pdu_type, reserved, pdu_length, item_length, context_id, control = struct.unpack(
            ">BBIIBB", raw
        )
        assert (pdu_type, reserved) == (0x04, 0)
        assert pdu_length == item_length + 4
        assert control & ~0x03 == 0
        size = item_length - 2
        parts = []
        got = 0
        while got < size:
            part = next(it)
            assert isinstance(part, (bytes, memoryview))
            parts.append(part)
            got += memoryview(part).nbytes
        assert got == size
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        result.append(
            PDV(
                context_id=context_id,
                is_command=bool(control & 1),
                is_last=bool(control & 2),
                data=memoryview(data),
            )
        )
    return result


def pdv(context_id: int, is_command: bool, is_last: bool, data: bytes = b"") -> PDV:
    return PDV(context_id=context_id, is_command=is_command, is_last=is_last, data=memoryview(data))


def assemble(pdvs: Iterable[PDV]) -> list[CommandReceived | DatasetFragment]:
    assembler = MessageAssembler()
    events: list[CommandReceived | DatasetFragment] = []
    for item in pdvs:
        events.extend(assembler.feed(item))
    assert not assembler.in_message
    return events


def assert_user_abort(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> None:
    # PS3.8 Table 9-26: DIMSE is the DUL service-user: source 0, reason 0.
    assert exc.value.abort_source == 0
    assert exc.value.abort_reason == 0


# --------------------------------------------------------------------------
# Sans-IO.


def test_module_does_no_io() -> None:
    for module in (_dimse, __import__("engine.status").status):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((node.module or "").split(".")[0])
        assert not imported & {"asyncio", "socket", "threading", "time", "selectors"}


# --------------------------------------------------------------------------
# Byte fixtures.

# C-ECHO-RQ, Message ID 1, assembled by hand from PS3.7 Table 9.3-12 / Annex E:
ECHO_RQ_BYTES = (
    # (0000,0000) UL Command Group Length = 56 bytes follow
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x38\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID, 18 bytes: "1.2.840.10008.1.1" + NUL pad
    b"\x00\x00\x02\x00" b"\x12\x00\x00\x00" b"1.2.840.10008.1.1\x00"
    # (0000,0100) US Command Field = 0030H (C-ECHO-RQ)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x30\x00"
    # (0000,0110) US Message ID = 1
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x01\x00"
    # (0000,0800) US Command Data Set Type = 0101H (no data set)
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"
)

# C-ECHO-RSP to Message ID 1, status Success, PS3.7 Table 9.3-13:
ECHO_RSP_BYTES = (
    # (0000,0000) UL Command Group Length = 66
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x42\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID (Verification), NUL padded
    b"\x00\x00\x02\x00" b"\x12\x00\x00\x00" b"1.2.840.10008.1.1\x00"
    # (0000,0100) US Command Field = 8030H (C-ECHO-RSP)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x30\x80"
    # (0000,0120) US Message ID Being Responded To = 1
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x01\x00"
    # (0000,0800) US Command Data Set Type = 0101H
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"
    # (0000,0900) US Status = 0000H (Success)
    b"\x00\x00\x00\x09" b"\x02\x00\x00\x00" b"\x00\x00"
)

# C-STORE-RQ, PS3.7 Table 9.3-1: Message ID 7, CT Image Storage, instance "1.2.3.4",
# Priority HIGH, sent on behalf of C-MOVE message 3 from AE "MOVESCU":
STORE_RQ_BYTES = (
    # (0000,0000) UL Command Group Length = 116
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x74\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID "1.2.840.10008.5.1.4.1.1.2" (25 chars + NUL)
    b"\x00\x00\x02\x00" b"\x1a\x00\x00\x00" b"1.2.840.10008.5.1.4.1.1.2\x00"
    # (0000,0100) US Command Field = 0001H (C-STORE-RQ)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x01\x00"
    # (0000,0110) US Message ID = 7
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x07\x00"
    # (0000,0700) US Priority = 0001H (HIGH)
    b"\x00\x00\x00\x07" b"\x02\x00\x00\x00" b"\x01\x00"
    # (0000,0800) US Command Data Set Type = 0001H (data set follows)
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x00"
    # (0000,1000) UI Affected SOP Instance UID "1.2.3.4" + NUL pad
    b"\x00\x00\x00\x10" b"\x08\x00\x00\x00" b"1.2.3.4\x00"
    # (0000,1030) AE Move Originator AE Title "MOVESCU" + space pad
    b"\x00\x00\x30\x10" b"\x08\x00\x00\x00" b"MOVESCU "
    # (0000,1031) US Move Originator Message ID = 3
    b"\x00\x00\x31\x10" b"\x02\x00\x00\x00" b"\x03\x00"
)

# C-STORE-RSP to message 7, status B000 (coercion), PS3.7 Table 9.3-2, with Offending
# Element (0010,0010) and Error Comment "coerced" (7 chars + space pad):
STORE_RSP_BYTES = (
    # (0000,0000) UL Command Group Length = 118
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x76\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID (CT Image Storage)
    b"\x00\x00\x02\x00" b"\x1a\x00\x00\x00" b"1.2.840.10008.5.1.4.1.1.2\x00"
    # (0000,0100) US Command Field = 8001H (C-STORE-RSP)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x01\x80"
    # (0000,0120) US Message ID Being Responded To = 7
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x07\x00"
    # (0000,0800) US Command Data Set Type = 0101H
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"
    # (0000,0900) US Status = B000H
    b"\x00\x00\x00\x09" b"\x02\x00\x00\x00" b"\x00\xb0"
    # (0000,0901) AT Offending Element = (0010,0010): group then element, LE
    b"\x00\x00\x01\x09" b"\x04\x00\x00\x00" b"\x10\x00\x10\x00"
    # (0000,0902) LO Error Comment "coerced" + space pad
    b"\x00\x00\x02\x09" b"\x08\x00\x00\x00" b"coerced "
    # (0000,1000) UI Affected SOP Instance UID "1.2.3.4" + NUL pad
    b"\x00\x00\x00\x10" b"\x08\x00\x00\x00" b"1.2.3.4\x00"
)

# C-CANCEL-RQ for message 11, PS3.7 Table 9.3-5:
CANCEL_RQ_BYTES = (
    # (0000,0000) UL Command Group Length = 30
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x1e\x00\x00\x00"
    # (0000,0100) US Command Field = 0FFFH (C-CANCEL-RQ)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\xff\x0f"
    # (0000,0120) US Message ID Being Responded To = 11
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x0b\x00"
    # (0000,0800) US Command Data Set Type = 0101H (no data set)
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"
)

# C-MOVE-RQ, PS3.7 Table 9.3-9: Message ID 5, Study Root MOVE, to AE "ARCHIVE",
# Priority LOW, Identifier follows:
MOVE_RQ_BYTES = (
    # (0000,0000) UL Command Group Length = 92
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x5c\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID "1.2.840.10008.5.1.4.1.2.2.2" (27 chars + NUL)
    b"\x00\x00\x02\x00" b"\x1c\x00\x00\x00" b"1.2.840.10008.5.1.4.1.2.2.2\x00"
    # (0000,0100) US Command Field = 0021H (C-MOVE-RQ)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x21\x00"
    # (0000,0110) US Message ID = 5
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x05\x00"
    # (0000,0600) AE Move Destination "ARCHIVE" + space pad
    b"\x00\x00\x00\x06" b"\x08\x00\x00\x00" b"ARCHIVE "
    # (0000,0700) US Priority = 0002H (LOW)
    b"\x00\x00\x00\x07" b"\x02\x00\x00\x00" b"\x02\x00"
    # (0000,0800) US Command Data Set Type = 0001H (Identifier follows)
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x00"
)

# C-GET-RSP to message 5, Pending, PS3.7 Table 9.3-7: 3 remaining, 2 completed,
# 0 failed, 1 warning sub-operations:
GET_RSP_BYTES = (
    # (0000,0000) UL Command Group Length = 116
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x74\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID "1.2.840.10008.5.1.4.1.2.2.3" (27 chars + NUL)
    b"\x00\x00\x02\x00" b"\x1c\x00\x00\x00" b"1.2.840.10008.5.1.4.1.2.2.3\x00"
    # (0000,0100) US Command Field = 8010H (C-GET-RSP)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x10\x80"
    # (0000,0120) US Message ID Being Responded To = 5
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x05\x00"
    # (0000,0800) US Command Data Set Type = 0101H
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"
    # (0000,0900) US Status = FF00H (Pending)
    b"\x00\x00\x00\x09" b"\x02\x00\x00\x00" b"\x00\xff"
    # (0000,1020) US Number of Remaining Sub-operations = 3
    b"\x00\x00\x20\x10" b"\x02\x00\x00\x00" b"\x03\x00"
    # (0000,1021) US Number of Completed Sub-operations = 2
    b"\x00\x00\x21\x10" b"\x02\x00\x00\x00" b"\x02\x00"
    # (0000,1022) US Number of Failed Sub-operations = 0
    b"\x00\x00\x22\x10" b"\x02\x00\x00\x00" b"\x00\x00"
    # (0000,1023) US Number of Warning Sub-operations = 1
    b"\x00\x00\x23\x10" b"\x02\x00\x00\x00" b"\x01\x00"
)

# N-EVENT-REPORT-RQ, PS3.7 Table 10.3-1: Message ID 2, Storage Commitment Push Model
# event type 1 (PS3.4 J.3.3: request successful) on its well-known instance, Event
# Information follows:
EVENT_REPORT_RQ_BYTES = (
    # (0000,0000) UL Command Group Length = 98
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x62\x00\x00\x00"
    # (0000,0002) UI Affected SOP Class UID "1.2.840.10008.1.20.1" (20 chars, no pad)
    b"\x00\x00\x02\x00" b"\x14\x00\x00\x00" b"1.2.840.10008.1.20.1"
    # (0000,0100) US Command Field = 0100H (N-EVENT-REPORT-RQ)
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x00\x01"
    # (0000,0110) US Message ID = 2
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x02\x00"
    # (0000,0800) US Command Data Set Type = 0001H (Event Information follows)
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x00"
    # (0000,1000) UI Affected SOP Instance UID "1.2.840.10008.1.20.1.1" (22 chars)
    b"\x00\x00\x00\x10" b"\x16\x00\x00\x00" b"1.2.840.10008.1.20.1.1"
    # (0000,1002) US Event Type ID = 1
    b"\x00\x00\x02\x10" b"\x02\x00\x00\x00" b"\x01\x00"
)

FIXTURES = [
    (ECHO_RQ_BYTES, CEchoRQ(message_id=1)),
    (ECHO_RSP_BYTES, CEchoRSP(message_id_being_responded_to=1, status=0x0000)),
    (
        STORE_RQ_BYTES,
        CStoreRQ(
            message_id=7,
            affected_sop_class_uid=CT_IMAGE_STORAGE,
            affected_sop_instance_uid="1.2.3.4",
            priority=1,
            move_originator_application_entity_title=b"MOVESCU",
            move_originator_message_id=3,
        ),
    ),
    (
        STORE_RSP_BYTES,
        CStoreRSP(
            message_id_being_responded_to=7,
            status=0xB000,
            affected_sop_class_uid=CT_IMAGE_STORAGE,
            affected_sop_instance_uid="1.2.3.4",
            error_comment="coerced",
            offending_element=(0x00100010,),
        ),
    ),
    (CANCEL_RQ_BYTES, CCancelRQ(message_id_being_responded_to=11)),
    (MOVE_RQ_BYTES, CMoveRQ(5, STUDY_ROOT_MOVE, b"ARCHIVE", priority=2)),
    (
        GET_RSP_BYTES,
        CGetRSP(
            message_id_being_responded_to=5,
            status=0xFF00,
            affected_sop_class_uid=STUDY_ROOT_GET,
            number_of_remaining_sub_operations=3,
            number_of_completed_sub_operations=2,
            number_of_failed_sub_operations=0,
            number_of_warning_sub_operations=1,
        ),
    ),
    (
        EVENT_REPORT_RQ_BYTES,
        NEventReportRQ(
            message_id=2,
            affected_sop_class_uid=STORAGE_COMMITMENT,
            affected_sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
            event_type_id=1,
            command_data_set_type=DATASET_PRESENT,
        ),
    ),
]


@pytest.mark.parametrize(("raw", "message"), FIXTURES)
def test_fixture_encode(raw: bytes, message: _dimse.DimseMessage) -> None:
    assert encode_command(message) == raw


@pytest.mark.parametrize(("raw", "message"), FIXTURES)
def test_fixture_decode(raw: bytes, message: _dimse.DimseMessage) -> None:
    assert decode_command(raw) == message
    assert decode_command(memoryview(raw)) == message


@pytest.mark.parametrize(("raw", "message"), FIXTURES)
def test_fixture_matches_pydicom(raw: bytes, message: _dimse.DimseMessage) -> None:
    ds = pydicom_read(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == type(message).command_field
    assert all(elem.tag.group == 0 for elem in ds)


def test_has_dataset() -> None:
    assert not CEchoRQ(1).has_dataset
    assert not CEchoRSP(1, 0).has_dataset
    assert CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3").has_dataset
    assert not CStoreRSP(1, 0).has_dataset
    assert CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3").command_data_set_type == DATASET_PRESENT
    assert CEchoRQ(1).command_data_set_type == DATASET_ABSENT


def test_has_dataset_defaults_of_new_commands() -> None:
    # PS3.7 9.3.2-9.3.4: the Identifier always follows C-FIND/C-GET/C-MOVE-RQ; a
    # response carries one only when it says so (pending C-FIND, failed C-GET/MOVE
    # sub-operations). 10.3.1, 10.3.4: Event/Action Information and Reply are optional.
    assert CFindRQ(1, STUDY_ROOT_FIND).has_dataset
    assert CGetRQ(1, STUDY_ROOT_GET).has_dataset
    assert CMoveRQ(1, STUDY_ROOT_MOVE, b"DEST").has_dataset
    for response in (CFindRSP, CGetRSP, CMoveRSP, NEventReportRSP, NActionRSP):
        assert not response(1, 0).has_dataset
    assert not CFindRSP(1, 0xFF00).has_dataset
    assert CFindRSP(1, 0xFF00, command_data_set_type=DATASET_PRESENT).has_dataset
    assert not CCancelRQ(1).has_dataset
    assert not NEventReportRQ(1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1).has_dataset
    assert not NActionRQ(1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1).has_dataset
    assert not UnknownResponse(0x8110, 1, 0x0211).has_dataset


def test_command_field_constants() -> None:
    # PS3.7 Annex E Table E.1-1.
    expected = {
        CStoreRQ: 0x0001,
        CStoreRSP: 0x8001,
        CGetRQ: 0x0010,
        CGetRSP: 0x8010,
        CFindRQ: 0x0020,
        CFindRSP: 0x8020,
        CMoveRQ: 0x0021,
        CMoveRSP: 0x8021,
        CEchoRQ: 0x0030,
        CEchoRSP: 0x8030,
        NEventReportRQ: 0x0100,
        NEventReportRSP: 0x8100,
        NActionRQ: 0x0130,
        NActionRSP: 0x8130,
        CCancelRQ: 0x0FFF,
    }
    assert {cls: cls.command_field for cls in expected} == expected
    assert MESSAGE_TYPES == {field: cls for cls, field in expected.items()}


# --------------------------------------------------------------------------
# The tables, against the standard's data dictionary and pynetdicom's messages.


def keyword(row: Row) -> str:
    return keyword_for_tag(row.element)


@pytest.mark.parametrize("command_field", sorted(COMMAND_TABLES))
def test_table_rows_match_the_data_dictionary(command_field: int) -> None:
    # PS3.7 Annex E Table E.1-1 (as pydicom's dictionary holds it): each row's
    # element exists in group 0000 with the row's VR, and the struct field is the
    # standard's attribute name in snake_case.
    rows = COMMAND_TABLES[command_field]
    assert [row.element for row in rows] == sorted({row.element for row in rows})
    for row in rows:
        assert dictionary_VR(row.element) == row.vr, row
        assert keyword(row).lower() == row.field.replace("_", ""), row
    cls = MESSAGE_TYPES[command_field]
    names = [f.name for f in msgspec.structs.fields(cls)]
    assert sorted(names) == sorted(row.field for row in rows)
    assert names[-1] == "command_data_set_type"
    # PS3.7 9.1 / 10.1: requests carry Message ID, responses answer one with a Status.
    if command_field & 0x8000:
        assert names[:2] == ["message_id_being_responded_to", "status"]
    elif command_field != 0x0FFF:
        assert names[0] == "message_id"


@pytest.mark.parametrize("command_field", sorted(COMMAND_TABLES))
def test_table_elements_match_pynetdicom(command_field: int, pynetdicom_messages: Any) -> None:
    expected = set(pynetdicom_messages._COMMAND_SET_KEYWORDS[COMMAND_NAMES[command_field]])
    ours = {keyword(row) for row in COMMAND_TABLES[command_field]}
    assert ours == expected - {"CommandGroupLength", "CommandField"}


def test_compile_refuses_a_struct_that_does_not_match_its_table() -> None:
    class MissingField(_dimse._Message, frozen=True):
        command_field: ClassVar[int] = 0x0FFF
        command_data_set_type: int = DATASET_ABSENT

    class NullableRequired(_dimse._Message, frozen=True):
        command_field: ClassVar[int] = 0x0FFF
        message_id_being_responded_to: int | None = None
        command_data_set_type: int = DATASET_ABSENT

    class OptionalWithoutDefault(_dimse._Message, frozen=True):
        command_field: ClassVar[int] = 0x8030
        message_id_being_responded_to: int
        status: int
        affected_sop_class_uid: str
        error_comment: str | None
        command_data_set_type: int

    for cls in (MissingField, NullableRequired, OptionalWithoutDefault):
        with pytest.raises(TypeError):
            _dimse._compile(cls)
    assert MESSAGE_TYPES[0x0FFF] is CCancelRQ and MESSAGE_TYPES[0x8030] is CEchoRSP


# --------------------------------------------------------------------------
# Round trips.

uids = st.from_regex(r"\A[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){0,6}\Z").filter(
    lambda uid: len(uid) <= 64
)
text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
# AE characters: printable ASCII except backslash (PS3.5 6.2).
ae = st.binary(min_size=1, max_size=16).map(
    lambda b: bytes(c % 94 + 0x21 for c in b).replace(b"\\", b"/")
)
u16 = st.integers(0, 0xFFFF)
dataset_types = st.one_of(st.just(DATASET_ABSENT), st.just(DATASET_PRESENT), u16)

tags = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=4).map(tuple)
# PS3.5 6.2: LO has no backslash (the value delimiter).
lo = text.map(lambda value: value.replace("\\", "/"))
VR_VALUES = {US: u16, UI: uids, AE: ae, LO: lo, AT: tags}


def table_messages(cls: type) -> st.SearchStrategy[Any]:
    """Any valid message of ``cls``, built field by field from its table's rows."""
    rows = {row.field: row for row in cls.rows}
    fields = {}
    for info in msgspec.structs.fields(cls):
        if info.name == "command_field":
            continue
        row = rows[info.name]
        if row.element == 0x0800:
            values = dataset_types
        elif row.values is not None:
            values = st.sampled_from(sorted(row.values))
        else:
            values = VR_VALUES[row.vr]
        fields[info.name] = st.none() | values if info.default is None else values
    return st.builds(cls, **fields)


# Command fields without a table: N-GET/N-SET/N-CREATE/N-DELETE, their responses,
# and values PS3.7 Annex E does not assign.
UNKNOWN_FIELDS = [0x0110, 0x8110, 0x0120, 0x8120, 0x0140, 0x0150, 0x8150, 0x0FF0, 0x1234]

unknown_commands = st.builds(
    UnknownCommand,
    command_field=st.sampled_from(UNKNOWN_FIELDS),
    message_id=st.none() | u16,
    elements=st.dictionaries(
        st.integers(1, 0xFFFF).filter(lambda t: t not in (0x0100, 0x0110, 0x0800)),
        st.binary(max_size=20).map(lambda b: b + b"\x00" * (len(b) & 1)),
        max_size=5,
    ).flatmap(lambda d: dataset_types.map(lambda t: {**d, 0x0800: struct.pack("<H", t)})),
)

messages = st.one_of(
    *(table_messages(cls) for cls in MESSAGE_TYPES.values()), unknown_commands
)

# Each command without its optional fields, then with all of them.
EXAMPLES = [
    CFindRQ(message_id=3, affected_sop_class_uid=STUDY_ROOT_FIND),
    CFindRQ(3, STUDY_ROOT_FIND, priority=1, command_data_set_type=0x0102),
    CFindRSP(message_id_being_responded_to=3, status=0x0000),
    CFindRSP(
        message_id_being_responded_to=3,
        status=0xA900,
        affected_sop_class_uid=STUDY_ROOT_FIND,
        error_comment="bad identifier",
        offending_element=(0x00100010, 0x00080052),
        command_data_set_type=DATASET_PRESENT,
    ),
    CGetRQ(message_id=4, affected_sop_class_uid=STUDY_ROOT_GET),
    CGetRQ(4, STUDY_ROOT_GET, priority=2),
    CGetRSP(message_id_being_responded_to=4, status=0x0000),
    CGetRSP(
        message_id_being_responded_to=4,
        status=0xB000,
        affected_sop_class_uid=STUDY_ROOT_GET,
        number_of_remaining_sub_operations=0,
        number_of_completed_sub_operations=10,
        number_of_failed_sub_operations=2,
        number_of_warning_sub_operations=0xFFFF,
        error_comment="some failed",
        offending_element=(0x00080018,),
        command_data_set_type=DATASET_PRESENT,
    ),
    CMoveRQ(message_id=5, affected_sop_class_uid=STUDY_ROOT_MOVE, move_destination=b"A"),
    CMoveRQ(5, STUDY_ROOT_MOVE, b"SIXTEEN_CHARS_AE", priority=1),
    CMoveRSP(message_id_being_responded_to=5, status=0xA801),
    CMoveRSP(
        message_id_being_responded_to=5,
        status=0xFF00,
        affected_sop_class_uid=STUDY_ROOT_MOVE,
        number_of_remaining_sub_operations=7,
        number_of_completed_sub_operations=1,
        number_of_failed_sub_operations=0,
        number_of_warning_sub_operations=0,
        error_comment="x",
        offending_element=(0x0020000D,),
    ),
    CCancelRQ(message_id_being_responded_to=0xFFFF),
    NEventReportRQ(6, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event_type_id=2),
    NEventReportRSP(message_id_being_responded_to=6, status=0x0000),
    NEventReportRSP(
        message_id_being_responded_to=6,
        status=0x0110,
        affected_sop_class_uid=STORAGE_COMMITMENT,
        affected_sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
        event_type_id=2,
        error_comment="processing failure",
        error_id=0xC001,
        command_data_set_type=DATASET_PRESENT,
    ),
    NActionRQ(7, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, action_type_id=1),
    NActionRQ(
        7, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, command_data_set_type=1
    ),
    NActionRSP(message_id_being_responded_to=7, status=0x0000),
    NActionRSP(
        message_id_being_responded_to=7,
        status=0x0123,
        affected_sop_class_uid=STORAGE_COMMITMENT,
        affected_sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
        action_type_id=9,
        error_comment="no such action type",
        error_id=1,
    ),
]


@settings(max_examples=500)
@given(messages)
def test_round_trip(message: _dimse.DimseMessage) -> None:
    raw = encode_command(message)
    assert decode_command(raw) == message
    # Group length first and right; group 0000 only, even lengths, tags ascending.
    assert raw[:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00"
    assert struct.unpack_from("<I", raw, 8)[0] == len(raw) - 12
    offset, tags = 12, []
    while offset < len(raw):
        group, elem, length = struct.unpack_from("<HHI", raw, offset)
        assert group == 0 and length % 2 == 0
        tags.append(elem)
        offset += 8 + length
    assert offset == len(raw)
    assert tags == sorted(set(tags))
    if not isinstance(message, UnknownCommand):
        assert pydicom_read(raw).CommandField == type(message).command_field


@pytest.mark.parametrize(
    "message",
    [
        CEchoRQ(message_id=0xFFFF),
        CEchoRSP(message_id_being_responded_to=3, status=0x0211, error_comment="no"),
        CStoreRQ(1, CT_IMAGE_STORAGE, INSTANCE_UID),
        CStoreRQ(
            message_id=2,
            affected_sop_class_uid=CT_IMAGE_STORAGE,
            affected_sop_instance_uid=INSTANCE_UID,
            priority=2,
            move_originator_application_entity_title=b"A" * 16,
            move_originator_message_id=0,
        ),
        CStoreRSP(message_id_being_responded_to=2, status=0),
        CStoreRSP(2, 0xA700, error_comment="disk full", offending_element=(0x7FE00010, 0x1)),
        # N-GET-RQ (PS3.7 Table 10.3-3) has no table here.
        UnknownCommand(0x0110, 5, {0x0003: b"1.2\x00", 0x0800: us(0x0101), 0x1001: b"1.3\x00"}),
        UnknownCommand(0x0FF0, None, {0x0120: us(5), 0x0800: us(0x0101)}),
        *EXAMPLES,
    ],
)
def test_round_trip_examples(message: _dimse.DimseMessage) -> None:
    assert decode_command(encode_command(message)) == message


# --------------------------------------------------------------------------
# Interoperability: command sets written by pydicom and by pynetdicom.


def test_decode_pydicom_store_rq() -> None:
    raw = pydicom_command(
        AffectedSOPClassUID=CT_IMAGE_STORAGE,
        CommandField=0x0001,
        MessageID=42,
        Priority=2,
        CommandDataSetType=0x0102,
        AffectedSOPInstanceUID=INSTANCE_UID,
        MoveOriginatorApplicationEntityTitle="ORIGIN",
        MoveOriginatorMessageID=9,
    )
    assert decode_command(raw) == CStoreRQ(
        message_id=42,
        affected_sop_class_uid=CT_IMAGE_STORAGE,
        affected_sop_instance_uid=INSTANCE_UID,
        priority=2,
        move_originator_application_entity_title=b"ORIGIN",
        move_originator_message_id=9,
        command_data_set_type=0x0102,
    )


def test_decode_pydicom_store_rsp_and_echo() -> None:
    raw = pydicom_command(
        AffectedSOPClassUID=CT_IMAGE_STORAGE,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=42,
        CommandDataSetType=0x0101,
        Status=0xC001,
        OffendingElement=[0x00080018, 0x0020000D],
        ErrorComment="cannot parse",
        AffectedSOPInstanceUID=INSTANCE_UID,
    )
    assert decode_command(raw) == CStoreRSP(
        message_id_being_responded_to=42,
        status=0xC001,
        affected_sop_class_uid=CT_IMAGE_STORAGE,
        affected_sop_instance_uid=INSTANCE_UID,
        error_comment="cannot parse",
        offending_element=(0x00080018, 0x0020000D),
    )
    raw = pydicom_command(
        AffectedSOPClassUID=VERIFICATION_SOP_CLASS,
        CommandField=0x0030,
        MessageID=1,
        CommandDataSetType=0x0101,
    )
    assert raw == ECHO_RQ_BYTES
    assert decode_command(raw) == CEchoRQ(message_id=1)


def test_decode_pydicom_find_rq() -> None:
    raw = pydicom_command(
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        CommandField=0x0020,
        MessageID=11,
        Priority=0,
        CommandDataSetType=0x0001,
    )
    message = decode_command(raw)
    assert message == CFindRQ(message_id=11, affected_sop_class_uid=STUDY_ROOT_FIND)
    assert message.has_dataset


def test_decode_cancel_rq() -> None:
    raw = pydicom_command(
        CommandField=0x0FFF, MessageIDBeingRespondedTo=11, CommandDataSetType=0x0101
    )
    assert raw == CANCEL_RQ_BYTES
    message = decode_command(raw)
    assert message == CCancelRQ(message_id_being_responded_to=11)
    assert not message.has_dataset


def test_decode_pydicom_unknown_command() -> None:
    # N-GET-RQ, PS3.7 Table 10.3-3: a command without a table here.
    raw = pydicom_command(
        RequestedSOPClassUID=STORAGE_COMMITMENT,
        CommandField=0x0110,
        MessageID=12,
        CommandDataSetType=0x0101,
        RequestedSOPInstanceUID=STORAGE_COMMITMENT_INSTANCE,
        AttributeIdentifierList=[0x00100010],
    )
    message = decode_command(raw)
    assert isinstance(message, UnknownCommand)
    assert message.command_field == 0x0110
    assert message.name == "N-GET-RQ"
    assert message.is_request
    assert message.message_id == 12
    assert not message.has_dataset
    assert message.elements[0x0003] == STORAGE_COMMITMENT.encode()
    assert set(message.elements) == {0x0003, 0x0800, 0x1001, 0x1005}
    # An unknown response has no Message ID; a command field PS3.7 does not assign.
    message = decode_command(
        pydicom_command(CommandField=0x8FF0, MessageIDBeingRespondedTo=3, CommandDataSetType=1)
    )
    assert isinstance(message, UnknownCommand) and not message.is_request
    assert message.message_id is None and message.has_dataset
    assert message.name == "command 0x8FF0"


def read_back(message: _dimse.DimseMessage) -> None:
    """pydicom reads every field of ``message`` from its encoding, and nothing else."""
    ds = pydicom_read(encode_command(message))
    assert ds.CommandGroupLength == len(encode_command(message)) - 12
    assert ds.CommandField == message.command_field
    expected = {0x0000, 0x0100}
    for row in type(message).rows:
        value = getattr(message, row.field)
        if value is None:
            continue
        expected.add(row.element)
        got = ds[row.element].value
        if row.vr == AE:
            assert got.strip() == value.decode()
        elif row.vr == AT:
            assert ((got,) if isinstance(got, int) else tuple(got)) == value
        else:
            assert got == value, row
    assert {elem.tag for elem in ds} == expected


@pytest.mark.parametrize("message", [message for _, message in FIXTURES] + EXAMPLES)
def test_every_command_read_by_pydicom(message: _dimse.DimseMessage) -> None:
    read_back(message)


@settings(max_examples=200)
@given(st.one_of(*(table_messages(cls) for cls in MESSAGE_TYPES.values())))
def test_random_commands_read_by_pydicom(message: _dimse.DimseMessage) -> None:
    read_back(message)


def test_encoded_commands_read_by_pydicom() -> None:
    ds = pydicom_read(
        encode_command(
            CStoreRQ(
                message_id=3,
                affected_sop_class_uid=CT_IMAGE_STORAGE,
                affected_sop_instance_uid="1.2.345",
                move_originator_application_entity_title=b"ABC",
                move_originator_message_id=4,
            )
        )
    )
    assert ds.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert ds.AffectedSOPInstanceUID == "1.2.345"
    assert ds.CommandField == 1 and ds.MessageID == 3 and ds.Priority == 0
    assert ds.CommandDataSetType != 0x0101
    assert ds.MoveOriginatorApplicationEntityTitle == "ABC"
    assert ds.MoveOriginatorMessageID == 4
    rsp = CStoreRSP(3, 0xA900, offending_element=(0x00100020,), error_comment="x")
    ds = pydicom_read(encode_command(rsp))
    assert ds.Status == 0xA900 and ds.OffendingElement == 0x00100020 and ds.ErrorComment == "x"


@pytest.fixture
def pynetdicom_messages() -> Any:
    return pytest.importorskip("pynetdicom.dimse_messages")


@pytest.mark.parametrize("max_pdu", [0, 16, 100, 16382])
def test_pynetdicom_store_rq_into_assembler(pynetdicom_messages: Any, max_pdu: int) -> None:
    from pynetdicom.dimse_primitives import C_STORE

    dataset = bytes(range(256)) * 50 + b"\x01\x02"
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = INSTANCE_UID
    primitive.Priority = 0x0002
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 5
    primitive.DataSet = io.BytesIO(dataset)
    message = pynetdicom_messages.C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdvs = [
        pdv(context_id, bool(raw[0] & 1), bool(raw[0] & 2), raw[1:])
        for p_data in message.encode_msg(3, max_pdu)
        for context_id, raw in p_data.presentation_data_value_list
    ]
    events = assemble(pdvs)
    assert events[0] == CommandReceived(
        3,
        CStoreRQ(
            message_id=12,
            affected_sop_class_uid=CT_IMAGE_STORAGE,
            affected_sop_instance_uid=INSTANCE_UID,
            priority=2,
            move_originator_application_entity_title=b"MOVER",
            move_originator_message_id=5,
        ),
    )
    assert b"".join(e.data for e in events[1:]) == dataset
    assert [e.is_last for e in events[1:]][-1]


@pytest.mark.parametrize("max_pdu", [0, 16, 100, 16382])
def test_our_messages_decoded_by_pynetdicom(pynetdicom_messages: Any, max_pdu: int) -> None:
    from pynetdicom.pdu_primitives import P_DATA

    dataset = bytes(range(200)) * 30
    command = CStoreRQ(
        message_id=77,
        affected_sop_class_uid=CT_IMAGE_STORAGE,
        affected_sop_instance_uid=INSTANCE_UID,
        priority=1,
        move_originator_application_entity_title=b"ORIG",
        move_originator_message_id=6,
    )
    message = pynetdicom_messages.DIMSEMessage()
    done = False
    for item in to_pdvs(fragment_message(5, encode_command(command), dataset, max_pdu)):
        p_data = P_DATA()
        control = int(item.is_command) | int(item.is_last) << 1
        p_data.presentation_data_value_list.append(
            (item.context_id, bytes([control]) + bytes(item.data))
        )
        assert not done
        done = message.decode_msg(p_data)
    assert done
    primitive = message.message_to_primitive()
    assert primitive.MessageID == 77
    assert primitive.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert primitive.AffectedSOPInstanceUID == INSTANCE_UID
    assert primitive.Priority == 1
    assert primitive.MoveOriginatorApplicationEntityTitle == "ORIG"
    assert primitive.MoveOriginatorMessageID == 6
    assert primitive.DataSet.getvalue() == dataset

    message = pynetdicom_messages.DIMSEMessage()
    response = CEchoRSP(message_id_being_responded_to=77, status=0, error_comment="fine")
    for item in to_pdvs(fragment_message(1, encode_command(response), None, max_pdu)):
        p_data = P_DATA()
        control = int(item.is_command) | int(item.is_last) << 1
        p_data.presentation_data_value_list.append(
            (item.context_id, bytes([control]) + bytes(item.data))
        )
        done = message.decode_msg(p_data)
    assert done
    primitive = message.message_to_primitive()
    assert (primitive.MessageIDBeingRespondedTo, primitive.Status) == (77, 0)
    assert primitive.ErrorComment == "fine"


# Every command of EXAMPLES that pynetdicom can write: it sets Command Data Set Type
# to 0001H or 0101H itself.
PYNETDICOM_EXAMPLES = [
    message
    for message in EXAMPLES
    if message.command_data_set_type in (DATASET_PRESENT, DATASET_ABSENT)
]


def pynetdicom_names(message: _dimse.DimseMessage) -> tuple[str, str]:
    """pynetdicom's message and primitive class names for ``message``'s command."""
    name = COMMAND_NAMES[message.command_field].replace("-", "_")
    return name, name.rsplit("_", 1)[0]


def primitive_value(row: Row, value: Any) -> Any:
    if row.vr == AE:
        return value.decode()
    if row.vr == AT:
        return list(value)
    return value


@pytest.mark.parametrize("message", PYNETDICOM_EXAMPLES)
def test_pynetdicom_commands_decoded(pynetdicom_messages: Any, message: Any) -> None:
    from pynetdicom import dimse_primitives

    message_name, primitive_name = pynetdicom_names(message)
    primitive = getattr(dimse_primitives, primitive_name)()
    for row in type(message).rows:
        value = getattr(message, row.field)
        if value is not None and row.element != 0x0800:
            setattr(primitive, keyword(row), primitive_value(row, value))
    dataset = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " if message.has_dataset else None
    if dataset is not None:
        setattr(primitive, pynetdicom_messages._DATASET_KEYWORDS[message_name], io.BytesIO(dataset))
    encoder = getattr(pynetdicom_messages, message_name)()
    encoder.primitive_to_message(primitive)
    pdvs = [
        pdv(context_id, bool(raw[0] & 1), bool(raw[0] & 2), raw[1:])
        for p_data in encoder.encode_msg(7, 16382)
        for context_id, raw in p_data.presentation_data_value_list
    ]
    events = assemble(pdvs)
    assert events[0] == CommandReceived(7, message)
    assert b"".join(bytes(e.data) for e in events[1:]) == (dataset or b"")


@pytest.mark.parametrize("message", PYNETDICOM_EXAMPLES + [CFindRQ(1, "1.2", 0, 0x0102)])
def test_our_commands_decoded_by_pynetdicom(pynetdicom_messages: Any, message: Any) -> None:
    from pynetdicom.pdu_primitives import P_DATA

    dataset = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " if message.has_dataset else None
    decoder = pynetdicom_messages.DIMSEMessage()
    done = False
    for item in to_pdvs(fragment_message(3, encode_command(message), dataset, 100)):
        p_data = P_DATA()
        control = int(item.is_command) | int(item.is_last) << 1
        p_data.presentation_data_value_list.append((3, bytes([control]) + bytes(item.data)))
        assert not done
        done = decoder.decode_msg(p_data)
    assert done
    message_name, _ = pynetdicom_names(message)
    assert type(decoder).__name__ == message_name
    primitive = decoder.message_to_primitive()
    for row in type(message).rows:
        value = getattr(message, row.field)
        if row.element == 0x0800:
            assert decoder.command_set.CommandDataSetType == value
        elif value is not None:
            got = getattr(primitive, keyword(row))
            if row.vr == AT:
                # pynetdicom gives one tag as a tag, several as a list.
                got = [got] if isinstance(got, int) else list(got)
            assert got == primitive_value(row, value), row
    if dataset is not None:
        data_keyword = pynetdicom_messages._DATASET_KEYWORDS[message_name]
        assert getattr(primitive, data_keyword).getvalue() == dataset


# --------------------------------------------------------------------------
# Decoding peer data: every malformation is a service-user A-ABORT.

ECHO_BODY = [
    element(0x0002, b"1.2.840.10008.1.1\x00"),
    element(0x0100, us(0x0030)),
    element(0x0110, us(1)),
    element(0x0800, us(0x0101)),
]


def store_body(**replace: bytes | None) -> list[bytes]:
    """The C-STORE-RQ elements of STORE_RQ_BYTES; replace={tag: value or None}."""
    fields = {
        0x0002: b"1.2.840.10008.5.1.4.1.1.2\x00",
        0x0100: us(0x0001),
        0x0110: us(7),
        0x0700: us(1),
        0x0800: us(0x0001),
        0x1000: b"1.2.3.4\x00",
    }
    for name, value in replace.items():
        tag = int(name[1:], 16)
        if value is None:
            del fields[tag]
        else:
            fields[tag] = value
    return [element(tag, fields[tag]) for tag in sorted(fields)]


MALFORMED = {
    "empty": b"",
    "short": b"\x00\x00\x00\x00\x04\x00\x00",
    "group length missing": command_set(*ECHO_BODY)[12:],
    "group length not UL": element(0x0000, b"\x38\x00") + b"".join(ECHO_BODY),
    "group length too big": command_set(*ECHO_BODY, group_length=57),
    "group length too small": command_set(*ECHO_BODY, group_length=55),
    "group length huge": command_set(*ECHO_BODY, group_length=0xFFFFFFFF),
    "trailing byte": command_set(*ECHO_BODY, group_length=57) + b"\x00",
    "truncated header": command_set(*ECHO_BODY, b"\x00\x00\x00\x09\x02\x00"),
    "element overruns": command_set(*ECHO_BODY[:-1], b"\x00\x00\x00\x08\x04\x00\x00\x00\x01\x01"),
    "undefined length": command_set(*ECHO_BODY[:-1], b"\x00\x00\x00\x08\xff\xff\xff\xff\x01\x01"),
    "other group": command_set(*ECHO_BODY, struct.pack("<HHI", 0x0008, 0x0018, 2) + b"1\x00"),
    "out of order": command_set(ECHO_BODY[1], ECHO_BODY[0], *ECHO_BODY[2:]),
    "duplicate": command_set(*ECHO_BODY, ECHO_BODY[-1]),
    "second group length": command_set(element(0x0000, struct.pack("<I", 0)), *ECHO_BODY),
    "odd length": command_set(element(0x0002, b"1.2"), *ECHO_BODY[1:]),
    "no command field": command_set(ECHO_BODY[0], *ECHO_BODY[2:]),
    "command field UL": command_set(
        ECHO_BODY[0], element(0x0100, b"\x30\x00\x00\x00"), *ECHO_BODY[2:]
    ),
    "no data set type": command_set(*ECHO_BODY[:-1]),
    "data set type empty": command_set(*ECHO_BODY[:-1], element(0x0800, b"")),
    "echo no message id": command_set(ECHO_BODY[0], ECHO_BODY[1], ECHO_BODY[3]),
    "echo no sop class": command_set(*ECHO_BODY[1:]),
    "store no instance": command_set(*store_body(_1000=None)),
    "store no priority": command_set(*store_body(_0700=None)),
    "store no message id": command_set(*store_body(_0110=None)),
    "store message id empty": command_set(*store_body(_0110=b"")),
    "store priority 3": command_set(*store_body(_0700=us(3))),
    "store uid non-ascii": command_set(*store_body(_1000=b"1.2.\xff\x00")),
    "store uid control char": command_set(*store_body(_1000=b"1.2\n")),
    "store uid too long": command_set(*store_body(_1000=b"1." * 33)),
    "store AE too long": command_set(*store_body(_1030=b"A" * 18)),
    "store AE control char": command_set(*store_body(_1030=b"A\x01B ")),
    "store move id not US": command_set(*store_body(_1031=b"\x01\x00\x00\x00")),
    "unknown bad message id": command_set(
        element(0x0100, us(0x0110)), element(0x0110, b"\x01\x00\x00\x00"), element(0x0800, us(1))
    ),
    "unknown no data set type": command_set(element(0x0100, us(0x0110)), element(0x0110, us(1))),
    "rsp no status": command_set(
        element(0x0100, us(0x8001)), element(0x0120, us(1)), element(0x0800, us(0x0101))
    ),
    "rsp no message id": command_set(
        element(0x0100, us(0x8030)), element(0x0800, us(0x0101)), element(0x0900, us(0))
    ),
    "rsp AT odd": command_set(
        element(0x0100, us(0x8001)),
        element(0x0120, us(1)),
        element(0x0800, us(0x0101)),
        element(0x0900, us(0)),
        element(0x0901, b"\x10\x00\x10\x00\x08\x00"),
    ),
    "rsp comment non-ascii": command_set(
        element(0x0100, us(0x8030)),
        element(0x0120, us(1)),
        element(0x0800, us(0x0101)),
        element(0x0900, us(0)),
        element(0x0902, b"\xe9t\xe9 "),
    ),
    "rsp comment too long": command_set(
        element(0x0100, us(0x8030)),
        element(0x0120, us(1)),
        element(0x0800, us(0x0101)),
        element(0x0900, us(0)),
        element(0x0902, b"x" * 66),
    ),
}


def elements_of(message: _dimse.DimseMessage) -> dict[int, bytes]:
    """The elements of ``message``'s command set but Command Group Length."""
    raw = encode_command(message)
    fields, offset = {}, 12
    while offset < len(raw):
        _, elem, length = struct.unpack_from("<HHI", raw, offset)
        fields[elem] = raw[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return fields


def changed(message: _dimse.DimseMessage, **replace: bytes | None) -> bytes:
    """``message``'s command set with elements replaced; replace={_XXXX: value or None}."""
    fields = elements_of(message)
    for name, value in replace.items():
        tag = int(name[1:], 16)
        if value is None:
            del fields[tag]
        else:
            fields[tag] = value
    return command_set(*(element(tag, fields[tag]) for tag in sorted(fields)))


def fullest(cls: type) -> Any:
    """The example of ``cls`` with the most fields set."""
    candidates = [m for m in [m for _, m in FIXTURES] + EXAMPLES if type(m) is cls]
    return max(candidates, key=lambda m: len(elements_of(m)))


FULLEST = [fullest(cls) for cls in MESSAGE_TYPES.values()]
FIND_RQ = CFindRQ(3, STUDY_ROOT_FIND)
MOVE_RQ = CMoveRQ(5, STUDY_ROOT_MOVE, b"ARCHIVE")
GET_RQ = CGetRQ(4, STUDY_ROOT_GET)
ACTION_RQ = NActionRQ(7, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1)
ACTION_RSP = NActionRSP(7, 0)
FIND_RSP = CFindRSP(3, 0xFF00)

MALFORMED.update(
    {
        "find priority 3": changed(FIND_RQ, _0700=us(3)),
        "get priority FFFF": changed(GET_RQ, _0700=us(0xFFFF)),
        "move priority 3": changed(MOVE_RQ, _0700=us(3)),
        "move destination too long": changed(MOVE_RQ, _0600=b"A" * 18),
        "move destination backslash": changed(MOVE_RQ, _0600=b"AR\\CHIVE "),
        "move destination control char": changed(MOVE_RQ, _0600=b"AR\x01C"),
        "move destination not ASCII": changed(MOVE_RQ, _0600=b"\xc3\xa9"),
        "find rsp AT odd": changed(FIND_RSP, _0901=b"\x10\x00\x10\x00\x08\x00"),
        "action rq instance too long": changed(ACTION_RQ, _1001=b"1." * 33),
        "action rq class not ascii": changed(ACTION_RQ, _0003=b"1.\xff"),
        "action rq type empty": changed(ACTION_RQ, _1008=b""),
        "action rsp comment control char": changed(ACTION_RSP, _0902=b"a\x07"),
        "action rsp error id UL": changed(ACTION_RSP, _0903=b"\x01\x00\x00\x00"),
        "cancel without message id": changed(CCancelRQ(1), _0120=None),
        "cancel message id empty": changed(CCancelRQ(1), _0120=b""),
    }
)


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_decode_malformed(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        decode_command(raw)
    assert_user_abort(exc)


def row_cases(predicate: Any) -> list[Any]:
    return [
        pytest.param(message, row, id=f"{COMMAND_NAMES[message.command_field]}-{row.field}")
        for message in FULLEST
        for row in type(message).rows
        if predicate(row)
    ]


@pytest.mark.parametrize(("message", "row"), row_cases(lambda row: row.required))
def test_decode_missing_required_field(message: Any, row: Row) -> None:
    # PS3.7 9.3 / 10.3: a message without a mandatory field is malformed.
    with pytest.raises(RemoteProtocolError) as exc:
        decode_command(changed(message, **{f"_{row.element:04X}": None}))
    assert_user_abort(exc)


@pytest.mark.parametrize(("message", "row"), row_cases(lambda row: row.vr == US))
def test_decode_us_of_wrong_length(message: Any, row: Row) -> None:
    # PS3.5 6.2: a US value is exactly 2 bytes.
    for value in (b"\x01\x00\x00\x00", b"\x00" * 6):
        with pytest.raises(RemoteProtocolError) as exc:
            decode_command(changed(message, **{f"_{row.element:04X}": value}))
        assert_user_abort(exc)


@pytest.mark.parametrize(("message", "row"), row_cases(lambda row: not row.required))
def test_decode_empty_optional_field_is_absent(message: Any, row: Row) -> None:
    default = next(
        f.default for f in msgspec.structs.fields(type(message)) if f.name == row.field
    )
    for value in (b"", b"  " if row.vr in (UI, LO, AE) else b""):
        decoded = decode_command(changed(message, **{f"_{row.element:04X}": value}))
        assert decoded == msgspec.structs.replace(message, **{row.field: default})


def test_decode_lenient_where_harmless() -> None:
    # Trailing-space padded UI (a common peer bug), unknown group 0000 element
    # (retired (0000,0001) Command Length to End), empty optional elements.
    raw = command_set(
        element(0x0001, struct.pack("<I", 0)),
        *store_body(_1000=b"1.2.3.4 ", _1030=b"  ", _1031=b""),
    )
    message = decode_command(raw)
    assert isinstance(message, CStoreRQ)
    assert message.affected_sop_instance_uid == "1.2.3.4"
    assert message.move_originator_application_entity_title is None
    assert message.move_originator_message_id is None
    # An empty required UID decodes; its validity is the service's business (0117H).
    message = decode_command(command_set(*store_body(_1000=b"")))
    assert isinstance(message, CStoreRQ) and message.affected_sop_instance_uid == ""


def test_decode_honours_data_set_type() -> None:
    echo = decode_command(command_set(*ECHO_BODY[:-1], element(0x0800, us(0x0000))))
    assert isinstance(echo, CEchoRQ) and echo.has_dataset
    store = decode_command(command_set(*store_body(_0800=us(0x0101))))
    assert isinstance(store, CStoreRQ) and not store.has_dataset
    rsp = decode_command(
        command_set(
            element(0x0100, us(0x8030)),
            element(0x0120, us(1)),
            element(0x0800, us(0x0101)),
            element(0x0900, us(0)),
        )
    )
    assert rsp == CEchoRSP(message_id_being_responded_to=1, status=0)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decode_random_bytes(raw: bytes) -> None:
    try:
        decode_command(raw)
    except RemoteProtocolError as exc:
        assert exc.abort_source == 0 and exc.abort_reason == 0


@settings(max_examples=400)
@given(
    st.sampled_from([raw for raw, _ in FIXTURES]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 200),
)
def test_decode_mutated_fixtures(raw: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(raw)
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: len(data) - cut % 8]
    try:
        decode_command(bytes(data))
    except RemoteProtocolError as exc:
        assert exc.abort_source == 0 and exc.abort_reason == 0


# --------------------------------------------------------------------------
# Construction is validated (our own values: LocalProtocolError).


def store_from(ae_title: Any) -> CStoreRQ:
    """A C-STORE-RQ whose Move Originator AE Title is ``ae_title``."""
    return CStoreRQ(1, CT_IMAGE_STORAGE, "1.2", move_originator_application_entity_title=ae_title)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CEchoRQ(message_id=-1),
        lambda: CEchoRQ(message_id=0x10000),
        lambda: CEchoRQ(message_id=True),
        lambda: CEchoRQ(message_id=1, affected_sop_class_uid="1." * 33),
        lambda: CEchoRQ(message_id=1, affected_sop_class_uid="1.2\x00"),
        lambda: CEchoRSP(1, 0x10000),
        lambda: CEchoRSP(1, 0, error_comment="é"),
        lambda: CEchoRSP(1, 0, error_comment="x" * 65),
        lambda: CStoreRQ(1, CT_IMAGE_STORAGE, "1.2", priority=3),
        lambda: CStoreRQ(1, CT_IMAGE_STORAGE, "1.2", priority=None),
        lambda: store_from(b"A" * 17),
        lambda: store_from("AE"),
        lambda: store_from(b"A\\B"),
        lambda: store_from(b"A\nB"),
        lambda: CStoreRQ(1, CT_IMAGE_STORAGE, "1.2", move_originator_message_id=-2),
        lambda: CStoreRSP(1, 0, offending_element=(0x100000000,)),
        lambda: CStoreRSP(1, 0, offending_element=[1]),
        lambda: UnknownCommand(0x20, 1, {}),
        lambda: UnknownCommand(0x20, 1, {0x0800: b"\x01"}),
        lambda: UnknownCommand(0x20, 1, {0x0800: us(1), 0x0100: us(0x20)}),
        lambda: UnknownCommand(0x20, 1, {0x0800: us(1), 0x0002: b"odd"}),
        lambda: CFindRQ(1, STUDY_ROOT_FIND, priority=3),
        lambda: CFindRQ(1, STUDY_ROOT_FIND, priority=True),
        lambda: CFindRQ(1, None),
        lambda: CGetRQ(1, STUDY_ROOT_GET, command_data_set_type=-1),
        lambda: CGetRSP(1, 0xFF00, number_of_remaining_sub_operations=-1),
        lambda: CGetRSP(1, 0xFF00, number_of_failed_sub_operations=0x10000),
        lambda: CMoveRQ(1, STUDY_ROOT_MOVE, "DEST"),
        lambda: CMoveRQ(1, STUDY_ROOT_MOVE, b"A" * 17),
        lambda: CMoveRQ(1, STUDY_ROOT_MOVE, b"A\\B"),
        lambda: CMoveRQ(1, STUDY_ROOT_MOVE, None),
        lambda: CMoveRSP(1, 0, error_comment="x" * 65),
        lambda: CMoveRSP(1, 0, offending_element=(-1,)),
        lambda: CCancelRQ(None),
        lambda: CCancelRQ(0x10000),
        lambda: NEventReportRQ(1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, None),
        lambda: NEventReportRSP(1, 0, event_type_id=1.0),
        lambda: NActionRQ(1, STORAGE_COMMITMENT, "1." * 33, 1),
        lambda: NActionRSP(1, 0, error_id=-1),
        lambda: NActionRSP(1, 0, affected_sop_instance_uid="\u00e9"),
        lambda: UnknownResponse(0x0110, 1, 0x0211),
        lambda: UnknownResponse(0x8020, 1, 0x0211),
        lambda: UnknownResponse(0x8001, 1, 0x0211),
        lambda: UnknownResponse(0x10000, 1, 0x0211),
        lambda: UnknownResponse(0x8110, None, 0x0211),
        lambda: UnknownResponse(0x8110, 1, 0x0211, error_comment="\n"),
    ],
)
def test_invalid_construction(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LocalProtocolError):
        build()


def test_encode_rejects_non_message() -> None:
    with pytest.raises(LocalProtocolError):
        encode_command("C-ECHO")  # type: ignore[arg-type]


def test_validation_accepts_int_subclasses() -> None:
    # The compiled validators test plain ints and strs inline; anything else goes
    # to the VR's check, which accepts what it always accepted.
    import enum

    class Status(enum.IntEnum):
        PENDING = 0xFF00

    class Priority(enum.IntEnum):
        HIGH = 1

    rsp = CFindRSP(1, Status.PENDING)
    assert decode_command(encode_command(rsp)) == CFindRSP(1, 0xFF00)
    assert CGetRQ(1, STUDY_ROOT_GET, priority=Priority.HIGH).priority == 1


# --------------------------------------------------------------------------
# Responses (PS3.7 9.1, 10.1).

RESPONSES = [
    # C-STORE: PS3.7 Table 9.1-1, Affected SOP Class and Instance UIDs U(=).
    (
        CStoreRQ(9, CT_IMAGE_STORAGE, INSTANCE_UID),
        CStoreRSP(
            9, 0, affected_sop_class_uid=CT_IMAGE_STORAGE, affected_sop_instance_uid=INSTANCE_UID
        ),
    ),
    (CEchoRQ(8), CEchoRSP(8, 0)),
    (CEchoRQ(8, "1.2.3"), CEchoRSP(8, 0, affected_sop_class_uid="1.2.3")),
    (FIND_RQ, CFindRSP(3, 0, affected_sop_class_uid=STUDY_ROOT_FIND)),
    (GET_RQ, CGetRSP(4, 0, affected_sop_class_uid=STUDY_ROOT_GET)),
    (MOVE_RQ, CMoveRSP(5, 0, affected_sop_class_uid=STUDY_ROOT_MOVE)),
    # N-EVENT-REPORT: PS3.7 Table 10.1-1, Affected UIDs U(=), Event Type ID C(=).
    (
        NEventReportRQ(6, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 2),
        NEventReportRSP(
            6,
            0,
            affected_sop_class_uid=STORAGE_COMMITMENT,
            affected_sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
            event_type_id=2,
        ),
    ),
    # N-ACTION: PS3.7 Table 10.1-4, the Requested UIDs come back as the Affected ones.
    (
        ACTION_RQ,
        NActionRSP(
            7,
            0,
            affected_sop_class_uid=STORAGE_COMMITMENT,
            affected_sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
            action_type_id=1,
        ),
    ),
]


@pytest.mark.parametrize(("request_", "expected"), RESPONSES)
def test_response_for(request_: Any, expected: Any) -> None:
    response = response_for(request_, 0)
    assert response == expected
    assert response.command_field == request_.command_field | 0x8000
    assert not response.has_dataset
    assert decode_command(encode_command(response)) == response


def test_response_for_takes_fields() -> None:
    pending = response_for(
        FIND_RQ, 0xFF00, command_data_set_type=DATASET_PRESENT, error_comment="one"
    )
    assert pending == CFindRSP(3, 0xFF00, STUDY_ROOT_FIND, "one", None, DATASET_PRESENT)
    assert pending.has_dataset
    # Fields override what is copied, None included.
    stored = response_for(
        CStoreRQ(9, CT_IMAGE_STORAGE, INSTANCE_UID), 0xA700, affected_sop_instance_uid=None
    )
    assert stored == CStoreRSP(9, 0xA700, affected_sop_class_uid=CT_IMAGE_STORAGE)
    moving = response_for(MOVE_RQ, 0xFF00, number_of_remaining_sub_operations=4)
    assert moving.number_of_remaining_sub_operations == 4


@pytest.mark.parametrize(
    "build",
    [
        lambda: response_for(CCancelRQ(3), 0),  # PS3.7 9.3.2.3: no response
        lambda: response_for(CStoreRSP(1, 0), 0),
        lambda: response_for(UnknownResponse(0x8110, 1, 0), 0),
        lambda: response_for(FIND_RQ, 0x10000),
        lambda: response_for(FIND_RQ, 0, status=1),
        lambda: response_for(FIND_RQ, 0, message_id_being_responded_to=1),
        lambda: response_for(FIND_RQ, 0, affected_sop_instance_uid="1.2"),
        lambda: response_for(FIND_RQ, 0, error_comment="\\\n"),
        lambda: response_for(UnknownCommand(0x0110, None, {0x0800: us(0x0101)}), 0x0211),
        lambda: response_for(UnknownCommand(0x8110, None, {0x0800: us(0x0101)}), 0x0211),
        lambda: response_for(UnknownCommand(0x0110, 1, {0x0800: us(0x0101)}), 0, command_field=1),
        lambda: response_for(UnknownCommand(0x0110, 1, {0x0800: us(0x0101)}), 0, priority=1),
        lambda: response_for("C-ECHO-RQ", 0),  # type: ignore[arg-type]
    ],
)
def test_response_for_refuses(build: Any) -> None:
    with pytest.raises(LocalProtocolError):
        build()


@pytest.mark.parametrize(
    ("elements", "sop_class"),
    [
        # N-GET-RQ: the Requested SOP Class UID comes back as the Affected one.
        ({0x0003: STORAGE_COMMITMENT.encode(), 0x1001: b"1.2\x00"}, STORAGE_COMMITMENT),
        ({0x0002: b"1.2.3\x00", 0x0003: b"4.5\x00"}, "1.2.3"),
        ({0x0002: b"1.2 "}, "1.2"),
        ({}, None),
        ({0x0002: b""}, None),
        ({0x0002: b"\xff\xfe"}, None),
        ({0x0002: b"1\n"}, None),
        ({0x0002: b"1." * 33}, None),
    ],
)
def test_response_for_unknown_command(elements: dict[int, bytes], sop_class: str | None) -> None:
    # PS3.7 C.5: an operation without a table is answered 0211H (Unrecognized operation).
    request = UnknownCommand(0x0110, 21, {**elements, 0x0800: us(DATASET_ABSENT)})
    response = response_for(request, 0x0211, error_comment="N-GET is not served")
    assert response == UnknownResponse(
        command_field=0x8110,
        message_id_being_responded_to=21,
        status=0x0211,
        affected_sop_class_uid=sop_class,
        error_comment="N-GET is not served",
    )
    raw = encode_command(response)
    ds = pydicom_read(raw)
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8110, 21, 0x0211)
    assert ds.CommandDataSetType == DATASET_ABSENT
    assert ds.get("AffectedSOPClassUID") == sop_class
    assert ds.ErrorComment == "N-GET is not served"
    # It decodes as what it is to us: a command without a table.
    decoded = decode_command(raw)
    assert isinstance(decoded, UnknownCommand) and not decoded.is_request
    assert decoded.command_field == 0x8110 and decoded.name == "N-GET-RSP"
    assert not decoded.has_dataset


@given(
    st.builds(
        UnknownResponse,
        command_field=st.sampled_from([f for f in UNKNOWN_FIELDS if f & 0x8000]),
        message_id_being_responded_to=u16,
        status=u16,
        affected_sop_class_uid=st.none() | uids,
        error_comment=st.none() | lo,
        command_data_set_type=dataset_types,
    )
)
def test_unknown_response_round_trip(response: UnknownResponse) -> None:
    decoded = decode_command(encode_command(response))
    assert isinstance(decoded, UnknownCommand)
    assert decoded.command_field == response.command_field
    assert decoded.command_data_set_type == response.command_data_set_type
    expected = {
        0x0120: us(response.message_id_being_responded_to),
        0x0800: us(response.command_data_set_type),
        0x0900: us(response.status),
    }
    if response.affected_sop_class_uid is not None:
        uid = response.affected_sop_class_uid.encode()
        expected[0x0002] = uid + b"\x00" * (len(uid) & 1)
    if response.error_comment is not None:
        comment = response.error_comment.encode()
        expected[0x0902] = comment + b" " * (len(comment) & 1)
    assert decoded.elements == expected


def test_is_valid_uid() -> None:
    assert is_valid_uid("1.2.840.10008.1.1")
    assert is_valid_uid("0.0")
    assert is_valid_uid(INSTANCE_UID)
    for bad in ("", "1..2", "1.02", ".1", "1.", "1.2a", "../x", "1" * 65, "1.2 "):
        assert not is_valid_uid(bad), bad


# --------------------------------------------------------------------------
# Fragmentation.

STORE = CStoreRQ(7, CT_IMAGE_STORAGE, INSTANCE_UID)


@pytest.mark.parametrize("max_pdu", [7, 16, 17, 100, 1000, 16382, 0])
@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 95, 999, 16376, 16377, 40000])
def test_fragment_round_trip(max_pdu: int, size: int) -> None:
    dataset = bytes(i * 7 % 251 for i in range(size))
    command = encode_command(STORE)
    buffers = fragment_message(3, command, dataset, max_pdu)
    pdvs = to_pdvs(buffers)
    limit = (max_pdu or NO_LIMIT_PDU_LENGTH) - 6
    assert all(len(item.data) <= limit for item in pdvs)
    assert all(item.context_id == 3 for item in pdvs)
    commands = [item for item in pdvs if item.is_command]
    data = [item for item in pdvs if not item.is_command]
    # Command fragments first, last flag only on the final one of each kind.
    assert pdvs[: len(commands)] == commands
    assert [item.is_last for item in commands] == [False] * (len(commands) - 1) + [True]
    assert [item.is_last for item in data] == [False] * (len(data) - 1) + [True]
    # Full-sized fragments except the last; no empty PDV unless the data set is empty.
    assert all(len(item.data) == limit for item in data[:-1])
    assert len(data) == 1 or len(data[-1].data) > 0
    events = assemble(pdvs)
    assert events[0] == CommandReceived(3, STORE)
    assert b"".join(bytes(e.data) for e in events[1:]) == dataset
    assert all(isinstance(e, DatasetFragment) and e.context_id == 3 for e in events[1:])
    assert events[-1].is_last


def test_fragment_command_only() -> None:
    command = encode_command(CEchoRSP(1, 0))
    buffers = fragment_message(1, command, None, 16382)
    assert buffers[1] is command and len(buffers) == 2
    (item,) = to_pdvs(buffers)
    assert item.is_command and item.is_last
    assert to_pdvs(fragment_message(1, command, None, 20))[-1].is_last


def test_fragment_zero_copy() -> None:
    dataset = bytearray(range(256)) * 100
    view = memoryview(dataset)
    command = encode_command(STORE)
    buffers = fragment_message(1, command, view, 1006)
    slices = [b for b in buffers[2:] if len(b) != 12]
    assert len(slices) == 26
    for part in slices:
        assert isinstance(part, memoryview) and part.obj is dataset
    dataset[0] = 0xAA
    assert slices[0][0] == 0xAA
    # Command fragments are views of the command bytes too.
    buffers = fragment_message(1, command, b"x", 20)
    assert any(isinstance(b, memoryview) and b.obj is command for b in buffers)
    # A data set that fits in one PDV is passed through as the caller's object.
    small = b"small data set"
    assert fragment_message(1, command, small, 16382)[-1] is small


def test_fragment_no_limit_uses_cap() -> None:
    dataset = bytes(3 * NO_LIMIT_PDU_LENGTH)
    pdvs = to_pdvs(fragment_message(1, b"\x00" * 20, dataset, 0))
    sizes = [len(item.data) for item in pdvs if not item.is_command]
    assert sizes == [NO_LIMIT_PDU_LENGTH - 6] * 3 + [18]


@pytest.mark.parametrize("max_pdu", [-1, 1, 6, 0x100000000, 1.5, True])
def test_fragment_bad_max_pdu(max_pdu) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LocalProtocolError):
        fragment_message(1, b"\x00" * 12, None, max_pdu)
    with pytest.raises(LocalProtocolError):
        next(iter_dataset_pdus(1, [b"x"], max_pdu))


@pytest.mark.parametrize("context_id", [0, 2, 256, -1])
def test_fragment_bad_context(context_id: int) -> None:
    with pytest.raises(LocalProtocolError):
        fragment_message(context_id, b"\x00" * 12, None, 100)


def stream(chunks: list[bytes], max_pdu: int) -> tuple[list[list[bytes | memoryview]], list[PDV]]:
    batches = list(iter_dataset_pdus(9, chunks, max_pdu))
    return batches, to_pdvs(b for batch in batches for b in batch)


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 300), max_size=12),
    st.sampled_from([7, 8, 16, 50, 106, 16382, 0]),
)
def test_iter_dataset_pdus(sizes: list[int], max_pdu: int) -> None:
    chunks = [bytes((n + i) % 256 for i in range(n)) for n in sizes]
    whole = b"".join(chunks)
    batches, pdvs = stream(chunks, max_pdu)
    limit = (max_pdu or NO_LIMIT_PDU_LENGTH) - 6
    assert all(batches)
    assert b"".join(bytes(item.data) for item in pdvs) == whole
    assert all(not item.is_command and item.context_id == 9 for item in pdvs)
    assert [item.is_last for item in pdvs] == [False] * (len(pdvs) - 1) + [True]
    # Full PDVs except the last, which is empty only for an empty data set.
    assert all(len(item.data) == limit for item in pdvs[:-1])
    assert len(pdvs[-1].data) > 0 or not whole
    assert len(pdvs) == max(1, -(-len(whole) // limit))
    # The data set feeds the assembler after its command.
    command = fragment_message(9, encode_command(STORE), None, 100)
    events = assemble(to_pdvs(command) + pdvs)
    assert b"".join(bytes(e.data) for e in events[1:]) == whole


def test_iter_dataset_pdus_zero_copy_and_lazy() -> None:
    chunks = [bytes([n]) * 1000 for n in range(5)]
    pulled = []

    def source():  # type: ignore[no-untyped-def]
        for chunk in chunks:
            pulled.append(chunk)
            yield chunk

    gen = iter_dataset_pdus(1, source(), 406)
    first = next(gen)
    # 1000 bytes > one PDV of 400: two PDVs go out after the first chunk alone.
    assert len(pulled) == 1
    for part in first:
        if len(part) != 12:
            assert isinstance(part, memoryview) and part.obj is chunks[0]
    rest = list(gen)
    assert len(pulled) == 5
    pdvs = to_pdvs(b for batch in [first, *rest] for b in batch)
    assert [len(item.data) for item in pdvs] == [400] * 12 + [200]
    assert pdvs[-1].is_last and not any(item.is_last for item in pdvs[:-1])


def test_iter_dataset_pdus_exact_multiple_and_empty() -> None:
    _, pdvs = stream([b"a" * 10, b"b" * 10], 16)
    assert [(len(item.data), item.is_last) for item in pdvs] == [(10, False), (10, True)]
    _, pdvs = stream([], 16)
    assert [(len(item.data), item.is_last) for item in pdvs] == [(0, True)]
    _, pdvs = stream([b"", b""], 16)
    assert [(len(item.data), item.is_last) for item in pdvs] == [(0, True)]


# --------------------------------------------------------------------------
# Assembly.

ECHO = encode_command(CEchoRQ(1))
STORE_CMD = encode_command(STORE)


def test_assembler_passes_data_views_through() -> None:
    buffer = bytearray(b"0123456789")
    view = memoryview(buffer)[2:8]
    assembler = MessageAssembler()
    assert assembler.feed(pdv(1, True, True, STORE_CMD)) == [CommandReceived(1, STORE)]
    assert assembler.expecting_dataset and assembler.in_message
    (event,) = assembler.feed(PDV(context_id=1, is_command=False, is_last=False, data=view))
    assert event.data is view and event.data.obj is buffer and not event.is_last
    (event,) = assembler.feed(pdv(1, False, True))
    assert event == DatasetFragment(1, event.data, True) and len(event.data) == 0
    assert not assembler.in_message
    # Back to waiting for a command.
    assert assembler.feed(pdv(1, True, True, ECHO)) == [CommandReceived(1, CEchoRQ(1))]


def test_assembler_joins_command_fragments() -> None:
    assembler = MessageAssembler()
    pieces = [ECHO[:5], b"", ECHO[5:30], ECHO[30:]]
    for piece in pieces[:-1]:
        assert assembler.feed(pdv(3, True, False, piece)) == []
        assert assembler.in_message and not assembler.expecting_dataset
    assert assembler.feed(pdv(3, True, True, pieces[-1])) == [CommandReceived(3, CEchoRQ(1))]
    assert not assembler.in_message
    # One byte per PDV.
    for index in range(len(STORE_CMD) - 1):
        assert assembler.feed(pdv(5, True, False, STORE_CMD[index : index + 1])) == []
    assert assembler.feed(pdv(5, True, True, STORE_CMD[-1:])) == [CommandReceived(5, STORE)]


def test_assembler_many_messages() -> None:
    pdvs = []
    for n in range(5):
        pdvs += to_pdvs(fragment_message(1 + 2 * n, encode_command(CEchoRQ(n)), None, 30))
        pdvs += to_pdvs(fragment_message(1 + 2 * n, STORE_CMD, bytes([n]) * 100, 30))
    events = assemble(pdvs)
    assert [e.command for e in events if isinstance(e, CommandReceived)] == [
        m for n in range(5) for m in (CEchoRQ(n), STORE)
    ]


VIOLATIONS = {
    "data before any command": [pdv(1, False, True, b"x")],
    "data after command without data set": [pdv(1, True, True, ECHO), pdv(1, False, True, b"x")],
    "data after data set ended": [
        pdv(1, True, True, STORE_CMD),
        pdv(1, False, True, b"x"),
        pdv(1, False, True, b"y"),
    ],
    "data before last command fragment": [
        pdv(1, True, False, STORE_CMD[:10]),
        pdv(1, False, True, b"x"),
    ],
    "data on other context": [pdv(1, True, True, STORE_CMD), pdv(3, False, True, b"x")],
    "new command while data set expected": [
        pdv(1, True, True, STORE_CMD),
        pdv(1, True, True, ECHO),
    ],
    "command fragment after data started": [
        pdv(1, True, True, STORE_CMD),
        pdv(1, False, False, b"x"),
        pdv(1, True, True, ECHO),
    ],
    "command on other context mid-command": [
        pdv(1, True, False, ECHO[:10]),
        pdv(3, True, True, ECHO[10:]),
    ],
    "command too long": [
        pdv(1, True, False, bytes(MAX_COMMAND_LENGTH)),
        pdv(1, True, True, b"\x00"),
    ],
    "command too long in one PDV": [pdv(1, True, True, bytes(MAX_COMMAND_LENGTH + 2))],
    "malformed command": [pdv(1, True, True, ECHO[:-2])],
}


@pytest.mark.parametrize("pdvs", list(VIOLATIONS.values()), ids=list(VIOLATIONS))
def test_assembler_violations(pdvs: list[PDV]) -> None:
    assembler = MessageAssembler()
    for item in pdvs[:-1]:
        assembler.feed(item)
    with pytest.raises(RemoteProtocolError) as exc:
        assembler.feed(pdvs[-1])
    assert_user_abort(exc)


pdv_strategy = st.builds(
    PDV,
    context_id=st.sampled_from([1, 3]),
    is_command=st.booleans(),
    is_last=st.booleans(),
    data=st.one_of(
        st.sampled_from([ECHO, STORE_CMD, ECHO[:20], ECHO[20:], STORE_CMD[:50], STORE_CMD[50:]]),
        st.binary(max_size=40),
    ).map(memoryview),
)


@settings(max_examples=400)
@given(st.lists(pdv_strategy, max_size=12))
def test_assembler_random_pdvs(pdvs: list[PDV]) -> None:
    assembler = MessageAssembler()
    try:
        for item in pdvs:
            events = assembler.feed(item)
            assert len(events) <= 1
            for event in events:
                assert isinstance(event, (CommandReceived, DatasetFragment))
                if isinstance(event, DatasetFragment):
                    assert event.data is item.data
    except RemoteProtocolError as exc:
        assert exc.abort_source == 0 and exc.abort_reason == 0
