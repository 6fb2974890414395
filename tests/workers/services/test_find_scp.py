"""C-FIND SCP against DCMTK findscu: every level of both models, every matching kind,
character sets, hierarchy rules, cancel, and identifiers no real peer would send.

Theory of operation: the node serves the session's corpus, stored through its own
Storage SCP (conftest). Each case runs findscu (-X: one file per response) and compares
the responses with what the corpus's data sets say; bad identifiers go through an
engine SCU on a fresh association. The cancel case gets its own node whose catalog holds
thousands of studies put in directly.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import msgspec
import pydicom
import pytest

from bench.qrnode import QRNode
from engine.dimse import CFindRQ
from storage import InstanceRecord
from tests.peers import run_findscu
from tests.workers.services.conftest import Instance, exchange
from workers.services.query_model import PATIENT_ROOT_FIND, STUDY_ROOT_FIND

pytestmark = pytest.mark.interop

_FINAL = re.compile(r"Received Final Find Response \(([^)]*)\)")


def find(node: QRNode, keys: list[str], tmp_path: Path, model: str = "study",
         extra: tuple[str, ...] = ()) -> tuple[str, list[pydicom.Dataset]]:
    out = tmp_path / f"rsp-{len(list(tmp_path.iterdir()))}"
    result = run_findscu(node.host, node.port, keys, model=model, aec=node.ae_title, out_dir=out,
                         extra_args=extra, log_dir=tmp_path / "logs")
    final = _FINAL.search(result.stdout + result.stderr)
    assert final, result.describe()
    responses = [pydicom.dcmread(p, force=True) for p in sorted(out.glob("rsp*.dcm"))]
    return final.group(1), responses


def studies(corpus: list[Instance]) -> dict[str, list[Instance]]:
    out: dict[str, list[Instance]] = defaultdict(list)
    for inst in corpus:
        out[str(inst.ds.StudyInstanceUID)].append(inst)
    return out


def accessions(responses: list[pydicom.Dataset]) -> list[str]:
    return sorted(str(r.AccessionNumber) for r in responses)


# ------------------------------------------------------------------ levels


def test_study_level_returns_every_requested_key(qr_node: QRNode, corpus: list[Instance], tmp_path: Path) -> None:
    keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
            "StudyDescription", "StudyID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
            "ReferringPhysicianName", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances", "RetrieveAETitle", "InstanceAvailability", "SeriesInstanceUID"]
    final, responses = find(qr_node, keys, tmp_path)
    assert final == "Success"
    expected = studies(corpus)
    assert sorted(str(r.StudyInstanceUID) for r in responses) == sorted(expected)
    for rsp in responses:
        members = expected[str(rsp.StudyInstanceUID)]
        ds = members[0].ds
        assert rsp.QueryRetrieveLevel == "STUDY"
        for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "StudyID",
                        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName"):
            assert str(rsp[keyword].value) == str(ds[keyword].value), keyword
        assert int(rsp.NumberOfStudyRelatedInstances) == len(members)
        assert int(rsp.NumberOfStudyRelatedSeries) == len({str(m.ds.SeriesInstanceUID) for m in members})
        assert sorted(rsp.ModalitiesInStudy if rsp["ModalitiesInStudy"].VM > 1 else [rsp.ModalitiesInStudy]) == \
            sorted({str(m.ds.Modality) for m in members})
        assert rsp.RetrieveAETitle == qr_node.ae_title and rsp.InstanceAvailability == "ONLINE"
        assert rsp.SeriesInstanceUID == ""  # a key below the level comes back empty


def test_patient_level_of_the_patient_root_model(qr_node: QRNode, corpus: list[Instance], tmp_path: Path) -> None:
    keys = ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "PatientSex",
            "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"]
    final, responses = find(qr_node, keys, tmp_path, model="patient")
    assert final == "Success"
    by_patient: dict[str, list[Instance]] = defaultdict(list)
    for inst in corpus:
        by_patient[str(inst.ds.PatientID)].append(inst)
    assert sorted(str(r.PatientID) for r in responses) == sorted(by_patient)
    for rsp in responses:
        members = by_patient[str(rsp.PatientID)]
        assert str(rsp.PatientName) == str(members[0].ds.PatientName)
        assert int(rsp.NumberOfPatientRelatedStudies) == len({str(m.ds.StudyInstanceUID) for m in members})
        assert int(rsp.NumberOfPatientRelatedSeries) == len({str(m.ds.SeriesInstanceUID) for m in members})
        assert int(rsp.NumberOfPatientRelatedInstances) == len(members)


@pytest.mark.parametrize("model", ["study", "patient"])
def test_series_and_image_levels_below_their_unique_keys(qr_node: QRNode, corpus: list[Instance], tmp_path: Path,
                                                          model: str) -> None:
    first = corpus[0].ds
    above = [f"PatientID={first.PatientID}"] if model == "patient" else []
    final, series = find(qr_node, ["QueryRetrieveLevel=SERIES", *above, f"StudyInstanceUID={first.StudyInstanceUID}",
                                   "SeriesInstanceUID", "Modality", "SeriesNumber", "BodyPartExamined",
                                   "NumberOfSeriesRelatedInstances"], tmp_path, model=model)
    assert final == "Success"
    expected: dict[str, list[Instance]] = defaultdict(list)
    for inst in corpus:
        if inst.ds.StudyInstanceUID == first.StudyInstanceUID:
            expected[str(inst.ds.SeriesInstanceUID)].append(inst)
    assert sorted(str(r.SeriesInstanceUID) for r in series) == sorted(expected)
    for rsp in series:
        members = expected[str(rsp.SeriesInstanceUID)]
        assert (rsp.Modality, int(rsp.SeriesNumber), int(rsp.NumberOfSeriesRelatedInstances)) == (
            members[0].ds.Modality, int(members[0].ds.SeriesNumber), len(members))
        assert rsp.StudyInstanceUID == first.StudyInstanceUID
    final, images = find(qr_node, ["QueryRetrieveLevel=IMAGE", *above, f"StudyInstanceUID={first.StudyInstanceUID}",
                                   f"SeriesInstanceUID={first.SeriesInstanceUID}", "SOPInstanceUID", "SOPClassUID",
                                   "InstanceNumber"], tmp_path, model=model)
    assert final == "Success"
    members = {i.uid: i.ds for i in corpus if i.ds.SeriesInstanceUID == first.SeriesInstanceUID}
    assert sorted(str(r.SOPInstanceUID) for r in images) == sorted(members)
    for rsp in images:
        ds = members[str(rsp.SOPInstanceUID)]
        assert (rsp.SOPClassUID, int(rsp.InstanceNumber)) == (ds.SOPClassUID, int(ds.InstanceNumber))


# ------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("PatientID=PID2", ["ACC2"]),
        ("PatientName=DOE^JANE", ["ACC1"]),  # PN: case-insensitive
        ("PatientName=doe*", ["ACC1", "ACC2"]),
        ("PatientName=?OE^J*", ["ACC1", "ACC2"]),
        ("PatientName=Doe^Jane^^", ["ACC1"]),  # trailing ^ are not significant
        ("PatientName=*", ["ACC1", "ACC2", "ACC3", "ACC4"]),  # universal
        ("PatientName=", ["ACC1", "ACC2", "ACC3", "ACC4"]),  # universal
        ("StudyDate=20240102", ["ACC1"]),
        ("StudyDate=20240101-20240331", ["ACC1", "ACC3", "ACC4"]),
        ("StudyDate=-20231231", ["ACC2"]),
        ("StudyDate=20240315-", ["ACC3", "ACC4"]),
        ("StudyTime=0900-1000", ["ACC1"]),
        ("StudyTime=2200-", ["ACC2"]),
        ("StudyTime=-1015", ["ACC1", "ACC3", "ACC4"]),  # 1015 includes 101500.5
        ("AccessionNumber=ACC?", ["ACC1", "ACC2", "ACC3", "ACC4"]),
        ("AccessionNumber=acc1", []),  # SH: case-sensitive
        ("StudyDescription=Chest CT", ["ACC1", "ACC3"]),
        ("StudyDescription=*MR", ["ACC2"]),
        ("ModalitiesInStudy=MR", ["ACC1", "ACC2"]),
        ("ModalitiesInStudy=OT\\CT", ["ACC1", "ACC2", "ACC3", "ACC4"]),
        ("ReferringPhysicianName=referrer*", ["ACC1", "ACC2", "ACC3", "ACC4"]),
        ("PatientSex=O", ["ACC3", "ACC4"]),
        ("PatientBirthDate=19700101-19851231", ["ACC1", "ACC2"]),
    ],
)
def test_study_root_matching(qr_node: QRNode, tmp_path: Path, key: str, expected: list[str]) -> None:
    final, responses = find(qr_node, ["QueryRetrieveLevel=STUDY", "AccessionNumber", key], tmp_path)
    assert final == "Success"
    assert accessions(responses) == expected


def test_uid_list_matching(qr_node: QRNode, corpus: list[Instance], tmp_path: Path) -> None:
    uids = sorted(studies(corpus))
    final, responses = find(qr_node, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids[0]}\\{uids[2]}\\1.2.3"],
                            tmp_path)
    assert final == "Success"
    assert sorted(str(r.StudyInstanceUID) for r in responses) == [uids[0], uids[2]]


def test_character_sets(qr_node: QRNode, tmp_path: Path) -> None:
    """A UTF-8 query finds the Latin-1 name; the response carries the stored bytes
    under the character set they are in."""
    final, responses = find(qr_node, ["QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                                      "PatientName=müller*", "AccessionNumber"], tmp_path)
    assert final == "Success"
    assert accessions(responses) == ["ACC3", "ACC4"]
    for rsp in responses:
        assert rsp.SpecificCharacterSet == "ISO_IR 100"
        assert str(rsp.PatientName) == "Müller^Jürgen"


def test_each_study_answers_in_its_own_character_set(tmp_path: Path) -> None:
    """Names in Cyrillic (ISO_IR 144: not Latin-1, not UTF-8) and in Japanese (ISO 2022
    IR 87: 7-bit bytes with escapes, which look like ASCII) come back as stored, each
    under the Specific Character Set its instance had, which findscu decodes."""
    from bench.corpus import make_dataset, make_uid, write_part10
    from tests.workers.services.conftest import store_all

    names = {"ACC-RU": ("ISO_IR 144", "Иванов^Иван"), "ACC-JA": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎")}
    paths = []
    for n, (accession, (charset, name)) in enumerate(names.items()):
        ds = make_dataset("ct", study_uid=make_uid("cs-study", n), series_uid=make_uid("cs-series", n),
                          sop_instance_uid=make_uid("cs-sop", n), patient_id=f"CS{n}", instance_number=1)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.AccessionNumber = accession
        paths.append(write_part10(ds, tmp_path / f"{accession}.dcm"))
    root = tmp_path / "root"
    with QRNode(root) as node:
        store_all(node, paths, tmp_path / "store-logs")
        final, responses = find(node, ["QueryRetrieveLevel=STUDY", "PatientName", "AccessionNumber"], tmp_path)
    assert final == "Success" and len(responses) == 2
    got = {str(r.AccessionNumber): r for r in responses}
    russian, japanese = got["ACC-RU"], got["ACC-JA"]
    assert russian.SpecificCharacterSet == "ISO_IR 144" and str(russian.PatientName) == "Иванов^Иван"
    assert list(japanese.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(japanese.PatientName) == "Yamada^Tarou=山田^太郎"


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("keys", "model"),
    [
        (["QueryRetrieveLevel=STUDY", "PatientName=Doe*"], "patient"),  # no Patient ID above STUDY
        (["QueryRetrieveLevel=SERIES", "Modality"], "study"),  # no Study Instance UID above SERIES
        (["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2*"], "study"),  # a wildcard in a unique key above
        (["QueryRetrieveLevel=PATIENT", "PatientID"], "study"),  # Study Root has no PATIENT level
        (["QueryRetrieveLevel=FRAME", "PatientID"], "study"),
        (["PatientID=PID1"], "study"),  # no level at all
        (["QueryRetrieveLevel=STUDY", "StudyDate=2024-2025-2026"], "study"),
    ],
)
def test_identifiers_that_break_the_model_are_refused_a900(qr_node: QRNode, tmp_path: Path, keys: list[str],
                                                           model: str) -> None:
    final, responses = find(qr_node, keys, tmp_path, model=model)
    assert responses == []
    assert final == "Error: DataSetDoesNotMatchSOPClass", final  # DCMTK's name of A900


def test_malformed_missing_and_unsupported_identifiers_from_an_engine_scu(qr_node: QRNode) -> None:
    rq = CFindRQ(message_id=5, affected_sop_class_uid=STUDY_ROOT_FIND)
    # A tag whose length runs past the end: cannot be decoded.
    rsp, pendings, _ = exchange(qr_node, STUDY_ROOT_FIND, rq, b"\x08\x00\x52\x00CS\xff\x00STUDY ")
    assert rsp.status == 0xC000 and not pendings
    # No identifier at all.
    rsp, pendings, _ = exchange(qr_node, STUDY_ROOT_FIND, CFindRQ(message_id=6, affected_sop_class_uid=STUDY_ROOT_FIND,
                                                                   command_data_set_type=0x0101), None)
    assert rsp.status == 0xA900 and not pendings
    # An optional key the node does not support, with a value: pending with warning.
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "PID1"
    ds.OtherPatientNames = "Someone"
    from engine.dataset import encode_dataset

    rsp, pendings, _ = exchange(qr_node, PATIENT_ROOT_FIND,
                                CFindRQ(message_id=7, affected_sop_class_uid=PATIENT_ROOT_FIND),
                                encode_dataset(ds, "1.2.840.10008.1.2.1"))
    assert rsp.status == 0x0000
    assert [p.status for p, _ in pendings] == [0xFF01]
    identifier = pendings[0][1]
    assert identifier is not None and identifier.PatientID == "PID1" and identifier.OtherPatientNames == ""


# ------------------------------------------------------------------ cancel


def _synthetic(n: int) -> list[InstanceRecord]:
    base = InstanceRecord("1.2.3.0", "1.2.840.10008.5.1.4.1.1.2", "1.2.4.0", "1.2.4.0.0", "PX", "Many^Studies",
                          "CT", "20240101", "1", "1.2.840.10008.1.2.1", "1.2.4.0/1.2.4.0.0/1.2.3.0.dcm", 10,
                          "00" * 32, "A", "B", 0.0)
    return [msgspec.structs.replace(base, sop_instance_uid=f"1.2.3.{i}", study_instance_uid=f"1.2.4.{i}",
                                    series_instance_uid=f"1.2.4.{i}.0", path=f"1.2.4.{i}/1.2.4.{i}.0/1.2.3.{i}.dcm")
            for i in range(n)]


def test_cancel_stops_a_large_find_and_the_association_stays_usable(tmp_path: Path) -> None:
    with QRNode(tmp_path / "many") as node:
        node.apply(_synthetic(5000))
        final, responses = find(node, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName"], tmp_path,
                                extra=("--cancel", "3"))
        assert "Cancel" in final, final
        assert 3 <= len(responses) < 5000
        final, responses = find(node, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.4.42"], tmp_path)
        assert final == "Success" and [str(r.StudyInstanceUID) for r in responses] == ["1.2.4.42"]
