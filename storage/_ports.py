"""The ports through which the rest of scpfleet reaches storage.

Theory of operation: a DICOM service never touches databases; it holds a
:class:`Catalog` (what is stored, for finding it again). It is a protocol, so it can
have several implementations: today :class:`~storage.SqliteCatalog`.

Storage has its own errors, all :class:`~storage.StorageError`: a store refuses an
instance with :class:`StoreRefused`, whose :class:`Refusal` kind says why in storage's
words; the caller turns the kind into whatever its protocol answers (the services
layer, into a DIMSE status). Storage knows no DIMSE status, no AE, no association. A
catalog fails with :class:`CatalogError` (:class:`CatalogCorrupt` when what is there
is not a catalog at all, :class:`CatalogBusy` when another writer held it too long),
never with its database driver's exceptions.

This module defines types only; :func:`open_catalog` picks an implementation by the
location's scheme and imports it on demand.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from ._part10 import StorageError
from ._record import IndexStats, InstanceRecord

__all__ = [
    "Refusal",
    "StoreRefused",
    "CatalogError",
    "CatalogCorrupt",
    "CatalogBusy",
    "Catalog",
    "FIND_KEYS",
    "NO_PROGRESS",
    "open_catalog",
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


class CatalogError(StorageError):
    """A catalog operation failed; nothing of it was committed."""


class CatalogCorrupt(CatalogError):
    """What is at the catalog's location is not a catalog (garbage, a destroyed
    header, damaged structures): it must be set aside and rebuilt."""


class CatalogBusy(CatalogError):
    """Another writer held the catalog longer than the wait allowed; retry later."""


#: Record fields :meth:`Catalog.find` matches on: the columns every catalog indexes.
FIND_KEYS = frozenset(("sop_instance_uid", "study_instance_uid", "series_instance_uid", "patient_id"))

#: An empty progress mapping (the default of :meth:`Catalog.apply`).
NO_PROGRESS: Mapping[str, int] = MappingProxyType({})


@runtime_checkable
class Catalog(Protocol):
    """What is stored: one :class:`~storage.InstanceRecord` per SOP Instance UID, and
    how far each journal segment has been carried into it."""

    def apply(self, records: Iterable[InstanceRecord], progress: Mapping[str, int] = NO_PROGRESS) -> None:
        """Store ``records`` (replacing any with the same SOP Instance UID) and set the
        journal offsets in ``progress``, in one transaction: all or nothing. This is
        what makes journal replay exactly-once."""
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

    def get(self, sop_instance_uid: str) -> InstanceRecord | None: ...

    def contains(self, sop_instance_uid: str) -> bool: ...

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

    def close(self) -> None: ...

    def __enter__(self) -> Catalog: ...

    def __exit__(self, *exc: object) -> None: ...


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_catalog(
    location: str | os.PathLike[str], *, read_only: bool = False, timeout_s: float | None = None
) -> Catalog:
    """The catalog at ``location``: a file path (SQLite; created when new, unless
    ``read_only``). ``timeout_s`` bounds waits for another writer (the
    implementation's default when None). Raises :class:`CatalogError` (for a URL
    scheme no implementation serves, too)."""
    if isinstance(location, str) and (match := _URL.match(location)):
        # The rest of a URL may hold credentials: only the scheme is named.
        raise CatalogError(f"no catalog implementation for {match.group(1)}:// locations")
    from ._sqlite import SqliteCatalog

    return SqliteCatalog(location, read_only=read_only, timeout_s=timeout_s)
