"""DIMSE command sets, message assembly and message fragmentation, sans-IO.

Theory of operation: this module owns the DIMSE layer between the P-DATA service
of the Upper Layer (PDVs in, P-DATA-TF buffers out) and the service classes.

* **Command sets** (PS3.7 6.3, 9.3, 10.3, Annex E). Each command this engine knows
  is one row table in :data:`COMMAND_TABLES`, written like the standard's message
  tables: element number in group 0000, Message Field name, VR, required or
  optional. Each table has a frozen message struct whose fields are the snake_case
  names of its rows. At import, :func:`_compile` builds from every table the
  struct's validator, its encoder and its decoder: the same loops for every
  command, over tuples precomputed from its rows, using one validator and one
  decoder per VR; a new command is a new table and a new struct, nothing else.
  :func:`encode_command` writes a group 0000 Implicit VR Little Endian command
  set with a correct Command Group Length first; :func:`decode_command` does the
  reverse and validates everything it reads from the peer. Command fields
  without a table become :class:`UnknownCommand`, which :func:`response_for`
  answers with an :class:`UnknownResponse` so the service user can send
  "unrecognized operation" (0211H) instead of aborting.
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
contents, and nothing here generates or runs code: the codecs are plain functions
whose loops read tuples built from this module's own constant tables.
"""

from __future__ import annotations

import operator
import struct
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, NoReturn, TypeAlias, TypeVar

import msgspec
from msgspec.structs import astuple

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
    "US",
    "UI",
    "AE",
    "LO",
    "AT",
    "REQUIRED",
    "OPTIONAL",
    "Row",
    "COMMAND_TABLES",
    "MESSAGE_TYPES",
    "CEchoRQ",
    "CEchoRSP",
    "CStoreRQ",
    "CStoreRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CCancelRQ",
    "NEventReportRQ",
    "NEventReportRSP",
    "NActionRQ",
    "NActionRSP",
    "UnknownCommand",
    "UnknownResponse",
    "DimseMessage",
    "CommandReceived",
    "DatasetFragment",
    "AssemblerEvent",
    "MessageAssembler",
    "encode_command",
    "decode_command",
    "response_for",
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

# PS3.7 Annex E: a response's Command Field is its request's with bit 15 set.
_RESPONSE_BIT: Final = 0x8000

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

# Element numbers (group 0000) of PS3.7 Annex E Table E.1-1 the codec itself handles.
_GROUP_LENGTH: Final = 0x0000
_AFFECTED_SOP_CLASS_UID: Final = 0x0002
_REQUESTED_SOP_CLASS_UID: Final = 0x0003
_COMMAND_FIELD: Final = 0x0100
_MESSAGE_ID: Final = 0x0110
_COMMAND_DATA_SET_TYPE: Final = 0x0800

# Elements an UnknownCommand carries in its own fields instead of ``elements``.
_UNKNOWN_COMMAND_OWN: Final = frozenset((_GROUP_LENGTH, _COMMAND_FIELD, _MESSAGE_ID))

# PS3.5 7.1.2: Implicit VR Little Endian element header = group, element, length.
_ELEMENT_HEADER: Final = struct.Struct("<HHI")
_US_ELEMENT: Final = struct.Struct("<HHIH")
_UL_ELEMENT: Final = struct.Struct("<HHII")
# Command Group Length (0000,0000) UL: a zero tag, value length 4, the value.
_GROUP_LENGTH_ELEMENT: Final = struct.Struct("<4xII")
_AT_VALUE: Final = struct.Struct("<HH")
_ELEMENT_HEADER_LENGTH: Final = 8  # group (2) + element (2) + value length (4)
_GROUP_LENGTH_ELEMENT_LENGTH: Final = 12  # the header plus a 4-byte UL value


# --------------------------------------------------------------------------
# The command tables (PS3.7 9.3 DIMSE-C, 10.3 DIMSE-N, Annex E Table E.1-1).

# PS3.5 6.2 Value Representations of the command elements in the tables below.
# (Command Group Length, the only UL, is written and checked by the codec itself.)
US: Final = "US"
UI: Final = "UI"
AE: Final = "AE"
LO: Final = "LO"
AT: Final = "AT"

# PS3.7 9.1 / 10.1 service parameter usage: M is required. U (user option) and
# C (conditional) are optional here: the codec never enforces a condition that
# depends on the status or on the data set, the service does.
REQUIRED: Final = True
OPTIONAL: Final = False


class Row(NamedTuple):
    """One field of a command's message table (PS3.7 9.3.x, 10.3.x; Annex E).

    ``element`` is the element number in group 0000, ``name`` the Message Field as
    PS3.7 spells it, ``vr`` its Value Representation, ``required`` whether the
    command is malformed without it. ``values``, when set, lists the only values
    the field may take (Priority, PS3.7 Annex E).
    """

    element: int
    name: str
    vr: str
    required: bool
    values: frozenset[int] | None = None

    @property
    def field(self) -> str:
        """The message struct's field: the name in snake_case."""
        return self.name.lower().replace(" ", "_").replace("-", "_")


