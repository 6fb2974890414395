"""Deterministic DICOM data sets, generated with pydicom (no binary fixtures in the tree).

Theory of operation: this module owns the *content* the tests and the benchmarks send and
compare (the benchmarks' loads are built here; the tests import it from bench, never the
other way round). `make_dataset` builds one valid SOP instance of a named kind (CT, MR,
secondary capture, tiny, multi-frame, encapsulated, and the deflated / big endian / implicit
transfer syntaxes); `write_part10` and `make_files` put them on disk as PS3.10 files;
`make_large_file` streams a multi-GB instance to disk without holding it in memory; and
`dataset_offset` / `dataset_bytes` / `dataset_sha256` read back the data set portion of a
PS3.10 file *as stored* (PS3.10 section 7.1: after the File Meta Information group, whose
length is (0002,0000)), which is what "stored byte-identical" is checked against.

It never talks to the network and never decodes pixel data; pixel bytes are seeded noise
(no numpy), and the "JPEG" fragments of the encapsulated kind are not valid JPEG streams
because no SCP under test ever decodes pixels.

Every value is a function of the arguments: the same call gives the same bytes, except
where ``unique=True`` asks for fresh UIDs. Deterministic UIDs use pydicom's root with a
SHA-512 of the arguments (`generate_uid(entropy_srcs=...)`: always 64 characters);
unique ones are UUID-derived ``2.25.`` UIDs (`generate_uid(prefix=None)`: variable,
sometimes odd, length), so both UID shapes reach the SCP.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

__all__ = [
    "KINDS",
    "SOP_CLASSES",
    "make_uid",
    "make_dataset",
    "write_part10",
    "make_files",
    "dataset_offset",
    "dataset_bytes",
    "dataset_sha256",
    "make_large_file",
    "LARGE_FILE_FRAME_BYTES",
]

KINDS: tuple[str, ...] = (
    "ct",
    "mr",
    "sc",
    "tiny",
    "multiframe",
    "encapsulated",
    "deflated",
    "bigendian",
    "implicit",
)
"""Every kind `make_dataset` builds. pydicom 3.0.2 still writes Explicit VR Big Endian
(retired, PS3.5 A.3 / PS3.5 section 10 note), so "bigendian" is always available."""

SOP_CLASSES: dict[str, UID] = {
    "ct": UID("1.2.840.10008.5.1.4.1.1.2"),  # CT Image Storage
    "mr": UID("1.2.840.10008.5.1.4.1.1.4"),  # MR Image Storage
    "sc": UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage
    "sr": UID("1.2.840.10008.5.1.4.1.1.88.11"),  # Basic Text SR Storage
    "mf_word": UID("1.2.840.10008.5.1.4.1.1.7.3"),  # Multi-frame Grayscale Word SC
    "mf_color": UID("1.2.840.10008.5.1.4.1.1.7.4"),  # Multi-frame True Color SC
}

_KIND_TS: dict[str, UID] = {
    "deflated": DeflatedExplicitVRLittleEndian,
    "bigendian": ExplicitVRBigEndian,
    "implicit": ImplicitVRLittleEndian,
    "encapsulated": JPEGBaseline8Bit,
}
_NATIVE_TS = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)

# Default pixel data sizes: small enough that a dozen instances cost milliseconds to build.
_MULTIFRAME_DEFAULT_SIZE = 1 << 20  # 8 frames of 256x256x16 bit
_ENCAPSULATED_DEFAULT_SIZE = 12 * 1024  # 3 fake JPEG frames of 4 KiB

LARGE_FILE_FRAME_BYTES = 512 * 512 * 2
"""Bytes per frame of `make_large_file` instances (512x512, 16 bit)."""
_LARGE_CHUNK = 4 << 20  # 4 MiB writes: large enough for disk throughput, small in memory
_LARGE_STAMP_EVERY = 4096  # each 4 KiB block starts with its own offset, so a misplaced block shows
# Pixel Data has a 32-bit length and 0xFFFFFFFF means undefined (PS3.5 7.1.1): largest even value.
_MAX_DEFINED_LENGTH = 0xFFFFFFFE


def make_uid(*parts: object, unique: bool = False) -> UID:
    """A UID that is a pure function of `parts`, or a fresh UUID-derived one if `unique`."""
    if unique:
        return generate_uid(prefix=None)
    return generate_uid(entropy_srcs=["scpfleet-test", *(repr(p) for p in parts)])


def _rng(*parts: object) -> random.Random:
    return random.Random("|".join(repr(p) for p in parts))


def _noise(n: int, *parts: object, compressible: bool = False) -> bytes:
    """`n` seeded bytes; `compressible` repeats a 4 KiB block so Deflate has work to do."""
    rnd = _rng(*parts)
    if not compressible:
        return rnd.randbytes(n)
    block = rnd.randbytes(4096)
    return (block * (n // 4096 + 1))[:n]


def _file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's
    meta.ImplementationVersionName = "SCPFLEET_TEST"
    return meta


def _common(
    ds: Dataset,
    *,
    sop_class: UID,
    modality: str,
    sop_uid: UID,
    study_uid: UID,
    series_uid: UID,
    patient_id: str,
    instance_number: int,
) -> None:
    """Patient, General Study, General Series and SOP Common modules (PS3.3 C.7, C.12.1)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240102"
    ds.SeriesDate = "20240102"
    ds.ContentDate = "20240102"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101502.123456"
    ds.ContentTime = "101503"
    ds.AccessionNumber = f"A{patient_id[-4:]}"
    ds.Modality = modality
    ds.Manufacturer = "SCPFLEET"
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = "Interop test study"
    ds.SeriesDescription = f"{modality} series"
    ds.PatientName = "Müller^Jürgen"  # exercises ISO_IR 100 (Latin-1) text
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number


