"""MetadataExtractor: every transfer syntax, sequences before the wanted tags, any split,
bounded inflation, and no exception on any input -- each test run twice, with the fast
walk in C (storage._speedups) and in pure Python, and the two compared directly."""

from __future__ import annotations

import functools
import random
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence

import storage._meta as meta_module
from storage import InstanceMetadata, MetadataError, MetadataExtractor
from tests.dicomdata import make_dataset
from tests.storage import ALL_SYNTAXES, BIG, DEFLATED, EXPLICIT, IMPLICIT, encode, fragments, part10_dataset

EXPECTED = InstanceMetadata(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    sop_instance_uid="1.2.826.0.1.3680043.8.498.777",
    study_instance_uid="1.2.826.0.1.3680043.8.498.1",
    series_instance_uid="1.2.826.0.1.3680043.8.498.12",
    patient_id="PID-42",
    patient_name="Müller^Jürgen",
    modality="CT",
    study_date="20240102",
    instance_number="17",
    specific_character_set="ISO_IR 100",
)


def _speedups() -> tuple:  # type: ignore[type-arg]
    """The C walk, which the install builds (scripts/test.sh sees to a C compiler)."""
    try:
        from storage import _speedups
    except ImportError as exc:  # pragma: no cover - a failed build must fail here
        pytest.fail(f"storage._speedups is not built ({exc}): `pip install -e .` needs a C compiler")
    return _speedups.walk, _speedups.decode_values


@pytest.fixture(scope="module", params=["c", "python"], autouse=True)
def walk_impl(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Every test of this module, once per implementation of the fast walk."""
    saved = meta_module._SPEEDUPS
    meta_module._SPEEDUPS = _speedups() if request.param == "c" else None
    try:
        yield request.param
    finally:
        meta_module._SPEEDUPS = saved


def _decoy() -> Dataset:
    """An item carrying the wanted tags with wrong values: nested, never to be captured."""
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.SOPClassUID = "9.9.1"
    item.SOPInstanceUID = "9.9.2"
    item.StudyInstanceUID = "9.9.3"
    item.InstanceNumber = 99
    return item


def tricky_dataset(undefined: bool = True, instance_number: bool = True) -> Dataset:
    """EXPECTED's values, with sequences of defined and undefined length, nested and
    empty, before and between the wanted tags, each holding decoys of those tags."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # (0008,0006) before everything: undefined length, undefined-length items, one of
    # them holding a defined-length sequence of decoys, another a nested undefined one.
    inner_undefined = Sequence([_decoy(), Dataset()])
    first = Dataset()
    first.CodeValue = "eng"
    first.ReferencedSOPSequence = Sequence([_decoy(), _decoy()])
    second = Dataset()
    second.ReferencedImageSequence = inner_undefined
    ds.LanguageCodeSequence = Sequence([first, second, Dataset()])
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = EXPECTED.sop_class_uid
    ds.SOPInstanceUID = EXPECTED.sop_instance_uid
    ds.StudyDate = EXPECTED.study_date
    ds.Modality = EXPECTED.modality
    # (0008,0110) between wanted tags: a defined-length sequence whose item nests an
    # undefined-length one.
    scheme = Dataset()
    scheme.CodingSchemeDesignator = "DCM"
    scheme.ReferencedStudySequence = Sequence([_decoy()])
    ds.CodingSchemeIdentificationSequence = Sequence([scheme])
    ds.ReferencedStudySequence = Sequence([])  # empty sequence
    ds.PatientName = EXPECTED.patient_name
    ds.PatientID = EXPECTED.patient_id
    other = Dataset()
    other.PatientID = "DECOY"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.StudyInstanceUID = EXPECTED.study_instance_uid
    ds.SeriesInstanceUID = EXPECTED.series_instance_uid
    if instance_number:
        ds.InstanceNumber = int(EXPECTED.instance_number or 0)
    ds.RequestAttributesSequence = Sequence([_decoy()])
    ds.BitsAllocated = 16
    ds.PixelData = bytes(512)
    if undefined:
        ds["LanguageCodeSequence"].is_undefined_length = True
        for item in ds.LanguageCodeSequence:
            item.is_undefined_length_sequence_item = True
        second["ReferencedImageSequence"].is_undefined_length = True
        scheme["ReferencedStudySequence"].is_undefined_length = True
        scheme.is_undefined_length_sequence_item = True
        ds["ReferencedStudySequence"].is_undefined_length = True
        ds["OtherPatientIDsSequence"].is_undefined_length = True
    return ds


def extract(data: bytes, ts: str, chunks: list[memoryview] | None = None, **kw: int) -> MetadataExtractor:
    extractor = MetadataExtractor(ts, **kw)
    for chunk in chunks if chunks is not None else [memoryview(data)]:
        extractor.feed(chunk)
    return extractor


@pytest.mark.parametrize("ts", ALL_SYNTAXES)
@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
def test_whole_bytewise_and_random_splits_agree(ts: str, undefined: bool) -> None:
    data = encode(tricky_dataset(undefined), ts)
    if ts != DEFLATED:  # the fixture really has the lengths it claims
        assert (b"\xff\xff\xff\xff" in data) == undefined
    whole = extract(data, ts)
    assert whole.result == EXPECTED
    assert whole.error is None and whole.done
    bytewise = extract(data, ts, fragments(data, [1]))
    assert bytewise.result == EXPECTED and bytewise.error is None
    for seed in range(5):
        split = extract(data, ts, fragments(data, seed=seed))
        assert split.result == EXPECTED and split.error is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ts=st.sampled_from(ALL_SYNTAXES), sizes=st.lists(st.integers(1, 64), min_size=1, max_size=12))
