"""Bridging pydicom data sets and the bytes the network carries.

Theory of operation: the engine moves data sets as bytes and never decodes them on its
own account. Only when a user hands us a pydicom ``Dataset`` to send, or asks a handler
event for ``event.dataset``, do these helpers encode or decode with pydicom, in the
transfer syntax negotiated for the presentation context (PS3.5 Section 10).
"""

from __future__ import annotations

import zlib
from io import BytesIO
from typing import Any

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

__all__ = [
    "decode_dataset",
    "encode_dataset",
    "build_file_meta",
    "dataset_transfer_syntax",
    "UNCOMPRESSED",
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
