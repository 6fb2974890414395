"""Bringing the index back in line with the disk after a crash.

Theory of operation: the journal makes every acknowledged instance reach the index
(``storage.replay``), but a publish renames the file into place *before* it appends the
journal frame, so a process killed between the two leaves a visible instance that no
journal knows: never acknowledged (the peer was not answered), yet on disk. An archive
whose index disagrees with its disk is wrong either way, and deleting the file could
destroy an earlier, acknowledged copy it replaced; so :func:`reconcile` indexes it.

Only series directories modified since a bound are looked at: a rename updates its
directory's mtime, and the unjournalled renames of a dead worker happened shortly
before it died (within one publish, bounded here by :data:`PUBLISH_MARGIN_S`). The
supervisor calls this at start when journal segments of a previous run were left
behind (the mark of an unclean stop), and at run time when a worker dies abnormally.
A record rebuilt from a file has the file's own metadata, digest (by the node's digest
algorithm) and size, the AE titles of its File Meta Information, and its mtime as the
reception time.

A replacement of an indexed instance that was renamed but not journalled is told apart
from the indexed copy by its generation (the file's mtime, which every publish stamps),
whatever the sizes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from storage import (
    DEFAULT_DIGEST,
    QUARANTINE_DIR,
    TEMP_DIR,
    Catalog,
    FileCheck,
    InstanceRecord,
    MetadataExtractor,
    NotDicomError,
    file_generation,
    is_valid_uid,
    journal_dir,
    new_digest,
    read_file_meta,
)

__all__ = ["reconcile", "record_from_file", "unclean_since", "sweep_orphan_temp", "PUBLISH_MARGIN_S"]

log = logging.getLogger("scpfleet.recovery")

#: Longest a publish (fsync, rename, directory fsyncs, journal append) is assumed to take;
#: renames older than a worker's last journal append by more than this were journalled.
PUBLISH_MARGIN_S = 300.0
_READ = 1 << 20
_BATCH = 500


def unclean_since(root: str) -> float | None:
    """Lower bound of the renames a crashed previous run may not have journalled, or
    None when it left no journal segment (a clean stop retires them all)."""
    directory = journal_dir(root)
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".log")]
    except FileNotFoundError:
        return None
    times = []
    for name in names:
        try:
            times.append(os.stat(os.path.join(directory, name)).st_mtime)
        except FileNotFoundError:
            continue
    return min(times) - PUBLISH_MARGIN_S if times else None


def record_from_file(root: str, path: str, digest_algorithm: str = DEFAULT_DIGEST) -> InstanceRecord:
    """An index record for a stored Part 10 file, its data set digested by
    ``digest_algorithm`` (raises NotDicomError or OSError)."""
    digest = new_digest(digest_algorithm)
    with open(path, "rb") as fp:
        meta = read_file_meta(fp)
        extractor = MetadataExtractor(meta.transfer_syntax_uid)
        while chunk := fp.read(_READ):
            digest.update(chunk)
            extractor.feed(chunk)
        st = os.fstat(fp.fileno())
    found = extractor.result
    relative = os.path.relpath(path, root)
    parts = relative.split(os.sep)
    if len(parts) == 3:  # <study>/<series>/<SOP>.dcm
        study = found.study_instance_uid or parts[0]
        series = found.series_instance_uid or parts[1]
    else:  # quarantine/<SOP>.dcm: the UIDs the data set has, if they are UIDs
        study = found.study_instance_uid if is_valid_uid(found.study_instance_uid) else ""
        series = found.series_instance_uid if is_valid_uid(found.series_instance_uid) else ""
    return InstanceRecord(
        sop_instance_uid=meta.media_storage_sop_instance_uid or found.sop_instance_uid or "",
        sop_class_uid=meta.media_storage_sop_class_uid or found.sop_class_uid or "",
        study_instance_uid=study,
        series_instance_uid=series,
        patient_id=found.patient_id,
        patient_name=found.patient_name,
        modality=found.modality,
        study_date=found.study_date,
        instance_number=found.instance_number,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        path=relative.replace(os.sep, "/"),
        size=st.st_size,
        digest=digest.hexdigest(),
        calling_ae=meta.sending_ae_title or meta.source_ae_title or "",
        called_ae=meta.receiving_ae_title or "",
        received_at=st.st_mtime,
        generation=file_generation(st),
        digest_algorithm=digest_algorithm,
        study_time=found.study_time,
        accession_number=found.accession_number,
        study_id=found.study_id,
        study_description=found.study_description,
        referring_physician_name=found.referring_physician_name,
        patient_birth_date=found.patient_birth_date,
        patient_sex=found.patient_sex,
        specific_character_set=found.specific_character_set,
        series_number=found.series_number,
        series_description=found.series_description,
        body_part_examined=found.body_part_examined,
    )


def _recent_files(root: str, since: float) -> Iterable[str]:
    """``.dcm`` files in ``<root>/<study>/<series>/`` (and ``<root>/quarantine/``)
    directories modified at or after ``since``."""
    quarantine = os.path.join(root, QUARANTINE_DIR)
    try:
        if os.stat(quarantine).st_mtime >= since:
            with os.scandir(quarantine) as entries:
                for entry in entries:
                    if entry.name.endswith(".dcm"):
                        yield entry.path
    except FileNotFoundError:
        pass
    with os.scandir(root) as studies:
        for study in studies:
            if not is_valid_uid(study.name) or not study.is_dir(follow_symlinks=False):
                continue
            with os.scandir(study.path) as series_dirs:
                for series in series_dirs:
                    try:
                        if not series.is_dir(follow_symlinks=False) or series.stat().st_mtime < since:
                            continue
                        with os.scandir(series.path) as files:
                            for entry in files:
                                if entry.name.endswith(".dcm"):
                                    yield entry.path
                    except FileNotFoundError:
                        continue


def reconcile(root: str, index: Catalog, since: float, until: float | None = None,
              files: FileCheck | None = None, digest_algorithm: str = DEFAULT_DIGEST) -> int:
    """Index every instance file modified since ``since`` (and not after ``until``) that
    the index does not describe: no row, a row for another copy (its size or generation
    differ) or for another path. Records are built from the files and applied through
    the same rules as journalled ones (``files``; by default the root with the
    ``overwrite`` policy), so a file that lost to a newer copy elsewhere is moved away
    rather than indexed; their digests are by ``digest_algorithm`` (the node's).
    Returns how many records were offered."""
    files = files if files is not None else FileCheck(root)
    pending: list[InstanceRecord] = []
    written = 0
    for path in _recent_files(root, since):
        uid = os.path.basename(path)[: -len(".dcm")]
        try:
            st = os.stat(path)
            if until is not None and st.st_mtime > until:
                continue
            row = index.get(uid)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if row is not None and row.path == relative and files.matches(row, st):
                continue
            pending.append(record_from_file(root, path, digest_algorithm))
        except (OSError, NotDicomError) as exc:
            log.warning("cannot index %s: %s", path, exc)
            continue
        if len(pending) >= _BATCH:
            index.apply(pending, files=files)
            written += len(pending)
            pending = []
    if pending:
        index.apply(pending, files=files)
        written += len(pending)
    return written


def _open_files(pids: Iterable[int]) -> set[str]:
    """Paths the given processes hold open (from /proc)."""
    held = set()
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(directory)
        except OSError:
            continue
        for fd in fds:
            try:
                held.add(os.readlink(os.path.join(directory, fd)))
            except OSError:
                continue
    return held


def sweep_orphan_temp(root: str, live_pids: Iterable[int], before: float) -> int:
    """Remove the temporary files of a worker that died at ``before`` (Unix time).

    ``storage.sweep_temp`` at start cleans everything; while other workers run, a file
    is a dead worker's when no live worker holds it open and it was last written before
    the death. (A live writer closes its file and renames it in the same breath, so a
    closed file older than the death is not a live one's; call this a second or more
    after the death.) Returns how many were removed.
    """
    directory = os.path.realpath(os.path.join(root, TEMP_DIR))  # /proc links are resolved
    held = _open_files(live_pids)
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.path in held or entry.stat(follow_symlinks=False).st_mtime >= before:
                continue
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed
