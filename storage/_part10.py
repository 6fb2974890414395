"""DICOM Part 10 file framing: the preamble, ``DICM`` and the File Meta group.

Theory of operation: a stored instance is the File Meta Information (PS3.10 7.1)
followed by the data set *exactly as it arrived on the wire*. :func:`build_file_meta`
produces the leading bytes -- 128-byte preamble, the ``DICM`` prefix and group 0002 in
Explicit VR Little Endian with a correct (0002,0000) group length -- so the writer can
append received fragments untouched. :func:`read_file_meta` is the reverse for the
sending side: it reads group 0002 of an existing file and reports where the data set
starts, so the data set can be streamed without being decoded.

This module owns no files and no policy: it returns bytes, and it reads from a path or
a file object the caller chose. It defines :class:`StorageError`, the base of every
error the storage package raises on purpose, because it is the package's leaf module.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import msgspec

__all__ = [
    "StorageError",
    "NotDicomError",
    "FileMeta",
    "build_file_meta",
    "FileMetaTemplate",
    "read_file_meta",
    "PREAMBLE_LENGTH",
]

PREAMBLE_LENGTH = 128
_PREFIX = b"DICM"
# PS3.10 7.1: (0002,0001) File Meta Information Version, OB, value 00H 01H.
_META_VERSION = b"\x00\x01"
# PS3.5 6.2: the VRs whose explicit header has 2 reserved bytes and a 32-bit length.
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
# Group 0002 holds a handful of UIDs and short strings; (0002,0102) Private Information
# is the only bulk element, and 1 MiB leaves it room while bounding what a hostile or
# misidentified file makes us read.
_MAX_META_GROUP = 1 << 20
# PS3.5 Table 6.2-1: maximum lengths of UI (64 bytes), SH and AE (16 characters).
_MAX_UI = 64
_MAX_SH_AE = 16
# Transfer syntaxes whose data set is a raw DEFLATE stream (PS3.5 A.5, A.8.7.1): the
# first data set bytes are arbitrary, so they must not be read as one more group-0002
# element when the group length says the group has ended.
_DEFLATED = frozenset(("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"))


class StorageError(Exception):
    """Base of every error the storage package raises on purpose."""


class NotDicomError(StorageError):
    """The file is not a DICOM Part 10 file (PS3.10 7.1) that this reader can frame."""


class FileMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The File Meta Information elements of PS3.10 Table 7.1-1 that matter for sending.

    ``dataset_offset`` is the position of the first data set byte, counted from the
    start of the file (the preamble's first byte).
    """

    transfer_syntax_uid: str
    dataset_offset: int
    media_storage_sop_class_uid: str | None = None
    media_storage_sop_instance_uid: str | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    source_ae_title: str | None = None
    sending_ae_title: str | None = None
    receiving_ae_title: str | None = None
    group_length: int | None = None


def _pad_even(value: bytes, pad: bytes) -> bytes:
    """PS3.5 6.2: values have even length; UI pads with NUL, text VRs with space."""
    return value + pad if len(value) % 2 else value


def _uid_value(name: str, uid: str) -> bytes:
    try:
        raw = uid.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not ASCII: {uid!r}") from None
    if not raw or len(raw) > _MAX_UI:
        raise ValueError(f"{name} must be 1..{_MAX_UI} characters: {uid!r}")
    return _pad_even(raw, b"\x00")


def _text_value(name: str, text: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not ASCII: {text!r}") from None
    if len(raw) > _MAX_SH_AE or any(b < 0x20 or b == 0x5C or b == 0x7F for b in raw):
        raise ValueError(f"{name} must be at most {_MAX_SH_AE} printable characters, no backslash: {text!r}")
    return _pad_even(raw, b" ")


def _short(tag_elem: int, vr: bytes, value: bytes) -> bytes:
    """One group-0002 element with a 16-bit length (PS3.5 7.1.2, Explicit VR LE)."""
    return struct.pack("<HH2sH", 0x0002, tag_elem, vr, len(value)) + value


def build_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str | None = None,
    source_ae_title: str | None = None,
    *,
    sending_ae_title: str | None = None,
    receiving_ae_title: str | None = None,
) -> bytes:
    """Return preamble + ``DICM`` + File Meta Information (PS3.10 7.1, Table 7.1-1).

    Group 0002 is Explicit VR Little Endian whatever the data set's transfer syntax;
    (0002,0000) is the byte count of the elements after it. UI values are padded with
    NUL and text values with a space to even length (PS3.5 6.2). Optional elements
    (0002,0013), (0002,0016), (0002,0017), (0002,0018) are left out when ``None`` or
    empty. Values that do not fit their VR raise :class:`ValueError`: the arguments come
    from our own code, which validates peer data before calling.
    """
    body = [
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, len(_META_VERSION)) + _META_VERSION,
        _short(0x0002, b"UI", _uid_value("sop_class_uid", sop_class_uid)),
        _short(0x0003, b"UI", _uid_value("sop_instance_uid", sop_instance_uid)),
        _short(0x0010, b"UI", _uid_value("transfer_syntax_uid", transfer_syntax_uid)),
        _short(0x0012, b"UI", _uid_value("implementation_class_uid", implementation_class_uid)),
    ]
    optional = (
        (0x0013, b"SH", "implementation_version_name", implementation_version_name),
        (0x0016, b"AE", "source_ae_title", source_ae_title),
        (0x0017, b"AE", "sending_ae_title", sending_ae_title),
        (0x0018, b"AE", "receiving_ae_title", receiving_ae_title),
    )
    for elem, vr, name, text in optional:
        if text:
            body.append(_short(elem, vr, _text_value(name, text)))
    group = b"".join(body)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"".join((bytes(PREAMBLE_LENGTH), _PREFIX, group_length, group))


