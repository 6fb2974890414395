"""engine._transcode: streaming conversion between the uncompressed transfer syntaxes.

Theory of operation: every kind of tests/dicomdata.py is written as a Part 10 file and
its data set bytes converted into each uncompressed syntax, whole and fed one byte at a
time (the same output either way); pydicom decodes the result, and every element is
compared with the original as a value: numbers as numbers, OW/OF/... as units in their
byte order, private elements that became UN as the original value's bytes. Then the
pieces the corpus does not cover: sequences of defined and undefined length, nested;
ambiguous VRs; a UN of undefined length; deflate padding; errors for compressed and
malformed input; and the SOP UIDs read from a data set's head. Last, the conversion on
the wire: our requestor sends each kind to DCMTK storescp accepting one syntax, and
what storescp stored (bit-preserving) decodes to the same data set.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from engine import AE, build_context
from engine._transcode import (
    CONVERTIBLE,
    Transcoder,
    TranscodeError,
    can_transcode,
    read_sop_uids,
    transcode,
)
from engine.dataset import decode_dataset
from tests import peers
from tests.dicomdata import KINDS, dataset_bytes, make_dataset, write_part10

TARGETS = sorted(CONVERTIBLE)
BIG = str(ExplicitVRBigEndian)
#: Raw VRs whose units are swapped between byte orders, and their unit width.
RAW_WIDTHS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _encode(ds: Dataset, ts: str) -> bytes:
    implicit = ts == ImplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = ts != BIG
    write_dataset(fp, ds)
    raw = fp.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        raw = compressor.compress(raw) + compressor.flush()
    return raw


def _value_bytes(elem: DataElement, little: bool) -> bytes:
    """The encoded value of ``elem`` in the given byte order (pydicom's writer)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = True
    fp.is_little_endian = little
    write_data_element(fp, elem)
    return fp.getvalue()[8:]


def _units(data: bytes, width: int, little: bool) -> list[int]:
    code = {2: "H", 4: "I", 8: "Q"}[width]
    count = len(data) // width
    return list(struct.unpack(f"{'<' if little else '>'}{count}{code}", data[:count * width]))


def differences(a: Dataset, b: Dataset, a_little: bool, b_little: bool,
                path: str = "") -> list[str]:
    """How ``b`` (converted) differs from ``a`` (original), value by value."""
    found = []
    for elem in a:
        if elem.tag.element == 0 or elem.tag.group == 2:
            continue  # group lengths are dropped across implicit/explicit
        where = f"{path}{elem.tag}"
        if elem.tag not in b:
            found.append(f"{where} missing")
            continue
        other = b[elem.tag]
        if elem.VR == "SQ":
            if other.VR != "SQ" or len(elem.value) != len(other.value):
                found.append(f"{where}: sequence {other.VR} of {len(other.value)} items")
                continue
            for i, (x, y) in enumerate(zip(elem.value, other.value)):
                found += differences(x, y, a_little, b_little, f"{where}[{i}].")
        elif elem.VR in RAW_WIDTHS or other.VR in RAW_WIDTHS:
            width = RAW_WIDTHS.get(elem.VR) or RAW_WIDTHS[other.VR]
            if _units(elem.value, width, a_little) != _units(other.value, width, b_little):
                found.append(f"{where}: {elem.VR}/{other.VR} units differ")
        elif other.VR == "UN" and elem.VR != "UN":
            if _value_bytes(elem, b_little) != other.value:
                found.append(f"{where}: UN bytes differ from the {elem.VR} value")
        elif elem.value != other.value:
            found.append(f"{where}: {elem.VR} {elem.value!r} != {other.VR} {other.value!r}")
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes]]:
    """kind -> (transfer syntax, data set bytes as stored in its Part 10 file)."""
    directory = tmp_path_factory.mktemp("transcode")
    files = {}
    for kind in KINDS:
        ds = make_dataset(kind)
        path = write_part10(ds, directory / f"{kind}.dcm")
        files[kind] = (str(ds.file_meta.TransferSyntaxUID), dataset_bytes(path))
    return files


def _convert_bytewise(raw: bytes, source: str, target: str) -> bytes:
    coder = Transcoder(source, target)
    out = []
    for i in range(len(raw)):
        out += coder.feed(raw[i:i + 1])
    out += coder.finish()
    return b"".join(bytes(piece) for piece in out)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "encapsulated"])
def test_every_kind_round_trips_through_pydicom(corpus, kind, target):
    source, raw = corpus[kind]
    out = transcode(raw, source, target)
    if len(raw) <= 1 << 18:  # one byte at a time: the smaller kinds (time, not coverage)
        assert _convert_bytewise(raw, source, target) == out
    original = decode_dataset(raw, source)
    converted = decode_dataset(out, target)
    assert differences(original, converted, source != BIG, target != BIG) == []
    if target == DeflatedExplicitVRLittleEndian:
        assert len(out) % 2 == 0  # PS3.5 A.5: padded to even
    # And back again: the original content, whatever the intermediate layout -- except
    # that Implicit VR LE loses private VRs, so a private number returns to big endian
    # as UN bytes that nothing can know to swap back (PS3.5 6.2.2).
    if source == BIG and target == ImplicitVRLittleEndian:
        return
    again = decode_dataset(transcode(out, target, source), source)
    assert differences(original, again, source != BIG, source != BIG) == []


