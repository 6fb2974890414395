"""query_model without a network: identifiers read into catalog queries, and rows written
back as response identifiers, in each native transfer syntax."""

from __future__ import annotations

import warnings

import pytest
from pydicom.dataset import Dataset

from engine.dataset import decode_dataset, encode_dataset
from storage import CatalogQuery, Match
from workers.services.query_model import (
    MODELS,
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    TRANSFER_SYNTAXES,
    IdentifierError,
    failed_instances,
    find_plan,
    retrieve_plan,
)

STUDY_ROOT = MODELS[STUDY_ROOT_FIND]
PATIENT_ROOT = MODELS[PATIENT_ROOT_FIND]


def identifier(ts: str = "1.2.840.10008.1.2.1", **attributes: object) -> bytes:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return encode_dataset(ds, ts)


@pytest.mark.parametrize("ts", TRANSFER_SYNTAXES)
def test_every_kind_of_key(ts: str) -> None:
    plan = find_plan(identifier(ts, QueryRetrieveLevel="STUDY", PatientName="doe^j*", StudyDate="20240101-",
                                StudyTime="-1000", ModalitiesInStudy="CT\\MR", AccessionNumber="A1",
                                StudyInstanceUID="1.2.3\\1.2.4", StudyDescription="",
                                NumberOfStudyRelatedInstances=None), ts, STUDY_ROOT)
    assert plan.level == "STUDY" and not plan.warning
    assert set(plan.query.matches) == {
        Match("patient_name", "pattern", ("doe^j*",), fold_case=True),
        Match("study_date", "range", ("20240101", "")),
        Match("study_time", "range", ("", "1000")),
        Match("modality", "equal", ("CT", "MR")),
        Match("accession_number", "equal", ("A1",)),
        Match("study_instance_uid", "equal", ("1.2.3", "1.2.4")),
    }
    assert plan.query.aggregates == frozenset({"related_instances", "modalities"})


def test_empty_values_of_a_multi_valued_key_are_dropped() -> None:
    plan = find_plan(identifier(QueryRetrieveLevel="STUDY", ModalitiesInStudy="CT\\\\MR"),
                     "1.2.840.10008.1.2.1", STUDY_ROOT)
    assert plan.query.matches == (Match("modality", "equal", ("CT", "MR")),)


def test_unique_keys_above_the_level_and_the_patient_root_hierarchy() -> None:
    plan = find_plan(identifier(QueryRetrieveLevel="IMAGE", PatientID="P1", StudyInstanceUID="1.2",
                                SeriesInstanceUID="1.2.3", SOPInstanceUID=""), "1.2.840.10008.1.2.1", PATIENT_ROOT)
    assert plan.query == CatalogQuery("IMAGE", (Match("patient_id", "equal", ("P1",)),
                                                Match("study_instance_uid", "equal", ("1.2",)),
                                                Match("series_instance_uid", "equal", ("1.2.3",))))
    with pytest.raises(IdentifierError) as error:
        find_plan(identifier(QueryRetrieveLevel="SERIES", PatientID="P1"), "1.2.840.10008.1.2.1", PATIENT_ROOT)
    assert (error.value.status, error.value.offending) == (0xA900, 0x0020000D)


def test_a_latin1_query_looks_for_every_stored_form() -> None:
    plan = find_plan(identifier(SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="STUDY",
                                PatientName="Müller*"), "1.2.840.10008.1.2.1", STUDY_ROOT)
    (match,) = plan.query.matches
    assert match.values == ("Müller*", "MÃ¼ller*")  # as Latin-1 bytes, and as UTF-8 bytes


