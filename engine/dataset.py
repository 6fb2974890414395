"""Bridging pydicom data sets and the bytes the network carries.

Theory of operation: the engine moves data sets as bytes and never decodes them on its
own account. Only when a user hands us a pydicom ``Dataset`` to send, or asks a handler
event for ``event.dataset``, do these helpers encode or decode with pydicom, in the
transfer syntax negotiated for the presentation context (PS3.5 Section 10).
Conversion between the uncompressed syntaxes and reading a data set's SOP UIDs from its
first bytes live in :mod:`engine._transcode` and are re-exported here.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import Any, BinaryIO, NamedTuple

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    UID,
)

from ._transcode import Transcoder, TranscodeError, read_sop_uids

__all__ = [
    "decode_dataset",
    "encode_dataset",
    "build_file_meta",
    "dataset_transfer_syntax",
    "read_part10_header",
    "Part10Header",
    "UNCOMPRESSED",
    "Transcoder",
    "TranscodeError",
    "read_sop_uids",
]

#: Transfer syntaxes whose data set encoding the engine can produce from a Dataset.
UNCOMPRESSED = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
)


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax's data set encoding."""
    if transfer_syntax == ImplicitVRLittleEndian:
        return True, True
    if transfer_syntax == ExplicitVRBigEndian:
        return False, False
    return False, True


def decode_dataset(raw: bytes, transfer_syntax: str) -> Dataset:
    """Decode a data set received in ``transfer_syntax``."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        raw = zlib.decompress(raw, -15)
    implicit, little = _encoding(transfer_syntax)
    ds = read_dataset(BytesIO(raw), implicit, little)
    ds.set_original_encoding(implicit, little)
    return ds


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode ``ds`` for sending in an uncompressed ``transfer_syntax``."""
    if transfer_syntax not in UNCOMPRESSED:
        raise ValueError(
            f"cannot encode a data set in {UID(transfer_syntax).name}: only the native "
            "and deflated transfer syntaxes can be produced from a Dataset"
        )
    implicit, little = _encoding(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    raw = fp.getvalue()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        raw = compressor.compress(raw) + compressor.flush()
    return raw


def dataset_transfer_syntax(ds: Dataset) -> str | None:
    """The transfer syntax ``ds`` is in, from its file meta or its original encoding."""
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts:
        return str(ts)
    implicit = getattr(ds, "is_implicit_VR", None)
    little = getattr(ds, "is_little_endian", None)
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return "1.2.840.10008.1.2.1" if little else ExplicitVRBigEndian


def build_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: Any = None,
    source_ae_title: Any = None,
) -> FileMetaDataset:
    """File Meta Information for a received instance (PS3.10 Table 7.1-1)."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = implementation_class_uid
    if implementation_version_name:
        name = implementation_version_name
        meta.ImplementationVersionName = name.decode() if isinstance(name, bytes) else name
    if source_ae_title:
        title = source_ae_title
        meta.SourceApplicationEntityTitle = (
            title.decode(errors="replace") if isinstance(title, bytes) else title
        ).strip()
    return meta


class Part10Header(NamedTuple):
    """What a sender needs from a Part 10 file's File Meta Information (PS3.10 7.1)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: Offset of the data set's first byte in the file.
    dataset_offset: int


# PS3.10 7.1: 128-byte preamble, then "DICM", then group 0002 in Explicit VR LE.
_PREAMBLE = 128
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 32-bit length.
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"))
# Deflated data sets start with arbitrary bytes: only (0002,0000) says where group 2 ends.
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
# A File Meta group is a few hundred bytes; anything longer is not one.
_MAX_META = 64 * 1024


def read_part10_header(fp: BinaryIO) -> Part10Header:
    """Read the File Meta Information of the Part 10 file ``fp`` is at the start of,
    leaving ``fp`` at the data set's first byte (ready to stream it unchanged).

    Elements are walked one by one until the group changes, so a missing or wrong
    (0002,0000) is tolerated, except before a deflated data set, whose first bytes are
    arbitrary: there the group length bounds the group. Raises ValueError when the file
    is not Part 10 or lacks the Transfer Syntax UID.
    """
    start = fp.tell()
    head = fp.read(_PREAMBLE + 4)
    if len(head) < _PREAMBLE + 4 or head[_PREAMBLE:] != b"DICM":
        raise ValueError("not a DICOM Part 10 file: no 'DICM' after the 128-byte preamble")
    pos = _PREAMBLE + 4
    values: dict[int, str] = {}
    group_end = None
    while pos < _MAX_META:
        if group_end is not None and pos >= group_end and values.get(0x0010) in _DEFLATED:
            break
        header = fp.read(8)
        if len(header) < 8 or header[:2] != b"\x02\x00":
            break
        elem = struct.unpack_from("<H", header, 2)[0]
        vr = header[4:6]
        if vr in _LONG_VRS:
            more = fp.read(4)
            if len(more) < 4:
                break
            length = struct.unpack("<I", more)[0]
            size = 12
        else:
            length = struct.unpack_from("<H", header, 6)[0]
            size = 8
        if length > _MAX_META:
            raise ValueError(f"(0002,{elem:04X}) length {length} does not fit a File Meta group")
        value = fp.read(length)
        if len(value) < length:
            raise ValueError("the file ends inside its File Meta Information")
        if elem == 0 and length == 4:
            group_end = pos + size + 4 + struct.unpack("<I", value)[0]
        elif elem in (0x0002, 0x0003, 0x0010):
            values[elem] = value.decode("latin-1").strip(" \x00")
        pos += size + length
    if not values.get(0x0010):
        raise ValueError("the File Meta Information has no (0002,0010) Transfer Syntax UID")
    fp.seek(start + pos)
    return Part10Header(values.get(0x0002, ""), values.get(0x0003, ""), values[0x0010], pos)
