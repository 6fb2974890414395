"""Part 10 framing: File Meta we write is what pydicom reads, the data set after it is
byte-identical, and read_file_meta frames any Part 10 file or raises NotDicomError."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import FileMeta, FileMetaTemplate, NotDicomError, build_file_meta, read_file_meta
from tests.dicomdata import make_dataset, write_part10
from tests.storage import ALL_SYNTAXES, encode, part10_dataset, with_meta
from tests.storage.test_meta import tricky_dataset

IMPL_UID = "1.2.3.4.5.6.7"


def _meta(ts: str, **kw: str | None) -> bytes:
    args = dict(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.777",
        transfer_syntax_uid=ts,
        implementation_class_uid=IMPL_UID,
        implementation_version_name="SCPFLEET_0.1",
        source_ae_title="MODALITY",
    )
    args.update(kw)
    return build_file_meta(**args)  # type: ignore[arg-type]


def test_layout_and_group_length() -> None:
    meta = _meta("1.2.840.10008.1.2.1", receiving_ae_title="ARCHIVE", sending_ae_title="MODALITY")
    assert meta[:128] == bytes(128) and meta[128:132] == b"DICM"
    group, elem, vr, length, value = struct.unpack_from("<HH2sHI", meta, 132)
    assert (group, elem, vr, length) == (2, 0, b"UL", 4)
    assert value == len(meta) - 144
    # (0002,0001) OB, reserved, length 2, 00 01
    assert meta[144:158] == struct.pack("<HH2sHI", 2, 1, b"OB", 0, 2) + b"\x00\x01"
    # every element has even length; walk the group
    pos, tags = 144, []
    while pos < len(meta):
        g, e, vr = struct.unpack_from("<HH2s", meta, pos)
        if vr == b"OB":
            (n,) = struct.unpack_from("<I", meta, pos + 8)
            pos += 12 + n
        else:
            (n,) = struct.unpack_from("<H", meta, pos + 6)
            pos += 8 + n
        assert g == 2 and n % 2 == 0
        tags.append(e)
    assert pos == len(meta)
    assert tags == [0x0001, 0x0002, 0x0003, 0x0010, 0x0012, 0x0013, 0x0016, 0x0017, 0x0018]


def test_padding_uid_nul_text_space() -> None:
    meta = _meta("1.2.840.10008.1.2", sop_instance_uid="1.2.3", source_ae_title="ODD")
    assert b"1.2.3\x00" in meta
    assert b"ODD " in meta
    assert b"SCPFLEET_0.1" in meta  # 12 characters, even: no pad


def test_optional_elements_left_out() -> None:
    meta = _meta("1.2.840.10008.1.2", implementation_version_name=None, source_ae_title="")
    parsed = read_file_meta(io.BytesIO(meta))
    assert parsed.implementation_version_name is None and parsed.source_ae_title is None
    assert parsed.dataset_offset == len(meta)


@settings(max_examples=100, deadline=None)
@given(
    sop=st.from_regex(r"[1-9][0-9]{0,20}(\.[1-9][0-9]{0,7}){0,4}", fullmatch=True),
    version=st.sampled_from([None, "", "V1", "SCPFLEET_01"]),
    titles=st.lists(st.sampled_from([None, "", "A", "MODALITY", "ARCHIVE_SIXTEEN1"]), min_size=3, max_size=3),
    ts=st.sampled_from(ALL_SYNTAXES),
)
def test_template_builds_what_build_file_meta_builds(sop: str, version, titles, ts: str) -> None:
    """The per-(class, syntax, titles) template gives byte for byte the same group."""
    args = ("1.2.840.10008.5.1.4.1.1.2", ts, "1.2.826.0.1.3680043.9.1")
    source, sending, receiving = titles
    template = FileMetaTemplate(*args, version, source, sending_ae_title=sending, receiving_ae_title=receiving)
    expected = build_file_meta(args[0], sop, args[1], args[2], version, source,
                               sending_ae_title=sending, receiving_ae_title=receiving)
    assert bytes(template.build(sop)) == expected
    with pytest.raises(ValueError):
        template.build("1." + "2" * 70)


@pytest.mark.parametrize(
    "kw",
    [
        {"sop_instance_uid": "1" * 65},
        {"sop_instance_uid": ""},
        {"transfer_syntax_uid": "1.2.é"},
        {"source_ae_title": "A" * 17},
        {"source_ae_title": "BAD\\AE"},
        {"implementation_version_name": "V\n1"},
    ],
)
def test_values_that_do_not_fit_their_vr(kw: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        _meta("1.2.840.10008.1.2.1", **kw)


@pytest.mark.parametrize("ts", ALL_SYNTAXES)
def test_pydicom_reads_our_file_and_data_set_is_byte_identical(ts: str, tmp_path: Path) -> None:
    ds = tricky_dataset()
    data = encode(ds, ts)
    meta = _meta(ts, sop_instance_uid=ds.SOPInstanceUID, sending_ae_title="MODALITY", receiving_ae_title="ARCHIVE")
    path = tmp_path / "x.dcm"
    path.write_bytes(meta + data)
    read = pydicom.dcmread(path)
    fm = read.file_meta
    assert fm.TransferSyntaxUID == ts
    assert fm.MediaStorageSOPClassUID == ds.SOPClassUID
    assert fm.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert fm.ImplementationClassUID == IMPL_UID
    assert fm.ImplementationVersionName == "SCPFLEET_0.1"
    assert fm.SourceApplicationEntityTitle == "MODALITY"
    assert fm.ReceivingApplicationEntityTitle == "ARCHIVE"
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.FileMetaInformationGroupLength == len(meta) - 144
    assert read.SOPInstanceUID == ds.SOPInstanceUID
    assert read.PatientName == ds.PatientName
    assert read.InstanceNumber == 17
    assert path.read_bytes()[len(meta) :] == data
    parsed = read_file_meta(path)
    assert parsed.dataset_offset == len(meta)
    assert parsed.transfer_syntax_uid == ts
    assert parsed.media_storage_sop_instance_uid == ds.SOPInstanceUID
    assert (parsed.source_ae_title, parsed.sending_ae_title, parsed.receiving_ae_title) == (
        "MODALITY",
        "MODALITY",
        "ARCHIVE",
    )


@pytest.mark.parametrize("kind", ["ct", "deflated", "bigendian", "implicit", "encapsulated"])
def test_read_pydicom_written_files(kind: str, tmp_path: Path) -> None:
    ds = make_dataset(kind)
    path = write_part10(ds, tmp_path / f"{kind}.dcm")
    parsed = read_file_meta(path)
    raw = path.read_bytes()
    assert raw[parsed.dataset_offset :] == part10_dataset(ds)
    assert parsed.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert parsed.media_storage_sop_class_uid == ds.SOPClassUID
    assert parsed.implementation_version_name == "SCPFLEET_TEST"
    with open(path, "rb") as fp:
        again = read_file_meta(fp)
        assert fp.tell() == parsed.dataset_offset  # positioned to stream the data set
    assert again == parsed


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value


def test_missing_or_wrong_group_length_is_tolerated() -> None:
    body = (
        _element(0x0001, b"OB", b"\x00\x01")
        + _element(0x0002, b"UI", b"1.2.3\x00")
        + _element(0x0010, b"UI", b"1.2.840.10008.1.2\x00")
    )
    dataset = struct.pack("<HHI", 0x0008, 0x0016, 6) + b"1.2.3\x00"
    head = bytes(128) + b"DICM"
    without = head + body + dataset
    assert read_file_meta(io.BytesIO(without)).dataset_offset == len(head + body)
    wrong = head + _element(0x0000, b"UL", struct.pack("<I", 6)) + body + dataset
    parsed = read_file_meta(io.BytesIO(wrong))
    assert parsed.dataset_offset == len(wrong) - len(dataset)
    assert parsed.transfer_syntax_uid == "1.2.840.10008.1.2"


def test_deflated_data_set_looking_like_group_2_is_not_read_as_meta() -> None:
    meta = _meta("1.2.840.10008.1.2.1.99")
    dataset = b"\x02\x00\x20\x00UI\x02\x00ab"  # arbitrary deflate bytes that look like (0002,0020)
    parsed = read_file_meta(io.BytesIO(meta + dataset))
    assert parsed.dataset_offset == len(meta)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"DICM" + bytes(200),  # no preamble
        bytes(128) + b"DICN" + bytes(20),
        bytes(128) + b"DICM",  # no meta at all: no transfer syntax
        bytes(128) + b"DICM" + _element(0x0010, b"UI", b"1.2.840.10008.1.2\x00")[:-4],  # truncated value
        bytes(128) + b"DICM" + b"\x02\x00\x10\x00",  # truncated header
        bytes(128) + b"DICM" + struct.pack("<HH2sHI", 2, 0x0102, b"OB", 0, 0x7FFFFFFF),  # huge element
        bytes(128) + b"DICM" + struct.pack("<HH2sH", 2, 0x0010, b"\x00\x01", 2) + b"1\x00",  # no VR
    ],
)
def test_not_part10_raises_not_dicom(data: bytes) -> None:
    with pytest.raises(NotDicomError):
        read_file_meta(io.BytesIO(data))


def test_paths_that_are_not_files(tmp_path: Path) -> None:
    with pytest.raises(NotDicomError):
        read_file_meta(tmp_path / "missing.dcm")
    with pytest.raises(NotDicomError):
        read_file_meta(tmp_path)


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300))
def test_fuzz_only_not_dicom(tail: bytes) -> None:
    for prefix in (bytes(128) + b"DICM", _meta("1.2.840.10008.1.2")[:150]):
        try:
            parsed = read_file_meta(io.BytesIO(prefix + tail))
        except NotDicomError:
            continue
        assert isinstance(parsed, FileMeta)
        assert 132 <= parsed.dataset_offset <= len(prefix + tail)


def test_pydicom_with_ts_read_back(tmp_path: Path) -> None:
    ds = with_meta(tricky_dataset(), "1.2.840.10008.1.2.2")
    path = tmp_path / "be.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert read_file_meta(path).transfer_syntax_uid == "1.2.840.10008.1.2.2"
