"""Writing received instances to disk, and publishing them durably.

Theory of operation: the network core hands over a C-STORE's command and then its data
set as fragments; this module decides everything about files. An
:class:`InstanceWriter` streams one instance into a temporary file under
``<root>/.tmp/`` -- File Meta Information first (PS3.10 7.1), then the data set bytes
exactly as received -- while a :class:`~storage.MetadataExtractor` and the configured
content digest (:mod:`storage._digest`) watch them go by. Nothing is ever buffered
whole: small fragments are gathered up to 64 KiB so that the File Meta and a small
data set reach the file in one ``write``, large ones are written as they come.

The steady state costs a store no system call it can avoid: temporary names come from
a per-process counter, not from the kernel's random source; the study and series
directories are made once per process and remembered (made again where one turns out
to be gone); their identity is examined (``stat``) only when the durability syncs
them; the File Meta of a (SOP class, transfer syntax, AE titles) is encoded once.
What is left per instance: open, write, the generation stamp, close, rename and the
journal append.

Publishing is three steps so a caller can batch them: :meth:`InstanceWriter.finish`
validates (the data set must be the instance the command announced, with valid Study
and Series Instance UIDs) and creates the directories; then, off the event loop, the
file is fsynced, renamed (or linked, to never clobber) to
``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and the
directories are fsynced; finally the record is appended to the journal, which makes it
reach the index whatever crashes next. :class:`Publisher` runs these steps for an
asyncio worker without blocking its loop, one instance at a time (``fsync``), as group
commits (``batch``), or inline without syncing (``none``).

Names on disk are made only of UIDs that pass :func:`is_valid_uid` (digits and dots,
PS3.5 9.1), so no peer-supplied text can reach a path. Every failure ends with the
temporary file unlinked and a :class:`StoreRefused` saying
which :class:`Refusal` kind it is; the caller answers accordingly and keeps serving.
Storage defines no product identity: the Implementation Class UID and Version Name
written into every file come from the :class:`StorageConfig`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import msgspec

from ._journal import JournalError, JournalWriter
from ._digest import DEFAULT_DIGEST, DIGEST_ALGORITHMS, DigestAlgorithm, new_digest
from ._meta import MetadataExtractor
from ._part10 import FileMetaTemplate, StorageError, build_file_meta
from ._integrity import Generations
from ._ports import Refusal, StoreRefused
from ._record import InstanceRecord

__all__ = [
    "StorageConfig",
    "InstanceWriter",
    "Publisher",
    "is_valid_uid",
    "sweep_temp",
    "publish_now",
    "fsync_dir",
    "DurableDirs",
    "WriterStateError",
    "TEMP_DIR",
]

TEMP_DIR = ".tmp"
#: Where instances without a valid Study/Series Instance UID are kept (``incomplete``
#: ``quarantine``): a plain directory of the root, ``<SOPInstanceUID>.dcm`` each.
QUARANTINE_DIR = "quarantine"

# PS3.5 9.1: components are digits without leading zeros (except "0"), joined by dots.
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
# PS3.5 9.1: a UID is at most 64 characters.
_MAX_UID = 64
# link(2) errors meaning "this file system has no hard links" (vfat, some FUSE and SMB mounts).
_NO_HARD_LINKS = frozenset((errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP))
# PS3.5 Table 6.2-1: an AE title is at most 16 characters.
_MAX_AE = 16
#: This process's publish generations (one strictly increasing sequence per process).
_GENERATIONS = Generations()


def is_valid_uid(uid: object) -> bool:
    """True for a UID per PS3.5 9.1: 1..64 chars, digits and dots, no empty component,
    no leading zero in a component other than "0" itself. Only such strings become names.
    """
    return isinstance(uid, str) and 0 < len(uid) <= _MAX_UID and _UID.fullmatch(uid) is not None


def _ae_or_none(ae: str) -> str | None:
    """An AE title fit for File Meta (PS3.5 Table 6.2-1 AE), or None to leave it out."""
    ae = ae.strip(" ")
    if 0 < len(ae) <= _MAX_AE and ae.isascii() and ae.isprintable() and "\\" not in ae:
        return ae
    return None


class WriterStateError(StorageError, RuntimeError):
    """An :class:`InstanceWriter` method was called out of order (a caller bug)."""


class StorageConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Storage settings, passed to every writer and publisher (never module globals).

    - ``root``: directory holding ``<study>/<series>/<sop>.dcm``, ``.tmp/``, ``.journal/``.
    - ``durability``:
      ``"fsync"`` -- each instance's file and directories are fsynced and its journal
      frame fdatasynced before the C-STORE is answered (survives power loss);
      ``"batch"`` -- the same guarantee, with the instances that finish while a group
      commit is under way committed together as the next group (at most
      ``batch_max``; a group starts at once when none is under way, or
      ``batch_window_ms`` after its first instance when that is set): one executor
      job, one fsync per distinct directory, one journal fdatasync per group;
      ``"none"`` -- rename only, no syncing (survives a process crash, not power loss).
    - ``duplicate_policy`` when the final path already exists:
      ``"overwrite"`` -- the new file replaces it atomically (rename);
      ``"keep"`` -- the stored file stays, the new one is discarded, success answered;
      ``"reject"`` -- the new one is discarded and refused (:attr:`Refusal.DUPLICATE`).
    - ``implementation_class_uid`` / ``implementation_version_name`` (required): (0002,0012)
      and (0002,0013) of the files written (PS3.10 7.1); the product's one identity,
      which the caller passes (the node passes the engine's, so files and the wire agree).
    - ``max_meta_inflate``: data set bytes the metadata extractor examines at most
      (after inflation when deflated); see :class:`~storage.MetadataExtractor`.
    - ``file_mode`` / ``dir_mode``: permissions of new files and directories.
    - ``digest``: the content digest of every data set, computed while it streams in
      and kept in its record: ``"xxh3-128"`` (fast; detects accidental corruption, not
      tampering) or ``"sha256"`` (also tampering, when the index is trusted); see
      :mod:`storage._digest`.
    - ``incomplete``: what becomes of a data set without a valid Study or Series
      Instance UID (the path is made of them): ``"refuse"`` it
      (:attr:`Refusal.DATASET_MISMATCH`), or ``"quarantine"`` it as
      ``<root>/quarantine/<SOPInstanceUID>.dcm``, recorded with what is known (the
      missing UIDs empty) -- legacy archives hold such files.
    """

    root: str
    durability: Literal["fsync", "batch", "none"] = "fsync"
    batch_window_ms: float = 0.0
    batch_max: int = 256
    duplicate_policy: Literal["overwrite", "keep", "reject"] = "overwrite"
    implementation_class_uid: str
    implementation_version_name: str
    max_meta_inflate: int = 1 << 20
    file_mode: int = 0o640
    dir_mode: int = 0o750
    digest: DigestAlgorithm = DEFAULT_DIGEST
    incomplete: Literal["refuse", "quarantine"] = "refuse"

    def __post_init__(self) -> None:
        if self.durability not in ("fsync", "batch", "none"):
            raise ValueError(f"durability must be fsync, batch or none, not {self.durability!r}")
        if self.duplicate_policy not in ("overwrite", "keep", "reject"):
            raise ValueError(f"duplicate_policy must be overwrite, keep or reject, not {self.duplicate_policy!r}")
        if not self.batch_window_ms >= 0 or self.batch_max < 1:
            raise ValueError("batch_window_ms must be >= 0 and batch_max >= 1")
        if not is_valid_uid(self.implementation_class_uid):
            raise ValueError(f"implementation_class_uid is not a UID: {self.implementation_class_uid!r}")
        if self.max_meta_inflate < 1:
            raise ValueError("max_meta_inflate must be positive")
        if self.incomplete not in ("refuse", "quarantine"):
            raise ValueError(f"incomplete must be refuse or quarantine, not {self.incomplete!r}")
        if self.digest not in DIGEST_ALGORITHMS:
            raise ValueError(f"digest must be one of {', '.join(DIGEST_ALGORITHMS)}, not {self.digest!r}")
        build_file_meta("1", "1", "1", self.implementation_class_uid, self.implementation_version_name)


