"""The engine against pynetdicom 3 over loopback: its SCU to our SCP, our SCU to its SCP.

Theory of operation: pynetdicom is a test-only peer. As a subprocess (tests/peers.py,
tests/_pynetdicom_peer.py) it sends files unconverted, one exact presentation context per
(SOP class, transfer syntax) pair, and as an SCP it stores bit-preserving, so both
directions are checked byte for byte against ``tests.dicomdata.dataset_bytes``. One test
also drives pynetdicom in-process, to send a pydicom Dataset and to end associations by
release and by abort, and checks that our acceptor reports each ending; its AE is shut
down in ``finally`` so none of its threads outlive the test.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from engine import AE, StoragePresentationContexts, build_context, evt
from engine.sop_class import (
    COMPRESSED_TRANSFER_SYNTAXES,
    DEFAULT_TRANSFER_SYNTAXES,
    Verification,
)
from tests import peers
from tests.dicomdata import dataset_bytes, dataset_offset, make_dataset, write_part10

pytestmark = [pytest.mark.interop]

HOST = peers.HOST
ALL_TS = [*DEFAULT_TRANSFER_SYNTAXES, DeflatedExplicitVRLittleEndian,
          *COMPRESSED_TRANSFER_SYNTAXES]
EVENT_WAIT_S = 10.0  # upper bound for a notification to arrive; normally milliseconds


def _meta(path: Path) -> tuple[str, str, str]:
    meta = read_file_meta_info(path)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def reflate(src: Path, dst: Path, level: int = 1) -> Path:
    """Copy a Deflated Explicit VR LE file with its data set re-deflated at ``level``
    (padded to even length as pydicom does): a stream no re-encoding peer produces, so
    a byte-identical arrival proves the bytes were passed through untouched."""
    inflated = dataset_bytes(src, inflate=True)
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(inflated) + deflater.flush()
    stream += b"\0" * (len(stream) % 2)
    with open(src, "rb") as f:
        head = f.read(dataset_offset(src))
    dst.write_bytes(head + stream)
    assert dataset_bytes(dst) != dataset_bytes(src)  # really a different stream
    return dst


class Recorder:
    """EVT_C_STORE handler plus notification log, safe to read from the test thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.stored: dict[str, dict] = {}
        self.events: list[str] = []

    def store(self, event: evt.Event) -> int:
        item = {
            "raw": event.encoded_dataset(),
            "ts": str(event.context.transfer_syntax[0]),
            "dataset": event.dataset,
        }
        with self.cond:
            self.stored[str(event.request.AffectedSOPInstanceUID)] = item
        return 0x0000

    def note(self, event: evt.Event) -> None:
        with self.cond:
            self.events.append(event.event.name)
            self.cond.notify_all()

    def wait_for(self, name: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: name in self.events, EVENT_WAIT_S)

    def handlers(self) -> list[tuple]:
        notes = [(e, self.note) for e in (evt.EVT_RELEASED, evt.EVT_ABORTED)]
        return [(evt.EVT_C_STORE, self.store), *notes]


@pytest.fixture
def our_scp() -> Iterator:
    """Factory: our_scp(recorder) -> port of a running AE server; shut down afterwards."""
    started: list[AE] = []

    def start(recorder: Recorder) -> int:
        ae = AE("OURSCP")
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TS)
        ae.add_supported_context(Verification)
        started.append(ae)
        server = ae.start_server((HOST, 0), block=False, evt_handlers=recorder.handlers())
        return server.server_address[1]

    try:
        yield start
    finally:
        for ae in started:
            ae.shutdown()


# ------------------------------------------------------------------ pynetdicom SCU -> us


def test_pynetdicom_echoscu_to_our_scp(our_scp, peer_log_dir):
    port = our_scp(Recorder())
    result = peers.run_pynetdicom_echoscu(HOST, port, aec="OURSCP", log_dir=peer_log_dir)
    assert result.ok, result.describe()
    assert result.statuses == [{"status": 0}]


def _with_reflated(dicom_files: list[Path], tmp_path: Path) -> list[Path]:
    fresh = write_part10(make_dataset("deflated", unique=True), tmp_path / "deflated.dcm")
    return [*dicom_files, reflate(fresh, tmp_path / "reflated.dcm")]


