"""DIMSE command sets, message assembly and message fragmentation, sans-IO.

Theory of operation: this module owns the DIMSE layer between the P-DATA service
of the Upper Layer (PDVs in, P-DATA-TF buffers out) and the service classes.

* **Command sets** (PS3.7 6.3, Annex E). :func:`encode_command` turns one of the
  frozen message structs into a group 0000 Implicit VR Little Endian command set
  with a correct Command Group Length first; :func:`decode_command` does the
  reverse and validates everything it reads from the peer. Command fields this
  engine does not serve become :class:`UnknownCommand`, so the service user can
  answer "unrecognized operation" (0211H) instead of aborting.
* **Assembly** (PS3.7 6.3.1, PS3.8 Annex E.2). :class:`MessageAssembler` is fed
  PDVs in arrival order and emits :class:`CommandReceived` once a command set is
  complete and one :class:`DatasetFragment` per data PDV, passing the PDV's
  memoryview through untouched: a data set is never buffered here; storage
  decides what to do with each fragment.
* **Fragmentation** (PS3.8 9.3.5, Annex E). :func:`fragment_message` and
  :func:`iter_dataset_pdus` cut a message into single-PDV P-DATA-TF PDUs as a
  flat list of buffers for ``transport.writelines``: a 12-byte header from
  :func:`pdata_header` followed by zero-copy memoryview slices of the payload.

DIMSE is the service-user of the Upper Layer, so every DIMSE protocol violation
by the peer raises :class:`RemoteProtocolError` carrying a *service-user* A-ABORT
(source 0, reason 0; PS3.8 Table 9-26). Misuse by our own caller raises
:class:`LocalProtocolError`. Nothing here does I/O, keeps time or touches data set
contents.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import ClassVar, Final, NoReturn, TypeAlias

import msgspec

from ._errors import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_USER,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._pdu import PDV, pdata_header

__all__ = [
    "C_STORE_RQ",
    "C_STORE_RSP",
    "C_GET_RQ",
    "C_GET_RSP",
    "C_FIND_RQ",
    "C_FIND_RSP",
    "C_MOVE_RQ",
    "C_MOVE_RSP",
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "C_CANCEL_RQ",
    "N_EVENT_REPORT_RQ",
    "N_EVENT_REPORT_RSP",
    "N_GET_RQ",
    "N_GET_RSP",
    "N_SET_RQ",
    "N_SET_RSP",
    "N_ACTION_RQ",
    "N_ACTION_RSP",
    "N_CREATE_RQ",
    "N_CREATE_RSP",
    "N_DELETE_RQ",
    "N_DELETE_RSP",
    "COMMAND_NAMES",
    "DATASET_ABSENT",
    "DATASET_PRESENT",
    "PRIORITY_MEDIUM",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "VERIFICATION_SOP_CLASS",
    "MAX_COMMAND_LENGTH",
    "NO_LIMIT_PDU_LENGTH",
    "CEchoRQ",
    "CEchoRSP",
    "CStoreRQ",
    "CStoreRSP",
    "UnknownCommand",
    "DimseMessage",
    "CommandReceived",
    "DatasetFragment",
    "AssemblerEvent",
    "MessageAssembler",
    "encode_command",
    "decode_command",
    "fragment_message",
    "iter_dataset_pdus",
    "is_valid_uid",
]

# PS3.7 Annex E Table E.1-1: Command Field (0000,0100) values.
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
N_EVENT_REPORT_RQ: Final = 0x0100
N_EVENT_REPORT_RSP: Final = 0x8100
N_GET_RQ: Final = 0x0110
N_GET_RSP: Final = 0x8110
N_SET_RQ: Final = 0x0120
N_SET_RSP: Final = 0x8120
N_ACTION_RQ: Final = 0x0130
N_ACTION_RSP: Final = 0x8130
N_CREATE_RQ: Final = 0x0140
N_CREATE_RSP: Final = 0x8140
N_DELETE_RQ: Final = 0x0150
N_DELETE_RSP: Final = 0x8150
C_CANCEL_RQ: Final = 0x0FFF

COMMAND_NAMES: Final[dict[int, str]] = {
    C_STORE_RQ: "C-STORE-RQ",
    C_STORE_RSP: "C-STORE-RSP",
    C_GET_RQ: "C-GET-RQ",
    C_GET_RSP: "C-GET-RSP",
    C_FIND_RQ: "C-FIND-RQ",
    C_FIND_RSP: "C-FIND-RSP",
    C_MOVE_RQ: "C-MOVE-RQ",
    C_MOVE_RSP: "C-MOVE-RSP",
    C_ECHO_RQ: "C-ECHO-RQ",
    C_ECHO_RSP: "C-ECHO-RSP",
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT-RQ",
    N_EVENT_REPORT_RSP: "N-EVENT-REPORT-RSP",
    N_GET_RQ: "N-GET-RQ",
    N_GET_RSP: "N-GET-RSP",
    N_SET_RQ: "N-SET-RQ",
    N_SET_RSP: "N-SET-RSP",
    N_ACTION_RQ: "N-ACTION-RQ",
    N_ACTION_RSP: "N-ACTION-RSP",
    N_CREATE_RQ: "N-CREATE-RQ",
    N_CREATE_RSP: "N-CREATE-RSP",
    N_DELETE_RQ: "N-DELETE-RQ",
    N_DELETE_RSP: "N-DELETE-RSP",
    C_CANCEL_RQ: "C-CANCEL-RQ",
}

# PS3.7 Annex E Table E.1-1, Command Data Set Type (0000,0800): "0101H if no Data
# Set is present; any other value shall indicate a Data Set is present". We send
# 0001H when one follows, the value pynetdicom and DCMTK-era peers send; on
# receipt every value other than 0101H means "present".
DATASET_ABSENT: Final = 0x0101
DATASET_PRESENT: Final = 0x0001

# PS3.7 9.1.1.1.x / Annex E Table E.1-1, Priority (0000,0700).
PRIORITY_MEDIUM: Final = 0x0000
PRIORITY_HIGH: Final = 0x0001
PRIORITY_LOW: Final = 0x0002
_PRIORITIES: Final = frozenset((PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW))

# PS3.4 Annex A: the Verification SOP Class, the Affected SOP Class of C-ECHO.
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

# A command set is a few hundred bytes (the largest standard one, N-EVENT-REPORT
# with every optional field, stays under 1 KiB); 64 KiB is far past any honest
# peer and bounds what a hostile one makes us buffer before decoding.
MAX_COMMAND_LENGTH: Final = 64 * 1024

# When the peer's Maximum Length is 0 ("no limit", PS3.8 D.1) we still cut PDUs
# at 1 MiB so that one send never builds or pins a giant buffer and other
# associations' writes interleave; 1 MiB is far past the point where per-PDU
# overhead (12 bytes) matters.
NO_LIMIT_PDU_LENGTH: Final = 1024 * 1024

# PS3.8 9.3.5 / Annex E: a PDV item is a 4-byte Item-length, a 1-byte
# Presentation-context-ID and a 1-byte Message Control Header, then the data.
_PDV_OVERHEAD: Final = 6

# PS3.5 6.2 Table 6.2-1: maximum value lengths of the VRs used in command sets.
_UI_MAX: Final = 64
_AE_MAX: Final = 16
_LO_MAX: Final = 64

# PS3.8 9.3.2.2.1: a Presentation Context ID is an odd integer between 1 and 255.
_MAX_CONTEXT_ID: Final = 255

# PS3.5 6.2: US values are 16 bits; UL values and AT tags 32 bits, as is the
# PDU-length field that bounds a peer's Maximum Length (PS3.8 9.3.1, D.1).
_MAX_US: Final = 0xFFFF
_MAX_UL: Final = 0xFFFFFFFF

# Element numbers (group 0000) of PS3.7 Annex E Table E.1-1 used here.
_GROUP_LENGTH: Final = 0x0000
_AFFECTED_SOP_CLASS_UID: Final = 0x0002
_COMMAND_FIELD: Final = 0x0100
_MESSAGE_ID: Final = 0x0110
_MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x0120
_PRIORITY: Final = 0x0700
_COMMAND_DATA_SET_TYPE: Final = 0x0800
_STATUS: Final = 0x0900
_OFFENDING_ELEMENT: Final = 0x0901
_ERROR_COMMENT: Final = 0x0902
_AFFECTED_SOP_INSTANCE_UID: Final = 0x1000
_MOVE_ORIGINATOR_AE_TITLE: Final = 0x1030
_MOVE_ORIGINATOR_MESSAGE_ID: Final = 0x1031

# Elements an UnknownCommand carries in its own fields instead of ``elements``.
_UNKNOWN_COMMAND_OWN: Final = frozenset((_GROUP_LENGTH, _COMMAND_FIELD, _MESSAGE_ID))

# PS3.5 7.1.2: Implicit VR Little Endian element header = group, element, length.
_ELEMENT_HEADER: Final = struct.Struct("<HHI")
_US_ELEMENT: Final = struct.Struct("<HHIH")
_UL_ELEMENT: Final = struct.Struct("<HHII")
_AT_VALUE: Final = struct.Struct("<HH")
_ELEMENT_HEADER_LENGTH: Final = 8  # group (2) + element (2) + value length (4)
_GROUP_LENGTH_ELEMENT_LENGTH: Final = 12  # the header plus a 4-byte UL value


# --------------------------------------------------------------------------
# Field validation (shared by construction, encoding and decoding).


def _check_us(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_US:
        raise LocalProtocolError(f"{name} must be an int in 0..0xFFFF (US), got {value!r}")


def _check_text(name: str, value: object, max_length: int) -> None:
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise LocalProtocolError(f"{name} must be printable ASCII, got {value!r}")
    if len(value) > max_length:
        raise LocalProtocolError(f"{name} longer than {max_length} characters: {value!r}")


def _check_uid(name: str, value: object) -> None:
    _check_text(name, value, _UI_MAX)


def _check_ae(name: str, value: object) -> None:
    # PS3.5 6.2: AE is at most 16 characters of the default repertoire, no
    # control characters and no backslash.
    if (
        not isinstance(value, bytes)
        or len(value) > _AE_MAX
        or not all(0x20 <= c < 0x7F and c != 0x5C for c in value)
    ):
        raise LocalProtocolError(f"{name} must be at most {_AE_MAX} AE characters: {value!r}")


def _check_context_id(context_id: object) -> None:
    if (
        isinstance(context_id, bool)
        or not isinstance(context_id, int)
        or not 1 <= context_id <= _MAX_CONTEXT_ID
        or not context_id & 1
    ):
        raise LocalProtocolError(f"presentation context ID must be odd 1..255: {context_id!r}")


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` follows the UID syntax of PS3.5 9.1.

    Components of digits separated by ``.``, no empty component, no leading zero
    in a multi-digit component, at most 64 characters. :func:`decode_command`
    only checks that UIDs are printable ASCII of at most 64 characters, so that a
    malformed UID can be answered with a status (e.g. 0117H Invalid SOP Instance)
    rather than an A-ABORT; whoever turns a UID into a name must check this.
    """
    if not 0 < len(uid) <= _UI_MAX or not uid.isascii():
        return False
    for component in uid.split("."):
        if not component.isdigit() or (len(component) > 1 and component[0] == "0"):
            return False
    return True


