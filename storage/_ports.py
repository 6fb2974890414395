"""The two ports through which the rest of scpfleet reaches storage.

Theory of operation: a DICOM service never touches files, journals or databases; it
holds an :class:`InstanceStore` (where instances are written and read back) and a
:class:`Catalog` (what is stored, for finding it again). Both are protocols, so each
can have several implementations: today :class:`~storage.PosixInstanceStore` (files on
a POSIX file system, a per-worker journal), and :class:`~storage.SqliteCatalog` (one
node's index in a file) or the PostgreSQL catalog (one index for the nodes of a
cluster, ``storage._postgres``, imported only when a ``postgresql://`` URL is opened).

Each port has its own errors, all :class:`~storage.StorageError`: a store refuses an
instance with :class:`StoreRefused`, whose :class:`Refusal` kind says why in storage's
words; the caller turns the kind into whatever its protocol answers (the services
layer, into a DIMSE status). Storage knows no DIMSE status, no AE, no association. A
catalog fails with :class:`CatalogError` (:class:`CatalogCorrupt` when what is there
is not a catalog at all, :class:`CatalogBusy` when another writer held it too long,
:class:`CatalogUnavailable` when its server cannot be reached), never with its database
driver's exceptions.

A catalog also answers queries (:meth:`Catalog.query`): which patients, studies, series
or instances match a :class:`~storage.CatalogQuery` (:mod:`storage._query`), read page
by page from a :class:`~storage.QueryCursor`.

This module defines types only; :func:`open_catalog` picks an implementation by the
location's scheme and imports it on demand.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import BinaryIO, Protocol, runtime_checkable

import msgspec

from ._integrity import FileCheck
from ._part10 import StorageError
from ._query import CatalogQuery, QueryCursor
from ._record import IndexStats, InstanceRecord

__all__ = [
    "Refusal",
    "StoreRefused",
    "InstanceUnavailable",
    "UploadRequest",
    "Upload",
    "InstanceStore",
    "CatalogError",
    "CatalogCorrupt",
    "CatalogBusy",
    "CatalogUnavailable",
    "Catalog",
    "FIND_KEYS",
    "NO_PROGRESS",
    "open_catalog",
    "is_url",
    "redact_url",
    "POSTGRES_SCHEMES",
]


class Refusal(enum.Enum):
    """Why a store refused an instance, in storage's terms."""

    #: The disk is full or an I/O operation failed; storing it again later may work.
    OUT_OF_RESOURCES = "out of resources"
    #: The data set was read, but it is not the instance announced (SOP Class or
    #: Instance UID differ), or a UID that names its directories (Study, Series
    #: Instance UID) is missing or not a UID.
    DATASET_MISMATCH = "data set mismatch"
    #: The data set (or its transfer syntax UID) could not be read far enough to
    #: find the attributes that name it.
    UNREADABLE = "unreadable"
    #: The announced SOP Instance UID is not a UID (PS3.5 9.1).
    INVALID_INSTANCE_UID = "invalid SOP Instance UID"
    #: The announced SOP Class UID is not a UID (PS3.5 9.1).
    INVALID_SOP_CLASS_UID = "invalid SOP Class UID"
    #: The instance is already stored and the duplicate policy is ``reject``.
    DUPLICATE = "duplicate"


class StoreRefused(StorageError):
    """The instance is not stored: :attr:`kind` says why, :attr:`reason` in words."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(f"{kind.value}: {reason}")
        self.kind = kind
        self.reason = reason


class InstanceUnavailable(StorageError):
    """A stored instance's file cannot be opened (gone, or an I/O error)."""


class UploadRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of an instance before its first byte: the command's UIDs, the
    transfer syntax its data set is encoded in, the two AE titles, the sender's network
    address (its IP address as text, "" when unknown), and when it was received (Unix
    time; 0 means "now", read by the store when the upload opens)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    received_at: float = 0.0
    calling_address: str = ""