def test_response_identifier_character_set_and_empty_keys() -> None:
    plan = find_plan(identifier(QueryRetrieveLevel="STUDY", PatientName="", StudyInstanceUID="",
                                OtherPatientIDsSequence=[], AccessionNumber="", PatientComments="x"),
                     "1.2.840.10008.1.2.1", STUDY_ROOT)
    assert plan.warning  # Patient Comments is not supported, and had a value
    row = {"study_instance_uid": "1.2.3", "patient_name": "J\u00c3\u00bcrgen", "accession_number": None}
    ds = decode_dataset(plan.identifier(row, "1.2.840.10008.1.2.1", "AE"), "1.2.840.10008.1.2.1")
    assert ds.SpecificCharacterSet == "ISO_IR 192"  # the stored bytes are UTF-8
    assert str(ds.PatientName) == "Jürgen" and ds.AccessionNumber == "" and ds.PatientComments == ""
    assert len(ds.OtherPatientIDsSequence) == 0
    row["patient_name"] = "J\u00fcrgen"  # a Latin-1 byte that is no UTF-8
    ds = decode_dataset(plan.identifier(row, "1.2.840.10008.1.2.1", "AE"), "1.2.840.10008.1.2.1")
    assert ds.SpecificCharacterSet == "ISO_IR 100" and str(ds.PatientName) == "Jürgen"
    row["patient_name"] = "Doe"
    assert "SpecificCharacterSet" not in decode_dataset(plan.identifier(row, "1.2.840.10008.1.2", "AE"),
                                                        "1.2.840.10008.1.2")


def test_response_identifier_says_the_stored_character_set() -> None:
    plan = find_plan(identifier(QueryRetrieveLevel="STUDY", PatientName="", StudyInstanceUID=""),
                     "1.2.840.10008.1.2.1", STUDY_ROOT)
    cyrillic = "Иванов".encode("iso8859_5").decode("latin-1")  # stored bytes, read as Latin-1
    row = {"study_instance_uid": "1.2.3", "patient_name": cyrillic, "specific_character_set": "ISO_IR 144"}
    ds = decode_dataset(plan.identifier(row, "1.2.840.10008.1.2.1", "AE"), "1.2.840.10008.1.2.1")
    assert ds.SpecificCharacterSet == "ISO_IR 144" and str(ds.PatientName) == "Иванов"
    # ISO 2022: 7-bit bytes and escapes, all ASCII, and still not the default repertoire.
    jis = "Yamada=\x1b$B;3ED\x1b(B"
    row = {"study_instance_uid": "1.2.3", "patient_name": jis, "specific_character_set": "\\ISO 2022 IR 87"}
    ds = decode_dataset(plan.identifier(row, "1.2.840.10008.1.2.1", "AE"), "1.2.840.10008.1.2.1")
    assert list(ds.SpecificCharacterSet) == ["", "ISO 2022 IR 87"] and str(ds.PatientName) == "Yamada=山田"
    row = {"study_instance_uid": "1.2.3", "patient_name": cyrillic}  # indexed before the column
    ds = decode_dataset(plan.identifier(row, "1.2.840.10008.1.2.1", "AE"), "1.2.840.10008.1.2.1")
    assert ds.SpecificCharacterSet == "ISO_IR 100"  # labelled by its bytes, as before


def test_retrieve_plans() -> None:
    model = MODELS[STUDY_ROOT_GET]
    plan = retrieve_plan(identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2",
                                    SeriesInstanceUID="1.2.3\\1.2.4", Modality="CT"), "1.2.840.10008.1.2", model)
    assert plan.query == CatalogQuery("IMAGE", (Match("study_instance_uid", "equal", ("1.2",)),
                                                Match("series_instance_uid", "equal", ("1.2.3", "1.2.4"))))
    with pytest.raises(IdentifierError):  # a list above the level
        retrieve_plan(identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2\\1.3",
                                 SeriesInstanceUID="1.2.3"), "1.2.840.10008.1.2", model)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", 0xA900),
        (b"\x08\x00\x52\x00CS\xff\x00STUDY ", 0xC000),  # the value runs past the end
        (b"\x08\x00\x52\x00CS\x06\x00PATIENT", 0xA900),  # PATIENT: not in the Study Root model
    ],
)
def test_identifiers_refused(raw: bytes, code: int) -> None:
    with pytest.raises(IdentifierError) as error:
        find_plan(raw, "1.2.840.10008.1.2.1", STUDY_ROOT)
    assert error.value.status == code


def test_failed_list_is_cut_to_what_an_explicit_ui_holds() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{i + 10**29}" for i in range(2000)]
    for ts in TRANSFER_SYNTAXES:
        kept = decode_dataset(failed_instances(uids, ts), ts).FailedSOPInstanceUIDList
        assert 0 < len(kept) < len(uids) and list(kept) == uids[: len(kept)]