def test_pynetdicom_storescu_to_our_scp_byte_identical(
    our_scp, dicom_files, peer_log_dir, tmp_path
):
    dicom_files = _with_reflated(dicom_files, tmp_path)  # raw deflated bytes pass through
    recorder = Recorder()
    port = our_scp(recorder)
    result = peers.run_pynetdicom_storescu(HOST, port, dicom_files, aec="OURSCP",
                                           log_dir=peer_log_dir)
    assert result.ok, result.describe()
    assert len(result.statuses) == len(dicom_files)
    assert all(s["status"] == 0 for s in result.statuses)
    assert len(recorder.stored) == len(dicom_files)
    for path in dicom_files:
        _, sop_uid, ts = _meta(path)
        item = recorder.stored[sop_uid]
        assert item["ts"] == ts, path.name
        assert item["raw"] == dataset_bytes(path), f"{path.name} not byte-identical"


def test_pynetdicom_in_process_dataset_release_and_abort(our_scp):
    from pynetdicom import AE as PynetdicomAE

    recorder = Recorder()
    port = our_scp(recorder)
    ds = make_dataset("ct", unique=True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    peer = PynetdicomAE(ae_title="PYNDSCU")
    peer.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    peer.add_requested_context(Verification)
    try:
        assoc = peer.associate(HOST, port, ae_title="OURSCP")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert assoc.is_released
        assert recorder.wait_for("EVT_RELEASED")

        again = peer.associate(HOST, port, ae_title="OURSCP")
        assert again.is_established
        again.abort()
        assert recorder.wait_for("EVT_ABORTED")
    finally:
        peer.shutdown()
    item = recorder.stored[str(ds.SOPInstanceUID)]
    assert item["ts"] == ExplicitVRLittleEndian
    got = item["dataset"]
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.PatientName == ds.PatientName
    assert got.CTDIvol == ds.CTDIvol
    assert got.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].CodeValue == (
        "P5-0800A"
    )
    assert got.PixelData == ds.PixelData


# ------------------------------------------------------------------ us -> pynetdicom SCP


def _exact_contexts(files: list[Path]) -> list:
    pairs = dict.fromkeys((_meta(p)[0], _meta(p)[2]) for p in files)
    return [build_context(sop, ts) for sop, ts in pairs]


def test_our_scu_to_pynetdicom_scp_byte_identical(pynetdicom_scp, dicom_files, tmp_path):
    dicom_files = _with_reflated(dicom_files, tmp_path)
    scp = pynetdicom_scp()
    dataset = make_dataset("mr", unique=True)
    contexts = _exact_contexts(dicom_files) + [build_context(Verification)]
    ae = AE("OURSCU")
    try:
        assoc = ae.associate(HOST, scp.port, contexts, ae_title="PYNETDICOM")
        assert assoc.is_established, scp.logs()
        assert assoc.send_c_echo().Status == 0x0000
        for path in dicom_files:
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000, f"{path.name}: {status}\n{scp.logs()}"
        assert assoc.send_c_store(dataset).Status == 0x0000  # MR / Explicit VR LE above
        assoc.release()
        assert assoc.is_released
    finally:
        ae.shutdown()
    stored = {_meta(p)[1]: p for p in scp.wait_for_files(len(dicom_files) + 1)}
    for path in dicom_files:
        _, sop_uid, ts = _meta(path)
        out = stored[sop_uid]
        assert _meta(out)[2] == ts, path.name
        assert dataset_bytes(out) == dataset_bytes(path), f"{path.name} not byte-identical"
    from pydicom import dcmread

    back = dcmread(stored[str(dataset.SOPInstanceUID)])
    assert back.PixelData == dataset.PixelData
    assert back.PatientName == dataset.PatientName


def test_our_scu_to_pynetdicom_scp_rejected_context_reported(pynetdicom_scp):
    """A context pynetdicom does not support comes back rejected, the others accepted."""
    scp = pynetdicom_scp()
    ae = AE("OURSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context("1.2.3.4.5.6.7.8.9")  # no such abstract syntax
    try:
        assoc = ae.associate(HOST, scp.port, ae_title="PYNETDICOM")
        assert assoc.is_established, scp.logs()
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [Verification]
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [
            "1.2.3.4.5.6.7.8.9"
        ]
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        ae.shutdown()