def test_any_split_gives_the_same_result(ts: str, sizes: list[int]) -> None:
    data = encode(tricky_dataset(), ts)
    assert extract(data, ts, fragments(data, sizes)).result == EXPECTED


@pytest.mark.parametrize("kind", ["ct", "mr", "sc", "multiframe", "encapsulated", "deflated", "bigendian", "implicit"])
def test_project_corpus_kinds(kind: str) -> None:
    ds = make_dataset(kind, patient_id="P0042", instance_number=5, size=4096 if kind in ("multiframe", "encapsulated") else None)
    ts = str(ds.file_meta.TransferSyntaxUID)
    data = part10_dataset(ds)
    got = extract(data, ts, fragments(data, [16384])).result
    assert got.sop_instance_uid == ds.SOPInstanceUID
    assert got.sop_class_uid == ds.SOPClassUID
    assert got.study_instance_uid == ds.StudyInstanceUID
    assert got.series_instance_uid == ds.SeriesInstanceUID
    assert got.patient_name == "Müller^Jürgen"  # Latin-1 bytes decoded as Latin-1
    assert (got.patient_id, got.modality, got.study_date, got.instance_number) == (
        "P0042",
        ds.Modality,
        "20240102",
        "5",
    )


def test_absent_attributes_are_none_and_pixel_data_stops_the_walk() -> None:
    ds = tricky_dataset(instance_number=False)
    del ds.PatientName
    data = encode(ds, EXPLICIT)
    extractor = extract(data, EXPLICIT)
    assert extractor.done and extractor.error is None
    assert extractor.result.instance_number is None
    assert extractor.result.patient_name is None
    assert extractor.result.study_instance_uid == EXPECTED.study_instance_uid
    # Once stopped, nothing more is looked at, not even garbage.
    extractor.feed(memoryview(b"\xff" * 1000))
    assert extractor.error is None


def test_stops_right_after_instance_number() -> None:
    head = encode(tricky_dataset(), EXPLICIT)
    top_level = b"\x20\x00\x13\x00IS\x02\x0017"  # (0020,0013) IS "17", explicit LE
    end = head.index(top_level) + len(top_level)
    extractor = extract(head[:end] + b"\x00garbage that is never parsed", EXPLICIT)
    assert extractor.done and extractor.error is None
    assert extractor.result == EXPECTED


