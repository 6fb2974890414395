"""``scpfleet verify``: every disagreement between the index and the disk is reported, and
``--repair`` settles what the files can (workers/verify.py, through the CLI).

Theory of operation: a storage root is filled by the real writer and journal and
replayed into its SQLite index, then damaged on purpose, one way per instance: a file
deleted, a file replaced by another copy, a file the index never heard of, a second copy
at another study's path, bytes changed in place. ``scpfleet verify`` (run in-process
through ``workers.cli.main``) must name each, and ``--repair`` must leave an index that
agrees with the disk -- except the damaged file, which is reported, never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from storage import FileCheck, InstanceRecord, InstanceWriter, JournalWriter, SqliteCatalog, replay
from tests.storage import EXPLICIT, encode, make_config
from workers.cli import main
from workers.verify import lock_root

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.100"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.101"


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{1000 + n}"


def store(root: Path, n: int, study: str | None = STUDY, patient: str = "P", journal: JournalWriter | None = None,
          index: bool = True) -> InstanceRecord:
    """``study`` None: a data set without Study Instance UID, quarantined."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid(n)
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = (study or STUDY) + ".1"
    ds.PatientID = patient
    config = make_config(root, durability="none", incomplete="quarantine" if study is None else "refuse")
    writer = InstanceWriter(config, CT, uid(n), EXPLICIT, "MOD", "ARC")
    writer.begin()
    writer.write(encode(ds, EXPLICIT))
    record = writer.finish()
    writer._sync_file(False)
    writer._commit()
    if index and journal is not None:
        journal.append_many([record])
    return record


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A root whose index disagrees with its files in every way verify knows."""
    root = tmp_path / "archive"
    root.mkdir()
    journal = JournalWriter(root, "w0-1-1")
    records = {n: store(root, n, journal=journal) for n in range(1, 7)}
    journal.close()
    with SqliteCatalog(root / "index.sqlite") as catalog:
        replay(root, catalog, files=FileCheck(root))
    (root / records[1].path).unlink()                          # missing
    store(root, 2, patient="NEWER")                            # mismatch: another copy, never indexed
    store(root, 7)                                             # unindexed
    store(root, 3, study=OTHER_STUDY)                          # duplicate at another path
    data = bytearray((root / records[4].path).read_bytes())    # damaged in place
    data[-1] ^= 0xFF
    st = (root / records[4].path).stat()
    (root / records[4].path).write_bytes(bytes(data))
    os.utime(root / records[4].path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return root, {"missing": uid(1), "mismatch": records[2].path, "unindexed": f"{STUDY}/{STUDY}.1/{uid(7)}.dcm",
                  "duplicate": f"{OTHER_STUDY}/{OTHER_STUDY}.1/{uid(3)}.dcm", "damaged": records[4].path}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["verify", *args])
    return code, capsys.readouterr().out


def test_verify_names_every_disagreement(damaged: tuple[Path, dict[str, str]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, expected = damaged
    code, out = run(capsys, "--storage", str(root), "--digests", "--json")
    assert code == 1
    report = json.loads(out)["before"]
    for kind, item in expected.items():
        assert report[kind] == [item], (kind, report)
    assert report["problems"] == 5
    code, out = run(capsys, "--storage", str(root), "--quiet")
    assert code == 1 and "4 disagreement(s)" in out  # without --digests the damage is unseen


def test_repair_leaves_an_index_that_agrees(damaged: tuple[Path, dict[str, str]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root, expected = damaged
    code, out = run(capsys, "--storage", str(root), "--repair", "--json")
    result = json.loads(out)
    assert code == 0, result
    assert result["after"]["problems"] == 0
    with SqliteCatalog(root / "index.sqlite") as catalog:
        assert catalog.get(uid(1)) is None                     # its file is gone
        assert catalog.get(uid(2)).patient_id == "NEWER"       # the file on disk
        assert catalog.get(uid(7)) is not None
        row = catalog.get(uid(3))                              # overwrite: the newer copy
        assert row.study_instance_uid == OTHER_STUDY
    assert not (root / f"{STUDY}/{STUDY}.1/{uid(3)}.dcm").exists()
    assert len(list((root / ".superseded").iterdir())) == 1
    # The damaged file is still reported: the row's digest is what was received.
    code, out = run(capsys, "--storage", str(root), "--digests", "--json")
    assert code == 1 and json.loads(out)["before"]["damaged"] == [expected["damaged"]]


def test_quarantined_files_are_verified_and_repaired_like_any(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    journal = JournalWriter(root, "w0-1-1")
    indexed = store(root, 1, study=None, journal=journal)
    journal.close()
    with SqliteCatalog(root / "index.sqlite") as catalog:
        replay(root, catalog, files=FileCheck(root))
    code, out = run(capsys, "--storage", str(root), "--digests", "--json")
    assert code == 0 and json.loads(out)["before"]["problems"] == 0
    unindexed = store(root, 2, study=None)
    assert unindexed.path == f"quarantine/{uid(2)}.dcm" and indexed.path == f"quarantine/{uid(1)}.dcm"
    code, out = run(capsys, "--storage", str(root), "--json")
    assert code == 1 and json.loads(out)["before"]["unindexed"] == [unindexed.path]
    code, out = run(capsys, "--storage", str(root), "--repair", "--json")
    assert code == 0 and json.loads(out)["after"]["problems"] == 0
    with SqliteCatalog(root / "index.sqlite") as catalog:
        assert catalog.get(uid(2)).path == unindexed.path


def test_repair_restores_a_file_left_in_superseded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crash in the middle of superseding can leave a row's very copy in .superseded."""
    root = tmp_path / "archive"
    root.mkdir()
    journal = JournalWriter(root, "w0-1-1")
    record = store(root, 1, journal=journal)
    journal.close()
    with SqliteCatalog(root / "index.sqlite") as catalog:
        replay(root, catalog, files=FileCheck(root))
    (root / ".superseded").mkdir()
    shutil.move(root / record.path, root / ".superseded" / f"{uid(1)}.{record.generation}.0.dcm")
    code, out = run(capsys, "--storage", str(root), "--repair", "--json")
    assert code == 0 and json.loads(out)["repaired"]["restored"] == 1
    assert (root / record.path).exists()


def test_repair_refuses_while_a_node_holds_the_root(damaged: tuple[Path, dict[str, str]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = damaged
    held = lock_root(str(root))
    try:
        assert main(["verify", "--storage", str(root), "--repair"]) == 1
        err = capsys.readouterr().err
        assert "in use by a running node" in err and err.count("\n") == 1
    finally:
        os.close(held)


def test_verify_of_a_root_without_index_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--storage", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