@runtime_checkable
class Upload(Protocol):
    """One instance on its way into a store: :meth:`write` each fragment of its data
    set as received, then :meth:`finish` once; or :meth:`abort`."""

    @property
    def size(self) -> int:
        """Bytes written so far, whatever the store adds (File Meta) included."""
        ...

    @property
    def duplicate(self) -> bool:
        """True when the instance was already stored and the store kept that copy
        (duplicate policy ``keep``); known once :meth:`finish` has succeeded."""
        ...

    def write(self, data: memoryview) -> None:
        """Take the next data set fragment (a view the caller may reuse afterwards).
        Raises :class:`StoreRefused`; the upload is then aborted."""
        ...

    def finish(self) -> InstanceRecord | Awaitable[InstanceRecord]:
        """Validate, make durable as configured, journal; the record of the stored
        instance. Returned directly when nothing needs awaiting, else as an awaitable
        (an asyncio future). Raises (or the awaitable raises) :class:`StoreRefused`.
        Cancelling the awaitable does not stop a publication under way."""
        ...

    def abort(self) -> None:
        """Drop the upload, leaving no trace. Safe at any time and more than once;
        after :meth:`finish` it does nothing (the instance is, or is being, stored)."""
        ...


@runtime_checkable
class InstanceStore(Protocol):
    """Where instances are written and read back."""

    def open(self, request: UploadRequest) -> Upload:
        """Start storing one instance. Raises :class:`StoreRefused` (UIDs that are
        not UIDs are refused here, before any byte is written)."""
        ...

    async def aclose(self) -> None:
        """Stop taking uploads (later :meth:`open` and :meth:`Upload.finish` calls are
        refused), commit everything pending, wait for publications under way, close
        journals."""
        ...

    def open_instance(self, record: InstanceRecord) -> BinaryIO:
        """The stored Part 10 file of ``record``, open for reading.
        Raises :class:`InstanceUnavailable`."""
        ...

    def path_of(self, record: InstanceRecord) -> str:
        """Where the stored file of ``record`` is. Raises :class:`StorageError` for a
        record that does not name a file of this store."""
        ...


class CatalogError(StorageError):
    """A catalog operation failed; nothing of it was committed."""


class CatalogCorrupt(CatalogError):
    """What is at the catalog's location is not a catalog (garbage, a destroyed
    header, damaged structures): it must be set aside and rebuilt."""


class CatalogBusy(CatalogError):
    """Another writer held the catalog longer than the wait allowed; retry later."""


class CatalogUnavailable(CatalogError):
    """The catalog's server cannot be reached or refuses work now (down, restarting,
    out of resources, the connection lost); retry later."""


#: Record fields :meth:`Catalog.find` matches on: the columns every catalog indexes.
FIND_KEYS = frozenset(("sop_instance_uid", "study_instance_uid", "series_instance_uid", "patient_id"))

#: An empty progress mapping (the default of :meth:`Catalog.apply`).
NO_PROGRESS: Mapping[str, int] = MappingProxyType({})