# --------------------------------------------------------------------------
# Messages (PS3.7 9.3.1 C-STORE, 9.3.5 C-ECHO).


class CEchoRQ(msgspec.Struct, frozen=True):
    """C-ECHO-RQ, PS3.7 9.3.5.1 Table 9.3-12."""

    message_id: int
    affected_sop_class_uid: str = VERIFICATION_SOP_CLASS
    command_data_set_type: int = DATASET_ABSENT

    command_field: ClassVar[int] = C_ECHO_RQ

    def __post_init__(self) -> None:
        _check_us("Message ID", self.message_id)
        _check_uid("Affected SOP Class UID", self.affected_sop_class_uid)
        _check_us("Command Data Set Type", self.command_data_set_type)

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows (PS3.7 Annex E, (0000,0800) != 0101H)."""
        return self.command_data_set_type != DATASET_ABSENT


class CEchoRSP(msgspec.Struct, frozen=True):
    """C-ECHO-RSP, PS3.7 9.3.5.2 Table 9.3-13."""

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str = VERIFICATION_SOP_CLASS
    error_comment: str | None = None
    command_data_set_type: int = DATASET_ABSENT

    command_field: ClassVar[int] = C_ECHO_RSP

    def __post_init__(self) -> None:
        _check_us("Message ID Being Responded To", self.message_id_being_responded_to)
        _check_us("Status", self.status)
        _check_uid("Affected SOP Class UID", self.affected_sop_class_uid)
        if self.error_comment is not None:
            _check_text("Error Comment", self.error_comment, _LO_MAX)
        _check_us("Command Data Set Type", self.command_data_set_type)

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows (PS3.7 Annex E, (0000,0800) != 0101H)."""
        return self.command_data_set_type != DATASET_ABSENT