_GROUP_LENGTH = struct.Struct("<HH2sHI")
_SHORT_HEADER = struct.Struct("<HH2sH")


class FileMetaTemplate:
    """:func:`build_file_meta` for many instances of one SOP class, transfer syntax and
    pair of AE titles: everything but (0002,0003) Media Storage SOP Instance UID and the
    group length is encoded (and checked) once, in the constructor, which takes
    :func:`build_file_meta`'s arguments less the instance UID.
    :meth:`build` gives exactly the bytes :func:`build_file_meta` gives.
    """

    __slots__ = ("_head", "_before", "_after", "_rest")

    def __init__(
        self,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        implementation_class_uid: str,
        implementation_version_name: str | None = None,
        source_ae_title: str | None = None,
        *,
        sending_ae_title: str | None = None,
        receiving_ae_title: str | None = None,
    ) -> None:
        # Split a whole group built with a placeholder instance UID around (0002,0003).
        whole = build_file_meta(
            sop_class_uid, "1", transfer_syntax_uid, implementation_class_uid,
            implementation_version_name, source_ae_title,
            sending_ae_title=sending_ae_title, receiving_ae_title=receiving_ae_title,
        )
        placeholder = _short(0x0003, b"UI", _uid_value("sop_instance_uid", "1"))
        start = PREAMBLE_LENGTH + len(_PREFIX) + _GROUP_LENGTH.size
        at = whole.index(placeholder, start)
        self._head = whole[:PREAMBLE_LENGTH + len(_PREFIX)]
        self._before = whole[start:at]
        self._after = whole[at + len(placeholder):]
        self._rest = len(self._before) + len(self._after)

    def build(self, sop_instance_uid: str) -> bytearray:
        """Preamble, ``DICM`` and group 0002 for one instance (PS3.10 7.1)."""
        value = _uid_value("sop_instance_uid", sop_instance_uid)
        out = bytearray(self._head)
        out += _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, self._rest + _SHORT_HEADER.size + len(value))
        out += self._before
        out += _SHORT_HEADER.pack(0x0002, 0x0003, b"UI", len(value))
        out += value
        out += self._after
        return out


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    data = fp.read(n)
    if data is None or len(data) != n:
        raise NotDicomError("file ends inside the File Meta Information")
    return data


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \x00")


_FIELDS = {
    0x0002: "media_storage_sop_class_uid",
    0x0003: "media_storage_sop_instance_uid",
    0x0010: "transfer_syntax_uid",
    0x0012: "implementation_class_uid",
    0x0013: "implementation_version_name",
    0x0016: "source_ae_title",
    0x0017: "sending_ae_title",
    0x0018: "receiving_ae_title",
}


def _parse_meta(fp: BinaryIO, start: int) -> FileMeta:
    """Walk group 0002 (PS3.10 7.1) from just after ``DICM``; ``fp`` is positioned there."""
    head = fp.read(PREAMBLE_LENGTH + 4)
    if len(head) < PREAMBLE_LENGTH + 4 or head[PREAMBLE_LENGTH:] != _PREFIX:
        raise NotDicomError("no 'DICM' prefix after the 128-byte preamble (PS3.10 7.1)")
    pos = PREAMBLE_LENGTH + 4
    values: dict[str, str] = {}
    group_length: int | None = None
    group_end: int | None = None
    while True:
        if group_end is not None and pos == group_end and values.get("transfer_syntax_uid") in _DEFLATED:
            break
        header = fp.read(8)
        if len(header) < 8:
            if header and header[:2] == b"\x02\x00":
                raise NotDicomError("file ends inside the File Meta Information")
            break
        group, elem = struct.unpack_from("<HH", header)
        if group != 0x0002:
            break
        vr = header[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", _read_exact(fp, 4))
            header_len = 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", header, 6)
            header_len = 8
        else:
            raise NotDicomError(f"(0002,{elem:04X}) has no explicit VR (PS3.10 7.1 requires Explicit VR LE)")
        if length == 0xFFFFFFFF or pos + header_len + length > _MAX_META_GROUP:
            raise NotDicomError(f"(0002,{elem:04X}) length {length:#x} does not fit a File Meta group")
        if elem == 0x0000 and vr == b"UL" and length == 4:
            (group_length,) = struct.unpack("<I", _read_exact(fp, 4))
            group_end = pos + header_len + 4 + group_length
        else:
            value = _read_exact(fp, length)
            if elem in _FIELDS:
                values[_FIELDS[elem]] = _text(value)
        pos += header_len + length
    if not values.get("transfer_syntax_uid"):
        raise NotDicomError("File Meta Information has no (0002,0010) Transfer Syntax UID")
    fp.seek(start + pos)
    return FileMeta(dataset_offset=pos, group_length=group_length, **values)


def read_file_meta(source: str | os.PathLike[str] | BinaryIO) -> FileMeta:
    """Read the File Meta Information of a Part 10 file (PS3.10 7.1).

    ``source`` is a path or a binary file object positioned at the file's first byte;
    a file object is left positioned at the data set's first byte, ready to stream.
    Elements are read one by one until the group changes, so a missing or wrong
    (0002,0000) is tolerated -- except for a deflated transfer syntax, whose first data
    set bytes are arbitrary: there the group length, when present, bounds the group.
    Anything that is not a Part 10 file raises :class:`NotDicomError`, never another
    exception (an unreadable path raises it too, carrying the ``OSError`` text).
    """
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fp:
                return _parse_meta(fp, 0)
        return _parse_meta(source, source.tell())
    except NotDicomError:
        raise
    except (OSError, ValueError, struct.error) as exc:
        raise NotDicomError(f"cannot read File Meta Information: {exc}") from exc