# Every table of PS3.7 9.3 and 10.3 also lists Command Group Length (0000,0000) and
# Command Field (0000,0100); the codec writes and checks those two for every
# command, so the rows below are the rest, in ascending element order. Response
# tables add the status fields PS3.7 Annex C allows for the service.
COMMAND_TABLES: Final[dict[int, tuple[Row, ...]]] = {
    # PS3.7 9.3.1.1 Table 9.3-1.
    C_STORE_RQ: (
        Row(0x0002, "Affected SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0700, "Priority", US, REQUIRED, _PRIORITIES),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x1000, "Affected SOP Instance UID", UI, REQUIRED),
        Row(0x1030, "Move Originator Application Entity Title", AE, OPTIONAL),
        Row(0x1031, "Move Originator Message ID", US, OPTIONAL),
    ),
    # PS3.7 9.3.1.2 Table 9.3-2; Annex C.4, C.5 status fields.
    C_STORE_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0901, "Offending Element", AT, OPTIONAL),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
        Row(0x1000, "Affected SOP Instance UID", UI, OPTIONAL),
    ),
    # PS3.7 9.3.2.1 Table 9.3-3.
    C_FIND_RQ: (
        Row(0x0002, "Affected SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0700, "Priority", US, REQUIRED, _PRIORITIES),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
    ),
    # PS3.7 9.3.2.2 Table 9.3-4; Annex C.4, C.5 status fields.
    C_FIND_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0901, "Offending Element", AT, OPTIONAL),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
    ),
    # PS3.7 9.3.2.3 Table 9.3-5 (also C-CANCEL-GET-RQ 9.3.3.3, C-CANCEL-MOVE-RQ 9.3.4.3).
    C_CANCEL_RQ: (
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
    ),
    # PS3.7 9.3.3.1 Table 9.3-6.
    C_GET_RQ: (
        Row(0x0002, "Affected SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0700, "Priority", US, REQUIRED, _PRIORITIES),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
    ),
    # PS3.7 9.3.3.2 Table 9.3-7; Annex C.4, C.5 status fields.
    C_GET_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0901, "Offending Element", AT, OPTIONAL),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
        Row(0x1020, "Number of Remaining Sub-operations", US, OPTIONAL),
        Row(0x1021, "Number of Completed Sub-operations", US, OPTIONAL),
        Row(0x1022, "Number of Failed Sub-operations", US, OPTIONAL),
        Row(0x1023, "Number of Warning Sub-operations", US, OPTIONAL),
    ),
    # PS3.7 9.3.4.1 Table 9.3-9.
    C_MOVE_RQ: (
        Row(0x0002, "Affected SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0600, "Move Destination", AE, REQUIRED),
        Row(0x0700, "Priority", US, REQUIRED, _PRIORITIES),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
    ),
    # PS3.7 9.3.4.2 Table 9.3-10; Annex C.4, C.5 status fields.
    C_MOVE_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0901, "Offending Element", AT, OPTIONAL),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
        Row(0x1020, "Number of Remaining Sub-operations", US, OPTIONAL),
        Row(0x1021, "Number of Completed Sub-operations", US, OPTIONAL),
        Row(0x1022, "Number of Failed Sub-operations", US, OPTIONAL),
        Row(0x1023, "Number of Warning Sub-operations", US, OPTIONAL),
    ),
    # PS3.7 9.3.5.1 Table 9.3-12.
    C_ECHO_RQ: (
        Row(0x0002, "Affected SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
    ),
    # PS3.7 9.3.5.2 Table 9.3-13; Annex C.5 status fields. Affected SOP Class UID
    # is U: when a peer leaves it out it can only be Verification (CEchoRSP's
    # default), and we always send it.
    C_ECHO_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
    ),
    # PS3.7 10.3.1.1 Table 10.3-1.
    N_EVENT_REPORT_RQ: (
        Row(0x0002, "Affected SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x1000, "Affected SOP Instance UID", UI, REQUIRED),
        Row(0x1002, "Event Type ID", US, REQUIRED),
    ),
    # PS3.7 10.3.1.2 Table 10.3-2; Annex C.5 status fields.
    N_EVENT_REPORT_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
        Row(0x0903, "Error ID", US, OPTIONAL),
        Row(0x1000, "Affected SOP Instance UID", UI, OPTIONAL),
        Row(0x1002, "Event Type ID", US, OPTIONAL),
    ),
    # PS3.7 10.3.4.1 Table 10.3-7.
    N_ACTION_RQ: (
        Row(0x0003, "Requested SOP Class UID", UI, REQUIRED),
        Row(0x0110, "Message ID", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x1001, "Requested SOP Instance UID", UI, REQUIRED),
        Row(0x1008, "Action Type ID", US, REQUIRED),
    ),
    # PS3.7 10.3.4.2 Table 10.3-8; Annex C.5 status fields.
    N_ACTION_RSP: (
        Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
        Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
        Row(0x0800, "Command Data Set Type", US, REQUIRED),
        Row(0x0900, "Status", US, REQUIRED),
        Row(0x0902, "Error Comment", LO, OPTIONAL),
        Row(0x0903, "Error ID", US, OPTIONAL),
        Row(0x1000, "Affected SOP Instance UID", UI, OPTIONAL),
        Row(0x1008, "Action Type ID", US, OPTIONAL),
    ),
}

# The answer to a request without a table (PS3.7 Annex C.5, 0211H "Unrecognized
# operation"): the fields every response has, and an Error Comment.
_UNKNOWN_RESPONSE_ROWS: Final = (
    Row(0x0002, "Affected SOP Class UID", UI, OPTIONAL),
    Row(0x0120, "Message ID Being Responded To", US, REQUIRED),
    Row(0x0800, "Command Data Set Type", US, REQUIRED),
    Row(0x0900, "Status", US, REQUIRED),
    Row(0x0902, "Error Comment", LO, OPTIONAL),
)


def _same(*fields: str) -> tuple[tuple[str, str], ...]:
    return tuple((field, field) for field in fields)


# What a response copies from its request (request field, response field): the
# response parameters PS3.7 9.1.x / 10.1.x mark "(=)", equal to the request's.
# N-ACTION names Affected in the response what the request named Requested
# (PS3.7 10.1.4.1.1-2). C-CANCEL has no response (PS3.7 9.3.2.3).
_RESPONSE_COPIES: Final[dict[int, tuple[tuple[str, str], ...]]] = {
    C_STORE_RQ: _same("affected_sop_class_uid", "affected_sop_instance_uid"),
    C_FIND_RQ: _same("affected_sop_class_uid"),
    C_GET_RQ: _same("affected_sop_class_uid"),
    C_MOVE_RQ: _same("affected_sop_class_uid"),
    C_ECHO_RQ: _same("affected_sop_class_uid"),
    N_EVENT_REPORT_RQ: _same(
        "affected_sop_class_uid", "affected_sop_instance_uid", "event_type_id"
    ),
    N_ACTION_RQ: (
        ("requested_sop_class_uid", "affected_sop_class_uid"),
        ("requested_sop_instance_uid", "affected_sop_instance_uid"),
        ("action_type_id", "action_type_id"),
    ),
}


# --------------------------------------------------------------------------
# One validator per VR (our own values: LocalProtocolError).


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


def _check_lo(name: str, value: object) -> None:
    _check_text(name, value, _LO_MAX)


def _check_ae(name: str, value: object) -> None:
    # PS3.5 6.2: AE is at most 16 characters of the default repertoire, no
    # control characters and no backslash.
    if (
        not isinstance(value, bytes)
        or len(value) > _AE_MAX
        or not all(0x20 <= c < 0x7F and c != 0x5C for c in value)
    ):
        raise LocalProtocolError(f"{name} must be at most {_AE_MAX} AE characters: {value!r}")