def test_empty_values_are_empty_strings() -> None:
    ds = tricky_dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    got = extract(encode(ds, IMPLICIT), IMPLICIT).result
    assert got.patient_name == "" and got.patient_id == ""


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    value += b" " if len(value) % 2 else b""
    if vr in (b"OB", b"SQ", b"UN"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _implicit(tag: int, value: bytes) -> bytes:
    value += b"\x00" if len(value) % 2 else b""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _item(body: bytes | None) -> bytes:
    """An item (PS3.5 7.5): defined length with ``body``, or undefined with a delimiter."""
    if body is None:
        return b""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def _undefined_item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


SEQ_DELIM = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _hand_built() -> bytes:
    """Explicit VR LE: a private UN of undefined length (content Implicit VR LE, PS3.5
    6.2.2) holding decoys and a nested implicit sequence, then an item holding
    encapsulated pixel data (fragments are defined-length items), then the wanted tags."""
    un_content = _undefined_item(
        _implicit(0x0020000D, b"9.9.3")
        + struct.pack("<HHI", 0x0009, 0x1002, 0xFFFFFFFF)
        + _item(_implicit(0x00080018, b"9.9.2"))
        + SEQ_DELIM
    )
    encapsulated = (
        struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
        + _item(b"")
        + _item(b"\xff\xd8" + bytes(30) + b"\xff\xd9")
        + SEQ_DELIM
    )
    return (
        _explicit(0x00080005, b"CS", b"ISO_IR 100")
        + struct.pack("<HH2sHI", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF)
        + _undefined_item(_explicit(0x00080018, b"UI", b"9.9.9") + encapsulated)
        + SEQ_DELIM
        + _explicit(0x00080016, b"UI", b"1.2.3")
        + _explicit(0x00080018, b"UI", b"1.2.3.4")
        + _explicit(0x00090010, b"LO", b"PRIV")
        + struct.pack("<HH2sHI", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF)
        + un_content
        + SEQ_DELIM
        + _explicit(0x0020000D, b"UI", b"1.2.3.5")
        + _explicit(0x0020000E, b"UI", b"1.2.3.6")
        + _explicit(0x7FE00010, b"OB", bytes(8))
    )


def test_hand_built_fixture_is_valid_dicom() -> None:
    ds = read_dataset(DicomBytesIO(_hand_built()), is_implicit_VR=False, is_little_endian=True)
    assert ds.SOPInstanceUID == "1.2.3.4" and ds.StudyInstanceUID == "1.2.3.5"


def test_undefined_length_un_encapsulated_pixel_data_in_items() -> None:
    data = _hand_built()
    for chunks in ([memoryview(data)], fragments(data, [1]), fragments(data, seed=3)):
        extractor = extract(data, EXPLICIT, chunks)
        assert extractor.error is None
        got = extractor.result
        assert (got.sop_class_uid, got.sop_instance_uid) == ("1.2.3", "1.2.3.4")
        assert (got.study_instance_uid, got.series_instance_uid) == ("1.2.3.5", "1.2.3.6")


@pytest.mark.filterwarnings("ignore:The PN component length")
def test_long_value_is_truncated_not_buffered() -> None:
    ds = tricky_dataset()
    ds.PatientName = "A" * 5000
    got = extract(encode(ds, EXPLICIT), EXPLICIT).result
    assert got.patient_name == "A" * 1024
    assert got.patient_id == EXPECTED.patient_id  # the walk resumed after the long value


def test_hostile_nesting_is_an_error_not_a_crash() -> None:
    level = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    extractor = extract(level * 1000, EXPLICIT)
    assert isinstance(extractor.error, MetadataError) and extractor.done


@pytest.mark.parametrize(
    "data, ts",
    [
        (struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), EXPLICIT),  # sequence delimiter at top level is past (0020,0013): stop
        (struct.pack("<HH2sH", 0x0008, 0x0016, b"\x01\x02", 4) + b"1.2\x00", EXPLICIT),  # not a VR
        (struct.pack("<HHI", 0x0008, 0x1115, 0xFFFFFFFF) + struct.pack("<HHI", 0x0008, 0x0016, 4), IMPLICIT),
        (struct.pack("<HHI", 0x0008, 0x1115, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0), IMPLICIT),
        (b"\x78\x9c not deflate at all", DEFLATED),
    ],
)
def test_malformed_is_recorded_never_raised(data: bytes, ts: str) -> None:
    extractor = extract(data, ts)
    assert extractor.done
    assert extractor.error is None or isinstance(extractor.error, MetadataError)
    assert isinstance(extractor.result, InstanceMetadata)