def _image_pixel(ds: Dataset, rows: int, cols: int, bits: int, samples: int) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) for native, unsigned pixel data."""
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def _ct_like(ds: Dataset, rows: int, seed: int, kind: str, compressible: bool) -> None:
    """CT Image module extras, a private block and a nested sequence before Pixel Data."""
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.CTDIvol = 12.5  # FD: a binary VR that byte order affects
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-100.0 + seed:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = make_uid("for", ds.StudyInstanceUID)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{-100.0 + seed:.1f}"
    ds.PixelSpacing = ["0.9765625", "0.9765625"]
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    code = Dataset()
    code.CodeValue = "P5-0800A"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "CT of chest"
    request = Dataset()
    request.RequestedProcedureID = "RP1"
    request.ScheduledProcedureStepID = "SPS1"
    request.ScheduledProtocolCodeSequence = Sequence([code])  # sequence inside a sequence
    ds.RequestAttributesSequence = Sequence([request])
    block = ds.private_block(0x0009, "SCPFLEET TEST", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "UL", 0xDEADBEEF)
    _image_pixel(ds, rows, rows, 16, 1)
    ds.PixelData = _noise(rows * rows * 2, kind, seed, compressible=compressible)


def _mr(ds: Dataset, seed: int) -> None:
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.EchoTrainLength = "1"
    ds.MagneticFieldStrength = "1.5"
    ds.ImagePositionPatient = ["-128.0", "-128.0", f"{seed:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = make_uid("for", ds.StudyInstanceUID)
    ds.PixelSpacing = ["1", "1"]
    _image_pixel(ds, 256, 256, 16, 1)
    ds.PixelData = _noise(256 * 256 * 2, "mr", seed)


def _sc(ds: Dataset, rows: int, samples: int, seed: int, kind: str) -> None:
    ds.ConversionType = "WSD"
    _image_pixel(ds, rows, rows, 8, samples)
    ds.PixelData = _noise(rows * rows * samples, kind, seed)


def _text_sr(ds: Dataset, seed: int) -> None:
    """Basic Text SR (PS3.3 A.35.1): a root CONTAINER with one TEXT item."""
    del ds.ImageType
    title = Dataset()
    title.CodeValue = "11528-7"
    title.CodingSchemeDesignator = "LN"
    title.CodeMeaning = "Radiology Report"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([title])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    finding_name = Dataset()
    finding_name.CodeValue = "121071"
    finding_name.CodingSchemeDesignator = "DCM"
    finding_name.CodeMeaning = "Finding"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([finding_name])
    item.TextValue = f"No acute findings (seed {seed})."
    ds.ContentSequence = Sequence([item])


def _multiframe(ds: Dataset, size: int, seed: int) -> None:
    side = 256 if size >= 256 * 256 * 2 else 32
    frame = side * side * 2
    frames = max(1, math.ceil(size / frame))
    _image_pixel(ds, side, side, 16, 1)
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00182001  # Page Number Vector
    ds.PageNumberVector = list(range(1, frames + 1))
    ds.PixelData = _noise(frame * frames, "multiframe", seed)


def _encapsulated(ds: Dataset, size: int, seed: int) -> None:
    frames = 3
    body = max(16, size // frames - 8) & ~1  # minus item headers, even
    fakes = []
    for i in range(frames):
        # SOI .. EOI around noise: looks like JPEG to a casual eye, decodes as nothing.
        fakes.append(b"\xff\xd8\xff\xe0" + _noise(body - 6, "encaps", seed, i) + b"\xff\xd9")
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = 64
    ds.Columns = 64
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00182001
    ds.PageNumberVector = list(range(1, frames + 1))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate(fakes, fragments_per_frame=2, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def make_dataset(
    kind: str,
    *,
    transfer_syntax: str | None = None,
    size: int | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str = "P0001",
    instance_number: int = 1,
    seed: int = 0,
    unique: bool = False,
) -> Dataset:
    """Build one valid SOP instance of `kind` (see `KINDS`) with `file_meta` set.

    transfer_syntax: None means the kind's own (Explicit VR LE; Deflated, Big Endian,
      Implicit for those kinds; JPEG Baseline for "encapsulated"). Native kinds accept any
      of the four native syntaxes; "encapsulated" accepts any compressed one.
    size: pixel data bytes, only for "multiframe" (rounded up to whole frames, default
      1 MiB) and "encapsulated" (approximate fragment bytes, default 12 KiB).
    unique: fresh UIDs for whatever UID was not given; otherwise UIDs derive from the
      arguments (study from patient_id and seed, series from study and kind, instance
      from series, instance_number and seed).
    "tiny" rotates SOP classes with `seed`: 0: 32x32 8-bit Secondary Capture,
      1: Basic Text SR, 2: 16x16 CT; every one is a file under 8 KB.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if size is not None and kind not in ("multiframe", "encapsulated"):
        raise ValueError(f"size applies to 'multiframe' and 'encapsulated', not {kind!r}")
    ts = UID(transfer_syntax) if transfer_syntax else _KIND_TS.get(kind, ExplicitVRLittleEndian)
    if kind == "encapsulated":
        if not ts.is_compressed:
            raise ValueError(f"'encapsulated' needs a compressed transfer syntax, not {ts}")
    elif ts not in _NATIVE_TS:
        raise ValueError(f"{kind!r} has native pixel data; {ts} is not a native syntax")

    variant = kind
    if kind == "tiny":
        variant = ("tiny_sc", "tiny_sr", "tiny_ct")[seed % 3]
    sop_class, modality = {
        "ct": (SOP_CLASSES["ct"], "CT"),
        "deflated": (SOP_CLASSES["ct"], "CT"),
        "bigendian": (SOP_CLASSES["ct"], "CT"),
        "implicit": (SOP_CLASSES["ct"], "CT"),
        "tiny_ct": (SOP_CLASSES["ct"], "CT"),
        "mr": (SOP_CLASSES["mr"], "MR"),
        "sc": (SOP_CLASSES["sc"], "OT"),
        "tiny_sc": (SOP_CLASSES["sc"], "OT"),
        "tiny_sr": (SOP_CLASSES["sr"], "SR"),
        "multiframe": (SOP_CLASSES["mf_word"], "OT"),
        "encapsulated": (SOP_CLASSES["mf_color"], "OT"),
    }[variant]

    study = UID(study_uid) if study_uid else make_uid("study", patient_id, seed, unique=unique)
    series = UID(series_uid) if series_uid else make_uid("series", study, kind, unique=unique)
    sop = (
        UID(sop_instance_uid)
        if sop_instance_uid
        else make_uid("sop", series, kind, ts, instance_number, seed, size, unique=unique)
    )

    ds = Dataset()
    _common(
        ds,
        sop_class=sop_class,
        modality=modality,
        sop_uid=sop,
        study_uid=study,
        series_uid=series,
        patient_id=patient_id,
        instance_number=instance_number,
    )
    if variant in ("ct", "implicit", "bigendian"):
        _ct_like(ds, 512 if variant == "ct" else 256, seed, kind, compressible=False)
    elif variant == "deflated":
        _ct_like(ds, 256, seed, kind, compressible=True)
    elif variant == "tiny_ct":
        _ct_like(ds, 16, seed, kind, compressible=False)
    elif variant == "mr":
        _mr(ds, seed)
    elif variant == "sc":
        _sc(ds, 64, 3, seed, kind)
    elif variant == "tiny_sc":
        _sc(ds, 32, 1, seed, kind)
    elif variant == "tiny_sr":
        _text_sr(ds, seed)
    elif variant == "multiframe":
        _multiframe(ds, size or _MULTIFRAME_DEFAULT_SIZE, seed)
    else:
        _encapsulated(ds, size or _ENCAPSULATED_DEFAULT_SIZE, seed)
    ds.file_meta = _file_meta(ds, ts)
    return ds