def _check_at(name: str, value: object) -> None:
    # PS3.5 6.2: AT is a 32-bit tag, here ``0xGGGGEEEE``; VM 1-n as a tuple.
    if not isinstance(value, tuple) or not all(
        isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag <= _MAX_UL
        for tag in value
    ):
        raise LocalProtocolError(f"{name} must be a tuple of 32-bit tags: {value!r}")


def _check_values(name: str, value: object, allowed: frozenset[int]) -> None:
    if value not in allowed:
        listed = ", ".join(str(v) for v in sorted(allowed))
        raise LocalProtocolError(f"{name} must be one of {listed}, got {value!r}")


_VR_CHECKS: Final[dict[str, Callable[[str, object], None]]] = {
    US: _check_us,
    UI: _check_uid,
    AE: _check_ae,
    LO: _check_lo,
    AT: _check_at,
}

# PS3.5 6.2: the longest value of the text VRs, which the checks above enforce.
# The validators test the plain case of UI and LO (an exact ``str`` of printable
# ASCII no longer than this) inline; the encoder's tables of element headers
# stop there.
_VR_MAX: Final[dict[str, int]] = {UI: _UI_MAX, LO: _LO_MAX, AE: _AE_MAX}
_PLAIN_TEXT_VRS: Final = frozenset((UI, LO))


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
# One decoder per VR (the peer's values: RemoteProtocolError).
#
# Each takes a value as received and returns None when it holds nothing (no
# bytes, or only padding): an empty optional element is absent. Values that are
# decoded but out of range (a 65-character UID, a bad AE character) are caught
# by the struct's validator and turned into the same abort by decode_command.


def _fail(reason: str) -> NoReturn:
    """Raise the DIMSE service-user A-ABORT (PS3.8 9.3.8, Table 9-26: source 0)."""
    raise RemoteProtocolError(
        f"malformed DIMSE message: {reason}",
        abort_source=ABORT_SOURCE_USER,
        abort_reason=ABORT_REASON_NOT_SPECIFIED,
    )


def _name(element: int) -> str:
    return f"(0000,{element:04X})"


def _ascii(element: int, raw: bytes) -> str:
    if not raw.isascii():
        _fail(f"{_name(element)} is not ASCII")
    return raw.decode("ascii")


def _decode_us(element: int, raw: bytes) -> int | None:
    if not raw:
        return None
    if len(raw) != 2:
        _fail(f"{_name(element)} is US but {len(raw)} bytes long")
    return raw[0] | raw[1] << 8


def _decode_ui(element: int, raw: bytes) -> str | None:
    # PS3.5 6.2: UI padded with NUL; trailing spaces are tolerated (common bug).
    raw = raw.rstrip(b"\x00 ")
    return _ascii(element, raw) if raw else None


def _decode_lo(element: int, raw: bytes) -> str | None:
    # PS3.5 6.2: leading and trailing spaces of LO are not significant.
    raw = raw.rstrip(b"\x00 ").lstrip(b" ")
    return _ascii(element, raw) if raw else None


def _decode_ae(element: int, raw: bytes) -> bytes | None:
    # PS3.5 6.2: leading and trailing spaces of AE are not significant.
    return raw.rstrip(b"\x00 ").lstrip(b" ") or None


def _decode_at(element: int, raw: bytes) -> tuple[int, ...] | None:
    if not raw:
        return None
    if len(raw) % 4:
        _fail(f"{_name(element)} is AT but {len(raw)} bytes long")
    return tuple(group << 16 | elem for group, elem in _AT_VALUE.iter_unpack(raw))


_VR_DECODERS: Final[dict[str, Callable[[int, bytes], object]]] = {
    US: _decode_us,
    UI: _decode_ui,
    AE: _decode_ae,
    LO: _decode_lo,
    AT: _decode_at,
}

# What a required element sent empty decodes to: the empty string of a text VR,
# so that the service can answer with a status (an empty Affected SOP Instance
# UID is 0117H, an empty Move Destination A801H), never "nothing" for a number.
_VR_EMPTY: Final[dict[str, object]] = {UI: "", LO: "", AE: b""}


def _missing(element: int) -> NoReturn:
    _fail(f"required element {_name(element)} missing")


def _empty(element: int) -> NoReturn:
    _fail(f"required element {_name(element)} is empty")


def _bad_us(element: int, raw: bytes | None) -> NoReturn:
    if raw is None:
        _missing(element)
    _fail(f"{_name(element)} is US but {len(raw)} bytes long")


# PS3.5 6.2: the byte that pads a value of each text VR to even length.
_VR_PAD: Final[dict[str, bytes]] = {UI: b"\x00", LO: b" ", AE: b" "}


def _encode_at(tags: tuple[int, ...]) -> bytes:
    return b"".join([_AT_VALUE.pack(tag >> 16, tag & 0xFFFF) for tag in tags])


# --------------------------------------------------------------------------
# Building the codecs from the tables.
#
# Each table is turned once, at import, into tuples with one entry per row (its
# element, the struct field it fills, its VR and what that VR needs), walked by
# loops that are the same for every command; only the tuples differ, and only the
# tables above, never received data, shape them. No code is generated: the
# engine never calls exec, eval or compile (tests/engine/test_sans_io.py).
#
# The validator tests each field inline against the plain case of its VR and
# calls the VR's checker otherwise. The decoder unpacks the required US elements
# with one struct.Struct, decodes the UI ones inline, and falls back to decoding
# field by field, in struct order, for anything else. The encoder writes the
# command set's head (SOP Class UID, then the run from Command Field on) before
# its loop; it packs each run of consecutive fixed-size elements (US, and Command
# Field) with one struct.Struct whose constant element headers are merged, and
# writes a text element as a header chosen by value length from a precomputed
# tuple, the value and its padding. Field values are read with msgspec's
# astuple, one call for all of them.

_M = TypeVar("_M", bound="_Message")

MESSAGE_TYPES: Final[dict[int, type[_Message]]] = {}
_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {}
_DECODERS: Final[dict[int, Callable[[dict[int, bytes]], Any]]] = {}