def _write_all(fd: int, view: memoryview) -> None:
    """``os.write`` until every byte is written (short writes are legal, POSIX write(2))."""
    done = 0
    total = len(view)
    while done < total:
        n = os.write(fd, view[done:])
        if n <= 0:
            # A regular file only writes nothing when the device has no room left.
            raise OSError(errno.ENOSPC, "write returned 0")
        done += n


def _writev_all(fd: int, first: bytearray, second: memoryview) -> None:
    """Write ``first`` then ``second`` with one ``writev(2)`` (and ``write`` for any rest)."""
    done = os.writev(fd, (first, second))
    if done < len(first):
        _write_all(fd, memoryview(first)[done:])
        _write_all(fd, second)
    elif done < len(first) + len(second):
        _write_all(fd, second[done - len(first):])


def fsync_dir(path: str) -> None:
    """fsync a directory so the entries created in it survive power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temp(root: str | os.PathLike[str], min_age_s: float = 0.0) -> int:
    """Remove leftover temporary files under ``<root>/.tmp``; return how many.

    Call at startup before any writer of ``root`` runs; a worker restarting beside live
    ones passes ``min_age_s`` (older than any store in progress) to spare their files.
    """
    directory = os.path.join(root, TEMP_DIR)
    os.makedirs(directory, exist_ok=True)
    limit = time.time() - min_age_s
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if min_age_s and entry.stat(follow_symlinks=False).st_mtime > limit:
                    continue
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
    return removed


# Per-process memory of what the writers of this process already know, so that the
# steady state costs no system call and no re-validation per instance. Each is bounded
# (peer-chosen values key them): past the bound it is emptied, which only costs the
# work it saves.
_CACHE_MAX = 1 << 16
#: (root, study UID, series UID) -> (study directory, series directory): UIDs already checked
#: and directories this process made or found (mkdir'ed once, not per instance). A
#: directory removed behind our back is made again when a rename or link into it fails
#: with ENOENT (:meth:`InstanceWriter._commit`).
_SERIES_DIRS: dict[tuple[str, str, str], tuple[str, str]] = {}
#: (SOP Class UID, transfer syntax, calling AE, called AE, implementation class UID and
#: version name) -> File Meta template: the constant parts of group 0002, built once
#: (the SOP class and transfer syntax UIDs checked then).
_META_TEMPLATES: dict[tuple[str, ...], FileMetaTemplate] = {}


class _TempNames:
    """Temporary file names without a system call: ``<pid>-<random>-<counter>.part``.

    The random part is drawn once per process (and again in a forked child), so a
    restarted worker that gets a dead one's pid never meets its leftovers' names; a
    clash is still handled by ``O_EXCL`` and the next number.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = f"{os.getpid()}-{secrets.token_hex(4)}-"
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter)}.part"


