"""``scpfleet send`` (bench/send.py): walk, skip non-DICOM, stream unchanged, group
contexts, retry transient failures, write the failed list for a rerun."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from bench.corpus import dataset_bytes, make_dataset, write_part10
from bench.send import ABORT_RETRIES, Entry, association_retry_limit, group_files, scan
from engine import sop_class
from tests import peers
from tests.bench import (
    ABORT,
    SILENT,
    SILENT_S,
    EngineServer,
    load_json,
    one_line_error,
    run_cli,
)


def _uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


@pytest.fixture
def archive(tmp_path: Path, dicom_files: list[Path]) -> Path:
    """Every dicomdata kind in nested folders, plus two files that are not DICOM."""
    root = tmp_path / "archive"
    for i, path in enumerate(dicom_files):
        target = root / f"d{i % 3}" / f"sub{i % 2}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (root / "README.txt").write_text("not DICOM\n")
    (root / "d0" / "empty.dcm").write_bytes(b"")
    return root


@pytest.mark.interop
def test_send_archive_to_dcmtk_byte_identical(storescp, archive: Path,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    scp = storescp()
    out = tmp_path / "report.json"
    result = run_cli("send", str(archive), "127.0.0.1", str(scp.port), "--aec", scp.aetitle,
                     "--associations", "3", "--report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr + scp.logs()
    sources = {_uid(p): p for p in archive.rglob("*.dcm") if p.stat().st_size}
    received = scp.wait_for_files(len(sources))
    assert len(received) == len(sources)
    for path in received:
        assert dataset_bytes(path) == dataset_bytes(sources[_uid(path)]), path.name
    data = load_json(out)
    assert data["sent"] == len(sources) and data["failed"] == 0 and data["skipped"] == 2
    assert {Path(s["path"]).name for s in data["skipped_files"]} == {"README.txt", "empty.dcm"}
    assert "README.txt" in result.stderr  # reported as it was found


def test_send_engine_server_byte_identical_and_skips(archive: Path) -> None:
    with EngineServer(keep_data=True) as scp:
        result = run_cli("send", str(archive), "127.0.0.1", str(scp.port))
        data = dict(scp.data)
    assert result.returncode == 0, result.stdout + result.stderr
    sources = {_uid(p): p for p in archive.rglob("*.dcm") if p.stat().st_size}
    assert set(data) == set(sources)
    for uid, raw in data.items():
        assert raw == dataset_bytes(sources[uid])
    assert "skipped" in result.stdout and "README.txt" in result.stdout


def test_send_retries_out_of_resources(tmp_path: Path, tiny_files: list[Path]) -> None:
    out = tmp_path / "report.json"
    files = [str(p) for p in tiny_files[:5]]
    # Every instance is refused (0xA700) on its first arrival, stored on the second.
    with EngineServer(status=lambda n, uid: 0xA700 if n == 1 else 0x0000) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port), "--associations", "2",
                         "--retry-delay", "0.05", "--report", str(out))
        received = list(scp.received)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(received) == sorted(_uid(Path(f)) for f in files)
    data = load_json(out)
    assert data["sent"] == 5 and data["failed"] == 0 and data["retries"] == 5


def test_send_retries_rejected_transient_association(tmp_path: Path,
                                                    tiny_files: list[Path]) -> None:
    calls = []
    lock = threading.Lock()

    def admission() -> bool:  # rejected-transient the first time, accepted after
        with lock:
            calls.append(1)
            return len(calls) > 1

    files = [str(p) for p in tiny_files[:4]]
    out = tmp_path / "report.json"
    with EngineServer(admission=admission) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port), "--associations", "1",
                         "--retry-delay", "0.05", "--report", str(out))
        received = list(scp.received)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(received) == 4
    data = load_json(out)
    assert data["retries"] == 1 and data["association_failures"] == {"rejected": 1}
    assert "rejected-transient" in data["association_failure_reasons"]["rejected"]


def test_send_peer_abort_reported_at_once_and_tried_once_more(tmp_path: Path,
                                                              tiny_files: list[Path]) -> None:
    """A peer that aborts on one file: reported on stderr as it happens, sent once more
    (it may have been something else), then failed; the other files go on."""
    files = [str(p) for p in tiny_files[:4]]
    doomed = _uid(Path(files[2]))
    out = tmp_path / "report.json"
    with EngineServer(status=lambda n, uid: ABORT if uid == doomed else 0) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port), "--associations", "1",
                         "--retries", "3", "--retry-delay", "0.05", "--report", str(out))
        attempts = dict(scp.attempts)
        received = list(scp.received)
    assert result.returncode == 1
    assert attempts[doomed] == 1 + ABORT_RETRIES  # not 1 + --retries
    assert sorted(received) == sorted(_uid(Path(f)) for f in files if _uid(Path(f)) != doomed)
    assert f"{files[2]}: no response: association aborted by the peer" in result.stderr
    assert "trying once more" in result.stderr
    data = load_json(out)
    assert [f["path"] for f in data["failures"]] == [files[2]]
    assert data["retries"] == ABORT_RETRIES


def test_send_peer_that_does_not_answer_is_not_retried(tmp_path: Path,
                                                       tiny_files: list[Path]) -> None:
    files = [str(tiny_files[0])]
    out = tmp_path / "report.json"
    with EngineServer(status=SILENT) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port), "--timeout", "2",
                         "--retries", "3", "--retry-delay", "0.05", "--report", str(out),
                         timeout=60)
        attempts = dict(scp.attempts)
    assert result.returncode == 1
    assert attempts == {_uid(tiny_files[0]): 1}  # one wait for the timeout, not four
    assert "timeout" in result.stderr
    data = load_json(out)
    assert data["retries"] == 0 and data["failed"] == 1
    assert SILENT_S > 2  # the server really was silent for longer than --timeout


@pytest.mark.parametrize("cause, transient, expected", [
    ("connect-failed", True, 3),
    ("rejected", True, 3),
    ("rejected", False, 0),
    ("aborted", True, ABORT_RETRIES),
    ("timeout", True, 0),
])
def test_association_retry_limit(cause: str, transient: bool, expected: int) -> None:
    assert association_retry_limit(cause, transient, 3) == expected
    assert association_retry_limit(cause, transient, 0) == 0


def test_scan_uses_the_data_sets_uids(tmp_path: Path) -> None:
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info

    ds = make_dataset("tiny", seed=5, unique=True)
    path = write_part10(ds, tmp_path / "a.dcm")
    meta = read_file_meta_info(path)
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR, the data set says SC
    head = BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    path.write_bytes(head.getvalue() + dataset_bytes(path))
    warnings: list[str] = []
    (entry,), skipped = scan([str(path)], warn=warnings.append)
    assert skipped == []
    assert entry.sop_class == str(ds.SOPClassUID)
    assert len(warnings) == 1 and "1.2.840.10008.5.1.4.1.1.4" in warnings[0]


def test_send_two_associations_server_takes_one(tiny_files: list[Path]) -> None:
    files = [str(p) for p in tiny_files[:10]]
    with EngineServer(maximum_associations=1) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port), "--associations", "2",
                         "--retry-delay", "0.05")
        received = list(scp.received)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(received) == sorted(_uid(Path(f)) for f in files)


def test_send_nobody_listening_fails_all_after_retries(tmp_path: Path,
                                                      tiny_files: list[Path]) -> None:
    files = [str(p) for p in tiny_files[:5]]
    failed_list = tmp_path / "failed.txt"
    result = run_cli("send", *files, "127.0.0.1", str(peers.free_port()), "--associations",
                     "2", "--retries", "1", "--retry-delay", "0.05", "--failed-list",
                     str(failed_list), timeout=30)
    assert result.returncode == 1
    assert sorted(failed_list.read_text().splitlines()) == sorted(files)
    assert "connection failed" in result.stdout


def test_send_failed_list_and_rerun_from_list(tmp_path: Path, tiny_files: list[Path]) -> None:
    files = [str(p) for p in tiny_files[:6]]
    doomed = {_uid(Path(files[1])), _uid(Path(files[4]))}
    failed_list = tmp_path / "failed.txt"
    with EngineServer(status=lambda n, uid: 0xC000 if uid in doomed else 0) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port), "--retries", "1",
                         "--retry-delay", "0.05", "--failed-list", str(failed_list))
    assert result.returncode == 1
    assert sorted(failed_list.read_text().splitlines()) == sorted([files[1], files[4]])
    assert "0xC000" in result.stdout  # the reason is listed with the path
    with EngineServer() as scp:
        rerun = run_cli("send", "--from-list", str(failed_list), "127.0.0.1", str(scp.port),
                        "--failed-list", str(failed_list))
        received = list(scp.received)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(received) == sorted(doomed)
    assert failed_list.read_text() == ""


def test_send_context_not_accepted_fails_that_file(tiny_files: list[Path],
                                                   dicom_files: list[Path]) -> None:
    deflated = next(p for p in dicom_files if p.name.startswith("deflated"))
    files = [str(tiny_files[0]), str(deflated)]
    with EngineServer(syntaxes=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]) as scp:
        result = run_cli("send", *files, "127.0.0.1", str(scp.port))
        received = list(scp.received)
    assert result.returncode == 1
    assert received == [_uid(tiny_files[0])]
    assert "did not accept CT Image Storage in Deflated" in result.stdout


def test_send_more_than_128_contexts_in_groups(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    classes = list(sop_class.STORAGE_SOP_CLASSES[:130])
    for i, uid in enumerate(classes):
        ds = make_dataset("tiny", seed=0, unique=True)  # seed 0: a 32x32 SC image
        assert ds.SOPClassUID == sop_class.SecondaryCaptureImageStorage
        ds.SOPClassUID = uid
        ds.file_meta.MediaStorageSOPClassUID = uid
        write_part10(ds, folder / f"{i:03d}.dcm")
    out = tmp_path / "report.json"
    with EngineServer() as scp:
        result = run_cli("send", str(folder), "127.0.0.1", str(scp.port), "--report", str(out))
        received = list(scp.received)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(received) == 130
    assert load_json(out)["groups"] == 2


def test_group_files_fits_each_group() -> None:
    entries = [Entry(f"f{i}", f"1.2.{i % 200}", "1.2.840.10008.1.2" + (".1" if i % 2 else ""),
                     10) for i in range(1000)]
    groups = group_files(entries)
    assert all(len(pairs) <= 128 for pairs, _ in groups)
    assert sorted(e.path for _, files in groups for e in files) == sorted(e.path for e in entries)
    assert len(groups) == -(-len({(e.sop_class, e.transfer_syntax) for e in entries}) // 128)


@pytest.mark.parametrize(
    "args",
    [
        ["send", "no/such/dir", "127.0.0.1", "104"],
        ["send", "127.0.0.1", "104"],
        ["send", ".", "127.0.0.1", "port"],
        ["send", "--from-list", "no/such/list.txt", "127.0.0.1", "104"],
        ["send", ".", "127.0.0.1", "104", "--associations", "0"],
        ["send", ".", "127.0.0.1", "104", "--retries", "x"],
    ],
)
def test_send_bad_arguments(args: list[str]) -> None:
    one_line_error(run_cli(*args))

