"""Tests of engine._dimse: command sets (PS3.7 Annex E), assembly and fragmentation
(PS3.8 9.3.5, Annex E.2)."""

from __future__ import annotations

import ast
import io
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from engine import _dimse
from engine._dimse import (
    DATASET_ABSENT,
    DATASET_PRESENT,
    MAX_COMMAND_LENGTH,
    NO_LIMIT_PDU_LENGTH,
    VERIFICATION_SOP_CLASS,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    MessageAssembler,
    UnknownCommand,
    decode_command,
    encode_command,
    fragment_message,
    is_valid_uid,
    iter_dataset_pdus,
)
from engine._errors import LocalProtocolError, RemoteProtocolError
from engine._pdu import PDV

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789"


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


def test_command_field_constants() -> None:
    # PS3.7 Annex E Table E.1-1.
    assert CStoreRQ.command_field == 0x0001
    assert CStoreRSP.command_field == 0x8001
    assert CEchoRQ.command_field == 0x0030
    assert CEchoRSP.command_field == 0x8030


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

messages = st.one_of(
    st.builds(CEchoRQ, message_id=u16, affected_sop_class_uid=uids),
    st.builds(
        CEchoRSP,
        message_id_being_responded_to=u16,
        status=u16,
        affected_sop_class_uid=uids,
        error_comment=st.none() | text,
    ),
    st.builds(
        CStoreRQ,
        message_id=u16,
        affected_sop_class_uid=uids,
        affected_sop_instance_uid=uids,
        priority=st.sampled_from([0, 1, 2]),
        move_originator_application_entity_title=st.none() | ae,
        move_originator_message_id=st.none() | u16,
        command_data_set_type=dataset_types,
    ),
    st.builds(
        CStoreRSP,
        message_id_being_responded_to=u16,
        status=u16,
        affected_sop_class_uid=st.none() | uids,
        affected_sop_instance_uid=st.none() | uids,
        error_comment=st.none() | text,
        offending_element=st.none()
        | st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        UnknownCommand,
        command_field=st.sampled_from([0x0020, 0x8020, 0x0021, 0x0FFF, 0x0130, 0x1234]),
        message_id=st.none() | u16,
        elements=st.dictionaries(
            st.integers(1, 0xFFFF).filter(lambda t: t not in (0x0100, 0x0110, 0x0800)),
            st.binary(max_size=20).map(lambda b: b + b"\x00" * (len(b) & 1)),
            max_size=5,
        ).flatmap(
            lambda d: dataset_types.map(lambda t: {**d, 0x0800: struct.pack("<H", t)})
        ),
    ),
)


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
        UnknownCommand(0x0020, 5, {0x0002: b"1.2\x00", 0x0700: us(0), 0x0800: us(0x0001)}),
        UnknownCommand(0x0FFF, None, {0x0120: us(5), 0x0800: us(0x0101)}),
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


def test_decode_pydicom_find_rq_is_unknown() -> None:
    raw = pydicom_command(
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
        CommandField=0x0020,
        MessageID=11,
        Priority=0,
        CommandDataSetType=0x0001,
    )
    message = decode_command(raw)
    assert isinstance(message, UnknownCommand)
    assert message.command_field == 0x0020
    assert message.name == "C-FIND-RQ"
    assert message.is_request
    assert message.message_id == 11
    assert message.has_dataset
    assert message.elements[0x0002] == b"1.2.840.10008.5.1.4.1.2.2.1\x00"
    assert set(message.elements) == {0x0002, 0x0700, 0x0800}


def test_decode_cancel_rq_is_unknown_without_message_id() -> None:
    raw = pydicom_command(
        CommandField=0x0FFF, MessageIDBeingRespondedTo=11, CommandDataSetType=0x0101
    )
    message = decode_command(raw)
    assert isinstance(message, UnknownCommand)
    assert message.message_id is None and not message.has_dataset
    assert message.name == "C-CANCEL-RQ"


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
        element(0x0100, us(0x20)), element(0x0110, b"\x01\x00\x00\x00"), element(0x0800, us(1))
    ),
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


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_decode_malformed(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        decode_command(raw)
    assert_user_abort(exc)


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
    ],
)
def test_invalid_construction(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LocalProtocolError):
        build()


def test_encode_rejects_non_message() -> None:
    with pytest.raises(LocalProtocolError):
        encode_command("C-ECHO")  # type: ignore[arg-type]


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
