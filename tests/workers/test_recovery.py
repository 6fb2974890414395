"""Recovery after a crash (workers/recovery.py), without spawning a node.

Theory of operation: a storage root is filled by the real writer; a "crash" is a file
renamed into place whose journal frame was never written (the process died between
the two). Each case checks what the supervisor relies on: where recovery must look
(:func:`unclean_since`), that a record rebuilt from a file equals the one the writer
made, that :func:`reconcile` indexes exactly the files the index does not describe --
telling a same-size replacement apart by its generation -- and moves a losing copy
away, and that :func:`sweep_orphan_temp` removes only a dead worker's temporary files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
from pydicom.dataset import Dataset

from storage import (
    QUARANTINE_DIR,
    SUPERSEDED_DIR,
    FileCheck,
    InstanceRecord,
    InstanceWriter,
    JournalWriter,
    SqliteCatalog,
    replay,
)
from tests.storage import EXPLICIT, encode, make_config
from workers.recovery import PUBLISH_MARGIN_S, reconcile, record_from_file, sweep_orphan_temp, unclean_since

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.300"


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{3000 + n}"


def publish(root: Path, n: int, *, patient: str = "P", study: str | None = STUDY,
            journal: JournalWriter | None = None, pad: int = 0, **attributes: str) -> InstanceRecord:
    """Store instance ``n`` as a worker does; journal it only when given a journal.
    ``study`` None: a data set without Study Instance UID, quarantined."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid(n)
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = (study or STUDY) + ".1"
    ds.PatientID = patient
    ds.PatientName = "DOE^" + "X" * pad
    ds.Modality = "CT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    config = make_config(root, durability="none", incomplete="quarantine" if study is None else "refuse")
    writer = InstanceWriter(config, CT, uid(n), EXPLICIT, "MOD", "ARC")
    writer.begin()
    writer.write(encode(ds, EXPLICIT))
    record = writer.finish()
    writer._sync_file(False)
    writer._commit()
    if journal is not None:
        journal.append_many([record])
    return record


def test_unclean_since_is_the_oldest_segment_less_the_margin(tmp_path: Path) -> None:
    assert unclean_since(str(tmp_path)) is None
    journal = JournalWriter(tmp_path, "w0-1-1")
    journal.close()
    mtime = (tmp_path / ".journal" / "w0-1-1.log").stat().st_mtime
    assert unclean_since(str(tmp_path)) == mtime - PUBLISH_MARGIN_S


def test_a_record_rebuilt_from_its_file_is_the_writers(tmp_path: Path) -> None:
    made = publish(tmp_path, 1, patient="PID1")
    rebuilt = record_from_file(str(tmp_path), str(tmp_path / made.path))
    assert rebuilt.generation == made.generation == (tmp_path / made.path).stat().st_mtime_ns
    # What the file cannot say: when exactly it arrived (its mtime is the stamp).
    assert msgspec.structs.replace(rebuilt, received_at=made.received_at) == made


def test_a_record_rebuilt_from_its_file_has_the_query_attributes(tmp_path: Path) -> None:
    attributes = {"AccessionNumber": "ACC1", "StudyTime": "101010", "StudyID": "S1",
                  "StudyDescription": "HEAD", "ReferringPhysicianName": "REF^A", "PatientBirthDate": "19700101",
                  "PatientSex": "F", "SeriesNumber": "3", "SeriesDescription": "AX", "BodyPartExamined": "HEAD"}
    for n, study in ((1, STUDY), (2, None)):
        made = publish(tmp_path, n, study=study, **attributes)
        assert made.accession_number == "ACC1" and made.body_part_examined == "HEAD"
        rebuilt = record_from_file(str(tmp_path), str(tmp_path / made.path))
        assert msgspec.structs.replace(rebuilt, received_at=made.received_at) == made


def test_reconcile_indexes_a_quarantined_instance(tmp_path: Path) -> None:
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        since = time.time() - 60
        lost = publish(tmp_path, 5, study=None)
        assert lost.path == f"{QUARANTINE_DIR}/{uid(5)}.dcm"
        assert (lost.study_instance_uid, lost.series_instance_uid) == ("", STUDY + ".1")
        assert reconcile(str(tmp_path), catalog, since, files=FileCheck(tmp_path)) == 1
        assert catalog.get(uid(5)).path == lost.path
        assert reconcile(str(tmp_path), catalog, since, files=FileCheck(tmp_path)) == 0


def test_reconcile_indexes_what_the_index_does_not_describe(tmp_path: Path) -> None:
    journal = JournalWriter(tmp_path, "w0-1-1")
    indexed = [publish(tmp_path, n, journal=journal) for n in (1, 2, 3)]
    journal.close()
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        replay(tmp_path, catalog, files=FileCheck(tmp_path))
        since = time.time() - 60
        # The crash: a new instance and a same-size replacement of an indexed one, both
        # renamed into place, neither journalled.
        lost = publish(tmp_path, 4)
        replacement = publish(tmp_path, 2, patient="Q")  # "P" -> "Q": the same size
        assert replacement.size == indexed[1].size
        assert reconcile(str(tmp_path), catalog, since, files=FileCheck(tmp_path)) == 2
        row = catalog.get(uid(4))
        assert (row.path, row.size, row.digest, row.generation) == (lost.path, lost.size, lost.digest,
                                                                    lost.generation)
        row = catalog.get(uid(2))
        assert row.patient_id == "Q" and row.generation == replacement.generation
        assert catalog.get(uid(1)) == indexed[0]  # described already: untouched
        # Nothing left to do: a second pass offers nothing.
        assert reconcile(str(tmp_path), catalog, since, files=FileCheck(tmp_path)) == 0


def test_reconcile_moves_a_copy_that_lost_to_a_newer_one_elsewhere(tmp_path: Path) -> None:
    journal = JournalWriter(tmp_path, "w0-1-1")
    publish(tmp_path, 1, journal=journal)
    journal.close()
    with SqliteCatalog(tmp_path / "index.sqlite") as catalog:
        replay(tmp_path, catalog, files=FileCheck(tmp_path))
        newer = publish(tmp_path, 1, study=STUDY + ".9", patient="NEW")  # another study's path
        reconcile(str(tmp_path), catalog, time.time() - 60, files=FileCheck(tmp_path))
        assert catalog.get(uid(1)).path == newer.path
    assert [p.name.split(".")[-1] for p in (tmp_path / SUPERSEDED_DIR).iterdir()] == ["dcm"]
    assert len(list(tmp_path.glob(f"*/*/{uid(1)}.dcm"))) == 1


def test_sweep_orphan_temp_spares_what_a_live_worker_holds(tmp_path: Path) -> None:
    temp = tmp_path / ".tmp"
    temp.mkdir()
    dead = temp / "dead.part"
    dead.write_bytes(b"x")
    held = temp / "held.part"
    held.write_bytes(b"y")
    old = time.time() - 10
    os.utime(dead, (old, old))
    os.utime(held, (old, old))
    fresh = temp / "fresh.part"
    fresh.write_bytes(b"z")
    with open(held, "rb"):
        # This process plays the live worker holding "held"; the worker died 5 s ago.
        assert sweep_orphan_temp(str(tmp_path), [os.getpid()], before=time.time() - 5) == 1
    assert sorted(p.name for p in temp.iterdir()) == ["fresh.part", "held.part"]
