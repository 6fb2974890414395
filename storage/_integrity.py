"""Keeping the index true to the files: generations, file checks, and which copy wins.

Theory of operation: several workers publish and journal on their own, and each
journal reaches the index on its own, so the order in which records are applied need
not be the order in which files replaced each other. The invariant, once the node is
quiet (and after any crash and restart):

    every row's file exists at its path and is the file the row describes (size,
    digest, attributes); every instance file has exactly one row.

It holds by construction, not by timing:

* **Generations.** Every publish takes a new, larger ``generation`` (nanoseconds,
  :class:`Generations`) and stamps it on the file as its modification time before the
  file becomes visible, so the file itself says which copy it is.
* **The disk decides between copies at one path.** Copies of one SOP instance with the
  same Study/Series UIDs replace each other by ``rename(2)``; whichever was renamed
  last *is* the instance. A record is applied over an existing row only if its file is
  the one at its path now (:meth:`FileCheck.is_current`: size and generation, i.e.
  mtime, of the file). The record of the copy renamed last is journalled after that
  rename, so it is checked when no other copy can replace it any more and always
  passes; every later application of another copy's record fails the check.
* **The generation decides between copies at two paths** (the instance re-sent with
  other Study/Series UIDs): with ``overwrite`` the newer copy wins, with ``keep`` and
  ``reject`` the first one. The losing file is moved out of the instance tree to
  ``<root>/.superseded/`` (:meth:`FileCheck.supersede`), never deleted.
* A record for an instance the index does not know yet is inserted without a file
  check (the common case costs nothing); if it was stale, the current copy's record
  follows and replaces it.

A catalog calls :func:`resolve` inside its write transaction, which serialises every
application, so no two checks interleave. Crashes are covered by replay (the journal
re-applies the same records with the same checks) and by recovery, which builds records
from files and applies them through the same rules (``workers/recovery.py``).
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from ._digest import new_digest
from ._record import InstanceRecord

__all__ = ["Generations", "FileCheck", "resolve", "SUPERSEDED_DIR", "file_generation"]

#: Where copies that lost to another copy of the same instance are moved.
SUPERSEDED_DIR = ".superseded"
# Read size when a file's digest must settle a comparison (coarse timestamps only).
_READ = 1 << 20


class Generations:
    """A process's source of publish generations: strictly increasing nanoseconds of
    the wall clock (a clock stepped back still gives larger values than before)."""

    __slots__ = ("_last", "_lock")

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        now = time.time_ns()
        with self._lock:
            value = now if now > self._last else self._last + 1
            self._last = value
        return value


def file_generation(st: os.stat_result) -> int:
    """The generation a stored file carries (its mtime in nanoseconds)."""
    return st.st_mtime_ns


def _probe_precision(directory: str) -> int:
    """The file system's timestamp precision in nanoseconds, found by stamping a
    temporary file with a value that has every digit set and reading it back."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"precision-{os.getpid()}-{threading.get_ident()}.probe")
    stamp = 1_700_000_000_123_456_789
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.utime(fd, ns=(stamp, stamp))
        got = os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # swept from .tmp meanwhile
    for precision in (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000,
                      100_000_000, 1_000_000_000):
        if stamp - stamp % precision == got:
            return precision
    return 2_000_000_000  # FAT-like: two-second timestamps


