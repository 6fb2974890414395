"""scpfleet storage: files, names, durability and the instance index.

Theory of operation: the network core hands this package a C-STORE's command and the
fragments of its data set, and nothing else. :class:`InstanceWriter` streams them into a
Part 10 file (:mod:`._part10`) while :class:`MetadataExtractor` (:mod:`._meta`) reads
the few attributes that name and index the instance; a :class:`Publisher` makes it
durable and visible and appends its :class:`InstanceRecord` to a per-worker journal
(:mod:`._journal`), which :func:`replay` carries into the SQLite :class:`Index`
(:mod:`._index`). Configuration is a :class:`StorageConfig` passed in; nothing is read
from module globals. Errors raised on purpose derive from :class:`StorageError`.
"""

from ._index import SCHEMA, Index, IndexStats, InstanceRecord
from ._journal import JournalError, JournalReader, JournalWriter, journal_dir, replay, retire, segment_name
from ._meta import DEFLATED_TRANSFER_SYNTAXES, InstanceMetadata, MetadataError, MetadataExtractor
from ._part10 import FileMeta, NotDicomError, StorageError, build_file_meta, read_file_meta
from ._writer import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_DUPLICATE_REFUSED,
    STATUS_INVALID_INSTANCE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    TEMP_DIR,
    DurableDirs,
    InstanceWriter,
    Publisher,
    StorageConfig,
    StoreRefused,
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
    "WriterStateError",
    "JournalError",
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
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_DATASET_MISMATCH",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_INVALID_INSTANCE",
    "STATUS_SOP_CLASS_NOT_SUPPORTED",
    "STATUS_DUPLICATE_REFUSED",
    "InstanceRecord",
    "IndexStats",
    "Index",
    "SCHEMA",
    "JournalWriter",
    "JournalReader",
    "journal_dir",
    "segment_name",
    "replay",
    "retire",
]
