"""DICOM Upper Layer PDU codec (PS3.8 9.3, PS3.8 Annex D, PS3.7 Annex D.3.3).

Theory of operation
-------------------
This module owns the byte layout of the seven Upper Layer PDUs and of every item
and sub-item they carry, and nothing else. It turns bytes into frozen
``msgspec.Struct`` values and values back into bytes; it never does I/O, never
reads a clock, never decides what a PDU *means* (that is the DUL state machine's
and the ACSE layer's job: a bad protocol version, an unsupported abstract syntax
or an even presentation context ID all decode fine and are answered upstream).

Receiving: :class:`PDUDecoder` frames a TCP byte stream incrementally. It reads
the 6-byte PDU header with ``struct.unpack_from``, rejects an unknown type or an
over-limit length *before* buffering the body, and decodes every PDU that lies
whole inside a fed chunk straight from that chunk. P-DATA-TF payloads leave as
``memoryview`` slices of an immutable ``bytes`` object (the caller's, or one
private copy when the caller fed a mutable buffer); a PDU that spans chunks is
collected as views and joined once. Every length a peer sends is checked against
its container, and the only exception the receive path raises is
:class:`~engine._errors.RemoteProtocolError`, carrying the A-ABORT source and
reason to answer with (PS3.8 Table 9-26). After an error the decoder is dead.

Sending: :func:`encode_pdu` builds a list of parts and joins once;
:func:`pdata_header` gives the 12 bytes that precede a single-PDV P-DATA-TF
payload so the I/O layer can write ``[header, payload]`` without copying it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TypeAlias

import msgspec

from ._errors import (
    ABORT_REASON_INVALID_PARAMETER,
    ABORT_REASON_UNRECOGNIZED_PDU,
    ABORT_SOURCE_PROVIDER,
    RemoteProtocolError,
)

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "PresentationContextRQ",
    "PresentationContextAC",
    "RoleSelection",
    "SOPClassExtended",
    "SOPClassCommonExtended",
    "UserIdentityRQ",
    "UserIdentityAC",
    "UserInformation",
    "AAssociateRQ",
    "AAssociateAC",
    "AAssociateRJ",
    "PDV",
    "PDataTF",
    "AReleaseRQ",
    "AReleaseRP",
    "AAbort",
    "PDU",
    "PDUDecoder",
    "decode_pdu",
    "encode_pdu",
    "pdata_header",
]

#: The DICOM Application Context Name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

# PDU types (PS3.8 Table 9-11 .. 9-26, first field of every PDU).
_A_ASSOCIATE_RQ = 0x01
_A_ASSOCIATE_AC = 0x02
_A_ASSOCIATE_RJ = 0x03
_P_DATA_TF = 0x04
_A_RELEASE_RQ = 0x05
_A_RELEASE_RP = 0x06
_A_ABORT = 0x07

# Item types of the A-ASSOCIATE-RQ/AC variable field (PS3.8 9.3.2.1-9.3.3.3).
_ITEM_APPLICATION_CONTEXT = 0x10
_ITEM_PRESENTATION_CONTEXT_RQ = 0x20
_ITEM_PRESENTATION_CONTEXT_AC = 0x21
_SUB_ABSTRACT_SYNTAX = 0x30
_SUB_TRANSFER_SYNTAX = 0x40
_ITEM_USER_INFORMATION = 0x50
# User Information sub-items (PS3.8 D.1, PS3.7 D.3.3.2-D.3.3.7).
_SUB_MAX_LENGTH = 0x51
_SUB_IMPLEMENTATION_CLASS_UID = 0x52
_SUB_ASYNC_OPS_WINDOW = 0x53
_SUB_ROLE_SELECTION = 0x54
_SUB_IMPLEMENTATION_VERSION_NAME = 0x55
_SUB_SOP_CLASS_EXTENDED = 0x56
_SUB_SOP_CLASS_COMMON_EXTENDED = 0x57
_SUB_USER_IDENTITY_RQ = 0x58
_SUB_USER_IDENTITY_AC = 0x59

# PDU header: type, reserved, 32-bit PDU-length (PS3.8 9.3.1).
_PDU_HEADER = struct.Struct(">BxI")
_PDU_HEADER_LEN = _PDU_HEADER.size
# Item / sub-item header: type, reserved, 16-bit item-length (PS3.8 9.3.2).
_ITEM_HEADER = struct.Struct(">BxH")
_ITEM_HEADER_LEN = _ITEM_HEADER.size
# A-ASSOCIATE-RQ/AC fixed fields after the PDU header: protocol-version,
# reserved, called AE, calling AE, 32 reserved bytes (PS3.8 Tables 9-11, 9-17).
_ASSOCIATE_FIXED = struct.Struct(">H2x16s16s32x")
_ASSOCIATE_FIXED_LEN = _ASSOCIATE_FIXED.size
# PDV item header: item-length, presentation context ID, message control header
# (PS3.8 Table 9-23 and Annex E.2).
_PDV_HEADER = struct.Struct(">IBB")
_PDV_HEADER_LEN = _PDV_HEADER.size
# PDU header + PDV item header of a single-PDV P-DATA-TF, packed in one call.
_PDATA_HEADER = struct.Struct(">BxIIBB")
# Fixed-length PDUs: PDU header + their 4-byte body (PS3.8 Tables 9-21, 9-24..9-26).
_RJ_PDU = struct.Struct(">BxIxBBB")
_RJ_BODY = struct.Struct(">xBBB")
_ABORT_PDU = struct.Struct(">BxIxxBB")
_ABORT_BODY = struct.Struct(">xxBB")
_FIXED_BODY_LEN = 4
_RELEASE_RQ_BYTES = _PDU_HEADER.pack(_A_RELEASE_RQ, _FIXED_BODY_LEN) + bytes(4)
_RELEASE_RP_BYTES = _PDU_HEADER.pack(_A_RELEASE_RP, _FIXED_BODY_LEN) + bytes(4)
# Sub-item field layouts (PS3.8 D.1; PS3.7 D.3.3.3, D.3.3.4, D.3.3.7).
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U16_PAIR = struct.Struct(">HH")
_U8_PAIR = struct.Struct(">BB")
_PC_RQ_FIXED = struct.Struct(">B3x")
_PC_AC_FIXED = struct.Struct(">BxBx")

# AE titles are 16 bytes on the wire (PS3.8 Table 9-11, PS3.5 AE VR).
_AE_TITLE_LEN = 16
# Implementation-version-name is 1 to 16 characters (PS3.7 D.3.3.2).
_VERSION_NAME_MAX = 16
# Item-length is a 16-bit field (PS3.8 9.3.2).
_ITEM_LEN_MAX = 0xFFFF
# Cap on non-P-DATA PDUs: 128 contexts of 64-byte UIDs (~35 KiB) plus a large
# SAML/JWT user identity fit far below it; it stops pre-association memory abuse.
_DEFAULT_MAX_ASSOCIATE_LENGTH = 1 << 20
# Message control header flags, indexed by the byte (PS3.8 Annex E.2):
# bit 0 set = command, bit 1 set = last fragment; bits 2-7 not tested.
_MCH_FLAGS = tuple((bool(m & 1), bool(m & 2)) for m in range(256))
# Trailing padding some peers put after UIDs and names (PS3.5 9.1 pads with NUL).
_UID_PADDING = "\x00 "


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


class PresentationContextRQ(msgspec.Struct, frozen=True):
    """Presentation Context Item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2, item 20H)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


class PresentationContextAC(msgspec.Struct, frozen=True):
    """Presentation Context Item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2, item 21H).

    ``result``: 0 acceptance, 1 user-rejection, 2 no-reason (provider rejection),
    3 abstract syntax not supported, 4 transfer syntaxes not supported. When it is
    not 0 the transfer syntax is not significant; ``""`` encodes a zero-length
    Transfer Syntax sub-item.
    """

    context_id: int
    result: int
    transfer_syntax: str


class RoleSelection(msgspec.Struct, frozen=True):
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4, sub-item 54H)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


class SOPClassExtended(msgspec.Struct, frozen=True):
    """SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5, sub-item 56H)."""

    sop_class_uid: str
    service_class_application_information: bytes


class SOPClassCommonExtended(msgspec.Struct, frozen=True):
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6, sub-item 57H)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_class_uids: tuple[str, ...] = ()


class UserIdentityRQ(msgspec.Struct, frozen=True):
    """User Identity Negotiation sub-item of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1, 58H).

    ``identity_type`` is decoded as sent (1 username, 2 username and passcode,
    3 Kerberos, 4 SAML, 5 JWT); judging it is the ACSE layer's job.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


class UserIdentityAC(msgspec.Struct, frozen=True):
    """User Identity Negotiation sub-item of an A-ASSOCIATE-AC (PS3.7 D.3.3.7.2, 59H)."""

    server_response: bytes


class UserInformation(msgspec.Struct, frozen=True):
    """User Information Item (PS3.8 9.3.2.3 / 9.3.3.3, item 50H) and its sub-items.

    ``max_length`` is the Maximum Length sub-item (PS3.8 D.1, 51H; 0 = no limit);
    ``async_ops_window`` is (max operations invoked, max operations performed)
    (PS3.7 D.3.3.3, 53H). ``None`` / ``()`` means the sub-item is absent.
    """

    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops_window: tuple[int, int] | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    sop_class_extended: tuple[SOPClassExtended, ...] = ()
    sop_class_common_extended: tuple[SOPClassCommonExtended, ...] = ()
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None


class AAssociateRQ(msgspec.Struct, frozen=True):
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2, Table 9-11).

    AE titles are the raw 16 bytes when decoded; shorter titles are padded with
    spaces when encoded.
    """

    called_ae_title: bytes
    calling_ae_title: bytes
    application_context_name: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    protocol_version: int = 1


class AAssociateAC(msgspec.Struct, frozen=True):
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3, Table 9-17).

    The AE title fields are reserved in the AC: sent as received in the RQ, never
    tested when received.
    """

    called_ae_title: bytes
    calling_ae_title: bytes
    application_context_name: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    protocol_version: int = 1


class AAssociateRJ(msgspec.Struct, frozen=True):
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4, Table 9-21): result, source, reason/diag."""

    result: int
    source: int
    reason: int


class PDV(msgspec.Struct, frozen=True, gc=False):
    """Presentation Data Value item (PS3.8 9.3.5.1, Table 9-23; Annex E.2).

    ``data`` is a fragment of a command or data set, a view of received bytes.
    (``gc=False``: a PDV holds only ints, bools and a view, so it can never be
    part of a reference cycle; skipping GC tracking matters on the hot path.)
    """

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


class PDataTF(msgspec.Struct, frozen=True, gc=False):
    """P-DATA-TF PDU (PS3.8 9.3.5, Table 9-22): one or more PDV items."""

    pdvs: tuple[PDV, ...]


class AReleaseRQ(msgspec.Struct, frozen=True):
    """A-RELEASE-RQ PDU (PS3.8 9.3.6, Table 9-24)."""