def test_same_syntax_passes_bytes_through(corpus):
    source, raw = corpus["encapsulated"]
    assert transcode(raw, source, source) == raw
    assert can_transcode(source, source) and not can_transcode(source, ExplicitVRLittleEndian)


@pytest.mark.parametrize("target", TARGETS)
def test_compressed_cannot_be_converted(target):
    with pytest.raises(TranscodeError, match="compressed"):
        Transcoder(JPEGBaseline8Bit, target)
    with pytest.raises(TranscodeError, match="compressed"):
        Transcoder(target, JPEGBaseline8Bit)


def test_encapsulated_pixel_data_in_native_syntax_is_refused(corpus):
    # The encapsulated kind's bytes claimed to be Explicit VR LE: its undefined-length
    # Pixel Data is legal only in a compressed syntax (PS3.5 A.4).
    _, raw = corpus["encapsulated"]
    with pytest.raises(TranscodeError, match="encapsulated Pixel Data"):
        transcode(raw, ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _nested(undefined: bool) -> Dataset:
    inner = Dataset()
    inner.CodeValue = "121"
    inner.CodingSchemeDesignator = "DCM"
    inner.add_new(0x00091010, "FD", [1.5, -2.25])  # private, numbers
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ConceptNameCodeSequence = Sequence([inner, inner])
    item.add_new(0x00181150, "IS", "12")
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Rows = 2
    ds.ReferencedImageSequence = Sequence([item, Dataset(), item])
    ds.add_new(0x00280034, "IS", "1\\1")
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00181320, "FL", [0.5, 3.0])  # B1rms
    ds.PixelRepresentation = 1  # so (0028,0106) "US or SS" is SS
    ds.add_new(0x00280106, "SS", -5)
    ds.add_new(0x00091011, "UL", 0xDEADBEEF)
    for elem in (ds.ReferencedImageSequence, item.ConceptNameCodeSequence):
        elem.is_undefined_length = undefined
    for entry in (item, inner):
        entry.is_undefined_length_sequence_item = undefined
    return ds


@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("source", TARGETS)
@pytest.mark.parametrize("target", TARGETS)
def test_nested_sequences(source, target, undefined):
    ds = _nested(undefined)
    raw = _encode(ds, source)
    out = transcode(raw, source, target)
    assert _convert_bytewise(raw, source, target) == out
    original = decode_dataset(raw, source)
    converted = decode_dataset(out, target)
    assert differences(original, converted, source != BIG, target != BIG) == []