class CStoreRQ(msgspec.Struct, frozen=True):
    """C-STORE-RQ, PS3.7 9.3.1.1 Table 9.3-1."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = PRIORITY_MEDIUM
    move_originator_application_entity_title: bytes | None = None
    move_originator_message_id: int | None = None
    command_data_set_type: int = DATASET_PRESENT

    command_field: ClassVar[int] = C_STORE_RQ

    def __post_init__(self) -> None:
        _check_us("Message ID", self.message_id)
        _check_uid("Affected SOP Class UID", self.affected_sop_class_uid)
        _check_uid("Affected SOP Instance UID", self.affected_sop_instance_uid)
        _check_us("Priority", self.priority)
        if self.priority not in _PRIORITIES:
            raise LocalProtocolError(f"Priority must be 0, 1 or 2, got {self.priority!r}")
        if self.move_originator_application_entity_title is not None:
            _check_ae(
                "Move Originator Application Entity Title",
                self.move_originator_application_entity_title,
            )
        if self.move_originator_message_id is not None:
            _check_us("Move Originator Message ID", self.move_originator_message_id)
        _check_us("Command Data Set Type", self.command_data_set_type)

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows (PS3.7 Annex E, (0000,0800) != 0101H)."""
        return self.command_data_set_type != DATASET_ABSENT


