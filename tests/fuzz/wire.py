"""Hand-built DICOM Upper Layer, DIMSE and data set bytes, for hostile-peer tests and fuzz seeds.

Theory of operation: a hostile peer sends bytes the engine's own encoder refuses to
produce (lengths that lie, UIDs of 65 characters, path characters in a UID), so these
builders pack every field by hand with :mod:`struct`, following the PS3.8 / PS3.7 /
PS3.5 layouts, and let the caller override any length. Valid output is what a
well-behaved peer would send; every argument that can make it invalid is explicit.
Nothing here does I/O or imports the engine, so a test built from these bytes checks
the engine against the standard rather than against itself.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence

__all__ = [
    "APPLICATION_CONTEXT",
    "IMPLICIT_LE",
    "EXPLICIT_LE",
    "EXPLICIT_BE",
    "DEFLATED_LE",
    "JPEG_BASELINE",
    "VERIFICATION",
    "SECONDARY_CAPTURE",
    "CT_IMAGE",
    "MCH_DATA",
    "MCH_DATA_LAST",
    "MCH_COMMAND",
    "MCH_COMMAND_LAST",
    "RELEASE_RQ",
    "RELEASE_RP",
    "pdu",
    "item",
    "presentation_context_rq",
    "user_information",
    "associate_rq",
    "pdv",
    "p_data",
    "abort",
    "associate_rj",
    "ui",
    "us",
    "command_element",
    "command_set",
    "c_echo_rq",
    "c_store_rq",
    "dataset",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
VERIFICATION = "1.2.840.10008.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# An Implementation Class UID for the hostile peer (2.25 root, PS3.5 B.2).
PEER_IMPLEMENTATION_UID = "2.25.1234567890123456789"

# PS3.8 Annex E.2: message control header, bit 0 command, bit 1 last fragment.
MCH_DATA = 0x00
MCH_DATA_LAST = 0x02
MCH_COMMAND = 0x01
MCH_COMMAND_LAST = 0x03

_PDU_HEADER = struct.Struct(">BxI")  # PS3.8 9.3.1: type, reserved, PDU-length
_ITEM_HEADER = struct.Struct(">BxH")  # PS3.8 9.3.2: type, reserved, item-length


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU: 6-byte header (PS3.8 9.3.1) then ``body``; ``length`` may lie."""
    return _PDU_HEADER.pack(pdu_type, len(body) if length is None else length) + body


def item(item_type: int, payload: bytes, length: int | None = None) -> bytes:
    """An item or sub-item (PS3.8 9.3.2): 4-byte header then ``payload``."""
    return _ITEM_HEADER.pack(item_type, len(payload) if length is None else length) + payload


