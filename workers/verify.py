"""``scpfleet verify``: check that the index and the storage root agree, and repair it.

Theory of operation: :func:`verify` walks every instance file under the root
(``<study>/<series>/<sop>.dcm``; ``.tmp``, ``.journal`` and ``.superseded`` are not
instances) and every row of the catalog, and reports each disagreement with the
invariant of ``storage/_integrity.py``:

- ``missing``: a row whose file is not at its path;
- ``mismatch``: a row whose file is another copy (its size or generation differ);
- ``damaged``: with ``digests``, a row whose file is that copy but whose data set no
  longer hashes to the row's digest (the bytes changed on disk);
- ``unindexed``: an instance file no row describes;
- ``duplicate``: a second file of an instance at another path.

:func:`repair` (run with the node stopped: it takes the storage root's lock) fixes what
the files can settle: records are rebuilt from the files and applied through the same
rules as journalled ones, so each path's file wins at its path and the duplicate
policy decides between paths (the loser is moved to ``.superseded``); a row whose file
is gone is restored from ``.superseded`` when the very copy is there, else removed.
Damaged files are reported, never "repaired": the row's digest is what was received.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from storage import (
    DEFAULT_DIGEST,
    QUARANTINE_DIR,
    SUPERSEDED_DIR,
    Catalog,
    FileCheck,
    InstanceRecord,
    NotDicomError,
    is_valid_uid,
    new_digest,
    read_file_meta,
)

from .recovery import record_from_file

__all__ = ["Report", "verify", "repair", "RepairSummary", "lock_root", "RootBusy"]

# Read size when hashing files for --digests.
_READ = 1 << 20
# Rebuilt records are applied in batches of this many.
_BATCH = 500
# Progress is reported every this many files or rows.
_PROGRESS_EVERY = 10_000


@dataclass
class Report:
    """What :func:`verify` found; each list holds relative paths or SOP Instance UIDs."""

    files: int = 0
    rows: int = 0
    missing: list[str] = field(default_factory=list)
    mismatch: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (len(self.missing) + len(self.mismatch) + len(self.damaged) + len(self.unindexed)
                + len(self.duplicate) + len(self.unreadable))

    def as_dict(self) -> dict[str, object]:
        return {"files": self.files, "rows": self.rows, "problems": self.problems,
                **{k: getattr(self, k) for k in ("missing", "mismatch", "damaged", "unindexed",
                                                   "duplicate", "unreadable")}}


class RootBusy(Exception):
    """The storage root is in use by a running node."""


def lock_root(root: str) -> int:
    """Take the storage root's lock (as a node does) or raise :class:`RootBusy`; the
    returned descriptor holds it until closed."""
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RootBusy(f"storage {root} is in use by a running node: stop it first") from None
    return fd


def instance_files(root: str) -> Iterator[tuple[str, str]]:
    """``(sop_instance_uid, relative path)`` of every instance file under ``root``:
    ``<study>/<series>/<SOP>.dcm`` and ``quarantine/<SOP>.dcm``."""
    try:
        with os.scandir(os.path.join(root, QUARANTINE_DIR)) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".dcm") and entry.is_file(follow_symlinks=False):
                    yield name[:-4], f"{QUARANTINE_DIR}/{name}"
    except FileNotFoundError:
        pass
    with os.scandir(root) as studies:
        for study in studies:
            if not is_valid_uid(study.name) or not study.is_dir(follow_symlinks=False):
                continue
            with os.scandir(study.path) as series_dirs:
                for series in series_dirs:
                    if not is_valid_uid(series.name) or not series.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(series.path) as entries:
                        for entry in entries:
                            name = entry.name
                            if name.endswith(".dcm") and entry.is_file(follow_symlinks=False):
                                yield name[:-4], f"{study.name}/{series.name}/{name}"


def _digest_of(path: str, algorithm: str) -> str | None:
    """The digest of the data set in ``path`` by ``algorithm`` (None: an algorithm this
    version does not know)."""
    try:
        digest = new_digest(algorithm)
    except ValueError:
        return None
    with open(path, "rb") as fp:
        read_file_meta(fp)
        while chunk := fp.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def verify(
    root: str,
    catalog: Catalog,
    files: FileCheck,
    *,
    digests: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Compare every row with its file and every file with its row (see the module doc)."""
    report = Report()
    on_disk: dict[str, list[str]] = {}
    for uid, relative in instance_files(root):
        on_disk.setdefault(uid, []).append(relative)
        report.files += 1
        if progress is not None and report.files % _PROGRESS_EVERY == 0:
            progress(f"{report.files} files walked")
    described: set[str] = set()
    for row in catalog.find({}):
        report.rows += 1
        if progress is not None and report.rows % _PROGRESS_EVERY == 0:
            progress(f"{report.rows} rows checked")
        st = files.stat(row)
        if st is None:
            report.missing.append(row.sop_instance_uid)
            continue
        described.add(row.path)
        if not files.matches(row, st):
            report.mismatch.append(row.path)
            continue
        if digests:
            try:
                found = _digest_of(files.path(row), row.digest_algorithm)
            except (OSError, NotDicomError):
                report.unreadable.append(row.path)
                continue
            if found is not None and found != row.digest:
                report.damaged.append(row.path)
    for uid, paths in on_disk.items():
        for relative in paths:
            if relative in described:
                continue
            row = catalog.get(uid)
            if row is None:
                report.unindexed.append(relative)
            else:
                report.duplicate.append(relative)
    return report


@dataclass
class RepairSummary:
    reindexed: int = 0
    restored: int = 0
    removed: int = 0
    unreadable: list[str] = field(default_factory=list)


def _restore(root: str, row: InstanceRecord, files: FileCheck) -> bool:
    """Put the row's very copy back from ``.superseded`` (a crash mid-supersede)."""
    directory = os.path.join(root, SUPERSEDED_DIR)
    prefix = f"{row.sop_instance_uid}.{row.generation}."
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except FileNotFoundError:
        return False
    for name in names:
        candidate = os.path.join(directory, name)
        if files.matches(row, os.stat(candidate)):
            target = files.path(row)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(candidate, target)
            except FileExistsError:
                return False
            os.unlink(candidate)
            return True
    return False


def repair(root: str, catalog: Catalog, files: FileCheck, report: Report,
           digest_algorithm: str = DEFAULT_DIGEST) -> RepairSummary:
    """Fix what :func:`verify` reported that the files can settle (see the module doc);
    rebuilt records carry digests by ``digest_algorithm`` (the node's)."""
    summary = RepairSummary()
    gone = []
    for uid in report.missing:
        row = catalog.get(uid)
        if row is None:
            continue
        if _restore(root, row, files):
            summary.restored += 1
        else:
            gone.append(uid)
    if gone:
        summary.removed = catalog.remove(gone)
    pending: list[InstanceRecord] = []
    for relative in (*report.mismatch, *report.unindexed, *report.duplicate):
        try:
            pending.append(record_from_file(root, os.path.join(root, relative), digest_algorithm))
        except (OSError, NotDicomError):
            summary.unreadable.append(relative)
            continue
        if len(pending) >= _BATCH:
            catalog.apply(pending, files=files)
            summary.reindexed += len(pending)
            pending = []
    if pending:
        catalog.apply(pending, files=files)
        summary.reindexed += len(pending)
    return summary


def print_progress(text: str) -> None:
    sys.stderr.write(f"scpfleet verify: {text}\n")