class AReleaseRP(msgspec.Struct, frozen=True):
    """A-RELEASE-RP PDU (PS3.8 9.3.7, Table 9-25)."""


class AAbort(msgspec.Struct, frozen=True):
    """A-ABORT PDU (PS3.8 9.3.8, Table 9-26): source and reason/diag."""

    source: int
    reason: int


PDU: TypeAlias = (
    AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort
)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def _invalid(message: str) -> RemoteProtocolError:
    """An invalid-PDU-parameter-value A-ABORT cause (PS3.8 Table 9-26, reason 6)."""
    return RemoteProtocolError(
        message,
        abort_source=ABORT_SOURCE_PROVIDER,
        abort_reason=ABORT_REASON_INVALID_PARAMETER,
    )


def _ascii(buf: memoryview, start: int, stop: int, what: str) -> str:
    """A UID or name field as ``str``, trailing NUL/space padding removed.

    UIDs in UL items are PS3.5 9.1 UIDs (no padding needed, but some peers pad);
    anything that is not ASCII is an invalid parameter value.
    """
    try:
        text = str(buf[start:stop], "ascii")
    except UnicodeDecodeError:
        raise _invalid(f"{what} is not ASCII") from None
    return text.rstrip(_UID_PADDING)


def _iter_items(buf: memoryview, pos: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, value_start, value_stop)`` for each item in ``buf[pos:end]``.

    Items and sub-items share the 4-byte header of PS3.8 9.3.2 (type, reserved,
    16-bit length); an item whose header or value overruns its container is an
    invalid parameter value.
    """
    while pos < end:
        if end - pos < _ITEM_HEADER_LEN:
            raise _invalid(f"truncated {what} header")
        item_type, length = _ITEM_HEADER.unpack_from(buf, pos)
        start = pos + _ITEM_HEADER_LEN
        stop = start + length
        if stop > end:
            raise _invalid(f"{what} 0x{item_type:02X} length {length} overruns its container")
        yield item_type, start, stop
        pos = stop


def _decode_pc_rq(buf: memoryview, start: int, stop: int) -> PresentationContextRQ:
    """Presentation Context Item, RQ form (PS3.8 9.3.2.2, Table 9-13).

    Exactly one Abstract Syntax sub-item (30H) and at least one Transfer Syntax
    sub-item (40H) are required; other sub-item types are ignored.
    """
    if stop - start < _PC_RQ_FIXED.size:
        raise _invalid("presentation context item too short")
    (context_id,) = _PC_RQ_FIXED.unpack_from(buf, start)
    abstract_syntax: str | None = None
    transfer_syntaxes: list[str] = []
    for sub_type, a, b in _iter_items(buf, start + _PC_RQ_FIXED.size, stop, "sub-item"):
        if sub_type == _SUB_ABSTRACT_SYNTAX:
            if abstract_syntax is not None:
                raise _invalid(f"presentation context {context_id} has two abstract syntaxes")
            abstract_syntax = _ascii(buf, a, b, "abstract syntax")
        elif sub_type == _SUB_TRANSFER_SYNTAX:
            transfer_syntaxes.append(_ascii(buf, a, b, "transfer syntax"))
    if abstract_syntax is None:
        raise _invalid(f"presentation context {context_id} has no abstract syntax")
    if not transfer_syntaxes:
        raise _invalid(f"presentation context {context_id} has no transfer syntax")
    return PresentationContextRQ(context_id, abstract_syntax, tuple(transfer_syntaxes))


def _decode_pc_ac(buf: memoryview, start: int, stop: int) -> PresentationContextAC:
    """Presentation Context Item, AC form (PS3.8 9.3.3.2, Table 9-18).

    On acceptance exactly one Transfer Syntax sub-item is required. On rejection
    the sub-item "is not significant": whatever is there (or nothing) is accepted
    and kept when it is readable ASCII, else ``""``.
    """
    if stop - start < _PC_AC_FIXED.size:
        raise _invalid("presentation context item too short")
    context_id, result = _PC_AC_FIXED.unpack_from(buf, start)
    spans = [
        (a, b)
        for sub_type, a, b in _iter_items(buf, start + _PC_AC_FIXED.size, stop, "sub-item")
        if sub_type == _SUB_TRANSFER_SYNTAX
    ]
    if result == 0:
        if len(spans) != 1:
            raise _invalid(
                f"accepted presentation context {context_id} has {len(spans)} transfer syntaxes"
            )
        transfer_syntax = _ascii(buf, spans[0][0], spans[0][1], "transfer syntax")
    else:
        transfer_syntax = ""
        if spans:
            try:
                transfer_syntax = _ascii(buf, spans[0][0], spans[0][1], "transfer syntax")
            except RemoteProtocolError:
                transfer_syntax = ""
    return PresentationContextAC(context_id, result, transfer_syntax)


def _flag(value: int, what: str) -> bool:
    """A one-byte 0/1 field (PS3.7 D.3.3.4 roles, D.3.3.7 positive-response)."""
    if value > 1:
        raise _invalid(f"{what} must be 0 or 1, got {value}")
    return value == 1


def _decode_role(buf: memoryview, start: int, stop: int) -> RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4, Tables D.3-9/D.3-10)."""
    if stop - start < 2:
        raise _invalid("role selection sub-item too short")
    (uid_len,) = _U16.unpack_from(buf, start)
    uid_stop = start + 2 + uid_len
    if uid_stop + 2 != stop:
        raise _invalid("role selection sub-item length does not match its UID length")
    scu, scp = _U8_PAIR.unpack_from(buf, uid_stop)
    return RoleSelection(
        _ascii(buf, start + 2, uid_stop, "role selection SOP class UID"),
        _flag(scu, "SCU-role"),
        _flag(scp, "SCP-role"),
    )