class _Message(msgspec.Struct, frozen=True):
    """What the table-driven message structs share (PS3.7 Annex E)."""

    rows: ClassVar[tuple[Row, ...]]
    # Set by _compile: checks every field of ``self`` against its row's VR.
    _validate: ClassVar[Callable[[Any], None]]

    if TYPE_CHECKING:
        command_data_set_type: int

    def __post_init__(self) -> None:
        self._validate()

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows (PS3.7 Annex E, (0000,0800) != 0101H)."""
        return self.command_data_set_type != DATASET_ABSENT


class _Field(NamedTuple):
    """A struct field and its row, in struct order."""

    row: Row
    nullable: bool  # None is a valid value (the field is omitted when encoding)
    default: object
    index: int  # the field's position in the struct, and in its astuple


def _fields_of(cls: type[_Message]) -> list[_Field]:
    """Match the struct's fields with its rows; refuse any mismatch (a bug here)."""
    by_field = {row.field: row for row in cls.rows}
    elements = [row.element for row in cls.rows]
    if elements != sorted(set(elements)) or not set(elements).isdisjoint(
        (_GROUP_LENGTH, _COMMAND_FIELD)
    ):
        raise TypeError(f"{cls.__name__}: rows must ascend, without (0000,0000) or (0000,0100)")
    if any(row.values is not None and row.vr != US for row in cls.rows):
        raise TypeError(f"{cls.__name__}: only US rows can list their values")
    fields = []
    for index, info in enumerate(msgspec.structs.fields(cls)):
        if info.name == "command_field":
            continue
        row = by_field.pop(info.name, None)
        if row is None:
            raise TypeError(f"{cls.__name__}.{info.name} has no row")
        nullable = type(None) in typing.get_args(info.type)
        if row.required and nullable:
            raise TypeError(f"{cls.__name__}.{info.name} is required: it cannot be None")
        if not row.required and info.required:
            raise TypeError(f"{cls.__name__}.{info.name} is optional: it needs a default")
        fields.append(_Field(row, nullable, info.default, index))
    if by_field:
        raise TypeError(f"{cls.__name__} lacks fields for rows {sorted(by_field)}")
    if fields[-1].row.element != _COMMAND_DATA_SET_TYPE:
        raise TypeError(f"{cls.__name__}: command_data_set_type must be the last field")
    return fields


def _validator(fields: list[_Field]) -> Callable[[Any], None]:
    """``_validate(self)``: each field checked by its row's VR, in struct order.

    The plain case of a VR is tested inline, so that it costs no call: an exact
    ``int`` in range (and one of the row's values, if it lists them) for US, an
    exact ``str`` of printable ASCII no longer than the VR allows for UI and LO.
    Anything else (an IntEnum, a wrong type, a long string, any AE or AT value)
    goes to the VR's check, which decides, then to the row's values.
    """
    checks = tuple(
        (
            f.index,
            f.row.name,
            f.row.vr == US,
            _VR_MAX[f.row.vr] if f.row.vr in _PLAIN_TEXT_VRS else 0,
            f.nullable,
            _VR_CHECKS[f.row.vr],
            f.row.values,
        )
        for f in fields
    )

    def _validate(self: Any) -> None:
        values = astuple(self)
        for index, name, is_us, longest, nullable, check, allowed in checks:
            value = values[index]
            if is_us:
                if (
                    value.__class__ is int
                    and 0 <= value <= _MAX_US
                    and (allowed is None or value in allowed)
                ):
                    continue
            elif longest:
                if (
                    value.__class__ is str
                    and len(value) <= longest
                    and value.isascii()
                    and value.isprintable()
                ):
                    continue
            if value is None and nullable:
                continue
            check(name, value)
            if allowed is not None:
                _check_values(name, value, allowed)

    return _validate


class _NotPlain(Exception):
    """A hot element is not in its plain form: the decoder goes field by field."""


# What a required element holding nothing decodes to when its VR has no empty
# value (_VR_EMPTY): nothing, the decoder aborts.
_NO_EMPTY_VALUE: Final = object()


def _decoder(cls: type[_M], fields: list[_Field]) -> Callable[[dict[int, bytes]], _M]:
    """``_decode(elements) -> message``: each row's element decoded by its VR.

    First the elements every command is mostly made of: the required US ones,
    unpacked with one struct.Struct, and the UI ones, decoded inline. If one of
    those is missing, or not in its plain form (2 bytes; ASCII besides padding),
    every field is decoded again one by one, in struct order, so that of two bad
    elements the one the struct lists first is reported, as is what an empty
    element becomes. Otherwise the remaining fields are decoded the same way,
    unless none was sent: then they are all their defaults.
    """
    # Element lengths are even (_parse_elements refuses odd ones), so k values of
    # 2*k bytes in all, none of them empty, are 2 bytes each. itemgetter of one
    # element returns no tuple: a lone required US is decoded with the rest.
    numbers = [f for f in fields if f.row.vr == US and f.row.required]
    if len(numbers) < 2:
        numbers = []
    uids = [f for f in fields if f.row.vr == UI]
    rest = [f for f in fields if f not in numbers and f not in uids]

    def rows(chosen: list[_Field]) -> tuple[tuple[int, str, bool, object, Any], ...]:
        return tuple(
            (
                f.row.element,
                f.row.vr,
                f.row.required,
                # What the element decodes to when it holds nothing (and, if
                # optional, when it is absent): the VR's empty value if required,
                # else the field's default.
                _VR_EMPTY.get(f.row.vr, _NO_EMPTY_VALUE) if f.row.required else f.default,
                _VR_DECODERS[f.row.vr],
            )
            for f in chosen
        )

    every_row = rows(fields)
    rest_rows = rows(rest)
    uid_rows = tuple((element, required, empty) for element, _, required, empty, _ in rows(uids))
    get_numbers = operator.itemgetter(*[f.row.element for f in numbers]) if numbers else None
    unpack_numbers = struct.Struct(f"<{len(numbers)}H").unpack
    number_bytes = 2 * len(numbers)
    # The rest were not sent when the elements are only Command Field, the
    # required US ones and the UI ones found: every element is one of those, one
    # of the rest, or one no row names.
    rest_defaults = None if any(f.row.required for f in rest) else [f.default for f in rest]
    without_rest = 1 + len(numbers)
    # From the order decoded in (numbers, UIs, the rest) to struct order.
    decoded = numbers + uids + rest
    to_struct_order = operator.itemgetter(*[decoded.index(f) for f in fields])

    def one_by_one(
        chosen: tuple[tuple[int, str, bool, object, Any], ...],
        get: Callable[[int], bytes | None],
        arguments: list[object],
    ) -> None:
        for element, vr, required, empty, decode in chosen:
            raw = get(element)
            if raw is None:
                if required:
                    _missing(element)
                arguments.append(empty)
                continue
            if required and vr == US and len(raw) != 2:
                _bad_us(element, raw)  # an empty required US is malformed too
            value = decode(element, raw)
            if value is None:
                if empty is _NO_EMPTY_VALUE:
                    _empty(element)
                value = empty
            arguments.append(value)

    def _decode(elements: dict[int, bytes]) -> _M:
        get = elements.get
        arguments: list[object]
        try:
            if get_numbers is None:
                arguments = []
            else:
                raws = get_numbers(elements)
                joined = b"".join(raws)
                if len(joined) != number_bytes or b"" in raws:
                    raise _NotPlain
                arguments = [*unpack_numbers(joined)]
            append = arguments.append
            found = without_rest
            for element, required, empty in uid_rows:
                raw = get(element)
                if raw is None:
                    if required:
                        raise _NotPlain
                    append(empty)
                    continue
                found += 1
                # As _decode_ui, inline: NUL padding and trailing spaces go.
                raw = raw.rstrip(b"\x00 ")
                append(raw.decode("ascii") if raw else empty)
        except (KeyError, UnicodeDecodeError, _NotPlain):
            arguments = []
            one_by_one(every_row, get, arguments)
            return cls(*arguments)
        if rest_defaults is not None and len(elements) == found:
            arguments += rest_defaults
        else:
            one_by_one(rest_rows, get, arguments)
        return cls(*to_struct_order(arguments))

    return _decode


# How the encoder writes an element (PS3.5 7.1.2, Implicit VR Little Endian).
_RUN: Final = 0  # consecutive fixed-size elements, packed at once
_STR: Final = 1  # UI, LO: the value's ASCII bytes, padded to even length
_BYTES: Final = 2  # AE: the value as it is, padded to even length
_OPTIONAL_US: Final = 3  # a US that may be left out, packed alone
_TAGS: Final = 4  # AT: four bytes per tag


def _encoder(
    cls: type[_Message], fields: list[_Field], command_field: int | None
) -> Callable[[Any], bytes]:
    """``_encode(msg) -> bytes``; ``command_field`` None: read it from ``msg``.

    Each step of the plan, in ascending element order, is ``(how, index, a,
    b)``: ``index`` is where the value is in the encoder's ``values`` (for a run,
    a constant that is never None), ``a`` and ``b`` what the step needs -- for a
    run its packer and the getter of its arguments, for a text element its
    headers and its padding by value length, else its element number.

    Every command set starts the same way: below Command Field, group 0000 has
    only the Affected and the Requested SOP Class UID (PS3.7 Table E.1-1), and a
    command has at most one of them; then come Command Field and the fixed-size
    elements after it, one run. Those two steps are written before the loop,
    which takes the rest.
    """
    # ``values`` is astuple(msg) followed by these constants: True (a run's
    # "value"), None (the missing SOP Class UID of a command without one), then
    # the constant element headers the runs pack.
    names = [info.name for info in msgspec.structs.fields(cls)]
    true, none = len(names), len(names) + 1
    constants: list[object] = [True, None]
    index_of = {f.row.element: f.index for f in fields}
    if command_field is None:
        index_of[_COMMAND_FIELD] = names.index("command_field")
    plan: list[tuple[int, int, Any, Any]] = []
    run: list[int] = []

    def flush() -> None:
        if not run:
            return
        formats: list[str] = []
        arguments: list[int] = []
        fixed = b""  # constant bytes not yet given to the packer
        for element in run:
            if element == _COMMAND_FIELD and command_field is not None:
                fixed += _US_ELEMENT.pack(0, element, 2, command_field)
                continue
            fixed += _ELEMENT_HEADER.pack(0, element, 2)
            formats += [f"{len(fixed)}s", "H"]
            arguments += [true + len(constants), index_of[element]]
            constants.append(fixed)
            fixed = b""
        if fixed:
            formats.append(f"{len(fixed)}s")
            arguments.append(true + len(constants))
            constants.append(fixed)
        # itemgetter of one index returns the item, not a 1-tuple: slice instead.
        getter = (
            operator.itemgetter(*arguments)
            if len(arguments) > 1
            else operator.itemgetter(slice(arguments[0], arguments[0] + 1))
        )
        plan.append((_RUN, true, struct.Struct("<" + "".join(formats)).pack, getter))
        run.clear()

    # Command Field and the fields always present and fixed-size go in runs.
    entries = sorted(
        [(f.row.element, f.row, not f.nullable) for f in fields] + [(_COMMAND_FIELD, None, True)]
    )
    for element, row, always in entries:
        if row is None or (always and row.vr == US):
            run.append(element)
            continue
        flush()
        index = index_of[element]
        if row.vr == US:
            plan.append((_OPTIONAL_US, index, element, None))
        elif row.vr == AT:
            plan.append((_TAGS, index, element, None))
        else:
            # The struct's validator bounds a value's length by its VR.
            lengths = range(_VR_MAX[row.vr] + 1)
            headers = tuple(_ELEMENT_HEADER.pack(0, element, n + (n & 1)) for n in lengths)
            pads = tuple(_VR_PAD[row.vr] if n & 1 else b"" for n in lengths)
            plan.append((_BYTES if row.vr == AE else _STR, index, headers, pads))
    flush()

    if plan[0][0] == _RUN:  # no SOP Class UID: its value is the None constant
        plan.insert(0, (_STR, none, (), ()))
    if plan[0][0] != _STR or len(plan) < 2 or plan[1][0] != _RUN:
        raise TypeError(f"{cls.__name__}: at most one SOP Class UID may precede Command Field")
    (_, uid_index, uid_headers, uid_pads), (_, _, pack, arguments_of) = plan[:2]
    tail = tuple(plan[2:])
    extra = tuple(constants)
    group_length = _GROUP_LENGTH_ELEMENT.pack

    def _encode(msg: Any) -> bytes:
        values = astuple(msg) + extra
        uid = values[uid_index]
        if uid is None:
            parts = [pack(*arguments_of(values))]
        else:
            # Validated printable ASCII, so UTF-8 (the fastest) is ASCII.
            uid = uid.encode()
            size = len(uid)
            parts = [uid_headers[size], uid, uid_pads[size], pack(*arguments_of(values))]
        for how, index, a, b in tail:
            value = values[index]
            if value is None:
                continue
            if how == _STR:
                value = value.encode()
                size = len(value)
                parts += (a[size], value, b[size])
            elif how == _RUN:
                parts.append(a(*b(values)))
            elif how == _BYTES:
                size = len(value)
                parts += (a[size], value, b[size])
            elif how == _OPTIONAL_US:
                parts.append(_US_ELEMENT.pack(0, a, 2, value))
            else:  # _TAGS
                raw = _encode_at(value)
                parts += (_ELEMENT_HEADER.pack(0, a, len(raw)), raw)
        body = b"".join(parts)
        return group_length(4, len(body)) + body

    return _encode