def _text(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def presentation_context_rq(
    context_id: int, abstract_syntax: str | bytes, transfer_syntaxes: Iterable[str | bytes]
) -> bytes:
    """Presentation Context Item, RQ form (PS3.8 9.3.2.2, item 20H)."""
    subs = item(0x30, _text(abstract_syntax)) + b"".join(
        item(0x40, _text(ts)) for ts in transfer_syntaxes
    )
    return item(0x20, struct.pack(">B3x", context_id) + subs)


def user_information(
    max_length: int | None = 16384,
    implementation_uid: str = PEER_IMPLEMENTATION_UID,
    version_name: bytes | None = b"HARDENING",
    extra: bytes = b"",
) -> bytes:
    """User Information Item (PS3.8 9.3.2.3, item 50H) with the usual sub-items (Annex D)."""
    subs = b""
    if max_length is not None:
        subs += item(0x51, struct.pack(">I", max_length))
    subs += item(0x52, implementation_uid.encode("ascii"))
    if version_name is not None:
        subs += item(0x55, version_name)
    return item(0x50, subs + extra)


def associate_rq(
    *,
    called: bytes = b"ANY-SCP",
    calling: bytes = b"HARDENING",
    contexts: Sequence[tuple[int, str | bytes, Sequence[str | bytes]]] = (
        (1, VERIFICATION, (IMPLICIT_LE,)),
    ),
    application_context: str | bytes = APPLICATION_CONTEXT,
    protocol_version: int = 1,
    user_info: bytes | None = None,
    extra_items: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2, Table 9-11); AE titles space padded to 16 bytes."""
    body = (
        struct.pack(">H2x", protocol_version)
        + called.ljust(16, b" ")[:16]
        + calling.ljust(16, b" ")[:16]
        + bytes(32)
        + item(0x10, _text(application_context))
        + b"".join(presentation_context_rq(*cx) for cx in contexts)
        + (user_information() if user_info is None else user_info)
        + extra_items
    )
    return pdu(0x01, body, length)


def pdv(context_id: int, control: int, data: bytes, length: int | None = None) -> bytes:
    """A PDV item (PS3.8 9.3.5.1): item-length (data + 2), context ID, control header."""
    return struct.pack(">IBB", len(data) + 2 if length is None else length, context_id, control) + data


def p_data(*pdvs: bytes, length: int | None = None) -> bytes:
    """P-DATA-TF (PS3.8 9.3.5) carrying already built PDV items."""
    return pdu(0x04, b"".join(pdvs), length)


RELEASE_RQ = pdu(0x05, bytes(4))  # PS3.8 9.3.6
RELEASE_RP = pdu(0x06, bytes(4))  # PS3.8 9.3.7


def abort(source: int, reason: int) -> bytes:
    """A-ABORT (PS3.8 9.3.8, Table 9-26): 07 00 00000004 00 00 source reason."""
    return pdu(0x07, bytes((0, 0, source, reason)))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21): 03 00 00000004 00 result source reason."""
    return pdu(0x03, bytes((0, result, source, reason)))


# ------------------------------------------------------------------------------ DIMSE


def ui(uid: str | bytes) -> bytes:
    """A UI value padded with one NUL to even length (PS3.5 6.2)."""
    raw = _text(uid)
    return raw + b"\x00" if len(raw) & 1 else raw


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_element(element: int, value: bytes, length: int | None = None) -> bytes:
    """A group 0000 element, Implicit VR Little Endian (PS3.5 7.1.2, PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0, element, len(value) if length is None else length) + value


def command_set(elements: Sequence[tuple[int, bytes]], group_length: int | None = None) -> bytes:
    """A command set: (0000,0000) UL group length (may lie) then ``elements`` as given."""
    body = b"".join(command_element(tag, value) for tag, value in elements)
    length = len(body) if group_length is None else group_length
    return command_element(0x0000, struct.pack("<I", length)) + body


def c_echo_rq(message_id: int = 1, *, group_length: int | None = None) -> bytes:
    """C-ECHO-RQ command set (PS3.7 9.3.5.1, Table 9.3-12)."""
    return command_set(
        [
            (0x0002, ui(VERIFICATION)),
            (0x0100, us(0x0030)),
            (0x0110, us(message_id)),
            (0x0800, us(0x0101)),
        ],
        group_length,
    )


def c_store_rq(
    message_id: int,
    sop_class: str | bytes,
    sop_instance: str | bytes,
    *,
    data_set_type: int = 0x0001,
    priority: int = 0,
    group_length: int | None = None,
) -> bytes:
    """C-STORE-RQ command set (PS3.7 9.3.1.1, Table 9.3-1); UIDs are sent as given."""
    return command_set(
        [
            (0x0002, ui(sop_class)),
            (0x0100, us(0x0001)),
            (0x0110, us(message_id)),
            (0x0700, us(priority)),
            (0x0800, us(data_set_type)),
            (0x1000, ui(sop_instance)),
        ],
        group_length,
    )


# ------------------------------------------------------------------------------ data sets


def _element(tag: int, vr: bytes, value: bytes, *, implicit: bool, big: bool) -> bytes:
    """One data element (PS3.5 7.1.1-7.1.3) with a short-length VR."""
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, elem, len(value)) + value
    order = ">" if big else "<"
    return struct.pack(f"{order}HH2sH", group, elem, vr, len(value)) + value


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) & 1 else value


def dataset(
    sop_class: str | bytes,
    sop_instance: str | bytes,
    study: str | bytes,
    series: str | bytes,
    transfer_syntax: str = EXPLICIT_LE,
    *,
    patient_id: bytes = b"HARDEN01",
    pixel_bytes: int = 0,
) -> bytes:
    """A minimal data set with the attributes storage names and indexes files by.

    (0008,0016), (0008,0018), (0008,0060), (0010,0010), (0010,0020), (0020,000D),
    (0020,000E), (0020,0013) in ascending order, UIDs written exactly as given (so a
    test can put path characters in them), then optionally (7FE0,0010) OB of
    ``pixel_bytes`` zero bytes. Encoded in ``transfer_syntax`` (Implicit/Explicit VR
    Little Endian, Explicit VR Big Endian, or Deflated: raw DEFLATE of Explicit LE).
    """
    implicit = transfer_syntax == IMPLICIT_LE
    big = transfer_syntax == EXPLICIT_BE
    fields = [
        (0x00080016, b"UI", _pad(_text(sop_class), b"\x00")),
        (0x00080018, b"UI", _pad(_text(sop_instance), b"\x00")),
        (0x00080060, b"CS", b"OT"),
        (0x00100010, b"PN", b"Hardening^Test"),
        (0x00100020, b"LO", _pad(patient_id, b" ")),
        (0x0020000D, b"UI", _pad(_text(study), b"\x00")),
        (0x0020000E, b"UI", _pad(_text(series), b"\x00")),
        (0x00200013, b"IS", b"1 "),
    ]
    body = b"".join(_element(t, vr, v, implicit=implicit, big=big) for t, vr, v in fields)
    if pixel_bytes:
        size = pixel_bytes + (pixel_bytes & 1)
        if implicit:
            body += struct.pack("<HHI", 0x7FE0, 0x0010, size)
        else:
            order = ">" if big else "<"
            body += struct.pack(f"{order}HH2s2xI", 0x7FE0, 0x0010, b"OB", size)
        body += bytes(size)
    if transfer_syntax == DEFLATED_LE:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = compressor.compress(body) + compressor.flush()
    return body
