"""Helpers shared by the storage tests: data set byte streams as a C-STORE carries them,
storage configurations and records.

Theory of operation: the storage layer receives a data set without File Meta, encoded
in the negotiated transfer syntax. These helpers get exactly those bytes from pydicom
(a Part 10 write, minus the preamble and group 0002), and split them into fragments the
way the network would. :func:`make_config` builds a :class:`storage.StorageConfig`
with the product identity the node passes (the engine's), :func:`record` a plausible
:class:`storage.InstanceRecord`. Nothing here touches the storage package's files.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storage import InstanceRecord, StorageConfig

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
ALL_SYNTAXES = (IMPLICIT, EXPLICIT, BIG, DEFLATED, JPEG_BASELINE)


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded as a C-STORE data set in ``transfer_syntax`` (no File Meta).

    Encapsulated syntaxes use Explicit VR LE for the data set (PS3.5 A.4); the deflated
    one is Explicit VR LE through raw DEFLATE (PS3.5 A.5).
    """
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == IMPLICIT
    fp.is_little_endian = transfer_syntax != BIG
    write_dataset(fp, ds)
    data = fp.getvalue()
    if transfer_syntax == DEFLATED:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = deflater.compress(data) + deflater.flush()
    return data


def part10_dataset(ds: Dataset) -> bytes:
    """The data set portion of ``ds`` written as a Part 10 file by pydicom (``ds.file_meta``
    must name the transfer syntax)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    (group_length,) = struct.unpack_from("<I", raw, 140)
    return raw[144 + group_length :]


def with_meta(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Attach a minimal File Meta to ``ds`` naming ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    return ds


def fragments(data: bytes, sizes: list[int] | None = None, seed: int | None = None) -> list[memoryview]:
    """Split ``data`` into memoryviews: by ``sizes`` (cycled), or randomly by ``seed``."""
    view = memoryview(data)
    out = []
    pos = 0
    rnd = random.Random(seed)
    i = 0
    while pos < len(view):
        if sizes:
            n = sizes[i % len(sizes)]
            i += 1
        else:
            n = rnd.choice((1, 2, 3, 7, 8, 11, 12, 64, 500, 4096))
        out.append(view[pos : pos + n])
        pos += n
    return out


def make_config(root: str | Path, **overrides: Any) -> StorageConfig:
    """A storage configuration of ``root`` carrying the node's identity."""
    return StorageConfig(
        root=str(root),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        **overrides,
    )


def record(n: int, *, study: int = 0, series: int = 0, patient: str | None = "P1", size: int = 100) -> InstanceRecord:
    """Instance ``1.2.3.<n>`` of series ``1.2.4.<study>.<series>``."""
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=f"1.2.4.{study}",
        series_instance_uid=f"1.2.4.{study}.{series}",
        patient_id=patient,
        patient_name="Doe^Jane" if patient else None,
        modality="CT",
        study_date="20240102",
        instance_number=str(n),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"1.2.4.{study}/1.2.4.{study}.{series}/1.2.3.{n}.dcm",
        size=size,
        digest="ab" * 32,
        calling_ae="MODALITY",
        called_ae="ARCHIVE",
        received_at=1_700_000_000.0 + n,
    )