class FileCheck:
    """The storage root as the authority on which copy of an instance is current.

    ``policy`` is the node's duplicate policy (which copy wins between two paths).
    """

    def __init__(self, root: str | os.PathLike[str], policy: str = "overwrite") -> None:
        self.root = os.fspath(root)
        self.policy = policy
        self._precision: int | None = None

    @property
    def precision(self) -> int:
        """Timestamp precision of the storage's file system, in nanoseconds."""
        if self._precision is None:
            self._precision = _probe_precision(os.path.join(self.root, ".tmp"))
        return self._precision

    def path(self, record: InstanceRecord) -> str:
        return os.path.join(self.root, record.path)

    def stat(self, record: InstanceRecord) -> os.stat_result | None:
        try:
            return os.stat(self.path(record))
        except FileNotFoundError:
            return None

    def matches(self, record: InstanceRecord, st: os.stat_result) -> bool:
        """Whether ``st`` (of the file at the record's path) is the record's file."""
        if st.st_size != record.size:
            return False
        if record.generation == 0:
            return True  # a record from before generations: size is all there is
        precision = self.precision
        mtime = st.st_mtime_ns
        if precision == 1:
            return mtime == record.generation
        if mtime != record.generation - record.generation % precision:
            return False
        # The file system cannot tell copies apart within its timestamp precision.
        return self._digest_matches(record)

    def is_current(self, record: InstanceRecord) -> bool:
        """Whether the file at ``record.path`` is the copy ``record`` describes."""
        st = self.stat(record)
        return st is not None and self.matches(record, st)

    def _digest_matches(self, record: InstanceRecord) -> bool:
        from ._part10 import read_file_meta

        try:
            digest = new_digest(record.digest_algorithm)
        except ValueError:
            return True  # an algorithm this version does not know: size and coarse time decide
        try:
            with open(self.path(record), "rb") as fp:
                read_file_meta(fp)
                while chunk := fp.read(_READ):
                    digest.update(chunk)
        except (OSError, ValueError):
            return False
        return digest.hexdigest() == record.digest

    def supersede(self, record: InstanceRecord) -> bool:
        """Move ``record``'s file out of the instance tree, to ``.superseded/``, if it is
        still the file at its path; True when moved.

        A publisher may rename a newer copy onto the same path at any moment, so the
        file is first moved away, then checked; a copy that turns out not to be the
        record's goes back (``link``, which never clobbers an even newer one; if one came
        meanwhile, it wins, and the moved copy rightly stays superseded).
        """
        source = self.path(record)
        target_dir = os.path.join(self.root, SUPERSEDED_DIR)
        os.makedirs(target_dir, exist_ok=True)
        # A name of its own: rename(2) would replace an earlier superseded copy.
        target = os.path.join(
            target_dir, f"{record.sop_instance_uid}.{record.generation}.{secrets.token_hex(8)}.dcm"
        )
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return False
        st = os.stat(target)
        if self.matches(record, st):
            return True
        try:
            os.link(target, source)
        except FileExistsError:
            return False  # a newer copy took the path meanwhile: this one lost anyway
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.rename(target, source)  # no hard links here: put it back as it was
            return False
        os.unlink(target)
        return False


def _wins_over(new: InstanceRecord, old: InstanceRecord, policy: str) -> bool:
    """Between copies at two paths: does ``new`` replace ``old``? Overwrite keeps the
    newer generation; keep and reject keep the first one."""
    if policy == "overwrite":
        return (new.generation, new.path) > (old.generation, old.path)
    return (new.generation, new.path) < (old.generation, old.path)


def resolve(
    records: Sequence[InstanceRecord],
    existing: Mapping[str, InstanceRecord],
    files: FileCheck,
) -> tuple[list[InstanceRecord], list[InstanceRecord]]:
    """Decide a batch against the rows it meets: the records to write (in order, a later
    one for the same instance replacing an earlier one) and the records whose files lost
    to another copy and must be moved away. ``existing`` holds the catalog's current row
    of every instance in the batch that has one. See the module docstring for the rules.
    """
    current: dict[str, InstanceRecord] = dict(existing)
    written: dict[str, InstanceRecord] = {}
    superseded: list[InstanceRecord] = []
    for record in records:
        uid = record.sop_instance_uid
        row = current.get(uid)
        if row is None:
            current[uid] = written[uid] = record
            continue
        if row == record:
            continue  # a replay of what the row already says
        if not files.is_current(record):
            continue  # another copy replaced this one at its path; its record decides
        if row.path == record.path:
            current[uid] = written[uid] = record
            continue
        if _wins_over(record, row, files.policy):
            if files.is_current(row):
                superseded.append(row)
            current[uid] = written[uid] = record
        else:
            superseded.append(record)
    return list(written.values()), superseded


def uids(records: Iterable[InstanceRecord]) -> list[str]:
    """The distinct SOP Instance UIDs of ``records``, in first-seen order."""
    return list(dict.fromkeys(r.sop_instance_uid for r in records))
