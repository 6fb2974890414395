"""Synthesized DICOM instances for load generation: encode once, patch per instance.

Theory of operation: pydicom builds and encodes one *template* data set per run, whose
varying values (SOP Instance UID, Study and Series Instance UIDs, Patient ID and Name)
are placeholders of the exact length every instance of the run will use. The encoded
bytes are cut at those values into fixed segments (:class:`Template`), so an instance is
``b"".join`` of segments and new values: no encoder runs in the hot loop. Fixed lengths
come from a per-run UID root (``2.25.<UUID>``) followed by zero-padded counters that
start with a nonzero digit (PS3.5 9.1: no leading zeros in a component).

Instance ``k`` (global across processes) gets SOP Instance UID ``<root>.1<k:012>``;
its series is ``k % series``, that series' study ``series % studies`` and that study's
patient ``study % patients``: the spread table. The same cutting works for a Part 10
file read into memory (:func:`file_template`): its (0008,0018) element is found by
walking the top-level elements of an uncompressed data set and re-headed with the run's
UID length. This module does no network I/O and keeps no global state.
"""

from __future__ import annotations

import math
import os
import struct
import uuid
import zlib
import msgspec
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from engine import sop_class
from engine.dataset import encode_dataset

__all__ = [
    "SOP_CLASS_ALIASES",
    "TRANSFER_SYNTAX_ALIASES",
    "resolve_sop_class",
    "resolve_transfer_syntax",
    "new_run_root",
    "Spread",
    "Template",
    "Synthetic",
    "build_synthetic",
    "file_template",
]

#: Short names for ``--sop-class``: (SOP class, modality, bits allocated).
SOP_CLASS_ALIASES: dict[str, tuple[str, str, int]] = {
    "ct": (sop_class.CTImageStorage, "CT", 16),
    "mr": (sop_class.MRImageStorage, "MR", 16),
    "cr": (sop_class.ComputedRadiographyImageStorage, "CR", 16),
    "dx": (sop_class.DigitalXRayImageStorageForPresentation, "DX", 16),
    "mg": (sop_class.DigitalMammographyXRayImageStorageForPresentation, "MG", 16),
    "pt": (sop_class.PositronEmissionTomographyImageStorage, "PT", 16),
    "nm": (sop_class.NuclearMedicineImageStorage, "NM", 16),
    "us": (sop_class.UltrasoundImageStorage, "US", 8),
    "xa": (sop_class.XRayAngiographicImageStorage, "XA", 8),
    "sc": (sop_class.SecondaryCaptureImageStorage, "OT", 8),
}

#: Short names for ``--transfer-syntax``.
TRANSFER_SYNTAX_ALIASES: dict[str, str] = {
    "implicit": "1.2.840.10008.1.2",
    "explicit": "1.2.840.10008.1.2.1",
    "bigendian": "1.2.840.10008.1.2.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "jpeg": "1.2.840.10008.1.2.4.50",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg2000": "1.2.840.10008.1.2.4.91",
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
}

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = (_IMPLICIT_LE, _EXPLICIT_LE, _EXPLICIT_BE)
# PS3.5 9.1: a UID is at most 64 characters.
_MAX_UID = 64
# Counter widths: 10**12 instances, 10**6 series/studies/patients per run are plenty.
_INSTANCE_DIGITS = 12
_GROUP_DIGITS = 6
# Largest synthesized instance: pixel data keeps a 32-bit defined length (PS3.5 7.1.1).
MAX_SIZE = 0xFFFF0000
# Pixel rows are at most this many columns wide (a plausible image shape at any size).
_MAX_COLUMNS = 512
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 32-bit length in Explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})
_SOP_INSTANCE_TAG = 0x00080018


def resolve_sop_class(text: str) -> tuple[str, str, int]:
    """(SOP class UID, modality, bits allocated) for an alias or a dotted UID."""
    alias = SOP_CLASS_ALIASES.get(text.lower())
    if alias is not None:
        return alias
    if not text[:1].isdigit():
        names = ", ".join(SOP_CLASS_ALIASES)
        raise ValueError(f"unknown SOP class {text!r}: use one of {names} or a UID")
    uid = UID(text)
    if not uid.is_valid:
        raise ValueError(f"{text!r} is not a valid UID")
    return str(uid), "OT", 16


def resolve_transfer_syntax(text: str) -> str:
    """A transfer syntax UID for an alias or a dotted UID this module can synthesize."""
    ts = TRANSFER_SYNTAX_ALIASES.get(text.lower(), text)
    uid = UID(ts)
    if not uid.is_valid or not uid.is_transfer_syntax:
        names = ", ".join(TRANSFER_SYNTAX_ALIASES)
        raise ValueError(f"unknown transfer syntax {text!r}: use one of {names} or a UID")
    return str(uid)


