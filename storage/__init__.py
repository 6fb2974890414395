"""scpfleet storage: files, names, durability, the journal and the catalog.

Theory of operation: the network core hands this package a C-STORE's command and the
fragments of its data set, and nothing else. :class:`InstanceWriter` streams them into a
Part 10 file (:mod:`._part10`) while :class:`MetadataExtractor` (:mod:`._meta`) reads
the few attributes that name and index the instance; a :class:`Publisher` makes it
durable and visible and appends its :class:`InstanceRecord` (:mod:`._record`) to a
per-worker journal (:mod:`._journal`), which :func:`replay` carries into a
:class:`Catalog` (:mod:`._ports`), the port through which everything else learns what is
stored. :class:`SqliteCatalog` (:mod:`._sqlite`) is the catalog, opened with
:func:`open_catalog`; only that module imports ``sqlite3``, and a catalog fails with
:class:`CatalogError`. A refused instance raises :class:`StoreRefused` with a
:class:`Refusal` kind: storage knows no DIMSE status, and no product identity (the
Implementation Class UID and Version Name of the files come in the
:class:`StorageConfig`). Configuration is a :class:`StorageConfig` passed in; nothing is
read from module globals. Errors raised on purpose derive from :class:`StorageError`.
"""

from ._journal import (
    JournalError,
    JournalReader,
    JournalWriter,
    journal_dir,
    replay,
    retire,
    segment_lock_path,
    segment_name,
    segment_path,
)
from ._meta import DEFLATED_TRANSFER_SYNTAXES, InstanceMetadata, MetadataError, MetadataExtractor
from ._part10 import FileMeta, NotDicomError, StorageError, build_file_meta, read_file_meta
from ._ports import (
    FIND_KEYS,
    Catalog,
    CatalogBusy,
    CatalogCorrupt,
    CatalogError,
    Refusal,
    StoreRefused,
    open_catalog,
)
from ._record import IndexStats, InstanceRecord
from ._sqlite import SCHEMA, SqliteCatalog
from ._writer import (
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
    "StorageError",
    "MetadataError",
    "NotDicomError",
    "StoreRefused",
    "Refusal",
    "WriterStateError",
    "JournalError",
    "CatalogError",
    "CatalogCorrupt",
    "CatalogBusy",
    "Catalog",
    "FIND_KEYS",
    "open_catalog",
    "SqliteCatalog",
    "InstanceMetadata",
    "MetadataExtractor",
    "DEFLATED_TRANSFER_SYNTAXES",
    "FileMeta",
    "build_file_meta",
    "read_file_meta",
    "StorageConfig",
    "InstanceWriter",
    "Publisher",
    "DurableDirs",
    "publish_now",
    "is_valid_uid",
    "sweep_temp",
    "fsync_dir",
    "TEMP_DIR",
    "InstanceRecord",
    "IndexStats",
    "SCHEMA",
    "JournalWriter",
    "JournalReader",
    "journal_dir",
    "segment_name",
    "segment_path",
    "segment_lock_path",
    "replay",
    "retire",
]