_TEMP_NAMES = _TempNames()
os.register_at_fork(after_in_child=_TEMP_NAMES.reset)

_NEW, _OPEN, _FINISHED, _PUBLISHED, _ABORTED = range(5)
#: Data set bytes gathered before a write(2): the File Meta and the first fragments of
#: a small instance go to the file in one call, larger fragments are written as they
#: come (with whatever was gathered, in one writev(2)), never copied.
_COALESCE = 64 * 1024


class InstanceWriter:
    """Streams one C-STORE's data set to a temporary file, then publishes it.

    Order: :meth:`begin`, :meth:`write` per fragment, :meth:`finish`, then publication
    by a :class:`Publisher` (or :func:`publish_now`). :meth:`abort` is safe at any time.
    Any failure raises :class:`StoreRefused` after aborting; the same refusal is raised
    again by later calls and kept in :attr:`refused`. Used as a context manager, an
    unpublished writer is aborted on exit.

    ``received_at`` (Unix time) is the caller's; when omitted, :meth:`begin` reads the
    clock. ``calling_address``: the sender's IP address as text, kept in the record.
    """

    __slots__ = (
        "config", "sop_class_uid", "sop_instance_uid", "transfer_syntax_uid", "calling_ae",
        "called_ae", "calling_address", "received_at", "refused", "duplicate", "record",
        "final_path", "temp_path", "_fd", "_state", "_size", "_hash", "_meta", "_pending",
        "_dirs", "_series", "_made",
    )

    def __init__(
        self,
        config: StorageConfig,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str,
        called_ae: str,
        *,
        received_at: float | None = None,
        calling_address: str = "",
    ) -> None:
        self.config = config
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.calling_ae = calling_ae.strip(" ")
        self.called_ae = called_ae.strip(" ")
        self.calling_address = calling_address
        self.received_at = received_at
        self.refused: StoreRefused | None = None
        #: True when ``keep`` found the instance already stored and discarded this copy.
        self.duplicate = False
        self.record: InstanceRecord | None = None
        self.final_path: str | None = None
        self.temp_path: str | None = None
        self._fd = -1
        self._state = _NEW
        self._size = 0
        self._hash = new_digest(config.digest)
        self._meta = MetadataExtractor(transfer_syntax_uid, config.max_meta_inflate)
        #: Bytes gathered and not yet written (File Meta first), or None.
        self._pending: bytearray | None = None
        #: (path, (st_dev, st_ino)) of the study and series directories, when the
        #: durability syncs them (see :class:`DurableDirs`); empty otherwise.
        self._dirs: tuple[tuple[str, tuple[int, int]], ...] = ()
        #: (study directory, series directory) once :meth:`finish` formed them.
        self._series: tuple[str, str] | None = None
        #: True when this writer made one of them (see :meth:`_make_dirs`).
        self._made = False

    @property
    def extractor(self) -> MetadataExtractor:
        return self._meta

    @property
    def size(self) -> int:
        """Bytes received so far, File Meta included (what the file will hold)."""
        return self._size

    def __enter__(self) -> InstanceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state != _PUBLISHED:
            self.abort()

    def _refuse(self, kind: Refusal, reason: str, cause: BaseException | None = None) -> StoreRefused:
        self.abort()
        self.refused = StoreRefused(kind, reason)
        self.refused.__cause__ = cause
        return self.refused

    def _check(self, state: int, what: str) -> None:
        if self.refused is not None:
            raise self.refused
        if self._state != state:
            raise WriterStateError(f"{what} called in the wrong state")

    def begin(self) -> None:
        """Check the command's UIDs, open the temporary file, prepare File Meta (PS3.10 7.1).

        The temporary file is created ``O_EXCL`` in ``<root>/.tmp``, on the same file
        system as the final paths so publishing is a rename. The File Meta is written
        with the data set's first bytes (see :meth:`write`).
        """
        self._check(_NEW, "begin()")
        if not is_valid_uid(self.sop_instance_uid):
            raise self._refuse(Refusal.INVALID_INSTANCE_UID, f"Affected SOP Instance UID is not a UID: {self.sop_instance_uid!r}")
        config = self.config
        key = (
            self.sop_class_uid,
            self.transfer_syntax_uid,
            self.calling_ae,
            self.called_ae,
            config.implementation_class_uid,
            config.implementation_version_name,
        )
        template = _META_TEMPLATES.get(key)
        if template is None:
            if not is_valid_uid(self.sop_class_uid):
                raise self._refuse(Refusal.INVALID_SOP_CLASS_UID, f"Affected SOP Class UID is not a UID: {self.sop_class_uid!r}")
            if not is_valid_uid(self.transfer_syntax_uid):
                raise self._refuse(Refusal.UNREADABLE, f"transfer syntax is not a UID: {self.transfer_syntax_uid!r}")
            calling = _ae_or_none(self.calling_ae)
            template = FileMetaTemplate(
                self.sop_class_uid,
                self.transfer_syntax_uid,
                config.implementation_class_uid,
                config.implementation_version_name,
                calling,
                sending_ae_title=calling,
                receiving_ae_title=_ae_or_none(self.called_ae),
            )
            if len(_META_TEMPLATES) >= _CACHE_MAX:
                _META_TEMPLATES.clear()
            _META_TEMPLATES[key] = template
        if self.received_at is None:
            self.received_at = time.time()
        meta = template.build(self.sop_instance_uid)
        temp_dir = f"{config.root}/{TEMP_DIR}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            for _ in range(3):
                temp_path = f"{temp_dir}/{_TEMP_NAMES.next()}"
                try:
                    self._fd = os.open(temp_path, flags, config.file_mode)
                    break
                except FileNotFoundError:
                    os.makedirs(temp_dir, mode=config.dir_mode, exist_ok=True)
                    self._fd = os.open(temp_path, flags, config.file_mode)
                    break
                except FileExistsError:
                    continue  # a leftover of an earlier process with our pid: next name
            else:
                raise FileExistsError(errno.EEXIST, "no free temporary name", temp_dir)
        except OSError as exc:
            raise self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot create temporary file: {exc}", exc) from exc
        # Only a file this writer created is ever unlinked by abort().
        self.temp_path = temp_path
        self._state = _OPEN
        self._pending = meta
        self._size = len(meta)

    def write(self, fragment: memoryview | bytes | bytearray) -> None:
        """Append a data set fragment as received.

        A fragment is written at once when it is large, together with what was
        gathered before it; a small one is gathered (copied: the caller's buffer is
        only valid during the call) until :data:`_COALESCE` bytes, and written with the
        next large fragment or by :meth:`finish`. Either way the digest and the
        metadata extractor see it now.
        """
        self._check(_OPEN, "write()")
        view = memoryview(fragment)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = len(view)
        pending = self._pending
        try:
            if pending is None:
                if n < _COALESCE:
                    self._pending = bytearray(view)
                else:
                    _write_all(self._fd, view)
            elif len(pending) + n <= _COALESCE:
                pending += view
            else:
                self._pending = None
                _writev_all(self._fd, pending, view)
        except OSError as exc:
            raise self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot write instance: {exc}", exc) from exc
        self._hash.update(view)
        self._meta.feed(view)
        self._size += n

    def _flush(self) -> None:
        pending = self._pending
        if pending:
            self._pending = None
            _write_all(self._fd, memoryview(pending))

    def finish(self) -> InstanceRecord:
        """Validate the received data set, create its directories, return its record.

        Checks, in order: the data set's (0008,0016)/(0008,0018) equal the command's
        (else :attr:`Refusal.DATASET_MISMATCH`, or :attr:`Refusal.UNREADABLE` when the
        extractor failed before finding them); (0020,000D) and (0020,000E) are valid
        UIDs (the same two kinds). Only then is a path formed. The file is not
        yet synced or visible: a :class:`Publisher` does that. Idempotent once it
        succeeded.
        """
        if self._state == _FINISHED and self.record is not None:
            return self.record
        self._check(_OPEN, "finish()")
        found = self._meta.values()
        get = found.get
        error = self._meta.error
        for label, name, expected in (
            ("SOP Class UID", "sop_class_uid", self.sop_class_uid),
            ("SOP Instance UID", "sop_instance_uid", self.sop_instance_uid),
        ):
            value = get(name)
            if value is None and error is not None:
                raise self._refuse(Refusal.UNREADABLE, f"data set unreadable before its {label}: {error}")
            if value != expected:
                raise self._refuse(
                    Refusal.DATASET_MISMATCH, f"data set {label} {value!r} differs from the command's {expected!r}"
                )
        study, series = get("study_instance_uid"), get("series_instance_uid")
        config = self.config
        relative_dir = f"{study}/{series}"
        dirs = _SERIES_DIRS.get((config.root, study, series))  # type: ignore[arg-type]
        if dirs is None:
            problem = None
            for label, uid in (("Study Instance UID", study), ("Series Instance UID", series)):
                if uid is None and error is not None:
                    raise self._refuse(Refusal.UNREADABLE, f"data set unreadable before its {label}: {error}")
                if problem is None and not is_valid_uid(uid):
                    problem = f"{label} missing or not a UID: {uid!r}"
            if problem is not None and config.incomplete != "quarantine":
                raise self._refuse(Refusal.DATASET_MISMATCH, problem)
            if problem is not None:
                # Kept, and recorded with what is known: a name from the SOP UID alone.
                study = study if is_valid_uid(study) else ""
                series = series if is_valid_uid(series) else ""
                relative_dir = QUARANTINE_DIR
                quarantine = f"{config.root}/{QUARANTINE_DIR}"
                dirs = (quarantine, quarantine)
            else:
                study_dir = f"{config.root}/{study}"
                dirs = (study_dir, f"{study_dir}/{series}")
            try:
                self._make_dirs(dirs)
            except OSError as exc:
                raise self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot create directory: {exc}", exc) from exc
            if problem is None:
                if len(_SERIES_DIRS) >= _CACHE_MAX:
                    _SERIES_DIRS.clear()
                _SERIES_DIRS[(config.root, study, series)] = dirs  # type: ignore[index]
        self._series = dirs
        self.final_path = f"{dirs[1]}/{self.sop_instance_uid}.dcm"
        try:
            self._flush()
        except OSError as exc:
            raise self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot write instance: {exc}", exc) from exc
        if config.durability != "none":
            try:
                try:
                    self._dirs = _identities(dirs)
                except FileNotFoundError:
                    self._make_dirs(dirs)  # removed behind our back
                    self._dirs = _identities(dirs)
            except OSError as exc:
                raise self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot create directory: {exc}", exc) from exc
        if config.duplicate_policy != "overwrite" and os.path.lexists(self.final_path):
            self._found_duplicate()
        # The copy's generation, stamped on the file itself as its mtime before it can
        # become visible: the index is checked against it (storage/_integrity.py).
        generation = _GENERATIONS.next()
        try:
            os.utime(self._fd, ns=(generation, generation))
        except OSError as exc:
            raise self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot stamp instance: {exc}", exc) from exc
        self.record = InstanceRecord(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            study_instance_uid=study,  # type: ignore[arg-type]
            series_instance_uid=series,  # type: ignore[arg-type]
            patient_id=get("patient_id"),
            patient_name=get("patient_name"),
            modality=get("modality"),
            study_date=get("study_date"),
            instance_number=get("instance_number"),
            transfer_syntax_uid=self.transfer_syntax_uid,
            path=f"{relative_dir}/{self.sop_instance_uid}.dcm",
            size=self._size,
            digest=self._hash.hexdigest(),
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
            received_at=float(self.received_at or 0.0),
            generation=generation,
            digest_algorithm=config.digest,
            study_time=get("study_time"),
            accession_number=get("accession_number"),
            study_id=get("study_id"),
            study_description=get("study_description"),
            referring_physician_name=get("referring_physician_name"),
            patient_birth_date=get("patient_birth_date"),
            patient_sex=get("patient_sex"),
            series_number=get("series_number"),
            series_description=get("series_description"),
            body_part_examined=get("body_part_examined"),
            calling_address=self.calling_address,
            specific_character_set=get("specific_character_set"),
        )
        self._state = _FINISHED
        return self.record

    def _make_dirs(self, dirs: tuple[str, str]) -> None:
        """Make the study and series directories where missing; remember if this
        writer made one (its parents then need a sync whatever :class:`DurableDirs`
        knows: a new directory can reuse a removed one's inode number)."""
        mode = self.config.dir_mode
        for directory in dirs:
            try:
                os.mkdir(directory, mode)
                self._made = True
            except FileExistsError:
                pass

    def _remade(self) -> None:
        """The series directory was gone (removed behind our back): make it again, and
        learn the new directories' identities so they are synced as new ones."""
        assert self._series is not None  # set by finish()
        self._make_dirs(self._series)
        if self._dirs:
            self._dirs = _identities(self._series)

    def abort(self) -> None:
        """Close and unlink the temporary file; never leaves a visible instance."""
        if self._state in (_PUBLISHED, _ABORTED):
            return
        self._state = _ABORTED
        self._pending = None
        self._close_quietly()
        if self.temp_path is not None:
            try:
                os.unlink(self.temp_path)
            except OSError:
                pass

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _close_quietly(self) -> None:
        try:
            self._close()
        except OSError:
            pass

    # The blocking publication steps; a Publisher runs them in an executor thread.

    def _sync_file(self, sync: bool) -> None:
        """fsync (when ``sync``) and close the temporary file."""
        if self._state != _FINISHED:
            raise WriterStateError("publishing a writer that has not finished")
        if sync and not self.duplicate:
            os.fsync(self._fd)
        self._close()

    def _commit(self) -> None:
        """Make the file visible at its final path.

        ``overwrite`` renames, replacing any earlier copy atomically. ``keep`` and
        ``reject`` link instead of renaming, because ``link(2)`` fails with EEXIST where
        ``rename(2)`` would silently clobber a copy stored meanwhile; the temporary name
        is then unlinked. On a file system without hard links they fall back to
        check-then-rename, which a concurrent copy of the same instance can race.
        A series directory removed since this process made it is made again (ENOENT)
        and the step retried once.
        """
        assert self.temp_path is not None and self.final_path is not None  # set by begin/finish
        policy = self.config.duplicate_policy
        if policy == "overwrite":
            try:
                os.rename(self.temp_path, self.final_path)
            except FileNotFoundError:
                self._remade()
                os.rename(self.temp_path, self.final_path)
            self._state = _PUBLISHED
            return
        if not self.duplicate:
            try:
                try:
                    os.link(self.temp_path, self.final_path)
                except FileNotFoundError:
                    self._remade()
                    os.link(self.temp_path, self.final_path)
            except FileExistsError:
                self._found_duplicate()
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                if os.path.lexists(self.final_path):
                    self._found_duplicate()
                else:
                    os.rename(self.temp_path, self.final_path)
                    self._state = _PUBLISHED
                    return
        self._state = _PUBLISHED
        try:
            os.unlink(self.temp_path)
        except OSError:
            pass  # the instance is in place; a leftover temporary name is swept at startup

    def _found_duplicate(self) -> None:
        if self.config.duplicate_policy == "reject":
            raise self._refuse(Refusal.DUPLICATE, f"SOP Instance {self.sop_instance_uid} already stored")
        self.duplicate = True

    def _io_failure(self, exc: OSError | JournalError) -> StoreRefused:
        if self._state == _PUBLISHED:
            # The file is visible but its durability or journal entry is not assured;
            # the peer is told to retry, which stores it again.
            self.refused = StoreRefused(Refusal.OUT_OF_RESOURCES, f"cannot make instance durable: {exc}")
            self.refused.__cause__ = exc
            return self.refused
        return self._refuse(Refusal.OUT_OF_RESOURCES, f"cannot publish instance: {exc}", exc)