def test_malformed_examples_that_must_be_errors() -> None:
    assert extract(struct.pack("<HH2sH", 0x0008, 0x0016, b"\x01\x02", 4), EXPLICIT).error is not None
    seq_then_element = struct.pack("<HHI", 0x0008, 0x1115, 0xFFFFFFFF) + struct.pack("<HHI", 0x0008, 0x0016, 4)
    assert extract(seq_then_element, IMPLICIT).error is not None
    assert extract(b"\xff" * 16, DEFLATED).error is not None


@pytest.mark.filterwarnings("ignore:The value length")
def test_cap_reached_before_instance_number_records_error() -> None:
    ds = tricky_dataset()
    ds.LanguageCodeSequence[0].CodeMeaning = "x" * 3000
    data = encode(ds, EXPLICIT)
    extractor = extract(data, EXPLICIT, fragments(data, [100]), max_inflated=2048)
    assert extractor.done and isinstance(extractor.error, MetadataError)
    assert extractor.result.sop_instance_uid is None


@functools.lru_cache(maxsize=None)
def _bomb(header: bytes) -> bytes:
    """``header`` then 64 MiB of zeros, raw-deflated into about 64 KiB."""
    deflater = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = [deflater.compress(header)]
    block = bytes(1 << 20)
    out.extend(deflater.compress(block) for _ in range(64))
    out.append(deflater.flush())
    return b"".join(out)


_HUGE_OB = _explicit(0x00080016, b"UI", b"1.2.3") + struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFF0)


@pytest.mark.parametrize("header", [b"", _HUGE_OB], ids=["zeros-as-elements", "zeros-as-huge-OB"])
def test_deflate_bomb_stays_bounded(header: bytes) -> None:
    """64 MiB of zeros behind a small deflate stream: zeros walked as empty elements,
    or as the value of a huge OB. Either way the walk stops at the cap and memory never
    grows with the inflated size."""
    bomb = _bomb(header)
    assert len(bomb) < 1 << 20
    cap = 1 << 20 if header else 128 << 10
    tracemalloc.start()
    try:
        extractor = MetadataExtractor(DEFLATED, max_inflated=cap)
        for chunk in fragments(bomb, [16 << 10]):
            extractor.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert extractor.done and isinstance(extractor.error, MetadataError)
    assert peak < 1 << 20, peak
    if header:
        assert extractor.result.sop_class_uid == "1.2.3"


@settings(max_examples=150, deadline=None)
@given(ts=st.sampled_from(ALL_SYNTAXES), data=st.binary(max_size=600), seed=st.integers(0, 1000))
def test_random_bytes_never_raise(ts: str, data: bytes, seed: int) -> None:
    extractor = extract(data, ts, fragments(data, seed=seed))
    assert extractor.error is None or isinstance(extractor.error, MetadataError)
    assert isinstance(extractor.result, InstanceMetadata)


_VALID = {ts: encode(tricky_dataset(), ts) for ts in ALL_SYNTAXES}


@settings(max_examples=200, deadline=None)
@given(
    ts=st.sampled_from(ALL_SYNTAXES),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 10**6),
)
def test_mutated_streams_never_raise(ts: str, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_VALID[ts])
    for where, value in flips:
        data[where % len(data)] = value
    data = data[: max(1, cut % (len(data) + 1))]
    extractor = extract(bytes(data), ts, fragments(bytes(data), seed=cut))
    assert extractor.error is None or isinstance(extractor.error, MetadataError)
    assert isinstance(extractor.result, InstanceMetadata)