class CStoreRSP(msgspec.Struct, frozen=True):
    """C-STORE-RSP, PS3.7 9.3.1.2 Table 9.3-2.

    ``offending_element`` holds tags as ``0xGGGGEEEE`` ints (AT, VM 1-n).
    """

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    command_data_set_type: int = DATASET_ABSENT

    command_field: ClassVar[int] = C_STORE_RSP

    def __post_init__(self) -> None:
        _check_us("Message ID Being Responded To", self.message_id_being_responded_to)
        _check_us("Status", self.status)
        if self.affected_sop_class_uid is not None:
            _check_uid("Affected SOP Class UID", self.affected_sop_class_uid)
        if self.affected_sop_instance_uid is not None:
            _check_uid("Affected SOP Instance UID", self.affected_sop_instance_uid)
        if self.error_comment is not None:
            _check_text("Error Comment", self.error_comment, _LO_MAX)
        if self.offending_element is not None:
            if not isinstance(self.offending_element, tuple) or not all(
                isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag <= _MAX_UL
                for tag in self.offending_element
            ):
                raise LocalProtocolError(
                    f"Offending Element must be a tuple of 32-bit tags: {self.offending_element!r}"
                )
        _check_us("Command Data Set Type", self.command_data_set_type)

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows (PS3.7 Annex E, (0000,0800) != 0101H)."""
        return self.command_data_set_type != DATASET_ABSENT


class UnknownCommand(msgspec.Struct, frozen=True):
    """A well-formed command set whose Command Field this engine does not serve.

    PS3.7 Annex E: ``elements`` maps each group 0000 tag (equal to its element
    number) to its raw, even-length value, except Command Group Length, Command
    Field and Message ID, which are carried by the struct itself. Command Data Set
    Type (0000,0800) is mandatory in every command (PS3.7 Annex E), so it is
    always present and tells whether a data set follows. The service user answers
    a request with status 0211H (unrecognized operation).
    """

    command_field: int
    message_id: int | None
    elements: dict[int, bytes]

    def __post_init__(self) -> None:
        _check_us("Command Field", self.command_field)
        if self.message_id is not None:
            _check_us("Message ID", self.message_id)
        if not isinstance(self.elements, dict):
            raise LocalProtocolError("elements must be a dict of tag -> bytes")
        for tag, value in self.elements.items():
            if (
                not isinstance(tag, int)
                or not 0 < tag <= _MAX_US
                or tag in _UNKNOWN_COMMAND_OWN
                or not isinstance(value, bytes)
                or len(value) & 1
            ):
                raise LocalProtocolError(
                    f"element (0000,{tag!r}) must be a group 0000 tag other than "
                    f"0000/0100/0110 with an even-length bytes value"
                )
        cdst = self.elements.get(_COMMAND_DATA_SET_TYPE)
        if cdst is None or len(cdst) != 2:
            raise LocalProtocolError("Command Data Set Type (0000,0800) US is required")

    @property
    def command_data_set_type(self) -> int:
        """Command Data Set Type (0000,0800) as the peer sent it."""
        value = self.elements[_COMMAND_DATA_SET_TYPE]
        return value[0] | value[1] << 8

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows (PS3.7 Annex E, (0000,0800) != 0101H)."""
        return self.command_data_set_type != DATASET_ABSENT

    @property
    def is_request(self) -> bool:
        """PS3.7 Annex E: response Command Field values have bit 15 set."""
        return not self.command_field & 0x8000

    @property
    def name(self) -> str:
        """The PS3.7 name of the command, or its hex value."""
        return COMMAND_NAMES.get(self.command_field, f"command 0x{self.command_field:04X}")


DimseMessage: TypeAlias = CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP | UnknownCommand


# --------------------------------------------------------------------------
# Encoding (PS3.7 6.3.1: group 0000, Implicit VR Little Endian, ascending tags).


def _us(element: int, value: int) -> bytes:
    return _US_ELEMENT.pack(0, element, 2, value)


def _text(element: int, raw: bytes, pad: bytes) -> bytes:
    """An element of a string VR, padded to even length (PS3.5 6.2)."""
    if len(raw) & 1:
        raw += pad
    return _ELEMENT_HEADER.pack(0, element, len(raw)) + raw


def _ui(element: int, uid: str) -> bytes:
    # PS3.5 6.2: UI values are padded with a single trailing NUL.
    return _text(element, uid.encode("ascii"), b"\x00")


def _string(element: int, value: str) -> bytes:
    # PS3.5 6.2: LO values are padded with a single trailing space.
    return _text(element, value.encode("ascii"), b" ")


def _at(element: int, tags: tuple[int, ...]) -> bytes:
    raw = b"".join(_AT_VALUE.pack(tag >> 16, tag & 0xFFFF) for tag in tags)
    return _ELEMENT_HEADER.pack(0, element, len(raw)) + raw


