"""scpfleet storage: files, names, durability, the journal and the catalog.

Theory of operation: the rest of scpfleet reaches storage through two ports
(:mod:`._ports`). An :class:`InstanceStore` takes an instance as an
:class:`UploadRequest` (the command's UIDs, transfer syntax, AE titles) and then the
fragments of its data set, and nothing else; a :class:`Catalog` says what is stored.
Both refuse or fail with their own errors (:class:`StoreRefused` with a
:class:`Refusal` kind, :class:`CatalogError`), never with DIMSE statuses or a driver's
exceptions: storage knows no network protocol and no product identity (the
Implementation Class UID and Version Name of the files come in the
:class:`StorageConfig`).

:class:`PosixInstanceStore` (:mod:`._posix`) is the store: an :class:`InstanceWriter`
(:mod:`._writer`) streams each instance into a Part 10 file (:mod:`._part10`) while a
:class:`MetadataExtractor` (:mod:`._meta`) reads the few attributes that name and
index it (its common case in C, ``_speedups.c``, when built: :data:`ACCELERATED`)
and a content digest (:mod:`._digest`: XXH3-128 or SHA-256) hashes it; a :class:`Publisher` makes it durable and visible and appends its
:class:`InstanceRecord` (:mod:`._record`) to the writer's journal segment
(:mod:`._journal`), which :class:`JournalSegments` (:mod:`._segments`) locks, rotates
and closes. :func:`replay` carries journals into a catalog, :func:`retire` deletes the
finished ones, and a :class:`JournalTail` follows a live segment as it grows.
:class:`SqliteCatalog` (:mod:`._sqlite`) is one node's catalog and
``PostgresCatalog`` (:mod:`._postgres`, loaded only when a ``postgresql://`` URL is
opened: its driver is an optional extra) the catalog a cluster of nodes shares, both
opened with :func:`open_catalog`; only they import ``sqlite3`` and ``psycopg``. A
query/retrieve service asks a catalog a :class:`CatalogQuery` (:mod:`._query`:
conditions in storage's terms) and reads the answer page by page from a
:class:`QueryCursor`; both catalogs write it as SQL in :mod:`._sqlquery`, each in its
dialect. :class:`PendingRequests` (:mod:`._pending`) keeps
requests a service acknowledged and will answer later, durably, one file each.
Configuration is passed
in; nothing is read from module globals. Errors raised on purpose derive from
:class:`StorageError`.
"""

from ._digest import DEFAULT_DIGEST, DIGEST_ALGORITHMS, new_digest
from ._journal import (
    JournalError,
    JournalReader,
    JournalTail,
    JournalWriter,
    journal_dir,
    replay,
    retire,
    segment_lock_path,
    segment_name,
    segment_names,
    segment_path,
)
from ._meta import ACCELERATED, DEFLATED_TRANSFER_SYNTAXES, InstanceMetadata, MetadataError, MetadataExtractor
from ._part10 import FileMeta, FileMetaTemplate, NotDicomError, StorageError, build_file_meta, read_file_meta
from ._ports import (
    FIND_KEYS,
    Catalog,
    CatalogBusy,
    CatalogCorrupt,
    CatalogError,
    CatalogUnavailable,
    InstanceStore,
    InstanceUnavailable,
    Refusal,
    StoreRefused,
    Upload,
    POSTGRES_SCHEMES,
    UploadRequest,
    is_url,
    open_catalog,
    redact_url,
)
from ._pending import PendingEntry, PendingError, PendingRequests
from ._posix import PosixInstanceStore
from ._query import AGGREGATES, LEVEL_FIELDS, LEVEL_KEYS, LEVELS, MATCH_FIELDS, CatalogQuery, Match, QueryCursor
from ._record import QUERY_FIELDS, IndexStats, InstanceRecord
from ._segments import JournalSegments
from ._integrity import SUPERSEDED_DIR, FileCheck, Generations, file_generation, resolve
from ._sqlite import SCHEMA, SqliteCatalog
from ._writer import (
    QUARANTINE_DIR,
    TEMP_DIR,
    DurableDirs,
    InstanceWriter,
    Publisher,
    StorageConfig,
    WriterStateError,
    fsync_dir,
    is_valid_uid,
    publish_now,
    sweep_temp,
)

__all__ = [
    "ACCELERATED",
    "FileCheck",
    "Generations",
    "SUPERSEDED_DIR",
    "file_generation",
    "resolve",
    # errors
    "StorageError",
    "StoreRefused",
    "Refusal",
    "InstanceUnavailable",
    "CatalogError",
    "CatalogCorrupt",
    "CatalogBusy",
    "CatalogUnavailable",
    "PendingError",
    "MetadataError",
    "NotDicomError",
    "WriterStateError",
    "JournalError",
    # the ports
    "InstanceStore",
    "Upload",
    "UploadRequest",
    "Catalog",
    "FIND_KEYS",
    "open_catalog",
    "is_url",
    "redact_url",
    "POSTGRES_SCHEMES",
    # queries
    "CatalogQuery",
    "Match",
    "QueryCursor",
    "LEVELS",
    "LEVEL_KEYS",
    "LEVEL_FIELDS",
    "AGGREGATES",
    "MATCH_FIELDS",
    # their implementations
    "StorageConfig",
    "PosixInstanceStore",
    "JournalSegments",
    "SqliteCatalog",
    "SCHEMA",
    "PendingRequests",
    "PendingEntry",
    # records
    "InstanceRecord",
    "IndexStats",
    "QUERY_FIELDS",
    # building blocks
    "InstanceMetadata",
    "MetadataExtractor",
    "DEFLATED_TRANSFER_SYNTAXES",
    "FileMeta",
    "build_file_meta",
    "FileMetaTemplate",
    "read_file_meta",
    "new_digest",
    "DIGEST_ALGORITHMS",
    "DEFAULT_DIGEST",
    "InstanceWriter",
    "Publisher",
    "DurableDirs",
    "publish_now",
    "is_valid_uid",
    "sweep_temp",
    "fsync_dir",
    "TEMP_DIR",
    "QUARANTINE_DIR",
    "JournalWriter",
    "JournalReader",
    "JournalTail",
    "journal_dir",
    "segment_name",
    "segment_names",
    "segment_path",
    "segment_lock_path",
    "replay",
    "retire",
]