@settings(max_examples=300, deadline=None)
@given(
    ts=st.sampled_from(ALL_SYNTAXES),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10**6),
)
def test_fast_walk_and_step_machine_agree(ts: str, flips: list[tuple[int, int]], cut: int) -> None:
    """Fed whole, most elements go through the one-loop fast walk; fed a byte at a time,
    every element goes through the step machine. Valid or damaged, the two agree on
    every value found, on whether the walk stopped and on whether it failed."""
    data = bytearray(_VALID[ts])
    for where, value in flips:
        data[where % len(data)] = value
    data = bytes(data[: max(1, cut % (len(data) + 1))])
    whole = extract(data, ts)
    bytewise = extract(data, ts, fragments(data, [1]))
    assert whole.values() == bytewise.values()
    assert whole.done == bytewise.done
    assert (whole.error is None) == (bytewise.error is None)


def test_big_endian_binary_lengths_differ_from_little_endian() -> None:
    """Guards the BE path: the fixture's lengths really are big endian."""
    data = encode(tricky_dataset(), BIG)
    assert data[:4] == b"\x00\x08\x00\x05"
    assert extract(data, BIG).result == EXPECTED
    assert extract(data, EXPLICIT).result != EXPECTED


def test_multi_megabyte_stream_is_walked_without_holding_it() -> None:
    ds = tricky_dataset(instance_number=False)
    ds.PixelData = bytes(8 << 20)
    data = encode(ds, EXPLICIT)
    rnd = random.Random(1)
    extractor = MetadataExtractor(EXPLICIT)
    pos = 0
    while pos < len(data):
        n = rnd.randint(1 << 10, 1 << 20)
        extractor.feed(memoryview(data)[pos : pos + n])
        pos += n
    assert extractor.done and extractor.error is None
    assert extractor.result.series_instance_uid == EXPECTED.series_instance_uid


#: The query/retrieve attributes the extractor also captures, with values of each VR.
QUERY_VALUES = {
    "StudyTime": ("study_time", "101500.25"),
    "AccessionNumber": ("accession_number", "ACC-7"),
    "ReferringPhysicianName": ("referring_physician_name", "Referrer^Rita"),
    "StudyDescription": ("study_description", "Chest CT"),
    "SeriesDescription": ("series_description", "Axial 1.25"),
    "PatientBirthDate": ("patient_birth_date", "19700101"),
    "PatientSex": ("patient_sex", "F"),
    "BodyPartExamined": ("body_part_examined", "CHEST"),
    "StudyID": ("study_id", "S12"),
    "SeriesNumber": ("series_number", "3"),
}


@pytest.mark.parametrize("ts", ALL_SYNTAXES)
def test_query_attributes_are_captured_at_top_level_only(ts: str) -> None:
    """Every query field of the record, from the top level; the same keywords nested in a
    sequence placed before them are decoys."""
    ds = tricky_dataset()
    decoy = Dataset()
    decoys = {"StudyTime": "235959", "PatientBirthDate": "19990909", "SeriesNumber": "9"}
    for keyword in QUERY_VALUES:
        setattr(decoy, keyword, decoys.get(keyword, "DECOY"))
    ds.ReferencedPatientSequence = Sequence([decoy])  # (0008,1120): among the wanted tags
    for keyword, (_, value) in QUERY_VALUES.items():
        setattr(ds, keyword, value)
    data = encode(ds, ts)
    for chunks in (None, fragments(data, [1]), fragments(data, seed=3)):
        got = extract(data, ts, chunks)
        assert got.error is None
        fields = got.result.query_fields()
        for _, (name, value) in QUERY_VALUES.items():
            assert fields[name] == value, name
        assert fields["patient_name"] == EXPECTED.patient_name
        assert fields["instance_number"] == EXPECTED.instance_number


def test_an_empty_query_attribute_is_empty_not_absent() -> None:
    ds = tricky_dataset()
    ds.AccessionNumber = ""
    got = extract(encode(ds, EXPLICIT), EXPLICIT).result
    assert got.accession_number == "" and got.study_time is None