def _elements_of(msg: DimseMessage) -> list[bytes]:
    """Encoded elements of ``msg`` in ascending tag order, group length excluded."""
    parts: list[bytes] = []
    if isinstance(msg, CStoreRQ):
        # PS3.7 Table 9.3-1.
        parts.append(_ui(_AFFECTED_SOP_CLASS_UID, msg.affected_sop_class_uid))
        parts.append(_us(_COMMAND_FIELD, C_STORE_RQ))
        parts.append(_us(_MESSAGE_ID, msg.message_id))
        parts.append(_us(_PRIORITY, msg.priority))
        parts.append(_us(_COMMAND_DATA_SET_TYPE, msg.command_data_set_type))
        parts.append(_ui(_AFFECTED_SOP_INSTANCE_UID, msg.affected_sop_instance_uid))
        if msg.move_originator_application_entity_title is not None:
            # PS3.5 6.2: AE values are padded with a trailing space.
            parts.append(
                _text(_MOVE_ORIGINATOR_AE_TITLE, msg.move_originator_application_entity_title, b" ")
            )
        if msg.move_originator_message_id is not None:
            parts.append(_us(_MOVE_ORIGINATOR_MESSAGE_ID, msg.move_originator_message_id))
    elif isinstance(msg, CStoreRSP):
        # PS3.7 Table 9.3-2.
        if msg.affected_sop_class_uid is not None:
            parts.append(_ui(_AFFECTED_SOP_CLASS_UID, msg.affected_sop_class_uid))
        parts.append(_us(_COMMAND_FIELD, C_STORE_RSP))
        parts.append(_us(_MESSAGE_ID_BEING_RESPONDED_TO, msg.message_id_being_responded_to))
        parts.append(_us(_COMMAND_DATA_SET_TYPE, msg.command_data_set_type))
        parts.append(_us(_STATUS, msg.status))
        if msg.offending_element is not None:
            parts.append(_at(_OFFENDING_ELEMENT, msg.offending_element))
        if msg.error_comment is not None:
            parts.append(_string(_ERROR_COMMENT, msg.error_comment))
        if msg.affected_sop_instance_uid is not None:
            parts.append(_ui(_AFFECTED_SOP_INSTANCE_UID, msg.affected_sop_instance_uid))
    elif isinstance(msg, CEchoRQ):
        # PS3.7 Table 9.3-12.
        parts.append(_ui(_AFFECTED_SOP_CLASS_UID, msg.affected_sop_class_uid))
        parts.append(_us(_COMMAND_FIELD, C_ECHO_RQ))
        parts.append(_us(_MESSAGE_ID, msg.message_id))
        parts.append(_us(_COMMAND_DATA_SET_TYPE, msg.command_data_set_type))
    elif isinstance(msg, CEchoRSP):
        # PS3.7 Table 9.3-13.
        parts.append(_ui(_AFFECTED_SOP_CLASS_UID, msg.affected_sop_class_uid))
        parts.append(_us(_COMMAND_FIELD, C_ECHO_RSP))
        parts.append(_us(_MESSAGE_ID_BEING_RESPONDED_TO, msg.message_id_being_responded_to))
        parts.append(_us(_COMMAND_DATA_SET_TYPE, msg.command_data_set_type))
        parts.append(_us(_STATUS, msg.status))
        if msg.error_comment is not None:
            parts.append(_string(_ERROR_COMMENT, msg.error_comment))
    elif isinstance(msg, UnknownCommand):
        fields = {tag: _ELEMENT_HEADER.pack(0, tag, len(v)) + v for tag, v in msg.elements.items()}
        fields[_COMMAND_FIELD] = _us(_COMMAND_FIELD, msg.command_field)
        if msg.message_id is not None:
            fields[_MESSAGE_ID] = _us(_MESSAGE_ID, msg.message_id)
        parts.extend(fields[tag] for tag in sorted(fields))
    else:
        raise LocalProtocolError(f"not a DIMSE message: {type(msg).__name__}")
    return parts


def encode_command(msg: DimseMessage) -> bytes:
    """Encode ``msg`` as a command set (PS3.7 6.3.1, Annex E).

    Group 0000 in Implicit VR Little Endian (PS3.5 A.1), elements in ascending
    tag order (PS3.5 7.1), values padded to even length (UI with NUL, AE and LO
    with space; PS3.5 6.2), Command Group Length (0000,0000) UL first and equal
    to the length of everything after it (PS3.7 E.1).
    """
    parts = _elements_of(msg)
    length = sum(map(len, parts))
    return _UL_ELEMENT.pack(0, _GROUP_LENGTH, 4, length) + b"".join(parts)


# --------------------------------------------------------------------------
# Decoding.


def _fail(reason: str) -> NoReturn:
    """Raise the DIMSE service-user A-ABORT (PS3.8 9.3.8, Table 9-26: source 0)."""
    raise RemoteProtocolError(
        f"malformed DIMSE message: {reason}",
        abort_source=ABORT_SOURCE_USER,
        abort_reason=ABORT_REASON_NOT_SPECIFIED,
    )


def _name(element: int) -> str:
    return f"(0000,{element:04X})"


def _required(elements: dict[int, memoryview], element: int) -> memoryview:
    value = elements.get(element)
    if value is None:
        _fail(f"required element {_name(element)} missing")
    return value


def _us_value(element: int, value: memoryview) -> int:
    if len(value) != 2:
        _fail(f"{_name(element)} is US but {len(value)} bytes long")
    return value[0] | value[1] << 8


