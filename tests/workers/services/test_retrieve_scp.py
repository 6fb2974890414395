"""C-GET and C-MOVE SCPs against DCMTK getscu, movescu and storescp, and pynetdicom:
what comes back is byte for byte what was stored; cancel, refusals and failures.

Theory of operation: the node serves the session's corpus (conftest). getscu writes what
it receives bit-preserving; movescu moves to a DCMTK storescp the node finds in its AE
table; every received data set is compared with the corpus file's data set bytes. The
C-GET cancel runs pynetdicom (getscu cannot cancel) against a node holding one large
study; refusals and sub-operations that cannot be made go through an engine SCU.
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings
from pathlib import Path

import pydicom
import pytest

from bench.corpus import dataset_bytes, make_files
from bench.qrnode import QRNode
from engine import build_context
from engine.dataset import encode_dataset
from engine.dimse import CGetRQ, CMoveRQ
from tests.peers import DcmtkStorescp, _Proc, require_dcmtk, run_getscu, run_movescu
from tests.workers.services.conftest import IMPLICIT, Instance, exchange, store_all
from workers.services.query_model import PATIENT_ROOT_GET, STUDY_ROOT_GET, STUDY_ROOT_MOVE

pytestmark = pytest.mark.interop

PEER = Path(__file__).with_name("_pynetdicom_qr.py")
_FINAL_MOVE = re.compile(r"Received Final Move Response \(([^)]*)\)")


def by_uid(directory: Path) -> dict[str, bytes]:
    """Received files by SOP Instance UID: their data set bytes as written."""
    out = {}
    for path in directory.iterdir():
        if path.is_file() and not path.name.startswith("."):
            out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = dataset_bytes(path)
    return out


def explicit(corpus: list[Instance]) -> list[Instance]:
    """What a C-GET can bring back today: instances stored in the transfer syntax getscu
    proposes first (the conversion to another one is the engine's, coming)."""
    return [i for i in corpus if i.ds.file_meta.TransferSyntaxUID != IMPLICIT]


# ------------------------------------------------------------------ C-GET


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_getscu_brings_back_byte_identical_data_sets(qr_node: QRNode, corpus: list[Instance], tmp_path: Path,
                                                    level: str) -> None:
    first = corpus[0].ds
    keys = [f"QueryRetrieveLevel={level}", f"StudyInstanceUID={first.StudyInstanceUID}"]
    if level == "STUDY":
        wanted = [i for i in corpus if i.ds.StudyInstanceUID == first.StudyInstanceUID]
    elif level == "SERIES":
        keys.append(f"SeriesInstanceUID={first.SeriesInstanceUID}")
        wanted = [i for i in corpus if i.ds.SeriesInstanceUID == first.SeriesInstanceUID]
    else:
        wanted = [i for i in corpus if i.ds.SeriesInstanceUID == first.SeriesInstanceUID][:2]
        keys += [f"SeriesInstanceUID={first.SeriesInstanceUID}", "SOPInstanceUID=" + "\\".join(i.uid for i in wanted)]
    result = run_getscu(qr_node.host, qr_node.port, keys, tmp_path / "got", aec=qr_node.ae_title,
                        log_dir=tmp_path / "logs")
    log = result.stdout + result.stderr
    assert result.returncode == 0, result.describe()
    assert f"Number of Completed Suboperations : {len(wanted)}" in log, log
    assert "Number of Failed Suboperations    : 0" in log
    assert "Release Failed" not in log
    got = by_uid(tmp_path / "got")
    assert sorted(got) == sorted(i.uid for i in wanted)
    for inst in wanted:
        assert got[inst.uid] == dataset_bytes(inst.path), inst.path.name


def test_patient_root_get_of_a_patient(qr_node: QRNode, corpus: list[Instance], tmp_path: Path) -> None:
    wanted = [i for i in explicit(corpus) if i.ds.PatientID == "PID2"]
    result = run_getscu(qr_node.host, qr_node.port, ["QueryRetrieveLevel=PATIENT", "PatientID=PID2"],
                        tmp_path / "got", model="patient", aec=qr_node.ae_title, log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.describe()
    got = by_uid(tmp_path / "got")
    assert got == {i.uid: dataset_bytes(i.path) for i in wanted}


def test_get_without_the_scp_role_fails_each_sub_operation_with_the_failed_list(
        qr_node: QRNode, corpus: list[Instance]) -> None:
    """A requestor that proposed the storage class without role selection cannot be sent
    to: every sub-operation fails, B000 with the Failed SOP Instance UID List."""
    first = corpus[0].ds
    wanted = sorted(i.uid for i in corpus if i.ds.SeriesInstanceUID == first.SeriesInstanceUID)
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = first.SeriesInstanceUID
    rsp, pendings, data = exchange(qr_node, STUDY_ROOT_GET, CGetRQ(message_id=3, affected_sop_class_uid=STUDY_ROOT_GET),
                                   encode_dataset(ds, "1.2.840.10008.1.2.1"))
    assert rsp.status == 0xB000
    assert (rsp.number_of_completed_sub_operations, rsp.number_of_failed_sub_operations) == (0, len(wanted))
    assert rsp.number_of_remaining_sub_operations is None  # only in pending and cancel responses
    assert [p.number_of_remaining_sub_operations for p, _ in pendings] == list(range(len(wanted) - 1, 0, -1))
    assert data is not None and sorted(data.FailedSOPInstanceUIDList) == wanted


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2.3"}, 0xA900),  # no study above
        ({"QueryRetrieveLevel": "STUDY"}, 0xA900),  # no unique key at the level
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, 0xA900),
        ({"QueryRetrieveLevel": "BOGUS", "StudyInstanceUID": "1.2.3"}, 0xA900),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.4.5.6"}, 0x0000),  # nothing: zero sub-operations
    ],
)
def test_retrieve_identifiers_refused_or_empty(qr_node: QRNode, keys: dict, status: int) -> None:
    ds = pydicom.Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID we mean to send
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    rsp, pendings, data = exchange(qr_node, STUDY_ROOT_GET, CGetRQ(message_id=4, affected_sop_class_uid=STUDY_ROOT_GET),
                                   encode_dataset(ds, "1.2.840.10008.1.2.1"))
    assert rsp.status == status and not pendings and data is None
    if status == 0:
        assert rsp.number_of_completed_sub_operations == 0