def _identities(dirs: tuple[str, str]) -> tuple[tuple[str, tuple[int, int]], ...]:
    """(path, (st_dev, st_ino)) of the study and series directories."""
    out = []
    for directory in dirs:
        st = os.stat(directory)
        out.append((directory, (st.st_dev, st.st_ino)))
    return tuple(out)


class DurableDirs:
    """Directories whose entry in their parent is known, in this process, to be synced.

    A new file's entry lives in its series directory, which is always fsynced; the
    series directory's entry lives in the study directory, and the study directory's in
    the root. Those two parents only need an fsync until one publish has synced them,
    so this cache remembers ``(st_dev, st_ino)`` per path: a directory deleted and made
    again elsewhere has a new identity and is synced again. A writer that made a
    directory itself has all three synced whatever the cache says (the new directory
    may have been given the removed one's inode number). Unknown means "sync", so the
    cache is only an optimisation, shared by a :class:`Publisher`'s threads (set
    operations are atomic under the GIL).
    """

    # Enough for every study and series a busy worker touches in hours; past it the
    # cache is emptied, which only costs a few extra directory fsyncs.
    _MAX_ENTRIES = 1 << 16

    def __init__(self) -> None:
        self._known: set[tuple[str, tuple[int, int]]] = set()

    def to_sync(self, writer: InstanceWriter) -> list[str]:
        """Directories to fsync for ``writer``'s file to be durable."""
        study, series = writer._dirs
        if writer._made:
            return [series[0], study[0], writer.config.root]
        needed = [series[0]]
        if series not in self._known:
            needed.append(study[0])
        if study not in self._known:
            needed.append(writer.config.root)
        return needed

    def learn(self, writer: InstanceWriter) -> None:
        """``writer``'s directories were all synced."""
        if len(self._known) > self._MAX_ENTRIES:
            self._known.clear()
        self._known.update(writer._dirs)