def _decode_sop_ext(buf: memoryview, start: int, stop: int) -> SOPClassExtended:
    """SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5, Table D.3-11)."""
    if stop - start < 2:
        raise _invalid("SOP class extended negotiation sub-item too short")
    (uid_len,) = _U16.unpack_from(buf, start)
    uid_stop = start + 2 + uid_len
    if uid_stop > stop:
        raise _invalid("SOP class UID overruns its extended negotiation sub-item")
    return SOPClassExtended(
        _ascii(buf, start + 2, uid_stop, "extended negotiation SOP class UID"),
        bytes(buf[uid_stop:stop]),
    )


def _length_prefixed(buf: memoryview, pos: int, stop: int, what: str) -> tuple[int, int]:
    """Span of a 2-byte-length-prefixed field at ``pos`` inside ``buf[:stop]``."""
    if stop - pos < 2:
        raise _invalid(f"{what} length field truncated")
    (length,) = _U16.unpack_from(buf, pos)
    end = pos + 2 + length
    if end > stop:
        raise _invalid(f"{what} overruns its sub-item")
    return pos + 2, end


def _decode_sop_common_ext(buf: memoryview, start: int, stop: int) -> SOPClassCommonExtended:
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6, Tables D.3-12/13).

    Layout: SOP class UID, service class UID, then a length-prefixed list of
    length-prefixed related general SOP class UIDs filling the item exactly.
    """
    a, b = _length_prefixed(buf, start, stop, "common extended SOP class UID")
    sop_class_uid = _ascii(buf, a, b, "common extended SOP class UID")
    a, b = _length_prefixed(buf, b, stop, "service class UID")
    service_class_uid = _ascii(buf, a, b, "service class UID")
    rel_start, rel_stop = _length_prefixed(buf, b, stop, "related general SOP class list")
    if rel_stop != stop:
        raise _invalid("common extended negotiation sub-item has trailing bytes")
    related: list[str] = []
    pos = rel_start
    while pos < rel_stop:
        a, pos = _length_prefixed(buf, pos, rel_stop, "related general SOP class UID")
        related.append(_ascii(buf, a, pos, "related general SOP class UID"))
    return SOPClassCommonExtended(sop_class_uid, service_class_uid, tuple(related))


def _decode_identity_rq(buf: memoryview, start: int, stop: int) -> UserIdentityRQ:
    """User Identity sub-item, RQ form (PS3.7 D.3.3.7.1, Table D.3-14)."""
    if stop - start < 2:
        raise _invalid("user identity sub-item too short")
    identity_type, positive = _U8_PAIR.unpack_from(buf, start)
    a, b = _length_prefixed(buf, start + 2, stop, "user identity primary field")
    c, d = _length_prefixed(buf, b, stop, "user identity secondary field")
    if d != stop:
        raise _invalid("user identity sub-item has trailing bytes")
    return UserIdentityRQ(
        identity_type,
        _flag(positive, "positive-response-requested"),
        bytes(buf[a:b]),
        bytes(buf[c:d]),
    )


def _decode_identity_ac(buf: memoryview, start: int, stop: int) -> UserIdentityAC:
    """User Identity sub-item, AC form (PS3.7 D.3.3.7.2, Table D.3-15)."""
    a, b = _length_prefixed(buf, start, stop, "user identity server response")
    if b != stop:
        raise _invalid("user identity sub-item has trailing bytes")
    return UserIdentityAC(bytes(buf[a:b]))


def _decode_user_info(buf: memoryview, start: int, stop: int) -> UserInformation:
    """User Information Item (PS3.8 9.3.2.3, 9.3.3.3; Annex D) with its sub-items.

    Single-valued sub-items (51H, 52H, 53H, 55H, 58H, 59H) may appear once; a
    repeat is an invalid parameter value since which one counts is ambiguous.
    Sub-items of unknown type are skipped (PS3.8 9.3.1).
    """
    single: dict[str, object] = {}
    roles: list[RoleSelection] = []
    exts: list[SOPClassExtended] = []
    common: list[SOPClassCommonExtended] = []

    def once(key: str, value: object) -> None:
        if key in single:
            raise _invalid(f"user information has two {key} sub-items")
        single[key] = value

    for sub_type, a, b in _iter_items(buf, start, stop, "user information sub-item"):
        if sub_type == _SUB_MAX_LENGTH:
            if b - a != _U32.size:
                raise _invalid("maximum length sub-item must be 4 bytes")
            once("max_length", _U32.unpack_from(buf, a)[0])
        elif sub_type == _SUB_IMPLEMENTATION_CLASS_UID:
            once("implementation_class_uid", _ascii(buf, a, b, "implementation class UID"))
        elif sub_type == _SUB_ASYNC_OPS_WINDOW:
            if b - a != _U16_PAIR.size:
                raise _invalid("asynchronous operations window sub-item must be 4 bytes")
            once("async_ops_window", _U16_PAIR.unpack_from(buf, a))
        elif sub_type == _SUB_ROLE_SELECTION:
            roles.append(_decode_role(buf, a, b))
        elif sub_type == _SUB_IMPLEMENTATION_VERSION_NAME:
            once(
                "implementation_version_name",
                _ascii(buf, a, b, "implementation version name"),
            )
        elif sub_type == _SUB_SOP_CLASS_EXTENDED:
            exts.append(_decode_sop_ext(buf, a, b))
        elif sub_type == _SUB_SOP_CLASS_COMMON_EXTENDED:
            common.append(_decode_sop_common_ext(buf, a, b))
        elif sub_type == _SUB_USER_IDENTITY_RQ:
            once("user_identity_rq", _decode_identity_rq(buf, a, b))
        elif sub_type == _SUB_USER_IDENTITY_AC:
            once("user_identity_ac", _decode_identity_ac(buf, a, b))
    return UserInformation(
        role_selections=tuple(roles),
        sop_class_extended=tuple(exts),
        sop_class_common_extended=tuple(common),
        **single,  # type: ignore[arg-type]
    )


def _decode_associate(pdu_type: int, buf: memoryview, start: int, end: int) -> PDU:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) or -AC (PS3.8 9.3.3) variable field.

    One Application Context item and one User Information item are required.
    Items whose type is not defined for this PDU are skipped (PS3.8 9.3.1).
    The protocol version is decoded, not judged (the ACSE layer rejects it).
    """
    if end - start < _ASSOCIATE_FIXED_LEN:
        raise _invalid("A-ASSOCIATE PDU shorter than its fixed fields")
    version, called, calling = _ASSOCIATE_FIXED.unpack_from(buf, start)
    is_rq = pdu_type == _A_ASSOCIATE_RQ
    context_item = _ITEM_PRESENTATION_CONTEXT_RQ if is_rq else _ITEM_PRESENTATION_CONTEXT_AC
    decode_context: Callable[[memoryview, int, int], object] = (
        _decode_pc_rq if is_rq else _decode_pc_ac
    )
    application_context: str | None = None
    contexts: list = []
    user_information: UserInformation | None = None
    for item_type, a, b in _iter_items(buf, start + _ASSOCIATE_FIXED_LEN, end, "item"):
        if item_type == context_item:
            contexts.append(decode_context(buf, a, b))
        elif item_type == _ITEM_APPLICATION_CONTEXT:
            if application_context is not None:
                raise _invalid("two application context items")
            application_context = _ascii(buf, a, b, "application context name")
        elif item_type == _ITEM_USER_INFORMATION:
            if user_information is not None:
                raise _invalid("two user information items")
            user_information = _decode_user_info(buf, a, b)
    if application_context is None:
        raise _invalid("A-ASSOCIATE PDU has no application context item")
    if user_information is None:
        raise _invalid("A-ASSOCIATE PDU has no user information item")
    cls = AAssociateRQ if is_rq else AAssociateAC
    return cls(
        called_ae_title=called,
        calling_ae_title=calling,
        application_context_name=application_context,
        presentation_contexts=tuple(contexts),
        user_information=user_information,
        protocol_version=version,
    )