def new_run_root() -> str:
    """A fresh UID root for one run: ``2.25.<UUID as an integer>`` (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def _pad_uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _pad_text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


class Spread(msgspec.Struct, frozen=True):
    """How instances spread over patients, studies and series (totals per run)."""

    patients: int = 10
    studies: int = 20
    series: int = 40

    def __post_init__(self) -> None:
        limit = 10**_GROUP_DIGITS
        if not 1 <= self.patients <= self.studies <= self.series < limit:
            raise ValueError(
                "need 1 <= patients <= studies <= series < "
                f"{limit} (got {self.patients}, {self.studies}, {self.series})"
            )


def instance_uid(root: str, k: int) -> str:
    """SOP Instance UID of instance ``k`` of a run (fixed length within the run)."""
    return f"{root}.1{k:0{_INSTANCE_DIGITS}d}"


def _check_root(root: str) -> None:
    longest = len(instance_uid(root, 0))
    if longest > _MAX_UID:
        raise ValueError(f"UID root {root!r} is too long for {_MAX_UID}-character UIDs")


class Template(msgspec.Struct, frozen=True):
    """An encoded data set cut around its varying values.

    ``segments`` has one more item than ``slots``; an instance is segment 0, the value
    of slot 0, segment 1, ... Slot names: ``sop``, ``study``, ``series``,
    ``patient_id``, ``patient_name``. ``deflate``: the rendered bytes are then
    compressed (Deflated Explicit VR Little Endian, PS3.5 A.5).
    """

    sop_class_uid: str
    transfer_syntax_uid: str
    segments: list[bytes]
    slots: list[str]
    deflate: bool = False

    def render(self, values: dict[str, bytes]) -> bytes:
        segments = self.segments
        parts = [segments[0]]
        for i, name in enumerate(self.slots):
            parts.append(values[name])
            parts.append(segments[i + 1])
        raw = b"".join(parts)
        if self.deflate:
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15)  # fastest: load, not size
            raw = compressor.compress(raw) + compressor.flush()
        return raw


def _cut(encoded: bytes, placeholders: dict[str, bytes]) -> tuple[list[bytes], list[str]]:
    """Split ``encoded`` around each placeholder value (each must occur exactly once)."""
    found = []
    for name, value in placeholders.items():
        at = encoded.find(value)
        if at < 0 or encoded.find(value, at + 1) >= 0:
            raise RuntimeError(f"placeholder for {name} not found exactly once")
        found.append((at, len(value), name))
    found.sort()
    segments, slots, pos = [], [], 0
    for at, length, name in found:
        segments.append(encoded[pos:at])
        slots.append(name)
        pos = at + length
    segments.append(encoded[pos:])
    return segments, slots


class Synthetic(msgspec.Struct, frozen=True):
    """A synthesized source: the template and the per-series values of the spread."""

    template: Template
    root: str
    spread: Spread
    instance_size: int

    def values_for_series(self) -> list[dict[str, bytes]]:
        """Slot values (all but ``sop``) for each series index, computed once."""
        out = []
        root, spread = self.root, self.spread
        for series in range(spread.series):
            study = series % spread.studies
            patient = study % spread.patients
            out.append({
                "study": _pad_uid(f"{root}.2{study:0{_GROUP_DIGITS}d}"),
                "series": _pad_uid(f"{root}.3{series:0{_GROUP_DIGITS}d}"),
                "patient_id": _pad_text(f"SCPF{patient:0{_GROUP_DIGITS}d}"),
                "patient_name": _pad_text(f"SCPFLEET^PATIENT{patient:0{_GROUP_DIGITS}d}"),
            })
        return out


def _pixel_geometry(size: int, bytes_per_pixel: int) -> tuple[int, int]:
    """(rows, columns) whose pixel data is ``size`` bytes, or less than a column more."""
    pixels = max(1, math.ceil(size / bytes_per_pixel))
    rows = math.ceil(pixels / _MAX_COLUMNS)
    return rows, math.ceil(pixels / rows)


def build_synthetic(
    *,
    sop_class_text: str = "ct",
    transfer_syntax_text: str = "explicit",
    size: int = 4096,
    spread: Spread | None = None,
    root: str | None = None,
) -> Synthetic:
    """Encode the template for instances of about ``size`` bytes (data set only).

    Raises ValueError for an unknown SOP class or transfer syntax, or a bad size.
    """
    sop_uid, modality, bits = resolve_sop_class(sop_class_text)
    ts = resolve_transfer_syntax(transfer_syntax_text)
    if not 0 < size <= MAX_SIZE:
        raise ValueError(f"size must be 1..{MAX_SIZE} bytes, not {size}")
    spread = spread or Spread()
    root = root or new_run_root()
    _check_root(root)
    compressed = UID(ts).is_compressed

    placeholders = {
        "sop": _pad_uid(instance_uid(root, 0)),
        "study": _pad_uid(f"{root}.2{0:0{_GROUP_DIGITS}d}"),
        "series": _pad_uid(f"{root}.3{0:0{_GROUP_DIGITS}d}"),
        "patient_id": _pad_text(f"SCPF{0:0{_GROUP_DIGITS}d}"),
        "patient_name": _pad_text(f"SCPFLEET^PATIENT{0:0{_GROUP_DIGITS}d}"),
    }
    ds = Dataset()
    ds.SOPClassUID = sop_uid
    ds.SOPInstanceUID = placeholders["sop"].rstrip(b"\0").decode()
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.ReferringPhysicianName = ""
    ds.PatientName = placeholders["patient_name"].rstrip(b" ").decode()
    ds.PatientID = placeholders["patient_id"].rstrip(b" ").decode()
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = placeholders["study"].rstrip(b"\0").decode()
    ds.SeriesInstanceUID = placeholders["series"].rstrip(b"\0").decode()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if compressed else bits
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 0
    ds.Rows = ds.Columns = 1
    ds.PixelData = b""
    header = len(encode_dataset(ds, _EXPLICIT_LE if compressed else _native(ts)))
    want = max(2, size - header)
    if compressed:
        # Encapsulated (PS3.5 A.4): one fake fragment; no SCP under load decodes pixels.
        # Item tags and lengths of the offset table, fragment and delimiter: 24 bytes.
        length = max(2, (want - 24 + 1) & ~1)
        frame = (os.urandom(4096) * (length // 4096 + 1))[:length]
        ds.Rows, ds.Columns = 512, 512
        ds.PixelData = encapsulate([frame], has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        encoded = encode_dataset(ds, _EXPLICIT_LE)
    else:
        rows, columns = _pixel_geometry(want, bits // 8)
        ds.Rows, ds.Columns = rows, columns
        length = rows * columns * (bits // 8)
        ds.PixelData = (os.urandom(4096) * (length // 4096 + 1))[:length]
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        encoded = encode_dataset(ds, _native(ts))
    segments, slots = _cut(encoded, placeholders)
    template = Template(
        sop_class_uid=sop_uid,
        transfer_syntax_uid=ts,
        segments=segments,
        slots=slots,
        deflate=ts == _DEFLATED,
    )
    return Synthetic(template=template, root=root, spread=spread, instance_size=len(encoded))


def _native(ts: str) -> str:
    """The uncompressed encoding a native or deflated transfer syntax is built in."""
    return _EXPLICIT_LE if ts == _DEFLATED else ts


def _find_element(data: bytes, tag: int, ts: str) -> tuple[int, int, int] | None:
    """(element offset, header length, value length) of top-level ``tag`` (PS3.5 7.1).

    Walks elements in order up to ``tag``; gives up (None) at an undefined length or a
    larger tag, or if the transfer syntax is not an uncompressed native one.
    """
    if ts not in _NATIVE and not UID(ts).is_compressed:
        return None
    implicit = ts == _IMPLICIT_LE
    endian = ">" if ts == _EXPLICIT_BE else "<"
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem = struct.unpack_from(endian + "HH", data, pos)
        current = (group << 16) | elem
        if implicit:
            (length,) = struct.unpack_from("<I", data, pos + 4)
            header = 8
        elif data[pos + 4:pos + 6] in _LONG_VRS:
            if pos + 12 > end:
                return None
            (length,) = struct.unpack_from(endian + "I", data, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from(endian + "H", data, pos + 6)
            header = 8
        if current == tag:
            return pos, header, length
        if current > tag or length == 0xFFFFFFFF:
            return None
        pos += header + length
    return None


def file_template(
    sop_class_uid: str, transfer_syntax_uid: str, dataset: bytes, root: str
) -> Template:
    """A template that gives a file's data set a new SOP Instance UID per instance.

    Raises ValueError when the data set's (0008,0018) cannot be found by a simple walk
    (deflated data set, or an undefined-length element before it).
    """
    _check_root(root)
    found = _find_element(dataset, _SOP_INSTANCE_TAG, transfer_syntax_uid)
    if found is None:
        raise ValueError(
            "cannot locate the SOP Instance UID in this data set (deflated, or an "
            "undefined length before it)"
        )
    start, header, length = found
    new_length = len(_pad_uid(instance_uid(root, 0)))
    if transfer_syntax_uid == _IMPLICIT_LE:
        new_header = struct.pack("<HHI", 0x0008, 0x0018, new_length)
    else:
        endian = ">" if transfer_syntax_uid == _EXPLICIT_BE else "<"
        new_header = struct.pack(endian + "HH2sH", 0x0008, 0x0018, b"UI", new_length)
    return Template(
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        segments=[dataset[:start] + new_header, dataset[start + header + length:]],
        slots=["sop"],
    )