@runtime_checkable
class Catalog(Protocol):
    """What is stored: one :class:`~storage.InstanceRecord` per SOP Instance UID, and
    how far each journal segment has been carried into it.

    A catalog shared by several nodes (PostgreSQL) keeps one row per node and SOP
    Instance UID and speaks for one node: what pairs with that node's files and
    journals (:meth:`apply`, :meth:`progress`, :meth:`journal_progress`,
    :meth:`forget_journal`, :meth:`get`, :meth:`contains`, :meth:`remove`, :meth:`find`)
    is that node's rows; what describes the archive (:meth:`list`, :meth:`count`,
    :meth:`stats`, :meth:`node_stats`, :meth:`query`) is every node's. A SQLite catalog
    is one node's, so both are the same rows."""

    def apply(
        self,
        records: Iterable[InstanceRecord],
        progress: Mapping[str, int] = NO_PROGRESS,
        files: FileCheck | None = None,
    ) -> None:
        """Store ``records`` and set the journal offsets in ``progress``, in one
        transaction: all or nothing. This is what makes journal replay exactly-once.

        With ``files`` (the node's storage root), records are decided against the rows
        they meet and against the files, by :func:`storage.resolve`, inside the
        transaction, and copies that lost are moved away: the index then always
        describes the file on disk. Without it, a record replaces the row of the same
        SOP Instance UID unconditionally (tests, tools that know better)."""
        ...

    def progress(self, journal: str) -> int:
        """Byte offset up to which ``journal``'s records are in (0 when unknown)."""
        ...

    def journal_progress(self) -> dict[str, int]:
        """Every journal's offset."""
        ...

    def forget_journal(self, journal: str) -> None:
        """Drop the offset of a retired journal segment."""
        ...

    def sync(self) -> None:
        """Make every change committed so far survive a crash of the machine (power loss,
        the kernel), not only of the process. A journal segment is deleted only after
        this: until then the journal could replay what such a crash took from the
        catalog."""
        ...

    def get(self, sop_instance_uid: str) -> InstanceRecord | None: ...

    def contains(self, sop_instance_uid: str) -> bool: ...

    def remove(self, sop_instance_uids: Iterable[str]) -> int:
        """Delete the rows of these instances (their files are gone); how many went.
        Only repair tools call this: the node itself never forgets an instance."""
        ...

    def list(self, limit: int = 100, study: str | None = None) -> list[InstanceRecord]:
        """Up to ``limit`` records, most recently received first, optionally of one study."""
        ...

    def find(
        self, filters: Mapping[str, str | Sequence[str]], limit: int | None = None
    ) -> Iterator[InstanceRecord]:
        """Records matching every filter, ordered by SOP Instance UID. A filter is a
        :data:`FIND_KEYS` field and a value (equality) or a sequence of values (any of
        them; empty matches nothing). Other keys raise :class:`ValueError`."""
        ...

    def count(self) -> int: ...

    def stats(self) -> IndexStats: ...

    def node_stats(self) -> dict[str, IndexStats]:
        """:meth:`stats` of each node's rows, by node id ('' for rows naming none)."""
        ...

    def query(self, query: CatalogQuery) -> QueryCursor:
        """The entities matching ``query`` (see :mod:`storage._query`), page by page.
        Raises :class:`CatalogError` (when reading, too)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Catalog: ...

    def __exit__(self, *exc: object) -> None: ...


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: URL schemes of a PostgreSQL catalog (libpq's two spellings).
POSTGRES_SCHEMES = frozenset(("postgresql", "postgres"))


def redact_url(location: str) -> str:
    """``location`` fit to print: a URL's password (``user:PASSWORD@`` or
    ``password=...``) replaced by ``***``; a path unchanged."""
    if not is_url(location):
        return location
    scheme, _, rest = location.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return re.sub(r"(password=)[^&]*", r"\1***", f"{scheme}://{userinfo}{at}{host}{slash}{tail}")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a catalog by URL (a server), not by file path."""
    return isinstance(location, str) and _URL.match(location) is not None


def open_catalog(
    location: str | os.PathLike[str],
    *,
    read_only: bool = False,
    timeout_s: float | None = None,
    node: str | None = None,
    lazy: bool = False,
) -> Catalog:
    """The catalog at ``location``: a file path (SQLite; created when new, unless
    ``read_only``) or a ``postgresql://`` URL (PostgreSQL; the schema created when the
    database has none, unless ``read_only``). ``timeout_s`` bounds waits for another
    writer (the implementation's default when None).

    ``node`` is the node the catalog speaks for in a catalog shared by several nodes
    (PostgreSQL: its rows and journal progress; None reads the whole cluster and writes
    nothing); a SQLite catalog is one node's and ignores it. ``lazy``: connect to a server
    on first use rather than now (a node starting while its database is down). Raises
    :class:`CatalogError` (for a URL scheme no implementation serves, too)."""
    if isinstance(location, str) and (match := _URL.match(location)):
        scheme = match.group(1).lower()
        if scheme in POSTGRES_SCHEMES:
            try:
                from ._postgres import PostgresCatalog
            except ImportError as exc:
                raise CatalogError(str(exc)) from None
            return PostgresCatalog(location, node=node, read_only=read_only, timeout_s=timeout_s, lazy=lazy)
        # The rest of a URL may hold credentials: only the scheme is named.
        raise CatalogError(f"no catalog implementation for {match.group(1)}:// locations")
    from ._sqlite import SqliteCatalog

    return SqliteCatalog(location, read_only=read_only, timeout_s=timeout_s)