def publish_now(
    writer: InstanceWriter, journal: JournalWriter | None = None, durable: DurableDirs | None = None
) -> InstanceRecord:
    """Publish one finished writer synchronously (blocking), per its config's durability.

    ``fsync`` and ``batch`` (a group of one): fsync the file, rename it into place,
    fsync its directories (all three levels unless ``durable`` knows better), append
    the journal frame and fdatasync it. ``none``: rename and append, nothing synced.
    Returns the record; raises :class:`StoreRefused`.
    """
    record = writer.finish()
    sync = writer.config.durability != "none"
    try:
        writer._sync_file(sync)
        writer._commit()
        if sync and not writer.duplicate:
            for directory in (durable or DurableDirs()).to_sync(writer):
                fsync_dir(directory)
            if durable is not None:
                durable.learn(writer)
        if journal is not None and not writer.duplicate:
            journal.append_many((record,))
            if sync:
                journal.sync()
    except (OSError, JournalError) as exc:
        raise writer._io_failure(exc) from exc
    return record


#: Threads that sync a group's files (then directories) at once: enough for the device
#: queue to merge flushes, few enough that a worker's threads stay cheap.
_FANOUT_THREADS = 8
#: A group's syncs go to several threads once doing them one after the other would take
#: longer than this (a slow device, or a large group): then the device can merge them,
#: and a group takes the time of a few syncs whatever its size. Below it the hand-offs
#: between threads (each a wait for the GIL) cost more CPU and time than they save:
#: measured, a group of two on a 0.3 ms device took four times the futex calls of
#: doing them in turn.
_PARALLEL_AFTER_S = 0.005
#: Weight of the latest group in the running estimate of one sync's duration.
_SYNC_EWMA = 0.2