def _decode_pdata(buf: memoryview, start: int, end: int) -> PDataTF:
    """P-DATA-TF variable field (PS3.8 9.3.5, Tables 9-22/9-23; Annex E.2).

    A tight loop over PDV items; each PDV's data is a slice of ``buf`` (no copy).
    Item-length counts the context ID and control header, so it is at least 2.
    """
    pdvs: list[PDV] = []
    append = pdvs.append
    unpack = _PDV_HEADER.unpack_from
    flags = _MCH_FLAGS
    pos = start
    while pos < end:
        if end - pos < _PDV_HEADER_LEN:
            raise _invalid("truncated PDV item header")
        length, context_id, control = unpack(buf, pos)
        stop = pos + 4 + length
        if length < 2 or stop > end:
            raise _invalid(f"PDV item length {length} is invalid for its P-DATA-TF")
        is_command, is_last = flags[control]
        append(PDV(context_id, is_command, is_last, buf[pos + _PDV_HEADER_LEN : stop]))
        pos = stop
    if not pdvs:
        raise _invalid("P-DATA-TF without any PDV item")
    return PDataTF(tuple(pdvs))


def _decode_fixed(pdu_type: int, buf: memoryview, start: int, end: int) -> PDU:
    """The 4-byte bodies of A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT.

    PS3.8 Tables 9-21, 9-24, 9-25, 9-26; the length was checked on the header and
    reserved bytes are not tested.
    """
    if pdu_type == _A_ABORT:
        source, reason = _ABORT_BODY.unpack_from(buf, start)
        return AAbort(source, reason)
    if pdu_type == _A_ASSOCIATE_RJ:
        result, source, reason = _RJ_BODY.unpack_from(buf, start)
        return AAssociateRJ(result, source, reason)
    if pdu_type == _A_RELEASE_RQ:
        return AReleaseRQ()
    return AReleaseRP()


