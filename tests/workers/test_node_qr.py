"""Query/retrieve and storage commitment on the real node (``scpfleet serve``, its
workers, indexer and index), with the embedded defaults switching them on.

Theory of operation: the services themselves are tested in tests/workers/services/ over
one in-process server; here the same providers run inside worker processes, reading
the index the indexer writes. DCMTK storescu fills a two-worker node; findscu, getscu
and movescu (to a DCMTK storescp) query and retrieve it; pynetdicom asks for storage
commitment. Files must come back byte-identical. Every process is stopped by the
fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests import peers
from tests.dicomdata import dataset_bytes
from tests.workers.nodes import HOST, sop_uid

pytestmark = pytest.mark.interop

_PEER = Path(__file__).parent / "services" / "_pynetdicom_qr.py"


def _filled(node_factory, tiny_files, *args: str):  # type: ignore[no-untyped-def]
    node = node_factory("--workers", "2", "--durability", "none", *args)
    result = peers.run_storescu(HOST, node.port, tiny_files[:20], aec="SCPFLEET")
    assert result.returncode == 0, result.describe()
    node.wait_for(lambda: len(node.index_rows()) == 20, what="20 index rows")
    return node


def _find(port: int, keys: list[str], tmp_path: Path, attribute: str) -> list[str]:
    out = tmp_path / f"find-{len(list(tmp_path.glob('find-*')))}"
    found = peers.run_findscu(HOST, port, keys, aec="SCPFLEET", out_dir=out, log_dir=tmp_path / "logs")
    assert "Received Final Find Response (Success)" in found.stdout + found.stderr, found.describe()
    return [str(getattr(pydicom.dcmread(p, force=True), attribute)) for p in sorted(out.glob("rsp*.dcm"))]


def test_find_and_get_from_a_running_node(node_factory, tiny_files, tmp_path: Path) -> None:
    node = _filled(node_factory, tiny_files)
    study = str(pydicom.dcmread(tiny_files[0], stop_before_pixels=True).StudyInstanceUID)
    expected = {sop_uid(p): p for p in tiny_files[:20]
                if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study}
    series = set(_find(node.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                                   "SeriesInstanceUID"], tmp_path, "SeriesInstanceUID"))
    uids: set[str] = set()
    for one in series:  # hierarchical search: IMAGE level names its study and series
        uids |= set(_find(node.port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                                      f"SeriesInstanceUID={one}", "SOPInstanceUID"],
                          tmp_path, "SOPInstanceUID"))
    assert uids == set(expected)
    got = tmp_path / "got"
    result = peers.run_getscu(HOST, node.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                              got, aec="SCPFLEET", log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.describe()
    received = {sop_uid(p): p for p in got.iterdir()}
    assert set(received) == set(expected)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(expected[uid])
    assert node.stop() == 0


def test_move_to_an_ae_of_the_table(node_factory, tiny_files, tmp_path: Path, storescp) -> None:
    destination = storescp(aetitle="DEST")
    table = tmp_path / "aes.json"
    table.write_text(json.dumps({"DEST": {"host": HOST, "port": destination.port}}))
    node = _filled(node_factory, tiny_files, "--ae-table", str(table))
    study = str(pydicom.dcmread(tiny_files[0], stop_before_pixels=True).StudyInstanceUID)
    expected = {sop_uid(p): p for p in tiny_files[:20]
                if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study}
    result = peers.run_movescu(HOST, node.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                               "DEST", aec="SCPFLEET", log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.describe()
    received = destination.wait_for_files(len(expected))
    by_uid = {sop_uid(p): p for p in received}
    assert set(by_uid) == set(expected)
    for uid, path in by_uid.items():
        assert dataset_bytes(path) == dataset_bytes(expected[uid])
    unknown = peers.run_movescu(HOST, node.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                                "NOWHERE", aec="SCPFLEET", log_dir=tmp_path / "logs")
    # 0xA801, in DCMTK's words.
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in unknown.stdout + unknown.stderr
    assert node.stop() == 0


def test_storage_commitment_from_a_running_node(node_factory, tiny_files, tmp_path: Path) -> None:
    node = _filled(node_factory, tiny_files)
    refs = []
    for path in tiny_files[:5]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs.append([str(ds.SOPClassUID), str(ds.SOPInstanceUID)])
    refs.append([refs[0][0], "1.2.826.0.1.3680043.8.498.424242"])  # never stored
    request = tmp_path / "commit.json"
    request.write_text(json.dumps({"references": refs, "transaction": "1.2.826.0.1.3680043.8.498.4243"}))
    done = subprocess.run(
        [sys.executable, str(_PEER), "commit", "--host", HOST, "--port", str(node.port), "--aec", "SCPFLEET",
         "--aet", "COMMITSCU", "--request", str(request),
         "--wait", "60"],  # the never-stored reference holds the report for the node's 10 s grace
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["action_status"] == 0
    (report,) = out["reports"]
    assert report["event_type"] == 2  # some failed
    assert sorted(map(tuple, report["committed"])) == sorted(map(tuple, refs[:5]))
    assert [tuple(f[:2]) for f in report["failed"]] == [tuple(refs[5])]
    assert node.stop() == 0