def write_part10(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write `ds` as a PS3.10 file (preamble, "DICM", meta group with its group length)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# make_files layout: 10 instances a series, 2 series a study, so 100 files span 5 studies.
_PER_SERIES = 10
_SERIES_PER_STUDY = 2


def make_files(
    directory: str | os.PathLike[str],
    kinds_and_counts: Mapping[str, int] | Iterable[tuple[str, int]],
    *,
    unique: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write a batch of instances as `{kind}_{n:05d}.dcm` under `directory`; return the paths.

    Instances of one kind fill series of 10, two series a study; studies (and patients) are
    shared between kinds by index, so a batch mixes SOP classes within studies. With
    `unique` every UID is fresh for this call (but consistent within it); without, the
    batch is a pure function of the arguments.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    items = kinds_and_counts.items() if isinstance(kinds_and_counts, Mapping) else kinds_and_counts
    batch = uuid.uuid4().hex if unique else "fixed"
    paths = []
    for kind, count in items:
        for i in range(count):
            study_no, rest = divmod(i, _PER_SERIES * _SERIES_PER_STUDY)
            series_no = rest // _PER_SERIES
            patient_id = f"P{study_no % 7 + 1:04d}"
            study = make_uid("batch-study", batch, seed, study_no)
            series = make_uid("batch-series", batch, seed, study_no, series_no, kind)
            ds = make_dataset(
                kind,
                study_uid=study,
                series_uid=series,
                sop_instance_uid=make_uid("batch-sop", batch, seed, kind, i),
                patient_id=patient_id,
                instance_number=i % _PER_SERIES + 1,
                seed=seed + i,
            )
            paths.append(write_part10(ds, directory / f"{kind}_{i:05d}.dcm"))
    return paths


def dataset_offset(path: str | os.PathLike[str]) -> int:
    """Byte offset where the data set starts in a PS3.10 file (PS3.10 7.1).

    Reads only the header: 128-byte preamble, "DICM", then (0002,0000) UL in Explicit VR
    Little Endian, whose value counts the remaining meta group bytes.
    """
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ValueError(f"{path}: no PS3.10 preamble/DICM prefix")
    group, elem, vr, length, value = struct.unpack_from("<HH2sHI", head, 132)
    if (group, elem, vr, length) != (0x0002, 0x0000, b"UL", 4):
        raise ValueError(f"{path}: first meta element is not (0002,0000) UL")
    return 144 + value


def dataset_bytes(path: str | os.PathLike[str], *, inflate: bool = False) -> bytes:
    """The data set portion of a PS3.10 file exactly as stored (everything after the meta).

    With `inflate`, a Deflated Explicit VR LE data set (PS3.5 A.5) is returned inflated,
    for comparing content when two deflaters may have produced different streams.
    """
    offset = dataset_offset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    if inflate:
        meta = pydicom.filereader.read_file_meta_info(path)
        if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    return data


def dataset_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex of `dataset_bytes(path)`, streamed (for multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(dataset_offset(path))
        while chunk := f.read(_LARGE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def make_large_file(
    path: str | os.PathLike[str], size_bytes: int, *, seed: int = 0, unique: bool = False
) -> Path:
    """Stream a Multi-frame Grayscale Word SC instance with ~`size_bytes` of pixel data.

    Pixel data is rounded up to whole 512x512x16-bit frames and must stay below the 32-bit
    defined-length limit (just under 4 GiB). pydicom writes the meta and every element
    before Pixel Data; the (7FE0,0010) OW header with its defined length follows, then the
    pixel bytes in 4 MiB chunks of seeded noise in which every 4 KiB block begins with its
    own 8-byte pixel offset. Memory use is one chunk whatever the size. The result is
    checked: pydicom reads the header back and the file length is header + pixel length.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, math.ceil(size_bytes / LARGE_FILE_FRAME_BYTES))
    pixel_len = frames * LARGE_FILE_FRAME_BYTES
    if pixel_len > _MAX_DEFINED_LENGTH:
        raise ValueError(f"{size_bytes} bytes of pixel data exceed a 32-bit defined length")
    ds = make_dataset("multiframe", size=2 * 32 * 32, seed=seed, unique=unique)
    del ds.PixelData
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.PageNumberVector = list(range(1, frames + 1))  # at most 8191 values: < 64 KiB of IS
    with open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
        header_len = f.tell()
        # (7FE0,0010) OW, reserved 0000, 32-bit length: PS3.5 7.1.2 explicit VR, LE.
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_len))
        base = bytearray(_noise(_LARGE_CHUNK, "large", seed))
        written = 0
        while written < pixel_len:
            n = min(_LARGE_CHUNK, pixel_len - written)
            for off in range(0, n, _LARGE_STAMP_EVERY):
                struct.pack_into("<Q", base, off, written + off)
            f.write(memoryview(base)[:n])
            written += n
    expected = header_len + 12 + pixel_len
    actual = path.stat().st_size
    check = pydicom.dcmread(path, stop_before_pixels=True)
    if actual != expected or int(check.NumberOfFrames) != frames or check.Rows != 512:
        raise RuntimeError(f"{path}: wrote {actual} bytes, expected {expected}")
    return path
