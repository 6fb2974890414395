"""Self-check of the test harness: generated data and real peers, talking to each other.

Theory of operation: before scpfleet is judged by tests/dicomdata.py and tests/peers.py,
these tests show the harness itself is trustworthy, with no scpfleet code involved: the
generators write valid, deterministic PS3.10 files; DCMTK and pynetdicom exchange them in
every transfer syntax the corpus holds and store them byte-identical; echoes work both
ways; a 64 MiB streamed instance survives the trip (2 GiB under --run-slow); and peers are
reaped, forked children included.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from bench.procs import group_alive
from tests import peers
from tests.dicomdata import (
    KINDS,
    LARGE_FILE_FRAME_BYTES,
    dataset_bytes,
    dataset_offset,
    dataset_sha256,
    make_dataset,
    make_files,
    make_large_file,
    write_part10,
)
from tests.peers import (
    HOST,
    run_echoscu,
    run_pynetdicom_echoscu,
    run_pynetdicom_storescu,
    run_storescu,
    run_storescu_parallel,
)


def _meta(path: Path) -> tuple[str, str]:
    meta = pydicom.filereader.read_file_meta_info(path)
    return str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)


def assert_stored_identical(sent: list[Path], received: list[Path], logs: str) -> None:
    """Every sent instance was received once, in its own transfer syntax, with the data set
    bytes exactly as sent."""
    by_uid = {}
    for path in received:
        uid, ts = _meta(path)
        assert uid not in by_uid, f"{uid} stored twice\n{logs}"
        by_uid[uid] = (path, ts)
    assert len(by_uid) == len(sent), f"sent {len(sent)}, stored {len(by_uid)}\n{logs}"
    for path in sent:
        uid, ts = _meta(path)
        stored, stored_ts = by_uid[uid]
        assert stored_ts == ts, f"{path.name}: sent as {ts}, stored as {stored_ts}\n{logs}"
        assert dataset_bytes(stored) == dataset_bytes(path), f"{path.name} differs\n{logs}"


# ------------------------------------------------------------------------------ generators


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_a_valid_part10_file(kind: str, tmp_path: Path) -> None:
    path = write_part10(make_dataset(kind), tmp_path / f"{kind}.dcm")
    raw = path.read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    # The group length the offset comes from agrees with where pydicom starts the data set.
    assert dataset_offset(path) == 144 + ds.file_meta.FileMetaInformationGroupLength
    assert len(dataset_bytes(path)) == len(raw) - dataset_offset(path)
    assert "PixelData" in ds or ds.Modality == "SR"


def test_kinds_have_their_transfer_syntaxes_and_shapes(tmp_path: Path) -> None:
    ts = {k: str(make_dataset(k).file_meta.TransferSyntaxUID) for k in KINDS}
    assert ts["deflated"] == "1.2.840.10008.1.2.1.99"
    assert ts["bigendian"] == "1.2.840.10008.1.2.2"
    assert ts["implicit"] == "1.2.840.10008.1.2"
    assert ts["encapsulated"] == "1.2.840.10008.1.2.4.50"
    assert ts["ct"] == ExplicitVRLittleEndian
    ct = make_dataset("ct")
    assert (ct.Rows, ct.Columns, ct.BitsAllocated) == (512, 512, 16)
    assert ct.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].CodeValue
    assert make_dataset("mr").Rows == 256
    mf = make_dataset("multiframe", size=3 << 20)
    assert abs(len(mf.PixelData) - (3 << 20)) < 256 * 256 * 2
    assert int(mf.NumberOfFrames) * 256 * 256 * 2 == len(mf.PixelData)
    enc = write_part10(make_dataset("encapsulated", size=40_000), tmp_path / "enc.dcm")
    enc_ds = pydicom.dcmread(enc)
    assert enc_ds["PixelData"].is_undefined_length and enc_ds.NumberOfFrames == 3
    for seed in range(6):  # "tiny" rotates SOP classes, all under 8 KB
        path = write_part10(make_dataset("tiny", seed=seed), tmp_path / f"tiny{seed}.dcm")
        assert path.stat().st_size < 8 * 1024
    with pytest.raises(ValueError):
        make_dataset("ct", transfer_syntax="1.2.840.10008.1.2.4.50")
    with pytest.raises(ValueError):
        make_dataset("ct", size=10)


def test_generation_is_deterministic_unless_unique(tmp_path: Path) -> None:
    a = write_part10(make_dataset("ct", seed=3), tmp_path / "a.dcm")
    b = write_part10(make_dataset("ct", seed=3), tmp_path / "b.dcm")
    assert a.read_bytes() == b.read_bytes()
    assert make_dataset("ct", seed=4).PixelData != make_dataset("ct", seed=3).PixelData
    u1, u2 = make_dataset("sc", unique=True), make_dataset("sc", unique=True)
    assert u1.SOPInstanceUID != u2.SOPInstanceUID
    assert u1.StudyInstanceUID != u2.StudyInstanceUID
    fixed1 = make_files(tmp_path / "f1", {"tiny": 3}, unique=False)
    fixed2 = make_files(tmp_path / "f2", {"tiny": 3}, unique=False)
    assert [p.read_bytes() for p in fixed1] == [p.read_bytes() for p in fixed2]


def test_make_files_spreads_studies_and_series(tiny_files: list[Path]) -> None:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in tiny_files]
    assert len({h.SOPInstanceUID for h in headers}) == 100
    assert len({h.StudyInstanceUID for h in headers}) == 5
    assert len({h.SeriesInstanceUID for h in headers}) == 10
    assert len({h.SOPClassUID for h in headers}) == 3
    assert all(p.stat().st_size < 8 * 1024 for p in tiny_files)


def test_large_file_is_streamed_and_laid_out_exactly(tmp_path: Path) -> None:
    size = 64 << 20
    path = make_large_file(tmp_path / "large.dcm", size)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(header.NumberOfFrames)
    assert frames * LARGE_FILE_FRAME_BYTES == size
    with open(path, "rb") as f:
        raw = f.read(1 << 20)
    pixel_tag = raw.find(b"\xe0\x7f\x10\x00OW\x00\x00")
    assert pixel_tag > dataset_offset(path)
    (length,) = struct.unpack_from("<I", raw, pixel_tag + 8)
    assert length == size
    assert path.stat().st_size == pixel_tag + 12 + size
    # Each 4 KiB block of pixel data starts with its own offset.
    start = pixel_tag + 12
    with open(path, "rb") as f:
        for off in (0, 4096, (5 << 20) + 8192, size - 4096):
            f.seek(start + off)
            assert struct.unpack("<Q", f.read(8))[0] == off


# ------------------------------------------------------------------------------ DCMTK <-> DCMTK


@pytest.mark.interop
def test_storescu_to_storescp_stores_every_syntax_byte_identical(
    dicom_files: list[Path], storescp, peer_log_dir: Path
) -> None:
    scp = storescp()
    result = run_storescu(HOST, scp.port, dicom_files, log_dir=peer_log_dir)
    assert result.ok, result.describe() + "\n" + scp.logs()
    received = scp.wait_for_files(len(dicom_files))
    assert_stored_identical(dicom_files, received, result.describe() + scp.logs())


@pytest.mark.interop
def test_storescu_default_proposal_converts_which_is_why_exact_ts_exists(
    storescp, peer_log_dir: Path, tmp_path: Path
) -> None:
    """Documents the DCMTK quirk: without an exact profile storescu proposes Explicit VR LE,
    then the other uncompressed syntaxes in one fallback context, for which storescp picks
    an explicit one; so an implicit VR file goes out converted, not as stored."""
    sent = write_part10(make_dataset("implicit", unique=True), tmp_path / "implicit.dcm")
    scp = storescp()
    run_storescu(HOST, scp.port, [sent], exact_ts=False, log_dir=peer_log_dir).check_ok()
    (stored,) = scp.wait_for_files(1)
    assert _meta(sent)[1] == ImplicitVRLittleEndian
    assert _meta(stored)[1] in (ExplicitVRLittleEndian, ExplicitVRBigEndian)
    assert dataset_bytes(stored) != dataset_bytes(sent)


@pytest.mark.interop
def test_parallel_storescu_into_forking_storescp(
    tiny_files: list[Path], storescp, peer_log_dir: Path
) -> None:
    scp = storescp(fork=True)
    results = run_storescu_parallel(HOST, scp.port, tiny_files, 4, log_dir=peer_log_dir)
    assert len(results) == 4
    for r in results:
        assert r.ok, r.describe() + "\n" + scp.logs()
    received = scp.wait_for_files(len(tiny_files))
    assert_stored_identical(tiny_files, received, scp.logs())


@pytest.mark.interop
def test_stop_kills_forked_storescp_children(storescp, peer_log_dir: Path) -> None:
    scp = storescp(fork=True)
    run_echoscu(HOST, scp.port, log_dir=peer_log_dir).check_ok()
    pgid = scp._proc.popen.pid
    scp.stop()
    assert not scp.running
    # No live member left; a forked child's zombie may wait a moment for init to reap it.
    assert not group_alive(pgid)


# ------------------------------------------------------------------------------ cross-peer


@pytest.mark.interop
def test_pynetdicom_scu_to_storescp(dicom_files: list[Path], storescp, peer_log_dir: Path) -> None:
    scp = storescp()
    result = run_pynetdicom_storescu(HOST, scp.port, dicom_files, log_dir=peer_log_dir)
    assert result.ok, result.describe() + "\n" + scp.logs()
    assert [s["status"] for s in result.statuses] == [0] * len(dicom_files)
    received = scp.wait_for_files(len(dicom_files))
    assert_stored_identical(dicom_files, received, result.describe() + scp.logs())


@pytest.mark.interop
def test_storescu_to_pynetdicom_scp(
    dicom_files: list[Path], pynetdicom_scp, peer_log_dir: Path
) -> None:
    peers.require_dcmtk()
    scp = pynetdicom_scp()
    result = run_storescu(HOST, scp.port, dicom_files, aec=scp.aetitle, log_dir=peer_log_dir)
    assert result.ok, result.describe() + "\n" + scp.logs()
    received = scp.wait_for_files(len(dicom_files))
    assert_stored_identical(dicom_files, received, result.describe() + scp.logs())


@pytest.mark.interop
def test_echoes_both_ways(storescp, pynetdicom_scp, peer_log_dir: Path) -> None:
    dcmtk, pynd = storescp(), pynetdicom_scp()
    for scp in (dcmtk, pynd):
        run_echoscu(HOST, scp.port, aec=scp.aetitle, log_dir=peer_log_dir).check_ok()
        echo = run_pynetdicom_echoscu(HOST, scp.port, aec=scp.aetitle, log_dir=peer_log_dir)
        assert echo.statuses == [{"status": 0}], echo.describe()


@pytest.mark.interop
def test_failures_are_reported_with_logs(peer_log_dir: Path, tmp_path: Path) -> None:
    peers.require_dcmtk()
    port = peers.free_port()  # nothing listens here
    result = run_echoscu(HOST, port, log_dir=peer_log_dir, extra_args=("-to", "5"))
    assert not result.ok
    assert "Association Request Failed" in result.describe()
    with pytest.raises(peers.PeerError, match="echoscu failed"):
        result.check_ok()
    sent = write_part10(make_dataset("tiny", unique=True), tmp_path / "t.dcm")
    pynd = run_pynetdicom_storescu(HOST, port, [sent], log_dir=peer_log_dir)
    assert not pynd.ok and pynd.statuses[0]["status"] is None


@pytest.mark.interop
def test_timeout_kills_the_peer_and_reports_it(
    storescp, peer_log_dir: Path, tmp_path: Path
) -> None:
    sent = write_part10(make_dataset("tiny", unique=True), tmp_path / "t.dcm")
    scp = storescp(extra_args=("--sleep-during", "30"))
    with pytest.raises(peers.PeerError, match="storescu timed out after 1"):
        run_storescu(HOST, scp.port, [sent], timeout=1, log_dir=peer_log_dir)
    assert [p for p in peers.live_processes() if p.args[0].endswith("storescu")] == []


# ------------------------------------------------------------------------------ large files


@pytest.mark.interop
def test_64mib_instance_through_storescp(tmp_path: Path, storescp, peer_log_dir: Path) -> None:
    sent = make_large_file(tmp_path / "large.dcm", 64 << 20, unique=True)
    scp = storescp(max_pdu=131072)
    run_storescu(HOST, scp.port, [sent], log_dir=peer_log_dir).check_ok()
    (stored,) = scp.wait_for_files(1)
    assert dataset_sha256(stored) == dataset_sha256(sent), scp.logs()


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.timeout(900)
def test_2gib_instance_through_storescp(
    tmp_path: Path, storescp, peer_log_dir: Path, slow_scale: float
) -> None:
    size = int((2 << 30) * slow_scale)  # 2 GiB in full, 256 MiB in CI's bounded run
    if shutil.disk_usage(tmp_path).free < 3 * size:
        pytest.skip(f"needs {3 * size >> 20} MiB free for the file and its stored copy")
    sent = make_large_file(tmp_path / "large.dcm", size, unique=True)
    try:
        assert sent.stat().st_size > size
        scp = storescp(max_pdu=131072)
        run_storescu(HOST, scp.port, [sent], timeout=600, log_dir=peer_log_dir).check_ok()
        (stored,) = scp.wait_for_files(1)
        assert dataset_sha256(stored) == dataset_sha256(sent), scp.logs()
    finally:  # pytest keeps tmp dirs of recent runs: do not leave 4 GiB behind
        for path in (tmp_path / "large.dcm", *(tmp_path.glob("storescp-*/*"))):
            path.unlink(missing_ok=True)