def _compile(cls: type[_M]) -> type[_M]:
    """Build ``cls``'s validator, encoder and decoder from its rows (PS3.7 Annex E).

    The rows are ``COMMAND_TABLES[cls.command_field]`` unless the class sets its
    own ``rows`` (then its Command Field is a field, and it is never decoded).
    """
    command_field: int | None = None
    if "rows" not in cls.__dict__:
        command_field = cls.command_field  # type: ignore[attr-defined]
        cls.rows = COMMAND_TABLES[command_field]
    fields = _fields_of(cls)
    cls._validate = _validator(fields)  # type: ignore[assignment]
    _ENCODERS[cls] = _encoder(cls, fields, command_field)
    if command_field is not None:
        MESSAGE_TYPES[command_field] = cls
        _DECODERS[command_field] = _decoder(cls, fields)
    return cls


# --------------------------------------------------------------------------
# Messages (PS3.7 9.3 DIMSE-C, 10.3 DIMSE-N). Fields are the rows of the
# command's table in COMMAND_TABLES, in snake_case, checked when built.


@_compile
class CEchoRQ(_Message, frozen=True):
    """C-ECHO-RQ, PS3.7 9.3.5.1 Table 9.3-12."""

    command_field: ClassVar[int] = C_ECHO_RQ

    message_id: int
    affected_sop_class_uid: str = VERIFICATION_SOP_CLASS
    command_data_set_type: int = DATASET_ABSENT


@_compile
class CEchoRSP(_Message, frozen=True):
    """C-ECHO-RSP, PS3.7 9.3.5.2 Table 9.3-13."""

    command_field: ClassVar[int] = C_ECHO_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str = VERIFICATION_SOP_CLASS
    error_comment: str | None = None
    command_data_set_type: int = DATASET_ABSENT


@_compile
class CStoreRQ(_Message, frozen=True):
    """C-STORE-RQ, PS3.7 9.3.1.1 Table 9.3-1."""

    command_field: ClassVar[int] = C_STORE_RQ

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = PRIORITY_MEDIUM
    move_originator_application_entity_title: bytes | None = None
    move_originator_message_id: int | None = None
    command_data_set_type: int = DATASET_PRESENT


@_compile
class CStoreRSP(_Message, frozen=True):
    """C-STORE-RSP, PS3.7 9.3.1.2 Table 9.3-2.

    ``offending_element`` holds tags as ``0xGGGGEEEE`` ints (AT, VM 1-n).
    """

    command_field: ClassVar[int] = C_STORE_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    command_data_set_type: int = DATASET_ABSENT


@_compile
class CFindRQ(_Message, frozen=True):
    """C-FIND-RQ, PS3.7 9.3.2.1 Table 9.3-3; the Identifier follows."""

    command_field: ClassVar[int] = C_FIND_RQ

    message_id: int
    affected_sop_class_uid: str
    priority: int = PRIORITY_MEDIUM
    command_data_set_type: int = DATASET_PRESENT


@_compile
class CFindRSP(_Message, frozen=True):
    """C-FIND-RSP, PS3.7 9.3.2.2 Table 9.3-4.

    Only a pending response (FF00H, FF01H) carries an Identifier: set
    ``command_data_set_type`` to :data:`DATASET_PRESENT` for those.
    """

    command_field: ClassVar[int] = C_FIND_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    command_data_set_type: int = DATASET_ABSENT


@_compile
class CGetRQ(_Message, frozen=True):
    """C-GET-RQ, PS3.7 9.3.3.1 Table 9.3-6; the Identifier follows."""

    command_field: ClassVar[int] = C_GET_RQ

    message_id: int
    affected_sop_class_uid: str
    priority: int = PRIORITY_MEDIUM
    command_data_set_type: int = DATASET_PRESENT


@_compile
class CGetRSP(_Message, frozen=True):
    """C-GET-RSP, PS3.7 9.3.3.2 Table 9.3-7.

    The sub-operation counts are conditional (PS3.7 9.1.3.1.x): present in pending
    responses, optional in the final one. A data set (the Failed SOP Instance UID
    List) follows only when some sub-operations failed.
    """

    command_field: ClassVar[int] = C_GET_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_sub_operations: int | None = None
    number_of_completed_sub_operations: int | None = None
    number_of_failed_sub_operations: int | None = None
    number_of_warning_sub_operations: int | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    command_data_set_type: int = DATASET_ABSENT


@_compile
class CMoveRQ(_Message, frozen=True):
    """C-MOVE-RQ, PS3.7 9.3.4.1 Table 9.3-9; the Identifier follows."""

    command_field: ClassVar[int] = C_MOVE_RQ

    message_id: int
    affected_sop_class_uid: str
    move_destination: bytes
    priority: int = PRIORITY_MEDIUM
    command_data_set_type: int = DATASET_PRESENT


@_compile
class CMoveRSP(_Message, frozen=True):
    """C-MOVE-RSP, PS3.7 9.3.4.2 Table 9.3-10 (fields as :class:`CGetRSP`)."""

    command_field: ClassVar[int] = C_MOVE_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_sub_operations: int | None = None
    number_of_completed_sub_operations: int | None = None
    number_of_failed_sub_operations: int | None = None
    number_of_warning_sub_operations: int | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    command_data_set_type: int = DATASET_ABSENT


@_compile
class CCancelRQ(_Message, frozen=True):
    """C-CANCEL-RQ (FIND, GET or MOVE), PS3.7 9.3.2.3 Table 9.3-5; it has no response."""

    command_field: ClassVar[int] = C_CANCEL_RQ

    message_id_being_responded_to: int
    command_data_set_type: int = DATASET_ABSENT


@_compile
class NEventReportRQ(_Message, frozen=True):
    """N-EVENT-REPORT-RQ, PS3.7 10.3.1.1 Table 10.3-1; Event Information may follow."""

    command_field: ClassVar[int] = N_EVENT_REPORT_RQ

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    event_type_id: int
    command_data_set_type: int = DATASET_ABSENT