# --------------------------------------------------------------------------
# The C walk beside the pure-Python one, call for call.


_VALID_DEFINED = {ts: encode(tricky_dataset(undefined=False), ts) for ts in (EXPLICIT, IMPLICIT, BIG)}


def _run_both(data: bytes, ts: str, pos: int) -> list[tuple[object, ...]]:
    """One fast-walk call from ``pos`` over all of ``data``, by each implementation:
    where it stopped and the state it left."""
    outcomes = []
    for speedups in (_speedups(), None):
        saved = meta_module._SPEEDUPS
        meta_module._SPEEDUPS = speedups
        try:
            extractor = MetadataExtractor(ts)
            stopped_at = extractor._run(data, pos, len(data))
            outcomes.append((stopped_at, dict(extractor._values), extractor._skip, extractor.done, extractor.values()))
        finally:
            meta_module._SPEEDUPS = saved
    return outcomes


@settings(max_examples=400, deadline=None)
@given(
    ts=st.sampled_from([EXPLICIT, IMPLICIT, BIG]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10**6),
    start=st.integers(0, 40),
    undefined=st.booleans(),
)
def test_c_and_python_fast_walks_leave_the_same_state(
    ts: str, flips: list[tuple[int, int]], cut: int, start: int, undefined: bool
) -> None:
    """Valid or damaged, cut anywhere, entered at any offset (mid-element too): the C
    loop and the Python loop stop at the same byte with the same values, skip and end."""
    data = bytearray(_VALID[ts] if undefined else _VALID_DEFINED[ts])
    for where, value in flips:
        data[where % len(data)] = value
    data = bytes(data[: cut % (len(data) + 1)])
    c, python = _run_both(data, ts, min(start, len(data)))
    assert c == python


@settings(max_examples=300, deadline=None)
@given(ts=st.sampled_from([EXPLICIT, IMPLICIT, BIG]), data=st.binary(max_size=300))
def test_c_and_python_fast_walks_agree_on_random_bytes(ts: str, data: bytes) -> None:
    # A wanted tag's header first, so that random bytes get past the first element.
    c, python = _run_both(b"\x08\x00\x16\x00UI" + data, ts, 0)
    assert c == python


@given(raw=st.dictionaries(st.sampled_from(["patient_name", "study_date", "modality"]),
                           st.binary(max_size=20).map(lambda b: b.replace(b"\\", b""))))
def test_c_decode_values_is_latin1_with_spaces_and_nuls_stripped(raw: dict[str, bytes]) -> None:
    _, decode_values = _speedups()
    assert decode_values(raw) == {name: value.decode("latin-1").strip(" \x00") for name, value in raw.items()}


def test_c_walk_refuses_offsets_outside_the_buffer() -> None:
    walk, _ = _speedups()
    names = meta_module._WANTED_NAMES
    for pos, end in ((-1, 4), (5, 4), (0, 9)):
        with pytest.raises(ValueError):
            walk(b"\x08\x00\x16\x00UI\x00\x00", pos, end, False, False, {}, names)
    with pytest.raises(TypeError):
        walk(b"", 0, 0, False, False, {}, names[:-1])


def test_c_walk_is_in_step_with_the_wanted_tags() -> None:
    """The C table and _meta._WANTED name the same tags in the same order: a stale
    build would be refused by _meta (pure walk), and this test would say so."""
    from storage import _speedups

    assert _speedups.TAGS == tuple(sorted(meta_module._WANTED))
    assert meta_module.ACCELERATED == (not meta_module.os.environ.get("SCPFLEET_PURE_PYTHON"))


def test_c_walk_reads_a_memoryview_of_a_larger_buffer_without_copying_it() -> None:
    data = encode(tricky_dataset(undefined=False), EXPLICIT)
    view = memoryview(bytearray(data) + bytes(64 * 1024))[: len(data)]
    c, python = _run_both(view, EXPLICIT, 0)  # type: ignore[arg-type]
    assert c == python