def _ascii(element: int, raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        _fail(f"{_name(element)} is not ASCII")


def _req_us(elements: dict[int, memoryview], element: int) -> int:
    return _us_value(element, _required(elements, element))


def _opt_us(elements: dict[int, memoryview], element: int) -> int | None:
    value = elements.get(element)
    if value is None or not len(value):
        return None
    return _us_value(element, value)


def _req_uid(elements: dict[int, memoryview], element: int) -> str:
    # PS3.5 6.2: UI padded with NUL; trailing spaces are tolerated (common bug).
    return _ascii(element, bytes(_required(elements, element)).rstrip(b"\x00 "))


def _opt_uid(elements: dict[int, memoryview], element: int) -> str | None:
    value = elements.get(element)
    if value is None:
        return None
    raw = bytes(value).rstrip(b"\x00 ")
    return _ascii(element, raw) if raw else None


def _opt_lo(elements: dict[int, memoryview], element: int) -> str | None:
    value = elements.get(element)
    if value is None:
        return None
    # PS3.5 6.2: leading and trailing spaces of LO are not significant.
    raw = bytes(value).rstrip(b"\x00 ").lstrip(b" ")
    return _ascii(element, raw) if raw else None


def _opt_ae(elements: dict[int, memoryview], element: int) -> bytes | None:
    value = elements.get(element)
    if value is None:
        return None
    # PS3.5 6.2: leading and trailing spaces of AE are not significant.
    raw = bytes(value).rstrip(b"\x00 ").lstrip(b" ")
    return raw or None


def _opt_at(elements: dict[int, memoryview], element: int) -> tuple[int, ...] | None:
    value = elements.get(element)
    if value is None or len(value) == 0:
        return None
    if len(value) % 4:
        _fail(f"{_name(element)} is AT but {len(value)} bytes long")
    return tuple(group << 16 | elem for group, elem in _AT_VALUE.iter_unpack(value))


def _parse_elements(data: bytes | memoryview) -> dict[int, memoryview]:
    """Split a command set into its elements (PS3.5 7.1.2, PS3.7 6.3.1)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    size = len(view)
    if size < _GROUP_LENGTH_ELEMENT_LENGTH:
        _fail(f"command set of {size} bytes cannot hold Command Group Length")
    group, element, length = _ELEMENT_HEADER.unpack_from(view, 0)
    if group != 0 or element != _GROUP_LENGTH or length != 4:
        _fail("command set does not start with Command Group Length (0000,0000) UL")
    (group_length,) = struct.unpack_from("<I", view, _ELEMENT_HEADER_LENGTH)
    if group_length != size - _GROUP_LENGTH_ELEMENT_LENGTH:
        _fail(
            f"Command Group Length says {group_length} bytes follow, "
            f"{size - _GROUP_LENGTH_ELEMENT_LENGTH} do"
        )
    elements: dict[int, memoryview] = {}
    offset = _GROUP_LENGTH_ELEMENT_LENGTH
    previous = _GROUP_LENGTH
    while offset < size:
        if size - offset < _ELEMENT_HEADER_LENGTH:
            _fail(f"truncated element header at offset {offset}")
        group, element, length = _ELEMENT_HEADER.unpack_from(view, offset)
        offset += _ELEMENT_HEADER_LENGTH
        if group != 0:
            _fail(f"element ({group:04X},{element:04X}) outside group 0000 in a command set")
        if element <= previous:
            # PS3.5 7.1: ascending tag order, each tag at most once.
            _fail(f"element {_name(element)} out of order or repeated")
        if length > size - offset:
            _fail(f"element {_name(element)} length {length} overruns the command set")
        if length & 1:
            # PS3.5 7.1.1: value lengths are even.
            _fail(f"element {_name(element)} has odd length {length}")
        elements[element] = view[offset : offset + length]
        offset += length
        previous = element
    return elements


def _build(elements: dict[int, memoryview]) -> DimseMessage:
    command_field = _req_us(elements, _COMMAND_FIELD)
    cdst = _req_us(elements, _COMMAND_DATA_SET_TYPE)
    if command_field == C_STORE_RQ:
        return CStoreRQ(
            message_id=_req_us(elements, _MESSAGE_ID),
            affected_sop_class_uid=_req_uid(elements, _AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid=_req_uid(elements, _AFFECTED_SOP_INSTANCE_UID),
            priority=_req_us(elements, _PRIORITY),
            move_originator_application_entity_title=_opt_ae(
                elements, _MOVE_ORIGINATOR_AE_TITLE
            ),
            move_originator_message_id=_opt_us(elements, _MOVE_ORIGINATOR_MESSAGE_ID),
            command_data_set_type=cdst,
        )
    if command_field == C_STORE_RSP:
        return CStoreRSP(
            message_id_being_responded_to=_req_us(elements, _MESSAGE_ID_BEING_RESPONDED_TO),
            status=_req_us(elements, _STATUS),
            affected_sop_class_uid=_opt_uid(elements, _AFFECTED_SOP_CLASS_UID),
            affected_sop_instance_uid=_opt_uid(elements, _AFFECTED_SOP_INSTANCE_UID),
            error_comment=_opt_lo(elements, _ERROR_COMMENT),
            offending_element=_opt_at(elements, _OFFENDING_ELEMENT),
            command_data_set_type=cdst,
        )
    if command_field == C_ECHO_RQ:
        return CEchoRQ(
            message_id=_req_us(elements, _MESSAGE_ID),
            affected_sop_class_uid=_req_uid(elements, _AFFECTED_SOP_CLASS_UID),
            command_data_set_type=cdst,
        )
    if command_field == C_ECHO_RSP:
        # PS3.7 Table 9.3-13: Affected SOP Class UID is U; its only value is Verification.
        uid = _opt_uid(elements, _AFFECTED_SOP_CLASS_UID)
        return CEchoRSP(
            message_id_being_responded_to=_req_us(elements, _MESSAGE_ID_BEING_RESPONDED_TO),
            status=_req_us(elements, _STATUS),
            affected_sop_class_uid=VERIFICATION_SOP_CLASS if uid is None else uid,
            error_comment=_opt_lo(elements, _ERROR_COMMENT),
            command_data_set_type=cdst,
        )
    return UnknownCommand(
        command_field=command_field,
        message_id=_opt_us(elements, _MESSAGE_ID),
        elements={
            tag: bytes(value)
            for tag, value in elements.items()
            if tag not in _UNKNOWN_COMMAND_OWN
        },
    )


def decode_command(data: bytes | memoryview) -> DimseMessage:
    """Decode a complete command set received from the peer (PS3.7 6.3.1, Annex E).

    Checks: Command Group Length (0000,0000) UL first and equal to the bytes after
    it; group 0000 only; ascending, unique tags; every length even and inside the
    buffer; the fields PS3.7 Tables 9.3-1, 9.3-2, 9.3-12 and 9.3-13 mark mandatory
    present, US values 2 bytes, UIDs printable ASCII of at most 64 characters,
    Priority 0/1/2. Command Data Set Type is honoured as sent (``has_dataset``). An
    empty optional element decodes as absent. A Command Field other than C-STORE
    and C-ECHO gives :class:`UnknownCommand`.

    Raises :class:`RemoteProtocolError` (service-user A-ABORT, source 0 reason 0)
    for anything malformed, and nothing else for any input.
    """
    elements = _parse_elements(data)
    try:
        return _build(elements)
    except LocalProtocolError as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------
# Assembly (PS3.7 6.3.1, PS3.8 Annex E.2).


class CommandReceived(msgspec.Struct, frozen=True):
    """A complete command set arrived on presentation context ``context_id``."""

    context_id: int
    command: DimseMessage


class DatasetFragment(msgspec.Struct, frozen=True):
    """One data PDV of the current message's data set, passed through untouched."""

    context_id: int
    data: memoryview
    is_last: bool


AssemblerEvent: TypeAlias = CommandReceived | DatasetFragment


class MessageAssembler:
    """Rebuild DIMSE messages from the PDVs of received P-DATA-TF PDUs.

    PS3.7 6.3.1 and PS3.8 Annex E.2: a message is its command fragments (the
    last one flagged) then, if Command Data Set Type says so, its data set
    fragments (the last one flagged), all on one presentation context, with no
    fragment of another message in between. One message is tracked at a time:
    the Asynchronous Operations Window is 1 unless negotiated otherwise (PS3.7
    D.3.3.3), and even with a wider window the fragments of two messages never
    interleave: each message is sent whole before the next starts.

    Command fragments are joined (bounded by :data:`MAX_COMMAND_LENGTH`) and
    decoded once the last arrives; data fragments are emitted as they come.
    Any violation raises :class:`RemoteProtocolError` with a service-user A-ABORT;
    the association must then be aborted and this assembler dropped.
    """

    __slots__ = ("_command_context", "_fragments", "_command_length", "_data_context", "_after")

    def __init__(self) -> None:
        # Context of the command being assembled, None between messages.
        self._command_context: int | None = None
        self._fragments: list[bytes] = []
        self._command_length = 0
        # Context whose data set is expected, None when no data set is expected.
        self._data_context: int | None = None
        # Why a data PDV is unexpected between messages: for error messages only.
        self._after = "before any command"

    @property
    def in_message(self) -> bool:
        """Whether a message is partly received (a command or data set pending)."""
        return self._command_context is not None or self._data_context is not None

    @property
    def expecting_dataset(self) -> bool:
        """Whether the last command announced a data set not yet complete."""
        return self._data_context is not None

    def feed(self, pdv: PDV) -> list[AssemblerEvent]:
        """Take one received PDV (PS3.8 9.3.5, Annex E.2); return 0 or 1 events."""
        if pdv.is_command:
            return self._feed_command(pdv)
        context_id = self._data_context
        if context_id is None:
            if self._command_context is not None:
                _fail("data PDV before the last fragment of its command")
            _fail(f"data PDV {self._after}")
        if pdv.context_id != context_id:
            _fail(
                f"data PDV on presentation context {pdv.context_id}, "
                f"its command came on {context_id}"
            )
        if pdv.is_last:
            self._data_context = None
            self._after = "after the data set ended"
        return [DatasetFragment(context_id, pdv.data, pdv.is_last)]

    def _feed_command(self, pdv: PDV) -> list[AssemblerEvent]:
        if self._data_context is not None:
            _fail("command PDV while the previous message's data set is incomplete")
        context_id = self._command_context
        if context_id is not None and pdv.context_id != context_id:
            _fail(
                f"command fragment on presentation context {pdv.context_id}, "
                f"earlier fragments came on {context_id}"
            )
        length = self._command_length + len(pdv.data)
        if length > MAX_COMMAND_LENGTH:
            _fail(f"command set longer than {MAX_COMMAND_LENGTH} bytes")
        if not pdv.is_last:
            # Copied: the PDU layer may reuse its buffer before the next fragment.
            self._fragments.append(bytes(pdv.data))
            self._command_context = pdv.context_id
            self._command_length = length
            return []
        if self._fragments:
            self._fragments.append(bytes(pdv.data))
            data: bytes | memoryview = b"".join(self._fragments)
            self._fragments = []
        else:
            data = pdv.data
        self._command_context = None
        self._command_length = 0
        command = decode_command(data)
        if command.has_dataset:
            self._data_context = pdv.context_id
        else:
            self._after = "after a command that said no data set follows"
        return [CommandReceived(pdv.context_id, command)]


# --------------------------------------------------------------------------
# Fragmentation (PS3.8 9.3.5, Annex E).


def _max_pdv_data(max_pdu_length: int) -> int:
    """Largest PDV data field for the peer's Maximum Length (PS3.8 D.1, 9.3.5)."""
    if (
        isinstance(max_pdu_length, bool)
        or not isinstance(max_pdu_length, int)
        or not 0 <= max_pdu_length <= _MAX_UL
    ):
        raise LocalProtocolError(f"max_pdu_length must be 0..0xFFFFFFFF: {max_pdu_length!r}")
    if max_pdu_length == 0:
        return NO_LIMIT_PDU_LENGTH - _PDV_OVERHEAD
    if max_pdu_length <= _PDV_OVERHEAD:
        raise LocalProtocolError(f"max_pdu_length {max_pdu_length} leaves no room for PDV data")
    return max_pdu_length - _PDV_OVERHEAD


def _byte_view(data: bytes | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _fragments(
    out: list[bytes | memoryview],
    context_id: int,
    is_command: bool,
    data: bytes | memoryview,
    limit: int,
) -> None:
    """Append the PDUs carrying ``data`` as one PDV each, last flag on the final one."""
    size = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    if size <= limit:
        out.append(pdata_header(context_id, is_command, True, size))
        if size:
            out.append(data)
        return
    view = _byte_view(data)
    start = 0
    while start < size:
        end = start + limit
        if end >= size:
            end = size
        out.append(pdata_header(context_id, is_command, end == size, end - start))
        out.append(view[start:end])
        start = end


def fragment_message(
    context_id: int,
    command: bytes,
    dataset: bytes | memoryview | None,
    max_pdu_length: int,
) -> list[bytes | memoryview]:
    """Cut one DIMSE message into single-PDV P-DATA-TF PDUs (PS3.8 9.3.5, Annex E).

    Returns a flat list for ``transport.writelines``: for every PDU its 12-byte
    header (from :func:`pdata_header`) then its data. Each PDV carries at most
    ``max_pdu_length - 6`` bytes (the peer's Maximum Length bounds the P-DATA-TF
    variable field; a PDV item adds a 4-byte length, context ID and control
    header). Command fragments come first, then data set fragments; the last flag
    is set on the final fragment of each. Payloads are the inputs themselves or
    memoryview slices of them: nothing is copied, so they must stay unchanged
    until written. ``max_pdu_length`` 0 (no limit) is cut at
    :data:`NO_LIMIT_PDU_LENGTH`. An empty data set is sent as one empty last PDV;
    ``dataset=None`` sends none.
    """
    _check_context_id(context_id)
    limit = _max_pdv_data(max_pdu_length)
    out: list[bytes | memoryview] = []
    _fragments(out, context_id, True, command, limit)
    if dataset is not None:
        _fragments(out, context_id, False, dataset, limit)
    return out


def iter_dataset_pdus(
    context_id: int,
    chunks: Iterable[bytes | memoryview],
    max_pdu_length: int,
) -> Iterator[list[bytes | memoryview]]:
    """Stream a data set's P-DATA-TF PDUs from chunks of any size (PS3.8 Annex E).

    Yields, for each chunk that completes at least one PDU, the buffers of those
    PDUs (headers and zero-copy slices) for ``transport.writelines``. PDVs are
    full-sized (``max_pdu_length - 6`` data bytes, the limit of 0 treated as in
    :func:`fragment_message`) even across chunk boundaries: a PDV's data may be
    several slices. Up to one PDV's worth of data is held back until more data or
    the end is seen, so the last flag is set on the final PDV only; no empty PDV
    is sent unless the whole data set is empty. The chunks are referenced, not
    copied: a chunk must not be modified after it is handed over (read each into
    a fresh ``bytes``, or a buffer that is not reused).
    """
    _check_context_id(context_id)
    return _dataset_pdus(context_id, chunks, _max_pdv_data(max_pdu_length))


def _dataset_pdus(
    context_id: int, chunks: Iterable[bytes | memoryview], limit: int
) -> Iterator[list[bytes | memoryview]]:
    """The generator behind :func:`iter_dataset_pdus`, arguments already checked."""
    pending: list[memoryview] = []
    pending_length = 0
    for chunk in chunks:
        view = _byte_view(chunk)
        if not view.nbytes:
            continue
        pending.append(view)
        pending_length += view.nbytes
        if pending_length <= limit:
            continue
        out: list[bytes | memoryview] = []
        # Strictly more than one PDV's worth is pending: the PDV cut now is not last.
        while pending_length > limit:
            out.append(pdata_header(context_id, False, False, limit))
            need = limit
            while need:
                head = pending[0]
                if head.nbytes <= need:
                    out.append(head)
                    need -= head.nbytes
                    del pending[0]
                else:
                    out.append(head[:need])
                    pending[0] = head[need:]
                    need = 0
            pending_length -= limit
        yield out
    out = [pdata_header(context_id, False, True, pending_length)]
    out.extend(pending)
    yield out