#: Group commits under way at once (``batch``), and the size under which a group in
#: flight lets the next one start beside it rather than wait: with two or three
#: associations per worker, waiting would serialise their commits (each instance
#: waiting out another's), which fsync's parallel threads do not; with more, waiting
#: is what makes groups grow. Measured on 2 workers: 4 associations went from 0.9x to
#: parity with fsync; 1, 16 and 64 associations unchanged or better.
_MAX_GROUPS = 2
_SMALL_GROUP = 4

_T = TypeVar("_T")
_R = TypeVar("_R")


class _FanOut:
    """Runs one group's syncs (a function over a list) serially or from several threads,
    whichever the durations seen so far say is quicker (see :data:`_PARALLEL_AFTER_S`).
    Results keep the order of the items. Shared by a publisher's committer threads (the
    estimate is a hint: a lost update only delays its adapting)."""

    def __init__(self, threads: int = _FANOUT_THREADS) -> None:
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: Running estimate of one sync's duration, in seconds.
        self.sync_s = 0.0

    def map(self, fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        n = len(items)
        started = time.perf_counter()
        if n < 2 or n * self.sync_s < _PARALLEL_AFTER_S:
            out = [fn(item) for item in items]
            rounds = n
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._threads, thread_name_prefix="scpfleet-fsync"
                )
            k = min(self._threads, n)
            parts = list(self._pool.map(lambda part: [fn(item) for item in part], [items[i::k] for i in range(k)]))
            out = [None] * n  # type: ignore[list-item]
            for i, part in enumerate(parts):
                out[i::k] = part
            rounds = -(-n // k)
        if rounds:
            self.sync_s += _SYNC_EWMA * ((time.perf_counter() - started) / rounds - self.sync_s)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _commit_group(
    writers: list[InstanceWriter],
    journal: JournalWriter | None,
    durable: DurableDirs,
    fanout: _FanOut | None = None,
) -> list[InstanceRecord | StoreRefused]:
    """One group commit (``batch`` durability): every file fsynced, then every rename
    (in the order given: between copies of one instance the policy's first is the first
    submitted), then one fsync per distinct directory, then one journal append and
    fdatasync. Errors are per instance; a directory or journal failure refuses the
    instances it covers. A group of one is :func:`publish_now`.

    With ``fanout``, the files' fsyncs and then the directories' fsyncs are issued
    concurrently from its threads where that pays (:class:`_FanOut`), so the file system
    can merge them into few journal commits instead of one per file or directory.
    """

    if len(writers) == 1:
        try:
            return [publish_now(writers[0], journal, durable)]
        except StoreRefused as refused:
            return [refused]

    def sync_one(writer: InstanceWriter) -> StoreRefused | None:
        try:
            writer._sync_file(True)
        except OSError as exc:
            return writer._io_failure(exc)
        return None

    def sync_dir(directory: str) -> OSError | None:
        try:
            fsync_dir(directory)
        except OSError as exc:
            return exc
        return None

    results: list[InstanceRecord | StoreRefused | None] = (
        fanout.map(sync_one, writers) if fanout is not None else [sync_one(w) for w in writers]  # type: ignore[arg-type]
    )
    for i, writer in enumerate(writers):
        if results[i] is None:
            try:
                writer._commit()
            except StoreRefused as refused:
                results[i] = refused
            except OSError as exc:
                results[i] = writer._io_failure(exc)
    by_dir: dict[str, list[int]] = {}
    for i, writer in enumerate(writers):
        if results[i] is None and not writer.duplicate:
            for directory in durable.to_sync(writer):
                by_dir.setdefault(directory, []).append(i)
    directories = list(by_dir)
    failures = fanout.map(sync_dir, directories) if fanout is not None else [sync_dir(d) for d in directories]
    for directory, exc in zip(directories, failures):
        if exc is not None:
            for i in by_dir[directory]:
                if results[i] is None:
                    results[i] = writers[i]._io_failure(exc)
    for i, writer in enumerate(writers):
        if results[i] is None and not writer.duplicate:
            durable.learn(writer)
    journalled = [i for i, w in enumerate(writers) if results[i] is None and not w.duplicate]
    if journal is not None and journalled:
        try:
            journal.append_many([r for i in journalled if (r := writers[i].record) is not None])
            journal.sync()
        except (OSError, JournalError) as exc:
            for i in journalled:
                results[i] = writers[i]._io_failure(exc)
    out: list[InstanceRecord | StoreRefused] = []
    for writer, result in zip(writers, results):
        if result is None:
            assert writer.record is not None  # finish() succeeded before grouping
            result = writer.record
        out.append(result)
    return out




class Publisher:
    """Publishes finished writers for an asyncio worker without blocking its loop.

    ``fsync``: each publish runs :func:`publish_now` in ``executor`` (the loop's default
    executor when None). Threads are used because fsync, rename and fdatasync have no
    non-blocking form asyncio can await, each can take milliseconds, and they release
    the GIL, so a few threads overlap them for real. ``none``: rename and journal
    append inline.

    ``batch`` is group commit, by committer threads of the publisher's own: a publish
    that finds no group under way starts one at once (after ``batch_window_ms`` when
    that is set), so a lone instance waits for nothing; what is submitted while a group
    is being committed gathers and goes as the next group the moment it lands, so
    groups grow by themselves with the load and with the device's sync time. A second
    group may start beside a small one (:data:`_SMALL_GROUP`), so that two or three
    associations do not take turns. A group holds at most ``batch_max``. Within a group, files and directories are synced
    concurrently when that pays (:class:`_FanOut`) and the journal once. Per instance
    this costs less than ``fsync`` (one executor hand-off, directory and journal syncs
    per group), which is why it never falls behind it.

    The journal append happens after the rename and before ``publish`` returns, with
    the durability of the instance (one fdatasync per group under ``batch``).
    """

    def __init__(
        self,
        config: StorageConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        journal: JournalWriter | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.config = config
        self._loop = loop
        self._journal = journal
        self._executor = executor
        self._pending: list[tuple[InstanceWriter, asyncio.Future[InstanceRecord]]] = []
        self._timer: asyncio.TimerHandle | None = None
        #: The group commits under way (``batch``): each one's size, by the future that
        #: is done when it has landed.
        self._inflight: dict[asyncio.Future[None], int] = {}
        self._durable = DurableDirs()
        batch = config.durability == "batch"
        #: The threads committing groups (``batch`` only; one per group under way). Its
        #: own, not ``executor``: they report a group's outcome straight to the loop, one
        #: wake-up per group, where an executor job's future adds one more.
        self._committer = (
            concurrent.futures.ThreadPoolExecutor(max_workers=_MAX_GROUPS, thread_name_prefix="scpfleet-commit")
            if batch
            else None
        )
        #: Threads that issue a group's syncs concurrently when that pays (``batch``
        #: only), a pool apart from the committer, which waits for them.
        self._fanout = _FanOut() if batch else None
        #: Group commits started (``batch``); for metrics and tests.
        self.groups = 0

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def submit(self, writer: InstanceWriter) -> InstanceRecord | asyncio.Future[InstanceRecord]:
        """Finish (if needed) and start publishing ``writer``.

        ``none`` publishes inline and returns the record; ``fsync`` and ``batch`` return
        a future of it, done once it is durable. Raises (or the future raises)
        :class:`StoreRefused`; the writer is then aborted (or, if the failure came after
        the rename, left visible and refused so the peer sends it again). Cancelling
        the future does not stop a publication already handed to a thread.
        """
        writer.finish()
        durability = self.config.durability
        if durability == "none":
            return publish_now(writer, self._journal)
        loop = self._get_loop()
        if durability == "fsync":
            return loop.run_in_executor(self._executor, publish_now, writer, self._journal, self._durable)
        future: asyncio.Future[InstanceRecord] = loop.create_future()
        self._pending.append((writer, future))
        if self._room():
            window = self.config.batch_window_ms
            if not window or len(self._pending) >= self.config.batch_max:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(window / 1000.0, self._flush)
        return future

    async def publish(self, writer: InstanceWriter) -> InstanceRecord:
        """:meth:`submit` ``writer`` and return its record once durable."""
        result = self.submit(writer)
        if isinstance(result, InstanceRecord):
            return result
        return await result

    def _flush(self) -> None:
        """Start the next group (the oldest ``batch_max`` pending) if there is room."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or not self._room():
            return
        limit = self.config.batch_max
        group, self._pending = self._pending[:limit], self._pending[limit:]
        self.groups += 1
        loop = self._get_loop()
        landed = loop.create_future()
        self._inflight[landed] = len(group)
        assert self._committer is not None  # batch durability
        self._committer.submit(self._commit, loop, group, landed)

    def _room(self) -> bool:
        """Whether a group may start now: none is under way, or only small ones."""
        inflight = self._inflight
        return not inflight or (len(inflight) < _MAX_GROUPS and max(inflight.values()) < _SMALL_GROUP)

    def _commit(
        self,
        loop: asyncio.AbstractEventLoop,
        group: list[tuple[InstanceWriter, asyncio.Future[InstanceRecord]]],
        landed: asyncio.Future[None],
    ) -> None:
        """In a committer thread: commit ``group``, report to the loop."""
        results: list[InstanceRecord | StoreRefused] | None = None
        failure: BaseException | None = None
        try:
            results = _commit_group([writer for writer, _ in group], self._journal, self._durable, self._fanout)
        except BaseException as exc:  # reported to each publish, never lost in the thread
            failure = exc
        try:
            loop.call_soon_threadsafe(self._landed, group, results, failure, landed)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for these any more

    def _landed(
        self,
        group: list[tuple[InstanceWriter, asyncio.Future[InstanceRecord]]],
        results: list[InstanceRecord | StoreRefused] | None,
        failure: BaseException | None,
        landed: asyncio.Future[None],
    ) -> None:
        del self._inflight[landed]
        for i, (writer, future) in enumerate(group):
            if failure is not None:
                writer.abort()
            if future.done():
                continue
            if failure is not None:
                future.set_exception(failure)
                continue
            result = results[i]  # type: ignore[index]
            if isinstance(result, StoreRefused):
                future.set_exception(result)
            else:
                future.set_result(result)
        if not landed.done():
            landed.set_result(None)
        self._flush()

    async def aclose(self) -> None:
        """Commit everything pending, wait for it, then :meth:`close`."""
        await self.flush()
        self.close()

    async def flush(self) -> None:
        """Commit everything pending (``batch``: now, not at the window's end) and wait
        for it. Publications under way in ``fsync`` mode are the caller's to await."""
        while self._pending or self._inflight:
            self._flush()
            if self._inflight:
                await asyncio.wait(list(self._inflight))
                await asyncio.sleep(0)

    def close(self) -> None:
        """Release the fsync threads of a publisher that has nothing pending."""
        if self._pending or self._inflight:
            raise WriterStateError("closing a publisher with publications pending")
        if self._committer is not None:
            self._committer.shutdown(wait=False)
        if self._fanout is not None:
            self._fanout.close()