@_compile
class NEventReportRSP(_Message, frozen=True):
    """N-EVENT-REPORT-RSP, PS3.7 10.3.1.2 Table 10.3-2; an Event Reply may follow."""

    command_field: ClassVar[int] = N_EVENT_REPORT_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    error_comment: str | None = None
    error_id: int | None = None
    command_data_set_type: int = DATASET_ABSENT


@_compile
class NActionRQ(_Message, frozen=True):
    """N-ACTION-RQ, PS3.7 10.3.4.1 Table 10.3-7; Action Information may follow."""

    command_field: ClassVar[int] = N_ACTION_RQ

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int
    command_data_set_type: int = DATASET_ABSENT


@_compile
class NActionRSP(_Message, frozen=True):
    """N-ACTION-RSP, PS3.7 10.3.4.2 Table 10.3-8; an Action Reply may follow."""

    command_field: ClassVar[int] = N_ACTION_RSP

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    error_comment: str | None = None
    error_id: int | None = None
    command_data_set_type: int = DATASET_ABSENT


class UnknownCommand(msgspec.Struct, frozen=True):
    """A well-formed command set whose Command Field has no table here.

    PS3.7 Annex E: ``elements`` maps each group 0000 tag (equal to its element
    number) to its raw, even-length value, except Command Group Length, Command
    Field and Message ID, which are carried by the struct itself. Command Data Set
    Type (0000,0800) is mandatory in every command (PS3.7 Annex E), so it is
    always present and tells whether a data set follows. The service user answers
    a request with ``response_for(command, UNRECOGNIZED_OPERATION)``.
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

    def _us(self, element: int) -> int | None:
        value = self.elements.get(element)
        return value[0] | value[1] << 8 if value is not None and len(value) == 2 else None

    @property
    def message_id_being_responded_to(self) -> int | None:
        """(0000,0120) of a response, as sent (None when absent or not a US)."""
        return self._us(0x0120)  # PS3.7 Table E.1-1

    @property
    def status(self) -> int | None:
        """Status (0000,0900) of a response, as sent (None when absent or not a US)."""
        return self._us(0x0900)  # PS3.7 Table E.1-1

    @property
    def is_request(self) -> bool:
        """PS3.7 Annex E: response Command Field values have bit 15 set."""
        return not self.command_field & _RESPONSE_BIT

    @property
    def name(self) -> str:
        """The PS3.7 name of the command, or its hex value."""
        return COMMAND_NAMES.get(self.command_field, f"command 0x{self.command_field:04X}")


@_compile
class UnknownResponse(_Message, frozen=True):
    """The response to a request whose Command Field has no table here.

    PS3.7 Annex C.5: a DIMSE service user answers an operation it does not know
    with status 0211H (Unrecognized operation). ``command_field`` is the
    request's with bit 15 set (PS3.7 Annex E), and may not be one that has a
    message struct (use that struct). It encodes like any response; decoded, it
    comes back as an :class:`UnknownCommand`.
    """

    rows: ClassVar[tuple[Row, ...]] = _UNKNOWN_RESPONSE_ROWS

    command_field: int
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    error_comment: str | None = None
    command_data_set_type: int = DATASET_ABSENT

    def __post_init__(self) -> None:
        _check_us("Command Field", self.command_field)
        if not self.command_field & _RESPONSE_BIT or self.command_field in MESSAGE_TYPES:
            raise LocalProtocolError(
                f"UnknownResponse needs a response Command Field without a message "
                f"struct, got 0x{self.command_field:04X}"
            )
        self._validate()


DimseMessage: TypeAlias = (
    CEchoRQ
    | CEchoRSP
    | CStoreRQ
    | CStoreRSP
    | CFindRQ
    | CFindRSP
    | CGetRQ
    | CGetRSP
    | CMoveRQ
    | CMoveRSP
    | CCancelRQ
    | NEventReportRQ
    | NEventReportRSP
    | NActionRQ
    | NActionRSP
    | UnknownCommand
    | UnknownResponse
)


# --------------------------------------------------------------------------
# Responses (PS3.7 9.1, 10.1: a response answers its request's Message ID).

# The fields response_for fills from its own arguments.
_SET_BY_RESPONSE_FOR: Final = frozenset(("message_id_being_responded_to", "status"))


def response_for(request: DimseMessage, status: int, /, **fields: Any) -> DimseMessage:
    """Build the response to ``request`` with ``status`` (PS3.7 9.3, 10.3, Annex E).

    The response type is the one whose Command Field is the request's with bit
    15 set; its Message ID Being Responded To is the request's Message ID, and
    it copies what PS3.7 says equals the request's (Affected SOP Class UID; for
    C-STORE the Affected SOP Instance UID; for N-EVENT-REPORT the Affected SOP
    Class/Instance UIDs and Event Type ID; for N-ACTION the Requested SOP
    Class/Instance UIDs as the Affected ones, and Action Type ID). ``fields``
    set or override the others (``error_comment``, ``command_data_set_type``...).

    An :class:`UnknownCommand` request gets an :class:`UnknownResponse` carrying
    its Affected (else Requested) SOP Class UID when that is a plausible UID.
    Raises :class:`LocalProtocolError` for a response, a C-CANCEL-RQ (it has no
    response, PS3.7 9.3.2.3), a request without Message ID, or a bad field.
    """
    leading: tuple[int, ...]
    if isinstance(request, UnknownCommand):
        if not request.is_request:
            raise LocalProtocolError(f"{request.name} is a response, not a request")
        if request.message_id is None:
            raise LocalProtocolError(f"{request.name} without Message ID cannot be answered")
        response_type: type[_Message] = UnknownResponse
        leading = (request.command_field | _RESPONSE_BIT, request.message_id, status)
        values = {"affected_sop_class_uid": _sop_class_of(request)}
    else:
        copies = _RESPONSE_COPIES.get(getattr(request, "command_field", -1))
        if copies is None:
            raise LocalProtocolError(f"{type(request).__name__} is not a request with a response")
        response_type = MESSAGE_TYPES[request.command_field | _RESPONSE_BIT]
        leading = (request.message_id, status)  # type: ignore[union-attr]
        values = {to: getattr(request, source) for source, to in copies}
    settable = {row.field for row in response_type.rows} - _SET_BY_RESPONSE_FOR
    unknown = fields.keys() - settable
    if unknown:
        raise LocalProtocolError(f"{response_type.__name__} cannot set {sorted(unknown)}")
    values.update(fields)
    return response_type(*leading, **values)  # type: ignore[return-value]



def _sop_class_of(request: UnknownCommand) -> str | None:
    """The request's Affected, else Requested, SOP Class UID, if a sendable one."""
    for element in (_AFFECTED_SOP_CLASS_UID, _REQUESTED_SOP_CLASS_UID):
        raw = request.elements.get(element)
        if raw is None:
            continue
        uid = raw.rstrip(b"\x00 ")
        if uid and uid.isascii():
            text = uid.decode("ascii")
            if text.isprintable() and len(text) <= _UI_MAX:
                return text
    return None