@pytest.fixture(scope="module")
def large_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding one study of 60 small CT instances."""
    root = tmp_path_factory.mktemp("large-study")
    files = make_files(root.parent / f"{root.name}-files", {"ct": 60})
    # make_files puts 20 instances in a study: make them one study.
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path, enforce_file_format=True)
    with QRNode(root) as node:
        store_all(node, files, root.parent / "logs")
    return root


def test_cancel_stops_a_large_get(large_study: Path, tmp_path: Path) -> None:
    require_dcmtk()
    with QRNode(large_study) as node:
        study = node.call(lambda: node.catalog.list(1)[0].study_instance_uid)
        out = tmp_path / "got"
        out.mkdir()
        proc = _Proc("pynetdicom-get", [sys.executable, str(PEER), "get-cancel", "--host", node.host,
                                        "--port", str(node.port), "--aec", node.ae_title, "--aet", "GETTER",
                                        "--study", study, "--cancel-after", "5", "--out", str(out)],
                     log_dir=tmp_path)
        result = proc.finish(time.monotonic() + 120, 120)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["final_status"] == 0xFE00, result.describe()
        assert 5 <= report["completed"] < 60 and report["remaining"] == 60 - report["completed"] - report["failed"]
        assert report["stored"] == report["completed"]
        # The node serves on: a C-FIND on a new association still answers.
        assert node.call(lambda: node.catalog.count()) == 60


def test_get_of_a_file_gone_from_disk_fails_that_sub_operation(copy_of_filled: Path, corpus: list[Instance],
                                                                tmp_path: Path) -> None:
    first = corpus[0].ds
    series = [i for i in corpus if i.ds.SeriesInstanceUID == first.SeriesInstanceUID]
    with QRNode(copy_of_filled) as node:
        record = node.call(lambda: node.catalog.get(series[0].uid))
        (copy_of_filled / record.path).unlink()
        result = run_getscu(node.host, node.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={first.StudyInstanceUID}",
                                                   f"SeriesInstanceUID={first.SeriesInstanceUID}"],
                            tmp_path / "got", aec=node.ae_title, log_dir=tmp_path / "logs")
    log = result.stdout + result.stderr
    assert f"Number of Completed Suboperations : {len(series) - 1}" in log, log
    assert "Number of Failed Suboperations    : 1" in log
    assert sorted(by_uid(tmp_path / "got")) == sorted(i.uid for i in series[1:])


# ------------------------------------------------------------------ C-MOVE


def test_movescu_to_a_storescp_byte_identical_every_transfer_syntax(filled: Path, corpus: list[Instance],
                                                                    tmp_path: Path) -> None:
    require_dcmtk()
    with DcmtkStorescp(tmp_path / "dest", aetitle="DEST", log_dir=tmp_path / "logs") as dest:
        with QRNode(filled, ae_table={"DEST": (dest.host, dest.port)}) as node:
            patient3 = [i for i in corpus if i.ds.PatientID == "PID3"]  # one study is Implicit VR LE
            result = run_movescu(node.host, node.port, ["QueryRetrieveLevel=PATIENT", "PatientID=PID3"], "DEST",
                                 model="patient", aec=node.ae_title, log_dir=tmp_path / "logs")
            final = _FINAL_MOVE.search(result.stdout + result.stderr)
            assert final and final.group(1) == "Success", result.describe()
            got = by_uid(tmp_path / "dest")
            assert got == {i.uid: dataset_bytes(i.path) for i in patient3}


def test_move_to_an_unknown_destination_is_a801(qr_node: QRNode, corpus: list[Instance], tmp_path: Path) -> None:
    result = run_movescu(qr_node.host, qr_node.port,
                         ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={corpus[0].ds.StudyInstanceUID}"],
                         "NOWHERE", aec=qr_node.ae_title, log_dir=tmp_path / "logs")
    final = _FINAL_MOVE.search(result.stdout + result.stderr)
    assert final and final.group(1) == "Refused: MoveDestinationUnknown", result.describe()


def test_move_to_a_destination_that_is_down_is_a702_with_every_instance_failed(
        filled: Path, corpus: list[Instance], tmp_path: Path) -> None:
    from tests.peers import free_port

    study = [i for i in corpus if i.ds.StudyInstanceUID == corpus[0].ds.StudyInstanceUID]
    with QRNode(filled, ae_table={"DOWN": ("127.0.0.1", free_port())}) as node:
        ds = pydicom.Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = corpus[0].ds.StudyInstanceUID
        rsp, pendings, data = exchange(node, STUDY_ROOT_MOVE,
                                       CMoveRQ(message_id=9, affected_sop_class_uid=STUDY_ROOT_MOVE,
                                               move_destination=b"DOWN"), encode_dataset(ds, "1.2.840.10008.1.2.1"))
    assert rsp.status == 0xA702
    assert rsp.number_of_failed_sub_operations == len(study)
    assert data is not None and sorted(data.FailedSOPInstanceUIDList) == sorted(i.uid for i in study)


def test_patient_root_get_refuses_a_study_without_its_patient(qr_node: QRNode, corpus: list[Instance]) -> None:
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = corpus[0].ds.StudyInstanceUID
    rsp, _, _ = exchange(qr_node, PATIENT_ROOT_GET, CGetRQ(message_id=4, affected_sop_class_uid=PATIENT_ROOT_GET),
                         encode_dataset(ds, "1.2.840.10008.1.2.1"))
    assert rsp.status == 0xA900 and rsp.offending_element == (0x00100020,)


def test_get_context_roles(qr_node: QRNode) -> None:
    """The node grants the SCP role of storage classes to a requestor that proposes it."""
    from tests.workers.services.conftest import associate, run

    async def main() -> list:
        cx = build_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        cx.scu_role, cx.scp_role = False, True
        assoc = await associate(qr_node, [build_context(STUDY_ROOT_GET), cx])
        roles = [(str(c.abstract_syntax), c.as_scu, c.as_scp) for c in assoc.accepted_contexts]
        await assoc.release()
        return roles

    assert ("1.2.840.10008.5.1.4.1.1.2", False, True) in run(main)