class PDUDecoder:
    """Incremental PDU framer and decoder for one association (PS3.8 9.3).

    ``max_pdata_length`` is the Maximum Length we advertised (PS3.8 D.1): the
    largest P-DATA-TF PDU-length (its variable field, the PDV list) we accept;
    0 means no limit, as D.1 defines it. ``max_associate_length`` caps every
    other PDU; its 1 MiB default is far above any real negotiation (128 contexts
    of 64-byte UIDs with three transfer syntaxes each are ~35 KiB; a SAML or JWT
    user identity adds tens of KiB) yet keeps an unauthenticated peer from making
    us buffer gigabytes before the association exists.

    Feed it received bytes; it returns the PDUs completed so far. A
    :class:`RemoteProtocolError` leaves the decoder dead (PDUs decoded earlier in
    the same chunk are dropped: the association is aborted anyway); every later
    ``feed`` raises the same source/reason again.
    """

    __slots__ = (
        "_max_pdata",
        "_max_associate",
        "_parts",
        "_have",
        "_pdu_type",
        "_pdu_length",
        "_dead",
    )

    def __init__(
        self,
        max_pdata_length: int = 0,
        max_associate_length: int = _DEFAULT_MAX_ASSOCIATE_LENGTH,
    ) -> None:
        if max_pdata_length < 0 or max_associate_length < _ASSOCIATE_FIXED_LEN:
            raise ValueError("PDUDecoder limits must be non-negative and fit an A-ASSOCIATE")
        self._max_pdata = max_pdata_length
        self._max_associate = max_associate_length
        # Pieces (views of immutable bytes) of the incomplete header or body.
        self._parts: list[memoryview] = []
        self._have = 0
        # Type and length of the PDU whose body is pending; -1 while reading a header.
        self._pdu_type = -1
        self._pdu_length = 0
        self._dead: RemoteProtocolError | None = None

    @property
    def max_pdata_length(self) -> int:
        """The P-DATA-TF PDU-length limit (0 = none); the ACSE layer may set it."""
        return self._max_pdata

    @max_pdata_length.setter
    def max_pdata_length(self, value: int) -> None:
        if value < 0:
            raise ValueError("max_pdata_length must be non-negative")
        self._max_pdata = value

    @property
    def buffered(self) -> int:
        """Bytes held for a PDU that is not complete yet (0 at a PDU boundary)."""
        return self._have + (_PDU_HEADER_LEN if self._pdu_type >= 0 else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[PDU]:
        """Consume received bytes; return every PDU they complete, in order.

        PS3.8 9.3.1 framing. Raises only :class:`RemoteProtocolError`.
        """
        if self._dead is not None:
            raise RemoteProtocolError(
                f"decoder already failed: {self._dead}",
                abort_source=self._dead.abort_source,
                abort_reason=self._dead.abort_reason,
            )
        if type(data) is bytes:
            view = memoryview(data)
        elif (
            type(data) is memoryview
            and data.readonly
            and type(data.obj) is bytes
            and data.format == "B"
            and data.c_contiguous
        ):
            view = data
        else:
            # One copy so that PDV views never point into a buffer that can change.
            view = memoryview(bytes(data))
        try:
            return self._feed(view)
        except RemoteProtocolError as exc:
            self._dead = exc
            self._parts = []
            raise

    def _check_header(self, pdu_type: int, length: int) -> None:
        """Judge a PDU header before its body is buffered (PS3.8 9.3.1, D.1)."""
        if pdu_type == _P_DATA_TF:
            if self._max_pdata and length > self._max_pdata:
                raise _invalid(
                    f"P-DATA-TF length {length} exceeds our maximum length {self._max_pdata}"
                )
        elif pdu_type == _A_ASSOCIATE_RQ or pdu_type == _A_ASSOCIATE_AC:
            if length > self._max_associate:
                raise _invalid(f"A-ASSOCIATE PDU length {length} exceeds {self._max_associate}")
            if length < _ASSOCIATE_FIXED_LEN:
                raise _invalid("A-ASSOCIATE PDU shorter than its fixed fields")
        elif _A_ASSOCIATE_RJ <= pdu_type <= _A_ABORT:
            if length != _FIXED_BODY_LEN:
                raise _invalid(f"PDU type 0x{pdu_type:02X} must have length 4, got {length}")
        else:
            raise RemoteProtocolError(
                f"unrecognized PDU type 0x{pdu_type:02X}",
                abort_source=ABORT_SOURCE_PROVIDER,
                abort_reason=ABORT_REASON_UNRECOGNIZED_PDU,
            )

    def _feed(self, view: memoryview) -> list[PDU]:
        out: list[PDU] = []
        end = len(view)
        pos = 0
        if self._have or self._pdu_type >= 0:
            pos = self._resume(view, end, out)
        unpack_header = _PDU_HEADER.unpack_from
        unpack_pdv = _PDV_HEADER.unpack_from
        flags = _MCH_FLAGS
        max_pdata = self._max_pdata
        check = self._check_header
        while end - pos >= _PDU_HEADER_LEN:
            pdu_type, length = unpack_header(view, pos)
            if pdu_type != _P_DATA_TF or (max_pdata and length > max_pdata):
                check(pdu_type, length)
            body = pos + _PDU_HEADER_LEN
            stop = body + length
            if stop > end:
                self._pdu_type = pdu_type
                self._pdu_length = length
                self._parts.append(view[body:])
                self._have = end - body
                return out
            if pdu_type == _P_DATA_TF:
                if length >= _PDV_HEADER_LEN:
                    item_length, context_id, control = unpack_pdv(view, body)
                    if item_length + 4 == length and item_length >= 2:
                        # Fast path: one PDV filling the PDU, as almost every peer sends.
                        is_command, is_last = flags[control]
                        out.append(
                            PDataTF(
                                (
                                    PDV(
                                        context_id,
                                        is_command,
                                        is_last,
                                        view[body + _PDV_HEADER_LEN : stop],
                                    ),
                                )
                            )
                        )
                        pos = stop
                        continue
                out.append(_decode_pdata(view, body, stop))
            elif pdu_type <= _A_ASSOCIATE_AC:
                out.append(_decode_associate(pdu_type, view, body, stop))
            else:
                out.append(_decode_fixed(pdu_type, view, body, stop))
            pos = stop
        if pos < end:
            self._parts.append(view[pos:])
            self._have = end - pos
        return out

    def _resume(self, view: memoryview, end: int, out: list[PDU]) -> int:
        """Continue the PDU left incomplete by an earlier chunk; return the new offset."""
        pos = 0
        if self._pdu_type < 0:
            take = min(_PDU_HEADER_LEN - self._have, end)
            self._parts.append(view[:take])
            self._have += take
            pos = take
            if self._have < _PDU_HEADER_LEN:
                return pos
            header = b"".join(self._parts)
            self._parts = []
            self._have = 0
            pdu_type, length = _PDU_HEADER.unpack(header)
            self._check_header(pdu_type, length)
            self._pdu_type = pdu_type
            self._pdu_length = length
        need = self._pdu_length - self._have
        if end - pos < need:
            if pos < end:
                self._parts.append(view[pos:])
                self._have += end - pos
            return end
        if need:
            self._parts.append(view[pos : pos + need])
        pos += need
        parts = self._parts
        body = parts[0] if len(parts) == 1 else memoryview(b"".join(parts))
        pdu_type = self._pdu_type
        self._parts = []
        self._have = 0
        self._pdu_type = -1
        length = self._pdu_length
        if pdu_type == _P_DATA_TF:
            out.append(_decode_pdata(body, 0, length))
        elif pdu_type <= _A_ASSOCIATE_AC:
            out.append(_decode_associate(pdu_type, body, 0, length))
        else:
            out.append(_decode_fixed(pdu_type, body, 0, length))
        return pos


def decode_pdu(data: bytes) -> PDU:
    """Decode bytes holding exactly one PDU (PS3.8 9.3); raise RemoteProtocolError otherwise."""
    decoder = PDUDecoder()
    pdus = decoder.feed(data)
    if len(pdus) != 1 or decoder.buffered:
        raise _invalid(f"expected exactly one whole PDU, got {len(pdus)} and a remainder")
    return pdus[0]


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _uid_bytes(value: str, what: str) -> bytes:
    """A UID or name as ASCII bytes, unpadded (PS3.8 9.3.2.1, PS3.5 9.1)."""
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be ASCII: {value!r}") from None


def _item(item_type: int, *payload: bytes) -> bytes:
    """One item or sub-item: header and payload (PS3.8 9.3.2 item layout)."""
    length = sum(map(len, payload))
    if length > _ITEM_LEN_MAX:
        raise ValueError(f"item 0x{item_type:02X} of {length} bytes exceeds 16-bit item-length")
    return b"".join((_ITEM_HEADER.pack(item_type, length), *payload))


def _prefixed(value: bytes) -> bytes:
    """A field preceded by its 2-byte length (PS3.7 D.3.3.4-D.3.3.7)."""
    return _U16.pack(len(value)) + value


def _ae_title(value: bytes, what: str) -> bytes:
    """AE title padded with spaces to 16 bytes (PS3.8 Table 9-11)."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes")
    if len(value) > _AE_TITLE_LEN:
        raise ValueError(f"{what} longer than 16 bytes: {value!r}")
    return value.ljust(_AE_TITLE_LEN, b" ")


def _encode_user_info(info: UserInformation) -> bytes:
    """User Information Item with its sub-items in type order (PS3.8 9.3.2.3, Annex D)."""
    subs: list[bytes] = []
    if info.max_length is not None:
        subs.append(_item(_SUB_MAX_LENGTH, _U32.pack(info.max_length)))
    if info.implementation_class_uid is not None:
        subs.append(
            _item(
                _SUB_IMPLEMENTATION_CLASS_UID,
                _uid_bytes(info.implementation_class_uid, "implementation class UID"),
            )
        )
    if info.async_ops_window is not None:
        invoked, performed = info.async_ops_window
        subs.append(_item(_SUB_ASYNC_OPS_WINDOW, _U16_PAIR.pack(invoked, performed)))
    for role in info.role_selections:
        uid = _uid_bytes(role.sop_class_uid, "role selection SOP class UID")
        subs.append(
            _item(
                _SUB_ROLE_SELECTION,
                _prefixed(uid),
                _U8_PAIR.pack(1 if role.scu_role else 0, 1 if role.scp_role else 0),
            )
        )
    if info.implementation_version_name is not None:
        name = _uid_bytes(info.implementation_version_name, "implementation version name")
        if not 1 <= len(name) <= _VERSION_NAME_MAX:
            raise ValueError("implementation version name must be 1 to 16 characters")
        subs.append(_item(_SUB_IMPLEMENTATION_VERSION_NAME, name))
    for ext in info.sop_class_extended:
        uid = _uid_bytes(ext.sop_class_uid, "extended negotiation SOP class UID")
        subs.append(
            _item(
                _SUB_SOP_CLASS_EXTENDED,
                _prefixed(uid),
                bytes(ext.service_class_application_information),
            )
        )
    for common in info.sop_class_common_extended:
        related = b"".join(
            _prefixed(_uid_bytes(uid, "related general SOP class UID"))
            for uid in common.related_general_sop_class_uids
        )
        subs.append(
            _item(
                _SUB_SOP_CLASS_COMMON_EXTENDED,
                _prefixed(_uid_bytes(common.sop_class_uid, "common extended SOP class UID")),
                _prefixed(_uid_bytes(common.service_class_uid, "service class UID")),
                _prefixed(related),
            )
        )
    if info.user_identity_rq is not None:
        ident = info.user_identity_rq
        subs.append(
            _item(
                _SUB_USER_IDENTITY_RQ,
                _U8_PAIR.pack(ident.identity_type, 1 if ident.positive_response_requested else 0),
                _prefixed(bytes(ident.primary_field)),
                _prefixed(bytes(ident.secondary_field)),
            )
        )
    if info.user_identity_ac is not None:
        subs.append(
            _item(_SUB_USER_IDENTITY_AC, _prefixed(bytes(info.user_identity_ac.server_response)))
        )
    return _item(_ITEM_USER_INFORMATION, *subs)


def _encode_pc_rq(pc: PresentationContextRQ) -> bytes:
    """Presentation Context Item, RQ form (PS3.8 9.3.2.2, Tables 9-13..9-15)."""
    if not pc.transfer_syntaxes:
        raise ValueError(f"presentation context {pc.context_id} needs a transfer syntax")
    subs = [_item(_SUB_ABSTRACT_SYNTAX, _uid_bytes(pc.abstract_syntax, "abstract syntax"))]
    subs.extend(
        _item(_SUB_TRANSFER_SYNTAX, _uid_bytes(ts, "transfer syntax"))
        for ts in pc.transfer_syntaxes
    )
    return _item(_ITEM_PRESENTATION_CONTEXT_RQ, _PC_RQ_FIXED.pack(pc.context_id), *subs)


def _encode_pc_ac(pc: PresentationContextAC) -> bytes:
    """Presentation Context Item, AC form (PS3.8 9.3.3.2, Tables 9-18/9-19).

    The Transfer Syntax sub-item is always present; ``""`` gives it length 0.
    """
    return _item(
        _ITEM_PRESENTATION_CONTEXT_AC,
        _PC_AC_FIXED.pack(pc.context_id, pc.result),
        _item(_SUB_TRANSFER_SYNTAX, _uid_bytes(pc.transfer_syntax, "transfer syntax")),
    )


def _encode_associate(pdu: AAssociateRQ | AAssociateAC) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) or A-ASSOCIATE-AC (PS3.8 9.3.3)."""
    parts: list[bytes] = [
        b"",
        _ASSOCIATE_FIXED.pack(
            pdu.protocol_version,
            _ae_title(pdu.called_ae_title, "called AE title"),
            _ae_title(pdu.calling_ae_title, "calling AE title"),
        ),
        _item(
            _ITEM_APPLICATION_CONTEXT,
            _uid_bytes(pdu.application_context_name, "application context name"),
        ),
    ]
    if isinstance(pdu, AAssociateRQ):
        pdu_type = _A_ASSOCIATE_RQ
        parts.extend(_encode_pc_rq(pc) for pc in pdu.presentation_contexts)
    else:
        pdu_type = _A_ASSOCIATE_AC
        parts.extend(_encode_pc_ac(pc) for pc in pdu.presentation_contexts)
    parts.append(_encode_user_info(pdu.user_information))
    parts[0] = _PDU_HEADER.pack(pdu_type, sum(map(len, parts)))
    return b"".join(parts)


def _encode_pdata(pdu: PDataTF) -> bytes:
    """P-DATA-TF with one or more PDV items (PS3.8 9.3.5, Annex E.2)."""
    if not pdu.pdvs:
        raise ValueError("a P-DATA-TF needs at least one PDV")
    parts: list[bytes | memoryview] = [b""]
    total = 0
    pack = _PDV_HEADER.pack
    for pdv in pdu.pdvs:
        data = pdv.data
        size = data.nbytes if type(data) is memoryview else len(data)
        parts.append(
            pack(
                size + 2,
                pdv.context_id,
                (1 if pdv.is_command else 0) | (2 if pdv.is_last else 0),
            )
        )
        parts.append(data)
        total += _PDV_HEADER_LEN + size
    parts[0] = _PDU_HEADER.pack(_P_DATA_TF, total)
    return b"".join(parts)


def encode_pdu(pdu: PDU) -> bytes:
    """Encode any of the seven PDUs (PS3.8 9.3.2-9.3.8) as one bytes object.

    Values that cannot be encoded (an AE title over 16 bytes, a field out of
    range, a non-ASCII UID) are our own programming errors: ``ValueError``.
    """
    try:
        if type(pdu) is PDataTF:
            return _encode_pdata(pdu)
        if type(pdu) is AAssociateRQ or type(pdu) is AAssociateAC:
            return _encode_associate(pdu)
        if type(pdu) is AAbort:
            return _ABORT_PDU.pack(_A_ABORT, _FIXED_BODY_LEN, pdu.source, pdu.reason)
        if type(pdu) is AAssociateRJ:
            return _RJ_PDU.pack(
                _A_ASSOCIATE_RJ, _FIXED_BODY_LEN, pdu.result, pdu.source, pdu.reason
            )
        if type(pdu) is AReleaseRQ:
            return _RELEASE_RQ_BYTES
        if type(pdu) is AReleaseRP:
            return _RELEASE_RP_BYTES
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(pdu).__name__}: {exc}") from exc
    raise TypeError(f"not a PDU: {type(pdu).__name__}")


def pdata_header(context_id: int, is_command: bool, is_last: bool, data_length: int) -> bytes:
    """The 12 bytes before ``data_length`` payload bytes in a one-PDV P-DATA-TF.

    PDU header (type 04H, PDU-length = data_length + 6), PDV item-length
    (data_length + 2), presentation context ID and message control header
    (PS3.8 9.3.5, Table 9-23; Annex E.2).
    """
    try:
        return _PDATA_HEADER.pack(
            _P_DATA_TF,
            data_length + 6,
            data_length + 2,
            context_id,
            (1 if is_command else 0) | (2 if is_last else 0),
        )
    except struct.error as exc:
        raise ValueError(f"cannot build P-DATA-TF header: {exc}") from exc