# --------------------------------------------------------------------------
# Encoding (PS3.7 6.3.1: group 0000, Implicit VR Little Endian, ascending tags).


def _encode_unknown(msg: UnknownCommand) -> bytes:
    fields = {tag: _ELEMENT_HEADER.pack(0, tag, len(v)) + v for tag, v in msg.elements.items()}
    fields[_COMMAND_FIELD] = _US_ELEMENT.pack(0, _COMMAND_FIELD, 2, msg.command_field)
    if msg.message_id is not None:
        fields[_MESSAGE_ID] = _US_ELEMENT.pack(0, _MESSAGE_ID, 2, msg.message_id)
    body = b"".join([fields[tag] for tag in sorted(fields)])
    return _UL_ELEMENT.pack(0, _GROUP_LENGTH, 4, len(body)) + body


def encode_command(msg: DimseMessage) -> bytes:
    """Encode ``msg`` as a command set (PS3.7 6.3.1, Annex E).

    Group 0000 in Implicit VR Little Endian (PS3.5 A.1), elements in ascending
    tag order (PS3.5 7.1), values padded to even length (UI with NUL, AE and LO
    with space; PS3.5 6.2), Command Group Length (0000,0000) UL first and equal
    to the length of everything after it (PS3.7 E.1). Optional fields that are
    None are left out.
    """
    encoder = _ENCODERS.get(type(msg))
    if encoder is not None:
        return encoder(msg)
    if isinstance(msg, UnknownCommand):
        return _encode_unknown(msg)
    raise LocalProtocolError(f"not a DIMSE message: {type(msg).__name__}")


# --------------------------------------------------------------------------
# Decoding.


def _parse_elements(data: bytes | memoryview) -> dict[int, bytes]:
    """Split a command set into its elements (PS3.5 7.1.2, PS3.7 6.3.1).

    A command set is small (the assembler bounds it by MAX_COMMAND_LENGTH) and
    every value is turned into a str or int anyway, so it is copied to bytes
    once and its values are bytes slices.
    """
    raw = data if type(data) is bytes else bytes(data)
    size = len(raw)
    if size < _GROUP_LENGTH_ELEMENT_LENGTH:
        _fail(f"command set of {size} bytes cannot hold Command Group Length")
    group, element, length, group_length = _UL_ELEMENT.unpack_from(raw, 0)
    if group != 0 or element != _GROUP_LENGTH or length != 4:
        _fail("command set does not start with Command Group Length (0000,0000) UL")
    if group_length != size - _GROUP_LENGTH_ELEMENT_LENGTH:
        _fail(
            f"Command Group Length says {group_length} bytes follow, "
            f"{size - _GROUP_LENGTH_ELEMENT_LENGTH} do"
        )
    unpack = _ELEMENT_HEADER.unpack_from
    header = _ELEMENT_HEADER_LENGTH
    elements: dict[int, bytes] = {}
    offset = _GROUP_LENGTH_ELEMENT_LENGTH
    previous = _GROUP_LENGTH
    try:
        while offset < size:
            group, element, length = unpack(raw, offset)
            start = offset + header
            offset = start + length
            if group or element <= previous or offset > size or length & 1:
                _bad_element(group, element, length, offset > size)
            elements[element] = raw[start:offset]
            previous = element
    except struct.error:
        _fail(f"truncated element header at offset {offset}")
    return elements


def _bad_element(group: int, element: int, length: int, overruns: bool) -> NoReturn:
    """Say what is wrong with an element _parse_elements refused."""
    if group:
        _fail(f"element ({group:04X},{element:04X}) outside group 0000 in a command set")
    if overruns:
        _fail(f"element {_name(element)} length {length} overruns the command set")
    if length & 1:
        # PS3.5 7.1.1: value lengths are even.
        _fail(f"element {_name(element)} has odd length {length}")
    # PS3.5 7.1: ascending tag order, each tag at most once.
    _fail(f"element {_name(element)} out of order or repeated")


def _decode_unknown(command_field: int, elements: dict[int, bytes]) -> UnknownCommand:
    message_id = elements.get(_MESSAGE_ID)
    return UnknownCommand(
        command_field=command_field,
        message_id=None if message_id is None else _decode_us(_MESSAGE_ID, message_id),
        elements={
            tag: value for tag, value in elements.items() if tag not in _UNKNOWN_COMMAND_OWN
        },
    )


def decode_command(data: bytes | memoryview) -> DimseMessage:
    """Decode a complete command set received from the peer (PS3.7 6.3.1, Annex E).

    Checks: Command Group Length (0000,0000) UL first and equal to the bytes after
    it; group 0000 only; ascending, unique tags; every length even and inside the
    buffer; then, against the command's table in :data:`COMMAND_TABLES`, required
    fields present, US values 2 bytes, AT values a multiple of 4, UIDs and LO
    printable ASCII of at most 64 characters, AE at most 16 characters without
    control characters or backslash, Priority 0/1/2. Command Data Set Type is
    honoured as sent (``has_dataset``). An empty optional element decodes as
    absent; a C-ECHO-RSP without Affected SOP Class UID is Verification's.
    Elements the table does not list are ignored. A Command Field without a
    table gives :class:`UnknownCommand`.

    Raises :class:`RemoteProtocolError` (service-user A-ABORT, source 0 reason 0)
    for anything malformed, and nothing else for any input.
    """
    elements = _parse_elements(data)
    raw = elements.get(_COMMAND_FIELD)
    if raw is None or len(raw) != 2:
        _bad_us(_COMMAND_FIELD, raw)
    command_field = raw[0] | raw[1] << 8
    decoder = _DECODERS.get(command_field)
    try:
        if decoder is None:
            return _decode_unknown(command_field, elements)
        return decoder(elements)  # type: ignore[no-any-return]
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