def test_lengths_kept_between_explicit_syntaxes_and_undefined_across():
    raw = _encode(_nested(undefined=False), ExplicitVRLittleEndian)
    big = transcode(raw, ExplicitVRLittleEndian, ExplicitVRBigEndian)
    assert len(big) == len(raw)  # the same layout, every length kept
    implicit = transcode(raw, ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    # Sequences and items written with undefined length and delimiters (PS3.5 7.5).
    assert b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" in implicit
    assert b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" in implicit


def test_swapped_values_by_vr():
    ds = Dataset()
    ds.add_new(0x00280010, "US", 0x0102)
    ds.add_new(0x00181320, "FL", [1.0])
    ds.add_new(0x00209165, "AT", [0x00100020])
    ds.add_new(0x00100010, "PN", "AB^CD")
    raw = _encode(ds, ExplicitVRLittleEndian)
    big = transcode(raw, ExplicitVRLittleEndian, ExplicitVRBigEndian)
    assert b"\x00\x28\x00\x10US\x00\x02\x01\x02" in big  # (0028,0010) US 0102H, BE
    assert struct.pack(">f", 1.0) in big
    assert b"\x00\x20\x91\x65AT\x00\x04\x00\x10\x00\x20" in big  # AT: each half swapped
    assert b"AB^CD " in big  # characters stay


@pytest.mark.parametrize("representation, expected", [(0, b"US"), (1, b"SS")])
def test_us_or_ss_resolved_by_pixel_representation(representation, expected):
    ds = Dataset()
    ds.PixelRepresentation = representation
    ds.add_new(0x00280106, "US" if representation == 0 else "SS", 3)
    raw = _encode(ds, ImplicitVRLittleEndian)
    out = transcode(raw, ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    assert b"\x28\x00\x06\x01" + expected in out


@pytest.mark.parametrize("bits, expected", [(8, b"OB"), (16, b"OW")])
def test_pixel_data_vr_from_bits_allocated(bits, expected):
    ds = Dataset()
    ds.BitsAllocated = bits
    ds.add_new(0x7FE00010, "OW", b"\x01\x02\x03\x04")
    raw = _encode(ds, ImplicitVRLittleEndian)
    out = transcode(raw, ImplicitVRLittleEndian, ExplicitVRBigEndian)
    assert b"\x7f\xe0\x00\x10" + expected in out
    value = out[-4:]
    assert value == (b"\x01\x02\x03\x04" if bits == 8 else b"\x02\x01\x04\x03")


def test_private_and_unknown_tags_become_un_and_long_short_vrs_too():
    body = struct.pack("<HHI", 0x0009, 0x1001, 4) + b"abcd"  # private, implicit
    body += struct.pack("<HHI", 0x0010, 0x0010, 70000) + b"A" * 70000  # PN too long for 16 bits
    out = transcode(body, ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    assert out.startswith(struct.pack("<HH", 0x0009, 0x1001) + b"UN\x00\x00" + struct.pack("<I", 4))
    assert struct.pack("<HH", 0x0010, 0x0010) + b"UN\x00\x00" + struct.pack("<I", 70000) in out


def test_undefined_length_un_holds_an_implicit_sequence():
    # (0009,1010) UN, undefined length, holding one item in Implicit VR LE (PS3.5 6.2.2).
    item = struct.pack("<HHI", 0x0008, 0x0100, 4) + b"1234"
    body = (struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    out = transcode(body, ExplicitVRLittleEndian, ExplicitVRBigEndian)
    back = decode_dataset(out, ExplicitVRBigEndian)
    assert back[0x00091010].VR == "SQ"
    assert back[0x00091010].value[0].CodeValue == "1234"


@pytest.mark.parametrize("cut", [1, 7, 11])
def test_truncated_data_set_raises(cut):
    raw = _encode(_nested(undefined=True), ExplicitVRLittleEndian)
    coder = Transcoder(ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    coder.feed(raw[:-cut])
    with pytest.raises(TranscodeError):
        coder.finish()


def test_not_the_claimed_syntax_raises():
    raw = _encode(_nested(undefined=False), ImplicitVRLittleEndian)
    with pytest.raises(TranscodeError, match="not a PS3.5 VR"):
        transcode(raw, ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def test_corrupt_deflate_raises():
    with pytest.raises(TranscodeError, match="deflated"):
        transcode(b"\xff" * 64, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian)


@pytest.mark.parametrize("ts", [*TARGETS, str(JPEGBaseline8Bit)])
def test_read_sop_uids_from_the_head(ts):
    ds = _nested(undefined=True)
    ds.add_new(0x00080005, "CS", "ISO_IR 100")
    ds.add_new(0x00080008, "CS", ["ORIGINAL", "PRIMARY"])
    raw = _encode(ds, ts if ts in CONVERTIBLE else ExplicitVRLittleEndian)
    assert read_sop_uids(raw[:2048], ts) == ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5")


def test_read_sop_uids_missing():
    ds = Dataset()
    ds.PatientName = "X"
    assert read_sop_uids(_encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian) == ("", "")


# -- on the wire -----------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("target", [str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian),
                                    BIG])
def test_sent_converted_to_storescp_accepting_one_syntax(storescp, tmp_path: Path, target):
    """Every uncompressed kind sent as a file to a storescp that can only take
    ``target`` (we propose only it; for Implicit VR LE storescp also runs with +xi):
    what storescp stored bit-preserved decodes to the original data set."""
    extra = ["+xi"] if target == ImplicitVRLittleEndian else []
    scp = storescp(accept_all=not extra, extra_args=extra)
    kinds = [k for k in KINDS if k != "encapsulated"]
    paths = {}
    for kind in kinds:
        ds = make_dataset(kind, unique=True)
        paths[kind] = (write_part10(ds, tmp_path / f"{kind}.dcm"), ds)
    sop_classes = {str(ds.SOPClassUID) for _, ds in paths.values()}
    ae = AE("OURSCU")
    try:
        assoc = ae.associate(peers.HOST, scp.port, [build_context(uid, [target])
                                                    for uid in sorted(sop_classes)],
                             ae_title="STORESCP")
        assert assoc.is_established, scp.logs()
        for kind, (path, _) in paths.items():
            assert assoc.send_c_store(path).Status == 0x0000, f"{kind}\n{scp.logs()}"
        # A compressed data set cannot be converted: a clear error, nothing sent.
        encapsulated = make_dataset("encapsulated", unique=True)
        jpeg = write_part10(encapsulated, tmp_path / "encapsulated.dcm")
        if str(encapsulated.SOPClassUID) in sop_classes:
            with pytest.raises(ValueError, match="compressed"):
                assoc.send_c_store(jpeg)
        assoc.release()
    finally:
        ae.shutdown()
    stored = {}
    for out in scp.wait_for_files(len(paths)):
        ds = decode_dataset(dataset_bytes(out), target)
        stored[str(ds.SOPInstanceUID)] = ds
    for kind, (path, ds) in paths.items():
        source = str(ds.file_meta.TransferSyntaxUID)
        original = decode_dataset(dataset_bytes(path), source)
        assert differences(original, stored[str(ds.SOPInstanceUID)],
                           source != BIG, target != BIG) == [], kind
